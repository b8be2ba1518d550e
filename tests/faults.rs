//! Fault matrix: a tunneld pair (UDP transport) across the lab's userspace
//! WAN emulator (`tunbench wan-emu`) carries a TCP transfer with a matching
//! SHA-256 through 5% loss, reordering, a 5 s link outage and a path-MTU
//! black hole that appears mid-transfer; each case prints its throughput,
//! the longest stall (no inner bytes arriving at gw-b) and its recovery
//! time: for the outage, from the link coming back to the first inner
//! bytes after it; for the black hole, from its appearance to tunneld
//! finding it and to the transfer moving again.
//!
//! Size: `E2E_FAULT_MIB` MiB per case (default 16, what CI runs);
//! `tests/bench/faults.sh` runs the 100 MiB version. Needs root.

use e2e::{bin, require_root, tcp_transfer, wait_ping, Side, TunnelLab};
use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tunbench::topo;

const MIB: u64 = 1 << 20;
/// A case that has not finished by then is a failure (the socket is cut so
/// the transfer thread returns).
const CASE_DEADLINE: Duration = Duration::from_secs(150);
/// How often gw-b's inner byte counter is read (resolution of the stall and
/// recovery figures).
const POLL: Duration = Duration::from_millis(100);

fn size() -> u64 {
    std::env::var("E2E_FAULT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
        * MIB
}

/// Replaces the wan bridge with `tunbench wan-emu` and `args`; its PID.
fn emulate(tl: &TunnelLab, args: &[&str]) -> u32 {
    let dc = &tl.dc;
    let wan = dc.wan.clone().expect("wan namespace");
    let (a, b, br) = dc.wan_ifaces().expect("wan interfaces");
    for port in [&a, &b] {
        dc.lab
            .ip(&wan, &["link", "set", port, "nomaster"])
            .expect("nomaster");
    }
    dc.lab
        .ip(&wan, &["link", "set", &br, "down"])
        .expect("bridge down");
    let mut cmd = Command::new(bin("tunbench"));
    cmd.args(["wan-emu", "--if-a", &a, "--if-b", &b]).args(args);
    let pid = dc.lab.spawn(&wan, cmd).expect("spawn wan-emu");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dc.lab.log(pid).contains("wan-emu ready") {
        assert!(
            Instant::now() < deadline,
            "wan-emu not ready: {}",
            dc.lab.log(pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    pid
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("(never)".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a PID this test spawned and still owns.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(r, 0, "kill {pid}: {}", std::io::Error::last_os_error());
}

/// What happens to the link once the transfer is an eighth of the way in.
#[derive(Debug, Clone, Copy)]
enum Event {
    None,
    /// The link goes down for this long (SIGUSR1, then SIGUSR2).
    Outage(Duration),
    /// The emulator's `--mtu` black hole comes on (SIGHUP).
    BlackHole,
}

/// The first peer's entry in `side`'s status.
fn peer_status(tl: &TunnelLab, side: Side) -> serde_json::Value {
    tl.status(side)
        .ok()
        .and_then(|s| s["peers"].get(0).cloned())
        .unwrap_or_default()
}

/// What one case measured.
#[derive(Debug)]
struct Outcome {
    /// Frames the emulator saw gw-a → gw-b, and how many it dropped.
    emu_frames: u64,
    emu_dropped: u64,
    elapsed: Duration,
    longest_stall: Duration,
    recovery: Option<Duration>,
    /// Black hole: from its appearance to gw-a's status showing it found.
    detected: Option<Duration>,
}

/// Runs one fault case: emulator `args`; `event` happens once the transfer
/// is under way. `per_packet`: tunneld without
/// offload, so every outer packet is its own frame (the emulator decides a
/// GSO super-frame as a whole, which turns random loss into bursts of up to
/// 64 packets).
fn case(tag: &str, args: &[&str], event: Event, per_packet: bool) -> Outcome {
    let tl = TunnelLab::start(tag, true, |_, cfg| {
        if per_packet {
            cfg["dataplane"] = serde_json::json!({ "offload": false });
        }
    })
    .expect("tunnel pair");
    let emu = emulate(&tl, args);
    wait_ping(
        tl.lab(),
        &tl.dc.host_a,
        &topo::HOST_B_V4.to_string(),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{tag}: tunnel never came up: {e:#}\n{}", tl.logs()));
    if let Event::BlackHole = event {
        // Both sides validated the whole path first (1420 + 32 + 28).
        e2e::wait_for(Duration::from_secs(10), "path MTU 1480 validated", || {
            Ok([Side::A, Side::B]
                .iter()
                .all(|&s| {
                    let p = peer_status(&tl, s);
                    p["pmtud"] == "complete" && p["path_mtu"] == 1480
                })
                .then_some(()))
        })
        .unwrap_or_else(|e| {
            panic!(
                "{tag}: {e:#}: {:?}\n{}",
                peer_status(&tl, Side::A),
                tl.logs()
            )
        });
    }
    let bytes = size();
    let done = AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        let t = s.spawn(|| {
            let r = tcp_transfer(
                tl.lab(),
                &tl.dc.host_a,
                &tl.dc.host_b,
                IpAddr::V4(topo::HOST_B_V4),
                bytes,
                7,
            );
            done.store(true, Ordering::Relaxed);
            r
        });
        let start = Instant::now();
        let rx = || tl.counter(Side::B, "rx_bytes").unwrap_or(0);
        let mut last = rx();
        let mut last_change = Instant::now();
        let mut longest = Duration::ZERO;
        let mut outage_at: Option<(Instant, u64)> = None;
        let mut up_at: Option<(Instant, u64)> = None;
        let mut recovery = None;
        let mut hole_at: Option<(Instant, u64)> = None;
        let mut detected = None;
        let base = last;
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(POLL);
            let now = Instant::now();
            let v = rx();
            if v != last {
                longest = longest.max(now - last_change);
                last = v;
                last_change = now;
            }
            // An eighth of the way in, the event.
            if outage_at.is_none() && v - base > bytes / 8 {
                match event {
                    Event::None => {}
                    Event::Outage(d) => {
                        signal(emu, libc::SIGUSR1);
                        outage_at = Some((now, v));
                        std::thread::sleep(d);
                        signal(emu, libc::SIGUSR2);
                        up_at = Some((Instant::now(), rx()));
                        last_change = now;
                        last = rx();
                    }
                    Event::BlackHole => {
                        signal(emu, libc::SIGHUP);
                        outage_at = Some((now, v));
                        hole_at = Some((now, v));
                    }
                }
            }
            if let (Some((t_up, v_up)), None) = (up_at, recovery) {
                if v > v_up {
                    recovery = Some(now - t_up);
                }
            }
            if let Some((t_hole, v_hole)) = hole_at {
                if detected.is_none() && peer_status(&tl, Side::A)["pmtu_black_holes"] == 1 {
                    detected = Some(now - t_hole);
                }
                // Moving again: a MiB more than in flight when it began.
                if recovery.is_none() && v > v_hole + MIB {
                    recovery = Some(now - t_hole);
                }
            }
            if start.elapsed() > CASE_DEADLINE {
                // Unblock the sender: the case fails below.
                let _ = tl.lab().exec(
                    &tl.dc.host_a,
                    "ss",
                    &["-K", "-t", "dst", &topo::HOST_B_V4.to_string()],
                );
                break;
            }
        }
        let t = t.join().expect("transfer thread");
        let t = t.unwrap_or_else(|e| {
            panic!("{tag}: transfer failed after {:?}: {e:#}", start.elapsed())
        });
        assert_eq!(t.received, bytes, "{tag}: bytes received");
        assert_eq!(
            t.sent_digest, t.received_digest,
            "{tag}: SHA-256 of the stream"
        );
        Outcome {
            emu_frames: 0,
            emu_dropped: 0,
            elapsed: t.elapsed,
            longest_stall: longest,
            recovery,
            detected,
        }
    });
    let _ = tl.lab().stop(emu);
    let log = tl.lab().log(emu);
    let stats: serde_json::Value = log
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("{tag}: no wan-emu counters in its log: {log}"));
    let d = &stats["a_to_b"];
    let n = |k: &str| d[k].as_u64().unwrap_or(0);
    let out = Outcome {
        emu_frames: n("frames"),
        emu_dropped: n("lost") + n("outage_drops") + n("mtu_drops"),
        ..out
    };
    let recovery = match (event, out.recovery) {
        (Event::Outage(_), Some(r)) => {
            format!(", recovery after the outage {:.2} s", r.as_secs_f64())
        }
        (Event::BlackHole, r) => format!(
            ", black hole found by gw-a after {}, transfer moving again after {}; gw-a: {}",
            secs(out.detected),
            secs(r),
            peer_status(&tl, Side::A)
        ),
        _ => String::new(),
    };
    if std::env::var_os("E2E_FAULT_LOGS").is_some() {
        eprintln!("{}", tl.logs());
    }
    eprintln!(
        "fault {tag}: {} MiB in {:.1} s ({:.0} Mbit/s), longest stall {:.1} s{recovery}; wan-emu a->b: {}",
        bytes / MIB,
        out.elapsed.as_secs_f64(),
        bytes as f64 * 8.0 / out.elapsed.as_secs_f64() / 1e6,
        out.longest_stall.as_secs_f64(),
        d
    );
    out
}

#[test]
fn five_percent_loss() {
    if !require_root() {
        return;
    }
    // 5% of outer packets, each decided on its own.
    let o = case(
        "ft-loss",
        &["--loss", "5", "--delay", "1ms"],
        Event::None,
        true,
    );
    let rate = o.emu_dropped as f64 / o.emu_frames.max(1) as f64;
    assert!((0.035..0.065).contains(&rate), "loss applied: {o:?}");
}

#[test]
fn reordering() {
    if !require_root() {
        return;
    }
    // 10% of packets skip a 2 ms delay: they overtake up to 2 ms of traffic.
    case(
        "ft-reorder",
        &["--delay", "2ms", "--reorder", "10"],
        Event::None,
        true,
    );
}

#[test]
fn five_second_link_outage() {
    if !require_root() {
        return;
    }
    // 50 Mbit/s, so the outage comes mid-transfer.
    let o = case(
        "ft-outage",
        &["--delay", "1ms", "--rate", "50M"],
        Event::Outage(Duration::from_secs(5)),
        false,
    );
    let r = o.recovery.expect("traffic resumed after the outage");
    // The inner TCP's retransmission timer backs off during the outage
    // (about 6.2 s for its fifth try): recovery within a few seconds of the
    // link returning, never a dead tunnel.
    assert!(r < Duration::from_secs(10), "recovery took {r:?}");
    assert!(
        o.longest_stall >= Duration::from_secs(4),
        "the outage happened: {o:?}"
    );
}

#[test]
fn mtu_black_hole() {
    if !require_root() {
        return;
    }
    // Tunnel MTU 1420: full-size outer packets are 1480 bytes, and both
    // gateways validated that before the transfer. An eighth of the way in,
    // the path starts dropping anything above 1400 bytes, silently (no
    // ICMP). gw-a notices the silence, confirms the black hole with probes
    // (large ones lost, small ones answered), searches the path down to
    // 1396 and answers the inner sender's 1420-byte packets with ICMP
    // "fragmentation needed": its TCP resends smaller segments. 50 Mbit/s,
    // so the black hole comes mid-transfer.
    let o = case(
        "ft-mtu",
        &[
            "--mtu",
            "1400",
            "--mtu-after-sighup",
            "--delay",
            "1ms",
            "--rate",
            "50M",
        ],
        Event::BlackHole,
        false,
    );
    let detected = o.detected.expect("gw-a found the black hole");
    let recovery = o.recovery.expect("the transfer moved again");
    // About 1 s of silence, 5 probe rounds, then the inner TCP's next
    // retransmission; generous margins for a loaded box.
    assert!(detected < Duration::from_secs(10), "{o:?}");
    assert!(recovery < Duration::from_secs(20), "{o:?}");
    assert!(o.emu_dropped > 0, "the black hole dropped packets: {o:?}");
}
