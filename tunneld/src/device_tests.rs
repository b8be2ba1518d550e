//! The in-memory two-peer harness: two [`Device`]s, a virtual clock and a
//! lossy "network" that is just a list of datagrams, exercising handshakes,
//! rekeys, restarts and hostile input without sockets or sleeping.

use super::*;
use crate::config::{Config, PeerConfig};
use crate::keys::PrivateKey;
use crate::prefix::Prefix;
use crate::testkit::key;
use std::net::SocketAddr;

#[path = "device_ha_tests.rs"]
mod ha;

#[path = "fastpath_tests.rs"]
mod fastpath;

const A_ADDR: &str = "198.18.0.1:51820";
const B_ADDR: &str = "198.18.0.2:51820";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn prefixes(list: &[&str]) -> Vec<Prefix> {
    list.iter().map(|p| p.parse().expect("prefix")).collect()
}

fn config(me: u8, peer: u8, peer_endpoint: Option<&str>, allowed: &[&str]) -> Config {
    crate::testkit::config(me, peer, peer_endpoint.map(addr), allowed)
}

fn a_config() -> Config {
    config(
        1,
        2,
        Some(B_ADDR),
        &["198.19.0.2/32", "198.18.2.0/24", "fd00:2::/64"],
    )
}

fn b_config() -> Config {
    config(
        2,
        1,
        Some(A_ADDR),
        &["198.19.0.1/32", "198.18.1.0/24", "fd00:1::/64"],
    )
}

/// An IPv4/UDP packet from `src` to `dst` carrying `payload`.
fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut r = crate::testkit::PacketRepr::udp("0.0.0.0", "0.0.0.0");
    (r.src, r.dst) = (src.into(), dst.into());
    r.emit(payload)
}

struct Net {
    t0: Instant,
    elapsed: Duration,
    a: Device,
    b: Device,
    /// In flight: (to, from, frame).
    wire: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Inner packets delivered to each side's TUN.
    to_a: Vec<Vec<u8>>,
    to_b: Vec<Vec<u8>>,
    /// Frames longer than this vanish (a path-MTU black hole).
    max_frame: Option<usize>,
}

impl Net {
    fn new() -> Net {
        Net {
            t0: Instant::now(),
            elapsed: Duration::ZERO,
            a: Device::new(&a_config()),
            b: Device::new(&b_config()),
            wire: Vec::new(),
            to_a: Vec::new(),
            to_b: Vec::new(),
            max_frame: None,
        }
    }

    fn time(&self) -> Time {
        Time {
            now: self.t0 + self.elapsed,
            unix: Duration::from_secs(1_700_000_000) + self.elapsed,
        }
    }

    fn advance(&mut self, d: Duration) {
        self.elapsed += d;
    }

    fn push_out(&mut self, from: &str, out: Vec<Datagram>) {
        for d in out {
            self.wire.push((d.to, addr(from), d.data));
        }
    }

    /// An inner packet entering side A's TUN (`a == true`) or B's.
    fn send(&mut self, from_a: bool, packet: &[u8]) {
        let t = self.time();
        let mut buf = vec![0u8; OVERHEAD + packet.len()];
        buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
        let mut out = Vec::new();
        let (dev, me) = if from_a {
            (&mut self.a, A_ADDR)
        } else {
            (&mut self.b, B_ADDR)
        };
        if let Outcome::Send { to, len } = dev.encapsulate(&mut buf, packet.len(), &t, &mut out) {
            self.wire.push((to, addr(me), buf[..len].to_vec()));
        }
        self.push_out(me, out);
    }

    /// Delivers one frame to the side listening on `to`.
    fn deliver(&mut self, to: SocketAddr, from: SocketAddr, mut frame: Vec<u8>) {
        if self.max_frame.is_some_and(|m| frame.len() > m) {
            return;
        }
        let t = self.time();
        let mut out = Vec::new();
        let len = frame.len();
        frame.resize(len + 64, 0);
        let (dev, inbox, me) = if to == addr(A_ADDR) {
            (&mut self.a, &mut self.to_a, A_ADDR)
        } else {
            (&mut self.b, &mut self.to_b, B_ADDR)
        };
        if let Some(r) = dev.decapsulate(&mut frame, len, from, &t, &mut out) {
            inbox.push(frame[r].to_vec());
        }
        self.push_out(me, out);
    }

    /// Delivers everything in flight, including what the deliveries produce.
    fn flush(&mut self) {
        let mut rounds = 0;
        while !self.wire.is_empty() {
            rounds += 1;
            assert!(rounds < 100, "message storm");
            for (to, from, frame) in std::mem::take(&mut self.wire) {
                self.deliver(to, from, frame);
            }
        }
    }

    fn tick(&mut self) {
        let t = self.time();
        let mut out = Vec::new();
        self.a.tick(&t, &mut out);
        self.push_out(A_ADDR, out);
        let mut out = Vec::new();
        self.b.tick(&t, &mut out);
        self.push_out(B_ADDR, out);
    }

    fn established(&mut self) {
        self.tick();
        self.flush();
        assert!(
            self.a.peer_status(self.time().now)[0].session,
            "a has a session"
        );
        assert!(
            self.b.peer_status(self.time().now)[0].session,
            "b has a session"
        );
    }
}

const A_HOST: [u8; 4] = [198, 18, 1, 2];
const B_HOST: [u8; 4] = [198, 18, 2, 2];

#[test]
fn first_packet_triggers_handshake_and_is_delivered() {
    let mut n = Net::new();
    let p = ipv4(A_HOST, B_HOST, b"hello through the tunnel");
    n.send(true, &p);
    assert_eq!(n.wire.len(), 1, "only the initiation goes out");
    assert_eq!(n.wire[0].2[0], MessageType::HandshakeInit as u8);
    n.flush();
    assert_eq!(
        n.to_b,
        vec![p.clone()],
        "staged packet delivered after the handshake"
    );
    let back = ipv4(B_HOST, A_HOST, b"and back");
    n.send(false, &back);
    n.flush();
    assert_eq!(n.to_a, vec![back]);
    assert_eq!(n.a.counters().handshakes, 1);
    assert_eq!(n.b.counters().handshakes, 1);
    assert_eq!(n.b.counters().rx_packets, 1);
}

#[test]
fn gateways_bring_the_tunnel_up_on_their_own() {
    let mut n = Net::new();
    n.established();
    let p = ipv4(A_HOST, B_HOST, b"x");
    n.send(true, &p);
    assert_eq!(n.wire.len(), 1);
    assert_eq!(
        n.wire[0].2[0],
        MessageType::Data as u8,
        "sent at once, no handshake"
    );
    n.flush();
    assert_eq!(n.to_b.len(), 1);
}

#[test]
fn replayed_and_tampered_frames_are_dropped_and_counted() {
    let mut n = Net::new();
    n.established();
    n.send(true, &ipv4(A_HOST, B_HOST, b"once"));
    let (to, from, frame) = n.wire[0].clone();
    n.flush();
    n.deliver(to, from, frame.clone());
    assert_eq!(n.b.counters().drop_replay, 1);
    // A fresh frame with a flipped ciphertext bit: bad tag, and the genuine
    // frame is still accepted afterwards (the forgery did not move the window).
    n.send(true, &ipv4(A_HOST, B_HOST, b"twice"));
    let (to, from, good) = n.wire.remove(0);
    let mut bad = good.clone();
    bad[20] ^= 1;
    n.deliver(to, from, bad);
    assert_eq!(n.b.counters().drop_bad_tag, 1);
    n.deliver(to, from, good);
    assert_eq!(n.to_b.len(), 2);
    // Unknown receiver index.
    let mut unknown = frame.clone();
    unknown[4..8].copy_from_slice(&0xdead_beef_u32.to_le_bytes());
    n.deliver(to, from, unknown);
    assert_eq!(n.b.counters().drop_unknown_index, 1);
}

#[test]
fn spoofed_inner_source_is_dropped() {
    let mut n = Net::new();
    n.established();
    // A forwards a packet whose source is not in A's allowed prefixes at B.
    n.send(true, &ipv4([198, 18, 9, 9], B_HOST, b"spoof"));
    n.flush();
    assert!(n.to_b.is_empty());
    assert_eq!(n.b.counters().drop_spoofed_source, 1);
}

#[test]
fn unrouted_destination_is_counted() {
    let mut n = Net::new();
    n.send(true, &ipv4(A_HOST, [198, 18, 7, 7], b"nowhere"));
    assert!(n.wire.is_empty());
    assert_eq!(n.a.counters().drop_no_route, 1);
}

#[test]
fn garbage_never_panics_and_is_counted() {
    let mut n = Net::new();
    n.established();
    let mut seed = 0x1234_5678_u32;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for len in [0usize, 1, 3, 4, 15, 16, 17, 31, 32, 33, 100, 148, 1500] {
        for _ in 0..20 {
            let mut f: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            // Also make the type byte plausible half of the time.
            if len > 0 && rnd() % 2 == 0 {
                f[0] = (rnd() % 6) as u8;
                if len > 3 {
                    f[1..4].fill(0);
                }
            }
            n.deliver(addr(B_ADDR), addr("198.18.0.99:4000"), f);
        }
    }
    let c = n.b.counters();
    let dropped = c.drop_malformed
        + c.drop_unknown_index
        + c.drop_handshake_invalid
        + c.drop_handshake_ratelimit
        + c.drop_handshake_mac
        + c.drop_cookie_invalid;
    assert_eq!(
        dropped,
        13 * 20,
        "every garbage frame is counted once: {c:?}"
    );
    assert!(n.to_b.is_empty());
    // The tunnel still works.
    n.wire.clear();
    n.send(true, &ipv4(A_HOST, B_HOST, b"still up"));
    n.flush();
    assert_eq!(n.to_b.len(), 1);
}

#[test]
fn initiation_from_unknown_key_and_replayed_initiation_are_refused() {
    let mut n = Net::new();
    // A stranger (key 9) that believes B is its peer.
    let mut stranger = Device::new(&config(9, 2, Some(B_ADDR), &["198.18.2.0/24"]));
    let t = n.time();
    let mut out = Vec::new();
    stranger.tick(&t, &mut out);
    assert_eq!(out.len(), 1);
    n.deliver(addr(B_ADDR), addr("198.18.0.9:1"), out[0].data.clone());
    assert_eq!(n.b.counters().drop_handshake_invalid, 1);
    assert!(n.wire.is_empty(), "no response to a stranger");
    // A genuine initiation, then the same bytes again: the replay is refused.
    n.a.tick(&t, &mut out);
    let init = out.pop().expect("initiation").data;
    n.deliver(addr(B_ADDR), addr(A_ADDR), init.clone());
    assert_eq!(n.wire.len(), 1, "answered once");
    n.deliver(addr(B_ADDR), addr(A_ADDR), init);
    assert_eq!(n.b.counters().drop_handshake_invalid, 2);
    assert_eq!(n.wire.len(), 1, "replay not answered");
}

#[test]
fn lost_initiation_is_retried_with_backoff() {
    let mut n = Net::new();
    n.tick();
    n.wire.clear(); // both initiations lost
    n.advance(Duration::from_millis(500));
    n.tick();
    assert!(n.wire.is_empty(), "no retry before a second");
    n.advance(Duration::from_millis(600));
    n.tick();
    assert_eq!(n.wire.len(), 2, "both sides retry after a second");
    n.wire.clear();
    n.advance(Duration::from_millis(1100));
    n.tick();
    assert!(n.wire.is_empty(), "second retry waits two seconds");
    n.advance(Duration::from_millis(1000));
    n.tick();
    assert_eq!(n.wire.len(), 2);
    n.flush();
    assert!(n.a.peer_status(n.time().now)[0].session);
}

#[test]
fn rekey_by_time_keeps_traffic_flowing() {
    let mut n = Net::new();
    n.established();
    let handshakes = n.a.counters().handshakes;
    // Packets sealed under the old session but delivered after the rekey are
    // still accepted (previous session).
    n.send(true, &ipv4(A_HOST, B_HOST, b"old session, late"));
    let late = n.wire.remove(0);
    n.advance(Duration::from_secs(121));
    n.tick();
    assert!(!n.wire.is_empty(), "rekey initiation");
    n.flush();
    assert!(n.a.counters().handshakes > handshakes);
    n.deliver(late.0, late.1, late.2);
    for i in 0..10u8 {
        n.send(true, &ipv4(A_HOST, B_HOST, &[i; 50]));
        n.send(false, &ipv4(B_HOST, A_HOST, &[i; 60]));
    }
    n.flush();
    assert_eq!(n.to_b.len(), 11);
    assert_eq!(n.to_a.len(), 10);
    let c = n.b.counters();
    assert_eq!(
        c.drop_unknown_index + c.drop_bad_tag + c.drop_replay,
        0,
        "{c:?}"
    );
}

#[test]
fn rekey_by_bytes() {
    let mut n = Net::new();
    let mut cfg = a_config();
    cfg.rekey_after_bytes = 64 << 10;
    n.a = Device::new(&cfg);
    n.established();
    let before = n.a.counters().handshakes;
    for _ in 0..70 {
        n.send(true, &ipv4(A_HOST, B_HOST, &[7u8; 1000]));
    }
    n.flush();
    n.tick();
    n.flush();
    assert!(n.a.counters().handshakes > before, "rekeyed after 64 KiB");
    n.send(true, &ipv4(A_HOST, B_HOST, b"after"));
    n.flush();
    assert_eq!(n.to_b.len(), 71);
}

#[test]
fn restarted_peer_recovers_without_help() {
    let mut n = Net::new();
    n.established();
    // B restarts: all its state is gone.
    n.b = Device::new(&b_config());
    n.advance(Duration::from_millis(100));
    // A still sends with the old session; B drops it but, seeing A's known
    // endpoint, answers with a handshake. Its own tick would do so too.
    n.send(true, &ipv4(A_HOST, B_HOST, b"lost"));
    n.flush();
    n.tick();
    n.flush();
    n.send(true, &ipv4(A_HOST, B_HOST, b"after restart"));
    n.send(false, &ipv4(B_HOST, A_HOST, b"hello again"));
    n.flush();
    assert_eq!(n.to_b.last().map(|p| &p[28..]), Some(&b"after restart"[..]));
    assert_eq!(n.to_a.last().map(|p| &p[28..]), Some(&b"hello again"[..]));
}

#[test]
fn mss_of_syn_is_clamped_to_the_tunnel_mtu() {
    let mut n = Net::new();
    n.established();
    // IPv4 TCP SYN with MSS 1460.
    let mut p = vec![0u8; 44];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&44u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&A_HOST);
    p[16..20].copy_from_slice(&B_HOST);
    p[32] = 6 << 4; // data offset 24 bytes
    p[33] = 0x02; // SYN
    p[40..44].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    n.send(true, &p);
    n.flush();
    let got = n.to_b.pop().expect("delivered");
    assert_eq!(u16::from_be_bytes([got[42], got[43]]), 1420 - 40);
}

#[test]
fn keepalive_is_sent_when_configured() {
    let mut n = Net::new();
    let mut cfg = a_config();
    cfg.peers[0].keepalive = Some(Duration::from_secs(5));
    n.a = Device::new(&cfg);
    n.established();
    n.advance(Duration::from_secs(6));
    n.tick();
    assert!(
        n.wire
            .iter()
            .any(|(_, _, f)| f[0] == MessageType::Keepalive as u8),
        "keepalive after 5 s idle"
    );
    n.flush();
    assert_eq!(n.b.counters().drop_bad_tag, 0);
}

/// Rewrites the source of every frame in flight from A to `from`, as if A
/// had sent them from another socket (flow) or address.
fn resource(n: &mut Net, from: &str) {
    for (_, src, _) in n.wire.iter_mut() {
        if *src == addr(A_ADDR) {
            *src = addr(from);
        }
    }
}

fn b_sees_a_at(n: &Net) -> Option<String> {
    n.b.peer_status(n.time().now)[0].endpoint.clone()
}

/// B's view of a peer that sends from several flows (`dataplane.flows`).
fn multi_flow(n: &mut Net) {
    let mut cfg = b_config();
    cfg.dataplane.flows = 4;
    n.b = Device::new(&cfg);
}

#[test]
fn data_from_a_peers_other_flows_keeps_its_endpoint() {
    let mut n = Net::new();
    multi_flow(&mut n);
    n.established();
    // A's inner flows leave from four source ports of its address.
    for (i, port) in [51820u16, 40001, 40002, 40003, 40001, 51820, 40002]
        .iter()
        .enumerate()
    {
        n.send(
            true,
            &ipv4(A_HOST, B_HOST, format!("flow data {i}").as_bytes()),
        );
        resource(&mut n, &format!("198.18.0.1:{port}"));
        n.flush();
        assert_eq!(
            b_sees_a_at(&n).as_deref(),
            Some(A_ADDR),
            "after port {port}"
        );
        // Replies keep going to A's flow 0 (the listen port).
        n.send(false, &ipv4(B_HOST, A_HOST, b"reply"));
        assert_eq!(n.wire.len(), 1);
        assert_eq!(n.wire[0].0, addr(A_ADDR));
        n.flush();
    }
    assert_eq!(n.to_b.len(), 7, "every flow's data delivered");
    assert_eq!(n.to_a.len(), 7, "every reply delivered");
    assert_eq!(n.b.counters().drop_bad_tag + n.b.counters().drop_replay, 0);
}

#[test]
fn a_peer_on_a_new_address_is_followed() {
    let mut n = Net::new();
    n.established();
    n.send(true, &ipv4(A_HOST, B_HOST, b"from a new uplink"));
    resource(&mut n, "198.18.0.9:40002");
    n.flush();
    assert_eq!(b_sees_a_at(&n).as_deref(), Some("198.18.0.9:40002"));
    assert_eq!(n.to_b.len(), 1);
}

#[test]
fn a_keepalive_from_a_new_port_is_followed() {
    // A NAT rebinding A's flow 0: its keepalive (always on flow 0) moves
    // the endpoint; data from another port of the address does not.
    let mut n = Net::new();
    let mut cfg = a_config();
    cfg.peers[0].keepalive = Some(Duration::from_secs(5));
    cfg.dataplane.flows = 4;
    n.a = Device::new(&cfg);
    multi_flow(&mut n);
    n.established();
    n.send(true, &ipv4(A_HOST, B_HOST, b"data"));
    resource(&mut n, "198.18.0.1:40001");
    n.flush();
    assert_eq!(b_sees_a_at(&n).as_deref(), Some(A_ADDR));
    n.advance(Duration::from_secs(6));
    n.tick();
    assert!(n
        .wire
        .iter()
        .any(|(_, _, f)| f[0] == MessageType::Keepalive as u8));
    resource(&mut n, "198.18.0.1:6000");
    n.flush();
    assert_eq!(b_sees_a_at(&n).as_deref(), Some("198.18.0.1:6000"));
}

#[test]
fn tcp_peers_follow_every_source() {
    // Over TCP `from` names the connection; a redial comes from a new port.
    let mut n = Net::new();
    let mut cfg = b_config();
    cfg.peers[0].transport = crate::config::TransportKind::Tcp;
    n.b = Device::new(&cfg);
    n.established();
    n.send(true, &ipv4(A_HOST, B_HOST, b"new connection"));
    resource(&mut n, "198.18.0.1:40001");
    n.flush();
    assert_eq!(b_sees_a_at(&n).as_deref(), Some("198.18.0.1:40001"));
}

#[test]
fn endpoint_rule_table() {
    let e = Some(addr("198.18.0.1:51820"));
    let port = addr("198.18.0.1:40001");
    let other = addr("198.18.0.7:51820");
    // (current, from, udp, keepalive) -> moves
    for (cur, from, udp, ka, want) in [
        (None, port, true, false, true),
        (e, addr("198.18.0.1:51820"), true, true, false),
        (e, port, true, false, false),
        (e, port, true, true, true),
        (e, other, true, false, true),
        (e, port, false, false, true),
        (e, addr("[fd00::1]:40001"), true, false, true),
    ] {
        assert_eq!(
            moves_endpoint(cur, from, udp, ka),
            want,
            "{cur:?} {from} udp {udp} ka {ka}"
        );
    }
}

#[test]
fn restarted_peer_answers_data_from_another_flow_with_a_handshake() {
    let mut n = Net::new();
    n.established();
    n.b = Device::new(&b_config());
    n.advance(Duration::from_millis(100));
    n.send(true, &ipv4(A_HOST, B_HOST, b"lost"));
    resource(&mut n, "198.18.0.1:40003");
    let (to, from, frame) = n.wire.pop().expect("data in flight");
    n.deliver(to, from, frame);
    assert!(
        n.wire
            .iter()
            .any(|(to, _, f)| *to == addr(A_ADDR) && f[0] == MessageType::HandshakeInit as u8),
        "B initiates towards A's listen port: {:?}",
        n.wire.iter().map(|w| (w.0, w.2[0])).collect::<Vec<_>>()
    );
}

#[test]
fn with_one_flow_a_nat_rebinding_is_followed_by_the_first_frame() {
    // `flows: 1`: every frame of A leaves its one socket, so data from a
    // new port is a NAT that rebound A's port; replies go there at once.
    let mut n = Net::new();
    n.established();
    n.send(true, &ipv4(A_HOST, B_HOST, b"after the rebinding"));
    resource(&mut n, "198.18.0.1:6001");
    n.flush();
    assert_eq!(b_sees_a_at(&n).as_deref(), Some("198.18.0.1:6001"));
    n.send(false, &ipv4(B_HOST, A_HOST, b"reply"));
    assert_eq!(n.wire.len(), 1);
    assert_eq!(n.wire[0].0, addr("198.18.0.1:6001"), "the reply follows");
    // A forged or replayed frame from elsewhere does not move it back.
    n.wire.clear();
    n.send(true, &ipv4(A_HOST, B_HOST, b"genuine"));
    let (to, _, frame) = n.wire.remove(0);
    n.deliver(to, addr("198.18.0.1:6001"), frame.clone());
    n.deliver(to, addr("198.18.0.66:7"), frame.clone());
    let mut forged = frame;
    forged[20] ^= 1;
    n.deliver(to, addr("198.18.0.66:7"), forged);
    assert_eq!(b_sees_a_at(&n).as_deref(), Some("198.18.0.1:6001"));
    // The forgery reuses a counter already seen: refused before decryption.
    assert_eq!(n.b.counters().drop_replay, 2);
}

/// A frame with a valid mac1 for `to_public` (an attacker knows the public
/// key): `ty` 1 with random Noise bytes, `len` bytes in all.
fn mac1_valid_garbage(ty: u8, len: usize, seed: u64, to_public: &[u8; 32]) -> Vec<u8> {
    let mut rng = crate::wire::testutil::Rng(seed | 1);
    let mut f = vec![0u8; len];
    rng.fill(&mut f);
    f[0] = ty;
    f[1..4].fill(0);
    crate::crypto::cookie::CookieJar::new(to_public).stamp(&mut f, Instant::now());
    f
}

#[test]
fn handshake_garbage_without_mac1_costs_no_public_key_work() {
    let mut n = Net::new();
    let mut rng = crate::wire::testutil::Rng(7);
    for i in 0..10_000u32 {
        let mut f = vec![0u8; INIT_FRAME_LEN];
        rng.fill(&mut f);
        f[0] = MessageType::HandshakeInit as u8;
        f[1..4].fill(0);
        let from = SocketAddr::from(([198, 18, 100 + (i % 50) as u8, (i % 250) as u8], 1000));
        n.deliver(addr(B_ADDR), from, f);
    }
    let c = n.b.counters();
    assert_eq!(c.drop_handshake_mac, 10_000);
    assert_eq!(c.handshake_dh, 0);
    assert_eq!(c.cookie_replies_sent, 0);
    assert!(n.wire.is_empty(), "nothing answered");
}

/// When the real peers start their timers in the flood tests: the flood
/// has been on for a while by then.
const PEERS_START_MS: u64 = 500;

/// Runs a flood at B of `per_ms` handshake messages per millisecond from
/// many spoofed sources for `secs` virtual seconds, while A (the only
/// initiator) brings the tunnel up from [`PEERS_START_MS`]; returns how long
/// after that A first had a session.
fn flood_b(
    n: &mut Net,
    per_ms: u32,
    secs: u64,
    frame: impl Fn(u64) -> Vec<u8>,
) -> Option<Duration> {
    let mut up_at = None;
    let mut seq = 0u64;
    for ms in 0..secs * 1000 {
        for _ in 0..per_ms {
            seq += 1;
            let from = SocketAddr::from((
                [198, 18, 100 + (seq % 100) as u8, (seq / 100 % 250) as u8],
                1024 + (seq % 50_000) as u16,
            ));
            n.deliver(addr(B_ADDR), from, frame(seq));
        }
        // What B sends to the spoofed sources goes nowhere.
        n.wire
            .retain(|(to, _, _)| *to == addr(A_ADDR) || *to == addr(B_ADDR));
        if ms >= PEERS_START_MS && ms % 50 == 0 {
            n.tick();
        }
        n.flush();
        if up_at.is_none() && n.a.peer_status(n.time().now)[0].session {
            up_at = Some(Duration::from_millis(ms - PEERS_START_MS));
        }
        n.advance(Duration::from_millis(1));
    }
    up_at
}

fn responder_only_b() -> Net {
    // B knows no endpoint for A (a hub whose spokes roam): only A
    // initiates, so only B's defences decide whether the tunnel comes up.
    let mut n = Net::new();
    n.b = Device::new(&config(2, 1, None, &["198.19.0.1/32", "198.18.1.0/24"]));
    n
}

#[test]
fn a_spoofed_initiation_flood_neither_locks_out_the_peer_nor_costs_dh() {
    let mut n = responder_only_b();
    let b_public = *key(2).public().as_bytes();
    // 2,000 initiations per second with a valid mac1 (the attacker knows
    // B's public key) and random Noise bytes, from 5,000 addresses, 10 s.
    let up = flood_b(&mut n, 2, 10, |seq| {
        mac1_valid_garbage(1, INIT_FRAME_LEN, seq, &b_public)
    });
    let c = n.b.counters().clone();
    let up = up.expect("A's handshake completed during the flood");
    // A's first initiation gets a cookie, its retry a second later a response.
    assert!(up <= Duration::from_millis(1_100), "up after {up:?}");
    assert_eq!(
        n.a.counters().cookie_replies_received,
        1,
        "{:?}",
        n.a.counters()
    );
    // Public-key work at B: the load meter's burst when the flood began,
    // and A's initiation.
    assert!(
        c.handshake_dh <= crate::admission::HANDSHAKE_BURST as u64 + 2,
        "{c:?}"
    );
    assert_eq!(c.cookie_replies_sent + c.handshake_dh, 20_000 + 2, "{c:?}");
    assert_eq!(c.drop_handshake_ratelimit, 0);
    // The tunnel carries data through the flood's aftermath.
    n.send(true, &ipv4(A_HOST, B_HOST, b"through the flood"));
    n.flush();
    assert_eq!(n.to_b.len(), 1);
}

#[test]
fn without_mac1_a_flood_does_not_even_cost_a_cookie() {
    let mut n = responder_only_b();
    let mut rng = crate::wire::testutil::Rng(11);
    let up = flood_b(&mut n, 2, 5, |_| {
        let mut f = vec![0u8; INIT_FRAME_LEN];
        rng_fill(&mut f, 0);
        f
    });
    let _ = &mut rng;
    assert_eq!(up, Some(Duration::ZERO));
    let c = n.b.counters();
    assert_eq!(c.drop_handshake_mac, 10_000);
    assert_eq!((c.handshake_dh, c.cookie_replies_sent), (1, 0), "{c:?}");
}

fn rng_fill(f: &mut [u8], _seed: u64) {
    f[0] = MessageType::HandshakeInit as u8;
    for (i, b) in f.iter_mut().enumerate().skip(4) {
        *b = (i as u8).wrapping_mul(31);
    }
}

#[test]
fn a_source_with_cookies_is_held_to_its_own_budget() {
    // An attacker that does receive B's replies (a real address) gets
    // cookies, but its handshakes are limited per address under load.
    let mut n = responder_only_b();
    let b_public = *key(2).public().as_bytes();
    let attacker = addr("198.18.0.77:4444");
    // Keep B under load with a spoofed flood, and have the attacker
    // fetch a cookie once.
    let t = n.time();
    for i in 0..100 {
        let mut out = Vec::new();
        let f = mac1_valid_garbage(1, INIT_FRAME_LEN, i, &b_public);
        let len = f.len();
        let mut buf = f;
        n.b.decapsulate(&mut buf, len, addr("198.18.99.1:1"), &t, &mut out);
    }
    let mut jar = crate::crypto::cookie::CookieJar::new(&b_public);
    let mut first = mac1_valid_garbage(1, INIT_FRAME_LEN, 999, &b_public);
    jar.stamp(&mut first, t.now);
    let mut out = Vec::new();
    let len = first.len();
    n.b.decapsulate(&mut first, len, attacker, &t, &mut out);
    assert_eq!(out.len(), 1, "a cookie reply");
    jar.consume(&out[0].data, t.now)
        .expect("the attacker's cookie");
    let dh_before = n.b.counters().handshake_dh;
    // 1,000 per second with valid mac2 for 5 s, while the spoofed flood
    // goes on at the same rate.
    for ms in 0..5_000u64 {
        let t = n.time();
        let mut f = mac1_valid_garbage(1, INIT_FRAME_LEN, ms, &b_public);
        jar.stamp(&mut f, t.now);
        let len = f.len();
        let mut out = Vec::new();
        n.b.decapsulate(&mut f, len, attacker, &t, &mut out);
        let mut g = mac1_valid_garbage(1, INIT_FRAME_LEN, ms + 7, &b_public);
        let len = g.len();
        n.b.decapsulate(&mut g, len, addr("198.18.99.2:2"), &t, &mut out);
        n.advance(Duration::from_millis(1));
    }
    let c = n.b.counters();
    let dh = c.handshake_dh - dh_before;
    // 20 per second plus a burst of 5.
    assert!(
        (100..=106).contains(&dh),
        "{dh} public-key operations: {c:?}"
    );
    assert!(c.drop_handshake_ratelimit >= 4_890, "{c:?}");
}

#[test]
fn a_peer_under_load_makes_the_responder_prove_its_address_too() {
    // A is flooded and B initiates: A answers B's initiation only, but
    // B's response to A's own initiation gets a cookie from A; both sides
    // converge anyway.
    let mut n = Net::new();
    n.a = Device::new(&config(
        1,
        2,
        Some(B_ADDR),
        &["198.19.0.2/32", "198.18.2.0/24"],
    ));
    n.b = Device::new(&config(2, 1, None, &["198.19.0.1/32", "198.18.1.0/24"]));
    let a_public = *key(1).public().as_bytes();
    let mut up_at = None;
    let mut seq = 0u64;
    for ms in 0..5_000u64 {
        for _ in 0..2 {
            seq += 1;
            let from = SocketAddr::from(([198, 18, 200, (seq % 250) as u8], 7));
            let f = mac1_valid_garbage(1, INIT_FRAME_LEN, seq, &a_public);
            n.deliver(addr(A_ADDR), from, f);
        }
        n.wire
            .retain(|(to, _, _)| *to == addr(A_ADDR) || *to == addr(B_ADDR));
        if ms >= PEERS_START_MS && ms % 50 == 0 {
            n.tick();
        }
        n.flush();
        if up_at.is_none() && n.a.peer_status(n.time().now)[0].session {
            up_at = Some(Duration::from_millis(ms - PEERS_START_MS));
        }
        n.advance(Duration::from_millis(1));
    }
    let up = up_at.expect("tunnel up");
    assert!(up <= Duration::from_millis(1_100), "up after {up:?}");
    assert_eq!(
        n.b.counters().cookie_replies_received,
        1,
        "{:?}",
        n.b.counters()
    );
    assert!(n.a.counters().handshake_dh <= 22, "{:?}", n.a.counters());
}

#[test]
fn a_forged_response_does_not_kill_the_pending_handshake() {
    let mut n = Net::new();
    n.b = Device::new(&config(2, 1, None, &["198.19.0.1/32", "198.18.1.0/24"]));
    n.tick();
    assert_eq!(n.wire.len(), 1);
    let (to, from, init) = n.wire.remove(0);
    // An attacker who saw the initiation answers first, with A's index and
    // a valid mac1 (A's public key is no secret), from B's address.
    let a_public = *key(1).public().as_bytes();
    let mut forged = mac1_valid_garbage(2, RESPONSE_FRAME_LEN, 3, &a_public);
    forged[8..12].copy_from_slice(&init[4..8]);
    crate::crypto::cookie::CookieJar::new(&a_public).stamp(&mut forged, Instant::now());
    for _ in 0..3 {
        n.deliver(addr(A_ADDR), addr(B_ADDR), forged.clone());
    }
    assert_eq!(n.a.counters().drop_handshake_invalid, 3);
    assert_eq!(n.a.counters().handshake_dh, 3);
    // The genuine response still completes the handshake.
    n.deliver(to, from, init);
    n.flush();
    assert!(n.a.peer_status(n.time().now)[0].session);
    assert_eq!(n.a.counters().handshakes, 1);
    // A response arriving again is for a spent index: no work at all.
    let dh = n.a.counters().handshake_dh;
    n.deliver(addr(A_ADDR), addr(B_ADDR), forged);
    assert_eq!(n.a.counters().handshake_dh, dh);
}

#[test]
fn unknown_index_data_triggers_at_most_one_handshake_per_5s() {
    let mut n = Net::new();
    n.established();
    n.advance(Duration::from_secs(1));
    let mut rng = crate::wire::testutil::Rng(5);
    let mut initiations = 0;
    // 100 spoofed data frames per second from A's address for 20 s, each
    // with a random index.
    for _ in 0..2_000 {
        let mut f = vec![0u8; 100];
        rng.fill(&mut f);
        f[0] = MessageType::Data as u8;
        f[1..4].fill(0);
        n.deliver(addr(B_ADDR), addr(A_ADDR), f);
        initiations += n
            .wire
            .iter()
            .filter(|(_, _, f)| f[0] == MessageType::HandshakeInit as u8)
            .count();
        n.flush();
        n.advance(Duration::from_millis(10));
    }
    // B's own rekey at 132 s is outside the window: only triggered ones.
    assert!((4..=5).contains(&initiations), "{initiations} handshakes");
    let c = n.b.counters();
    assert_eq!(c.drop_unknown_index, 2_000);
    assert!(c.triggered_handshakes_suppressed >= 1_990, "{c:?}");
    n.send(true, &ipv4(A_HOST, B_HOST, b"still up"));
    n.flush();
    assert_eq!(n.to_b.len(), 1);
}

#[test]
fn cookie_replies_that_do_not_authenticate_are_counted() {
    let mut n = Net::new();
    n.tick();
    let (_, _, init) = n.wire.remove(0);
    let mut reply = [0u8; crate::wire::COOKIE_REPLY_LEN];
    let receiver = u32::from_le_bytes([init[4], init[5], init[6], init[7]]);
    crate::wire::CookieReply::emit(&mut reply, receiver, &[1; 24], &[2; 32]).expect("fits");
    n.deliver(addr(A_ADDR), addr(B_ADDR), reply.to_vec());
    crate::wire::CookieReply::emit(&mut reply, 0xdead, &[1; 24], &[2; 32]).expect("fits");
    n.deliver(addr(A_ADDR), addr(B_ADDR), reply.to_vec());
    n.deliver(addr(A_ADDR), addr(B_ADDR), reply[..40].to_vec());
    let c = n.a.counters();
    assert_eq!(
        (
            c.drop_cookie_invalid,
            c.drop_unknown_index,
            c.drop_malformed
        ),
        (1, 1, 1)
    );
    assert_eq!(c.cookie_replies_received, 0);
}

#[path = "device_reload_tests.rs"]
mod reload;

/// Runs both sides' timers every 50 ms for `d`, delivering everything.
fn run_for(n: &mut Net, d: Duration) {
    let end = n.elapsed + d;
    while n.elapsed < end {
        n.advance(Duration::from_millis(50));
        n.tick();
        n.flush();
    }
}

#[test]
fn path_mtu_probes_and_acks_cross_and_never_reach_the_tun() {
    let mut n = Net::new();
    n.established();
    assert_eq!(n.a.peer_status(n.time().now)[0].pmtud, "idle");
    n.advance(Duration::from_millis(50));
    n.tick();
    // A probe padded to the whole need (1420 + 32) and a sentinel, each way.
    let mut sizes: Vec<usize> = n.wire.iter().map(|w| w.2.len()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![42, 42, 1452, 1452]);
    assert!(n.wire.iter().all(|w| w.2[0] == MessageType::Data as u8));
    n.flush();
    // The acks are judged at the next tick.
    n.advance(Duration::from_millis(50));
    n.tick();
    assert!(n.wire.is_empty(), "validated: nothing more to send");
    for (dev, name) in [(&n.a, "a"), (&n.b, "b")] {
        let c = dev.counters();
        assert_eq!(
            (
                c.pmtu_probes_sent,
                c.pmtu_probes_answered,
                c.pmtu_acks_received,
                c.rx_packets,
                c.drop_malformed
            ),
            (2, 2, 2, 0, 0),
            "{name}: {c:?}"
        );
        let st = &dev.peer_status(n.time().now)[0];
        assert_eq!(st.pmtud, "complete", "{name}");
        assert_eq!(st.path_mtu, Some(1480), "{name}: 1452 + IPv4 + UDP");
        assert_eq!(st.inner_mtu_limit, None, "{name}");
        assert_eq!((st.pmtu_probes, st.pmtu_acks), (2, 2), "{name}");
    }
    assert!(n.to_a.is_empty() && n.to_b.is_empty(), "nothing to the TUN");
    // Validated: quiet for the re-validation interval.
    run_for(&mut n, Duration::from_secs(60));
    assert_eq!(n.a.counters().pmtu_probes_sent, 2);
    // Probes keep data flowing as before.
    n.send(true, &ipv4(A_HOST, B_HOST, b"after probing"));
    n.flush();
    assert_eq!(n.to_b.len(), 1);
}

#[test]
fn a_black_hole_between_the_devices_is_found_and_limits_the_inner_mtu() {
    let mut n = Net::new();
    n.established();
    run_for(&mut n, Duration::from_secs(1));
    assert_eq!(n.a.peer_status(n.time().now)[0].path_mtu, Some(1480));
    // The path now drops frames over 1372 bytes (a 1400-byte path MTU)
    // and sends no ICMP. Data goes out, nothing comes back.
    n.max_frame = Some(1372);
    let big = ipv4(A_HOST, B_HOST, &[7u8; 1392]);
    assert_eq!(big.len(), 1420);
    let t = n.elapsed;
    let mut detected = None;
    while n.elapsed - t < Duration::from_secs(10) {
        n.send(true, &big);
        run_for(&mut n, Duration::from_millis(100));
        let st = &n.a.peer_status(n.time().now)[0];
        if detected.is_none() && st.pmtu_black_holes == 1 {
            detected = Some(n.elapsed - t);
        }
        if st.pmtud == "complete" && detected.is_some() {
            break;
        }
    }
    let detected = detected.expect("black hole detected");
    assert!(detected <= Duration::from_millis(2600), "{detected:?}");
    let st = &n.a.peer_status(n.time().now)[0];
    assert_eq!(st.pmtud, "complete");
    assert_eq!(st.path_mtu, Some(1396));
    assert_eq!(st.inner_mtu_limit, Some(1336));
    assert!(n.to_b.is_empty(), "the large packets were lost");
    // The data path now answers such packets with ICMP too-big (its
    // limit: 1368-byte frames), and smaller ones cross.
    assert_eq!(n.a.fast_path().load().probed_max_frame(&big), Some(1368));
    assert_eq!(n.a.fast_path().load().probed_floor(), Some(1368));
    n.send(true, &ipv4(A_HOST, B_HOST, &[7u8; 1336 - 28]));
    n.flush();
    assert_eq!(n.to_b.len(), 1);
}

#[test]
fn forged_and_malformed_control_messages_are_dropped_and_counted() {
    let mut n = Net::new();
    n.established();
    run_for(&mut n, Duration::from_secs(1));
    let before = n.b.counters().clone();
    // Without the session key: an unauthenticated "probe" is a bad tag,
    // and no ack goes out.
    let mut forged = vec![0u8; 1452];
    forged[0] = MessageType::Data as u8;
    let idx = n.b.peers[0]
        .current
        .as_ref()
        .map(|s| s.local_index)
        .expect("session");
    forged[4..8].copy_from_slice(&idx.to_le_bytes());
    forged[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    Control::Probe { id: 1, size: 1452 }.emit(&mut forged[HEADROOM..HEADROOM + Control::LEN]);
    n.deliver(addr(B_ADDR), addr(A_ADDR), forged);
    assert_eq!(n.b.counters().drop_bad_tag, before.drop_bad_tag + 1);
    assert!(n.wire.is_empty(), "no ack for a forgery");
    // Authenticated but not understood: a probe whose size is not its
    // frame's, an unknown kind, reserved bytes set.
    let mut bad = Vec::new();
    for (kind, reserved, size) in [(1u8, 0u8, 1000u16), (9, 0, 42), (1, 1, 42)] {
        let mut data = vec![0u8; 42];
        data[HEADROOM] = kind;
        data[HEADROOM + 1] = reserved;
        data[HEADROOM + 8..HEADROOM + 10].copy_from_slice(&size.to_le_bytes());
        let s = n.a.peers[0].current.as_mut().expect("session");
        seal_frame(s, MessageType::Data, &mut data);
        bad.push(data);
    }
    for d in bad {
        n.deliver(addr(B_ADDR), addr(A_ADDR), d);
    }
    let c = n.b.counters();
    assert_eq!(c.drop_malformed, before.drop_malformed + 3);
    assert_eq!(c.pmtu_probes_answered, before.pmtu_probes_answered);
    assert!(n.wire.is_empty());
    assert!(n.to_b.is_empty());
    // An ack for nothing in flight changes nothing.
    let mut ack = vec![0u8; 42];
    Control::Ack { id: 77, size: 42 }.emit(&mut ack[HEADROOM..HEADROOM + Control::LEN]);
    let s = n.a.peers[0].current.as_mut().expect("session");
    seal_frame(s, MessageType::Data, &mut ack);
    n.deliver(addr(B_ADDR), addr(A_ADDR), ack);
    assert_eq!(n.b.counters().pmtu_acks_stray, before.pmtu_acks_stray + 1);
    // What an older tunneld does with a probe: its inner IP parse fails,
    // so it counts one malformed packet and delivers nothing.
    let mut plain = vec![0u8; 64];
    Control::Probe { id: 1, size: 96 }.emit(&mut plain);
    assert!(wire::inner_ip_info(&plain).is_err());
}

#[test]
fn with_pmtud_off_no_probes_go_out_but_probes_are_answered() {
    let mut cfg = a_config();
    cfg.pmtud.enabled = false;
    let mut n = Net::new();
    n.a = Device::new(&cfg);
    n.established();
    run_for(&mut n, Duration::from_secs(2));
    assert_eq!(n.a.counters().pmtu_probes_sent, 0);
    assert_eq!(n.a.counters().pmtu_probes_answered, 2);
    let st = &n.a.peer_status(n.time().now)[0];
    assert_eq!((st.pmtud, st.path_mtu), ("disabled", None));
    assert_eq!(n.b.peer_status(n.time().now)[0].pmtud, "complete");
    // A reload turns it on: the search starts.
    n.a.reconfigure(&a_config());
    run_for(&mut n, Duration::from_secs(1));
    assert_eq!(n.a.counters().pmtu_probes_sent, 2);
    assert_eq!(n.a.peer_status(n.time().now)[0].pmtud, "complete");
}

#[test]
fn random_authenticated_control_messages_never_reach_the_tun_and_are_all_counted() {
    let mut n = Net::new();
    n.established();
    run_for(&mut n, Duration::from_secs(1));
    let before = n.b.counters().clone();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    const N: u64 = 2000;
    for _ in 0..N {
        let len = 1 + (next() % 64) as usize;
        let mut data = vec![0u8; OVERHEAD + len];
        for b in &mut data[HEADROOM..HEADROOM + len] {
            *b = next() as u8;
        }
        // Version nibble 0; mostly probes and acks with random fields.
        data[HEADROOM] = (next() % 4) as u8;
        if next() % 2 == 0 && len >= Control::LEN {
            data[HEADROOM + 1..HEADROOM + 4].fill(0);
        }
        let s = n.a.peers[0].current.as_mut().expect("session");
        seal_frame(s, MessageType::Data, &mut data);
        n.deliver(addr(B_ADDR), addr(A_ADDR), data);
    }
    let c = n.b.counters();
    let counted = (c.drop_malformed - before.drop_malformed)
        + (c.pmtu_probes_answered - before.pmtu_probes_answered)
        + (c.pmtu_acks_received - before.pmtu_acks_received)
        + (c.pmtu_acks_stray - before.pmtu_acks_stray);
    assert_eq!(counted, N, "{c:?}");
    assert_eq!(c.rx_packets, before.rx_packets);
    assert!(n.to_b.is_empty());
    // The tunnel still carries traffic.
    n.wire.clear();
    n.send(true, &ipv4(A_HOST, B_HOST, b"still here"));
    n.flush();
    assert_eq!(n.to_b.len(), 1);
}
