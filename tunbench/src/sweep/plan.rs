//! The capacity plan: for each target rate, how many gateway pairs (with
//! spares for failover) and how many cores per gateway, from the chosen
//! cell's CPU cost per byte; the WAN capacity the tunnel's overhead asks
//! for; and how many units of a named reference appliance would do the
//! same. Every per-pair figure carries its basis: measured in the lab,
//! given (measured elsewhere, e.g. on the production gateways), or
//! projected from the CPU cost with its assumption stated.

use super::choose::{Choice, LinkVerdict};
use super::knobs::{Knob, Value};
use super::results::SweepMeta;

/// Bytes tunneld adds to each packet besides the outer IP header: UDP 8,
/// frame header 16 (type, reserved, receiver index, counter), AEAD tag 16
/// (docs/protocol.md).
pub const TUNNEL_BYTES: u32 = 8 + 16 + 16;
/// Outer IPv4 header (the lab's underlay is IPv4; IPv6 adds 20 more).
pub const OUTER_IPV4: u32 = 20;
/// Ethernet header the link's rate limit counts per frame.
pub const ETHERNET: u32 = 14;
/// IPv4 + TCP headers with the timestamp option (Linux default): what a
/// TCP segment carries besides payload.
pub const TCP_IP_HEADERS: u32 = 20 + 20 + 12;
/// The LAN MTU of the hosts behind the gateways (and of the raw path).
pub const LAN_MTU: u32 = 1500;

/// What the tunnel's headers cost in goodput on a link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overhead {
    /// Tunnel MTU.
    pub mtu: u32,
    /// Bytes added per packet on the wire (outer IPv4, UDP, frame, tag).
    pub per_packet: u32,
    /// TCP payload ÷ frame bytes on the link through the tunnel.
    pub tunnel_goodput: f64,
    /// The same on the raw routed path (1500-byte packets).
    pub raw_goodput: f64,
}

impl Overhead {
    /// The overhead with a tunnel MTU of `mtu`.
    pub fn of(mtu: u16) -> Overhead {
        let mtu = u32::from(mtu);
        let per_packet = OUTER_IPV4 + TUNNEL_BYTES;
        let frac = |payload: u32, frame: u32| f64::from(payload) / f64::from(frame);
        Overhead {
            mtu,
            per_packet,
            tunnel_goodput: frac(
                mtu.saturating_sub(TCP_IP_HEADERS),
                mtu + per_packet + ETHERNET,
            ),
            raw_goodput: frac(LAN_MTU - TCP_IP_HEADERS, LAN_MTU + ETHERNET),
        }
    }

    /// Goodput lost to the tunnel against the raw path, percent.
    pub fn loss_percent(&self) -> f64 {
        (1.0 - self.tunnel_goodput / self.raw_goodput) * 100.0
    }
}

/// Where the per-pair throughput of the plan comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Basis {
    /// Measured in this sweep: the tunnel, not the link, was the limit.
    Measured,
    /// Measured elsewhere and given (profile `planning.pair_rate` or
    /// `tunbench report --pair-rate`), with where.
    Given(String),
    /// Not measured: projected from the CPU cost per byte.
    Projected,
}

impl Basis {
    /// `measured`, `given`, `projected`.
    pub fn label(&self) -> &'static str {
        match self {
            Basis::Measured => "measured",
            Basis::Given(_) => "measured elsewhere",
            Basis::Projected => "projected",
        }
    }
}

/// Sizing for one target rate.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRow {
    /// Target goodput per direction, bit/s.
    pub target_bps: f64,
    /// Pairs that carry the target.
    pub active: u64,
    /// Pairs to buy: active + spares.
    pub total: u64,
    /// Cores per gateway (headroom included), when all active pairs run.
    pub cores_per_gateway: f64,
    /// WAN capacity per direction the target needs through the tunnel.
    pub wan_bps: f64,
    /// Units of the reference appliance (with the same spares).
    pub reference_units: Option<u64>,
}

/// The plan and its basis.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The cell the CPU cost comes from.
    pub basis_key: String,
    /// Its CPU seconds per GB (both lab gateways' tunneld, one direction).
    pub cpu_s_per_gb: f64,
    /// The rate it was measured at, bit/s.
    pub basis_bps: f64,
    /// Cores per Gbit/s per gateway, traffic both ways.
    pub cores_per_gbps: f64,
    /// Data-path threads per gateway in that cell.
    pub workers: u64,
    /// The per-pair throughput the plan uses, bit/s, and its basis.
    pub pair_bps: f64,
    /// Basis of `pair_bps`.
    pub basis: Basis,
    /// The projection from CPU cost (shown beside a measured figure).
    pub projected_bps: f64,
    /// With a link-limited sweep: the rate a pair was seen to carry (a
    /// lower bound of its ceiling).
    pub carried_at_least_bps: Option<f64>,
    /// Headroom, percent.
    pub headroom_percent: f64,
    /// Spare pairs.
    pub spares: u32,
    /// The overhead figures.
    pub overhead: Overhead,
    /// One row per target.
    pub rows: Vec<PlanRow>,
    /// What a failover and a drain measured in an HA lab, in words (with
    /// `tunbench report --ha`).
    pub failover: Vec<String>,
}

/// Builds the plan from the chosen cell. `given` overrides the sweep's
/// per-pair figure (a rate measured elsewhere, and where).
pub fn plan(
    meta: &SweepMeta,
    choice: &Choice,
    link: Option<&LinkVerdict>,
    given: Option<(f64, String)>,
) -> Option<Plan> {
    let basis_cell = choice.pick;
    let cpu = basis_cell
        .cpu_s_per_gb
        .filter(|c| *c > 0.0 && c.is_finite())?;
    // 1 Gbit/s = 0.125 GB/s. The lab measures one direction through both
    // gateways (A seals, B opens); a gateway carrying R each way both seals
    // and opens R, so its cost equals both lab gateways' at R.
    let cores_per_gbps = cpu * 0.125;
    let workers = basis_cell
        .cell
        .get(Knob::Workers)
        .and_then(Value::num)
        .unwrap_or(meta.scenario.tunneld.dataplane.workers)
        .max(1);
    let projected = workers as f64 / cores_per_gbps * 1e9;
    let limited = link.is_some_and(|l| l.limited);
    let given = given.or_else(|| {
        meta.pair_rate_bps.map(|r| {
            (
                r as f64,
                meta.pair_rate_source
                    .clone()
                    .unwrap_or_else(|| "planning.pair_rate of the sweep profile".into()),
            )
        })
    });
    let (pair_bps, basis) = match given {
        Some((r, src)) if r > 0.0 => (r, Basis::Given(src)),
        _ if !limited => (basis_cell.bits_per_second, Basis::Measured),
        _ => (projected, Basis::Projected),
    };
    let overhead = Overhead::of(meta.scenario.tunneld.mtu);
    let head = 1.0 + meta.headroom_percent / 100.0;
    let rows = meta
        .targets_bps
        .iter()
        .map(|&t| {
            let t = t as f64;
            let active = (t / pair_bps).ceil().max(1.0) as u64;
            PlanRow {
                target_bps: t,
                active,
                total: active + u64::from(meta.spares),
                cores_per_gateway: cores_per_gbps * (t / 1e9 / active as f64) * head,
                wan_bps: t / overhead.tunnel_goodput,
                reference_units: meta
                    .reference
                    .as_ref()
                    .filter(|r| r.rate.0 > 0)
                    .map(|r| (t / r.rate.0 as f64).ceil() as u64 + u64::from(meta.spares)),
            }
        })
        .collect();
    Some(Plan {
        basis_key: basis_cell.key.clone(),
        cpu_s_per_gb: cpu,
        basis_bps: basis_cell.bits_per_second,
        cores_per_gbps,
        workers,
        pair_bps,
        basis,
        projected_bps: projected,
        carried_at_least_bps: limited.then_some(choice.fastest.bits_per_second),
        headroom_percent: meta.headroom_percent,
        spares: meta.spares,
        overhead,
        rows,
        failover: Vec::new(),
    })
}

/// The plan's assumptions, stated once for both renderers.
/// The plan's basis from an HA lab run (`tunbench lab` with an `ha:`
/// scenario): its per-pair rate and where it was measured, and what its
/// failover and drain showed, one sentence each.
pub fn from_ha(ha: &crate::lab::ha::HaReport, dir: &str) -> ((f64, String), Vec<String>) {
    let rate = tunneld::units::format_rate;
    let source = format!(
        "HA lab {} in {dir}: one of {} gateway pairs in service, {} CPUs shared by all of them",
        ha.scenario, ha.pairs, ha.host_cpus
    );
    let f = &ha.failover;
    let opt = |v: Option<f64>| v.map_or("not seen".to_string(), |s| format!("{s:.2} s"));
    let mut lines = vec![format!(
        "Failover (HA lab, {} verified TCP flows over {} pairs{}): one gateway SIGKILLed and its \
         WAN link cut mid-transfer; SHA-256 {}; longest gap in delivered bytes {:.2} s \
         ({:.0} ms bins); every stalled flow moved to the surviving pairs after {}; routes \
         withdrawn by site A after {}, site B after {}; once the gateway returned, both pairs \
         carried data again after {}. The spares in this plan carry the load of the pair that \
         failed.",
        f.streams,
        ha.pairs,
        f.rate_bits_per_second
            .map(|r| format!(", paced to {} in all", rate(r as f64)))
            .unwrap_or_default(),
        if f.intact {
            "intact on every flow"
        } else {
            "NOT intact"
        },
        f.longest_gap_s,
        f.bin_s * 1000.0,
        opt(f.all_flows_on_survivor_s),
        opt(f.withdrawn_site_a_s),
        opt(f.withdrawn_site_b_s),
        opt(f.rebalanced_s),
    )];
    if let Some(d) = &ha.drain {
        lines.push(format!(
            "Draining a gateway for maintenance (BGP withdrawn first, tunneld stopped after): \
             {} retransmissions against {} in the same run without a drain, longest gap {:.2} s, \
             SHA-256 {}.",
            d.retransmits,
            d.baseline_retransmits,
            d.longest_gap_s,
            if d.intact { "intact" } else { "NOT intact" }
        ));
    }
    ((ha.per_pair_bits_per_second, source), lines)
}

pub fn assumptions(p: &Plan) -> Vec<String> {
    let rate = tunneld::units::format_rate;
    let mut v = vec![format!(
        "CPU cost: cell {} used {:.2} CPU seconds per GB at {} in the tunneld processes of both \
         lab gateways together (one direction: gateway A seals, gateway B opens). A gateway \
         carrying R in each direction both seals and opens R, so it needs {:.3} cores per \
         Gbit/s; the cost is assumed to grow linearly with rate.{}",
        p.basis_key,
        p.cpu_s_per_gb,
        rate(p.basis_bps),
        p.cores_per_gbps,
        if p.carried_at_least_bps.is_some() {
            " Measured on a link that capped the rate, fixed costs (polling, timers) are spread \
             over few bytes, which overstates the cost at higher rates."
        } else {
            ""
        }
    )];
    v.push(match &p.basis {
        Basis::Measured => format!(
            "Per pair: {} measured in this sweep, where the tunnel (not the link) was the limit. \
             The lab's gateways share a host with the WAN emulator and both end hosts; the \
             projection from CPU cost, {} ({} worker thread(s) × 1 core ÷ cost), is what \
             dedicated gateways would reach if the cost per byte held.",
            rate(p.pair_bps),
            rate(p.projected_bps),
            p.workers
        ),
        Basis::Given(src) => format!(
            "Per pair: {} measured elsewhere ({src}); this sweep's projection from CPU cost is \
             {}.",
            rate(p.pair_bps),
            rate(p.projected_bps)
        ),
        Basis::Projected => format!(
            "Per pair: {} is a projection, not a measurement: the link, not the tunnel, was the \
             limit in this sweep, so no pair ceiling was seen{}. It assumes the CPU cost per byte \
             stays as measured and each of the {} data-path thread(s) gets a full core. Measure \
             a pair on an unlimited link (or give `planning.pair_rate`) before buying.",
            rate(p.pair_bps),
            p.carried_at_least_bps
                .map(|b| format!(" (a pair carried at least {})", rate(b)))
                .unwrap_or_default(),
            p.workers
        ),
    });
    v.push(format!(
        "Failover: {} spare pair(s) on top of the pairs that carry the target (N+{}), so losing \
         {} pair(s) still leaves the target carried; cores per gateway are for the active pairs \
         and include {:.0}% headroom. Kernel time outside tunneld (NIC interrupts, routing) is \
         not counted.",
        p.spares, p.spares, p.spares, p.headroom_percent
    ));
    v.push(format!(
        "Overhead: tunneld adds {} bytes per packet on an IPv4 underlay ({} on IPv6) and uses a \
         {}-byte MTU, so TCP goodput is {:.1}% of the link rate against {:.1}% on the raw path \
         ({:.1}% less); the WAN column is the target divided by {:.1}%.",
        p.overhead.per_packet,
        p.overhead.per_packet + 20,
        p.overhead.mtu,
        p.overhead.tunnel_goodput * 100.0,
        p.overhead.raw_goodput * 100.0,
        p.overhead.loss_percent(),
        p.overhead.tunnel_goodput * 100.0
    ));
    v.extend(p.failover.iter().cloned());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_of_the_default_mtu() {
        let o = Overhead::of(1420);
        assert_eq!(o.per_packet, 60);
        // 1368 payload in a 1494-byte frame; 1448 in 1514 raw.
        assert!((o.tunnel_goodput - 1368.0 / 1494.0).abs() < 1e-12);
        assert!((o.raw_goodput - 1448.0 / 1514.0).abs() < 1e-12);
        assert!(
            (o.loss_percent() - 4.26).abs() < 0.05,
            "{}",
            o.loss_percent()
        );
    }
}
