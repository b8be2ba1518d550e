//! ECN across the tunnel (RFC 6040) on real packets. This
//! kernel has no marking qdisc (no netem, RED or fq_codel), so a small UDP
//! relay in gw-b's namespace stands in for a congested path: gw-a's peer
//! endpoint is the relay, which forwards gw-a's frames to gw-b's daemon
//! with the outer ECN field it chooses (gw-b has no endpoint for gw-a, so
//! it answers through the relay too) (IP_TOS per send) and reads the
//! field gw-a put on each frame (IP_RECVTOS). It checks that
//! - gw-a copies an ECN-capable inner packet's codepoint to the outer
//!   header (the relay sees ECT frames during an ECN TCP transfer),
//! - a CE mark on the outer header reaches the inner TCP (counted as
//!   `ecn_path_ce`) and the transfer stays intact,
//! - a CE mark on a frame whose inner packet is not ECN-capable (ping)
//!   drops it and counts `ecn_not_ect_drops`, as a router would have,
//! - with `dataplane.ecn: false` outer headers are not ECN-capable and CE
//!   marks are ignored.
//!
//! Needs root (skips outside CI without it).

use e2e::{ping_once, require_root, tcp_transfer, wait_for, wait_ping, Side, TunnelLab};
use serde_json::{json, Value};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tunbench::lab::systems::tunneld::PORT;
use tunbench::topo;

const MIB: u64 = 1 << 20;
const RELAY_PORT: u16 = 51999;
const CE: u8 = 0b11;

/// What the relay does to the outer ECN field of gw-a → gw-b frames.
const PASS: u8 = 0;
/// CE on frames that arrive ECN-capable (what an AQM marks).
const MARK_ECT: u8 = 1;
/// CE on every frame (a path that marks what it should have dropped).
const MARK_ALL: u8 = 2;

struct Relay {
    mode: Arc<AtomicU8>,
    /// gw-a frames that arrived with ECT(0), ECT(1) or CE.
    ect_seen: Arc<AtomicU64>,
    /// gw-a frames forwarded.
    frames: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn set_int(fd: i32, level: i32, name: i32, v: i32) -> std::io::Result<()> {
    // SAFETY: a valid socket and a c_int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// recvmsg with IP_RECVTOS: (bytes, sender, TOS byte).
fn recv_tos(s: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, u8)> {
    // SAFETY: every pointer below refers to a live local of the size given;
    // cmsgs are walked with the libc macros inside `control`.
    unsafe {
        let mut from: libc::sockaddr_in = std::mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; 16];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut from as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        let n = libc::recvmsg(s.as_raw_fd(), &mut msg, 0);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut tos = 0u8;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_TOS {
                tos = *libc::CMSG_DATA(c);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        let ip = std::net::Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr));
        Ok((
            n as usize,
            SocketAddr::from((ip, u16::from_be(from.sin_port))),
            tos,
        ))
    }
}

/// Starts the relay in gw-b's namespace: gw-a ↔ relay ↔ gw-b's daemon.
fn start_relay(tl: &TunnelLab) -> Relay {
    let daemon = SocketAddr::from((topo::GW_B_WAN_V4, PORT));
    let (facing_a, facing_b) = tl
        .lab()
        .run_in(
            &tl.dc.gw_b,
            || -> std::io::Result<(UdpSocket, UdpSocket)> {
                let a = UdpSocket::bind((topo::GW_B_WAN_V4, RELAY_PORT))?;
                set_int(a.as_raw_fd(), libc::IPPROTO_IP, libc::IP_RECVTOS, 1)?;
                let b = UdpSocket::bind((topo::GW_B_WAN_V4, 0))?;
                b.connect(daemon)?;
                for s in [&a, &b] {
                    s.set_nonblocking(true)?;
                }
                Ok((a, b))
            },
        )
        .expect("enter gw-b")
        .expect("relay sockets");
    let mode = Arc::new(AtomicU8::new(PASS));
    let ect_seen = Arc::new(AtomicU64::new(0));
    let frames = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (m, e, f, st) = (
        Arc::clone(&mode),
        Arc::clone(&ect_seen),
        Arc::clone(&frames),
        Arc::clone(&stop),
    );
    let thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        let mut gw_a: Option<SocketAddr> = None;
        let mut tos_now = u8::MAX;
        while !st.load(Ordering::Relaxed) {
            let mut fds = [&facing_a, &facing_b].map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: two valid pollfd structs.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, 20) };
            // gw-a → gw-b: re-marked as the mode says.
            while let Ok((n, from, tos)) = recv_tos(&facing_a, &mut buf) {
                gw_a = Some(from);
                let ecn = tos & 0b11;
                if ecn != 0 {
                    e.fetch_add(1, Ordering::Relaxed);
                }
                let out = match m.load(Ordering::Relaxed) {
                    MARK_ALL => CE,
                    MARK_ECT if ecn != 0 => CE,
                    _ => ecn,
                };
                if out != tos_now {
                    // UDP sockets keep the ECN bits of IP_TOS.
                    let _ = set_int(
                        facing_b.as_raw_fd(),
                        libc::IPPROTO_IP,
                        libc::IP_TOS,
                        i32::from(out),
                    );
                    tos_now = out;
                }
                let _ = facing_b.send(&buf[..n]);
                f.fetch_add(1, Ordering::Relaxed);
            }
            // gw-b → gw-a: unchanged.
            while let Ok(n) = facing_b.recv(&mut buf) {
                if let Some(to) = gw_a {
                    let _ = facing_a.send_to(&buf[..n], to);
                }
            }
        }
    });
    Relay {
        mode,
        ect_seen,
        frames,
        stop,
        thread: Some(thread),
    }
}

/// A pair whose gw-a sends to the relay; `ecn` is both sides' knob.
fn pair(tag: &str, ecn: bool) -> TunnelLab {
    let tl = TunnelLab::start(tag, false, |side, cfg: &mut Value| {
        cfg["dataplane"] = json!({ "ecn": ecn });
        if side == Side::A {
            cfg["peers"][0]["endpoint"] =
                json!(SocketAddr::from((topo::GW_B_WAN_V4, RELAY_PORT)).to_string());
        } else if let Some(peer) = cfg["peers"][0].as_object_mut() {
            // gw-b only answers: it learns gw-a's endpoint (the relay) from
            // gw-a's frames, so nothing bypasses the relay.
            peer.remove("endpoint");
        }
    })
    .expect("tunnel pair");
    for ns in [&tl.dc.host_a, &tl.dc.host_b] {
        tl.lab()
            .sysctl(ns, "net.ipv4.tcp_ecn", "1")
            .expect("tcp_ecn=1 on the hosts");
    }
    tl
}

/// A TCP transfer host-a → host-b whose bytes must arrive intact.
fn transfer_a_to_b(tl: &TunnelLab, bytes: u64, seed: u64) {
    let t = tcp_transfer(
        tl.lab(),
        &tl.dc.host_a,
        &tl.dc.host_b,
        topo::HOST_B_V4.into(),
        bytes,
        seed,
    )
    .expect("transfer host-a → host-b");
    assert!(t.intact(), "transfer damaged: {t:?}");
}

fn io_counter(tl: &TunnelLab, side: Side, name: &str) -> u64 {
    tl.status(side)
        .ok()
        .and_then(|s| s["io"][name].as_u64())
        .unwrap_or(0)
}

/// Waits for a counter of the 50 ms status snapshot to pass `above`.
fn wait_io_above(tl: &TunnelLab, side: Side, name: &str, above: u64) -> u64 {
    wait_for(Duration::from_secs(3), name, || {
        let v = io_counter(tl, side, name);
        Ok((v > above).then_some(v))
    })
    .unwrap_or_else(|_| io_counter(tl, side, name))
}

#[test]
fn ce_marks_cross_the_tunnel_and_not_ect_packets_under_ce_are_dropped() {
    if !require_root() {
        return;
    }
    let tl = pair("e2e-ecn", true);
    let relay = start_relay(&tl);
    let host_b = topo::HOST_B_V4.to_string();
    wait_ping(tl.lab(), &tl.dc.host_a, &host_b, Duration::from_secs(15)).expect("tunnel up");

    // An ECN TCP transfer through a path that marks every ECN-capable frame.
    relay.mode.store(MARK_ECT, Ordering::Relaxed);
    transfer_a_to_b(&tl, 16 * MIB, 11);
    let ect = relay.ect_seen.load(Ordering::Relaxed);
    let frames = relay.frames.load(Ordering::Relaxed);
    eprintln!("relay: {frames} frames from gw-a, {ect} ECN-capable");
    // Data segments of an ECN connection are ECT(0); gw-a copied that to
    // the outer header (most of 16 MiB's ~11,800 segments).
    assert!(ect > 5_000, "gw-a did not copy ECT outward: {ect}/{frames}");
    let marked = wait_io_above(&tl, Side::B, "ecn_path_ce", 5_000);
    assert!(marked > 5_000, "CE did not reach inner packets: {marked}");
    assert_eq!(io_counter(&tl, Side::B, "ecn_not_ect_drops"), 0);

    // Ping is not ECN-capable: under CE it is dropped and counted.
    relay.mode.store(MARK_ALL, Ordering::Relaxed);
    let answered = (0..3)
        .filter(|_| ping_once(tl.lab(), &tl.dc.host_a, &host_b))
        .count();
    assert_eq!(answered, 0, "a Not-ECT packet under CE was delivered");
    let dropped = wait_io_above(&tl, Side::B, "ecn_not_ect_drops", 0);
    assert!(dropped >= 3, "drops not counted: {dropped}");

    // The tunnel itself is fine: unmarked, pings cross again.
    relay.mode.store(PASS, Ordering::Relaxed);
    wait_ping(tl.lab(), &tl.dc.host_a, &host_b, Duration::from_secs(5)).expect("ping after");
    let c = tl.counters(Side::B).expect("counters");
    for bad in ["drop_bad_tag", "drop_malformed", "drop_replay"] {
        assert_eq!(c.get(bad).copied(), Some(0), "{bad} on gw-b: {c:?}");
    }
}

#[test]
fn with_ecn_off_outer_headers_are_not_ect_and_ce_is_ignored() {
    if !require_root() {
        return;
    }
    let tl = pair("e2e-ecnoff", false);
    let relay = start_relay(&tl);
    let host_b = topo::HOST_B_V4.to_string();
    wait_ping(tl.lab(), &tl.dc.host_a, &host_b, Duration::from_secs(15)).expect("tunnel up");
    transfer_a_to_b(&tl, 4 * MIB, 12);
    assert_eq!(
        relay.ect_seen.load(Ordering::Relaxed),
        0,
        "ecn: false still sent ECN-capable outer headers"
    );
    relay.mode.store(MARK_ALL, Ordering::Relaxed);
    assert!(
        (0..3).any(|_| ping_once(tl.lab(), &tl.dc.host_a, &host_b)),
        "ecn: false must ignore CE on the outer header"
    );
    assert_eq!(io_counter(&tl, Side::B, "ecn_not_ect_drops"), 0);
    assert_eq!(io_counter(&tl, Side::B, "ecn_path_ce"), 0);
}
