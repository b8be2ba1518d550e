//! The lab's standard topology (docs/design.md, "The lab"): two data-centre LANs,
//! each behind a gateway, the gateways joined by an underlay, optionally
//! through a `wan` namespace whose Linux bridge is where WAN emulation goes.
//!
//! ```text
//!  host-a eth0 ── lan0 gw-a wan0 ══ [wan: <p>a ─ <p>br ─ <p>b] ══ wan0 gw-b lan0 ── eth0 host-b
//! ```
//! No LAN↔LAN routes exist until a tunnel (or [`DcPair::route_lans_directly`])
//! provides them.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::error::Result;
use super::lab::Lab;

/// Interface name of the hosts' only link.
pub const HOST_IF: &str = "eth0";
/// Gateway interface towards its LAN host.
pub const LAN_IF: &str = "lan0";
/// Gateway interface on the underlay.
pub const WAN_IF: &str = "wan0";

/// host-a's address on LAN A.
pub const HOST_A_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// host-a's IPv6 address on LAN A.
pub const HOST_A_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
/// gw-a on LAN A (host-a's default gateway).
pub const GW_A_LAN_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// gw-a on LAN A, IPv6.
pub const GW_A_LAN_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
/// gw-a on the underlay.
pub const GW_A_WAN_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// gw-a on the underlay, IPv6.
pub const GW_A_WAN_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
/// gw-b on the underlay.
pub const GW_B_WAN_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// gw-b on the underlay, IPv6.
pub const GW_B_WAN_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
/// gw-b on LAN B (host-b's default gateway).
pub const GW_B_LAN_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
/// gw-b on LAN B, IPv6.
pub const GW_B_LAN_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 1);
/// host-b's address on LAN B.
pub const HOST_B_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
/// host-b's IPv6 address on LAN B.
pub const HOST_B_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 2);
/// LAN A prefix.
pub const LAN_A_V4: &str = "198.18.1.0/24";
/// LAN A prefix, IPv6.
pub const LAN_A_V6: &str = "fd00:1::/64";
/// LAN B prefix.
pub const LAN_B_V4: &str = "198.18.2.0/24";
/// LAN B prefix, IPv6.
pub const LAN_B_V6: &str = "fd00:2::/64";

/// The standard two-DC topology. Dropping it (its `lab`) tears it all down.
pub struct DcPair {
    /// The lab owning every namespace below.
    pub lab: Lab,
    /// Namespace of host-a (LAN A).
    pub host_a: String,
    /// Namespace of gateway A.
    pub gw_a: String,
    /// Namespace of the WAN bridge, when built `with_wan`.
    pub wan: Option<String>,
    /// Namespace of gateway B.
    pub gw_b: String,
    /// Namespace of host-b (LAN B).
    pub host_b: String,
}

/// Builds the standard topology in a fresh lab tagged `tag`. With `with_wan`
/// the gateways' `wan0` veths meet at a bridge in a `wan` namespace (ports
/// `<prefix>a`, `<prefix>b`, bridge `<prefix>br`); without it they are one
/// veth pair.
pub fn dc_pair(tag: &str, with_wan: bool) -> Result<DcPair> {
    let lab = Lab::new(tag)?;
    let host_a = lab.add_ns("host-a")?;
    let gw_a = lab.add_ns("gw-a")?;
    let wan = if with_wan {
        Some(lab.add_ns("wan")?)
    } else {
        None
    };
    let gw_b = lab.add_ns("gw-b")?;
    let host_b = lab.add_ns("host-b")?;

    // Before any link exists, so new interfaces inherit "no DAD": addresses
    // are usable at once (plus `nodad` on each address below).
    for ns in [&host_a, &gw_a, &gw_b, &host_b] {
        lab.sysctl(ns, "net.ipv6.conf.all.accept_dad", "0")?;
        lab.sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")?;
    }
    for gw in [&gw_a, &gw_b] {
        lab.sysctl(gw, "net.ipv4.ip_forward", "1")?;
        lab.sysctl(gw, "net.ipv6.conf.all.forwarding", "1")?;
    }

    lab.link(&host_a, HOST_IF, &gw_a, LAN_IF)?;
    lab.link(&host_b, HOST_IF, &gw_b, LAN_IF)?;
    match &wan {
        Some(wan) => {
            // The bridge is layer 2 only: no IPv6 chatter of its own (keeps
            // captures on the underlay clean).
            lab.sysctl(wan, "net.ipv6.conf.all.disable_ipv6", "1")?;
            lab.sysctl(wan, "net.ipv6.conf.default.disable_ipv6", "1")?;
            let (port_a, port_b, br) = wan_names(&lab)?;
            lab.ip(
                wan,
                &["link", "add", &br, "type", "bridge", "stp_state", "0"],
            )?;
            lab.link(&gw_a, WAN_IF, wan, &port_a)?;
            lab.link(wan, &port_b, &gw_b, WAN_IF)?;
            for port in [&port_a, &port_b] {
                lab.ip(wan, &["link", "set", port, "master", &br])?;
            }
            lab.ip(wan, &["link", "set", &br, "up"])?;
        }
        None => lab.link(&gw_a, WAN_IF, &gw_b, WAN_IF)?,
    }

    let addrs: [(&String, &str, String, String); 6] = [
        (
            &host_a,
            HOST_IF,
            format!("{HOST_A_V4}/24"),
            format!("{HOST_A_V6}/64"),
        ),
        (
            &gw_a,
            LAN_IF,
            format!("{GW_A_LAN_V4}/24"),
            format!("{GW_A_LAN_V6}/64"),
        ),
        (
            &gw_a,
            WAN_IF,
            format!("{GW_A_WAN_V4}/24"),
            format!("{GW_A_WAN_V6}/64"),
        ),
        (
            &gw_b,
            WAN_IF,
            format!("{GW_B_WAN_V4}/24"),
            format!("{GW_B_WAN_V6}/64"),
        ),
        (
            &gw_b,
            LAN_IF,
            format!("{GW_B_LAN_V4}/24"),
            format!("{GW_B_LAN_V6}/64"),
        ),
        (
            &host_b,
            HOST_IF,
            format!("{HOST_B_V4}/24"),
            format!("{HOST_B_V6}/64"),
        ),
    ];
    for (ns, dev, v4, v6) in &addrs {
        lab.ip(ns, &["addr", "add", v4, "dev", dev])?;
        lab.ip(ns, &["-6", "addr", "add", v6, "dev", dev, "nodad"])?;
    }
    for (host, gw4, gw6) in [
        (&host_a, GW_A_LAN_V4, GW_A_LAN_V6),
        (&host_b, GW_B_LAN_V4, GW_B_LAN_V6),
    ] {
        lab.ip(host, &["route", "add", "default", "via", &gw4.to_string()])?;
        lab.ip(
            host,
            &["-6", "route", "add", "default", "via", &gw6.to_string()],
        )?;
    }
    Ok(DcPair {
        lab,
        host_a,
        gw_a,
        wan,
        gw_b,
        host_b,
    })
}

/// The generated interface names in the wan namespace: (port towards gw-a,
/// port towards gw-b, bridge).
fn wan_names(lab: &Lab) -> Result<(String, String, String)> {
    Ok((lab.ifname("a")?, lab.ifname("b")?, lab.ifname("br")?))
}

impl DcPair {
    /// Plain routed LAN↔LAN routes across the underlay (the "raw" path, the
    /// ceiling a tunnel is compared against). Idempotent.
    pub fn route_lans_directly(&self) -> Result<()> {
        let lab = &self.lab;
        let (a4, a6) = (GW_A_WAN_V4.to_string(), GW_A_WAN_V6.to_string());
        let (b4, b6) = (GW_B_WAN_V4.to_string(), GW_B_WAN_V6.to_string());
        lab.ip(&self.gw_a, &["route", "replace", LAN_B_V4, "via", &b4])?;
        lab.ip(
            &self.gw_a,
            &["-6", "route", "replace", LAN_B_V6, "via", &b6],
        )?;
        lab.ip(&self.gw_b, &["route", "replace", LAN_A_V4, "via", &a4])?;
        lab.ip(
            &self.gw_b,
            &["-6", "route", "replace", LAN_A_V6, "via", &a6],
        )?;
        Ok(())
    }

    /// The wan namespace's interfaces (port towards gw-a, port towards gw-b,
    /// bridge), where WAN emulation attaches; `None` without a wan namespace.
    pub fn wan_ifaces(&self) -> Option<(String, String, String)> {
        self.wan.as_ref()?;
        wan_names(&self.lab).ok()
    }

    /// All five (or four) namespaces, from host-a to host-b.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.host_a.clone(), self.gw_a.clone()];
        v.extend(self.wan.clone());
        v.extend([self.gw_b.clone(), self.host_b.clone()]);
        v
    }
}
