//! `tunbench lab` with an `ha:` section: on an [`HaLab`] with N gateway
//! pairs, the aggregate throughput with 1..=N pairs in service (engine,
//! many streams), a failover (a gateway's tunneld SIGKILLed and its WAN
//! link cut mid-transfer, then restored), and a drain (BGP withdrawn first,
//! tunneld stopped after), each measured with verified flows in fine bins.
//! Writes `results.json` ([`HaReport`]) and `summary.md`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tunneld::config::HealthFile;
use tunneld::units::{Rate, Span};

use super::flows::{start_flows, FlowSpec, Flows};
use super::{bird, HaLab, HaOptions};
use crate::engine::{self, Protocol, Server, TestParams, TestSpec};
use crate::lab::measure::{cpu_total, figures, TestFigures, ENGINE_PORT};
use crate::lab::scenario::Scenario;
use crate::lab::{LabError, LabOptions, Result};
use crate::topo::HaSite;

/// A stream stalled by the failover has no delivery for at least Linux's
/// minimum TCP retransmission timeout; shorter holes are pacing and
/// scheduling on the lab host.
const MIN_STALL: Duration = Duration::from_millis(200);

/// Schema name of the HA lab's results.json.
pub const SCHEMA: &str = "tunbench-lab-ha/1";

/// `ha:` — the gateway-pair runs of a scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaPlan {
    /// Gateway pairs built (2..=4); throughput is measured with 1..=pairs.
    pub pairs: usize,
    /// tunneld's dead-peer detection on every gateway.
    #[serde(default = "default_health")]
    pub health: HealthFile,
    /// The failover run.
    pub failover: FailoverPlan,
    /// The drain run (absent: not run).
    #[serde(default)]
    pub drain: Option<DrainPlan>,
}

/// `ha.failover:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverPlan {
    /// Verified TCP streams.
    pub streams: usize,
    /// How long they send.
    pub duration: Span,
    /// When gateway A1's tunneld is killed and its WAN link cut.
    pub kill_at: Span,
    /// When both come back.
    pub return_at: Span,
    /// Delivery bins (at least 10ms).
    #[serde(default = "default_bin")]
    pub bin: Span,
    /// Aggregate pacing rate of the streams (absent: as fast as they go).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
}

/// `ha.drain:` — withdraw pair N's routes, then stop its tunneld.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainPlan {
    /// Verified TCP streams.
    pub streams: usize,
    /// How long they send (a baseline run of the same length runs first).
    pub duration: Span,
    /// When the BGP sessions of pair N are disabled.
    pub at: Span,
    /// How long after the routers stopped using pair N its tunneld stops.
    #[serde(default = "default_settle")]
    pub settle: Span,
    /// Aggregate pacing rate of the streams (absent: as fast as they go;
    /// then congestion of the path causes retransmissions of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
}

fn default_health() -> HealthFile {
    HealthFile {
        interval: Span(Duration::from_millis(200)),
        dead_after: Span(Duration::from_secs(1)),
    }
}
fn default_bin() -> Span {
    Span(Duration::from_millis(10))
}
fn default_settle() -> Span {
    Span(Duration::from_secs(1))
}

impl HaPlan {
    /// The cross-field rules; `Err((field, message))`.
    pub fn check(&self) -> std::result::Result<(), (String, String)> {
        let bad = |f: &str, m: String| Err((format!("ha.{f}"), m));
        if !(2..=crate::topo::MAX_PAIRS).contains(&self.pairs) {
            return bad(
                "pairs",
                format!(
                    "{} is out of range 2..={}",
                    self.pairs,
                    crate::topo::MAX_PAIRS
                ),
            );
        }
        let h = &self.health;
        if let Err(m) = check_health(h) {
            return bad("health", m);
        }
        let f = &self.failover;
        if !(1..=super::flows::MAX_STREAMS).contains(&f.streams) {
            return bad(
                "failover.streams",
                format!("{} is out of range 1..=64", f.streams),
            );
        }
        if f.bin.0 < super::flows::MIN_BIN {
            return bad("failover.bin", format!("{:?} is below 10ms", f.bin.0));
        }
        if !(f.kill_at.0 < f.return_at.0 && f.return_at.0 < f.duration.0) || f.kill_at.0.is_zero() {
            return bad(
                "failover",
                "needs 0 < kill_at < return_at < duration".into(),
            );
        }
        if let Some(d) = &self.drain {
            if !(1..=super::flows::MAX_STREAMS).contains(&d.streams) {
                return bad(
                    "drain.streams",
                    format!("{} is out of range 1..=64", d.streams),
                );
            }
            if d.at.0.is_zero() || d.at.0 >= d.duration.0 {
                return bad("drain.at", "needs 0 < at < duration".into());
            }
        }
        Ok(())
    }
}

fn check_health(h: &HealthFile) -> std::result::Result<(), String> {
    let (i, d) = (h.interval.0, h.dead_after.0);
    if !tunneld::config::HEALTH_INTERVAL_RANGE.contains(&i) {
        return Err(format!("interval {i:?} is out of range 50ms..=60s"));
    }
    if !tunneld::config::HEALTH_DEAD_AFTER_RANGE.contains(&d)
        || d < i * tunneld::config::HEALTH_MIN_INTERVALS
    {
        return Err(format!(
            "dead_after {d:?} must be 100ms..=1h and at least twice the interval"
        ));
    }
    Ok(())
}

/// Throughput with some pairs in service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairFigures {
    /// Pairs carrying traffic.
    pub pairs: usize,
    /// The engine test (streams, bit/s, retransmits, CPU of the active tunnelds).
    pub test: TestFigures,
    /// `test.bits_per_second / pairs`.
    pub per_pair_bits_per_second: f64,
    /// Every repeat's aggregate, sorted (`test` is the median one).
    pub runs_bits_per_second: Vec<f64>,
}

/// The failover run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverFigures {
    /// Streams.
    pub streams: usize,
    /// Their aggregate pacing rate, bit/s (`None`: unpaced).
    pub rate_bits_per_second: Option<u64>,
    /// Every stream's SHA-256 and length matched.
    pub intact: bool,
    /// Longest stall of any stream, seconds (bins of `bin_s`).
    pub longest_gap_s: f64,
    /// Bin width, seconds.
    pub bin_s: f64,
    /// From the kill until the last stream that stalled (no delivery for
    /// 200 ms or more) after it delivered again: the surviving pair carries
    /// all flows. Seconds.
    pub all_flows_on_survivor_s: Option<f64>,
    /// From the kill until rtr-a stopped routing to the dead gateway.
    pub withdrawn_site_a_s: Option<f64>,
    /// From the kill until rtr-b stopped routing to the dead gateway's peer
    /// (its tunneld's dead-peer detection plus BGP).
    pub withdrawn_site_b_s: Option<f64>,
    /// From the restart until both routers route over every pair again.
    pub reannounced_s: Option<f64>,
    /// From the restart until the returned pair carries at least 10% of the
    /// data again (flows use both pairs).
    pub rebalanced_s: Option<f64>,
    /// TCP retransmissions of all streams.
    pub retransmits: u64,
    /// Bytes delivered.
    pub bytes: u64,
    /// Stream failures, if any.
    pub failures: String,
}

/// The drain run and its baseline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainFigures {
    /// Streams.
    pub streams: usize,
    /// Their aggregate pacing rate, bit/s (`None`: unpaced).
    pub rate_bits_per_second: Option<u64>,
    /// Every stream intact in the drain run.
    pub intact: bool,
    /// Longest stall in the drain run, seconds.
    pub longest_gap_s: f64,
    /// Retransmissions in the drain run.
    pub retransmits: u64,
    /// Retransmissions in a run of the same length without a drain.
    pub baseline_retransmits: u64,
    /// Longest stall in the baseline run, seconds.
    pub baseline_longest_gap_s: f64,
    /// From disabling BGP until both routers stopped using the pair.
    pub withdrawn_s: Option<f64>,
    /// Packets the drained pair's tunnelds dropped from the withdrawal
    /// until just before they stopped (their `drop_*` counters and kernel
    /// UDP receive-buffer drops, both sides), by reason.
    pub tunnel_drops: BTreeMap<String, u64>,
    /// The same for the pairs that stayed, over the same time (they took
    /// over the load: drops there are congestion, which TCP answers by
    /// retransmitting).
    pub survivor_drops: BTreeMap<String, u64>,
    /// Stream failures, if any.
    pub failures: String,
}

/// Everything the HA lab measured: `results.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HaReport {
    /// [`SCHEMA`].
    pub schema: String,
    /// The scenario name.
    pub scenario: String,
    /// Gateway pairs built.
    pub pairs: usize,
    /// CPUs of the lab host (all gateways share them).
    pub host_cpus: usize,
    /// Throughput with 1..=pairs pairs in service.
    pub throughput: Vec<PairFigures>,
    /// What one pair carries on this host: `throughput[0]`'s rate, the
    /// figure a capacity plan divides by.
    pub per_pair_bits_per_second: f64,
    /// The most pairs' aggregate over one pair's.
    pub scaling: f64,
    /// The failover run.
    pub failover: FailoverFigures,
    /// The drain run.
    pub drain: Option<DrainFigures>,
    /// Wall time of the whole run, seconds.
    pub elapsed_s: f64,
}

impl HaReport {
    /// Reads `results.json` of an HA lab run from `dir` (what `tunbench
    /// report` uses for the per-pair rate and the failover figures).
    pub fn load(dir: &Path) -> Result<HaReport> {
        let path = dir.join("results.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| LabError::io(format!("reading {}", path.display()), e))?;
        let r: HaReport = serde_json::from_str(&text)
            .map_err(|e| LabError::Ha(format!("{}: not HA lab results: {e}", path.display())))?;
        if r.schema != SCHEMA {
            return Err(LabError::Ha(format!(
                "{}: schema {:?}, expected {SCHEMA:?}",
                path.display(),
                r.schema
            )));
        }
        Ok(r)
    }
}

fn lab_err(e: impl std::fmt::Display) -> LabError {
    LabError::Ha(e.to_string())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Runs the `ha:` plan of `s`; writes `results.json` and `summary.md`
/// into `opts.out_dir`.
pub fn run(
    s: &Scenario,
    plan: &HaPlan,
    opts: &LabOptions,
    progress: &dyn Fn(&str),
) -> Result<HaReport> {
    std::fs::create_dir_all(&opts.out_dir)
        .map_err(|e| LabError::io(format!("creating {}", opts.out_dir.display()), e))?;
    let started = Instant::now();
    let bin = opts.tunneld_bin.clone().ok_or_else(|| {
        LabError::Missing("tunneld binary not found next to tunbench nor in PATH".into())
    })?;
    progress(&format!(
        "building {} gateway pairs with BIRD on routers and gateways",
        plan.pairs
    ));
    let mut ha_opts = HaOptions::new(bin);
    ha_opts.health = plan.health;
    ha_opts.dataplane = s.tunneld.dataplane.clone();
    ha_opts.log = std::env::var("TUNBENCH_TUNNELD_LOG").unwrap_or_else(|_| "warn".into());
    let mut lab = HaLab::start("lab-ha", plan.pairs, ha_opts).map_err(lab_err)?;
    let server = lab
        .sites
        .lab
        .run_in(&lab.sites.host_b, || {
            Server::bind((std::net::Ipv4Addr::UNSPECIFIED, ENGINE_PORT).into()).map(Server::spawn)
        })?
        .map_err(|e| lab_err(format!("engine server in host-b: {e}")))?;

    // Pair counts alternate within each repeat (1..=N, then N..=1), so
    // load from elsewhere on the host hits every count alike; each count's
    // median run stands for it.
    let streams = s.test.streams.iter().copied().max().unwrap_or(8);
    let mut runs: Vec<Vec<TestFigures>> = vec![Vec::new(); plan.pairs];
    for r in 0..s.test.repeats {
        let mut order: Vec<usize> = (1..=plan.pairs).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for k in order {
            set_pairs_in_service(&mut lab, k).map_err(lab_err)?;
            let f = engine_test(&lab, s, streams, k);
            progress(&format!(
                "throughput with {k} pair(s), {streams} streams: {}",
                tunneld::units::format_rate(f.bits_per_second)
            ));
            runs[k - 1].push(f);
        }
    }
    set_pairs_in_service(&mut lab, plan.pairs).map_err(lab_err)?;
    let mut throughput = Vec::new();
    for (i, mut v) in runs.into_iter().enumerate() {
        v.sort_by(|a, b| a.bits_per_second.total_cmp(&b.bits_per_second));
        if let Some(test) = v.get(v.len() / 2).cloned() {
            throughput.push(PairFigures {
                pairs: i + 1,
                per_pair_bits_per_second: test.bits_per_second / (i + 1) as f64,
                runs_bits_per_second: v.iter().map(|t| t.bits_per_second).collect(),
                test,
            });
        }
    }
    drop(server);

    progress("failover: gateway a1 killed mid-transfer, then restored");
    let failover = failover(&mut lab, &plan.failover).map_err(lab_err)?;
    progress(&format!(
        "  intact {}, longest gap {:.2} s, all flows on the survivor after {}, \
         both pairs again {} after the restart",
        failover.intact,
        failover.longest_gap_s,
        opt_s(failover.all_flows_on_survivor_s),
        opt_s(failover.rebalanced_s)
    ));
    let drain = match &plan.drain {
        Some(d) => {
            progress(&format!(
                "drain: pair {} withdrawn, then stopped",
                plan.pairs
            ));
            let f = drain(&mut lab, d).map_err(lab_err)?;
            progress(&format!(
                "  intact {}, longest gap {:.2} s, {} retransmissions ({} without a drain), drops: drained pair {}, others {}",
                f.intact,
                f.longest_gap_s,
                f.retransmits,
                f.baseline_retransmits,
                show_drops(&f.tunnel_drops),
                show_drops(&f.survivor_drops)
            ));
            Some(f)
        }
        None => None,
    };
    let one = throughput.first().map_or(0.0, |p| p.test.bits_per_second);
    let most = throughput.last().map_or(0.0, |p| p.test.bits_per_second);
    let report = HaReport {
        schema: SCHEMA.into(),
        scenario: s.name.clone(),
        pairs: plan.pairs,
        host_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        throughput,
        per_pair_bits_per_second: one,
        scaling: if one > 0.0 { most / one } else { 0.0 },
        failover,
        drain,
        elapsed_s: secs(started.elapsed()),
    };
    write(&opts.out_dir, &report)?;
    Ok(report)
}

fn paced(rate: Option<u64>) -> String {
    rate.map_or(String::new(), |r| {
        format!(
            " paced at {} in total",
            tunneld::units::format_rate(r as f64)
        )
    })
}

fn show_drops(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn opt_s(v: Option<f64>) -> String {
    v.map_or("never".into(), |s| format!("{s:.2} s"))
}

/// Stops (or starts) tunneld on pairs so that exactly `k` carry traffic,
/// and waits until both routers agree.
fn set_pairs_in_service(lab: &mut HaLab, k: usize) -> super::Result<()> {
    for pair in 1..=lab.pairs() {
        for site in [HaSite::A, HaSite::B] {
            let running = lab.gateway(site, pair).tunneld.is_some();
            if pair <= k && !running {
                lab.start_tunneld(site, pair)?;
            } else if pair > k && running {
                lab.stop_tunneld(site, pair)?;
            }
        }
    }
    for site in [HaSite::A, HaSite::B] {
        lab.wait_paths(site, k, Duration::from_secs(20))?;
    }
    Ok(())
}

/// One engine test host-a → host-b with `streams` streams; CPU of the
/// tunnelds of the first `k` pairs.
fn engine_test(lab: &HaLab, s: &Scenario, streams: u32, k: usize) -> TestFigures {
    let mut spec = TestSpec::new(HaSite::B.host().to_string(), ENGINE_PORT);
    spec.params = TestParams {
        protocol: Protocol::Tcp,
        parallel: streams,
        time: s.test.duration.0,
        omit: s.test.omit.0,
        interval: Duration::from_millis(500),
        window: s.test.window.map(|w| w.0),
        congestion: s.test.congestion.clone(),
        ..TestParams::default()
    };
    let pids: Vec<u32> = lab
        .gateways
        .iter()
        .filter(|g| g.pair <= k)
        .filter_map(|g| g.tunneld)
        .collect();
    let before = cpu_total(&pids);
    let start = Instant::now();
    let res = loop {
        let r = lab
            .sites
            .lab
            .run_in(&lab.sites.host_a, || engine::run_client(&spec));
        match r {
            Ok(Err(engine::EngineError::Rejected(m)))
                if m.contains("busy") && start.elapsed() < Duration::from_secs(10) =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(r) => break r.map_err(|e| e.to_string()),
            Err(e) => break Err(e.to_string()),
        }
    };
    let after = cpu_total(&pids);
    figures(streams, res, before, after, &pids)
}

/// Samples rtr-a's bytes towards each gateway.
fn tx_sample(lab: &HaLab) -> Vec<u64> {
    (1..=lab.pairs())
        .map(|i| lab.sites.router_tx_bytes(HaSite::A, i).unwrap_or(0))
        .collect()
}

fn failover(lab: &mut HaLab, p: &FailoverPlan) -> super::Result<FailoverFigures> {
    let spec = FlowSpec {
        streams: p.streams,
        duration: p.duration.0,
        bin: p.bin.0,
        seed: 1,
        rate: per_stream(p.rate, p.streams),
    };
    let sites = &lab.sites;
    let running = start_flows(
        &sites.lab,
        &sites.host_a,
        &sites.host_b,
        HaSite::B.host().into(),
        spec,
    )
    .map_err(super::step)?;
    let t0 = running.start;
    sleep_until(t0 + p.kill_at.0);
    let killed = Instant::now();
    lab.kill_tunneld(HaSite::A, 1)?;
    lab.set_wan(HaSite::A, 1, false)?;
    let (mut wa, mut wb) = (None, None);
    while Instant::now() < t0 + p.return_at.0 {
        let now = killed.elapsed();
        if wa.is_none() && !lab.router_paths(HaSite::A)?.contains(&1) {
            wa = Some(now);
        }
        if wb.is_none() && !lab.router_paths(HaSite::B)?.contains(&1) {
            wb = Some(now);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let back = Instant::now();
    lab.set_wan(HaSite::A, 1, true)?;
    lab.start_tunneld(HaSite::A, 1)?;
    let (mut reannounced, mut rebalanced) = (None, None);
    let mut last = tx_sample(lab);
    while Instant::now() < t0 + p.duration.0 {
        std::thread::sleep(Duration::from_millis(100));
        if reannounced.is_none()
            && lab.router_paths(HaSite::A)?.len() == lab.pairs()
            && lab.router_paths(HaSite::B)?.len() == lab.pairs()
        {
            reannounced = Some(back.elapsed());
        }
        let now = tx_sample(lab);
        let delta: Vec<u64> = now.iter().zip(&last).map(|(a, b)| a - b).collect();
        let total: u64 = delta.iter().sum();
        // A 100 ms window in which the returned pair carried >= 10% of the data.
        if rebalanced.is_none() && total > 0 && delta[0] * 10 >= total {
            rebalanced = Some(back.elapsed());
        }
        last = now;
    }
    let flows = running.wait();
    let kill_at = killed.duration_since(t0);
    Ok(FailoverFigures {
        streams: p.streams,
        rate_bits_per_second: p.rate.map(|r| r.0),
        intact: flows.intact(),
        longest_gap_s: secs(flows.longest_gap()),
        bin_s: flows.bin_s,
        all_flows_on_survivor_s: flows
            .recovered_after(kill_at, back.duration_since(t0), MIN_STALL)
            .map(secs),
        withdrawn_site_a_s: wa.map(secs),
        withdrawn_site_b_s: wb.map(secs),
        reannounced_s: reannounced.map(secs),
        rebalanced_s: rebalanced.map(secs),
        retransmits: flows.retransmits(),
        bytes: flows.received(),
        failures: flows.failures(),
    })
}

/// Each stream's share of an aggregate rate.
fn per_stream(rate: Option<Rate>, streams: usize) -> Option<u64> {
    rate.map(|r| r.0 / streams.max(1) as u64)
}

fn sleep_until(t: Instant) {
    if let Some(d) = t.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

/// Packets a tunneld dropped, by reason: its `drop_*` counters and what
/// the kernel dropped at its full UDP receive buffers (`udp_rcvbuf`).
fn drops(lab: &HaLab, site: HaSite, pair: usize, into: &mut BTreeMap<String, u64>) {
    let Ok(st) = lab.status(site, pair) else {
        return;
    };
    if let Some(c) = st["counters"].as_object() {
        for (k, v) in c.iter().filter(|(k, _)| k.starts_with("drop_")) {
            *into
                .entry(k.trim_start_matches("drop_").to_string())
                .or_default() += v.as_u64().unwrap_or(0);
        }
    }
    *into.entry("udp_rcvbuf".into()).or_default() +=
        st["transport"]["udp_rcvbuf_drops"].as_u64().unwrap_or(0);
}

/// [`drops`] of both gateways of the pairs in `pairs`.
fn pair_drops(lab: &HaLab, pairs: std::ops::RangeInclusive<usize>) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for pair in pairs {
        for site in [HaSite::A, HaSite::B] {
            drops(lab, site, pair, &mut m);
        }
    }
    m
}

/// What grew from `before` to `after` (reasons that did not grow are left out).
fn grown(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn drain(lab: &mut HaLab, p: &DrainPlan) -> super::Result<DrainFigures> {
    let n = lab.pairs();
    let spec = FlowSpec {
        streams: p.streams,
        duration: p.duration.0,
        bin: Duration::from_millis(10),
        seed: 100,
        rate: per_stream(p.rate, p.streams),
    };
    let run = |lab: &HaLab| {
        start_flows(
            &lab.sites.lab,
            &lab.sites.host_a,
            &lab.sites.host_b,
            HaSite::B.host().into(),
            spec,
        )
        .map_err(super::step)
    };
    let baseline: Flows = run(lab)?.wait();
    let running = run(lab)?;
    sleep_until(running.start + p.at.0);
    // Drops count from the withdrawal on: what the drain itself lost.
    let before = pair_drops(lab, n..=n);
    let survivors_before = pair_drops(lab, 1..=n - 1);
    let at = Instant::now();
    for site in [HaSite::A, HaSite::B] {
        lab.birdc_gw(site, n, &["disable", bird::GATEWAY_SESSION])?;
    }
    let mut withdrawn = None;
    for site in [HaSite::A, HaSite::B] {
        if lab.wait_paths(site, n - 1, Duration::from_secs(10)).is_ok() {
            withdrawn = Some(at.elapsed());
        }
    }
    std::thread::sleep(p.settle.0);
    let after = pair_drops(lab, n..=n);
    for site in [HaSite::A, HaSite::B] {
        lab.stop_tunneld(site, n)?;
    }
    let survivors_after = pair_drops(lab, 1..=n - 1);
    let flows = running.wait();
    // Back in service for whatever runs next.
    for site in [HaSite::A, HaSite::B] {
        lab.start_tunneld(site, n)?;
        lab.birdc_gw(site, n, &["enable", bird::GATEWAY_SESSION])?;
    }
    for site in [HaSite::A, HaSite::B] {
        lab.wait_paths(site, n, Duration::from_secs(20))?;
    }
    Ok(DrainFigures {
        streams: p.streams,
        rate_bits_per_second: p.rate.map(|r| r.0),
        intact: flows.intact(),
        longest_gap_s: secs(flows.longest_gap()),
        retransmits: flows.retransmits(),
        baseline_retransmits: baseline.retransmits(),
        baseline_longest_gap_s: secs(baseline.longest_gap()),
        withdrawn_s: withdrawn.map(secs),
        tunnel_drops: grown(&before, &after),
        survivor_drops: grown(&survivors_before, &survivors_after),
        failures: flows.failures(),
    })
}

/// The Markdown summary.
pub fn render(r: &HaReport) -> String {
    let rate = tunneld::units::format_rate;
    let mut s = format!(
        "# {}: {} gateway pairs\n\n| pairs | streams | aggregate | per pair | retransmits | tunneld CPU s/GB |\n|---|---|---|---|---|---|\n",
        r.scenario, r.pairs
    );
    for p in &r.throughput {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            p.pairs,
            p.test.streams,
            rate(p.test.bits_per_second),
            rate(p.per_pair_bits_per_second),
            p.test.retransmits.map_or("-".into(), |v| v.to_string()),
            p.test
                .cpu_s_per_gb
                .map_or("-".into(), |v| format!("{v:.2}")),
        );
    }
    s += &format!(
        "\nPer pair (1 pair in service): {}; {} pairs carry {:.2}x one pair on this {}-CPU host.\n",
        rate(r.per_pair_bits_per_second),
        r.pairs,
        r.scaling,
        r.host_cpus
    );
    let f = &r.failover;
    s += &format!(
        "\n## Failover (gateway a1 SIGKILLed, WAN cut)\n\n\
         - {} streams{}, SHA-256 {}; longest gap {:.2} s (bins of {} ms)\n\
         - routes withdrawn: site A {}, site B {}\n\
         - all flows on the surviving pair after {}\n\
         - after the restart: routes back {}, both pairs carry data {}\n\
         - retransmissions {}, {} bytes\n",
        f.streams,
        paced(f.rate_bits_per_second),
        if f.intact { "intact" } else { "MISMATCH" },
        f.longest_gap_s,
        (f.bin_s * 1000.0).round(),
        opt_s(f.withdrawn_site_a_s),
        opt_s(f.withdrawn_site_b_s),
        opt_s(f.all_flows_on_survivor_s),
        opt_s(f.reannounced_s),
        opt_s(f.rebalanced_s),
        f.retransmits,
        f.bytes
    );
    if let Some(d) = &r.drain {
        s += &format!(
            "\n## Drain (BGP withdrawn, then tunneld stopped)\n\n\
             - {} streams{}, SHA-256 {}; longest gap {:.2} s (baseline {:.2} s)\n\
             - retransmissions {} (baseline without a drain {})\n\
             - routers stopped using the pair after {}; tunnel drops on the drained pair {}, on the others {}\n",
            d.streams,
            paced(d.rate_bits_per_second),
            if d.intact { "intact" } else { "MISMATCH" },
            d.longest_gap_s,
            d.baseline_longest_gap_s,
            d.retransmits,
            d.baseline_retransmits,
            opt_s(d.withdrawn_s),
            show_drops(&d.tunnel_drops),
            show_drops(&d.survivor_drops)
        );
    }
    s
}

fn write(dir: &Path, r: &HaReport) -> Result<()> {
    let json = serde_json::to_string_pretty(r)
        .map_err(|e| LabError::Ha(format!("serializing results: {e}")))?;
    let path = dir.join("results.json");
    std::fs::write(&path, json)
        .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
    let path = dir.join("summary.md");
    std::fs::write(&path, render(r))
        .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> HaReport {
        HaReport {
            schema: SCHEMA.into(),
            scenario: "lab-ha".into(),
            pairs: 2,
            host_cpus: 2,
            throughput: Vec::new(),
            per_pair_bits_per_second: 2.95e9,
            scaling: 0.98,
            failover: FailoverFigures {
                streams: 8,
                rate_bits_per_second: Some(1_000_000_000),
                intact: true,
                longest_gap_s: 1.45,
                bin_s: 0.01,
                all_flows_on_survivor_s: Some(1.48),
                withdrawn_site_a_s: Some(0.04),
                withdrawn_site_b_s: Some(1.01),
                reannounced_s: Some(0.16),
                rebalanced_s: Some(0.16),
                retransmits: 291,
                bytes: 1,
                failures: String::new(),
            },
            drain: None,
            elapsed_s: 100.0,
        }
    }

    #[test]
    fn results_round_trip_and_wrong_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("ha-results-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        write(&dir, &report()).expect("write");
        let back = HaReport::load(&dir).expect("load");
        assert_eq!(back.per_pair_bits_per_second, 2.95e9);
        assert_eq!(back.failover.longest_gap_s, 1.45);
        let md = std::fs::read_to_string(dir.join("summary.md")).expect("summary");
        assert!(md.contains("longest gap 1.45 s"), "{md}");
        let mut other = serde_json::to_value(report()).expect("json");
        other["schema"] = "tunbench-lab/1".into();
        std::fs::write(dir.join("results.json"), other.to_string()).expect("write");
        let e = HaReport::load(&dir).expect_err("wrong schema").to_string();
        assert!(e.contains("schema"), "{e}");
        std::fs::write(dir.join("results.json"), "{not json").expect("write");
        assert!(HaReport::load(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
