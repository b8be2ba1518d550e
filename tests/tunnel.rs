//! tunneld end-to-end tests: real packets between two
//! data-centre LANs through a tunneld pair in network namespaces.
//!
//! Root tests build their own `dc_pair` (skip without root unless CI=true).
//! On failure, the `TunnelLab` guard prints both daemons' configs and logs.
//! Build first: `cargo build --release --workspace`.
//!
//! The `harness_*` tests need no daemon: they check the topology, the raw
//! routed path and that the capture really sees plaintext (so the
//! no-plaintext test can fail).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::capture::Captured;
use e2e::{
    bin, contains, genkey, mentions_line, pubkey, require_root, tcp_transfer, udp_payloads,
    wait_ping, write_key, Capture, Pattern, Side, TempDir, TunnelLab,
};
use tunbench::topo::{self, dc_pair, DcPair, Lab};

const MIB: u64 = 1 << 20;
/// Once a session is up, a ping must get through within this.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

fn start(tag: &str, with_wan: bool) -> TunnelLab {
    TunnelLab::start(tag, with_wan, |_, _| {}).expect("start the tunneld pair")
}

// ---------------------------------------------------------------- 1. ping

#[test]
fn ping_both_ways_v4_and_v6() {
    if !require_root() {
        return;
    }
    let tl = start("e2e-ping", true);
    tl.wait_session();
    let dc = &tl.dc;
    let (a4, a6) = Side::A.inner();
    let (b4, b6) = Side::B.inner();
    let cases = [
        (&dc.host_a, topo::HOST_B_V4.to_string()),
        (&dc.host_a, topo::HOST_B_V6.to_string()),
        (&dc.host_b, topo::HOST_A_V4.to_string()),
        (&dc.host_b, topo::HOST_A_V6.to_string()),
        (&dc.gw_a, b4.to_string()),
        (&dc.gw_a, b6.to_string()),
        (&dc.gw_b, a4.to_string()),
        (&dc.gw_b, a6.to_string()),
    ];
    for (ns, dst) in &cases {
        wait_ping(tl.lab(), ns, dst, PING_TIMEOUT)
            .unwrap_or_else(|e| panic!("ping {ns} → {dst} through the tunnel: {e:#}"));
    }
    // Status reflects the session and the traffic. The snapshot is
    // published once per timer tick (50 ms), and the pings may all have
    // crossed within the first one: wait for it to catch up.
    let status = e2e::wait_for(Duration::from_secs(2), "status showing the pings", || {
        let st = tl.status(Side::A)?;
        Ok((st["peers"][0]["rx_bytes"].as_u64().unwrap_or(0) > 0).then_some(st))
    })
    .unwrap_or_else(|_| tl.status(Side::A).expect("status a"));
    let peer = &status["peers"][0];
    assert_eq!(peer["name"], "b", "{status}");
    assert_eq!(peer["session"], true, "{status}");
    assert!(peer["handshakes"].as_u64().unwrap_or(0) >= 1, "{status}");
    assert!(peer["tx_bytes"].as_u64().unwrap_or(0) > 0, "{status}");
    assert!(peer["rx_bytes"].as_u64().unwrap_or(0) > 0, "{status}");
}

// ------------------------------------------------------------ 2. transfer

#[test]
fn tcp_transfer_200mib_v4_and_smaller_v6() {
    if !require_root() {
        return;
    }
    let tl = start("e2e-xfer", true);
    tl.wait_session();
    let dc = &tl.dc;
    for (dst, bytes, seed) in [
        (IpAddr::from(topo::HOST_B_V4), 200 * MIB, 0x5eed_0001),
        (IpAddr::from(topo::HOST_B_V6), 32 * MIB, 0x5eed_0002),
    ] {
        let t = tcp_transfer(tl.lab(), &dc.host_a, &dc.host_b, dst, bytes, seed)
            .unwrap_or_else(|e| panic!("TCP transfer to {dst}: {e:#}"));
        assert_eq!(t.sent, bytes);
        assert!(
            t.intact(),
            "stream to {dst} damaged: sent {} bytes sha256 {:02x?}, received {} bytes sha256 {:02x?}",
            t.sent,
            t.sent_digest,
            t.received,
            t.received_digest
        );
        eprintln!("{} MiB to {dst} in {:?}", bytes / MIB, t.elapsed);
    }
}

// --------------------------------------------------- 3. no plaintext leaks

/// What a canary run saw: captures on gw-b's wan0 and lan0, and what host-b
/// received (so a broken path cannot pass as "nothing leaked").
struct CanaryRun {
    canary: Vec<u8>,
    wan: Captured,
    lan: Captured,
    udp_delivered: usize,
    tcp_delivered: bool,
}

/// Captures on gw-b's wan0 and lan0 while host-a sends a canary to host-b
/// over UDP (v4 and v6) and TCP (v4).
fn canary_run(dc: &DcPair) -> CanaryRun {
    let lab = &dc.lab;
    let mut canary = b"TUNBENCH-CANARY-".to_vec();
    canary.extend(
        Pattern::new(u64::from(std::process::id()) | 1)
            .bytes(12)
            .iter()
            .map(|b| b"0123456789abcdef"[usize::from(b & 15)]),
    );
    let wan = Capture::start(lab, &dc.gw_b, topo::WAN_IF).expect("capture wan0");
    let lan = Capture::start(lab, &dc.gw_b, topo::LAN_IF).expect("capture lan0");

    let mut udp_delivered = 0;
    for (src, dst) in [
        (IpAddr::from(topo::HOST_A_V4), IpAddr::from(topo::HOST_B_V4)),
        (IpAddr::from(topo::HOST_A_V6), IpAddr::from(topo::HOST_B_V6)),
    ] {
        let rx = lab
            .run_in(&dc.host_b, move || UdpSocket::bind(SocketAddr::new(dst, 0)))
            .expect("run_in")
            .expect("bind UDP receiver in host-b");
        rx.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let to = rx.local_addr().expect("addr");
        let tx = lab
            .run_in(&dc.host_a, move || UdpSocket::bind(SocketAddr::new(src, 0)))
            .expect("run_in")
            .expect("bind UDP sender in host-a");
        for i in 0..25u8 {
            let mut msg = canary.clone();
            msg.extend_from_slice(&[b' ', b'0' + i % 10]);
            msg.extend(Pattern::new(u64::from(i) + 1).bytes(200));
            tx.send_to(&msg, to).expect("send canary");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut buf = [0u8; 2048];
        while let Ok(n) = rx.recv(&mut buf) {
            if contains(&buf[..n], &canary) {
                udp_delivered += 1;
            }
        }
    }

    let listener = lab
        .run_in(&dc.host_b, || {
            TcpListener::bind(SocketAddr::new(topo::HOST_B_V4.into(), 0))
        })
        .expect("run_in")
        .expect("bind TCP listener in host-b");
    let addr = listener.local_addr().expect("addr");
    let reader = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        Ok(got)
    });
    let sent = lab
        .run_in(&dc.host_a, move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        })
        .expect("run_in")
        .and_then(|mut s| {
            for _ in 0..10 {
                s.write_all(&canary)?;
                s.write_all(b"\n")?;
            }
            s.shutdown(std::net::Shutdown::Write)
        });
    let tcp_delivered = match sent {
        Ok(()) => reader
            .join()
            .ok()
            .and_then(Result::ok)
            .is_some_and(|got| contains(&got, &canary)),
        Err(e) => {
            eprintln!("TCP canary could not be sent: {e}");
            // Unblock the accept so the reader thread ends.
            let _ = lab.run_in(&dc.host_b, move || TcpStream::connect(addr));
            false
        }
    };
    std::thread::sleep(Duration::from_millis(300));
    CanaryRun {
        canary,
        wan: wan.stop().expect("wan capture"),
        lan: lan.stop().expect("lan capture"),
        udp_delivered,
        tcp_delivered,
    }
}

fn frames_with(c: &Captured, needle: &[u8]) -> usize {
    c.frames.iter().filter(|f| contains(f, needle)).count()
}

#[test]
fn no_plaintext_on_the_underlay() {
    if !require_root() {
        return;
    }
    let tl = start("e2e-leak", true);
    tl.wait_session();
    let run = canary_run(&tl.dc);
    assert!(run.udp_delivered > 0, "no UDP canary reached host-b");
    assert!(run.tcp_delivered, "the TCP canary did not reach host-b");
    assert!(
        run.wan.total >= 20,
        "only {} frames on gw-b wan0: the capture saw no tunnel traffic",
        run.wan.total
    );
    let tunnel_frames = udp_payloads(&run.wan.frames, Side::A.listen(), Side::B.listen());
    assert!(
        !tunnel_frames.is_empty(),
        "no UDP {} → {} frames on wan0",
        Side::A.listen(),
        Side::B.listen()
    );
    assert_eq!(
        frames_with(&run.wan, &run.canary),
        0,
        "PLAINTEXT LEAK: the canary {:?} crossed the underlay in clear",
        String::from_utf8_lossy(&run.canary)
    );
    // Control: the same capture on the LAN side sees it, so the check above
    // can fail.
    assert!(
        frames_with(&run.lan, &run.canary) > 0,
        "control failed: the canary was not seen on gw-b lan0 either"
    );
}

// ------------------------------------------------------ 4. hostile input

/// A frame header offset (docs/protocol.md, "Frames"):
/// type u8 | reserved [u8;3] | receiver_index u32 | counter u64 | ...
const INDEX: std::ops::Range<usize> = 4..8;
const COUNTER: std::ops::Range<usize> = 8..16;
const HEADER: usize = 16;

/// Captures a data frame gw-b → gw-a (the reply to a large ping).
fn capture_data_frame(tl: &TunnelLab) -> Vec<u8> {
    let lab = tl.lab();
    let cap = Capture::start(lab, &tl.dc.gw_b, topo::WAN_IF).expect("capture");
    let out = lab
        .exec(
            &tl.dc.host_a,
            "ping",
            &[
                "-c3",
                "-i0.2",
                "-W2",
                "-s1000",
                "-n",
                &topo::HOST_B_V4.to_string(),
            ],
        )
        .expect("ping");
    std::thread::sleep(Duration::from_millis(200));
    let frames = cap.stop().expect("capture").frames;
    assert!(out.status.success(), "large ping failed: {out:?}");
    let payloads = udp_payloads(&frames, Side::B.listen(), Side::A.listen());
    let frame = payloads
        .into_iter()
        .max_by_key(Vec::len)
        .expect("no tunnel frames gw-b → gw-a captured");
    assert!(
        frame.len() > 1000,
        "largest gw-b → gw-a frame is {} bytes; expected an encrypted 1000-byte ping",
        frame.len()
    );
    frame
}

fn drops(counters: &std::collections::BTreeMap<String, u64>) -> u64 {
    counters
        .iter()
        .filter(|(k, _)| k.starts_with("drop_"))
        .map(|(_, v)| v)
        .sum()
}

/// Sends `frames` to gw-a's listen port and waits until `counter` grew (and,
/// if `min_total` > 0, the sum of all drop counters grew by `min_total`).
fn hostile(
    tl: &TunnelLab,
    sock: &UdpSocket,
    what: &str,
    frames: &[Vec<u8>],
    counter: &str,
    min_total: u64,
) {
    let before = tl.counters(Side::A).expect("status");
    let base = before.get(counter).copied().unwrap_or_else(|| {
        panic!("status has no counters.{counter}: {before:?}");
    });
    for f in frames {
        sock.send_to(f, Side::A.listen())
            .expect("send hostile frame");
    }
    tl.wait_counter_above(Side::A, counter, base, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    if min_total > 0 {
        let total_before = drops(&before);
        e2e::wait_for(Duration::from_secs(5), "drop counters to grow", || {
            let now = drops(&tl.counters(Side::A)?);
            Ok((now >= total_before + min_total).then_some(()))
        })
        .unwrap_or_else(|e| {
            panic!(
                "{what}: {} frames sent, not all counted as drops: {e:#}",
                frames.len()
            )
        });
    }
}

#[test]
fn hostile_input_is_dropped_and_counted() {
    if !require_root() {
        return;
    }
    let tl = start("e2e-hostile", true);
    tl.wait_session();
    let lab = tl.lab();
    let data = capture_data_frame(&tl);
    let sock = lab
        .run_in(&tl.dc.gw_b, || {
            UdpSocket::bind(SocketAddr::new(topo::GW_B_WAN_V4.into(), 0))
        })
        .expect("run_in")
        .expect("bind the attacker socket in gw-b");
    let mut rng = Pattern::new(0xbad_f00d);

    // Random bytes of many lengths, with a type byte that is no frame type.
    let random: Vec<Vec<u8>> = [0usize, 1, 15, 16, 17, 100, 1500]
        .iter()
        .map(|&n| {
            let mut f = rng.bytes(n);
            if let Some(t) = f.first_mut() {
                *t = 0xE0 | (*t & 0x0F);
            }
            f
        })
        .collect();
    hostile(&tl, &sock, "random bytes", &random, "drop_malformed", 6);

    // Truncated copies of a real frame.
    let truncated: Vec<Vec<u8>> = [
        1,
        3,
        4,
        8,
        12,
        15,
        16,
        20,
        31,
        32,
        data.len() / 2,
        data.len() - 1,
    ]
    .iter()
    .map(|&n| data[..n].to_vec())
    .collect();
    hostile(
        &tl,
        &sock,
        "truncated frames",
        &truncated,
        "drop_malformed",
        truncated.len() as u64,
    );

    // The captured frame again, verbatim: a replay.
    hostile(
        &tl,
        &sock,
        "replayed frame",
        &vec![data.clone(); 3],
        "drop_replay",
        3,
    );

    // A data frame for a receiver index nobody has.
    let mut unknown = data.clone();
    for (i, b) in unknown[INDEX].iter_mut().enumerate() {
        *b ^= 0xA5 ^ (i as u8);
    }
    hostile(
        &tl,
        &sock,
        "unknown receiver index",
        &[unknown],
        "drop_unknown_index",
        1,
    );

    // Handshake-init-shaped frames of random bytes: their mac1 (over
    // gw-a's public key) is wrong, so they are refused before any
    // public-key work.
    let inits: Vec<Vec<u8>> = [148usize, 200]
        .iter()
        .map(|&n| {
            let mut f = vec![1u8, 0, 0, 0];
            f.extend(rng.bytes(n - 4));
            f
        })
        .collect();
    hostile(
        &tl,
        &sock,
        "handshake-init of random bytes",
        &inits,
        "drop_handshake_mac",
        0,
    );

    // A valid receiver index and a fresh counter, but ciphertext from the
    // wrong key: the tag must fail.
    let mut forged = data.clone();
    for b in &mut forged[COUNTER][3..6] {
        *b = 0x5A; // far ahead of the real counter in either byte order
    }
    let noise = rng.bytes(forged.len() - HEADER);
    for (b, n) in forged[HEADER..].iter_mut().zip(noise) {
        *b ^= n | 1;
    }
    hostile(
        &tl,
        &sock,
        "forged ciphertext",
        &[forged],
        "drop_bad_tag",
        1,
    );

    // The tunnel still works.
    wait_ping(
        lab,
        &tl.dc.host_a,
        &topo::HOST_B_V4.to_string(),
        PING_TIMEOUT,
    )
    .expect("ping after hostile input");
    let t = tcp_transfer(
        lab,
        &tl.dc.host_a,
        &tl.dc.host_b,
        topo::HOST_B_V4.into(),
        4 * MIB,
        9,
    )
    .expect("transfer after hostile input");
    assert!(t.intact(), "transfer after hostile input damaged: {t:?}");
    let status = tl.status(Side::A).expect("status");
    assert_eq!(
        status["peers"][0]["session"], true,
        "session survived: {status}"
    );
}

// ------------------------------------------------------------ 5. restart

#[test]
fn restart_one_side_recovers_without_touching_the_other() {
    if !require_root() {
        return;
    }
    let mut tl = start("e2e-restart", true);
    tl.wait_session();
    let gw_b = tl.dc.gw_b.clone();
    let tun = tl.b.tun.clone();
    let st = tl.stop_side(Side::B).expect("stop gw-b's tunneld");
    assert!(
        st.success(),
        "SIGTERM must be a clean shutdown (exit 0), got {st}"
    );
    let links = tl.lab().ip(&gw_b, &["-o", "link", "show"]).expect("links");
    assert!(
        !links.contains(&tun),
        "TUN {tun} still exists after shutdown:\n{links}"
    );
    for family in ["-4", "-6"] {
        let routes = tl
            .lab()
            .ip(&gw_b, &[family, "route", "show"])
            .expect("routes");
        assert!(
            !routes.contains(&format!("dev {tun}")),
            "routes via {tun} left after shutdown:\n{routes}"
        );
        let lan_a = if family == "-4" {
            topo::LAN_A_V4
        } else {
            topo::LAN_A_V6
        };
        assert!(!routes.contains(lan_a), "route to {lan_a} left:\n{routes}");
    }
    assert!(
        !e2e::ping_once(tl.lab(), &tl.dc.host_a, &topo::HOST_B_V4.to_string()),
        "host-b must be unreachable while gw-b's tunneld is down"
    );

    let t0 = Instant::now();
    tl.start_side(Side::B).expect("restart gw-b's tunneld");
    let budget = Duration::from_secs(5).saturating_sub(t0.elapsed());
    wait_ping(
        tl.lab(),
        &tl.dc.host_a,
        &topo::HOST_B_V4.to_string(),
        budget,
    )
    .unwrap_or_else(|e| panic!("host-a → host-b within 5 s of the restart: {e:#}"));
    assert!(
        t0.elapsed() <= Duration::from_secs(6),
        "took {:?}",
        t0.elapsed()
    );
}

// ------------------------------------------------- 6. config check (no root)

/// A valid config, one entry per line, so tests can name line numbers.
fn config_lines(dir: &std::path::Path, peer_public: &str) -> Vec<String> {
    [
        "kind: tunnel".to_string(),                               // 1
        "interface:".into(),                                      // 2
        "  name: tun-chk".into(),                                 // 3
        "  addresses: [198.19.0.1/24, \"fd00:19::1/64\"]".into(), // 4
        "  mtu: 1420".into(),                                     // 5
        "listen: 198.18.0.1:51820".into(),                        // 6
        "private_key_file: a.key".into(),                         // 7
        "cipher: aes-256-gcm".into(),                             // 8
        format!("control_socket: {}/a.sock", dir.display()),      // 9
        "rekey: { after_time: 120s, after_bytes: 64G }".into(),   // 10
        "peers:".into(),                                          // 11
        "  - name: b".into(),                                     // 12
        format!("    public_key: \"{peer_public}\""),             // 13
        "    endpoint: 198.18.0.2:51820".into(),                  // 14
        "    allowed_prefixes: [198.19.0.2/32, 198.18.2.0/24, \"fd00:19::2/128\", \"fd00:2::/64\"]"
            .into(), // 15
        "    keepalive: 5s".into(),                               // 16
    ]
    .to_vec()
}

fn check(dir: &std::path::Path, name: &str, lines: &[String]) -> (bool, String) {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").expect("write config");
    let out = Command::new(bin("tunneld"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run tunneld check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_rejects_broken_configs_naming_field_and_line() {
    let dir = TempDir::new("check").expect("temp dir");
    let key = genkey().expect("genkey");
    write_key(&dir.path().join("a.key"), &key).expect("key file");
    let peer = pubkey(&genkey().expect("genkey")).expect("pubkey");
    let good = config_lines(dir.path(), &peer);

    let (ok, text) = check(dir.path(), "valid.yaml", &good);
    assert!(ok, "a valid config must pass `tunneld check`:\n{text}");

    // (name, edit, field that must be named, line that must be named)
    type Edit = fn(&mut Vec<String>);
    let cases: [(&str, Edit, &[&str], Option<usize>); 7] = [
        (
            "unknown top-level field",
            |l| l.insert(8, "colour: blue".into()),
            &["colour"],
            Some(9),
        ),
        (
            "unknown peer field",
            |l| l.insert(14, "    colour: red".into()),
            &["colour"],
            Some(15),
        ),
        (
            "IPv4 prefix length 33",
            |l| l[14] = l[14].replace("198.18.2.0/24", "198.18.2.0/33"),
            &["allowed_prefixes", "198.18.2.0/33"],
            Some(15),
        ),
        (
            "IPv6 prefix length 129",
            |l| l[14] = l[14].replace("fd00:2::/64", "fd00:2::/129"),
            &["allowed_prefixes", "fd00:2::/129"],
            Some(15),
        ),
        (
            "cipher none without insecure_lab_only",
            |l| l[7] = "cipher: none".into(),
            &["cipher", "insecure_lab_only"],
            None,
        ),
        (
            "broken YAML (mapping in a scalar)",
            |l| l[5] = "listen: 198.18.0.1: 51820".into(),
            &[],
            Some(6),
        ),
        (
            "broken YAML (tab indentation)",
            |l| l[4] = "\tmtu: 1420".into(),
            &[],
            Some(5),
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, edit, fields, line)) in cases.iter().enumerate() {
        let mut lines = good.clone();
        edit(&mut lines);
        let (ok, text) = check(dir.path(), &format!("broken{i}.yaml"), &lines);
        let names_field = fields.is_empty() || fields.iter().any(|f| text.contains(f));
        let names_line = line.is_none_or(|n| mentions_line(&text, n));
        if ok || !names_field || !names_line {
            failures.push(format!(
                "{what}: exit ok={ok}, expected one of {fields:?} and line {line:?} in:\n{text}"
            ));
        }
    }
    // The flag really is what makes `cipher: none` acceptable.
    let mut lab_only = good.clone();
    lab_only[7] = "cipher: none".into();
    lab_only.push("insecure_lab_only: true".into());
    let (ok, text) = check(dir.path(), "lab-only.yaml", &lab_only);
    if !ok {
        failures.push(format!(
            "cipher none WITH insecure_lab_only must pass:\n{text}"
        ));
    }
    let (ok, text) = check(dir.path(), "empty.yaml", &[]);
    let missing = dir.path().join("does-not-exist.yaml");
    let out = Command::new(bin("tunneld"))
        .args(["check", "--config"])
        .arg(&missing)
        .output()
        .expect("run tunneld check");
    if out.status.success() {
        failures.push("check of a missing file must fail".into());
    }
    if ok {
        failures.push(format!("an empty config must fail:\n{text}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn genkey_and_pubkey() {
    use base64::Engine;
    let k1 = genkey().expect("genkey");
    let k2 = genkey().expect("genkey");
    assert_ne!(k1, k2, "two genkey runs must differ");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&k1)
        .expect("genkey prints base64");
    assert_eq!(raw.len(), 32, "an X25519 private key is 32 bytes");
    let p1 = pubkey(&k1).expect("pubkey");
    assert_eq!(p1, pubkey(&k1).expect("pubkey"), "pubkey is deterministic");
    assert_ne!(p1, pubkey(&k2).expect("pubkey"));
    assert_ne!(p1, k1, "public key differs from private key");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&p1)
        .expect("pubkey prints base64");
    assert_eq!(raw.len(), 32);
    assert!(
        pubkey("not base64 !!").is_err(),
        "garbage on stdin must be rejected"
    );
    assert!(pubkey("").is_err(), "empty stdin must be rejected");
}

// ------------------------------------------- harness self-checks (no daemon)

#[test]
fn harness_raw_path_capture_sees_plaintext() {
    if !require_root() {
        return;
    }
    let dc = dc_pair("e2e-harness-cap", true).expect("dc_pair");
    dc.route_lans_directly().expect("raw routes");
    let run = canary_run(&dc);
    assert!(
        run.udp_delivered >= 40,
        "UDP canaries delivered: {}",
        run.udp_delivered
    );
    assert!(run.tcp_delivered, "TCP canary delivered");
    // Without a tunnel, the canary crosses the underlay in clear: this is
    // what the no-plaintext test must not see.
    assert!(
        frames_with(&run.wan, &run.canary) >= 40,
        "capture on wan0 sees the plaintext canary"
    );
    assert!(
        frames_with(&run.lan, &run.canary) >= 40,
        "capture on lan0 sees the canary"
    );
}

#[test]
fn harness_raw_path_transfer_and_ping() {
    if !require_root() {
        return;
    }
    let dc = dc_pair("e2e-harness-xfer", false).expect("dc_pair");
    let lab: &Lab = &dc.lab;
    assert!(
        !e2e::ping_once(lab, &dc.host_a, &topo::HOST_B_V4.to_string()),
        "no LAN route before route_lans_directly"
    );
    dc.route_lans_directly().expect("raw routes");
    for dst in [topo::HOST_B_V4.to_string(), topo::HOST_B_V6.to_string()] {
        wait_ping(lab, &dc.host_a, &dst, PING_TIMEOUT).expect("raw ping");
    }
    for (dst, bytes) in [
        (IpAddr::from(topo::HOST_B_V4), 32 * MIB),
        (topo::HOST_B_V6.into(), 8 * MIB),
    ] {
        let t = tcp_transfer(lab, &dc.host_a, &dc.host_b, dst, bytes, 42).expect("raw transfer");
        assert!(t.intact(), "raw transfer to {dst}: {t:?}");
    }
    // The digest comparison can fail: different seeds give different digests.
    let t1 = tcp_transfer(lab, &dc.host_a, &dc.host_b, topo::HOST_B_V4.into(), MIB, 1).expect("t1");
    let t2 = tcp_transfer(lab, &dc.host_a, &dc.host_b, topo::HOST_B_V4.into(), MIB, 2).expect("t2");
    assert_ne!(t1.sent_digest, t2.sent_digest);
}
