//! The fq_codel queue under overload: an unresponsive UDP
//! flood into the tunnel is dropped from its own flow's queue and counted,
//! the queue never holds more than `queue_limit`, a ping (a sparse flow)
//! still crosses during the flood, and afterwards TCP carries data intact.
//! Needs root (skips outside CI without it).

use e2e::{require_root, tcp_transfer, wait_ping, Side, TunnelLab};
use serde_json::json;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tunbench::topo;

const MIB: u64 = 1 << 20;
const LIMIT: u64 = 256;

#[test]
fn a_udp_flood_is_dropped_from_its_own_queue_and_pings_still_cross() {
    if !require_root() {
        return;
    }
    let tl = TunnelLab::start("e2e-queue", false, |_, cfg| {
        cfg["dataplane"] = json!({"queue": "fq_codel", "queue_limit": LIMIT});
    })
    .expect("tunnel pair");
    let host_b = topo::HOST_B_V4.to_string();
    wait_ping(tl.lab(), &tl.dc.host_a, &host_b, Duration::from_secs(15)).expect("tunnel up");

    let stop = AtomicBool::new(false);
    let (sent, answered) = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            tl.lab()
                .run_in(&tl.dc.host_a, || -> std::io::Result<u64> {
                    // 1200-byte datagrams (unfragmented at MTU 1420) as fast as one thread can send
                    // them: far more than one tunnel core seals. The TUN
                    // device gives the sender no back-pressure.
                    let sock = UdpSocket::bind("0.0.0.0:0")?;
                    let to = SocketAddr::from((topo::HOST_B_V4, 9));
                    let buf = [0x5au8; 1200];
                    let mut n = 0u64;
                    let end = Instant::now() + Duration::from_secs(6);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                        if sock.send_to(&buf, to).is_ok() {
                            n += 1;
                        }
                    }
                    Ok(n)
                })
                .expect("enter host-a")
                .expect("flood socket")
        });
        std::thread::sleep(Duration::from_millis(500));
        let answered = (0..10)
            .filter(|_| e2e::ping_once(tl.lab(), &tl.dc.host_a, &host_b))
            .count();
        stop.store(true, Ordering::Relaxed);
        (flood.join().expect("flood thread"), answered)
    });
    let st = tl.status(Side::A).expect("gw-a still answers status");
    eprintln!(
        "flood: {sent} datagrams; pings answered {answered}/10; gw-a io {}",
        st["io"]
    );
    let io = &st["io"];
    let dropped = io["queue_overflow_drops"].as_u64().unwrap_or(0)
        + io["queue_codel_drops"].as_u64().unwrap_or(0);
    assert!(dropped > 0, "the flood was not dropped by the queue: {io}");
    assert!(
        io["queue_packets"].as_u64().unwrap_or(u64::MAX) <= LIMIT,
        "queue over its limit: {io}"
    );
    // The ping is a sparse flow: served ahead of the flood's backlog. (Not
    // all: gw-b, the WAN and the kernels are loaded too.)
    assert!(
        answered >= 3,
        "only {answered}/10 pings crossed during the flood"
    );
    // After the flood the tunnel carries data intact.
    wait_ping(tl.lab(), &tl.dc.host_a, &host_b, Duration::from_secs(10)).expect("ping after");
    let t = tcp_transfer(
        tl.lab(),
        &tl.dc.host_a,
        &tl.dc.host_b,
        topo::HOST_B_V4.into(),
        32 * MIB,
        7,
    )
    .expect("transfer after the flood");
    assert!(t.intact(), "transfer after the flood damaged: {t:?}");
    let c = tl.counters(Side::B).expect("counters");
    for bad in ["drop_bad_tag", "drop_malformed", "drop_replay"] {
        assert_eq!(c.get(bad).copied(), Some(0), "{bad} on gw-b: {c:?}");
    }
}
