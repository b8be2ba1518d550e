//! The server: one listener for control and data connections, one test at a time.
//! Each accepted connection gets a short-lived thread that reads its first bytes
//! (bounded in size and time) and either runs a test (a control `hello`), hands a
//! data connection to the running test (matching cookie), or answers with an error.
//! A bad client costs one thread for at most [`FIRST_READ_TIMEOUT`], never the server.
//!
//! Hardening ([`ServerOptions`]): control connections from outside `allow`
//! are closed unread; with a shared key the client must answer an HMAC
//! challenge ([`crate::engine::auth`]); a test over `max_duration`,
//! `max_rate` or the memory its interval statistics would need is refused
//! with the reason. Every data socket is tied to the control connection:
//! TCP data connections need the test's cookie *and* the control peer's
//! address; the UDP hello that names where reverse UDP goes, UDP data and
//! latency probes are only taken from that address (others are counted and
//! ignored), so the server cannot be aimed at a third party. Nothing of a
//! refused connection is kept (a counter), finished tests are kept as
//! summaries (the last [`MAX_RECORDS`]) and at most [`RECORD_QUEUE`] full
//! records wait for [`ServerHandle::next_record`].

use crate::engine::auth::{self, AuthKey};
use crate::engine::client::spawn_ctrl_reader;
use crate::engine::latency;
use crate::engine::proto::{
    self, Msg, ProtoError, ReceiverStreamReport, Role, SenderStreamReport, MAX_HELLO,
};
use crate::engine::session::Session;
use crate::engine::sock;
use crate::engine::spec::{Protocol, TestParams};
use crate::engine::stats::{TestClock, UdpHeader};
use crate::engine::streams::{self, Event, Flags, UdpPace, UdpTx};
use crate::engine::EngineError;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{BufReader, Read};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tunneld::prefix::Prefix;

/// How long a new connection may take to say what it is.
const FIRST_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the client may take to open its data connections (plus the idle
/// latency phase, which comes first).
const STREAMS_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections still saying who they are, at most: bounds threads under a flood.
const MAX_PENDING: usize = 64;
/// Finished tests kept as summaries for [`ServerHandle::records`]: enough to
/// look back at a session's runs, bounded however long the server lives.
pub const MAX_RECORDS: usize = 16;
/// Full records (with per-interval data) queued for
/// [`ServerHandle::next_record`]; beyond, records are dropped and counted,
/// so a server nobody reads from does not grow.
pub const RECORD_QUEUE: usize = 16;
/// Default longest test (warm-up, window and idle latency phase): an hour
/// covers any benchmark; a day of traffic is a request to refuse.
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(3600);
/// Default memory a test's interval statistics may need (see
/// [`stats_footprint`]): an hour of 1 s intervals on 64 UDP streams.
pub const DEFAULT_MAX_TEST_MEMORY: u64 = 64 << 20;
/// Estimated bytes per stream and interval for UDP: the receive state (32),
/// its snapshot (32), the byte counter and its copy (16) and the report's
/// JSON (about 100).
const UDP_BUCKET_BYTES: u64 = 192;
/// The same for TCP: counter, copy, the report's JSON (up to 20 digits).
const TCP_BUCKET_BYTES: u64 = 48;
/// Report JSON bytes per stream and interval (UDP carries four numbers).
const UDP_BUCKET_JSON: u64 = 110;
/// Report JSON bytes per stream and interval for TCP (one number).
const TCP_BUCKET_JSON: u64 = 21;

/// Limits and access control of a server (the defaults accept anyone).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Highest rate the server sends at, bit/s, all streams together: UDP
    /// tests asking for more (either direction) are refused; TCP streams the
    /// server sends are paced to share it (SO_MAX_PACING_RATE).
    pub max_rate: Option<u64>,
    /// Longest test (warm-up + measured time + idle latency phase).
    pub max_duration: Duration,
    /// Client networks allowed (empty: any).
    pub allow: Vec<Prefix>,
    /// Shared key the client must prove it holds.
    pub auth_key: Option<AuthKey>,
    /// Most memory one test's interval statistics may need.
    pub max_test_memory: u64,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_rate: None,
            max_duration: DEFAULT_MAX_DURATION,
            allow: Vec::new(),
            auth_key: None,
            max_test_memory: DEFAULT_MAX_TEST_MEMORY,
        }
    }
}

/// Bytes a test's interval statistics need on each side, and the size of
/// its largest report message: (memory, report).
pub fn stats_footprint(p: &TestParams) -> (u64, u64) {
    let buckets = TestClock::new(Instant::now(), p.omit, p.time, p.interval).n_buckets() as u64;
    let directions = if p.direction.client_sends() && p.direction.client_receives() {
        2
    } else {
        1
    };
    let streams = u64::from(p.parallel) * directions;
    let (mem, json) = match p.protocol {
        Protocol::Udp => (UDP_BUCKET_BYTES, UDP_BUCKET_JSON),
        Protocol::Tcp => (TCP_BUCKET_BYTES, TCP_BUCKET_JSON),
    };
    let cells = buckets.saturating_mul(streams);
    (
        cells.saturating_mul(mem),
        buckets
            .saturating_mul(u64::from(p.parallel))
            .saturating_mul(json),
    )
}

impl ServerOptions {
    /// Why `p` is over this server's limits, if it is (the message is sent
    /// to the client as is).
    pub fn check(&self, p: &TestParams) -> Result<(), String> {
        let idle = p.latency.as_ref().map(|l| l.idle).unwrap_or_default();
        let total = p.omit + p.time + idle;
        if total > self.max_duration {
            return Err(format!(
                "test of {:.1} s (warm-up, time and idle latency phase) exceeds this server's --max-duration of {:.1} s",
                total.as_secs_f64(),
                self.max_duration.as_secs_f64()
            ));
        }
        if let (Some(max), Protocol::Udp) = (self.max_rate, p.protocol) {
            let asked = p.rate.saturating_mul(u64::from(p.parallel));
            if asked > max {
                return Err(format!(
                    "UDP at {} bit/s x {} stream(s) = {asked} bit/s exceeds this server's --max-rate of {max} bit/s",
                    p.rate, p.parallel
                ));
            }
        }
        let (mem, report) = stats_footprint(p);
        if mem > self.max_test_memory {
            return Err(format!(
                "the interval statistics of this test would need {} MiB, above this server's limit of {} MiB: use a longer --interval, a shorter --time or fewer streams",
                mem.div_ceil(1 << 20),
                self.max_test_memory >> 20
            ));
        }
        if report > proto::MAX_MESSAGE as u64 {
            return Err(format!(
                "the per-interval report of this test would be about {} MiB, above the protocol's {} MiB message limit: use a longer --interval, a shorter --time or fewer streams",
                report.div_ceil(1 << 20),
                proto::MAX_MESSAGE >> 20
            ));
        }
        Ok(())
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|p| p.contains(ip))
    }
}

/// What the server counted (refused connections leave nothing else behind).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerCounters {
    /// Tests run (started, whatever their outcome).
    pub tests: u64,
    /// Control connections refused: bad hello, busy, invalid or over-limit
    /// parameters, failed authentication.
    pub refused: u64,
    /// Connections from outside `allow`, closed unread.
    pub not_allowed: u64,
    /// Failed authentications (wrong, missing or malformed answer).
    pub auth_failures: u64,
    /// TCP data connections with no matching test, a wrong cookie or from
    /// another address than the control connection.
    pub foreign_data_connections: u64,
    /// UDP hellos from another address than the control connection.
    pub foreign_udp_hellos: u64,
    /// Full records dropped because nobody read them ([`RECORD_QUEUE`]).
    pub records_dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    tests: AtomicU64,
    refused: AtomicU64,
    not_allowed: AtomicU64,
    auth_failures: AtomicU64,
    foreign_data_connections: AtomicU64,
    foreign_udp_hellos: AtomicU64,
    records_dropped: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ServerCounters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServerCounters {
            tests: g(&self.tests),
            refused: g(&self.refused),
            not_allowed: g(&self.not_allowed),
            auth_failures: g(&self.auth_failures),
            foreign_data_connections: g(&self.foreign_data_connections),
            foreign_udp_hellos: g(&self.foreign_udp_hellos),
            records_dropped: g(&self.records_dropped),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A v4-mapped IPv6 address as IPv4 (a dual-stack listener reports IPv4
/// clients that way); anything else unchanged.
pub fn unmap_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What the server saw of one test (also its `--json` output line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerRecord {
    /// Client control address.
    pub peer: String,
    /// Test start, seconds since the Unix epoch (0 if it never started).
    pub start_unix_s: f64,
    /// The parameters, if a valid hello arrived.
    pub params: Option<TestParams>,
    /// Why the test failed or was refused.
    pub error: Option<String>,
    /// What this server's receivers read, per stream (whole test).
    pub received: Vec<ReceiverStreamReport>,
    /// What this server's senders wrote, per stream.
    pub sent: Vec<SenderStreamReport>,
}

impl ServerRecord {
    /// Bytes read by this server over the whole test.
    pub fn bytes_received(&self) -> u64 {
        self.received.iter().map(|r| r.bytes).sum()
    }

    /// The record without its per-interval data (totals stay).
    pub fn summary(&self) -> ServerRecord {
        let mut r = self.clone();
        for s in &mut r.received {
            s.buckets = Vec::new();
            s.udp = None;
        }
        for s in &mut r.sent {
            s.buckets = Vec::new();
            s.retrans_samples = Vec::new();
        }
        r
    }
}

struct Active {
    cookie: [u8; 16],
    /// The control connection's address: data connections must come from it.
    peer: IpAddr,
    tx: Sender<Event>,
}

struct Shared {
    active: Mutex<Option<Active>>,
    /// Summaries of the last [`MAX_RECORDS`] tests.
    records: Mutex<VecDeque<ServerRecord>>,
    record_tx: Mutex<SyncSender<ServerRecord>>,
    shutdown: AtomicBool,
    pending: AtomicUsize,
    opts: ServerOptions,
    counters: Counters,
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    record_rx: Receiver<ServerRecord>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .finish()
    }
}

/// A server running on a background thread.
pub struct ServerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    record_rx: Receiver<ServerRecord>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Server {
    /// Listens on `addr` (port 0 picks a free port), default options.
    pub fn bind(addr: SocketAddr) -> Result<Server, EngineError> {
        Server::bind_with(addr, ServerOptions::default())
    }

    /// Listens on `addr` with `opts`.
    pub fn bind_with(addr: SocketAddr, opts: ServerOptions) -> Result<Server, EngineError> {
        let listener =
            TcpListener::bind(addr).map_err(|error| EngineError::Listen { addr, error })?;
        let (record_tx, record_rx) = sync_channel(RECORD_QUEUE);
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                active: Mutex::new(None),
                records: Mutex::new(VecDeque::with_capacity(MAX_RECORDS)),
                record_tx: Mutex::new(record_tx),
                shutdown: AtomicBool::new(false),
                pending: AtomicUsize::new(0),
                opts,
                counters: Counters::default(),
            }),
            record_rx,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves on a background thread.
    pub fn spawn(self) -> ServerHandle {
        let addr = self.local_addr();
        let shared = self.shared.clone();
        let listener = self.listener;
        let s2 = shared.clone();
        let thread = std::thread::spawn(move || accept_loop(listener, s2));
        ServerHandle {
            addr,
            shared,
            record_rx: self.record_rx,
            thread: Some(thread),
        }
    }
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Summaries (per-interval data left out) of the last [`MAX_RECORDS`]
    /// tests that ran; refused connections are not kept.
    pub fn records(&self) -> Vec<ServerRecord> {
        self.shared
            .records
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// What the server counted so far.
    pub fn counters(&self) -> ServerCounters {
        self.shared.counters.snapshot()
    }

    /// Waits for the next finished test.
    pub fn next_record(&self, timeout: Duration) -> Option<ServerRecord> {
        self.record_rx.recv_timeout(timeout).ok()
    }

    /// Stops accepting and joins the accept thread (a running test finishes first
    /// on its own thread).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        // The accept loop polls the flag (its listener may live in another
        // network namespace, where a wake-up connection could not reach it).
        self.shared.shutdown.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}

/// How often a waiting accept loop looks at the shutdown flag; also the
/// most a new connection waits to be accepted.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    if let Err(e) = listener.set_nonblocking(true) {
        log::warn!("listener: {e}");
    }
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if shared.shutdown.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
            Err(e) => {
                if shared.shutdown.load(Ordering::Relaxed) {
                    return;
                }
                log::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if shared.shutdown.load(Ordering::Relaxed) {
            return;
        }
        if !shared.opts.allowed(unmap_ip(peer.ip())) {
            bump(&shared.counters.not_allowed);
            log::debug!("{peer}: not in --allow, closed");
            continue;
        }
        if shared.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING {
            shared.pending.fetch_sub(1, Ordering::AcqRel);
            log::warn!("{peer}: too many connections in progress, dropped");
            continue;
        }
        let s = shared.clone();
        std::thread::spawn(move || handle_conn(s, stream, peer));
    }
}

fn handle_conn(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let mut pending = Some(());
    let mut done_pending = |shared: &Shared| {
        if pending.take().is_some() {
            shared.pending.fetch_sub(1, Ordering::AcqRel);
        }
    };
    let _ = stream.set_read_timeout(Some(FIRST_READ_TIMEOUT));
    let mut first = [0u8; 1];
    match stream.peek(&mut first) {
        Ok(1) => {}
        _ => return done_pending(&shared),
    }
    if first[0] == proto::DATA_MAGIC[0] {
        let mut pre = [0u8; proto::DATA_HELLO_LEN];
        let r = stream
            .read_exact(&mut pre)
            .map_err(ProtoError::from)
            .and_then(|_| proto::parse_data_hello(&pre));
        done_pending(&shared);
        match r {
            Ok((cookie, id, role)) => {
                let tx = match shared.active.lock() {
                    Ok(a) => a
                        .as_ref()
                        .filter(|a| a.cookie == cookie && a.peer == unmap_ip(peer.ip()))
                        .map(|a| a.tx.clone()),
                    Err(_) => None,
                };
                match tx {
                    Some(tx) => {
                        let _ = stream.set_read_timeout(None);
                        let _ = tx.send(Event::Data {
                            stream: id,
                            role,
                            sock: stream,
                        });
                    }
                    None => {
                        bump(&shared.counters.foreign_data_connections);
                        log::warn!(
                            "{peer}: data connection for no running test of that address, closed"
                        )
                    }
                }
            }
            Err(e) => {
                bump(&shared.counters.foreign_data_connections);
                log::warn!("{peer}: bad data connection: {e}")
            }
        }
        return;
    }
    let Ok(rclone) = stream.try_clone() else {
        return done_pending(&shared);
    };
    let mut reader = BufReader::new(rclone);
    let hello = proto::read_msg(&mut reader, MAX_HELLO);
    let hello = match (&hello, &shared.opts.auth_key) {
        (Ok(Msg::Hello { .. }), Some(key)) => match authenticate(&mut stream, &mut reader, key) {
            Ok(()) => hello,
            Err(why) => {
                done_pending(&shared);
                bump(&shared.counters.auth_failures);
                return refuse(&shared, &mut stream, peer, None, why);
            }
        },
        _ => hello,
    };
    done_pending(&shared);
    let (params, client) = match hello {
        Ok(Msg::Hello { params, client }) => (params, client),
        Ok(other) => {
            return refuse(
                &shared,
                &mut stream,
                peer,
                None,
                format!("expected hello, got {other:?}"),
            )
        }
        Err(e) => return refuse(&shared, &mut stream, peer, None, e.to_string()),
    };
    if let Err(why) = shared.opts.check(&params) {
        return refuse(&shared, &mut stream, peer, Some(params), why);
    }
    log::info!("{peer}: test from {client}");
    bump(&shared.counters.tests);
    let record = run_test(&shared, stream, reader, params, peer);
    publish(&shared, record, true);
}

/// Challenges the client to prove it holds `key` (within the first-read
/// timeout still set on the socket).
fn authenticate(
    stream: &mut TcpStream,
    reader: &mut BufReader<TcpStream>,
    key: &AuthKey,
) -> Result<(), String> {
    let nonce = auth::nonce().map_err(|e| format!("no randomness for the challenge: {e}"))?;
    proto::write_msg(
        stream,
        &Msg::Challenge {
            nonce: auth::hex(&nonce),
        },
    )
    .map_err(|e| format!("control connection: {e}"))?;
    match proto::read_msg(reader, MAX_HELLO) {
        Ok(Msg::Auth { mac }) if key.verify(&nonce, &mac) => Ok(()),
        Ok(Msg::Auth { .. }) => Err("authentication failed: wrong key".into()),
        Ok(Msg::Error { message }) => {
            Err(format!("authentication refused by the client: {message}"))
        }
        Ok(other) => Err(format!(
            "authentication required: expected auth, got {}",
            proto::msg_name(&other)
        )),
        Err(e) => Err(format!("authentication required: {e}")),
    }
}

fn refuse(
    shared: &Shared,
    stream: &mut TcpStream,
    peer: SocketAddr,
    params: Option<TestParams>,
    why: String,
) {
    log::warn!("{peer}: refused: {why}");
    bump(&shared.counters.refused);
    let _ = proto::write_msg(
        stream,
        &Msg::Error {
            message: why.clone(),
        },
    );
    let _ = stream.shutdown(std::net::Shutdown::Both);
    // Reported to whoever reads records (the CLI prints it), never kept.
    publish(
        shared,
        ServerRecord {
            peer: peer.to_string(),
            start_unix_s: 0.0,
            params,
            error: Some(why),
            received: vec![],
            sent: vec![],
        },
        false,
    );
}

/// Hands `record` to [`ServerHandle::next_record`] (dropped and counted if
/// [`RECORD_QUEUE`] are waiting); a test that ran (`keep`) is also kept as
/// a summary.
fn publish(shared: &Shared, record: ServerRecord, keep: bool) {
    if keep {
        if let Ok(mut r) = shared.records.lock() {
            if r.len() >= MAX_RECORDS {
                r.pop_front();
            }
            r.push_back(record.summary());
        }
    }
    if let Ok(tx) = shared.record_tx.lock() {
        if let Err(std::sync::mpsc::TrySendError::Full(_)) = tx.try_send(record) {
            bump(&shared.counters.records_dropped);
        }
    }
}

/// Clears the active-test slot when the test ends, however it ends.
struct SlotGuard<'a>(&'a Shared);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut a) = self.0.active.lock() {
            *a = None;
        }
    }
}

fn run_test(
    shared: &Shared,
    mut ctrl: TcpStream,
    reader: BufReader<TcpStream>,
    p: TestParams,
    peer: SocketAddr,
) -> ServerRecord {
    let mut record = ServerRecord {
        peer: peer.to_string(),
        start_unix_s: 0.0,
        params: Some(p.clone()),
        error: None,
        received: vec![],
        sent: vec![],
    };
    let fail = |ctrl: &mut TcpStream, record: &mut ServerRecord, why: String| {
        log::warn!("{peer}: {why}");
        let _ = proto::write_msg(
            ctrl,
            &Msg::Error {
                message: why.clone(),
            },
        );
        let _ = ctrl.shutdown(std::net::Shutdown::Both);
        record.error = Some(why);
    };
    if let Err(e) = p.validate() {
        fail(&mut ctrl, &mut record, e.to_string());
        return record;
    }
    if let Some(cc) = &p.congestion {
        if let Err(e) = sock::check_congestion(cc) {
            fail(&mut ctrl, &mut record, format!("on the server: {e}"));
            return record;
        }
    }
    let mut cookie = [0u8; 16];
    if let Err(e) = getrandom::getrandom(&mut cookie) {
        fail(
            &mut ctrl,
            &mut record,
            format!("no randomness for the cookie: {e}"),
        );
        return record;
    }
    let (tx, rx) = channel::<Event>();
    {
        let Ok(mut a) = shared.active.lock() else {
            fail(&mut ctrl, &mut record, "internal: lock poisoned".into());
            return record;
        };
        if a.is_some() {
            drop(a);
            fail(
                &mut ctrl,
                &mut record,
                "server busy: another test is running, try again later".into(),
            );
            return record;
        }
        *a = Some(Active {
            cookie,
            peer: unmap_ip(peer.ip()),
            tx: tx.clone(),
        });
    }
    let _slot = SlotGuard(shared);
    let test_id = proto::test_id(&cookie);
    let local_ip = match ctrl.local_addr() {
        Ok(a) => a.ip(),
        Err(e) => {
            fail(&mut ctrl, &mut record, format!("control socket: {e}"));
            return record;
        }
    };
    let udp = match p.protocol {
        Protocol::Udp => match sock::udp_bound(local_ip, p.window) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                fail(&mut ctrl, &mut record, format!("UDP socket: {e}"));
                return record;
            }
        },
        Protocol::Tcp => None,
    };
    let echo_stop = Arc::new(AtomicBool::new(false));
    let mut echo_port = None;
    if p.latency.is_some() {
        match UdpSocket::bind(SocketAddr::new(local_ip, 0)) {
            Ok(s) => {
                echo_port = s.local_addr().ok().map(|a| a.port());
                let stop = echo_stop.clone();
                let from = unmap_ip(peer.ip());
                std::thread::spawn(move || latency::echo_loop(s, from, test_id, stop));
            }
            Err(e) => {
                fail(&mut ctrl, &mut record, format!("echo socket: {e}"));
                return record;
            }
        }
    }
    let _echo = StopOnDrop(echo_stop);
    let accept = Msg::Accept {
        cookie: proto::cookie_hex(&cookie),
        udp_port: udp
            .as_ref()
            .and_then(|s| s.local_addr().ok())
            .map(|a| a.port()),
        echo_port,
    };
    if let Err(e) = proto::write_msg(&mut ctrl, &accept) {
        record.error = Some(format!("control connection: {e}"));
        return record;
    }
    let _ = ctrl.set_read_timeout(None);
    spawn_ctrl_reader(reader, tx.clone());

    let conns = match collect_streams(&rx, &p, udp.as_deref(), test_id, peer, shared) {
        Ok(c) => c,
        Err(e) => {
            fail(&mut ctrl, &mut record, e);
            return record;
        }
    };
    // Start: t0 here, then `start` to the client.
    let t0 = Instant::now();
    record.start_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let clock = TestClock::new(t0, p.omit, p.time, p.interval);
    let flags = Arc::new(Flags::default());
    let (mut data_socks, mut tcp_senders) = (Vec::new(), Vec::new());
    let (mut local_senders, mut local_receivers) = (0, 0);
    let len = p.length as usize;
    // --max-rate: the server's TCP senders share it, paced by the kernel.
    let server_tcp_senders = conns
        .tcp
        .iter()
        .filter(|(_, r, _)| *r == Role::ServerSends)
        .count() as u64;
    let pacing = shared
        .opts
        .max_rate
        .map(|r| r / 8 / server_tcp_senders.max(1));
    for (id, role, s) in conns.tcp {
        if let Ok(c) = s.try_clone() {
            data_socks.push(c);
        }
        let (f, t) = (flags.clone(), tx.clone());
        match role {
            Role::ServerSends => {
                if let Some(bytes_per_sec) = pacing {
                    if let Err(e) = sock::set_max_pacing_rate(&s, bytes_per_sec) {
                        log::warn!("{peer}: SO_MAX_PACING_RATE: {e}");
                    }
                }
                if let Ok(c) = s.try_clone() {
                    tcp_senders.push((id, c));
                }
                local_senders += 1;
                std::thread::spawn(move || streams::tcp_sender(id, s, len, clock, f, t));
            }
            Role::ClientSends => {
                local_receivers += 1;
                std::thread::spawn(move || streams::tcp_receiver(id, s, clock, f, t));
            }
        }
    }
    if let Some(u) = &udp {
        if p.direction.client_sends() {
            local_receivers += p.parallel as usize;
            let (s, f, t, n) = (u.clone(), flags.clone(), tx.clone(), p.parallel as usize);
            let from = Some(unmap_ip(peer.ip()));
            std::thread::spawn(move || streams::udp_receiver(s, from, n, test_id, clock, f, t));
        }
        if let Some(dest) = conns.udp_client {
            let pace = UdpPace {
                len,
                rate: p.rate,
                test_id,
            };
            for id in 0..p.parallel as u16 {
                local_senders += 1;
                let (f, t) = (flags.clone(), tx.clone());
                let utx = UdpTx {
                    sock: u.clone(),
                    dest: Some(dest),
                };
                std::thread::spawn(move || streams::udp_sender(id, utx, pace, clock, f, t));
            }
        }
    }
    drop(tx);
    if let Err(e) = proto::write_msg(&mut ctrl, &Msg::Start) {
        flags.abort.store(true, Ordering::Relaxed);
        record.error = Some(format!("control connection: {e}"));
        return record;
    }
    let writer = match ctrl.try_clone() {
        Ok(w) => w,
        Err(e) => {
            flags.abort.store(true, Ordering::Relaxed);
            record.error = Some(format!("control socket: {e}"));
            return record;
        }
    };
    let out = Session {
        params: &p,
        clock,
        ctrl: writer,
        events: &rx,
        flags: flags.clone(),
        local_senders,
        local_receivers,
        tcp_senders,
        data_socks,
        peer_sends: p.direction.client_sends(),
        peer_receives: p.direction.client_receives(),
    }
    .run();
    flags.abort.store(true, Ordering::Relaxed);
    let _ = ctrl.shutdown(std::net::Shutdown::Both);
    record.received = out.receivers;
    record.sent = out.senders;
    record.error = out.error;
    record
}

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

struct Conns {
    tcp: Vec<(u16, Role, TcpStream)>,
    udp_client: Option<SocketAddr>,
}

/// Waits for the data connections (TCP) or the client's UDP hello (UDP to the client).
fn collect_streams(
    rx: &Receiver<Event>,
    p: &TestParams,
    udp: Option<&UdpSocket>,
    test_id: u32,
    peer: SocketAddr,
    shared: &Shared,
) -> Result<Conns, String> {
    let extra = p.latency.as_ref().map(|l| l.idle).unwrap_or_default();
    let deadline = Instant::now() + STREAMS_TIMEOUT + extra;
    let mut want: Vec<(u16, Role)> = Vec::new();
    if p.protocol == Protocol::Tcp {
        for id in 0..p.parallel as u16 {
            if p.direction.client_sends() {
                want.push((id, Role::ClientSends));
            }
            if p.direction.client_receives() {
                want.push((id, Role::ServerSends));
            }
        }
    }
    let need_udp_hello = p.protocol == Protocol::Udp && p.direction.client_receives();
    let mut conns = Conns {
        tcp: Vec::new(),
        udp_client: None,
    };
    if let (true, Some(u)) = (need_udp_hello, udp) {
        let _ = u.set_read_timeout(Some(Duration::from_millis(20)));
    }
    let mut buf = [0u8; 2048];
    loop {
        if want.is_empty() && (!need_udp_hello || conns.udp_client.is_some()) {
            return Ok(conns);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "client did not open its data streams within {}s ({} TCP missing{})",
                (STREAMS_TIMEOUT + extra).as_secs(),
                want.len(),
                if need_udp_hello && conns.udp_client.is_none() {
                    ", no UDP hello"
                } else {
                    ""
                }
            ));
        }
        if let (true, None, Some(u)) = (need_udp_hello, conns.udp_client, udp) {
            if let Ok((n, from)) = u.recv_from(&mut buf) {
                if matches!(UdpHeader::decode(&buf[..n]), Some(h) if h.test_id == test_id && h.flags == UdpHeader::HELLO)
                {
                    // Reverse UDP goes where the hello came from: only
                    // the control connection's own address may name it.
                    if unmap_ip(from.ip()) == unmap_ip(peer.ip()) {
                        conns.udp_client = Some(from);
                    } else {
                        bump(&shared.counters.foreign_udp_hellos);
                        log::warn!(
                            "{peer}: UDP hello from {from}, not the control connection's address: ignored"
                        );
                    }
                    continue;
                }
            }
        }
        let wait = if need_udp_hello && conns.udp_client.is_none() {
            Duration::from_millis(1)
        } else {
            deadline - now
        };
        match rx.recv_timeout(wait) {
            Ok(Event::Data { stream, role, sock }) => {
                match want.iter().position(|w| *w == (stream, role)) {
                    Some(i) => {
                        want.swap_remove(i);
                        conns.tcp.push((stream, role, sock));
                    }
                    None => log::warn!("unexpected data connection {stream} {role:?}, closed"),
                }
            }
            Ok(Event::Ctrl(Ok(Msg::Error { message }))) => {
                return Err(format!("client aborted: {message}"))
            }
            Ok(Event::Ctrl(Ok(other))) => {
                return Err(format!("protocol error: unexpected {other:?} before start"))
            }
            Ok(Event::Ctrl(Err(e))) => return Err(e.to_string()),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err("internal: event queue closed".into())
            }
        }
    }
}
