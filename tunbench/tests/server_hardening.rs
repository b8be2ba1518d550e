//! `tunbench server` under hostile or careless clients, over loopback
//! (127.0.0.0/8 gives each "host" its own address): data sockets tied to
//! the control connection (no reflection), limits refused with a reason,
//! memory returned after a test, refused connections not retained,
//! shared-key authentication and `--allow`.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tunbench::engine::auth::AuthKey;
use tunbench::engine::proto::{self, Msg};
use tunbench::engine::stats::UdpHeader;
use tunbench::engine::{
    self, Direction, Protocol, Server, ServerHandle, ServerOptions, TestParams, TestSpec,
};

const BIN: &str = env!("CARGO_BIN_EXE_tunbench");

fn server(opts: ServerOptions) -> ServerHandle {
    Server::bind_with("127.0.0.1:0".parse().expect("addr"), opts)
        .expect("server binds")
        .spawn()
}

fn short(h: &ServerHandle) -> TestSpec {
    let mut s = TestSpec::new("127.0.0.1", h.local_addr().port());
    s.params.time = Duration::from_millis(500);
    s.params.interval = Duration::from_millis(250);
    s
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A control connection that said hello and read the answer.
struct RawControl {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl RawControl {
    fn hello(addr: SocketAddr, params: TestParams) -> (RawControl, Msg) {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut w = stream.try_clone().expect("clone");
        proto::write_msg(
            &mut w,
            &Msg::Hello {
                params,
                client: "raw".into(),
            },
        )
        .expect("hello");
        let answer = proto::read_msg(&mut reader, proto::MAX_MESSAGE).expect("answer");
        (RawControl { stream, reader }, answer)
    }
}

#[test]
fn reverse_udp_goes_only_to_the_control_connections_address() {
    let h = server(ServerOptions::default());
    let addr = h.local_addr();
    let params = TestParams {
        protocol: Protocol::Udp,
        direction: Direction::Reverse,
        length: 200,
        rate: 2_000_000,
        time: Duration::from_secs(1),
        ..Default::default()
    };
    let (mut ctrl, answer) = RawControl::hello(addr, params);
    let Msg::Accept {
        cookie, udp_port, ..
    } = answer
    else {
        panic!("not accepted: {answer:?}");
    };
    let cookie = proto::parse_cookie(&cookie).expect("cookie");
    let server_udp = SocketAddr::new(addr.ip(), udp_port.expect("udp port"));
    // The victim: another address, whose hello (spoofed by an attacker who
    // knows the cookie) must not make the server send to it.
    let victim = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    victim
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    for _ in 0..5 {
        victim
            .send_to(&UdpHeader::hello(proto::test_id(&cookie)), server_udp)
            .expect("send");
    }
    wait_until("foreign hellos counted", || {
        h.counters().foreign_udp_hellos >= 1
    });
    // A data connection with the right cookie from another address is refused.
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .expect("bind");
    s.connect(&addr.into()).expect("connect");
    let mut foreign: TcpStream = s.into();
    foreign
        .write_all(&proto::data_hello(&cookie, 0, proto::Role::ServerSends))
        .expect("write");
    wait_until("foreign data connection counted", || {
        h.counters().foreign_data_connections >= 1
    });
    // The real client says hello from the control connection's address.
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    client
        .send_to(&UdpHeader::hello(proto::test_id(&cookie)), server_udp)
        .expect("send");
    let mut w = ctrl.stream.try_clone().expect("clone");
    // `start`, then data arrives at the real client only.
    let start = proto::read_msg(&mut ctrl.reader, proto::MAX_MESSAGE).expect("start");
    assert_eq!(start, Msg::Start);
    let mut buf = [0u8; 2048];
    let (n, from) = client.recv_from(&mut buf).expect("data to the client");
    assert_eq!(from, server_udp);
    assert!(UdpHeader::decode(&buf[..n]).is_some_and(|h| h.flags == 0));
    let mut got = 0;
    while victim.recv_from(&mut buf).is_ok() {
        got += 1;
    }
    assert_eq!(got, 0, "the server sent {got} datagrams to the victim");
    let _ = proto::write_msg(
        &mut w,
        &Msg::Error {
            message: "done".into(),
        },
    );
    drop(ctrl);
}

#[test]
fn requests_over_the_limits_are_refused_with_the_reason_and_not_kept() {
    let h = server(ServerOptions {
        max_rate: Some(10_000_000),
        max_duration: Duration::from_secs(5),
        max_test_memory: 1 << 20,
        ..Default::default()
    });
    let run = |f: &dyn Fn(&mut TestSpec)| {
        let mut s = short(&h);
        f(&mut s);
        engine::run_client(&s)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "accepted".into())
    };
    let e = run(&|s| {
        s.params.protocol = Protocol::Udp;
        s.params.length = 1200;
        s.params.rate = 6_000_000;
        s.params.parallel = 2;
    });
    assert!(
        e.contains("12000000 bit/s exceeds this server's --max-rate of 10000000"),
        "{e}"
    );
    let e = run(&|s| s.params.time = Duration::from_secs(10));
    assert!(
        e.contains("exceeds this server's --max-duration of 5.0 s"),
        "{e}"
    );
    let e = run(&|s| {
        s.params.time = Duration::from_secs(4);
        s.params.interval = Duration::from_millis(100);
        s.params.parallel = 128;
        s.params.protocol = Protocol::Udp;
        s.params.length = 1200;
        s.params.rate = 10_000;
        s.params.direction = Direction::Bidir;
    });
    // 42 intervals x 256 streams x 192 B = 2 MiB > 1 MiB.
    assert!(
        e.contains("would need 2 MiB, above this server's limit of 1 MiB"),
        "{e}"
    );
    // Within the limits: runs (TCP pacing applies, the test completes).
    let r = engine::run_client(&short(&h)).expect("runs");
    assert!(r.complete, "{:?}", r.error);
    let c = h.counters();
    assert_eq!(c.tests, 1, "{c:?}");
    assert_eq!(c.refused, 3, "{c:?}");
    // Refusals are not retained; the test that ran is, as a summary.
    let kept = h.records();
    assert!(kept.iter().all(|r| r.error.is_none()), "{kept:?}");
    assert!(kept
        .iter()
        .all(|r| r.received.iter().all(|s| s.buckets.is_empty())));
}

#[test]
fn memory_limit_refuses_huge_interval_statistics() {
    let opts = ServerOptions {
        max_duration: Duration::from_secs(48 * 3600),
        ..Default::default()
    };
    let p = TestParams {
        protocol: Protocol::Udp,
        length: 1200,
        parallel: 128,
        time: Duration::from_secs(24 * 3600),
        interval: Duration::from_millis(100),
        ..Default::default()
    };
    let e = opts.check(&p).expect_err("refused");
    assert!(
        e.contains("MiB, above this server's limit of 64 MiB"),
        "{e}"
    );
    let (mem, _) = engine::server::stats_footprint(&p);
    assert!(mem > 16 << 30, "{mem}");
    // The same test with 1 s intervals for 10 minutes fits.
    let p = TestParams {
        time: Duration::from_secs(600),
        interval: Duration::from_secs(1),
        ..p
    };
    assert_eq!(opts.check(&p), Ok(()));
    // A report too big for one control message is refused even under a
    // generous memory cap.
    let big = ServerOptions {
        max_test_memory: 1 << 40,
        ..opts
    };
    let p = TestParams {
        time: Duration::from_secs(3600),
        ..p
    };
    let e = big.check(&p).expect_err("refused");
    assert!(e.contains("message limit"), "{e}");
}

#[test]
fn refused_connections_are_forgotten() {
    let h = server(ServerOptions::default());
    let addr = h.local_addr();
    for _ in 0..60 {
        let mut s = TcpStream::connect(addr).expect("connect");
        let _ = s.write_all(b"{\"v\":1,\"type\":\"start\"}\n");
        let mut line = String::new();
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = BufReader::new(s).read_line(&mut line);
        assert!(line.contains("expected hello"), "{line}");
    }
    // Nobody read the record queue: it stays bounded.
    let dropped = 60 - engine::server::RECORD_QUEUE as u64;
    wait_until("all refusals counted", || {
        let c = h.counters();
        c.refused == 60 && c.records_dropped == dropped
    });
    assert!(h.records().is_empty());
    let mut n = 0;
    while h.next_record(Duration::from_millis(10)).is_some() {
        n += 1;
    }
    assert_eq!(n, engine::server::RECORD_QUEUE);
}

#[test]
fn shared_key_authentication_right_wrong_and_missing() {
    let key = AuthKey::new(b"correct horse battery staple").expect("key");
    let h = server(ServerOptions {
        auth_key: Some(key.clone()),
        ..Default::default()
    });
    let mut s = short(&h);
    s.auth_key = Some(key);
    let r = engine::run_client(&s).expect("right key runs");
    assert!(r.complete, "{:?}", r.error);
    s.auth_key = Some(AuthKey::new(b"correct horse battery stapler").expect("key"));
    let e = engine::run_client(&s).expect_err("wrong key").to_string();
    assert!(e.contains("authentication failed: wrong key"), "{e}");
    s.auth_key = None;
    let e = engine::run_client(&s).expect_err("no key").to_string();
    assert!(e.contains("requires authentication"), "{e}");
    // A raw client that skips the answer and goes on: refused.
    let (mut ctrl, answer) = RawControl::hello(h.local_addr(), TestParams::default());
    assert!(matches!(answer, Msg::Challenge { .. }), "{answer:?}");
    proto::write_msg(&mut ctrl.stream, &Msg::Start).expect("write");
    let e = proto::read_msg(&mut ctrl.reader, proto::MAX_MESSAGE).expect("answer");
    assert!(
        matches!(&e, Msg::Error { message } if message.contains("expected auth")),
        "{e:?}"
    );
    wait_until("failures counted", || h.counters().auth_failures == 3);
    assert_eq!(h.counters().tests, 1);
    // A key-holding client against a server without a key still works.
    let open = server(ServerOptions::default());
    let mut s = short(&open);
    s.auth_key = Some(AuthKey::new(b"correct horse battery staple").expect("key"));
    assert!(engine::run_client(&s).expect("runs").complete);
}

#[test]
fn allow_list_closes_other_clients_unread() {
    let h = server(ServerOptions {
        allow: vec!["127.0.0.2/32".parse().expect("prefix")],
        ..Default::default()
    });
    let e = engine::run_client(&short(&h))
        .expect_err("not allowed")
        .to_string();
    assert!(e.contains("closed") || e.contains("control"), "{e}");
    assert_eq!(h.counters().not_allowed, 1);
    let mut s = short(&h);
    s.bind = Some(IpAddr::from([127, 0, 0, 2]));
    let r = engine::run_client(&s).expect("allowed client runs");
    assert!(r.complete, "{:?}", r.error);
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// The server binary's memory goes back down after a test that allocated
/// large interval statistics (and after its client vanished mid-test).
#[test]
fn memory_is_returned_after_a_test() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut child = Command::new(BIN)
        .args(["server", "--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--max-duration", "2h"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn server");
    let pid = child.id();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_until("server listening", || TcpStream::connect(addr).is_ok());
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    // Warm up allocator and threads with one small test first.
    let mut s = TestSpec::new("127.0.0.1", port);
    s.params.time = Duration::from_millis(300);
    assert!(engine::run_client(&s).expect("warm-up").complete);
    out.read_line(&mut line).expect("record line");
    std::thread::sleep(Duration::from_millis(300));
    let base = rss_kib(pid);
    // 30 min of 100 ms intervals on 8 UDP streams: ~18,000 intervals each.
    let params = TestParams {
        protocol: Protocol::Udp,
        length: 100,
        rate: 10_000,
        parallel: 8,
        time: Duration::from_secs(1800),
        interval: Duration::from_millis(100),
        ..Default::default()
    };
    let (ctrl, answer) = RawControl::hello(addr, params);
    assert!(matches!(answer, Msg::Accept { .. }), "{answer:?}");
    let mut peak = base;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    // The client vanishes mid-test.
    drop(ctrl);
    line.clear();
    out.read_line(&mut line).expect("record line");
    assert!(line.contains("failed"), "{line}");
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("server RSS: {base} KiB before, {peak} KiB during, {after} KiB after");
    assert!(
        peak >= base + 4 * 1024,
        "the test did not allocate: {base} -> {peak}"
    );
    assert!(
        after <= base + 2 * 1024,
        "memory not returned: {base} KiB before, {peak} during, {after} after"
    );
}

/// `--max-rate` paces the server's TCP senders: a reverse test over
/// loopback (many Gbit/s unpaced) stays near the cap.
#[test]
fn max_rate_paces_the_servers_tcp_senders() {
    let h = server(ServerOptions {
        max_rate: Some(80_000_000),
        ..Default::default()
    });
    let mut s = short(&h);
    s.params.direction = Direction::Reverse;
    s.params.parallel = 2;
    s.params.time = Duration::from_secs(1);
    s.params.omit = Duration::from_millis(300);
    let r = engine::run_client(&s).expect("runs");
    assert!(r.complete, "{:?}", r.error);
    let bps = r.directions[0].bits_per_second;
    eprintln!(
        "reverse TCP, 2 streams, --max-rate 80M: {:.1} Mbit/s",
        bps / 1e6
    );
    // Generous margin: pacing allows bursts, the window is short.
    assert!(bps < 160e6, "{bps} bit/s with --max-rate 80M");
    assert!(bps > 20e6, "{bps} bit/s: the test ran");
}
