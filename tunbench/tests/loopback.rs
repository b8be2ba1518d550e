//! End-to-end tests of the engine over loopback: real sockets, an in-process server
//! (whose own per-stream counts are the reference) or the `tunbench` binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tunbench::engine::{
    self, Direction, Flow, MeasuredBy, Protocol, Server, ServerHandle, TestResult, TestSpec,
};

const BIN: &str = env!("CARGO_BIN_EXE_tunbench");

fn server() -> ServerHandle {
    Server::bind("127.0.0.1:0".parse().expect("addr"))
        .expect("server binds")
        .spawn()
}

fn spec(h: &ServerHandle) -> TestSpec {
    let mut s = TestSpec::new("127.0.0.1", h.local_addr().port());
    s.params.time = Duration::from_secs(2);
    s.params.omit = Duration::from_millis(500);
    s.params.interval = Duration::from_millis(500);
    s
}

fn record(h: &ServerHandle) -> engine::ServerRecord {
    h.next_record(Duration::from_secs(20))
        .expect("server recorded the test")
}

/// The reported window figures must add up, and stay inside what was received.
fn check_consistent(d: &engine::DirectionResult, window_s: f64) {
    assert_eq!(d.measured_by, MeasuredBy::Receiver);
    assert!(d.bytes > 0, "no bytes measured");
    let iv: u64 = d
        .intervals
        .iter()
        .filter(|i| !i.omitted)
        .map(|i| i.bytes)
        .sum();
    assert_eq!(iv, d.bytes, "intervals do not add up to the total");
    let st: u64 = d.streams.iter().map(|s| s.bytes).sum();
    assert_eq!(st, d.bytes, "streams do not add up to the total");
    assert!(d.bytes <= d.receiver_bytes_total.expect("receiver total"));
    assert!((d.window_s - window_s).abs() < 1e-9);
    assert!((d.bits_per_second - d.bytes as f64 * 8.0 / window_s).abs() < 1e-3);
}

#[test]
fn tcp_one_and_two_streams_match_the_servers_count() {
    let h = server();
    for parallel in [1u32, 2] {
        let mut s = spec(&h);
        s.params.parallel = parallel;
        let r = engine::run_client(&s).expect("test runs");
        let rec = record(&h);
        assert!(r.complete, "{:?}", r.error);
        assert!(rec.error.is_none(), "{:?}", rec.error);
        assert_eq!(r.directions.len(), 1);
        let d = &r.directions[0];
        assert_eq!(d.flow, Flow::ClientToServer);
        assert_eq!(d.streams.len(), parallel as usize);
        assert_eq!(rec.received.len(), parallel as usize);
        check_consistent(d, 2.0);
        // The server's own count of bytes read is what the client reports...
        assert_eq!(d.receiver_bytes_total, Some(rec.bytes_received()));
        // ...and equals what the client wrote (counted on the other side): TCP loses nothing.
        assert_eq!(d.sender_bytes_total, Some(rec.bytes_received()));
        for (st, rs) in d.streams.iter().zip(&rec.received) {
            assert_eq!(st.receiver_bytes_total, Some(rs.bytes));
            let window: u64 = rs.buckets[1..rs.buckets.len() - 1].iter().sum();
            assert_eq!(
                st.bytes, window,
                "stream {} window bytes differ from the server's buckets",
                st.id
            );
        }
        assert_eq!(d.intervals.iter().filter(|i| i.omitted).count(), 1);
        assert_eq!(d.intervals.iter().filter(|i| !i.omitted).count(), 4);
    }
}

#[test]
fn tcp_reverse_is_measured_by_the_client_and_matches_the_servers_sends() {
    let h = server();
    let mut s = spec(&h);
    s.params.direction = Direction::Reverse;
    let r = engine::run_client(&s).expect("test runs");
    let rec = record(&h);
    assert!(r.complete, "{:?}", r.error);
    let d = &r.directions[0];
    assert_eq!(d.flow, Flow::ServerToClient);
    check_consistent(d, 2.0);
    let sent: u64 = rec.sent.iter().map(|x| x.bytes).sum();
    assert_eq!(d.receiver_bytes_total, Some(sent));
    assert!(
        d.streams[0].rtt_us.is_some(),
        "TCP_INFO from the server's sender"
    );
}

#[test]
fn udp_counts_match_the_servers_count() {
    let h = server();
    let mut s = spec(&h);
    s.params.protocol = Protocol::Udp;
    s.params.length = 1200;
    s.params.rate = 20_000_000;
    let r = engine::run_client(&s).expect("test runs");
    let rec = record(&h);
    assert!(r.complete, "{:?}", r.error);
    let d = &r.directions[0];
    check_consistent(d, 2.0);
    let t = d.udp_totals.as_ref().expect("udp totals");
    let server_packets: u64 = rec.received.iter().map(|x| x.packets).sum();
    assert_eq!(t.received_packets, Some(server_packets));
    assert_eq!(d.receiver_bytes_total, Some(rec.bytes_received()));
    let sent = t.sent_packets.expect("sender count");
    assert!(server_packets <= sent && server_packets > 0);
    assert_eq!(
        rec.bytes_received(),
        server_packets * 1200,
        "every datagram is 1200 bytes"
    );
    let u = d.udp.as_ref().expect("udp window");
    assert_eq!(u.packets * 1200, d.bytes);
    assert!(u.loss_percent >= 0.0 && u.loss_percent <= 100.0);
}

#[test]
fn bidir_udp_and_latency_report_both_ways() {
    let h = server();
    let mut s = spec(&h);
    s.params.protocol = Protocol::Udp;
    s.params.length = 1000;
    s.params.rate = 10_000_000;
    s.params.direction = Direction::Bidir;
    s.params.latency = Some(engine::LatencyParams {
        idle: Duration::from_millis(300),
        interval: Duration::from_millis(20),
        size: 64,
    });
    let r = engine::run_client(&s).expect("test runs");
    let rec = record(&h);
    assert!(r.complete, "{:?}", r.error);
    assert_eq!(r.directions.len(), 2);
    let sent_by_server: u64 = rec.sent.iter().map(|x| x.packets).sum();
    let back = r
        .directions
        .iter()
        .find(|d| d.flow == Flow::ServerToClient)
        .expect("reverse half");
    assert_eq!(
        back.udp_totals.as_ref().and_then(|t| t.sent_packets),
        Some(sent_by_server)
    );
    let l = r.latency.expect("latency");
    assert!(l.idle.expect("idle").samples > 0);
    let loaded = l.loaded.expect("loaded");
    assert!(loaded.samples > 0 && loaded.min_us <= loaded.p50_us && loaded.p99_us <= loaded.max_us);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn wait_listening(port: u16) {
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "server did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn killed_server_gives_nonzero_exit_and_partial_result() {
    let port = free_port();
    let mut srv = Command::new(BIN)
        .args(["server", "--bind", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts");
    wait_listening(port);
    let client = Command::new(BIN)
        .args([
            "client",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "20",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client starts");
    std::thread::sleep(Duration::from_millis(2500));
    srv.kill().expect("kill server");
    let _ = srv.wait();
    let started = Instant::now();
    let out = client.wait_with_output().expect("client ends");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "client hung after the server died"
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: TestResult = serde_json::from_slice(&out.stdout).expect("partial result is still JSON");
    assert!(!r.complete);
    assert!(r.error.is_some());
    let d = &r.directions[0];
    assert_eq!(
        d.measured_by,
        MeasuredBy::Sender,
        "receiver data died with the server"
    );
    assert!(
        d.window_s > 1.0 && d.window_s < 20.0,
        "window covers what ran: {}",
        d.window_s
    );
    assert!(d.bytes > 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("incomplete"));
}

#[test]
fn unreachable_server_is_a_clear_error() {
    let port = free_port(); // nothing listens there any more
    let out = Command::new(BIN)
        .args([
            "client",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "1",
            "--connect-timeout",
            "2s",
        ])
        .output()
        .expect("client runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach server 127.0.0.1:"), "{err}");
    assert!(err.contains("refused"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn impossible_options_are_refused_before_connecting() {
    for (args, needle) in [
        (vec!["--window", "0"], "--window 0"),
        (vec!["--mss", "10"], "--mss 10"),
        (vec!["--time", "0"], "--time"),
        (vec!["--time=-1s"], "non-negative"),
        (vec!["-P", "0"], "--parallel"),
        (vec!["--rate", "1G"], "--udp only"),
        (vec!["--udp", "--size", "10"], "--size 10"),
        (vec!["--window", "8Q"], "unknown unit"),
    ] {
        let out = Command::new(BIN)
            .args(["client", "127.0.0.1", "-p", "9"])
            .args(&args)
            .output()
            .expect("client runs");
        assert!(!out.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = s.write_all(bytes);
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line
}

#[test]
fn server_survives_garbage_and_keeps_serving() {
    let h = server();
    let addr = h.local_addr();
    let l = exchange(addr, b"{this is not json}\n");
    assert!(
        l.contains("\"type\":\"error\"") && l.contains("malformed"),
        "{l}"
    );
    let l = exchange(addr, b"{\"v\":99,\"type\":\"hello\"}\n");
    assert!(l.contains("unsupported protocol version 99"), "{l}");
    let mut big = vec![b'{'];
    big.extend(std::iter::repeat_n(b'a', 200_000));
    let l = exchange(addr, &big);
    assert!(l.contains("longer than"), "{l}");
    let l = exchange(addr, b"{\"v\":1,\"type\":\"start\"}\n");
    assert!(l.contains("expected hello"), "{l}");
    // Invalid parameters inside a well-formed hello.
    let p = engine::TestParams {
        window: Some(0),
        ..Default::default()
    };
    let hello = engine::proto::encode(&engine::proto::Msg::Hello {
        params: p,
        client: "test".into(),
    });
    let l = exchange(addr, &hello);
    assert!(l.contains("--window 0"), "{l}");
    // A data connection with a cookie for no test is closed, not a crash.
    let mut s = TcpStream::connect(addr).expect("connect");
    let _ = s.write_all(&engine::proto::data_hello(
        &[1; 16],
        0,
        engine::proto::Role::ClientSends,
    ));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(s.read(&mut [0u8; 16]).unwrap_or(0), 0, "closed");
    // Binary junk.
    let _ = exchange(addr, &[0xff, 0, 1, 2, 3, b'\n']);
    // Still serving.
    let mut sp = spec(&h);
    sp.params.time = Duration::from_millis(500);
    sp.params.omit = Duration::ZERO;
    let r = engine::run_client(&sp).expect("a good test still runs");
    assert!(r.complete);
}

#[test]
fn second_client_is_told_the_server_is_busy() {
    let h = server();
    let mut long = spec(&h);
    long.params.time = Duration::from_secs(3);
    let t = std::thread::spawn(move || engine::run_client(&long));
    std::thread::sleep(Duration::from_millis(1000));
    let mut short = spec(&h);
    short.params.time = Duration::from_millis(200);
    let e = engine::run_client(&short)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("busy"), "{e}");
    let first = t.join().expect("thread").expect("first test runs");
    assert!(first.complete);
}
