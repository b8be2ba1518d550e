//! Gateway-pair and hub features on the in-memory harness of the parent
//! module: peer liveness and its events (`health:`: a dead peer is reported
//! down within `dead_after` plus one timer tick, a returning one up again,
//! an idle but live one never flaps) and the hub's `transit` policy.

use super::*;
use crate::config::HealthConfig;

/// The data path's timer period, which the harness reproduces.
const TICK: Duration = Duration::from_millis(50);

fn health() -> HealthConfig {
    HealthConfig {
        interval: Duration::from_millis(200),
        dead_after: Duration::from_secs(1),
    }
}

/// A pair with `health:` on both sides (as a gateway pair would run).
fn healthy_net() -> Net {
    let mut n = Net::new();
    let mut a = a_config();
    a.health = Some(health());
    let mut b = b_config();
    b.health = Some(health());
    n.a = Device::new(&a);
    n.b = Device::new(&b);
    n
}

/// Ticks both sides every [`TICK`] for `d`, delivering what they send
/// (`deliver_to_b == false` loses everything in flight: B is unreachable).
/// Returns A's events with the time they were seen.
fn run_for(n: &mut Net, d: Duration, deliver_to_b: bool) -> Vec<(Duration, PeerEvent)> {
    let mut seen = Vec::new();
    let end = n.elapsed + d;
    while n.elapsed < end {
        n.advance(TICK);
        n.tick();
        if deliver_to_b {
            n.flush();
        } else {
            n.wire.clear();
        }
        for ev in n.a.take_events() {
            seen.push((n.elapsed, ev));
        }
    }
    seen
}

#[test]
fn dead_peer_is_reported_within_dead_after_and_back_when_it_returns() {
    let mut n = healthy_net();
    let ev = run_for(&mut n, Duration::from_millis(200), true);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        ev[0].1,
        PeerEvent {
            peer: 0,
            name: "peer2".into(),
            up: true
        }
    );
    assert!(n.a.peer_up(0));
    assert_eq!(n.b.take_events().len(), 1, "B saw A come up too");

    // Idle for 10 s: keepalives every interval keep both sides up.
    let before = n.b.counters().rx_packets;
    let ev = run_for(&mut n, Duration::from_secs(10), true);
    assert!(ev.is_empty(), "an idle live peer must not flap: {ev:?}");
    assert!(n.b.take_events().is_empty());
    assert_eq!(n.b.counters().rx_packets, before, "keepalives are not data");
    assert_eq!(n.a.counters().drop_bad_tag + n.b.counters().drop_bad_tag, 0);

    // B dies: nothing reaches A any more.
    let died = n.elapsed;
    let ev = run_for(&mut n, Duration::from_secs(3), false);
    let down: Vec<_> = ev.iter().filter(|(_, e)| !e.up).collect();
    assert_eq!(down.len(), 1, "{ev:?}");
    let detected = down[0].0 - died;
    assert!(
        detected <= health().dead_after + TICK,
        "down after {detected:?}, dead_after is 1 s"
    );
    // The last keepalive from B was at most one interval before it died.
    assert!(
        detected >= health().dead_after - health().interval - TICK,
        "{detected:?}"
    );
    let st = &n.a.peer_status(n.time().now)[0];
    assert!(!st.up);
    assert_eq!(st.downs, 1);

    // B comes back (restarted, no state): A is up again within a few
    // seconds (A retries its handshake at most every 4 s; B initiates at once).
    n.b = Device::new(&{
        let mut b = b_config();
        b.health = Some(health());
        b
    });
    let back = n.elapsed;
    let ev = run_for(&mut n, Duration::from_secs(5), true);
    let up: Vec<_> = ev.iter().filter(|(_, e)| e.up).collect();
    assert_eq!(up.len(), 1, "{ev:?}");
    assert!(
        up[0].0 - back <= Duration::from_millis(200),
        "{:?}",
        up[0].0 - back
    );
    assert!(n.a.peer_up(0));
}

#[test]
fn a_short_outage_below_dead_after_is_not_reported() {
    let mut n = healthy_net();
    run_for(&mut n, Duration::from_millis(200), true);
    n.a.take_events();
    // Lost for 500 ms: with the last keepalive up to one interval before
    // and the next up to one after, B is silent for at most 900 ms.
    let ev = run_for(&mut n, Duration::from_millis(500), false);
    assert!(ev.is_empty(), "{ev:?}");
    let ev = run_for(&mut n, Duration::from_secs(2), true);
    assert!(ev.is_empty(), "{ev:?}");
    assert!(n.a.peer_up(0));
}

#[test]
fn without_health_an_idle_peer_stays_up_and_expiry_takes_it_down() {
    let mut n = Net::new();
    n.established();
    n.tick();
    assert_eq!(n.a.take_events().len(), 1);
    // No keepalives configured, no traffic for a minute: still up (no
    // data of ours went unanswered).
    n.advance(Duration::from_secs(60));
    n.tick();
    n.flush();
    assert!(n.a.take_events().is_empty());
    // Data into the void for longer than the 15 s dead-peer time: down.
    n.send(true, &ipv4(A_HOST, B_HOST, b"unanswered"));
    n.wire.clear();
    n.advance(Duration::from_secs(16));
    n.tick();
    n.wire.clear();
    let ev = n.a.take_events();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(!ev[0].up);
}

#[test]
fn health_shortens_but_never_lengthens_the_keepalive() {
    let h = Some(health());
    let k = |s: u64| Some(Duration::from_secs(s));
    assert_eq!(keepalive_with_health(k(5), h), Some(health().interval));
    assert_eq!(keepalive_with_health(None, h), Some(health().interval));
    assert_eq!(keepalive_with_health(k(5), None), k(5));
    assert_eq!(keepalive_with_health(None, None), None);
    let fast = Some(HealthConfig {
        interval: Duration::from_secs(30),
        dead_after: Duration::from_secs(90),
    });
    assert_eq!(keepalive_with_health(k(5), fast), k(5));
}

/// A hub (side A) with peers B and C; B sends towards C's LAN through it.
fn hub_net(transit: Option<Vec<usize>>) -> Net {
    let mut hub = a_config();
    hub.peers[0].transit = transit;
    let mut c = hub.peers[0].clone();
    c.name = "peer3".into();
    c.public_key = key(3).public();
    c.endpoint = None;
    c.allowed_prefixes = prefixes(&["198.18.3.0/24"]);
    c.transit = None;
    hub.peers.push(c);
    let mut b = b_config();
    b.peers[0]
        .allowed_prefixes
        .extend(prefixes(&["198.18.3.0/24"]));
    let mut n = Net::new();
    n.a = Device::new(&hub);
    n.b = Device::new(&b);
    n.established();
    n
}

#[test]
fn hub_transit_policy_drops_and_counts_refused_spoke_to_spoke_packets() {
    const C_HOST: [u8; 4] = [198, 18, 3, 2];
    // B may reach nobody through the hub: its packet to C is dropped and
    // counted; its packet to the hub's own LAN still arrives.
    let mut n = hub_net(Some(vec![]));
    n.send(false, &ipv4(B_HOST, C_HOST, b"to c"));
    n.send(false, &ipv4(B_HOST, A_HOST, b"to the hub"));
    n.flush();
    assert_eq!(n.to_a.len(), 1);
    assert_eq!(&n.to_a[0][28..], b"to the hub");
    assert_eq!(n.a.counters().drop_transit_denied, 1);
    let st = n.a.peer_status(n.time().now);
    assert_eq!((st[0].transit_denied, st[1].transit_denied), (1, 0));
    // B may reach C (peer position 1): delivered to the hub's TUN, whose
    // kernel routes it back into the tunnel towards C.
    let mut n = hub_net(Some(vec![1]));
    n.send(false, &ipv4(B_HOST, C_HOST, b"to c"));
    n.flush();
    assert_eq!(n.to_a.len(), 1);
    assert_eq!(n.a.counters().drop_transit_denied, 0);
    // No list: any peer, as before the policy existed.
    let mut n = hub_net(None);
    n.send(false, &ipv4(B_HOST, C_HOST, b"to c"));
    n.flush();
    assert_eq!(n.to_a.len(), 1);
}

#[test]
fn a_reload_keeps_liveness_and_moves_routes_of_renamed_or_removed_peers() {
    let mut n = healthy_net();
    assert_eq!(run_for(&mut n, Duration::from_millis(200), true).len(), 1);
    // Same key, new name: down under the old name, up under the new one.
    let mut cfg = a_config();
    cfg.health = Some(health());
    cfg.peers[0].name = "renamed".into();
    n.a.reconfigure(&cfg);
    let ev = n.a.take_events();
    assert_eq!(
        ev.iter()
            .map(|e| (e.name.as_str(), e.up))
            .collect::<Vec<_>>(),
        vec![("peer2", false), ("renamed", true)]
    );
    assert!(n.a.peer_up(0), "still up: the session was kept");
    let ev = run_for(&mut n, Duration::from_secs(2), true);
    assert!(ev.is_empty(), "no flapping after the reload: {ev:?}");
    // The peer removed: down.
    cfg.peers.clear();
    n.a.reconfigure(&cfg);
    let ev = n.a.take_events();
    assert_eq!(ev.len(), 1);
    assert!(!ev[0].up && ev[0].name == "renamed");
}
