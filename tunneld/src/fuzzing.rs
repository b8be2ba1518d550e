//! Fuzz target bodies: each takes arbitrary bytes and must never panic,
//! loop or grow without bound. Two drivers share them: the bounded,
//! seeded mutation loops of the test suite (`fuzz_tests.rs`, run in CI
//! with overflow checks on: `cargo test --profile fuzz -p tunneld --lib
//! fuzz_tests`) and the cargo-fuzz targets in `tunneld/fuzz/` for
//! longer, coverage-guided runs on a nightly toolchain.
//!
//! Targets: every `wire` view and helper, the TCP transport's framing
//! decoder, the receive coalescer, the handshake messages, the cookie
//! messages, the config YAML, and the device's receive path (an
//! established pair of [`Device`]s fed frames from any source, with time
//! moving).

use crate::config::{CipherKind, Config, DataplaneConfig, InterfaceConfig, PeerConfig};
use crate::crypto::cookie::{CookieChecker, CookieJar};
use crate::crypto::handshake::{self, Identity};
use crate::device::{Datagram, Device, Time, HEADROOM, OVERHEAD};
use crate::keys::PrivateKey;
use crate::wire;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every wire view and helper over `data` as an inner packet, a frame and
/// an ICMP source.
pub fn wire(data: &[u8]) {
    let _ = wire::message_type(data);
    if let Ok(f) = wire::DataFrame::new_checked(data) {
        let _ = (f.receiver_index(), f.counter(), f.ciphertext(), f.tag());
    }
    if let Ok(h) = wire::HandshakeInit::new_checked(data) {
        let _ = (h.sender_index(), h.noise(), h.bytes());
    }
    if let Ok(h) = wire::HandshakeResponse::new_checked(data) {
        let _ = (h.sender_index(), h.receiver_index(), h.noise());
    }
    if let Ok(c) = wire::CookieReply::new_checked(data) {
        let _ = (c.receiver_index(), c.nonce(), c.sealed_cookie());
    }
    if let Ok(info) = wire::inner_ip_info(data) {
        assert!(
            info.total_len <= data.len(),
            "total length inside the buffer"
        );
    }
    if let Ok(p) = wire::Ipv4Packet::new_checked(data) {
        let _ = (
            p.payload(),
            p.verify_checksum(),
            p.frag_offset(),
            p.src_addr(),
        );
    }
    if let Ok(p) = wire::Ipv6Packet::new_checked(data) {
        let _ = (p.payload(), p.src_addr(), p.dst_addr());
    }
    let _ = wire::flow_index(data, 16);
    let _ = wire::ecn::of(data);
    let mut m = data.to_vec();
    let _ = wire::clamp_tcp_mss(&mut m, 536);
    let _ = wire::clamp_tcp_mss_for_mtu(&mut m, 1280);
    let _ = wire::ecn::decapsulate(0b11, &mut m);
    let _ = wire::ecn::set(&mut m, 0b01);
    let mut out = [0u8; 1280];
    for mtu in [0u16, 68, 576, 1280, 1420, u16::MAX] {
        let src = if data.first().is_some_and(|b| b >> 4 == 6) {
            "fd00::1".parse()
        } else {
            "198.18.0.1".parse()
        };
        if let Ok(src) = src {
            if let Ok(n) = wire::icmp_too_big(data, mtu, src, &mut out) {
                assert!(n <= out.len());
            }
        }
    }
}

/// The TCP transport's framing decoder, fed `data` in reads whose sizes
/// the first byte chooses.
pub fn framing(data: &[u8]) {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut d = crate::transport::framing::Decoder::new();
    for chunk in rest.chunks(step) {
        let mut frames = 0usize;
        if d.feed(chunk, |f| {
            assert!(!f.is_empty() && f.len() <= crate::transport::framing::MAX_FRAME);
            frames += 1;
        })
        .is_err()
        {
            return;
        }
        assert!(frames <= chunk.len());
    }
}

/// The receive coalescer over inner packets cut from `data` (a length byte
/// before each).
pub fn coalescer(data: &[u8]) {
    for udp in [false, true] {
        let mut c = crate::gro::Coalescer::with_udp(udp);
        let mut rest = data;
        while let Some((&n, tail)) = rest.split_first() {
            let n = (usize::from(n) * 8).min(tail.len());
            c.push(&tail[..n]);
            rest = &tail[n..];
        }
        let _ = c.finish();
    }
}

fn identity(seed: u8) -> Identity {
    let k = PrivateKey::from_bytes([seed; 32]);
    Identity::new(*k.as_bytes(), *k.public().as_bytes())
}

/// The handshake and cookie messages: `data` as a first Noise message to
/// a responder, as a second one to a pending initiation, as a cookie reply
/// to that initiation, and through the MAC checks.
pub fn handshake(data: &[u8]) {
    let a = identity(1);
    let b = identity(2);
    let _ = handshake::read_initiation(&b, data, 7);
    let mut m1 = [0u8; handshake::INIT_NOISE_LEN];
    if let Ok((mut init, _)) =
        handshake::start_initiation(&a, b.public(), 1, handshake::timestamp(1, 0), &mut m1)
    {
        let _ = init.finish(data, 9);
    }
    let now = Instant::now();
    let from: SocketAddr = ([198, 18, 0, 1], 51820).into();
    let mut checker = CookieChecker::new(b.public());
    let _ = checker.mac1_ok(data);
    let _ = checker.mac2_ok(data, from, now);
    let mut reply = [0u8; wire::COOKIE_REPLY_LEN];
    let _ = checker.reply(data, 3, from, now, &mut reply);
    let mut jar = CookieJar::new(b.public());
    let mut msg = [0u8; 148];
    jar.stamp(&mut msg, now);
    let _ = jar.consume(data, now);
    let mut m = data.to_vec();
    jar.stamp(&mut m, now);
}

/// The config YAML: `data` as a tunnel config whose key file lives in
/// `base_dir` (as `a.key`); a config that passes builds a [`Device`].
pub fn config_yaml(data: &[u8], base_dir: &Path) {
    let text = String::from_utf8_lossy(data);
    if let Ok(cfg) = crate::config::parse_str(&text, base_dir) {
        let _ = Device::new(&cfg);
    }
}

/// A valid config (for seeds): peer `dc-b` with the given endpoint.
pub fn config_seed(peer_public: &str) -> String {
    format!(
        "kind: tunnel\ninterface:\n  name: tun-a\n  addresses: [198.19.0.1/24]\n  mtu: 1420\n\
         listen: 0.0.0.0:51820\nprivate_key_file: a.key\nrekey:\n  after_time: 120s\n  \
         after_bytes: 64G\ndataplane:\n  batch: 64\n  flows: 2\n  codel_target: 5ms\n\
         peers:\n  - name: dc-b\n    public_key: \"{peer_public}\"\n    endpoint: \
         198.18.0.2:51820\n    allowed_prefixes: [198.19.0.2/32, 198.18.2.0/24]\n    \
         keepalive: 10s\n"
    )
}

const A_ADDR: ([u8; 4], u16) = ([198, 18, 0, 1], 51820);
const B_ADDR: ([u8; 4], u16) = ([198, 18, 0, 2], 51820);

fn device_config(me: u8, peer: u8, endpoint: Option<SocketAddr>, allowed: &str) -> Config {
    let private_key = PrivateKey::from_bytes([me; 32]);
    Config {
        interface: InterfaceConfig {
            name: format!("fz{me}"),
            addresses: vec![],
            mtu: 1420,
        },
        listen: if me == 1 {
            A_ADDR.into()
        } else {
            B_ADDR.into()
        },
        public_key: private_key.public(),
        private_key,
        cipher: CipherKind::Aes256Gcm,
        insecure_lab_only: false,
        control_socket: PathBuf::from("/nonexistent"),
        socket_buffer: 1 << 20,
        mss_clamp: true,
        dataplane: DataplaneConfig::default(),
        rekey_after_time: Duration::from_secs(120),
        rekey_after_bytes: 1 << 30,
        quic: None,
        metrics_listen: None,
        health: None,
        routes: Default::default(),
        pmtud: Default::default(),
        peers: vec![PeerConfig {
            name: format!("p{peer}"),
            public_key: PrivateKey::from_bytes([peer; 32]).public(),
            endpoint,
            allowed_prefixes: allowed.split(',').filter_map(|p| p.parse().ok()).collect(),
            keepalive: Some(Duration::from_secs(5)),
            transport: crate::config::TransportKind::Udp,
            quic_pin: None,
            transit: None,
        }],
    }
}

/// An established pair of devices whose receive path (B's) is fuzzed.
pub struct DeviceTarget {
    a: Device,
    b: Device,
    t0: Instant,
    elapsed: Duration,
    /// Genuine frames of every type A sent B (and B sent A), for seeds.
    seen: Vec<Vec<u8>>,
}

impl std::fmt::Debug for DeviceTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceTarget").finish_non_exhaustive()
    }
}

impl Default for DeviceTarget {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceTarget {
    /// Two devices with a session, and a record of the frames that made it.
    pub fn new() -> Self {
        let mut t = DeviceTarget {
            a: Device::new(&device_config(
                1,
                2,
                Some(B_ADDR.into()),
                "198.19.0.2/32,198.18.2.0/24",
            )),
            b: Device::new(&device_config(
                2,
                1,
                Some(A_ADDR.into()),
                "198.19.0.1/32,198.18.1.0/24",
            )),
            t0: Instant::now(),
            elapsed: Duration::ZERO,
            seen: Vec::new(),
        };
        let mut out = Vec::new();
        let now = t.time();
        t.a.tick(&now, &mut out);
        t.exchange(out, true);
        // Data both ways, and a cookie reply to A's next initiation.
        t.send_inner(true);
        t.send_inner(false);
        let mut init = Vec::new();
        t.elapsed += Duration::from_secs(200);
        let now = t.time();
        t.a.tick(&now, &mut init);
        if let Some(d) = init.first() {
            let mut reply = [0u8; wire::COOKIE_REPLY_LEN];
            let b_public = *PrivateKey::from_bytes([2; 32]).public().as_bytes();
            let sender = u32::from_le_bytes([d.data[4], d.data[5], d.data[6], d.data[7]]);
            if CookieChecker::new(&b_public)
                .reply(&d.data, sender, A_ADDR.into(), now.now, &mut reply)
                .is_some()
            {
                t.seen.push(reply.to_vec());
            }
        }
        t.exchange(init, true);
        t
    }

    fn time(&self) -> Time {
        Time {
            now: self.t0 + self.elapsed,
            unix: Duration::from_secs(1_700_000_000) + self.elapsed,
        }
    }

    /// An inner packet from A's (or B's) LAN through the tunnel.
    fn send_inner(&mut self, from_a: bool) {
        let mut p = vec![0u8; 48];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&48u16.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        let (src, dst) = if from_a {
            ([198, 18, 1, 2], [198, 18, 2, 2])
        } else {
            ([198, 18, 2, 2], [198, 18, 1, 2])
        };
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let mut buf = vec![0u8; OVERHEAD + p.len()];
        buf[HEADROOM..HEADROOM + p.len()].copy_from_slice(&p);
        let now = self.time();
        let mut out = Vec::new();
        let dev = if from_a { &mut self.a } else { &mut self.b };
        if let crate::device::Outcome::Send { len, .. } =
            dev.encapsulate(&mut buf, p.len(), &now, &mut out)
        {
            out.push(Datagram {
                to: if from_a { B_ADDR.into() } else { A_ADDR.into() },
                data: buf[..len].to_vec(),
            });
        }
        self.exchange(out, from_a);
    }

    /// Delivers datagrams back and forth until none are left (bounded).
    fn exchange(&mut self, mut out: Vec<Datagram>, mut from_a: bool) {
        for _ in 0..8 {
            if out.is_empty() {
                return;
            }
            let now = self.time();
            let mut next = Vec::new();
            for d in out {
                if self.seen.len() < 64 {
                    self.seen.push(d.data.clone());
                }
                let (dev, from) = if from_a {
                    (&mut self.b, SocketAddr::from(A_ADDR))
                } else {
                    (&mut self.a, SocketAddr::from(B_ADDR))
                };
                let mut buf = d.data.clone();
                let len = buf.len();
                buf.resize(len + 64, 0);
                if let Some(r) = dev.decapsulate(&mut buf, len, from, &now, &mut next) {
                    assert!(
                        r.start >= HEADROOM && r.end <= len,
                        "inner packet inside the frame"
                    );
                }
            }
            out = next;
            from_a = !from_a;
        }
    }

    /// Genuine frames of every type, to mutate.
    pub fn seeds(&self) -> &[Vec<u8>] {
        &self.seen
    }

    /// One input: the first byte picks the source (A's address, another
    /// port of it, a stranger) and how far time moves; the rest is a frame
    /// B receives. What B answers goes to A and back.
    pub fn receive(&mut self, data: &[u8]) {
        let Some((&ctl, frame)) = data.split_first() else {
            return;
        };
        self.elapsed += Duration::from_millis(u64::from(ctl >> 4) * 37);
        let from: SocketAddr = match ctl & 3 {
            0 => A_ADDR.into(),
            1 => ([198, 18, 0, 1], 40001).into(),
            2 => ([198, 18, 0, 99], 4000).into(),
            _ => "[fd00::9]:51820".parse().unwrap_or_else(|_| A_ADDR.into()),
        };
        let now = self.time();
        let mut out = Vec::new();
        let mut buf = frame.to_vec();
        let len = buf.len();
        buf.resize(len + 64, 0);
        if let Some(r) = self.b.decapsulate(&mut buf, len, from, &now, &mut out) {
            assert!(
                r.start >= HEADROOM && r.end <= len,
                "inner packet inside the frame"
            );
        }
        if ctl & 4 != 0 {
            self.b.tick(&now, &mut out);
            let mut a_out = Vec::new();
            self.a.tick(&now, &mut a_out);
            self.exchange(a_out, true);
        }
        out.retain(|d| d.to == SocketAddr::from(A_ADDR));
        self.exchange(out, false);
    }

    /// Whether the pair still carries a packet from A to B (the tunnel
    /// recovers from whatever was fed in, given time).
    pub fn still_works(&mut self) -> bool {
        for _ in 0..20 {
            self.elapsed += Duration::from_secs(1);
            let now = self.time();
            let mut out = Vec::new();
            self.a.tick(&now, &mut out);
            self.exchange(out, true);
            let mut out = Vec::new();
            self.b.tick(&now, &mut out);
            self.exchange(out, false);
            let before = self.b.counters().rx_packets;
            self.send_inner(true);
            if self.b.counters().rx_packets > before {
                return true;
            }
        }
        false
    }
}
