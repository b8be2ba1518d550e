//! tunneld as a service: reloads under traffic and with bad input, a real
//! Prometheus server scraping `/metrics`, `tunneld show` explaining a peer
//! without a session, the systemd unit (`systemd-analyze verify`), `tunneld
//! init`, and `tunneld check` on every shipped example.
//!
//! Root tests build their own `dc_pair` (skip without root unless CI=true).
//! Build first: `cargo build --release --workspace`.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use e2e::{bin, genkey, require_root, tcp_transfer, wait_for, write_key, Side, TempDir, TunnelLab};
use serde_json::{json, Value};
use tunbench::topo;

const MIB: u64 = 1 << 20;

/// A prefix no side routes, added and removed by the reloads below.
const EXTRA_PREFIX: &str = "198.18.99.0/24";

fn handshakes(tl: &TunnelLab, side: Side) -> u64 {
    tl.counter(side, "handshakes").expect("handshakes counter")
}

fn reloads(tl: &TunnelLab, side: Side, field: &str) -> u64 {
    let st = tl.status(side).expect("status");
    st["reloads"][field].as_u64().unwrap_or(0)
}

/// Writes `cfg` as side's config file (the daemon keeps running).
fn write(tl: &TunnelLab, side: Side, cfg: &Value) {
    let path = &tl.side(side).config_path;
    std::fs::write(path, serde_norway::to_string(cfg).expect("yaml")).expect("write config");
}

/// Whether gw-a's kernel routes `prefix` into the tunnel.
fn routed(tl: &TunnelLab, prefix: &str) -> bool {
    let out = tl
        .lab()
        .ip(&tl.dc.gw_a, &["route", "show", prefix, "dev", &tl.a.tun])
        .expect("ip route show");
    !out.trim().is_empty()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn ten_reloads_under_traffic_lose_nothing_and_keep_sessions() {
    if !require_root() {
        return;
    }
    let tl = TunnelLab::start("svc-reload", false, |_, _| {}).expect("start the pair");
    tl.wait_session();
    let (hs_a, hs_b) = (handshakes(&tl, Side::A), handshakes(&tl, Side::B));
    let pid = tl.a.pid.expect("gw-a runs");
    let mut cfg = tl.a.config.clone();
    let transfer = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            tcp_transfer(
                tl.lab(),
                &tl.dc.host_a,
                &tl.dc.host_b,
                topo::HOST_B_V4.into(),
                1024 * MIB,
                17,
            )
        });
        let mut during = 0;
        for i in 0..10u64 {
            if !sender.is_finished() {
                during += 1;
            }
            // Every reload changes the unchanged-key peer live: keepalive,
            // and a prefix added or removed (a kernel route with it).
            cfg["peers"][0]["keepalive"] = json!(if i % 2 == 0 { "6s" } else { "5s" });
            let prefixes = cfg["peers"][0]["allowed_prefixes"]
                .as_array_mut()
                .expect("prefix list");
            if i % 2 == 0 {
                prefixes.push(json!(EXTRA_PREFIX));
            } else {
                prefixes.pop();
            }
            write(&tl, Side::A, &cfg);
            if i % 2 == 0 {
                let out = tl.tunneld(Side::A, "reload").expect("tunneld reload");
                assert!(out.status.success(), "reload {i}: {}", text(&out));
                assert!(
                    String::from_utf8_lossy(&out.stdout).contains("changed b"),
                    "reload {i}: {}",
                    text(&out)
                );
                assert!(routed(&tl, EXTRA_PREFIX), "route added by reload {i}");
            } else {
                // SAFETY: kill(2) on the daemon this test started, by PID.
                let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
                assert_eq!(rc, 0, "SIGHUP to {pid}");
                wait_for(Duration::from_secs(10), "SIGHUP reload applied", || {
                    Ok((reloads(&tl, Side::A, "applied") == i + 1).then_some(()))
                })
                .expect("SIGHUP reload");
                assert!(!routed(&tl, EXTRA_PREFIX), "route removed by reload {i}");
            }
        }
        eprintln!("{during} of 10 reloads started while the transfer ran");
        assert!(during >= 1, "the transfer ended before the first reload");
        sender.join().expect("sender thread")
    })
    .expect("transfer");
    assert!(
        transfer.intact(),
        "sent {} received {} digests equal {}",
        transfer.sent,
        transfer.received,
        transfer.sent_digest == transfer.received_digest
    );
    assert_eq!(reloads(&tl, Side::A, "applied"), 10);
    assert_eq!(reloads(&tl, Side::A, "refused"), 0);
    assert_eq!(
        (handshakes(&tl, Side::A), handshakes(&tl, Side::B)),
        (hs_a, hs_b),
        "no session was renewed by the reloads"
    );
    let st = tl.status(Side::A).expect("status");
    assert_eq!(st["peers"][0]["keepalive_secs"], json!(5));
    assert_eq!(
        tl.lab().try_wait(pid).expect("try_wait"),
        None,
        "still the same daemon"
    );
}

#[test]
fn reload_refuses_bad_files_and_removes_and_adds_peers() {
    if !require_root() {
        return;
    }
    let tl = TunnelLab::start("svc-refuse", false, |_, _| {}).expect("start the pair");
    tl.wait_session();
    let good = tl.a.config.clone();
    let pid = tl.a.pid.expect("gw-a runs");

    // A file that fails its checks: the daemon refuses it, naming the
    // file, line and field; nothing changes.
    let path = tl.a.config_path.clone();
    let mut invalid = good.clone();
    invalid["peers"][0]["allowed_prefixes"][1] = json!("198.18.2.1/24");
    write(&tl, Side::A, &invalid);
    let out = tl.tunneld(Side::A, "reload").expect("reload");
    assert!(!out.status.success(), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("reload refused"), "{msg}");
    assert!(msg.contains(&format!("{}:", path.display())), "{msg}");
    assert!(msg.contains("has host bits set"), "{msg}");
    // Broken YAML: the client cannot even find the socket and says so.
    let yaml = serde_norway::to_string(&good).expect("yaml");
    std::fs::write(&path, yaml.replacen("interface:", "interface: [", 1)).expect("write");
    let out = tl.tunneld(Side::A, "reload").expect("reload");
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(msg.contains("was not asked and is unchanged"), "{msg}");
    assert!(msg.contains(&format!("{}:", path.display())), "{msg}");
    // A change only a restart applies: refused, naming the field.
    let mut moved = good.clone();
    moved["listen"] = json!("198.18.0.1:51999");
    write(&tl, Side::A, &moved);
    let out = tl.tunneld(Side::A, "reload").expect("reload");
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(
        msg.contains("needs a restart") && msg.contains("listen changed"),
        "{msg}"
    );
    assert_eq!(reloads(&tl, Side::A, "refused"), 2);
    tl.wait_session();
    assert!(routed(&tl, topo::LAN_B_V4));

    // Remove the peer: its routes and session go; B's frames are counted.
    let mut none = good.clone();
    none["peers"] = json!([]);
    write(&tl, Side::A, &none);
    let out = tl.tunneld(Side::A, "reload").expect("reload");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("removed b"), "{}", text(&out));
    assert!(
        !routed(&tl, topo::LAN_B_V4),
        "route of the removed peer is gone"
    );
    let st = tl.status(Side::A).expect("status");
    assert_eq!(st["peers"], json!([]), "{st}");
    let unknown = tl.counter(Side::A, "drop_unknown_index").expect("counter");
    // B still holds its session and sends into it.
    let _ = e2e::ping_once(tl.lab(), &tl.dc.host_b, &topo::HOST_A_V4.to_string());
    tl.wait_counter_above(
        Side::A,
        "drop_unknown_index",
        unknown,
        Duration::from_secs(5),
    )
    .expect("frames of the removed peer are dropped and counted");

    // Add it back: reachable again without a restart.
    write(&tl, Side::A, &good);
    let out = tl.tunneld(Side::A, "reload").expect("reload");
    assert!(text(&out).contains("added b"), "{}", text(&out));
    tl.wait_session();
    assert!(routed(&tl, topo::LAN_B_V4));
    assert_eq!(tl.lab().try_wait(pid).expect("try_wait"), None);
    assert_eq!(reloads(&tl, Side::A, "applied"), 2);
    let show = tl.tunneld(Side::A, "show").expect("show");
    let show = text(&show);
    for want in [
        "interface: ",
        "peer: b (udp)",
        "latest handshake: ",
        "reloads: 2 applied, 2 refused",
    ] {
        assert!(show.contains(want), "{want:?} missing in\n{show}");
    }
}

#[test]
fn show_explains_a_key_mismatch() {
    if !require_root() {
        return;
    }
    // gw-a lists a wrong key for gw-b: its initiations go unanswered, and
    // gw-b's arrive with a key gw-a does not know.
    let wrong = e2e::pubkey(&genkey().expect("genkey")).expect("pubkey");
    let tl = TunnelLab::start("svc-show", false, |side, cfg| {
        if side == Side::A {
            cfg["peers"][0]["public_key"] = json!(wrong);
        }
    })
    .expect("start the pair");
    let st = wait_for(
        Duration::from_secs(20),
        "two unanswered initiations and a refusal",
        || {
            let st = tl.status(Side::A)?;
            let p = &st["peers"][0];
            let ready = p["initiations_unanswered"].as_u64() >= Some(2) && p["refusal"].is_string();
            Ok(ready.then_some(st))
        },
    )
    .expect("gw-a explains its peer");
    assert_eq!(st["peers"][0]["session"], json!(false));
    let show = text(&tl.tunneld(Side::A, "show").expect("show"));
    assert!(show.contains("session: none: "), "{show}");
    assert!(show.contains("initiations unanswered since "), "{show}");
    assert!(
        show.contains("sent an initiation with a public key this config does not list"),
        "{show}"
    );
    assert!(
        show.contains("handshake invalid"),
        "non-zero drops shown: {show}"
    );
    let pid = tl.a.pid.expect("gw-a runs");
    wait_for(Duration::from_secs(15), "the log explains the peer", || {
        Ok(tl
            .lab()
            .log(pid)
            .contains("peer b: 3 initiations unanswered since")
            .then_some(()))
    })
    .expect("info-level log line");
}

/// Runs `promtool query instant` against the server in `ns`; the value of
/// the first sample, if any.
fn prom_query(tl: &TunnelLab, ns: &str, expr: &str) -> anyhow::Result<Option<f64>> {
    let out = tl.lab().exec(
        ns,
        "promtool",
        &["query", "instant", "http://127.0.0.1:19090", expr],
    )?;
    if !out.status.success() {
        return Ok(None);
    }
    let s = String::from_utf8_lossy(&out.stdout);
    // `name{labels} => 1234 @[1700000000.123]`
    Ok(s.lines()
        .find_map(|l| l.split("=> ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok()))
}

/// Reads sd_notify datagrams from `sock` until one contains `want`;
/// returns everything read so far.
fn notified(sock: &UnixDatagram, seen: &mut String, want: &str, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    while !seen.contains(want) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
    }
    true
}

#[test]
fn systemd_hears_ready_watchdog_reloading_and_stopping() {
    if !require_root() {
        return;
    }
    let mut tl = TunnelLab::start("svc-notify", false, |_, _| {}).expect("start the pair");
    // Restart gw-a as systemd would run it: with a notify socket and a
    // watchdog of 400 ms (pings every 200 ms).
    let path = tl.lab().dir().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    tl.stop_side(Side::A).expect("stop gw-a");
    tl.a.env = vec![
        ("NOTIFY_SOCKET".into(), path.display().to_string()),
        ("WATCHDOG_USEC".into(), "400000".into()),
    ];
    let pid = tl.start_side(Side::A).expect("restart gw-a");
    let mut seen = String::new();
    assert!(
        notified(&sock, &mut seen, "READY=1", Duration::from_secs(5)),
        "{seen}"
    );
    assert!(seen.contains("STATUS=tunnel "), "{seen}");
    seen.clear();
    // At least three watchdog pings in a second and a half.
    let start = std::time::Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        let mut one = String::new();
        if notified(&sock, &mut one, "WATCHDOG=1", Duration::from_millis(300)) {
            pings += 1;
        }
    }
    assert!(pings >= 3, "{pings} watchdog pings in 1.5 s");
    // SIGHUP: RELOADING=1, then READY=1 again.
    // SAFETY: kill(2) on the daemon this test started, by PID.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) }, 0);
    assert!(
        notified(&sock, &mut seen, "RELOADING=1", Duration::from_secs(5)),
        "{seen}"
    );
    seen.clear();
    assert!(
        notified(&sock, &mut seen, "READY=1", Duration::from_secs(5)),
        "{seen}"
    );
    tl.stop_side(Side::A).expect("stop gw-a");
    assert!(
        notified(&sock, &mut seen, "STOPPING=1", Duration::from_secs(5)),
        "{seen}"
    );
}

#[test]
fn a_real_prometheus_scrapes_the_byte_counters() {
    if !require_root() {
        return;
    }
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true and prometheus is not installed (apt-get install prometheus)");
        }
        eprintln!("SKIPPED: prometheus is not installed (apt-get install prometheus)");
        return;
    }
    let tl = TunnelLab::start("svc-prom", false, |side, cfg| {
        if side == Side::A {
            cfg["metrics"] = json!({ "listen": "127.0.0.1:19820" });
        }
    })
    .expect("start the pair");
    tl.wait_session();
    let dir = tl.lab().dir().to_path_buf();
    let conf = dir.join("prometheus.yml");
    std::fs::write(
        &conf,
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n\
         scrape_configs:\n  - job_name: tunneld\n    \
         static_configs: [{targets: ['127.0.0.1:19820']}]\n",
    )
    .expect("prometheus.yml");
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", conf.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg("--web.listen-address=127.0.0.1:19090");
    let prom = tl.lab().spawn(&tl.dc.gw_a, cmd).expect("start prometheus");
    // Traffic through the tunnel, so the counters move.
    let t = tcp_transfer(
        tl.lab(),
        &tl.dc.host_a,
        &tl.dc.host_b,
        topo::HOST_B_V4.into(),
        8 * MIB,
        3,
    )
    .expect("transfer");
    assert!(t.intact());
    let iface = &tl.a.tun;
    let tx_expr = format!("tunneld_tx_bytes_total{{interface=\"{iface}\"}}");
    let tx = wait_for(
        Duration::from_secs(40),
        "prometheus to scrape tunneld",
        || {
            if let Some(st) = tl.lab().try_wait(prom)? {
                bail!("prometheus exited ({st}): {}", tl.lab().log(prom));
            }
            Ok(prom_query(&tl, &tl.dc.gw_a, &tx_expr)?.filter(|v| *v >= (8 * MIB) as f64))
        },
    )
    .with_context(|| tl.lab().log(prom))
    .expect("tx bytes through Prometheus");
    let status_tx = tl.counter(Side::A, "tx_bytes").expect("status tx_bytes") as f64;
    assert!(tx <= status_tx, "scraped {tx} > status {status_tx}");
    let up = prom_query(&tl, &tl.dc.gw_a, "up{job=\"tunneld\"}").expect("query up");
    assert_eq!(up, Some(1.0));
    let rx_expr =
        format!("tunneld_peer_bytes_total{{interface=\"{iface}\",peer=\"b\",direction=\"rx\"}}");
    let rx = prom_query(&tl, &tl.dc.gw_a, &rx_expr).expect("query rx");
    assert!(rx.is_some_and(|v| v > 0.0), "per-peer rx scraped: {rx:?}");
    tl.lab().stop(prom).expect("stop prometheus");
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tunneld/dist/tunneld@.service");
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true and systemd-analyze is missing");
        }
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    };
    assert!(probe.status.success());
    let dir = TempDir::new("unit").expect("temp dir");
    let text = std::fs::read_to_string(&unit).expect("unit file");
    // verify checks that ExecStart's program exists: point it at this build.
    let text = text.replace("/usr/bin/tunneld", &bin("tunneld").display().to_string());
    let instance = dir.path().join("tunneld@lab.service");
    std::fs::write(&instance, &text).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&instance)
        .output()
        .expect("systemd-analyze verify");
    let said = text_of(&out);
    assert!(out.status.success(), "{said}");
    // Unknown keys and bad values are only warnings: none may appear.
    assert!(!said.contains("tunneld@lab.service"), "{said}");
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "Restart=on-failure",
    ] {
        assert!(text.contains(needed), "{needed} missing");
    }
    // And the check does catch a mistake.
    std::fs::write(&instance, text.replace("WatchdogSec=", "WatchdogSecs=")).expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&instance)
        .output()
        .expect("systemd-analyze verify");
    assert!(text_of(&out).contains("Unknown key"), "{}", text_of(&out));
}

fn text_of(out: &std::process::Output) -> String {
    text(out)
}

fn tunneld(args: &[&str]) -> std::process::Output {
    Command::new(bin("tunneld"))
        .args(args)
        .output()
        .expect("run tunneld")
}

#[test]
fn every_shipped_example_checks_with_generated_keys() {
    let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let mut checked = 0;
    for entry in std::fs::read_dir(&profiles).expect("profiles/") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        if !(name.starts_with("tunnel-") && name.ends_with(".yaml")) {
            continue;
        }
        let dir = TempDir::new("example").expect("temp dir");
        let copy = dir.path().join(&name);
        std::fs::copy(&path, &copy).expect("copy example");
        write_key(&dir.path().join("gw-a.key"), &genkey().expect("genkey")).expect("key");
        let yaml = std::fs::read_to_string(&copy).expect("read");
        if yaml.contains("cert_file:") {
            let cert = dir.path().join("gw-a.crt").display().to_string();
            let key = dir.path().join("gw-a.crt.key").display().to_string();
            let out = tunneld(&["gencert", "--cert", &cert, "--key", &key]);
            assert!(out.status.success(), "{}", text(&out));
        }
        let out = tunneld(&["check", "--config", &copy.display().to_string()]);
        assert!(out.status.success(), "{name}: {}", text(&out));
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} tunnel examples found");
}

#[test]
fn init_writes_a_key_and_a_config_that_checks() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("init").expect("temp dir");
    let d = dir.path().join("etc");
    let ds = d.display().to_string();
    let out = tunneld(&["init", "tun-x", "--address", "198.19.0.1/24", "--dir", &ds]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    let public = said
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .expect("public key printed");
    let key = std::fs::read_to_string(d.join("tun-x.key")).expect("key file");
    let derived = e2e::pubkey(key.trim()).expect("pubkey");
    assert_eq!(public, derived);
    let mode = std::fs::metadata(d.join("tun-x.key"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let cfg = d.join("tun-x.yaml").display().to_string();
    let out = tunneld(&["check", "--config", &cfg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no peers yet"), "{}", text(&out));
    // Never overwrites, and bad arguments say what is wrong.
    let again = tunneld(&["init", "tun-x", "--address", "198.19.0.1/24", "--dir", &ds]);
    assert!(!again.status.success());
    assert!(text(&again).contains("exists"), "{}", text(&again));
    let bad = tunneld(&[
        "init",
        "this-name-is-far-too-long",
        "--address",
        "198.19.0.1/24",
        "--dir",
        &ds,
    ]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("name"), "{}", text(&bad));
    let bad = tunneld(&[
        "init",
        "tun-y",
        "--address",
        "198.19.0.300/24",
        "--dir",
        &ds,
    ]);
    assert!(text(&bad).contains("--address"), "{}", text(&bad));
    assert!(
        !d.join("tun-y.key").exists(),
        "nothing written on a bad argument"
    );
}

#[test]
fn errors_print_each_cause_once() {
    let dir = TempDir::new("chain").expect("temp dir");
    let cfg = dir.path().join("t.yaml");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/tunnel-example.yaml");
    std::fs::copy(example, &cfg).expect("copy");
    // The key file gw-a.key does not exist.
    let out = tunneld(&["check", "--config", &cfg.display().to_string()]);
    assert!(!out.status.success());
    let msg = text(&out);
    assert_eq!(msg.matches("No such file or directory").count(), 1, "{msg}");
    assert!(msg.contains("gw-a.key"), "{msg}");
}
