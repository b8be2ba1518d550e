//! Topologies with several gateways per site: [`ha_sites`] (two sites, each
//! a LAN behind a site router with N gateways, the gateways of both sites on
//! one WAN bridge) and [`hub_spokes`] (a hub gateway and N spokes, each with
//! a LAN host, on one WAN bridge).
//!
//! ```text
//!                 ┌ lan0 gwa1 wan0 ┐              ┌ wan0 gwb1 lan0 ┐
//!  host-a ─ rtr-a ┤       ...      ├ [wan bridge] ┤       ...      ├ rtr-b ─ host-b
//!                 └ lan0 gwaN wan0 ┘              └ wan0 gwbN lan0 ┘
//! ```
//! Addresses (IPv4; pair i = 1..=N):
//! - LAN A 198.18.1.0/24: host-a .2, rtr-a .1; LAN B 198.18.2.0/24 likewise.
//! - rtr-a ↔ gwai: 198.18.(10+i).0/24, router .1 (`g<i>`), gateway .2 (`lan0`);
//!   rtr-b ↔ gwbi: 198.18.(20+i).0/24.
//! - WAN 198.18.0.0/24: gwai .(10+i), gwbi .(20+i) (`wan0`).
//!
//! Routers forward with ECMP hashing on the L4 5-tuple
//! (`fib_multipath_hash_policy=1`); reverse-path filtering is off because a
//! flow's two directions may cross different pairs. Gateways route their own
//! LAN through their router; nothing routes between the sites until tunnels
//! and a routing daemon (the lab's BIRD) provide it.

use std::net::Ipv4Addr;

use super::dc::{HOST_IF, LAN_IF, WAN_IF};
use super::error::{Result, TopoError};
use super::lab::Lab;

/// Most gateway pairs (or spokes): the address plan has room for 9, and more
/// than 4 on a lab host only measures scheduler noise.
pub const MAX_PAIRS: usize = 4;

/// Which site of an [`HaSites`] topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HaSite {
    /// Site A (the traffic source in the lab).
    A,
    /// Site B.
    B,
}

impl HaSite {
    /// "a" or "b".
    pub fn letter(self) -> &'static str {
        match self {
            HaSite::A => "a",
            HaSite::B => "b",
        }
    }

    /// The other site.
    pub fn other(self) -> HaSite {
        match self {
            HaSite::A => HaSite::B,
            HaSite::B => HaSite::A,
        }
    }

    fn base(self) -> u8 {
        match self {
            HaSite::A => 10,
            HaSite::B => 20,
        }
    }

    /// The site's LAN prefix.
    pub fn lan(self) -> &'static str {
        match self {
            HaSite::A => super::LAN_A_V4,
            HaSite::B => super::LAN_B_V4,
        }
    }

    /// The site's LAN host.
    pub fn host(self) -> Ipv4Addr {
        match self {
            HaSite::A => super::HOST_A_V4,
            HaSite::B => super::HOST_B_V4,
        }
    }

    /// The router's LAN address (the host's default gateway).
    pub fn router_lan(self) -> Ipv4Addr {
        match self {
            HaSite::A => super::GW_A_LAN_V4,
            HaSite::B => super::GW_B_LAN_V4,
        }
    }

    /// Gateway `i`'s (1-based) underlay address.
    pub fn gw_wan(self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, self.base() + i as u8)
    }

    /// The router ↔ gateway `i` link: (router address, gateway address),
    /// both /24.
    pub fn gw_link(self, i: usize) -> (Ipv4Addr, Ipv4Addr) {
        let net = self.base() + i as u8;
        (
            Ipv4Addr::new(198, 18, net, 1),
            Ipv4Addr::new(198, 18, net, 2),
        )
    }

    /// The router's interface towards gateway `i`.
    pub fn router_if(i: usize) -> String {
        format!("g{i}")
    }
}

/// Two sites with `pairs` gateways each. Dropping it (its `lab`) tears it
/// all down.
pub struct HaSites {
    /// The lab owning every namespace.
    pub lab: Lab,
    /// Gateway pairs.
    pub pairs: usize,
    /// host-a's namespace.
    pub host_a: String,
    /// Site A's router.
    pub rtr_a: String,
    /// Site A's gateways, pair 1 first.
    pub gw_a: Vec<String>,
    /// The WAN bridge's namespace.
    pub wan: String,
    /// Site B's gateways.
    pub gw_b: Vec<String>,
    /// Site B's router.
    pub rtr_b: String,
    /// host-b's namespace.
    pub host_b: String,
}

impl HaSites {
    /// The host namespace of `site`.
    pub fn host(&self, site: HaSite) -> &str {
        match site {
            HaSite::A => &self.host_a,
            HaSite::B => &self.host_b,
        }
    }

    /// The router namespace of `site`.
    pub fn router(&self, site: HaSite) -> &str {
        match site {
            HaSite::A => &self.rtr_a,
            HaSite::B => &self.rtr_b,
        }
    }

    /// Gateway `i` (1-based) of `site`.
    pub fn gw(&self, site: HaSite, i: usize) -> &str {
        let v = match site {
            HaSite::A => &self.gw_a,
            HaSite::B => &self.gw_b,
        };
        &v[i - 1]
    }

    /// Takes gateway `i`'s WAN interface down or up (a cut cable).
    pub fn set_wan(&self, site: HaSite, i: usize, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        self.lab
            .ip(self.gw(site, i), &["link", "set", WAN_IF, state])?;
        Ok(())
    }

    /// Bytes the router of `site` has sent towards gateway `i` so far.
    pub fn router_tx_bytes(&self, site: HaSite, i: usize) -> Result<u64> {
        // /proc/thread-self/net follows the reading thread's namespace
        // (sysfs shows the namespace it was mounted in).
        let path = "/proc/thread-self/net/dev";
        let text = self
            .lab
            .run_in(self.router(site), || std::fs::read_to_string(path))?
            .map_err(|e| TopoError::io(format!("reading {path}"), e))?;
        let dev = HaSite::router_if(i);
        tx_bytes(&text, &dev).ok_or_else(|| TopoError::InvalidName {
            name: dev,
            reason: format!("no tx_bytes for it in {path}"),
        })
    }
}

/// The transmitted bytes of `dev` in a `/proc/net/dev` text (the ninth
/// number after `dev:`).
fn tx_bytes(proc_net_dev: &str, dev: &str) -> Option<u64> {
    proc_net_dev.lines().find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        if name.trim() != dev {
            return None;
        }
        rest.split_whitespace().nth(8)?.parse().ok()
    })
}

fn check_count(n: usize) -> Result<()> {
    if (1..=MAX_PAIRS).contains(&n) {
        Ok(())
    } else {
        Err(TopoError::InvalidName {
            name: n.to_string(),
            reason: format!("gateway count must be 1..={MAX_PAIRS}"),
        })
    }
}

/// A Linux bridge `br` in `ns` with IPv6 off (layer 2 only).
fn bridge(lab: &Lab, ns: &str, br: &str) -> Result<()> {
    lab.sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")?;
    lab.sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")?;
    lab.ip(ns, &["link", "add", br, "type", "bridge", "stp_state", "0"])?;
    lab.ip(ns, &["link", "set", br, "up"])?;
    Ok(())
}

/// Joins `ns`'s `dev` to the bridge `br` in `wan` through a new port
/// `<prefix><port>`.
fn bridge_port(lab: &Lab, wan: &str, br: &str, port: &str, ns: &str, dev: &str) -> Result<()> {
    let port = lab.ifname(port)?;
    lab.link(ns, dev, wan, &port)?;
    lab.ip(wan, &["link", "set", &port, "master", br])?;
    Ok(())
}

fn router_sysctls(lab: &Lab, ns: &str) -> Result<()> {
    lab.sysctl(ns, "net.ipv4.ip_forward", "1")?;
    // ECMP on the L4 5-tuple, so the flows of two hosts spread over the
    // gateways (the default hashes addresses only).
    lab.sysctl(ns, "net.ipv4.fib_multipath_hash_policy", "1")?;
    lab.sysctl(ns, "net.ipv4.conf.all.rp_filter", "0")?;
    lab.sysctl(ns, "net.ipv4.conf.default.rp_filter", "0")?;
    Ok(())
}

/// Builds two sites with `pairs` (1..=[`MAX_PAIRS`]) gateways each, in a
/// fresh lab tagged `tag`. See the module docs for names and addresses.
pub fn ha_sites(tag: &str, pairs: usize) -> Result<HaSites> {
    check_count(pairs)?;
    let lab = Lab::new(tag)?;
    let host_a = lab.add_ns("host-a")?;
    let rtr_a = lab.add_ns("rtr-a")?;
    let gw_a = (1..=pairs)
        .map(|i| lab.add_ns(&format!("gwa{i}")))
        .collect::<Result<Vec<_>>>()?;
    let wan = lab.add_ns("wan")?;
    let gw_b = (1..=pairs)
        .map(|i| lab.add_ns(&format!("gwb{i}")))
        .collect::<Result<Vec<_>>>()?;
    let rtr_b = lab.add_ns("rtr-b")?;
    let host_b = lab.add_ns("host-b")?;
    let br = lab.ifname("br")?;
    bridge(&lab, &wan, &br)?;
    let sites = HaSites {
        lab,
        pairs,
        host_a,
        rtr_a,
        gw_a,
        wan,
        gw_b,
        rtr_b,
        host_b,
    };
    let lab = &sites.lab;
    for site in [HaSite::A, HaSite::B] {
        let (host, rtr) = (sites.host(site), sites.router(site));
        router_sysctls(lab, rtr)?;
        lab.link(host, HOST_IF, rtr, LAN_IF)?;
        lab.ip(
            host,
            &[
                "addr",
                "add",
                &format!("{}/24", site.host()),
                "dev",
                HOST_IF,
            ],
        )?;
        lab.ip(
            rtr,
            &[
                "addr",
                "add",
                &format!("{}/24", site.router_lan()),
                "dev",
                LAN_IF,
            ],
        )?;
        lab.ip(
            host,
            &[
                "route",
                "add",
                "default",
                "via",
                &site.router_lan().to_string(),
            ],
        )?;
        for i in 1..=pairs {
            let gw = sites.gw(site, i);
            lab.sysctl(gw, "net.ipv4.ip_forward", "1")?;
            lab.sysctl(gw, "net.ipv4.conf.all.rp_filter", "0")?;
            lab.sysctl(gw, "net.ipv4.conf.default.rp_filter", "0")?;
            let (r, g) = site.gw_link(i);
            let rif = HaSite::router_if(i);
            lab.link(rtr, &rif, gw, LAN_IF)?;
            lab.ip(rtr, &["addr", "add", &format!("{r}/24"), "dev", &rif])?;
            lab.ip(gw, &["addr", "add", &format!("{g}/24"), "dev", LAN_IF])?;
            lab.ip(gw, &["route", "add", site.lan(), "via", &r.to_string()])?;
            bridge_port(
                lab,
                &sites.wan,
                &br,
                &format!("w{}{i}", site.letter()),
                gw,
                WAN_IF,
            )?;
            lab.ip(
                gw,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", site.gw_wan(i)),
                    "dev",
                    WAN_IF,
                ],
            )?;
        }
    }
    Ok(sites)
}

/// A hub and `spokes` spokes, each gateway with a LAN host behind it, all
/// gateways on one WAN bridge. Dropping it (its `lab`) tears it all down.
///
/// Addresses: spoke `i` (1-based) has LAN 198.18.(100+i).0/24 (host .2,
/// gateway .1) and underlay 198.18.0.(100+i); the hub has LAN
/// 198.18.100.0/24 and underlay 198.18.0.100.
pub struct HubSpokes {
    /// The lab owning every namespace.
    pub lab: Lab,
    /// The hub gateway's namespace.
    pub hub: String,
    /// The host behind the hub.
    pub hub_host: String,
    /// Spoke gateways, spoke 1 first.
    pub spokes: Vec<String>,
    /// The hosts behind the spokes.
    pub spoke_hosts: Vec<String>,
    /// The WAN bridge's namespace.
    pub wan: String,
}

/// Site number of the hub in [`HubSpokes`] addresses; spokes are 1..=N.
pub const HUB: usize = 0;

impl HubSpokes {
    /// LAN prefix of site `n` ([`HUB`] or a spoke number).
    pub fn lan(n: usize) -> String {
        format!("198.18.{}.0/24", 100 + n)
    }
    /// The LAN host of site `n`.
    pub fn host_addr(n: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 100 + n as u8, 2)
    }
    /// The gateway's LAN address of site `n`.
    pub fn gw_lan(n: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 100 + n as u8, 1)
    }
    /// The gateway's underlay address of site `n`.
    pub fn gw_wan(n: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, 100 + n as u8)
    }
    /// Gateway namespace of site `n`.
    pub fn gw(&self, n: usize) -> &str {
        if n == HUB {
            &self.hub
        } else {
            &self.spokes[n - 1]
        }
    }
    /// Host namespace of site `n`.
    pub fn host(&self, n: usize) -> &str {
        if n == HUB {
            &self.hub_host
        } else {
            &self.spoke_hosts[n - 1]
        }
    }
}

/// Builds a hub and `spokes` (1..=[`MAX_PAIRS`]) spokes in a fresh lab
/// tagged `tag`.
pub fn hub_spokes(tag: &str, spokes: usize) -> Result<HubSpokes> {
    check_count(spokes)?;
    let lab = Lab::new(tag)?;
    let hub_host = lab.add_ns("hub-host")?;
    let hub = lab.add_ns("hub")?;
    let wan = lab.add_ns("wan")?;
    let mut gws = Vec::new();
    let mut hosts = Vec::new();
    for i in 1..=spokes {
        gws.push(lab.add_ns(&format!("spoke{i}"))?);
        hosts.push(lab.add_ns(&format!("spoke{i}-host"))?);
    }
    let br = lab.ifname("br")?;
    bridge(&lab, &wan, &br)?;
    let hs = HubSpokes {
        lab,
        hub,
        hub_host,
        spokes: gws,
        spoke_hosts: hosts,
        wan,
    };
    let lab = &hs.lab;
    for n in 0..=spokes {
        let (gw, host) = (hs.gw(n), hs.host(n));
        lab.sysctl(gw, "net.ipv4.ip_forward", "1")?;
        lab.link(host, HOST_IF, gw, LAN_IF)?;
        let gw_lan = HubSpokes::gw_lan(n);
        lab.ip(
            host,
            &[
                "addr",
                "add",
                &format!("{}/24", HubSpokes::host_addr(n)),
                "dev",
                HOST_IF,
            ],
        )?;
        lab.ip(
            host,
            &["route", "add", "default", "via", &gw_lan.to_string()],
        )?;
        lab.ip(gw, &["addr", "add", &format!("{gw_lan}/24"), "dev", LAN_IF])?;
        bridge_port(lab, &hs.wan, &br, &format!("w{n}"), gw, WAN_IF)?;
        lab.ip(
            gw,
            &[
                "addr",
                "add",
                &format!("{}/24", HubSpokes::gw_wan(n)),
                "dev",
                WAN_IF,
            ],
        )?;
    }
    Ok(hs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_bytes_of_proc_net_dev() {
        let text = "Inter-|   Receive    |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets\n    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n    g1: 1234567    8901    0    0    0     0          0         0 98765432   43210    0    0    0     0       0          0\n";
        assert_eq!(tx_bytes(text, "g1"), Some(98_765_432));
        assert_eq!(tx_bytes(text, "lo"), Some(0));
        assert_eq!(tx_bytes(text, "g2"), None);
    }

    #[test]
    fn addresses_of_the_plan() {
        assert_eq!(
            HaSite::A.gw_link(2),
            (Ipv4Addr::new(198, 18, 12, 1), Ipv4Addr::new(198, 18, 12, 2))
        );
        assert_eq!(HaSite::B.gw_wan(1), Ipv4Addr::new(198, 18, 0, 21));
        assert_eq!(HubSpokes::lan(HUB), "198.18.100.0/24");
        assert_eq!(HubSpokes::gw_wan(3), Ipv4Addr::new(198, 18, 0, 103));
        assert!(check_count(0).is_err() && check_count(MAX_PAIRS + 1).is_err());
    }
}
