//! Data-path micro-benchmarks (divan): AEAD seal and open of one 1420-byte
//! packet per cipher, tun-rs's split of a 64 KiB TCP super-packet, our
//! coalescing of 46 segments (and tun-rs's, for comparison), and `Device` encapsulate + decapsulate of 64
//! packets after an in-memory handshake. Every bench counts bytes, so divan
//! reports throughput per core. `handshake_cost`: what a handshake message
//! costs the responder (mac1 check, cookie reply, reading the initiation).
//!
//! Full run: `cargo bench -p tunneld --bench datapath`.
//! CI smoke run (a few seconds): add `-- --sample-count 3 --sample-size 3`.
//! `cargo test --benches` runs each bench once as a test.

use divan::counter::BytesCount;
use divan::Bencher;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tun_rs::{gso_split, GROTable, VirtioNetHdr, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_LEN};
use tunneld::config::{CipherKind, Config, DataplaneConfig, InterfaceConfig, PeerConfig};
use tunneld::crypto::aead::{new_aead, TAG_LEN};
use tunneld::device::{Datagram, Device, Outcome, Time, HEADROOM, OVERHEAD};
use tunneld::gro::Coalescer;
use tunneld::keys::PrivateKey;

fn main() {
    divan::main();
}

/// Inner packet size: the default tunnel MTU.
const PACKET: usize = 1420;
const CIPHERS: [CipherKind; 3] = [
    CipherKind::Aes256Gcm,
    CipherKind::ChaCha20Poly1305,
    CipherKind::None,
];

// ---------------------------------------------------------------- AEAD

#[divan::bench(args = CIPHERS)]
fn seal(bencher: Bencher, kind: CipherKind) {
    let aead = new_aead(kind, &[7; 32]).expect("aead");
    let aad = [4u8; 16];
    let mut buf = vec![0x5au8; PACKET + TAG_LEN];
    let mut counter = 0u64;
    bencher.counter(BytesCount::new(PACKET)).bench_local(|| {
        counter += 1;
        aead.seal_in_place(counter, &aad, divan::black_box(&mut buf))
            .expect("seal");
    });
}

#[divan::bench(args = CIPHERS)]
fn open(bencher: Bencher, kind: CipherKind) {
    let aead = new_aead(kind, &[7; 32]).expect("aead");
    let aad = [4u8; 16];
    let mut sealed = vec![0x5au8; PACKET + TAG_LEN];
    aead.seal_in_place(9, &aad, &mut sealed).expect("seal");
    bencher
        .counter(BytesCount::new(PACKET))
        .with_inputs(|| sealed.clone())
        .bench_local_refs(|buf| {
            let n = aead.open_in_place(9, &aad, buf).expect("open");
            assert_eq!(n, PACKET);
        });
}

// ---------------------------------------------------------------- offload

/// A TCP/IPv4 packet with timestamps and a valid TCP checksum.
fn tcp4(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let total = 52 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[198, 18, 1, 2]);
    p[16..20].copy_from_slice(&[198, 18, 2, 2]);
    let ip = !fold(sum_words(&p[..20]));
    p[10..12].copy_from_slice(&ip.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&7u32.to_be_bytes());
    t[12] = 8 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&502u16.to_be_bytes());
    t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 3, 232, 0, 0, 7, 208]);
    t[32..].copy_from_slice(payload);
    let pseudo = sum_words(&[198, 18, 1, 2, 198, 18, 2, 2]) + 6 + (total - 20) as u64;
    let c = !fold(pseudo + sum_words(t));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    p
}

fn sum_words(d: &[u8]) -> u64 {
    d.chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// MSS of a 1420-byte tunnel MTU with TCP timestamps.
const MSS: usize = PACKET - 52;

#[divan::bench]
fn split_64k(bencher: Bencher) {
    // The largest IPv4 super-packet: 65,535 bytes, 48 segments.
    let mut input = tcp4(1, 0x18, &vec![0x33; 65_535 - 52]);
    let hdr = VirtioNetHdr {
        flags: 1,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 52,
        gso_size: MSS as u16,
        csum_start: 20,
        csum_offset: 16,
    };
    let mut out = vec![vec![0u8; HEADROOM + PACKET + OVERHEAD]; 128];
    let mut sizes = vec![0usize; 128];
    bencher
        .counter(BytesCount::new(input.len()))
        .bench_local(|| {
            let n =
                gso_split(&mut input, hdr, &mut out, &mut sizes, HEADROOM, false).expect("split");
            assert_eq!(n, 48);
        });
}

/// 46 in-order full segments of one flow, PSH on the last.
fn segments_46() -> Vec<Vec<u8>> {
    const N: usize = 46;
    (0..N)
        .map(|i| {
            let flags = if i + 1 == N { 0x18 } else { 0x10 };
            tcp4((i * MSS) as u32, flags, &[i as u8; MSS])
        })
        .collect()
}

#[divan::bench]
fn coalesce_46(bencher: Bencher) {
    // 46 in-order full segments: 62,928 bytes of payload, one super-packet
    // (our coalescer, as the data path runs it: copy, verify, merge).
    let segs = segments_46();
    let bytes: usize = segs.iter().map(Vec::len).sum();
    let mut c = Coalescer::new();
    bencher.counter(BytesCount::new(bytes)).bench_local(|| {
        for s in &segs {
            c.push(s);
        }
        assert_eq!(c.finish().len(), 1, "one super-packet");
    });
}

#[divan::bench]
fn coalesce_46_tun_rs(bencher: Bencher) {
    // The same with tun-rs's GRO (what the data path used before), for
    // comparison.
    let segs = segments_46();
    let bytes: usize = segs.iter().map(Vec::len).sum();
    let cap = 2 * VIRTIO_NET_HDR_LEN + 65_535;
    let mut gro = GROTable::default();
    bencher
        .counter(BytesCount::new(bytes))
        .with_inputs(|| {
            segs.iter()
                .map(|s| {
                    let mut b = Vec::with_capacity(cap);
                    b.resize(VIRTIO_NET_HDR_LEN, 0);
                    b.extend_from_slice(s);
                    b
                })
                .collect::<Vec<_>>()
        })
        .bench_local_refs(|bufs| {
            gro.apply_gro(bufs, VIRTIO_NET_HDR_LEN, false).expect("gro");
        });
}

// ---------------------------------------------------------------- device

const A_ADDR: &str = "198.18.0.1:51820";
const B_ADDR: &str = "198.18.0.2:51820";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn config(me: u8, peer: u8, cipher: CipherKind, allowed: &str) -> Config {
    let private_key = PrivateKey::from_bytes([me; 32]);
    let (listen, endpoint) = if me == 1 {
        (A_ADDR, B_ADDR)
    } else {
        (B_ADDR, A_ADDR)
    };
    Config {
        interface: InterfaceConfig {
            name: format!("bench{me}"),
            addresses: vec![],
            mtu: PACKET as u16,
        },
        listen: addr(listen),
        public_key: private_key.public(),
        private_key,
        cipher,
        insecure_lab_only: true,
        control_socket: PathBuf::from("/nonexistent"),
        socket_buffer: 1 << 20,
        mss_clamp: true,
        dataplane: DataplaneConfig {
            offload: true,
            batch: 64,
            workers: 1,
            flows: 1,
            ..Default::default()
        },
        quic: None,
        metrics_listen: None,
        rekey_after_time: Duration::from_secs(120),
        rekey_after_bytes: u64::MAX,
        peers: vec![PeerConfig {
            name: format!("peer{peer}"),
            public_key: PrivateKey::from_bytes([peer; 32]).public(),
            endpoint: Some(addr(endpoint)),
            allowed_prefixes: vec![allowed.parse().expect("prefix")],
            keepalive: None,
            transport: tunneld::config::TransportKind::Udp,
            quic_pin: None,
            transit: None,
        }],
        health: None,
        routes: Default::default(),
        pmtud: Default::default(),
    }
}

/// Two devices with a completed handshake (A initiates), no sockets.
fn pair(cipher: CipherKind, t: &Time) -> (Device, Device) {
    let mut a = Device::new(&config(1, 2, cipher, "198.18.2.0/24"));
    let mut b = Device::new(&config(2, 1, cipher, "198.18.1.0/24"));
    let mut to_b = Vec::new();
    a.tick(t, &mut to_b);
    for _ in 0..4 {
        let mut to_a = Vec::new();
        for d in to_b.drain(..) {
            deliver(&mut b, d, A_ADDR, t, &mut to_a);
        }
        for d in to_a {
            deliver(&mut a, d, B_ADDR, t, &mut to_b);
        }
    }
    assert!(
        a.peer_status(t.now)[0].session && b.peer_status(t.now)[0].session,
        "handshake completed"
    );
    (a, b)
}

fn deliver(dev: &mut Device, d: Datagram, from: &str, t: &Time, out: &mut Vec<Datagram>) {
    let mut frame = d.data;
    let len = frame.len();
    frame.resize(len + 64, 0);
    let _ = dev.decapsulate(&mut frame, len, addr(from), t, out);
}

/// An IPv4/UDP packet of `PACKET` bytes from A's side to B's.
fn udp4() -> Vec<u8> {
    let mut p = vec![0x42u8; PACKET];
    p[..20].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 198, 18, 1, 2, 198, 18, 2, 2,
    ]);
    p[2..4].copy_from_slice(&(PACKET as u16).to_be_bytes());
    let c = !fold(sum_words(&p[..20]));
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&1234u16.to_be_bytes());
    p[22..24].copy_from_slice(&5678u16.to_be_bytes());
    p[24..26].copy_from_slice(&((PACKET - 20) as u16).to_be_bytes());
    p[26..28].fill(0); // no UDP checksum
    p
}

#[divan::bench(args = CIPHERS)]
fn device_roundtrip_64(bencher: Bencher, cipher: CipherKind) {
    const BATCH: usize = 64;
    let t = Time {
        now: Instant::now(),
        unix: Duration::from_secs(1_700_000_000),
    };
    let (mut a, mut b) = pair(cipher, &t);
    let packet = udp4();
    let mut bufs = vec![vec![0u8; HEADROOM + PACKET + OVERHEAD]; BATCH];
    let mut control = Vec::new();
    let from = addr(A_ADDR);
    bencher
        .counter(BytesCount::new(BATCH * PACKET))
        .bench_local(|| {
            for buf in bufs.iter_mut() {
                buf[HEADROOM..HEADROOM + PACKET].copy_from_slice(&packet);
                let Outcome::Send { len, .. } = a.encapsulate(buf, PACKET, &t, &mut control) else {
                    panic!("packet held: no session");
                };
                let inner = b
                    .decapsulate(buf, len, from, &t, &mut control)
                    .expect("frame opened");
                assert_eq!(inner.len(), PACKET);
            }
            control.clear();
        });
}

// ------------------------------------------------ handshake admission costs

/// What a handshake initiation costs the responder at each stage: the mac1
/// check every message gets, the cookie reply a message gets under load,
/// and the public-key work (reading the initiation) only admitted messages
/// get. The ratio is what the cookie mechanism saves per flood packet.
mod handshake_cost {
    use super::*;
    use tunneld::crypto::cookie::{CookieChecker, CookieJar};
    use tunneld::crypto::handshake::{self, Identity};

    fn identity(seed: u8) -> Identity {
        let k = PrivateKey::from_bytes([seed; 32]);
        Identity::new(*k.as_bytes(), *k.public().as_bytes())
    }

    /// A genuine 148-byte initiation frame from 1 to 2, with its MACs.
    fn initiation() -> Vec<u8> {
        let (a, b) = (identity(1), identity(2));
        let mut f = vec![0u8; 148];
        f[0] = 1;
        let (_, n) = handshake::start_initiation(
            &a,
            b.public(),
            7,
            handshake::timestamp(1, 0),
            &mut f[8..116],
        )
        .expect("initiation");
        assert_eq!(n, 108);
        CookieJar::new(b.public()).stamp(&mut f, Instant::now());
        f
    }

    #[divan::bench]
    fn mac1_check(bencher: Bencher) {
        let checker = CookieChecker::new(identity(2).public());
        let f = initiation();
        bencher.bench_local(|| assert!(checker.mac1_ok(divan::black_box(&f))));
    }

    #[divan::bench]
    fn cookie_reply(bencher: Bencher) {
        let mut checker = CookieChecker::new(identity(2).public());
        let f = initiation();
        let from: SocketAddr = ([198, 18, 0, 1], 51820).into();
        let now = Instant::now();
        let mut out = [0u8; 64];
        bencher.bench_local(|| {
            checker
                .reply(divan::black_box(&f), 7, from, now, &mut out)
                .expect("reply")
        });
    }

    #[divan::bench]
    fn read_initiation(bencher: Bencher) {
        let b = identity(2);
        let f = initiation();
        bencher.bench_local(|| {
            handshake::read_initiation(&b, divan::black_box(&f[8..116]), 7).expect("read")
        });
    }
}
