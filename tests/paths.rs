//! What the path does to the tunnel, on real packets in namespaces:
//! - an underlay narrower than the tunnel MTU (1450-byte WAN links under
//!   a 1420-byte tunnel): inner packets that no longer fit are answered
//!   with ICMP "fragmentation needed" carrying the MTU that fits, the
//!   sender adapts, and a TCP transfer completes (instead of every
//!   full-size packet vanishing);
//! - TCP with a small MSS (200 bytes) through an offloading TUN device:
//!   super-packets of hundreds of segments reach the daemon split to what
//!   it can take, none is lost (`io.tun_read_errors` stays 0);
//! - a NAT that rebinds gw-a's source port (`flows: 1`): gw-b follows the
//!   first authenticated frame from the new port, so return traffic
//!   resumes at once.
//!
//! Needs root (skips outside CI without it).

use e2e::{require_root, tcp_transfer, wait_ping, Side, TunnelLab};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tunbench::lab::systems::tunneld::PORT;
use tunbench::topo;

const MIB: u64 = 1 << 20;

fn pair(tag: &str) -> TunnelLab {
    let tl = TunnelLab::start(tag, false, |_, _| {}).expect("tunnel pair");
    up(&tl);
    tl
}

fn up(tl: &TunnelLab) {
    if let Err(e) = wait_ping(
        tl.lab(),
        &tl.dc.host_a,
        &topo::HOST_B_V4.to_string(),
        Duration::from_secs(20),
    ) {
        panic!("tunnel not up: {e:#}\n{}", tl.logs());
    }
}

fn io_counter(tl: &TunnelLab, side: Side, name: &str) -> u64 {
    let s: Value = tl.status(side).expect("status");
    s["io"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no io.{name}: {s}"))
}

#[test]
fn a_narrow_underlay_is_answered_with_icmp_too_big() {
    if !require_root() {
        return;
    }
    let tl = pair("path-mtu");
    for ns in [&tl.dc.gw_a, &tl.dc.gw_b] {
        tl.lab()
            .ip(ns, &["link", "set", "dev", topo::WAN_IF, "mtu", "1450"])
            .expect("narrow the WAN link");
    }
    // The daemons re-read the path MTU every second.
    std::thread::sleep(Duration::from_millis(2_500));
    // 1392 + 28 = 1420 bytes inner, 1480 outer: does not fit 1450. The
    // first ping draws the ICMP, which names the MTU that fits: 1450 -
    // 28 (outer IPv4/UDP) - 32 (our frame) = 1390.
    let out = tl
        .lab()
        .exec(
            &tl.dc.host_a,
            "ping",
            &[
                "-c",
                "2",
                "-W",
                "1",
                "-M",
                "do",
                "-s",
                "1392",
                "-n",
                &topo::HOST_B_V4.to_string(),
            ],
        )
        .expect("ping");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        text.contains("mtu = 1390") || text.contains("mtu=1390"),
        "ICMP fragmentation needed with the path's MTU: {text}"
    );
    // A ping that fits crosses.
    let ok = tl
        .lab()
        .exec(
            &tl.dc.host_a,
            "ping",
            &[
                "-c",
                "1",
                "-W",
                "2",
                "-M",
                "do",
                "-s",
                "1362",
                "-n",
                &topo::HOST_B_V4.to_string(),
            ],
        )
        .expect("ping");
    assert!(ok.status.success(), "1390-byte packets cross: {ok:?}");
    // Bulk TCP (MSS clamped to the tunnel's 1380 at first) adapts and
    // completes.
    let t = tcp_transfer(
        tl.lab(),
        &tl.dc.host_a,
        &tl.dc.host_b,
        IpAddr::V4(topo::HOST_B_V4),
        16 * MIB,
        14,
    )
    .expect("transfer over the narrow path");
    assert!(t.intact(), "{t:?}");
    let too_big = io_counter(&tl, Side::A, "path_too_big");
    eprintln!(
        "16 MiB over a 1450-byte underlay in {:?}; gw-a io.path_too_big {too_big}",
        t.elapsed
    );
    assert!(too_big >= 1, "counted");
}

#[test]
fn small_mss_super_packets_are_not_lost() {
    if !require_root() {
        return;
    }
    let tl = pair("path-mss");
    // host-b advertises MSS 200 to host-a: host-a's TCP sends 200-byte
    // segments, in super-packets of up to 64 KiB (320 segments).
    let gw = topo::GW_B_LAN_V4.to_string();
    tl.lab()
        .ip(
            &tl.dc.host_b,
            &[
                "route",
                "replace",
                topo::LAN_A_V4,
                "via",
                &gw,
                "advmss",
                "200",
            ],
        )
        .expect("advmss");
    let errors0 = io_counter(&tl, Side::A, "tun_read_errors");
    let t = tcp_transfer(
        tl.lab(),
        &tl.dc.host_a,
        &tl.dc.host_b,
        IpAddr::V4(topo::HOST_B_V4),
        4 * MIB,
        15,
    )
    .expect("transfer at MSS 200");
    assert!(t.intact(), "{t:?}");
    let errors = io_counter(&tl, Side::A, "tun_read_errors") - errors0;
    let reads = io_counter(&tl, Side::A, "tun_reads");
    let packets = io_counter(&tl, Side::A, "tun_read_packets");
    let retrans = tl
        .lab()
        .exec(&tl.dc.host_a, "nstat", &["-az", "TcpRetransSegs"])
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    eprintln!(
        "4 MiB at MSS 200 in {:?}: gw-a tun_read_errors {errors}, {packets} packets in {reads} \
         reads; host-a {retrans}",
        t.elapsed
    );
    assert_eq!(errors, 0, "no super-packet lost");
}

/// A NAT in gw-b's namespace: gw-a sends to it, it forwards to gw-b's
/// daemon from one of its own ports and back; [`Nat::rebind`] moves it to
/// another port, as a NAT whose mapping expired does.
struct Nat {
    rebind: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Nat {
    fn start(tl: &TunnelLab) -> Nat {
        let daemon = SocketAddr::from((topo::GW_B_WAN_V4, PORT));
        let (facing_a, first, second) = tl
            .lab()
            .run_in(&tl.dc.gw_b, move || -> std::io::Result<_> {
                let a = UdpSocket::bind((topo::GW_B_WAN_V4, NAT_PORT))?;
                let b1 = UdpSocket::bind((topo::GW_B_WAN_V4, 0))?;
                let b2 = UdpSocket::bind((topo::GW_B_WAN_V4, 0))?;
                for s in [&a, &b1, &b2] {
                    s.set_read_timeout(Some(Duration::from_millis(5)))?;
                }
                b1.connect(daemon)?;
                b2.connect(daemon)?;
                Ok((a, b1, b2))
            })
            .expect("enter gw-b")
            .expect("NAT sockets");
        let rebind = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (rb, st) = (Arc::clone(&rebind), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            let mut gw_a: Option<SocketAddr> = None;
            let mut facing_b = Some(first);
            let mut spare = Some(second);
            while !st.load(Ordering::Relaxed) {
                if rb.load(Ordering::Relaxed) && spare.is_some() {
                    // The old mapping is gone: its port no longer answers.
                    facing_b = spare.take();
                }
                let Some(b) = facing_b.as_ref() else { break };
                while let Ok((n, from)) = facing_a.recv_from(&mut buf) {
                    gw_a = Some(from);
                    let _ = b.send(&buf[..n]);
                }
                while let Ok(n) = b.recv(&mut buf) {
                    if let Some(to) = gw_a {
                        let _ = facing_a.send_to(&buf[..n], to);
                    }
                }
            }
        });
        Nat {
            rebind,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const NAT_PORT: u16 = 51998;

#[test]
fn a_nat_rebinding_is_followed_at_once_with_one_flow() {
    if !require_root() {
        return;
    }
    // gw-a reaches gw-b through the NAT; gw-b learns gw-a's address from
    // its frames. No keepalives, so only data can tell gw-b of the move.
    let tl = TunnelLab::start("path-nat", false, |side, cfg: &mut Value| {
        let peer = &mut cfg["peers"][0];
        if let Some(p) = peer.as_object_mut() {
            p.remove("keepalive");
            if side == Side::B {
                p.remove("endpoint");
            }
        }
        if side == Side::A {
            peer["endpoint"] = json!(SocketAddr::from((topo::GW_B_WAN_V4, NAT_PORT)).to_string());
        }
    })
    .expect("tunnel pair");
    let nat = Nat::start(&tl);
    up(&tl);
    let before = tl.status(Side::B).expect("status")["peers"][0]["endpoint"].clone();
    nat.rebind.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(50));
    let back = wait_ping(
        tl.lab(),
        &tl.dc.host_a,
        &topo::HOST_B_V4.to_string(),
        Duration::from_secs(20),
    )
    .expect("pings cross again after the rebinding");
    // The status snapshot trails by a timer tick or two.
    std::thread::sleep(Duration::from_millis(300));
    let after = tl.status(Side::B).expect("status")["peers"][0]["endpoint"].clone();
    eprintln!("NAT rebinding {before} -> {after}: pings back after {back:?}");
    assert_ne!(before, after, "gw-b follows the new port");
    assert!(
        back < Duration::from_secs(2),
        "return traffic resumed after {back:?} (a keepalive or dead-peer timer would take 10-15 s)"
    );
}
