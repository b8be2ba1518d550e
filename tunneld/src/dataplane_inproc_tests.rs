//! The real data-path loops ([`crate::dataplane::run`]) of two gateways,
//! wired to each other in one process without root (wireguard-go's
//! two-device ping test): each gateway's TUN is a
//! [`crate::tuntest::ChannelTun`], its network a [`UdpTransport`] on
//! 127.0.0.1, and between them, where a test needs the path to do
//! something, a relay that marks ECN or records frame sizes. Covered: a
//! packet both ways (v4 and v6, with and without offload), TCP
//! super-packets split on TX and coalesced again on RX, RFC 6040 ECN
//! decapsulation, and the fq_codel queue letting a ping pass bulk data.

use crate::config::{DataplaneConfig, QueueKind};
use crate::control::{IoCounters, StatusCell};
use crate::dataplane::{self, Links, Mailbox};
use crate::device::Device;
use crate::testkit::{self, PacketRepr, L4};
use crate::transport::{Received, Transport, UdpTransport};
use crate::tso::{VnetHdr, F_NEEDS_CSUM, GSO_NONE};
use crate::tuntest::{self, ChannelTun, TunPeer};
use crate::wire::ecn;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tun_rs::{VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6};

/// Generous: other tests and other builds share the CPUs.
const WAIT: Duration = Duration::from_secs(10);
const MTU: usize = 1420;
const A_HOST: &str = "198.18.1.2";
const B_HOST: &str = "198.18.2.2";
const A_HOST6: &str = "fd00:1::2";
const B_HOST6: &str = "fd00:2::2";

/// The one place that starts a data path: its own thread, running until
/// `shutdown` is set.
fn spawn_dataplane(
    device: Device,
    tun: ChannelTun,
    transport: UdpTransport,
    knobs: DataplaneConfig,
    status: Arc<StatusCell>,
    shutdown: Arc<AtomicBool>,
) -> JoinHandle<io::Result<()>> {
    std::thread::spawn(move || {
        let mailbox = Mailbox::default();
        let links = Links {
            status: &status,
            mailbox: &mailbox,
            shutdown: &shutdown,
            events: None,
            workers_auto: None,
        };
        let transports: [&dyn crate::transport::Transport; 1] = [&transport];
        dataplane::run(
            device,
            std::slice::from_ref(&tun),
            &transports,
            knobs,
            MTU,
            links,
        )
    })
}

/// One running gateway: the "kernel" side of its TUN and its status.
struct Gateway {
    tun: TunPeer,
    status: Arc<StatusCell>,
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Gateway {
    fn io(&self) -> IoCounters {
        self.status.get().io
    }

    /// Waits until the published counters satisfy `f` (snapshots are
    /// published every tick).
    fn wait_io(&self, what: &str, f: impl Fn(&IoCounters) -> bool) -> IoCounters {
        let deadline = Instant::now() + WAIT;
        loop {
            let io = self.io();
            if f(&io) {
                return io;
            }
            assert!(Instant::now() < deadline, "{what}: counters {io:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let r = t.join();
            if !std::thread::panicking() {
                r.expect("data path thread").expect("data path result");
            }
        }
    }
}

/// Forwards frames between the gateways: A's to B with `mark` as the outer
/// ECN codepoint (or as received), each twice with `twice` (a replay
/// right behind the original), B's to A as received; records the length
/// of each frame A sent.
struct Relay {
    addr: SocketAddr,
    a_lens: Arc<Mutex<Vec<usize>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(a: SocketAddr, b: SocketAddr, mark: Option<u8>, twice: bool) -> Relay {
        let sock = UdpTransport::bind(([127, 0, 0, 1], 0).into(), 1 << 22, false, 1)
            .expect("relay socket");
        let addr = sock.local_addr().expect("relay address");
        let a_lens = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (lens, flag) = (a_lens.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            let mut got = [Received::default(); 1];
            while !flag.load(Ordering::Relaxed) {
                let n = {
                    let mut s = [IoSliceMut::new(&mut buf)];
                    match sock.recv(&mut s, &mut got) {
                        Ok(n) => n,
                        Err(_) => {
                            std::thread::sleep(Duration::from_micros(200));
                            continue;
                        }
                    }
                };
                if n == 0 {
                    continue;
                }
                let r = got[0];
                let frame = &buf[..r.len];
                let (to, codepoint, copies) = if r.from == a {
                    lens.lock().expect("relay log").push(r.len);
                    (b, mark.unwrap_or(r.ecn), if twice { 2 } else { 1 })
                } else {
                    (a, r.ecn, 1)
                };
                for _ in 0..copies {
                    let _ = sock.send_flow(0, to, frame, frame.len(), codepoint);
                }
            }
        });
        Relay {
            addr,
            a_lens,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Copy)]
struct Setup {
    offload_a: bool,
    offload_b: bool,
    queue_a: QueueKind,
    batch_a: usize,
    /// Put a relay between the gateways; `Some(mark)`: it marks A's frames.
    relay: Option<Option<u8>>,
    /// The relay sends each of A's frames twice.
    replay: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            offload_a: true,
            offload_b: true,
            queue_a: QueueKind::Fifo,
            batch_a: 64,
            relay: None,
            replay: false,
        }
    }
}

/// Gateway A (hosts 198.18.1.0/24, fd00:1::/64) and gateway B (hosts
/// 198.18.2.0/24, fd00:2::/64), each routing the other's prefixes to it.
/// Fields drop in order: the gateways stop before the relay.
struct Pair {
    a: Gateway,
    b: Gateway,
    relay: Option<Relay>,
}

fn pair(s: Setup) -> Pair {
    let bind = || {
        UdpTransport::bind(([127, 0, 0, 1], 0).into(), 1 << 22, true, 64).expect("UDP on loopback")
    };
    let (ta, tb) = (bind(), bind());
    let (aa, ba) = (
        ta.local_addr().expect("address"),
        tb.local_addr().expect("address"),
    );
    let relay = s.relay.map(|mark| Relay::start(aa, ba, mark, s.replay));
    let (a_to_b, b_to_a) = match &relay {
        Some(r) => (r.addr, r.addr),
        None => (ba, aa),
    };
    let mut ca = testkit::config(1, 2, Some(a_to_b), &["198.18.2.0/24", "fd00:2::/64"]);
    ca.listen = aa;
    ca.dataplane.offload = s.offload_a;
    ca.dataplane.queue = s.queue_a;
    ca.dataplane.batch = s.batch_a;
    let mut cb = testkit::config(2, 1, Some(b_to_a), &["198.18.1.0/24", "fd00:1::/64"]);
    cb.listen = ba;
    cb.dataplane.offload = s.offload_b;
    // Path MTU probes are frames of their own on the underlay; these tests
    // count frames by size (probing has its own tests).
    ca.pmtud.enabled = false;
    cb.pmtud.enabled = false;
    let start = |cfg: crate::config::Config, transport: UdpTransport, offload: bool| {
        let (tun, peer) = tuntest::pair(offload, false).expect("socketpair");
        let status = Arc::new(StatusCell::default());
        let shutdown = Arc::new(AtomicBool::new(false));
        let thread = spawn_dataplane(
            Device::new(&cfg),
            tun,
            transport,
            cfg.dataplane,
            status.clone(),
            shutdown.clone(),
        );
        Gateway {
            tun: peer,
            status,
            shutdown,
            thread: Some(thread),
        }
    };
    Pair {
        a: start(ca, ta, s.offload_a),
        b: start(cb, tb, s.offload_b),
        relay,
    }
}

/// Injects `packet` at `from` until it comes out of `to` unchanged (the
/// first tries may wait for the handshake); returns the virtio-net header
/// it came with.
fn cross(from: &Gateway, to: &Gateway, packet: &[u8]) -> Option<VnetHdr> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        from.tun.inject(packet).expect("inject");
        let until = Instant::now() + Duration::from_millis(300);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match to.tun.recv(left).expect("TUN peer") {
                Some((hdr, p)) if p == packet => return hdr,
                Some(_) => {}
                None => break,
            }
        }
    }
    panic!("packet did not cross within {WAIT:?}");
}

fn echo(src: &str, dst: &str, seq: u16) -> Vec<u8> {
    PacketRepr::new(src, dst, L4::Echo { id: 7, seq }).emit(&[0x61; 56])
}

#[test]
fn a_ping_crosses_both_ways_v4_and_v6_with_and_without_offload() {
    for offload in [true, false] {
        let p = pair(Setup {
            offload_a: offload,
            offload_b: offload,
            ..Setup::default()
        });
        for (a, b) in [(A_HOST, B_HOST), (A_HOST6, B_HOST6)] {
            let hdr = cross(&p.a, &p.b, &echo(a, b, 1));
            // With offload a lone packet is written as it is: no GSO, no
            // checksum left to the kernel.
            assert_eq!(
                hdr.map(|h| (h.gso_type, h.flags)),
                offload.then_some((0, 0))
            );
            cross(&p.b, &p.a, &echo(b, a, 2));
        }
        // (A packet read during the handshake leaves with it, outside the
        // data frame counts.)
        p.a.wait_io("A sent and received", |io| {
            io.tun_read_packets >= 2 && io.udp_send_frames >= 1 && io.tun_write_packets >= 2
        });
        let io = p.b.wait_io("B sent and received", |io| {
            io.tun_read_packets >= 2 && io.udp_recv_frames >= 1 && io.tun_write_packets >= 2
        });
        assert_eq!(io.tun_read_errors + io.tun_write_errors, 0, "{io:?}");
    }
}

/// The virtio-net header the kernel gives a TCP super-packet of `repr`'s
/// headers cut into `mss`-byte segments (checksum left partial).
fn tso_header(repr: &PacketRepr, mss: usize, v6: bool) -> VnetHdr {
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if v6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        },
        hdr_len: repr.header_len() as u16,
        gso_size: mss as u16,
        csum_start: repr.ip_header_len() as u16,
        csum_offset: 16,
    }
}

/// A's TUN returns `segments` TCP segments of `mss` bytes (the last
/// `last` bytes) as one super-packet; B must write them as one
/// super-packet again, with the same `gso_size`, payload and flags.
fn super_packet_round_trip(v6: bool, mss: usize, segments: usize, last: usize) {
    let p = pair(Setup::default());
    let (src, dst) = if v6 {
        (A_HOST6, B_HOST6)
    } else {
        (A_HOST, B_HOST)
    };
    cross(&p.a, &p.b, &echo(src, dst, 1));
    let mut repr = PacketRepr::tcp(src, dst, 1_000_000);
    if let L4::Tcp {
        ref mut flags,
        ref mut options,
        ..
    } = repr.l4
    {
        *flags = testkit::tcp_flags::ACK | testkit::tcp_flags::PSH;
        *options = 12;
    }
    let len = mss * (segments - 1) + last;
    let payload: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    let packet = repr.emit(&payload);
    let hdr = tso_header(&repr, mss, v6);
    p.a.tun.inject_offloaded(hdr, &packet).expect("inject");
    let mut got = Vec::new();
    let mut writes = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < payload.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some((Some(h), w)) = p.b.tun.recv(left).expect("TUN peer") else {
            panic!("{} of {} payload bytes arrived", got.len(), payload.len());
        };
        got.extend_from_slice(&w[repr.header_len()..]);
        writes.push((h, w.len()));
    }
    assert_eq!(got, payload, "payload in order");
    assert_eq!(writes.len(), 1, "one super-packet: {writes:?}");
    let (h, wlen) = writes[0];
    assert_eq!(h.gso_type, hdr.gso_type);
    assert_eq!(usize::from(h.gso_size), mss);
    assert_eq!(wlen, packet.len());
    let io = p.a.wait_io("A split the super-packet", |io| {
        io.tun_read_packets > segments as u64
    });
    assert_eq!(io.tun_reads, 2, "the ping and the super-packet: {io:?}");
    assert_eq!(io.tun_read_packets, 1 + segments as u64);
    let io =
        p.b.wait_io("B coalesced", |io| io.tun_write_packets > segments as u64);
    assert_eq!(io.tun_writes, 2, "the ping and one super-packet: {io:?}");
}

/// Every frame of A's arrives twice in a row, so most copies land in the
/// batch of their original: B delivers each packet once (its replay
/// window is marked at the end of each batch, refusing the copy by its
/// position), writes the super-packet whole and counts one replay per
/// frame.
#[test]
fn frames_received_twice_in_one_batch_are_delivered_once() {
    let p = pair(Setup {
        relay: Some(None),
        replay: true,
        ..Setup::default()
    });
    cross(&p.a, &p.b, &echo(A_HOST, B_HOST, 1));
    // The ping's copy is a replay too; the status shows it within a tick
    // or two.
    let replays = || p.b.status.get().counters.drop_replay;
    let deadline = Instant::now() + WAIT;
    while replays() == 0 {
        assert!(Instant::now() < deadline, "the ping's copy was not refused");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = replays();
    let (segments, mss) = (30, 1000);
    let mut repr = PacketRepr::tcp(A_HOST, B_HOST, 5_000);
    if let L4::Tcp { ref mut flags, .. } = repr.l4 {
        *flags = testkit::tcp_flags::ACK | testkit::tcp_flags::PSH;
    }
    let payload: Vec<u8> = (0..segments * mss).map(|i| (i % 251) as u8).collect();
    let packet = repr.emit(&payload);
    p.a.tun
        .inject_offloaded(tso_header(&repr, mss, false), &packet)
        .expect("inject");
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < payload.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some((_, w)) = p.b.tun.recv(left).expect("TUN peer") else {
            panic!("{} of {} payload bytes arrived", got.len(), payload.len());
        };
        got.extend_from_slice(&w[repr.header_len()..]);
    }
    assert!(
        got == payload,
        "every byte once, in order: {} bytes for {}",
        got.len(),
        payload.len()
    );
    // Nothing more comes out: the copies were all refused.
    assert_eq!(
        p.b.tun.recv(Duration::from_millis(300)).expect("TUN peer"),
        None
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let replays = replays() - before;
        if replays == segments as u64 {
            break;
        }
        assert!(replays < segments as u64, "{replays} replays counted");
        assert!(
            Instant::now() < deadline,
            "{replays} of {segments} replays counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tcp_super_packets_are_split_and_coalesced_again_v4() {
    super_packet_round_trip(false, 1000, 20, 1000);
}

#[test]
fn tcp_super_packets_are_split_and_coalesced_again_v6_odd_last() {
    super_packet_round_trip(true, 1300, 15, 433);
}

/// A super-packet with more segments than the batch has buffers for (a
/// batch plus one split, 192 here) is dropped and counted, never cut
/// short; so is one with a bad header; the next packet still passes.
#[test]
fn an_oversized_super_packet_is_a_counted_read_error() {
    let p = pair(Setup::default());
    cross(&p.a, &p.b, &echo(A_HOST, B_HOST, 1));
    let repr = PacketRepr::tcp(A_HOST, B_HOST, 5);
    let segments = 300;
    let packet = repr.emit(&vec![1u8; 100 * segments]);
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 40,
        gso_size: 100,
        csum_start: 20,
        csum_offset: 16,
    };
    p.a.tun.inject_offloaded(hdr, &packet).expect("inject");
    // A garbage header too.
    p.a.tun
        .inject_offloaded(
            VnetHdr {
                gso_type: 0x42,
                ..hdr
            },
            &packet,
        )
        .expect("inject");
    cross(&p.a, &p.b, &echo(A_HOST, B_HOST, 2));
    let io = p.a.wait_io("both counted", |io| io.tun_read_errors >= 2);
    assert_eq!(io.tun_read_errors, 2, "{io:?}");
}

/// RFC 6040 at B: the path marks every frame from A with CE. An
/// ECN-capable inner packet arrives marked CE (counted as a path CE); a
/// not-ECT one is dropped and counted. B → A is not marked: unchanged.
#[test]
fn ecn_ce_on_the_path_marks_ect_inner_and_drops_not_ect() {
    let p = pair(Setup {
        relay: Some(Some(ecn::CE)),
        ..Setup::default()
    });
    let mut ect = PacketRepr::udp(A_HOST, B_HOST);
    ect.ecn = ecn::ECT0;
    let sent = ect.emit(b"ect(0) inner");
    // The handshake crosses the marking relay too; retry until through.
    let deadline = Instant::now() + WAIT;
    let got = loop {
        assert!(Instant::now() < deadline, "no ECT packet arrived");
        p.a.tun.inject(&sent).expect("inject");
        if let Some((_, g)) = p.b.tun.recv(Duration::from_millis(300)).expect("peer") {
            break g;
        }
    };
    let mut want = sent.clone();
    want[1] = ecn::CE;
    // The IP checksum follows the codepoint.
    want[10..12].fill(0);
    let c = crate::wire::checksum(&want[..20]);
    want[10..12].copy_from_slice(&c.to_be_bytes());
    assert_eq!(got, want, "CE on the inner header, checksum updated");
    let before = p.b.wait_io("path CE counted", |io| io.ecn_path_ce >= 1);
    // A not-ECT packet, then an ECT one of the same flow as a fence.
    let not_ect = PacketRepr::udp(A_HOST, B_HOST).emit(b"not-ect inner");
    p.a.tun.inject(&not_ect).expect("inject");
    p.a.tun.inject(&sent).expect("inject");
    let (_, g) =
        p.b.tun
            .recv(WAIT)
            .expect("peer")
            .expect("the fence arrives");
    assert_eq!(g, want, "only the ECT packet comes out");
    let io = p.b.wait_io("not-ECT drop counted", |io| {
        io.ecn_not_ect_drops > before.ecn_not_ect_drops
    });
    assert_eq!(io.ecn_not_ect_drops, before.ecn_not_ect_drops + 1);
    assert!(io.ecn_path_ce > before.ecn_path_ce);
    // Unmarked direction: a not-ECT packet passes as it is.
    cross(&p.b, &p.a, &PacketRepr::udp(B_HOST, A_HOST).emit(b"back"));
    assert!(p.relay.is_some());
}

/// Bulk data (four 60-segment super-packets) then a ping, all queued at
/// A's TUN: with `queue: fq_codel` the ping leaves after one quantum;
/// with `fifo` it leaves last. Returns how many bulk frames left before
/// it, read off the frames A sends (the relay records their sizes).
const BULK_READS: usize = 4;
const BULK: usize = BULK_READS * 60;

fn ping_position(queue: QueueKind) -> (usize, usize, IoCounters) {
    let p = pair(Setup {
        queue_a: queue,
        batch_a: 16,
        relay: Some(None),
        ..Setup::default()
    });
    cross(&p.a, &p.b, &echo(A_HOST, B_HOST, 1));
    let relay = p.relay.as_ref().expect("relay");
    let skip = relay.a_lens.lock().expect("log").len();
    let (mss, segments) = (1000, 60);
    for k in 0..BULK_READS as u32 {
        let repr = PacketRepr::tcp(A_HOST, B_HOST, k * (mss * segments) as u32);
        let packet = repr.emit(&vec![k as u8; mss * segments]);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len: 40,
            gso_size: mss as u16,
            csum_start: 20,
            csum_offset: 16,
        };
        p.a.tun
            .inject_offloaded_quietly(hdr, &packet)
            .expect("inject");
    }
    // A ping of its own size (the warm-up's may still be on its way).
    let ping = PacketRepr::new(A_HOST, B_HOST, L4::Echo { id: 7, seq: 2 }).emit(&[0x62; 120]);
    p.a.tun.inject_quietly(&ping).expect("inject");
    // The whole burst is in the TUN ring when the data path wakes up.
    p.a.tun.ring();
    let ping_frame = ping.len() + crate::device::OVERHEAD;
    let io =
        p.a.wait_io("all sent", |io| io.udp_send_frames > BULK as u64);
    let deadline = Instant::now() + WAIT;
    loop {
        let lens = relay.a_lens.lock().expect("log")[skip..].to_vec();
        let bulk = lens.iter().filter(|&&l| l > 1000).count();
        let before = lens.iter().take_while(|&&l| l != ping_frame);
        let pos = before.filter(|&&l| l > 1000).count();
        if bulk == BULK && lens.contains(&ping_frame) {
            return (pos, bulk, io);
        }
        assert!(Instant::now() < deadline, "relay saw {lens:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fq_codel_lets_a_ping_pass_bulk_data() {
    let (pos, bulk, io) = ping_position(QueueKind::FqCodel);
    // The bulk flow, first in the queue, sends one quantum (64 KiB: 64
    // packets of 1,040 bytes), then the ping's flow has its turn, ahead
    // of the other 176 bulk packets queued before it.
    assert!(pos <= 64, "ping left after {pos} of {bulk} bulk frames");
    assert_eq!(io.queue_overflow_drops, 0, "{io:?}");
    assert!(io.udp_sends < io.udp_send_frames, "GSO batching: {io:?}");
    // The same load through the FIFO: the ping waits for all of it.
    let (pos, bulk, _) = ping_position(QueueKind::Fifo);
    assert_eq!(pos, bulk, "FIFO: the ping leaves last");
}

#[test]
fn a_non_gso_packet_asking_for_its_checksum_gets_it() {
    let p = pair(Setup::default());
    cross(&p.a, &p.b, &echo(A_HOST, B_HOST, 1));
    let repr = PacketRepr::udp(A_HOST, B_HOST);
    let good = repr.emit(b"partial checksum");
    let mut partial = good.clone();
    // CHECKSUM_PARTIAL: the field holds only the pseudo-header sum.
    let pseudo = crate::wire::pseudo_header_sum(repr.src, repr.dst, 17, (good.len() - 20) as u32);
    partial[26..28].copy_from_slice(&crate::wire::fold(pseudo).to_be_bytes());
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_NONE,
        hdr_len: 28,
        gso_size: 0,
        csum_start: 20,
        csum_offset: 6,
    };
    p.a.tun.inject_offloaded(hdr, &partial).expect("inject");
    let (_, got) = p.b.tun.recv(WAIT).expect("peer").expect("arrives");
    assert_eq!(got, good);
}
