//! The in-memory two-peer harness: two [`Device`]s, a virtual clock and a
//! lossy "network" that is just a list of datagrams, exercising handshakes,
//! rekeys, restarts and hostile input without sockets or sleeping.

use super::*;
use crate::config::{CipherKind, Config, InterfaceConfig, PeerConfig};
use crate::keys::PrivateKey;
use crate::prefix::Prefix;
use std::net::SocketAddr;
use std::path::PathBuf;

#[path = "device_ha_tests.rs"]
mod ha;

const A_ADDR: &str = "198.18.0.1:51820";
const B_ADDR: &str = "198.18.0.2:51820";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn prefixes(list: &[&str]) -> Vec<Prefix> {
    list.iter().map(|p| p.parse().expect("prefix")).collect()
}

fn key(seed: u8) -> PrivateKey {
    PrivateKey::from_bytes([seed; 32])
}

fn config(me: u8, peer: u8, peer_endpoint: Option<&str>, allowed: &[&str]) -> Config {
    let private_key = key(me);
    Config {
        interface: InterfaceConfig {
            name: format!("tun{me}"),
            addresses: vec![],
            mtu: 1420,
        },
        listen: addr(if me == 1 { A_ADDR } else { B_ADDR }),
        public_key: private_key.public(),
        private_key,
        cipher: CipherKind::Aes256Gcm,
        insecure_lab_only: false,
        control_socket: PathBuf::from("/nonexistent"),
        socket_buffer: 1 << 20,
        mss_clamp: true,
        dataplane: crate::config::DataplaneConfig {
            offload: true,
            batch: 64,
            workers: 1,
            flows: 1,
            ..Default::default()
        },
        rekey_after_time: Duration::from_secs(120),
        rekey_after_bytes: 1 << 30,
        quic: None,
        peers: vec![PeerConfig {
            name: format!("peer{peer}"),
            public_key: key(peer).public(),
            endpoint: peer_endpoint.map(addr),
            allowed_prefixes: prefixes(allowed),
            keepalive: None,
            transport: crate::config::TransportKind::Udp,
            quic_pin: None,
            transit: None,
        }],
        health: None,
        routes: Default::default(),
    }
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
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let mut sum = 0u32;
    for i in (0..20).step_by(2) {
        sum += u32::from(u16::from_be_bytes([p[i], p[i + 1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&1234u16.to_be_bytes());
    p[22..24].copy_from_slice(&5678u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
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
        + c.drop_handshake_ratelimit;
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

#[test]
fn data_from_a_peers_other_flows_keeps_its_endpoint() {
    let mut n = Net::new();
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
    n.a = Device::new(&cfg);
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
