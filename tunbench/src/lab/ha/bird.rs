//! BIRD 2 in the HA lab: generated configs for a site router (eBGP to each
//! gateway, ECMP into the kernel) and a gateway (learns tunneld's
//! `on-session` routes from the kernel, announces them to its router), one
//! daemon per namespace with its own control socket, and reading the
//! routers' forwarding state back.
//!
//! The configs are the ones docs/ha.md explains, with the lab's addresses;
//! timers are short (BGP hold 3 s, BIRD's minimum) so a dead BGP speaker
//! is noticed within seconds even without BFD.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::topo::{HaSite, HaSites};

/// AS number of both site routers (each site is its own routing domain).
pub const ROUTER_AS: u32 = 65000;
/// AS number of every gateway: the same AS path length from every gateway,
/// so a router sees their routes as equal-cost and merges them (ECMP).
pub const GATEWAY_AS: u32 = 65001;
/// Name of a router's BGP session to gateway `i` (`birdc` and `proto` filters).
pub fn router_session(i: usize) -> String {
    format!("gw{i}")
}
/// Name of a gateway's BGP session to its router.
pub const GATEWAY_SESSION: &str = "site";
/// Name of a gateway's kernel protocol that learns tunneld's routes.
pub const GATEWAY_KERNEL: &str = "tunnel";

/// BGP timers of the lab: hold 3 s (the minimum BIRD accepts), keepalive
/// 1 s, reconnect after 1 s, so a restarted gateway is back in seconds.
const BGP_TIMERS: &str = "\thold time 3;\n\tkeepalive time 1;\n\tconnect retry time 1;\n\
                          \terror wait time 1, 4;\n";

/// The config of `site`'s router with `pairs` gateways.
pub fn router_config(site: HaSite, pairs: usize) -> String {
    let mut c = format!(
        "# Site router {}: eBGP to each gateway, ECMP into the kernel.\n\
         router id {};\n\
         log stderr all;\n\
         protocol device {{ scan time 10; }}\n\
         protocol kernel {{\n\
         \tmerge paths on;          # equal BGP routes → one multipath route\n\
         \tipv4 {{ import none; export where source = RTS_BGP; }};\n\
         }}\n",
        site.letter(),
        site.router_lan()
    );
    for i in 1..=pairs {
        let (r, g) = site.gw_link(i);
        let _ = write!(
            c,
            "protocol bgp {} {{\n\
             \tlocal {r} as {ROUTER_AS};\n\
             \tneighbor {g} as {GATEWAY_AS};\n\
             {BGP_TIMERS}\
             \tipv4 {{ import all; export none; }};\n\
             }}\n",
            router_session(i)
        );
    }
    c
}

/// The config of gateway `i` of `site`, whose tunneld routes into `tun`.
pub fn gateway_config(site: HaSite, i: usize, tun: &str) -> String {
    let (r, g) = site.gw_link(i);
    format!(
        "# Gateway {letter}{i}: announce what tunneld routes into {tun} (only while\n\
         # its tunnel is up: routes.install on-session) to the site router.\n\
         router id {g};\n\
         log stderr all;\n\
         protocol device {{ scan time 10; }}\n\
         protocol kernel {GATEWAY_KERNEL} {{\n\
         \tlearn;                   # import routes other programs put in the kernel\n\
         \tscan time 10;\n\
         \tipv4 {{ import where ifname = \"{tun}\"; export none; }};\n\
         }}\n\
         protocol bgp {GATEWAY_SESSION} {{\n\
         \tlocal {g} as {GATEWAY_AS};\n\
         \tneighbor {r} as {ROUTER_AS};\n\
         {BGP_TIMERS}\
         \tipv4 {{ import none; export where proto = \"{GATEWAY_KERNEL}\"; }};\n\
         }}\n",
        letter = site.letter()
    )
}

/// Runs `birdc -s SOCK ARGS...` in `ns`; its output, or why it failed.
pub fn birdc(sites: &HaSites, ns: &str, sock: &Path, args: &[&str]) -> Result<String, String> {
    let sock = sock.to_string_lossy();
    let mut full = vec!["-s", &sock];
    full.extend_from_slice(args);
    let out = sites
        .lab
        .exec(ns, "birdc", &full)
        .map_err(|e| format!("birdc: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "birdc {} failed: {}{}",
            args.join(" "),
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(text)
}

/// The next hops of `prefix` in the kernel of namespace `ns` (`ip route
/// show exact`): one address per path, none if there is no route.
pub fn kernel_next_hops(sites: &HaSites, ns: &str, prefix: &str) -> Result<Vec<Ipv4Addr>, String> {
    let out = sites
        .lab
        .ip(ns, &["-4", "route", "show", "exact", prefix])
        .map_err(|e| e.to_string())?;
    Ok(parse_next_hops(&out))
}

/// Next-hop addresses of an `ip route show` answer for one prefix (single
/// path `... via X dev ...` or multipath `nexthop via X dev ...` lines).
pub fn parse_next_hops(text: &str) -> Vec<Ipv4Addr> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "via")
        .filter_map(|w| w[1].parse().ok())
        .collect()
}

/// Whether the BGP session `name` is Established per `birdc show protocols`.
pub fn session_established(show_protocols: &str, name: &str) -> bool {
    show_protocols.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some(name) && l.contains("Established")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops_of_single_and_multipath_routes() {
        let multi = "198.18.2.0/24 proto bird metric 32 \n\tnexthop via 198.18.11.2 dev g1 weight 1 \n\tnexthop via 198.18.12.2 dev g2 weight 1 \n";
        assert_eq!(
            parse_next_hops(multi),
            vec![Ipv4Addr::new(198, 18, 11, 2), Ipv4Addr::new(198, 18, 12, 2)]
        );
        let single = "198.18.2.0/24 via 198.18.12.2 dev g2 proto bird metric 32 \n";
        assert_eq!(parse_next_hops(single), vec![Ipv4Addr::new(198, 18, 12, 2)]);
        assert!(parse_next_hops("").is_empty());
    }

    #[test]
    fn configs_name_every_session_and_filter() {
        let r = router_config(HaSite::A, 2);
        assert!(r.contains("merge paths on"));
        assert!(r.contains("protocol bgp gw1") && r.contains("protocol bgp gw2"));
        assert!(r.contains("neighbor 198.18.12.2 as 65001"));
        let g = gateway_config(HaSite::B, 2, "tunb2");
        assert!(g.contains("learn;"));
        assert!(g.contains("ifname = \"tunb2\""));
        assert!(g.contains("local 198.18.22.2 as 65001"));
        assert!(g.contains("neighbor 198.18.22.1 as 65000"));
        let show = "Name       Proto      Table      State  Since         Info\n\
                    site       BGP        ---        up     12:00:00.000  Established   \n\
                    gw2        BGP        ---        start  12:00:00.000  Active        Socket: Connection refused\n";
        assert!(session_established(show, "site"));
        assert!(!session_established(show, "gw2"));
        assert!(!session_established(show, "gw1"));
    }
}
