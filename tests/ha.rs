//! Two gateway pairs between two sites, BIRD 2 on routers and gateways,
//! ECMP on the routers (tunbench's `HaLab`): a verified transfer survives a
//! killed gateway, routes are withdrawn and re-announced as tunnels die and
//! return, and bad input (a gateway whose BIRD is down, a tunneld with a
//! wrong peer key, a flapping BGP session) never takes the traffic down.

use std::time::{Duration, Instant};

use e2e::{bin, require_root};
use tunbench::lab::ha::flows::{run_flows, start_flows, FlowSpec};
use tunbench::lab::ha::{bird, HaLab, HaOptions};
use tunbench::topo::HaSite;

/// Generous bounds for a shared 2-core CI host (the lab measures the real
/// figures; docs/ha.md has them).
const ROUTE_CHANGE: Duration = Duration::from_secs(5);
/// The failover target is a longest gap of 3 s (measured by the lab); a
/// loaded CI host gets 2 s more.
const MAX_GAP: Duration = Duration::from_secs(5);
/// Each test stream is paced (50 Mbit/s): well below one pair's capacity,
/// so losses are the failover's, and the test leaves CPU to its neighbours.
const STREAM_RATE: u64 = 50_000_000;

fn start(tag: &str) -> Option<HaLab> {
    if !require_root() {
        return None;
    }
    if std::process::Command::new("bird")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true and bird (Debian package bird2) is not installed");
        }
        eprintln!("SKIPPED: bird (Debian package bird2) is not installed");
        return None;
    }
    Some(HaLab::start(tag, 2, HaOptions::new(bin("tunneld"))).expect("HA lab starts"))
}

fn spec(streams: usize, secs: u64, seed: u64) -> FlowSpec {
    FlowSpec {
        streams,
        duration: Duration::from_secs(secs),
        bin: Duration::from_millis(10),
        seed,
        rate: Some(STREAM_RATE),
    }
}

fn sleep_until(t: Instant) {
    if let Some(d) = t.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

fn peer_up(lab: &HaLab, site: HaSite, pair: usize) -> bool {
    lab.status(site, pair)
        .ok()
        .and_then(|s| s["peers"][0]["up"].as_bool())
        .unwrap_or(false)
}

#[test]
fn transfer_survives_a_killed_gateway_and_routes_follow_the_tunnels() {
    let Some(mut lab) = start("ha-failover") else {
        return;
    };
    // Both routers learned the remote LAN from both gateways (BIRD's view
    // and the kernel's multipath route).
    let shown = lab
        .birdc_router(HaSite::A, &["show", "route", "for", "198.18.2.0/24"])
        .expect("birdc");
    assert!(
        shown.contains("198.18.11.2") && shown.contains("198.18.12.2"),
        "{shown}"
    );
    assert_eq!(lab.router_paths(HaSite::A).expect("paths"), vec![1, 2]);
    assert_eq!(lab.router_paths(HaSite::B).expect("paths"), vec![1, 2]);

    // 8 flows for 9 s; gateway a1 dies (SIGKILL, WAN cut) at 2 s and
    // returns at 5 s.
    let running = start_flows(
        &lab.sites.lab,
        &lab.sites.host_a,
        &lab.sites.host_b,
        HaSite::B.host().into(),
        spec(8, 9, 1),
    )
    .expect("flows start");
    let t0 = running.start;
    let mut timeline = || -> Result<(Duration, Duration, Duration), String> {
        sleep_until(t0 + Duration::from_secs(2));
        let killed = Instant::now();
        lab.kill_tunneld(HaSite::A, 1).map_err(|e| e.to_string())?;
        lab.set_wan(HaSite::A, 1, false)
            .map_err(|e| e.to_string())?;
        let a = lab
            .wait_paths(HaSite::A, 1, ROUTE_CHANGE)
            .map_err(|e| e.to_string())?;
        // gw-b1 notices the dead peer (health.dead_after 1 s) and withdraws.
        lab.wait_paths(HaSite::B, 1, ROUTE_CHANGE)
            .map_err(|e| e.to_string())?;
        let b = killed.elapsed();
        if peer_up(&lab, HaSite::B, 1) {
            return Err("gw-b1 still reports its peer up".into());
        }
        sleep_until(t0 + Duration::from_secs(5));
        let back = Instant::now();
        lab.set_wan(HaSite::A, 1, true).map_err(|e| e.to_string())?;
        lab.start_tunneld(HaSite::A, 1).map_err(|e| e.to_string())?;
        lab.wait_paths(HaSite::A, 2, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        lab.wait_paths(HaSite::B, 2, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        Ok((a, b, back.elapsed()))
    };
    let timeline = timeline();
    let flows = running.wait();
    let (a_withdrawn, b_withdrawn, reannounced) = match timeline {
        Ok(t) => t,
        Err(e) => panic!("{e}\n{}", lab.describe()),
    };
    eprintln!(
        "withdrawn at rtr-a after {a_withdrawn:?}, at rtr-b after {b_withdrawn:?}; \
         both paths back {reannounced:?} after the restart; longest gap {:?}, \
         {} retransmissions, {} bytes",
        flows.longest_gap(),
        flows.retransmits(),
        flows.received()
    );
    assert!(flows.intact(), "{}", flows.failures());
    assert!(
        b_withdrawn <= Duration::from_secs(3),
        "the peer gateway withdrew after {b_withdrawn:?} (dead_after is 1 s)"
    );
    assert!(
        flows.longest_gap() <= MAX_GAP,
        "longest gap {:?}",
        flows.longest_gap()
    );
    // Every flow moved data after the gateway returned.
    assert!(flows
        .all_resumed_after(Duration::from_secs(6))
        .is_some_and(|t| t <= Duration::from_secs(9)));
    assert!(peer_up(&lab, HaSite::B, 1), "gw-b1's peer is up again");
    let downs = lab.status(HaSite::B, 1).expect("status")["peers"][0]["downs"]
        .as_u64()
        .unwrap_or(0);
    assert!(downs >= 1, "gw-b1 counted the peer going down");

    // Nothing left behind: every daemon ended, every namespace gone.
    let prefix = lab.sites.lab.prefix().to_string();
    let mut pids: Vec<u32> = lab.router_birds.iter().flatten().copied().collect();
    for g in &lab.gateways {
        pids.extend(g.bird);
        pids.extend(&g.history);
    }
    drop(lab);
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{prefix}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} left running"
        );
    }
}

#[test]
fn bird_down_wrong_key_and_flapping_bgp_never_stop_the_traffic() {
    let Some(mut lab) = start("ha-bad") else {
        return;
    };
    let fail = |lab: &HaLab, e: &dyn std::fmt::Display| -> ! { panic!("{e}\n{}", lab.describe()) };
    let transfer = |lab: &HaLab, seed: u64| {
        let (flows, ()) = run_flows(
            &lab.sites.lab,
            &lab.sites.host_a,
            &lab.sites.host_b,
            HaSite::B.host().into(),
            spec(4, 2, seed),
            |_| (),
        )
        .expect("flows run");
        assert!(flows.intact(), "{}", flows.failures());
    };

    // 1. BIRD on gateway a2 dies: rtr-a stops using a2 at once (its BGP
    //    session closes), rtr-b keeps b2 (that tunnel is up), traffic flows.
    lab.kill_bird(HaSite::A, 2).expect("kill bird");
    if let Err(e) = lab.wait_paths(HaSite::A, 1, ROUTE_CHANGE) {
        fail(&lab, &e);
    }
    assert_eq!(lab.router_paths(HaSite::A).expect("paths"), vec![1]);
    assert_eq!(lab.router_paths(HaSite::B).expect("paths"), vec![1, 2]);
    transfer(&lab, 10);
    lab.start_bird(HaSite::A, 2).expect("bird restarts");
    if let Err(e) = lab.wait_paths(HaSite::A, 2, Duration::from_secs(10)) {
        fail(&lab, &e);
    }

    // 2. The BGP session of gateway a1 flaps three times during a transfer.
    let (flows, flapped) = run_flows(
        &lab.sites.lab,
        &lab.sites.host_a,
        &lab.sites.host_b,
        HaSite::B.host().into(),
        spec(4, 4, 20),
        |_| -> Result<(), String> {
            for _ in 0..3 {
                lab.birdc_gw(HaSite::A, 1, &["disable", bird::GATEWAY_SESSION])
                    .map_err(|e| e.to_string())?;
                std::thread::sleep(Duration::from_millis(300));
                lab.birdc_gw(HaSite::A, 1, &["enable", bird::GATEWAY_SESSION])
                    .map_err(|e| e.to_string())?;
                std::thread::sleep(Duration::from_millis(600));
            }
            Ok(())
        },
    )
    .expect("flows run");
    if let Err(e) = flapped {
        fail(&lab, &e);
    }
    assert!(flows.intact(), "{}", flows.failures());
    if let Err(e) = lab.wait_paths(HaSite::A, 2, Duration::from_secs(10)) {
        fail(&lab, &e);
    }

    // 3. Gateway a2 restarts with a wrong key for its peer: no session, so
    //    neither a2 nor b2 ever announces the remote site again.
    let wrong = tunneld::keys::PrivateKey::generate().expect("rng").public();
    lab.stop_tunneld(HaSite::A, 2).expect("stop");
    lab.gateway_mut(HaSite::A, 2).config.peers[0].public_key = wrong;
    lab.start_tunneld(HaSite::A, 2)
        .expect("start with the wrong key");
    for site in [HaSite::A, HaSite::B] {
        if let Err(e) = lab.wait_paths(site, 1, ROUTE_CHANGE) {
            fail(&lab, &e);
        }
    }
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(lab.router_paths(HaSite::A).expect("paths"), vec![1]);
        assert_eq!(lab.router_paths(HaSite::B).expect("paths"), vec![1]);
        std::thread::sleep(Duration::from_millis(100));
    }
    let exported = lab
        .birdc_gw(
            HaSite::A,
            2,
            &["show", "route", "protocol", bird::GATEWAY_KERNEL],
        )
        .expect("birdc");
    assert!(!exported.contains("198.18.2.0/24"), "{exported}");
    assert!(!peer_up(&lab, HaSite::A, 2));
    // Each side refuses the other's initiations: a wrong mac1 (keyed with
    // the key the initiator believes in) or an unknown static key.
    let refused: u64 = [HaSite::A, HaSite::B]
        .iter()
        .map(|site| {
            let st = lab.status(*site, 2).expect("status");
            ["drop_handshake_invalid", "drop_handshake_mac"]
                .iter()
                .map(|c| st["counters"][c].as_u64().unwrap_or(0))
                .sum::<u64>()
        })
        .sum();
    assert!(refused > 0, "pair 2 counted the refused handshakes");
    transfer(&lab, 30);
}

/// The routes tunneld installs, on one pair without BIRD: a route that was
/// there first is replaced while tunneld runs and put back when it stops;
/// with `on-session` the peer's LAN route exists only while the peer is up.
#[test]
fn routes_follow_the_session_and_a_replaced_route_comes_back() {
    use e2e::{Side, TunnelLab};
    use serde_json::json;
    if !require_root() {
        return;
    }
    let mut tl = TunnelLab::start("ha-routes", false, |_, c| {
        c["health"] = json!({"interval": "200ms", "dead_after": "1s"});
        c["routes"] = json!({"install": "on-session"});
    })
    .expect("pair starts");
    let gw_a = tl.dc.gw_a.clone();
    let lan_b = tunbench::topo::LAN_B_V4;
    let route = |tl: &TunnelLab| {
        tl.lab()
            .ip(&gw_a, &["-4", "route", "show", "exact", lan_b])
            .expect("ip route")
    };
    let tun_a = tl.a.tun.clone();
    let wait_route = |tl: &TunnelLab, want: &str| {
        e2e::wait_for(
            ROUTE_CHANGE,
            &format!("route to {lan_b} with `{want}`"),
            || {
                let r = route(tl);
                Ok((if want.is_empty() {
                    r.trim().is_empty()
                } else {
                    r.contains(want)
                })
                .then_some(r))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", tl.logs()))
    };
    wait_route(&tl, &format!("dev {tun_a}"));
    // Peer down (its daemon stopped): the route goes within dead_after.
    tl.stop_side(Side::B).expect("stop b");
    let t = Instant::now();
    wait_route(&tl, "");
    assert!(
        t.elapsed() <= Duration::from_secs(3),
        "withdrawn after {:?}",
        t.elapsed()
    );
    tl.start_side(Side::B).expect("start b");
    wait_route(&tl, &format!("dev {tun_a}"));

    // A static route to LAN B over the underlay, put in while gw-a's
    // tunneld is stopped, is replaced by tunneld's and restored at exit.
    tl.stop_side(Side::A).expect("stop a");
    wait_route(&tl, "");
    tl.lab()
        .ip(
            &gw_a,
            &[
                "route",
                "add",
                lan_b,
                "via",
                "198.18.0.2",
                "proto",
                "static",
            ],
        )
        .expect("static route");
    tl.start_side(Side::A).expect("start a");
    wait_route(&tl, &format!("dev {tun_a}"));
    tl.stop_side(Side::A).expect("stop a");
    let back = wait_route(&tl, "via 198.18.0.2");
    assert!(back.contains("proto static"), "{back}");
}
