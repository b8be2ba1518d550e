//! What the path does to the tunnel, on real packets in namespaces:
//! - an underlay narrower than the tunnel MTU (1450-byte WAN links under
//!   a 1420-byte tunnel): inner packets that no longer fit are answered
//!   with ICMP "fragmentation needed" carrying the MTU that fits, the
//!   sender adapts, and a TCP transfer completes (instead of every
//!   full-size packet vanishing);
//! - TCP with a small MSS (200 bytes) through an offloading TUN device:
//!   super-packets of hundreds of segments reach the daemon split to what
//!   it can take, none is lost (`io.tun_read_errors` stays 0).
//!
//! Needs root (skips outside CI without it).

use e2e::{require_root, tcp_transfer, wait_ping, Side, TunnelLab};
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;
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
