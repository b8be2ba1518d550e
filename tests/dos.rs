//! The denial-of-service matrix on real packets: a tunneld pair in
//! namespaces, and an attacker on the WAN side (gw-a's namespace, raw
//! sockets with forged source addresses) sending, each for a few seconds at
//! a bounded rate (at most 5,000 packets per second):
//! - handshake initiations with a valid mac1 and random Noise bytes from
//!   thousands of spoofed sources, while gw-a restarts and must handshake
//!   through the flood;
//! - a captured genuine initiation, replayed;
//! - forged handshake responses to gw-a, from gw-b's address, while gw-a
//!   restarts;
//! - data frames for unknown session indexes from gw-a's address;
//! - QUIC connection attempts with certificates gw-b does not pin.
//!
//! For each, pings between the LANs keep crossing (or the tunnel comes back
//! within a couple of seconds of a restart) and the cost is visible in
//! `tunneld status`: public-key work done (`handshake_dh`), cookie replies
//! sent, drops by reason. Needs root (skips outside CI without it).

use e2e::{bin, ping_once, require_root, wait_ping, Capture, Side, TunnelLab};
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunbench::lab::systems::tunneld::PORT;
use tunbench::topo;
use tunneld::crypto::cookie::CookieJar;

/// Attack packets per second: far below what the lab links carry, well
/// above the handshake load meter's 50 per second.
const RATE: u64 = 5_000;
/// How long each attack runs.
const ATTACK: Duration = Duration::from_secs(3);
/// Handshake frame sizes (header, Noise, two MACs).
const INIT_LEN: usize = 148;
const RESPONSE_LEN: usize = 92;
/// The load meter's burst: public-key work a flood can cause before the
/// receiver is under load.
const METER_BURST: u64 = 20;

/// A raw IPv4 socket that writes whole packets (IPPROTO_RAW implies
/// IP_HDRINCL): the kernel fills in the header checksum and total length.
fn raw_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends one UDP datagram from `src` (any address) to `dst`.
fn send_spoofed(fd: &OwnedFd, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) {
    let mut p = vec![0u8; 28 + payload.len()];
    p[0] = 0x45;
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    p[20..22].copy_from_slice(&src.port().to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    // UDP checksum 0: none (allowed over IPv4).
    p[28..].copy_from_slice(payload);
    // SAFETY: an all-zero sockaddr_in is valid; the fields are set below.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_addr.s_addr = u32::from_ne_bytes(dst.ip().octets());
    // SAFETY: a live buffer and a sockaddr_in of the size given.
    unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            p.as_ptr().cast(),
            p.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
}

/// An attack running on a thread: `frame(seq)` gives each packet's source
/// and payload; [`RATE`] packets per second until stopped.
struct Attack {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Attack {
    fn start(
        tl: &TunnelLab,
        dst: SocketAddrV4,
        frame: impl Fn(u64) -> (SocketAddrV4, Vec<u8>) + Send + 'static,
    ) -> Attack {
        let fd = tl
            .lab()
            .run_in(&tl.dc.gw_a, raw_socket)
            .expect("enter gw-a")
            .expect("raw socket (needs root)");
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (st, n) = (Arc::clone(&stop), Arc::clone(&sent));
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut seq = 0u64;
            while !st.load(Ordering::Relaxed) {
                // Paced in 10 ms slices.
                let due = start.elapsed().as_millis() as u64 * RATE / 1000;
                while seq < due {
                    let (src, payload) = frame(seq);
                    send_spoofed(&fd, src, dst, &payload);
                    seq += 1;
                }
                n.store(seq, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Attack {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    /// Stops the attack; returns how many packets it sent.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Deterministic pseudo-random bytes.
fn fill(seed: u64, buf: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for b in buf {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

/// One of 16,000 spoofed sources on networks the lab does not use.
fn spoofed(seq: u64) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::new(198, 19, 100 + (seq % 64) as u8, (seq / 64 % 250) as u8 + 1),
        1024 + (seq % 20_000) as u16,
    )
}

/// A handshake message of type `ty` and `len` bytes with random content
/// and a valid mac1 for `to_public` (an attacker knows public keys).
fn mac1_valid(ty: u8, len: usize, seq: u64, to_public: &[u8; 32]) -> Vec<u8> {
    let mut f = vec![0u8; len];
    fill(seq, &mut f);
    f[0] = ty;
    f[1..4].fill(0);
    CookieJar::new(to_public).stamp(&mut f, Instant::now());
    f
}

/// The public key of `side` (from the other side's config).
fn public_of(tl: &TunnelLab, side: Side) -> [u8; 32] {
    let other = match side {
        Side::A => &tl.b,
        Side::B => &tl.a,
    };
    let text = other.config["peers"][0]["public_key"]
        .as_str()
        .expect("public key in config");
    *tunneld::keys::PublicKey::from_base64(text)
        .expect("public key parses")
        .as_bytes()
}

fn addr_of(side: Side) -> SocketAddrV4 {
    match side {
        Side::A => SocketAddrV4::new(topo::GW_A_WAN_V4, PORT),
        Side::B => SocketAddrV4::new(topo::GW_B_WAN_V4, PORT),
    }
}

/// A UDP pair, up, with reverse-path filtering off on gw-b and gw-a (so the
/// spoofed packets arrive, as they would from the internet).
fn pair(tag: &str) -> TunnelLab {
    let tl = TunnelLab::start(tag, false, |_, _| {}).expect("tunnel pair");
    for ns in [&tl.dc.gw_a, &tl.dc.gw_b] {
        for key in [
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.default.rp_filter",
        ] {
            tl.lab().sysctl(ns, key, "0").expect("rp_filter off");
        }
        let _ = tl.lab().sysctl(
            ns,
            &format!("net.ipv4.conf.{}.rp_filter", topo::WAN_IF),
            "0",
        );
    }
    up(&tl, Duration::from_secs(20));
    // The status snapshot trails by a timer tick or two: let the counters
    // of the start-up handshake settle before tests take baselines.
    std::thread::sleep(Duration::from_millis(300));
    tl
}

fn up(tl: &TunnelLab, within: Duration) -> Duration {
    match wait_ping(
        tl.lab(),
        &tl.dc.host_a,
        &topo::HOST_B_V4.to_string(),
        within,
    ) {
        Ok(d) => d,
        Err(e) => panic!("tunnel not up within {within:?}: {e:#}\n{}", tl.logs()),
    }
}

/// Pings host-a → host-b for `d` (one every 200 ms); returns (answered, sent).
fn pings_during(tl: &TunnelLab, d: Duration) -> (u32, u32) {
    let end = Instant::now() + d;
    let (mut ok, mut n) = (0, 0);
    while Instant::now() < end {
        n += 1;
        if ping_once(tl.lab(), &tl.dc.host_a, &topo::HOST_B_V4.to_string()) {
            ok += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    (ok, n)
}

fn counter(tl: &TunnelLab, side: Side, name: &str) -> u64 {
    tl.counter(side, name).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Restarts gw-a's daemon (a fresh handshake), returns how long until a
/// ping crossed again.
fn restart_a(tl: &mut TunnelLab) -> Duration {
    tl.stop_side(Side::A).expect("stop a");
    let t = Instant::now();
    tl.start_side(Side::A).expect("start a");
    up(tl, Duration::from_secs(15));
    t.elapsed()
}

#[test]
fn spoofed_initiation_flood_costs_no_dh_and_locks_nobody_out() {
    if !require_root() {
        return;
    }
    let mut tl = pair("dos-init");
    let b_public = public_of(&tl, Side::B);
    let dh0 = counter(&tl, Side::B, "handshake_dh");
    let attack = Attack::start(&tl, addr_of(Side::B), move |seq| {
        (spoofed(seq), mac1_valid(1, INIT_LEN, seq, &b_public))
    });
    std::thread::sleep(Duration::from_millis(500));
    // gw-a restarts mid-flood: its handshake must get through the flood.
    let back = restart_a(&mut tl);
    let (ok, n) = pings_during(&tl, ATTACK);
    let sent = attack.stop();
    let c = tl.counters(Side::B).expect("counters");
    let a_cookies = counter(&tl, Side::A, "cookie_replies_received");
    eprintln!(
        "flood of {sent} initiations: gw-a back after {back:?}, pings {ok}/{n}, gw-b \
         handshake_dh +{}, cookie_replies_sent {}, drop_handshake_ratelimit {}, \
         gw-a cookie_replies_received {a_cookies}",
        c["handshake_dh"] - dh0,
        c["cookie_replies_sent"],
        c["drop_handshake_ratelimit"],
    );
    assert!(sent >= 10_000, "the attack ran ({sent})");
    assert!(ok + 1 >= n, "pings kept crossing: {ok}/{n}");
    assert!(back < Duration::from_secs(6), "gw-a back after {back:?}");
    // Public-key work: the meter's burst, gw-a's handshakes, nothing per
    // spoofed packet.
    assert!(
        c["handshake_dh"] - dh0 <= METER_BURST + 5,
        "gw-b did public-key work per spoofed packet: {c:?}"
    );
    assert!(
        c["cookie_replies_sent"] >= sent * 8 / 10,
        "the flood was answered with cookies: {c:?}"
    );
    assert!(a_cookies >= 1, "gw-a had to prove its address");
}

#[test]
fn replayed_initiation_is_refused_cheaply() {
    if !require_root() {
        return;
    }
    let mut tl = pair("dos-replay");
    // Capture gw-a's initiation on the wire as it restarts.
    let cap = Capture::start(tl.lab(), &tl.dc.gw_b, topo::WAN_IF).expect("capture");
    restart_a(&mut tl);
    let frames = cap.stop().expect("captured").frames;
    let init = e2e::udp_payloads(&frames, addr_of(Side::A).into(), addr_of(Side::B).into())
        .into_iter()
        .find(|p| p.len() == INIT_LEN && p[0] == 1)
        .expect("gw-a's initiation captured");
    let invalid0 = counter(&tl, Side::B, "drop_handshake_invalid");
    let dh0 = counter(&tl, Side::B, "handshake_dh");
    let hs0 = counter(&tl, Side::B, "handshakes");
    let attack = Attack::start(&tl, addr_of(Side::B), move |_| {
        (addr_of(Side::A), init.clone())
    });
    let (ok, n) = pings_during(&tl, ATTACK);
    let sent = attack.stop();
    let c = tl.counters(Side::B).expect("counters");
    eprintln!(
        "{sent} replays: pings {ok}/{n}, gw-b drop_handshake_invalid +{}, handshake_dh +{}, \
         cookie_replies_sent {}",
        c["drop_handshake_invalid"] - invalid0,
        c["handshake_dh"] - dh0,
        c["cookie_replies_sent"]
    );
    assert!(sent >= 10_000, "the attack ran ({sent})");
    assert!(ok + 1 >= n, "pings kept crossing: {ok}/{n}");
    assert!(c["drop_handshake_invalid"] > invalid0, "replays refused");
    assert!(c["handshake_dh"] - dh0 <= METER_BURST + 5, "{c:?}");
    // A replay never creates a session (gw-a's keepalives may confirm
    // nothing new either).
    assert_eq!(c["handshakes"], hs0, "no session from a replay: {c:?}");
}

#[test]
fn forged_responses_do_not_stop_the_handshake() {
    if !require_root() {
        return;
    }
    let mut tl = pair("dos-resp");
    let a_public = public_of(&tl, Side::A);
    // Responses from gw-b's address to gw-a with a valid mac1 and random
    // indexes; the attacker also answers each initiation it sees below.
    let attack = Attack::start(&tl, addr_of(Side::A), move |seq| {
        (
            addr_of(Side::B),
            mac1_valid(2, RESPONSE_LEN, seq, &a_public),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let back = restart_a(&mut tl);
    let (ok, n) = pings_during(&tl, ATTACK);
    let sent = attack.stop();
    let c = tl.counters(Side::A).expect("counters");
    eprintln!(
        "{sent} forged responses: gw-a back after {back:?}, pings {ok}/{n}, gw-a \
         drop_unknown_index {}, handshake_dh {}, drop_handshake_invalid {}",
        c["drop_unknown_index"], c["handshake_dh"], c["drop_handshake_invalid"]
    );
    assert!(ok + 1 >= n, "pings kept crossing: {ok}/{n}");
    assert!(back < Duration::from_secs(6), "gw-a back after {back:?}");
    assert!(
        c["drop_unknown_index"] >= sent / 2,
        "forgeries for indexes gw-a never used are dropped by index: {c:?}"
    );
    assert!(
        c["handshake_dh"] <= 5,
        "no public-key work on forgeries: {c:?}"
    );
}

#[test]
fn data_for_unknown_indexes_triggers_at_most_one_handshake() {
    if !require_root() {
        return;
    }
    let tl = pair("dos-index");
    let hs0 = counter(&tl, Side::B, "handshakes");
    let unknown0 = counter(&tl, Side::B, "drop_unknown_index");
    let attack = Attack::start(&tl, addr_of(Side::B), |seq| {
        let mut f = vec![0u8; 120];
        fill(seq, &mut f);
        f[0] = 4;
        f[1..4].fill(0);
        (addr_of(Side::A), f)
    });
    let (ok, n) = pings_during(&tl, ATTACK);
    let sent = attack.stop();
    // The counters reach the status snapshot within a tick or two.
    std::thread::sleep(Duration::from_millis(200));
    let c = tl.counters(Side::B).expect("counters");
    eprintln!(
        "{sent} data frames for unknown indexes: pings {ok}/{n}, gw-b drop_unknown_index +{}, \
         handshakes +{}, triggered_handshakes_suppressed {}",
        c["drop_unknown_index"] - unknown0,
        c["handshakes"] - hs0,
        c["triggered_handshakes_suppressed"]
    );
    assert!(sent >= 10_000, "the attack ran ({sent})");
    assert!(ok + 1 >= n, "pings kept crossing: {ok}/{n}");
    assert!(c["drop_unknown_index"] - unknown0 >= sent * 9 / 10, "{c:?}");
    // 3 s of attack: one triggered handshake at most.
    assert!(c["handshakes"] - hs0 <= 1, "{c:?}");
    assert!(
        c["triggered_handshakes_suppressed"] >= sent * 9 / 10,
        "{c:?}"
    );
}

/// Certificates made with `tunneld gencert` in `dir`: (cert, key, pin).
fn gencert(dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let out = Command::new(bin("tunneld"))
        .args(["gencert", "--cert"])
        .arg(&c)
        .arg("--key")
        .arg(&k)
        .output()
        .expect("run tunneld gencert");
    assert!(out.status.success(), "gencert: {out:?}");
    (
        c,
        k,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

#[test]
fn quic_attempts_with_wrong_certificates_are_refused_and_logged_sparingly() {
    if !require_root() {
        return;
    }
    let dir = e2e::TempDir::new("dos-quic").expect("dir");
    let (a, b) = (gencert(dir.path(), "a"), gencert(dir.path(), "b"));
    let certs = [a.clone(), b.clone()];
    let tl = TunnelLab::start("dos-quic", false, move |side, cfg: &mut Value| {
        let (mine, theirs) = match side {
            Side::A => (&certs[0], &certs[1]),
            Side::B => (&certs[1], &certs[0]),
        };
        cfg["peers"][0]["transport"] = json!("quic");
        cfg["peers"][0]["quic"] = json!({ "spki_sha256": theirs.2 });
        cfg["quic"] = json!({
            "cert_file": mine.0.display().to_string(),
            "key_file": mine.1.display().to_string(),
            "idle_timeout": "15s",
            "keepalive": "2s"
        });
        cfg["interface"]["mtu"] = json!(1360);
        if side == Side::B {
            if let Some(p) = cfg["peers"][0].as_object_mut() {
                p.remove("endpoint");
            }
        }
    })
    .expect("quic pair");
    up(&tl, Duration::from_secs(20));
    // Three impostors in gw-a's namespace, each with a certificate of its
    // own, dial gw-b's QUIC endpoint over and over.
    let mut impostors = Vec::new();
    for i in 0..3u16 {
        let me = gencert(dir.path(), &format!("m{i}"));
        let key = e2e::genkey().expect("key");
        let key_file = dir.path().join(format!("m{i}.key25519"));
        e2e::write_key(&key_file, &key).expect("key file");
        let tun = tl.lab().ifname(&format!("m{i}")).expect("ifname");
        let cfg = json!({
            "kind": "tunnel",
            "interface": { "name": tun, "addresses": [format!("198.19.{}.1/24", 50 + i)], "mtu": 1360 },
            "listen": SocketAddr::from((topo::GW_A_WAN_V4, 52000 + 10 * i)).to_string(),
            "private_key_file": key_file.display().to_string(),
            "control_socket": dir.path().join(format!("m{i}.sock")).display().to_string(),
            "quic": {
                "cert_file": me.0.display().to_string(),
                "key_file": me.1.display().to_string(),
            },
            "peers": [{
                "name": "b",
                "public_key": tl.a.config["peers"][0]["public_key"],
                "endpoint": SocketAddr::from((topo::GW_B_WAN_V4, PORT)).to_string(),
                "allowed_prefixes": [format!("198.19.{}.0/24", 60 + i)],
                "transport": "quic",
                "quic": { "spki_sha256": b.2 }
            }]
        });
        let path = dir.path().join(format!("m{i}.yaml"));
        std::fs::write(&path, serde_norway::to_string(&cfg).expect("yaml")).expect("config");
        let mut cmd = Command::new(bin("tunneld"));
        cmd.arg("run").arg("--config").arg(&path);
        impostors.push(tl.lab().spawn(&tl.dc.gw_a, cmd).expect("impostor"));
    }
    let (ok, n) = pings_during(&tl, Duration::from_secs(6));
    let failures = tl
        .status(Side::B)
        .ok()
        .and_then(|s| s["transport"]["quic_handshake_failures"].as_u64())
        .unwrap_or(0);
    let log = tl.lab().log(tl.b.pid.expect("b runs"));
    let refused_lines = log.lines().filter(|l| l.contains("refused")).count();
    for pid in impostors {
        let _ = tl.lab().stop(pid);
    }
    eprintln!(
        "impostor QUIC attempts: pings {ok}/{n}, gw-b quic_handshake_failures {failures}, \
         {refused_lines} log lines about refusals"
    );
    assert!(ok + 1 >= n, "pings kept crossing: {ok}/{n}");
    assert!(failures >= 3, "attempts counted ({failures})");
    // Two rate-limited kinds of line (certificate, connection), 5 each a minute.
    assert!(
        refused_lines <= 2 * tunneld::lograte::LINES_PER_WINDOW as usize,
        "{refused_lines} lines:\n{log}"
    );
}
