//! Reloads applied to a running [`Device`] ([`Device::reconfigure`]) and
//! the reasons a peer without a session gives, on the two-peer harness.

use super::*;

fn c_key() -> PrivateKey {
    key(3)
}

/// A's config with a second peer, C, at `198.18.0.3:51820` routed 198.18.3.0/24.
fn a_with_c() -> Config {
    let mut cfg = a_config();
    cfg.peers.push(PeerConfig {
        name: "peer3".into(),
        public_key: c_key().public(),
        endpoint: Some(addr("198.18.0.3:51820")),
        allowed_prefixes: prefixes(&["198.18.3.0/24"]),
        keepalive: None,
        transport: crate::config::TransportKind::Udp,
        quic_pin: None,
        transit: None,
    });
    cfg
}

#[test]
fn reload_keeps_the_session_of_an_unchanged_peer_and_adds_one() {
    let mut n = Net::new();
    n.established();
    let before = n.a.counters().handshakes;
    let done = n.a.reconfigure(&a_with_c());
    assert_eq!(done.added, vec!["peer3".to_string()]);
    assert_eq!(done.unchanged, vec!["peer2".to_string()]);
    assert!(
        done.removed.is_empty() && done.changed.is_empty(),
        "{done:?}"
    );
    // B's session survived: data flows both ways with no new handshake.
    for i in 0..10u8 {
        n.send(true, &ipv4(A_HOST, B_HOST, &[i; 100]));
        n.send(false, &ipv4(B_HOST, A_HOST, &[i; 90]));
        n.flush();
    }
    assert_eq!((n.to_b.len(), n.to_a.len()), (10, 10));
    assert_eq!(n.a.counters().handshakes, before, "no rehandshake");
    // The new peer is routed at once: its first packet starts a handshake.
    let mut out = Vec::new();
    let p = ipv4(A_HOST, [198, 18, 3, 7], b"to c");
    let mut buf = vec![0u8; OVERHEAD + p.len()];
    buf[HEADROOM..HEADROOM + p.len()].copy_from_slice(&p);
    let held = n.a.encapsulate(&mut buf, p.len(), &n.time(), &mut out);
    assert_eq!(held, Outcome::Held, "staged until C answers");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].to, addr("198.18.0.3:51820"));
    assert_eq!(out[0].data[0], MessageType::HandshakeInit as u8);
    assert_eq!(n.a.counters().drop_no_route, 0);
    let status = n.a.peer_status(n.time().now);
    assert_eq!(status.len(), 2);
    assert!(status[0].session && !status[1].session);
    assert_eq!(status[1].initiations_unanswered, 1);
}

#[test]
fn reload_changes_prefixes_and_keepalive_without_a_new_session() {
    let mut n = Net::new();
    n.established();
    let mut cfg = a_config();
    cfg.peers[0].allowed_prefixes = prefixes(&["198.19.0.2/32", "198.18.20.0/24"]);
    cfg.peers[0].keepalive = Some(Duration::from_secs(1));
    cfg.peers[0].name = "dc-b".into();
    let done = n.a.reconfigure(&cfg);
    assert_eq!(done.changed, vec!["dc-b".to_string()]);
    // The old prefix is no longer routed; the new one is, on the same session.
    n.send(true, &ipv4(A_HOST, B_HOST, b"old prefix"));
    assert!(n.wire.is_empty());
    assert_eq!(n.a.counters().drop_no_route, 1);
    n.send(true, &ipv4(A_HOST, [198, 18, 20, 1], b"new prefix"));
    assert_eq!(n.wire.len(), 1);
    assert_eq!(
        n.wire[0].2[0],
        MessageType::Data as u8,
        "no handshake first"
    );
    n.flush();
    // B does not route 198.18.20.0/24 back, but it received the packet.
    assert_eq!(n.b.counters().rx_packets, 1);
    // Inner sources from B are now checked against the new prefixes.
    n.send(false, &ipv4([198, 18, 2, 9], A_HOST, b"b lan"));
    n.flush();
    assert_eq!(n.a.counters().drop_spoofed_source, 1);
    // The new keepalive applies.
    n.advance(Duration::from_millis(1100));
    let mut out = Vec::new();
    n.a.tick(&n.time(), &mut out);
    assert!(
        out.iter()
            .any(|d| d.data[0] == MessageType::Keepalive as u8),
        "keepalive every second after the reload"
    );
    let st = n.a.peer_status(n.time().now);
    assert_eq!(st[0].name, "dc-b");
    assert_eq!(st[0].keepalive_secs, Some(1));
    assert_eq!(st[0].handshakes, 1);
}

#[test]
fn a_removed_peer_is_forgotten_and_its_traffic_counted() {
    let mut n = Net::new();
    n.established();
    let mut none = a_config();
    none.peers.clear();
    let done = n.a.reconfigure(&none);
    assert_eq!(done.removed, vec!["peer2".to_string()]);
    assert!(n.a.peer_status(n.time().now).is_empty());
    // B still holds its session: its data now meets an unknown index.
    n.send(false, &ipv4(B_HOST, A_HOST, b"after removal"));
    n.flush();
    assert!(n.to_a.is_empty());
    assert_eq!(n.a.counters().drop_unknown_index, 1);
    // Its next initiation comes from a key A no longer lists.
    n.advance(Duration::from_secs(200));
    n.tick();
    n.flush();
    assert!(n.a.counters().drop_handshake_invalid >= 1);
    assert_eq!(n.a.counters().handshakes, 1, "only the first one");
    // And routing towards it is gone.
    n.send(true, &ipv4(A_HOST, B_HOST, b"x"));
    assert_eq!(n.a.counters().drop_no_route, 1);
    // Adding it back makes it reachable again, with a new session.
    n.a.reconfigure(&a_config());
    n.advance(Duration::from_secs(1));
    n.established();
    n.send(true, &ipv4(A_HOST, B_HOST, b"back"));
    n.flush();
    assert_eq!(n.to_b.len(), 1);
}

#[test]
fn an_endpoint_change_in_the_config_moves_the_peer() {
    let mut n = Net::new();
    n.established();
    let mut cfg = a_config();
    cfg.peers[0].endpoint = Some(addr("198.18.0.9:51820"));
    n.a.reconfigure(&cfg);
    n.send(true, &ipv4(A_HOST, B_HOST, b"x"));
    assert_eq!(n.wire[0].0, addr("198.18.0.9:51820"));
    // An unchanged configured endpoint keeps a learned one (roaming).
    n.a.reconfigure(&cfg);
    assert_eq!(
        n.a.peer_status(n.time().now)[0].endpoint.as_deref(),
        Some("198.18.0.9:51820")
    );
}

#[test]
fn unanswered_initiations_and_a_key_mismatch_are_explained() {
    let mut n = Net::new();
    // B is down: A's initiations go unanswered.
    for _ in 0..4 {
        n.tick();
        n.wire.clear();
        n.advance(Duration::from_secs(5));
    }
    let st = &n.a.peer_status(n.time().now)[0];
    assert!(!st.session);
    assert_eq!(st.initiations_unanswered, 4);
    assert_eq!(st.unanswered_since_unix, Some(1_700_000_000));
    assert_eq!(st.refusal, None);
    // B comes back with a key A does not list: its initiation is refused
    // and A says so for the peer at that address.
    let mut stranger = Device::new(&config(9, 1, Some(A_ADDR), &["198.18.1.0/24"]));
    let mut out = Vec::new();
    stranger.tick(&n.time(), &mut out);
    for d in out {
        n.deliver(d.to, addr(B_ADDR), d.data);
    }
    let st = &n.a.peer_status(n.time().now)[0];
    let why = st.refusal.as_deref().unwrap_or("");
    assert!(
        why.contains("198.18.0.2:51820") && why.contains("public key"),
        "{why}"
    );
    let reason = no_session_reason(&n.a.peers[0].diag);
    assert!(
        reason.starts_with("4 initiations unanswered since 22:13:20 UTC; its address"),
        "{reason}"
    );
    // Once a session exists there is nothing left to explain.
    n.wire.clear();
    n.established();
    let st = &n.a.peer_status(n.time().now)[0];
    assert_eq!(
        (st.initiations_unanswered, st.refusal.as_deref()),
        (0, None)
    );
}
