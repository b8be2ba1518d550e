//! Correctness of the data path under every knob combination a sweep can
//! pick: offload on/off × batch 1 and 128 × workers 1 and 2 × queue
//! fq_codel and fifo, and workers 4 (oversubscribed on a 2-core machine)
//! with offload on and batch 128 under both queues.
//! For each: a 200 MiB TCP transfer over IPv4 and over IPv6 arrives with a
//! matching SHA-256, and UDP datagrams of odd sizes cross intact: 1 byte and
//! exactly the tunnel MTU; one byte more (with DF / IPv6) is refused with an
//! ICMP "fragmentation needed" / "packet too big" that the sender's kernel
//! turns into EMSGSIZE. And `dataplane.flows: 4`: parallel TCP transfers
//! arrive intact while the underlay carries more than one outer UDP source
//! port, and the peers' endpoints stay on their listen ports. Needs root
//! (skips outside CI without it).

use e2e::capture::{udp_bytes_by_source_port, Capture};
use e2e::{require_root, tcp_transfer, wait_ping, Side, TunnelLab};
use serde_json::json;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use tunbench::topo;

const MIB: u64 = 1 << 20;
/// The tunnel MTU of the harness configs.
const MTU: usize = 1420;

/// Sets "don't fragment" (IPv4) / no local fragmentation (IPv6) on `sock`.
fn set_df(sock: &UdpSocket, v6: bool) -> io::Result<()> {
    let (level, opt, val) = if v6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    };
    // SAFETY: valid socket fd, pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            &val as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Datagrams of odd sizes host-a → host-b through the tunnel.
fn odd_udp_sizes(tl: &TunnelLab, dst: IpAddr) {
    let v6 = dst.is_ipv6();
    let headers = if v6 { 48 } else { 28 };
    let lab = tl.lab();
    let rx = lab
        .run_in(&tl.dc.host_b, move || {
            UdpSocket::bind(SocketAddr::new(dst, 0))
        })
        .expect("run_in host-b")
        .expect("bind receiver");
    rx.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let to = rx.local_addr().expect("addr");
    let exact = MTU - headers;
    let tx = lab
        .run_in(&tl.dc.host_a, move || {
            let any: IpAddr = if v6 {
                IpAddr::from([0u16; 8])
            } else {
                IpAddr::from([0u8; 4])
            };
            UdpSocket::bind(SocketAddr::new(any, 0))
        })
        .expect("run_in host-a")
        .expect("bind sender");
    set_df(&tx, v6).expect("DF");
    let mut buf = vec![0u8; 65536];
    for size in [1usize, exact] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        // A datagram may be lost while the path warms up; retry a few times.
        let mut delivered = false;
        for _ in 0..5 {
            tx.send_to(&payload, to).expect("send odd size");
            if let Ok((n, _)) = rx.recv_from(&mut buf) {
                assert_eq!(&buf[..n], &payload[..], "{size}-byte datagram to {dst}");
                delivered = true;
                break;
            }
        }
        assert!(delivered, "{size}-byte datagram to {dst} never arrived");
    }
    // MTU + 1: gw-a's kernel answers with ICMP too big; the sender learns
    // the path MTU and refuses the next such send with EMSGSIZE.
    let too_big = vec![0x5au8; exact + 1];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tx.send_to(&too_big, to) {
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => break,
            Ok(_) | Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            other => panic!(
                "MTU+1 datagram to {dst}: expected EMSGSIZE after ICMP too big, got {other:?}"
            ),
        }
    }
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    while let Ok((n, _)) = rx.recv_from(&mut buf) {
        assert!(
            n <= exact,
            "a {n}-byte datagram crossed a {MTU}-byte tunnel"
        );
    }
}

#[test]
fn every_knob_combination_carries_traffic_intact() {
    if !require_root() {
        return;
    }
    let combos = [true, false]
        .into_iter()
        .flat_map(|offload| {
            [1u64, 128].into_iter().flat_map(move |batch| {
                [1u64, 2].into_iter().flat_map(move |workers| {
                    ["fq_codel", "fifo"]
                        .into_iter()
                        .map(move |queue| (offload, batch, workers, queue))
                })
            })
        })
        .chain(["fq_codel", "fifo"].map(|queue| (true, 128, 4, queue)));
    for (offload, batch, workers, queue) in combos {
        let knobs = json!({"offload": offload, "batch": batch, "workers": workers, "queue": queue});
        let what = format!("offload {offload}, batch {batch}, workers {workers}, queue {queue}");
        let k = knobs.clone();
        let tl = TunnelLab::start("e2e-knobs", false, move |_, cfg| {
            cfg["dataplane"] = k.clone();
        })
        .unwrap_or_else(|e| panic!("{what}: start: {e:#}"));
        wait_ping(
            tl.lab(),
            &tl.dc.host_a,
            &topo::HOST_B_V4.to_string(),
            Duration::from_secs(15),
        )
        .unwrap_or_else(|e| panic!("{what}: tunnel up: {e:#}"));
        let status = tl.status(Side::A).expect("status");
        assert_eq!(status["dataplane"]["workers"], workers, "{status}");
        assert_eq!(status["dataplane"]["batch"], batch, "{status}");
        assert_eq!(status["dataplane"]["queue"], queue, "{status}");
        if !offload {
            assert_eq!(status["dataplane"]["tun_offload"], false, "{status}");
            assert_eq!(status["dataplane"]["udp_gso_segments"], 1, "{status}");
        }
        for (dst, seed) in [
            (IpAddr::from(topo::HOST_B_V4), 11u64),
            (IpAddr::from(topo::HOST_B_V6), 12),
        ] {
            let t = tcp_transfer(tl.lab(), &tl.dc.host_a, &tl.dc.host_b, dst, 200 * MIB, seed)
                .unwrap_or_else(|e| panic!("{what}: transfer to {dst}: {e:#}"));
            assert!(t.intact(), "{what}: transfer to {dst} damaged: {t:?}");
            eprintln!(
                "{what}: 200 MiB to {dst} in {:?} ({:.2} Gbit/s)",
                t.elapsed,
                (200 * MIB * 8) as f64 / t.elapsed.as_secs_f64() / 1e9
            );
            odd_udp_sizes(&tl, dst);
        }
        let c = tl.counters(Side::B).expect("counters");
        for bad in ["drop_bad_tag", "drop_malformed", "drop_spoofed_source"] {
            assert_eq!(c.get(bad).copied(), Some(0), "{what}: {bad} on gw-b: {c:?}");
        }
        // Lossless TCP through an otherwise idle tunnel never
        // overflows the queue.
        let st = tl.status(Side::A).expect("status");
        assert_eq!(st["io"]["queue_overflow_drops"], 0, "{what}: {st}");
    }
}

/// `streams` TCP transfers of `bytes` each from host-a to `dst` at once
/// (seeds `seed..`), every one intact.
fn parallel_transfers(tl: &TunnelLab, streams: u64, dst: IpAddr, bytes: u64, seed: u64) {
    let lab = tl.lab();
    let (host_a, host_b) = (tl.dc.host_a.as_str(), tl.dc.host_b.as_str());
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..streams)
            .map(|i| s.spawn(move || tcp_transfer(lab, host_a, host_b, dst, bytes, seed + i)))
            .collect();
        for (i, r) in runs.into_iter().enumerate() {
            let t = r
                .join()
                .expect("transfer thread")
                .unwrap_or_else(|e| panic!("transfer {i} to {dst}: {e:#}"));
            assert!(t.intact(), "transfer {i} to {dst} damaged: {t:?}");
        }
    });
}

/// `dataplane.flows: 4` on both gateways: four parallel TCP transfers each
/// way family arrive with matching SHA-256; the WAN saw tunnel frames from
/// more than one source port per gateway address (the flows), all to the
/// peer's listen port; each side still sends to the other's listen port
/// (no endpoint flapping); status reports the flows and their counts.
#[test]
fn flows_spread_outer_source_ports_and_keep_streams_intact() {
    if !require_root() {
        return;
    }
    // With fq_codel the outer flow comes from the queue's own (keyed) hash.
    for queue in ["fifo", "fq_codel"] {
        eprintln!("flows 4, queue {queue}");
        flows_case(queue);
    }
}

fn flows_case(queue: &str) {
    const STREAMS: u64 = 4;
    let tl = TunnelLab::start("e2e-flows", false, |_, cfg| {
        cfg["dataplane"] = json!({"flows": 4, "queue": queue});
    })
    .expect("start with flows 4");
    wait_ping(
        tl.lab(),
        &tl.dc.host_a,
        &topo::HOST_B_V4.to_string(),
        Duration::from_secs(15),
    )
    .expect("tunnel up");
    for side in [Side::A, Side::B] {
        let st = tl.status(side).expect("status");
        assert_eq!(st["dataplane"]["flows"], 4, "{st}");
    }
    let lab = tl.lab();
    let cap = Capture::start(lab, &tl.dc.gw_b, topo::WAN_IF).expect("capture wan");
    for (dst, seed) in [
        (IpAddr::from(topo::HOST_B_V4), 21u64),
        (IpAddr::from(topo::HOST_B_V6), 31),
    ] {
        parallel_transfers(&tl, STREAMS, dst, 24 * MIB, seed);
    }
    std::thread::sleep(Duration::from_millis(200));
    let frames = cap.stop().expect("capture").frames;
    let a_ports = udp_bytes_by_source_port(&frames, Side::A.listen().ip(), Side::B.listen());
    let b_ports = udp_bytes_by_source_port(&frames, Side::B.listen().ip(), Side::A.listen());
    eprintln!("gw-a → gw-b bytes by source port: {a_ports:?}");
    eprintln!("gw-b → gw-a bytes by source port: {b_ports:?}");
    for (what, ports, listen) in [
        ("gw-a", &a_ports, Side::A.listen()),
        ("gw-b", &b_ports, Side::B.listen()),
    ] {
        assert!(ports.len() <= 4, "{what} used more than 4 flows: {ports:?}");
        assert!(
            ports.keys().any(|p| *p != listen.port()),
            "{what}: every frame left from its listen port: {ports:?}"
        );
    }
    assert!(
        a_ports.len() + b_ports.len() > 2,
        "the underlay carried one outer flow per direction: {a_ports:?} {b_ports:?}"
    );
    for side in [Side::A, Side::B] {
        let st = tl.status(side).expect("status");
        assert_eq!(
            st["peers"][0]["endpoint"],
            side.peer().listen().to_string(),
            "{} keeps sending to its peer's listen port: {st}",
            side.letter()
        );
        let per_flow: Vec<u64> = st["transport"]["udp_flow_datagrams"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default();
        assert_eq!(per_flow.len(), 4, "{st}");
        assert!(per_flow.iter().filter(|n| **n > 0).count() >= 2, "{st}");
        let c = tl.counters(side).expect("counters");
        for bad in [
            "drop_bad_tag",
            "drop_malformed",
            "drop_spoofed_source",
            "drop_replay",
        ] {
            assert_eq!(
                c.get(bad).copied(),
                Some(0),
                "{bad} on {}: {c:?}",
                side.letter()
            );
        }
    }
    let logs = tl.logs();
    assert!(!logs.contains("moved to"), "endpoint flapped:\n{logs}");
}

/// `dataplane.cpus`: the data-path thread runs pinned to the CPU given and
/// status says so; a CPU this machine does not have stops the daemon with a
/// message naming the field, the CPU and the CPUs it may use.
#[test]
fn cpus_pin_the_data_path_and_a_missing_cpu_is_refused() {
    if !require_root() {
        return;
    }
    let tl = TunnelLab::start("e2e-cpus", false, |_, cfg| {
        cfg["dataplane"] = json!({"cpus": [0]});
    })
    .expect("start pinned to CPU 0");
    wait_ping(
        tl.lab(),
        &tl.dc.host_a,
        &topo::HOST_B_V4.to_string(),
        Duration::from_secs(15),
    )
    .expect("tunnel up");
    let st = tl.status(Side::A).expect("status");
    assert_eq!(st["dataplane"]["cpus"], json!([0]), "{st}");
    // With one worker the data path is the main thread.
    let pid = tl.a.pid.expect("a runs");
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/status")).expect("thread status");
    let allowed = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    assert_eq!(allowed, "0", "{status}");
    drop(tl);

    let started = TunnelLab::start("e2e-nocpu", false, |side, cfg| {
        if side == Side::A {
            cfg["dataplane"] = json!({"cpus": [1000]});
        }
    });
    let log = match started {
        Err(e) => format!("{e:#}"),
        Ok(tl) => {
            let pid = tl.a.pid.expect("a spawned");
            e2e::wait_for(Duration::from_secs(10), "gw-a to exit", || {
                Ok(tl.lab().try_wait(pid)?.map(|_| ()))
            })
            .expect("gw-a exits when it cannot pin");
            tl.lab().log(pid)
        }
    };
    assert!(
        log.contains("dataplane.cpus") && log.contains("CPU 1000"),
        "the refusal names the field and CPU: {log}"
    );
}

/// `workers: 4` on both gateways (oversubscribed on a 2-core machine),
/// `flows: 4` so each gateway's four sockets all receive, offload off so
/// every captured UDP datagram is one frame, and a rekey every 4 MiB: four
/// parallel TCP transfers per address family arrive intact across the
/// rekeys; on the underlay no (receiver index, counter) pair of gw-a's data
/// frames appears twice (the workers never share a nonce); and gw-a's last
/// frames, replayed to gw-b from gw-a's address on 16 source ports (which
/// SO_REUSEPORT spreads over gw-b's workers), are every one dropped as
/// replays.
#[test]
fn four_workers_rekey_share_no_nonce_and_drop_replays() {
    const STREAMS: u64 = 4;
    const REPLAYED: usize = 64;
    if !require_root() {
        return;
    }
    let tl = TunnelLab::start("e2e-workers", false, |_, cfg| {
        cfg["dataplane"] = json!({"workers": 4, "flows": 4, "offload": false});
        cfg["rekey"] = json!({"after_time": "120s", "after_bytes": "4M"});
    })
    .expect("start with 4 workers");
    tl.wait_session();
    for side in [Side::A, Side::B] {
        let st = tl.status(side).expect("status");
        assert_eq!(st["dataplane"]["workers"], 4, "{st}");
    }
    let lab = tl.lab();
    let cap = Capture::start(lab, &tl.dc.gw_b, topo::WAN_IF).expect("capture wan");
    for (dst, seed) in [
        (IpAddr::from(topo::HOST_B_V4), 41u64),
        (IpAddr::from(topo::HOST_B_V6), 51),
    ] {
        parallel_transfers(&tl, STREAMS, dst, 8 * MIB, seed);
    }
    std::thread::sleep(Duration::from_millis(200));
    let captured = cap.stop().expect("capture");
    let a = Side::A.listen();
    let mut seen = std::collections::HashSet::new();
    let mut data = Vec::new();
    let mut indexes = std::collections::HashSet::new();
    for f in &captured.frames {
        let Some((src, _, 17, l4)) = e2e::capture::ip_of_frame(f) else {
            continue;
        };
        let payload = l4.get(8..).unwrap_or_default();
        // Data frames (type 4) from gw-a: header, at least a tag.
        if src != a.ip() || payload.len() < 32 || payload[..4] != [4, 0, 0, 0] {
            continue;
        }
        let index = u32::from_le_bytes(payload[4..8].try_into().expect("4 bytes"));
        let counter = u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes"));
        assert!(
            seen.insert((index, counter)),
            "nonce used twice on the underlay: index {index:#x}, counter {counter}"
        );
        indexes.insert(index);
        data.push(payload.to_vec());
    }
    eprintln!(
        "{} data frames from gw-a, {} sessions, {} frames captured in all",
        data.len(),
        indexes.len(),
        captured.total
    );
    assert!(
        data.len() > 20_000,
        "too few data frames captured: {}",
        data.len()
    );
    assert!(
        indexes.len() >= 3,
        "no rekey during the transfer: {indexes:?}"
    );
    assert!(tl.counter(Side::A, "handshakes").expect("handshakes") >= 3);
    for side in [Side::A, Side::B] {
        let c = tl.counters(side).expect("counters");
        for bad in ["drop_bad_tag", "drop_malformed", "drop_replay"] {
            assert_eq!(
                c.get(bad).copied(),
                Some(0),
                "{bad} on {}: {c:?}",
                side.letter()
            );
        }
    }
    // Replay gw-a's last frames (its current session) from its address.
    let replay = data.split_off(data.len() - REPLAYED);
    let b = Side::B.listen();
    lab.run_in(&tl.dc.gw_a, move || -> io::Result<()> {
        let socks: Vec<UdpSocket> = (0..16)
            .map(|_| UdpSocket::bind(SocketAddr::new(a.ip(), 0)))
            .collect::<io::Result<_>>()?;
        for (i, f) in replay.iter().enumerate() {
            socks[i % socks.len()].send_to(f, b)?;
        }
        Ok(())
    })
    .expect("enter gw-a")
    .expect("replay");
    let dropped = e2e::wait_for(Duration::from_secs(5), "gw-b to drop the replays", || {
        let n = tl.counter(Side::B, "drop_replay")?;
        Ok((n >= REPLAYED as u64).then_some(n))
    })
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", tl.counters(Side::B)));
    assert_eq!(dropped, REPLAYED as u64, "each replay dropped once");
    let c = tl.counters(Side::B).expect("counters");
    assert_eq!(c.get("drop_bad_tag").copied(), Some(0), "{c:?}");
}
