//! Data-path micro-benchmarks (divan): AEAD seal and open of one 1420-byte
//! packet per cipher, the split of a 64 KiB TCP super-packet (tun-rs's
//! and ours, [`tunneld::tso`]), our
//! coalescing of 46 segments (and tun-rs's, for comparison), one GSO
//! send of 44 sealed frames over loopback (copied into one buffer first,
//! as before, and sent from the slab they were sealed in), and `Device` encapsulate + decapsulate of 64
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
use std::time::{Duration, Instant};
use tun_rs::{gso_split, GROTable, VirtioNetHdr, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_LEN};
use tunneld::config::{CipherKind, Config};
use tunneld::crypto::aead::{new_aead, TAG_LEN};
use tunneld::device::{Datagram, Device, Outcome, Time, HEADROOM, OVERHEAD};
use tunneld::gro::Coalescer;
use tunneld::keys::PrivateKey;
use tunneld::slab::{Slab, Slots};
use tunneld::testkit::{self, PacketRepr, L4};
use tunneld::transport::{Transport, UdpTransport};
use tunneld::tso::{self, VnetHdr};

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
    let mut r = PacketRepr::tcp("198.18.1.2", "198.18.2.2", seq);
    if let L4::Tcp {
        flags: ref mut f,
        ref mut options,
        ..
    } = r.l4
    {
        *f = flags;
        *options = 12;
    }
    r.emit(payload)
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

#[divan::bench]
fn split_64k_fused(bencher: Bencher) {
    // The same super-packet through our split (tunneld::tso), which copies
    // each payload and folds it into the checksum in one pass.
    let mut read = vec![0u8; VIRTIO_NET_HDR_LEN];
    VnetHdr {
        flags: tso::F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 52,
        gso_size: MSS as u16,
        csum_start: 20,
        csum_offset: 16,
    }
    .emit(&mut read);
    read.extend_from_slice(&tcp4(1, 0x18, &vec![0x33; 65_535 - 52]));
    let mut out = vec![vec![0u8; HEADROOM + PACKET + OVERHEAD]; 128];
    let mut sizes = vec![0usize; 128];
    bencher
        .counter(BytesCount::new(read.len() - VIRTIO_NET_HDR_LEN))
        .bench_local(|| {
            let n =
                tso::split(divan::black_box(&read), &mut out, &mut sizes, HEADROOM).expect("split");
            assert_eq!(n, 48);
        });
}

// ---------------------------------------------------------------- send

/// Sealed frames of one TSO super-packet in their own buffers, as the
/// data path holds them: 44 frames of a 1420-byte MTU (the most under
/// the 65,000-byte cap of one GSO send).
fn sealed_frames() -> Vec<Vec<u8>> {
    (0..44u8)
        .map(|i| {
            let mut b = vec![i; HEADROOM + PACKET + OVERHEAD];
            b.truncate(PACKET + OVERHEAD);
            b
        })
        .collect()
}

/// A sender and a receiver on loopback. The receiver takes GRO trains
/// whole and is never read: once its buffer is full the kernel drops each
/// train on arrival, the same cost for both ways of sending.
fn loopback_pair() -> (UdpTransport, SocketAddr, UdpTransport) {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let a = UdpTransport::bind(any, 4 << 20, true, 64).expect("bind sender");
    let b = UdpTransport::bind(any, 256 << 10, true, 64).expect("bind receiver");
    let to = b.local_addr().expect("addr");
    (a, to, b)
}

#[divan::bench]
fn send_train_copied(bencher: Bencher) {
    // One GSO send of 44 sealed frames, each in its own buffer, copied
    // back to back first (how every run was sent before the TX slab).
    let frames = sealed_frames();
    let (a, to, _b) = loopback_pair();
    let seg = frames[0].len();
    let mut gso = Vec::with_capacity(65_536);
    bencher
        .counter(BytesCount::new(seg * frames.len()))
        .bench_local(|| {
            gso.clear();
            for f in &frames {
                gso.extend_from_slice(f);
            }
            a.send_flow(0, to, divan::black_box(&gso), seg, 0)
                .expect("send");
        });
}

#[divan::bench]
fn send_train_in_place(bencher: Bencher) {
    // The same send from where the frames were sealed: the data path's
    // TX slots are one slab, one full frame each, so consecutive full
    // frames already lie back to back (tunneld::slab).
    let frames = sealed_frames();
    let (a, to, _b) = loopback_pair();
    let seg = frames[0].len();
    let mut slab = Slab::new(frames.len(), seg);
    for (i, f) in frames.iter().enumerate() {
        slab.slot(i).copy_from_slice(f);
    }
    let positions: Vec<usize> = (0..frames.len()).collect();
    bencher
        .counter(BytesCount::new(seg * frames.len()))
        .bench_local(|| {
            let train = slab.train(&positions, seg, seg).expect("back to back");
            a.send_flow(0, to, divan::black_box(train), seg, 0)
                .expect("send");
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
    let endpoint = addr(if me == 1 { B_ADDR } else { A_ADDR });
    let mut c = testkit::config(me, peer, Some(endpoint), &[allowed]);
    c.cipher = cipher;
    c.insecure_lab_only = true;
    c.interface.mtu = PACKET as u16;
    c.rekey_after_bytes = u64::MAX;
    c
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
    PacketRepr::udp("198.18.1.2", "198.18.2.2").emit(&[0x42; PACKET - 28])
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

/// Workers sealing and opening on one shared session at once, as the data
/// path's workers do: each thread seals a batch of 44 packets through A's
/// published snapshot and opens them through B's (no device lock, no
/// sockets). With `threads = N` divan runs N copies at once and reports
/// each one's time: flat times from 1 to N threads mean the shared state
/// (the send counter, the replay window, the counters) does not serialise
/// the workers. `settled`: the replay window marked once per batch
/// ([`tunneld::fastpath::FastPath::settle`], what the data path does);
/// `marked_each`: marked frame by frame, one window lock each. This host
/// has 2 CPUs, so 4 threads share them.
mod fastpath_threads {
    use super::*;
    use tunneld::fastpath::{FastPath, Opened, Sealed, Tally};

    const BATCH: usize = 44;

    fn run(bencher: Bencher, settle: bool) {
        let t = Time {
            now: Instant::now(),
            unix: Duration::from_secs(1_700_000_000),
        };
        let (mut a, mut b) = pair(CipherKind::Aes256Gcm, &t);
        // The session's first data frame goes through B's device (it
        // confirms the session); every later one takes the lock-free path.
        let packet = udp4();
        let mut control = Vec::new();
        let mut first = vec![0u8; HEADROOM + PACKET + OVERHEAD];
        first[HEADROOM..HEADROOM + PACKET].copy_from_slice(&packet);
        let Outcome::Send { len, .. } = a.encapsulate(&mut first, PACKET, &t, &mut control) else {
            panic!("no session");
        };
        let from = addr(A_ADDR);
        b.decapsulate(&mut first, len, from, &t, &mut control)
            .expect("first frame opened");
        let (fa, fb) = (a.fast_path(), b.fast_path());
        bencher
            .counter(BytesCount::new(BATCH * PACKET))
            .with_inputs(|| {
                (
                    vec![vec![0u8; HEADROOM + PACKET + OVERHEAD]; BATCH],
                    Tally::default(),
                    Tally::default(),
                )
            })
            .bench_refs(|(bufs, seal, open)| {
                let (pa, pb): (&FastPath, &FastPath) = (&fa.load(), &fb.load());
                seal.expect(BATCH);
                for buf in bufs.iter_mut() {
                    buf[HEADROOM..HEADROOM + PACKET].copy_from_slice(&packet);
                    let Sealed::Send { len, .. } = pa.encapsulate(seal, buf, PACKET, t.now) else {
                        panic!("not sealed on the lock-free path");
                    };
                    let opened = if settle {
                        pb.decapsulate_deferred(open, buf, len, from, t.now)
                    } else {
                        pb.decapsulate(open, buf, len, from, t.now)
                    };
                    let Opened::Inner(r) = opened else {
                        panic!("not opened on the lock-free path");
                    };
                    assert_eq!(r.len(), PACKET);
                }
                if settle {
                    pb.settle(open, |k| panic!("frame {k} refused"));
                }
                seal.flush(pa.counters());
                open.flush(pb.counters());
            });
    }

    #[divan::bench(threads = [1, 2, 4])]
    fn settled(bencher: Bencher) {
        run(bencher, true);
    }

    #[divan::bench(threads = [1, 2, 4])]
    fn marked_each(bencher: Bencher) {
        run(bencher, false);
    }
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
