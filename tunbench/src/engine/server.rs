//! The server: one listener for control and data connections, one test at a time.
//! Each accepted connection gets a short-lived thread that reads its first bytes
//! (bounded in size and time) and either runs a test (a control `hello`), hands a
//! data connection to the running test (matching cookie), or answers with an error.
//! A bad client costs one thread for at most [`FIRST_READ_TIMEOUT`], never the server.

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
use std::io::{BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a new connection may take to say what it is.
const FIRST_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the client may take to open its data connections (plus the idle
/// latency phase, which comes first).
const STREAMS_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections still saying who they are, at most: bounds threads under a flood.
const MAX_PENDING: usize = 64;

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
}

struct Active {
    cookie: [u8; 16],
    tx: Sender<Event>,
}

struct Shared {
    active: Mutex<Option<Active>>,
    records: Mutex<Vec<ServerRecord>>,
    record_tx: Mutex<Sender<ServerRecord>>,
    shutdown: AtomicBool,
    pending: AtomicUsize,
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
    /// Listens on `addr` (port 0 picks a free port).
    pub fn bind(addr: SocketAddr) -> Result<Server, EngineError> {
        let listener =
            TcpListener::bind(addr).map_err(|error| EngineError::Listen { addr, error })?;
        let (record_tx, record_rx) = channel();
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                active: Mutex::new(None),
                records: Mutex::new(Vec::new()),
                record_tx: Mutex::new(record_tx),
                shutdown: AtomicBool::new(false),
                pending: AtomicUsize::new(0),
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

    /// All tests finished so far.
    pub fn records(&self) -> Vec<ServerRecord> {
        self.shared
            .records
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
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
        self.shared.shutdown.store(true, Ordering::Relaxed);
        // Wake the blocking accept.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() {
                [127, 0, 0, 1].into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
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

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
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
                        .filter(|a| a.cookie == cookie)
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
                    None => log::warn!("{peer}: data connection for no running test, closed"),
                }
            }
            Err(e) => log::warn!("{peer}: bad data connection: {e}"),
        }
        return;
    }
    let Ok(rclone) = stream.try_clone() else {
        return done_pending(&shared);
    };
    let mut reader = BufReader::new(rclone);
    let hello = proto::read_msg(&mut reader, MAX_HELLO);
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
    log::info!("{peer}: test from {client}");
    let record = run_test(&shared, stream, reader, params, peer);
    publish(&shared, record);
}

fn refuse(
    shared: &Shared,
    stream: &mut TcpStream,
    peer: SocketAddr,
    params: Option<TestParams>,
    why: String,
) {
    log::warn!("{peer}: refused: {why}");
    let _ = proto::write_msg(
        stream,
        &Msg::Error {
            message: why.clone(),
        },
    );
    let _ = stream.shutdown(std::net::Shutdown::Both);
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
    );
}

fn publish(shared: &Shared, record: ServerRecord) {
    if let Ok(mut r) = shared.records.lock() {
        r.push(record.clone());
    }
    if let Ok(tx) = shared.record_tx.lock() {
        let _ = tx.send(record);
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
                std::thread::spawn(move || latency::echo_loop(s, test_id, stop));
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

    let conns = match collect_streams(&rx, &p, udp.as_deref(), test_id) {
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
    for (id, role, s) in conns.tcp {
        if let Ok(c) = s.try_clone() {
            data_socks.push(c);
        }
        let (f, t) = (flags.clone(), tx.clone());
        match role {
            Role::ServerSends => {
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
            std::thread::spawn(move || streams::udp_receiver(s, n, test_id, clock, f, t));
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
                    conns.udp_client = Some(from);
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
