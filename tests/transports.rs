//! Pluggable transports end to end: for udp, tcp and quic,
//! a tunneld pair in namespaces carries pings and a 100 MiB TCP transfer
//! with a matching SHA-256, and hostile input on the listen port (garbage,
//! truncated frames, absurd length prefixes for tcp) is dropped and counted
//! while established traffic goes on. A TCP connection killed mid-transfer
//! (`ss -K`) is redialed and the transfer completes; a QUIC peer presenting
//! a certificate that does not match the pin is refused with a clear log
//! line. The end-to-end runs use `workers: 2` (with TCP and QUIC: the first
//! worker receives, both send). Needs root (skips outside CI without it).

use e2e::{bin, require_root, tcp_transfer, wait_for, wait_ping, Side, TunnelLab};
use serde_json::{json, Value};
use std::io::Write;
use std::net::{IpAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tunbench::topo;

const MIB: u64 = 1 << 20;
/// Tunnel MTU for QUIC: 1360 + 32 (our frame) + 50 (QUIC) + 28 (IPv4/UDP)
/// fits the lab's 1500-byte veths.
const QUIC_MTU: u64 = 1360;

/// Certificates made with `tunneld gencert`, removed on drop.
struct Certs {
    dir: PathBuf,
    /// (cert, key, pin) of a and b.
    a: (PathBuf, PathBuf, String),
    b: (PathBuf, PathBuf, String),
}

impl Certs {
    fn new(tag: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!("e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cert dir");
        let make = |n: &str| {
            let (c, k) = (dir.join(format!("{n}.crt")), dir.join(format!("{n}.key")));
            let out = Command::new(bin("tunneld"))
                .args(["gencert", "--cert"])
                .arg(&c)
                .arg("--key")
                .arg(&k)
                .output()
                .expect("run tunneld gencert");
            assert!(out.status.success(), "gencert: {out:?}");
            let pin = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (c, k, pin)
        };
        let a = make("a");
        let b = make("b");
        Certs { dir, a, b }
    }

    fn of(&self, side: Side) -> &(PathBuf, PathBuf, String) {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Puts both sides on `kind`; only gw-a knows the other's endpoint (it
/// dials, gw-b accepts). For quic, `pin_for_a` overrides the pin gw-a
/// expects of gw-b.
fn tweak(
    kind: &str,
    certs: Option<&Certs>,
    pin_for_a: Option<String>,
) -> impl Fn(Side, &mut Value) {
    let kind = kind.to_string();
    let quic = certs.map(|c| (c.a.clone(), c.b.clone()));
    move |side, cfg: &mut Value| {
        let peer = &mut cfg["peers"][0];
        peer["transport"] = json!(kind);
        if side == Side::B {
            if let Some(p) = peer.as_object_mut() {
                p.remove("endpoint");
            }
        }
        if let Some((a, b)) = &quic {
            let (mine, theirs) = match side {
                Side::A => (a, b),
                Side::B => (b, a),
            };
            let pin = match (side, &pin_for_a) {
                (Side::A, Some(p)) => p.clone(),
                _ => theirs.2.clone(),
            };
            cfg["peers"][0]["quic"] = json!({ "spki_sha256": pin });
            cfg["quic"] = json!({
                "cert_file": path(&mine.0),
                "key_file": path(&mine.1),
                "idle_timeout": "15s",
                "keepalive": "2s"
            });
            cfg["interface"]["mtu"] = json!(QUIC_MTU);
        }
    }
}

fn start(tag: &str, kind: &str, certs: Option<&Certs>) -> TunnelLab {
    let tl = TunnelLab::start(tag, false, tweak(kind, certs, None)).expect("tunnel pair");
    let up = wait_ping(
        tl.lab(),
        &tl.dc.host_a,
        &topo::HOST_B_V4.to_string(),
        Duration::from_secs(20),
    );
    if let Err(e) = up {
        panic!("{kind} tunnel never came up: {e:#}");
    }
    tl
}

fn transfer(tl: &TunnelLab, bytes: u64, seed: u64) {
    let t = tcp_transfer(
        tl.lab(),
        &tl.dc.host_a,
        &tl.dc.host_b,
        IpAddr::V4(topo::HOST_B_V4),
        bytes,
        seed,
    )
    .expect("transfer");
    assert_eq!(t.received, bytes, "bytes received");
    assert_eq!(t.sent_digest, t.received_digest, "SHA-256 of the stream");
    eprintln!(
        "{} MiB in {:?} ({:.0} Mbit/s)",
        bytes / MIB,
        t.elapsed,
        bytes as f64 * 8.0 / t.elapsed.as_secs_f64() / 1e6
    );
}

fn transport_counter(tl: &TunnelLab, side: Side, name: &str) -> u64 {
    let st = tl.status(side).expect("status");
    st["transport"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no transport.{name}: {st}"))
}

/// Sends hostile input to gw-b's listen port from gw-a's namespace.
fn hostile(tl: &TunnelLab, kind: &str) {
    let to = Side::B.listen();
    let lab = tl.lab();
    match kind {
        "tcp" => {
            let r = lab
                .run_in(&tl.dc.gw_a, move || -> std::io::Result<()> {
                    let send = |bytes: &[u8]| -> std::io::Result<()> {
                        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
                        s.write_all(bytes)?;
                        std::thread::sleep(Duration::from_millis(100));
                        Ok(())
                    };
                    send(&[0xff, 0xff, 1, 2, 3])?; // absurd length
                    send(&[0, 0, 9, 9])?; // zero length
                    send(&[0, 100, 1, 2, 3])?; // truncated frame, then close
                                               // Well-framed garbage: reaches the protocol core, which drops it.
                    let mut framed = vec![0, 64];
                    framed.extend_from_slice(&[0x42; 64]);
                    send(&framed)
                })
                .expect("run_in gw-a");
            r.expect("hostile TCP client");
        }
        _ => {
            let r = lab
                .run_in(&tl.dc.gw_a, move || -> std::io::Result<()> {
                    let s = UdpSocket::bind("0.0.0.0:0")?;
                    for len in [1usize, 3, 17, 100, 1200, 1400] {
                        s.send_to(&vec![0xa5; len], to)?;
                    }
                    // A QUIC-looking long header with garbage behind it.
                    let mut q = vec![0xc0, 0, 0, 0, 1, 8];
                    q.extend_from_slice(&[7u8; 1200]);
                    s.send_to(&q, to)?;
                    Ok(())
                })
                .expect("run_in gw-a");
            r.expect("hostile UDP client");
        }
    }
}

fn end_to_end(kind: &str, tag: &str) {
    if !require_root() {
        return;
    }
    let certs = (kind == "quic").then(|| Certs::new(tag));
    // Two workers: with a TCP or QUIC transport the first receives and
    // both send on the one shared transport.
    let base = tweak(kind, certs.as_ref(), None);
    let tl = TunnelLab::start(tag, false, move |side, cfg: &mut Value| {
        base(side, cfg);
        cfg["dataplane"]["workers"] = json!(2);
    })
    .expect("tunnel pair");
    wait_ping(
        tl.lab(),
        &tl.dc.host_a,
        &topo::HOST_B_V4.to_string(),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("{kind} tunnel never came up: {e:#}"));
    for side in [Side::A, Side::B] {
        let st = tl.status(side).expect("status");
        assert_eq!(st["peers"][0]["transport"], json!(kind), "status: {st}");
        assert_eq!(st["dataplane"]["workers"], 2, "status: {st}");
    }
    let malformed = tl.counter(Side::B, "drop_malformed").expect("counter");
    // Hostile input while a transfer runs: the transfer is undisturbed.
    std::thread::scope(|s| {
        let t = s.spawn(|| transfer(&tl, 100 * MIB, 6));
        std::thread::sleep(Duration::from_millis(200));
        hostile(&tl, kind);
        t.join().expect("transfer thread");
    });
    match kind {
        "tcp" => {
            wait_for(Duration::from_secs(5), "tcp drops counted", || {
                let c = tl.status(Side::B)?["transport"].clone();
                Ok((c["tcp_bad_length"].as_u64() >= Some(2)
                    && c["tcp_truncated"].as_u64() >= Some(1))
                .then_some(()))
            })
            .expect("hostile TCP input counted");
            tl.wait_counter_above(Side::B, "drop_malformed", malformed, Duration::from_secs(5))
                .expect("framed garbage dropped by the core");
            let config = tl.b.config_path.display().to_string();
            let out = tl
                .lab()
                .exec(
                    &tl.dc.gw_b,
                    &bin("tunneld").display().to_string(),
                    &["status", "--prometheus", "--config", &config],
                )
                .expect("status --prometheus");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("transport=\"tcp\"} 1"), "{text}");
            assert!(!text.contains("event=\"tcp_bad_length\"} 0"), "{text}");
        }
        "udp" => {
            tl.wait_counter_above(Side::B, "drop_malformed", malformed, Duration::from_secs(5))
                .expect("garbage datagrams counted");
        }
        // quinn drops undecodable packets itself; the assertion is that
        // the connection and traffic are unaffected.
        _ => assert_eq!(transport_counter(&tl, Side::B, "quic_connections"), 1),
    }
    wait_ping(
        tl.lab(),
        &tl.dc.host_a,
        &topo::HOST_B_V6.to_string(),
        Duration::from_secs(5),
    )
    .expect("v6 ping after hostile input");
    drop(tl);
    drop(certs);
}

#[test]
fn udp_end_to_end() {
    end_to_end("udp", "tr-udp");
}

#[test]
fn tcp_end_to_end() {
    end_to_end("tcp", "tr-tcp");
}

#[test]
fn quic_end_to_end() {
    end_to_end("quic", "tr-quic");
}

/// Kills (`ss -K`) gw-a's TCP connections to gw-b's listen port, only
/// those from `src` when given.
fn cut_tcp_to_b(tl: &TunnelLab, src: Option<IpAddr>) {
    let dst = Side::B.listen();
    let (ip, port) = (dst.ip().to_string(), dst.port().to_string());
    let mut args = vec!["-K", "-t", "dst", &ip, "dport", "=", &port];
    let src = src.map(|s| s.to_string());
    if let Some(s) = &src {
        args.extend(["src", s.as_str()]);
    }
    let out = tl.lab().exec(&tl.dc.gw_a, "ss", &args).expect("ss -K");
    assert!(out.status.success(), "ss -K: {out:?}");
}

#[test]
fn tcp_connection_cut_mid_transfer_is_redialed() {
    if !require_root() {
        return;
    }
    let tl = start("tr-tcpcut", "tcp", None);
    assert_eq!(transport_counter(&tl, Side::A, "tcp_dialed"), 1);
    let base = tl.counter(Side::B, "rx_bytes").expect("rx");
    std::thread::scope(|s| {
        let t = s.spawn(|| transfer(&tl, 100 * MIB, 7));
        tl.wait_counter_above(
            Side::B,
            "rx_bytes",
            base + 10 * MIB,
            Duration::from_secs(20),
        )
        .expect("transfer under way");
        assert!(!t.is_finished(), "the cut must come mid-transfer");
        cut_tcp_to_b(&tl, None);
        t.join().expect("transfer thread");
    });
    assert!(
        transport_counter(&tl, Side::A, "tcp_dialed") >= 2,
        "connection redialed"
    );
    assert!(tl.logs().contains("redialing"), "log names the redial");
}

/// Idle-connection flood against the TCP listener (gw-b accepts): 200
/// connections from 8 extra addresses of gw-a, held open and trickling a
/// byte now and then, while the real peer's connection is cut and must
/// redial through the flood. The tunnel comes back, pings keep crossing,
/// and the flood is counted (evicted or refused at once, closed at the
/// authentication deadline, pending connections bounded).
#[test]
fn tcp_idle_connection_flood_keeps_the_tunnel_up() {
    if !require_root() {
        return;
    }
    let tl = start("tr-tcpflood", "tcp", None);
    let lab = tl.lab();
    let sources: Vec<std::net::Ipv4Addr> = (11..19).map(|h| [198, 18, 0, h].into()).collect();
    for ip in &sources {
        let out = lab
            .exec(
                &tl.dc.gw_a,
                "ip",
                &["addr", "add", &format!("{ip}/24"), "dev", topo::WAN_IF],
            )
            .expect("ip addr add");
        assert!(out.status.success(), "ip addr add: {out:?}");
    }
    let to = Side::B.listen();
    let open = |sources: Vec<std::net::Ipv4Addr>, n: usize| {
        lab.run_in(&tl.dc.gw_a, move || {
            let mut held = Vec::new();
            for k in 0..n {
                let src = sources[k % sources.len()];
                let s = socket2::Socket::new(
                    socket2::Domain::IPV4,
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                );
                let Ok(s) = s else { continue };
                if s.bind(&std::net::SocketAddr::from((src, 0)).into())
                    .is_err()
                {
                    continue;
                }
                if s.connect_timeout(&to.into(), Duration::from_secs(2))
                    .is_ok()
                {
                    held.push(TcpStream::from(s));
                }
                // 200 connections over ~4 s: 50/s, within the test bounds.
                std::thread::sleep(Duration::from_millis(20));
            }
            held
        })
        .expect("run_in gw-a")
    };
    let before = tl.status(Side::B).expect("status")["transport"].clone();
    let mut held = open(sources.clone(), 100);
    // Cut the real peer's connection mid-flood: it must redial through it.
    cut_tcp_to_b(&tl, Some(topo::GW_A_WAN_V4.into()));
    held.extend(open(sources.clone(), 100));
    // Bytes do not extend the authentication deadline.
    for s in held.iter_mut() {
        let _ = s.write_all(&[0]);
    }
    let mut crossed = 0;
    let start = std::time::Instant::now();
    let mut tries = 0;
    while start.elapsed() < Duration::from_secs(12) {
        tries += 1;
        if e2e::ping_once(lab, &tl.dc.host_a, &topo::HOST_B_V4.to_string()) {
            crossed += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let c = tl.status(Side::B).expect("status")["transport"].clone();
    let get = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k}: {v}"));
    eprintln!(
        "idle flood: {} connections held by the attacker, pings {crossed}/{tries}, transport {c}",
        held.len()
    );
    // The redial reaches gw-b and authenticates; pings cross during the flood.
    assert!(
        get(&c, "tcp_authenticated") > get(&before, "tcp_authenticated"),
        "{c}"
    );
    assert!(
        crossed * 10 >= tries * 7,
        "pings {crossed}/{tries} during the flood"
    );
    assert!(
        transport_counter(&tl, Side::A, "tcp_dialed") >= 2,
        "the real peer redialed"
    );
    // The cost is counted and bounded.
    let attempts = 200;
    let handled = get(&c, "tcp_accepted") - get(&before, "tcp_accepted") + get(&c, "tcp_refused")
        - get(&before, "tcp_refused");
    assert!(
        handled >= attempts,
        "{handled} of {attempts} flood connections seen: {c}"
    );
    assert!(get(&c, "tcp_evicted") + get(&c, "tcp_refused") > 0, "{c}");
    assert!(
        get(&c, "tcp_auth_timeout") > 0,
        "deadline closes idle ones: {c}"
    );
    assert!(get(&c, "tcp_pending") <= 32, "{c}");
    drop(held);
    wait_ping(
        lab,
        &tl.dc.host_a,
        &topo::HOST_B_V6.to_string(),
        Duration::from_secs(5),
    )
    .expect("v6 ping after the flood");
}

#[test]
fn quic_wrong_certificate_is_refused() {
    if !require_root() {
        return;
    }
    let certs = Certs::new("tr-qbad");
    // gw-a pins its own certificate for gw-b: gw-b's does not match.
    let wrong = certs.of(Side::A).2.clone();
    let tl = TunnelLab::start(
        "tr-qbad",
        false,
        tweak("quic", Some(&certs), Some(wrong.clone())),
    )
    .expect("tunnel pair");
    let line = wait_for(Duration::from_secs(10), "the refusal log line", || {
        let pid = tl.a.pid.expect("a runs");
        Ok(tl
            .lab()
            .log(pid)
            .lines()
            .find(|l| l.contains("QUIC certificate of peer b") && l.contains("refused"))
            .map(str::to_string))
    })
    .expect("gw-a logs the refusal");
    assert!(
        line.contains(&certs.of(Side::B).2),
        "names the presented pin: {line}"
    );
    assert!(line.contains(&wrong), "names the expected pin: {line}");
    // The counter reaches the status snapshot up to one timer tick after
    // the log line: wait for it rather than race it.
    wait_for(
        Duration::from_secs(5),
        "the handshake failure counted",
        || Ok((transport_counter(&tl, Side::A, "quic_handshake_failures") >= 1).then_some(())),
    )
    .expect("quic_handshake_failures counted");
    assert_eq!(transport_counter(&tl, Side::A, "quic_connections"), 0);
    assert!(
        !e2e::ping_once(tl.lab(), &tl.dc.host_a, &topo::HOST_B_V4.to_string()),
        "no tunnel without a matching certificate"
    );
}

#[test]
fn quic_path_smaller_than_tunnel_mtu_answers_icmp_too_big() {
    if !require_root() {
        return;
    }
    let certs = Certs::new("tr-qmtu");
    let tl = start("tr-qmtu", "quic", Some(&certs));
    // Shrink the underlay below what a full-MTU QUIC datagram needs.
    for ns in [&tl.dc.gw_a, &tl.dc.gw_b] {
        let out = tl
            .lab()
            .exec(ns, "ip", &["link", "set", "dev", "wan0", "mtu", "1300"])
            .expect("ip link");
        assert!(out.status.success(), "set mtu: {out:?}");
    }
    let dst = topo::HOST_B_V4.to_string();
    // Full-size DF packets: lost until quinn notices the black hole, then
    // answered with "fragmentation needed" carrying the datagram limit.
    let answer = wait_for(Duration::from_secs(30), "ICMP fragmentation needed", || {
        let out = tl
            .lab()
            .exec(
                &tl.dc.host_a,
                "ping",
                &["-c1", "-W1", "-n", "-M", "do", "-s", "1300", &dst],
            )
            .expect("ping");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(text.contains("mtu").then_some(text))
    })
    .expect("the tunnel answers too-big packets");
    eprintln!("{answer}");
    let mtu: u64 = answer
        .split("mtu")
        .nth(1)
        .and_then(|r| {
            r.trim_start_matches([' ', '=', '\t'])
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse().ok())
        })
        .unwrap_or_else(|| panic!("no MTU in: {answer}"));
    assert!((1100..1300).contains(&mtu), "advertised MTU {mtu}");
    // Packets within the advertised size still cross.
    let small = (mtu - 28 - 8).to_string();
    wait_for(
        Duration::from_secs(10),
        "pings of the advertised size",
        || {
            let out = tl
                .lab()
                .exec(
                    &tl.dc.host_a,
                    "ping",
                    &["-c1", "-W1", "-n", "-M", "do", "-s", &small, &dst],
                )
                .expect("ping");
            Ok(out.status.success().then_some(()))
        },
    )
    .expect("pings below the advertised MTU");
    drop(tl);
    drop(certs);
}

/// Receiver-side TCP throughput host-a → host-b in bit/s (tunbench engine).
fn measure(tl: &TunnelLab, streams: u32, secs: u64) -> f64 {
    use tunbench::engine::{self, Server, TestSpec};
    let dc = &tl.dc;
    let server = dc
        .lab
        .run_in(&dc.host_b, || {
            Server::bind((topo::HOST_B_V4, 5301).into()).map(|s| s.spawn())
        })
        .expect("run_in host-b")
        .expect("server binds");
    let mut spec = TestSpec::new(topo::HOST_B_V4.to_string(), 5301);
    spec.params.parallel = streams;
    spec.params.time = Duration::from_secs(secs);
    spec.params.omit = Duration::from_secs(1);
    let r = dc
        .lab
        .run_in(&dc.host_a, move || engine::run_client(&spec))
        .expect("run_in host-a")
        .expect("client run");
    drop(server);
    r.directions
        .first()
        .map(|d| d.bits_per_second)
        .unwrap_or(0.0)
}

/// Throughput of udp, quic and tcp on the same topology in one run, as
/// ratios to udp. A benchmark, run by hand (root):
/// `cargo test --release -p e2e --test transports -- --ignored --nocapture`
/// (`BENCH_TIME` seconds per measurement, default 5; `BENCH_REPS`, default 3).
#[test]
#[ignore = "benchmark: run by hand with --ignored --nocapture"]
fn bench_transports() {
    if !require_root() {
        return;
    }
    let env = |n: &str, d: u64| {
        std::env::var(n)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (secs, reps) = (env("BENCH_TIME", 5), env("BENCH_REPS", 3));
    let kinds = ["udp", "quic", "tcp"];
    let mut res: Vec<(Vec<f64>, Vec<f64>)> = vec![(vec![], vec![]); kinds.len()];
    for rep in 0..reps {
        for (i, kind) in kinds.iter().enumerate() {
            let certs = (*kind == "quic").then(|| Certs::new("bench-q"));
            let tl = start("bench-tr", kind, certs.as_ref());
            let (one, four) = (measure(&tl, 1, secs), measure(&tl, 4, secs));
            eprintln!(
                "rep {rep} {kind}: 1 stream {:.2} Gbit/s, 4 streams {:.2} Gbit/s",
                one / 1e9,
                four / 1e9
            );
            res[i].0.push(one);
            res[i].1.push(four);
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let (u1, u4) = (median(&res[0].0), median(&res[0].1));
    println!("\n| transport | 1 stream | 4 streams | ratio to udp (1 / 4) |");
    println!("|---|---|---|---|");
    for (i, kind) in kinds.iter().enumerate() {
        let (m1, m4) = (median(&res[i].0), median(&res[i].1));
        println!(
            "| {kind} | {:.0} Mbit/s | {:.0} Mbit/s | {:.2} / {:.2} |",
            m1 / 1e6,
            m4 / 1e6,
            m1 / u1,
            m4 / u4
        );
    }
}
