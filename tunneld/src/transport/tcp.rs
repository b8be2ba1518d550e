//! Frames over TCP, for paths that block UDP: one connection per peer
//! carrying length-prefixed frames ([`super::framing`]), our AEAD framing
//! inside. The side that knows the peer's endpoint dials it and redials with
//! backoff (100 ms doubling to 5 s) when the connection drops; the other side
//! accepts. Frames received on a dialed connection come "from" the dialed
//! endpoint; on an accepted one, from the connection's remote address (the
//! protocol core follows a peer that moves, after authenticating it).
//!
//! Threads: one acceptor, one dialer per dialed peer (it also reads its
//! connection), one reader per accepted connection and one writer per
//! connection. The data path never blocks: a send copies the frames into the
//! connection's bounded queue or, when it is full, drops them (counted), like
//! a full UDP socket buffer would.
//!
//! Bounds: accepted connections are *pending* until the protocol core
//! accepts a frame from one ([`Transport::authenticated`]); pending ones
//! have their own budget, per-source limits, eviction of the oldest and a
//! deadline ([`super::admission`]), and may queue at most
//! [`PENDING_FRAMES`] frames before their reads pause. Dialed and
//! authenticated connections are never refused or evicted for them.
//! [`framing::MAX_FRAME`] per frame, [`SEND_QUEUE`] batches queued per
//! connection, one read buffer per connection. A zero or oversized length
//! prefix closes that connection and counts (`tcp_bad_length`); an
//! authenticated connection that received no frame for [`IDLE_TIMEOUT`] is
//! closed (a trickle of bytes that never completes a frame does not count).

use super::admission::{Admission, Verdict};
use super::framing::{self, Decoder};
use super::inbox::Inbox;
use super::{bump, unmap, Received, Stats, Transport, TransportCounters};
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
use std::collections::HashMap;
use std::io::{self, IoSliceMut, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Frames a pending connection may queue for the protocol core before it
/// has authenticated; then its reads pause (TCP pushes back) until it
/// authenticates or its deadline closes it. A peer's first frames are one
/// handshake message, or a few data frames after a redial with a live
/// session; 64 leaves room for those while a flood of pending connections
/// cannot fill the shared receive queue.
pub const PENDING_FRAMES: usize = 64;
/// Send batches queued per connection before sends are dropped.
pub const SEND_QUEUE: usize = 256;
/// A connection that received nothing for this long is closed (tunnel
/// keepalives and rekeys keep a live one busy).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(180);
/// First redial delay; doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest redial delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long one dial attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Blocking calls wake this often to see the shutdown flag.
const POLL: Duration = Duration::from_millis(200);
/// Bytes read per call.
const READ_BUF: usize = 64 * 1024;

/// The connection to use for one peer address: the newest live one.
#[derive(Clone)]
struct Conn {
    id: u64,
    tx: SyncSender<Vec<u8>>,
    /// False while the connection is pending (accepted, not authenticated).
    authenticated: Arc<AtomicBool>,
}

struct Inner {
    inbox: Inbox,
    stats: Arc<Stats>,
    conns: Mutex<HashMap<SocketAddr, Vec<Conn>>>,
    /// Pending connections and source rates; the acceptor admits, readers
    /// and [`TcpTransport::mark_authenticated`] remove.
    admission: Mutex<Admission>,
    /// Sockets of pending connections, to close them on eviction/deadline.
    pending: Mutex<HashMap<u64, TcpStream>>,
    live: AtomicUsize,
    next_id: AtomicU64,
    shutdown: AtomicBool,
    buffer: usize,
}

impl Inner {
    fn conns(&self) -> MutexGuard<'_, HashMap<SocketAddr, Vec<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admission(&self) -> MutexGuard<'_, Admission> {
        self.admission.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<u64, TcpStream>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes pending connection `id` (its reader then ends it).
    fn close_pending(&self, id: u64) {
        if let Some(s) = self.pending().remove(&id) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Frames as length-prefixed records over TCP connections.
pub struct TcpTransport {
    inner: Arc<Inner>,
    local: SocketAddr,
    dial: Vec<SocketAddr>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("local", &self.local)
            .field("dial", &self.dial)
            .finish()
    }
}

impl TcpTransport {
    /// Listens on `listen` (TCP) and keeps a connection to each of `dial`
    /// up. `buffer` sizes each socket's kernel buffers.
    pub fn start(listen: SocketAddr, dial: Vec<SocketAddr>, buffer: usize) -> io::Result<Self> {
        let stats = Arc::new(Stats::default());
        let inner = Arc::new(Inner {
            inbox: Inbox::new(stats.clone())?,
            stats,
            conns: Mutex::new(HashMap::new()),
            admission: Mutex::new(Admission::new()),
            pending: Mutex::new(HashMap::new()),
            live: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            shutdown: AtomicBool::new(false),
            buffer,
        });
        let sock = Socket::new(
            Domain::for_address(listen),
            Type::STREAM.cloexec(),
            Some(Protocol::TCP),
        )?;
        if listen.is_ipv6() {
            sock.set_only_v6(false)?;
        }
        sock.set_reuse_address(true)?;
        sock.bind(&listen.into())?;
        sock.listen(128)?;
        let listener: TcpListener = sock.into();
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let i = inner.clone();
        std::thread::Builder::new()
            .name("tcp-accept".into())
            .spawn(move || accept_loop(&i, listener))?;
        for to in &dial {
            let i = inner.clone();
            let to = *to;
            std::thread::Builder::new()
                .name("tcp-dial".into())
                .spawn(move || dial_loop(&i, to))?;
        }
        Ok(TcpTransport { inner, local, dial })
    }

    /// Sends to `to` if a connection to it exists or is being dialed;
    /// `None` when `to` is not served by this transport.
    pub fn try_send(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment_size: usize,
    ) -> Option<io::Result<()>> {
        let conn = self.inner.conns().get(&to).and_then(|v| v.last().cloned());
        let Some(conn) = conn else {
            if self.dial.contains(&to) {
                // Dialing (or redialing): like a lost datagram.
                bump(&self.inner.stats.tx_no_connection);
                return Some(Ok(()));
            }
            return None;
        };
        let seg = segment_size.max(1);
        let mut batch = Vec::with_capacity(contents.len() + (contents.len() / seg + 1) * 2);
        for frame in contents.chunks(seg) {
            if let Err(e) = framing::encode(frame, &mut batch) {
                return Some(Err(io::Error::new(io::ErrorKind::InvalidInput, e)));
            }
        }
        match conn.tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => bump(&self.inner.stats.tx_queue_full),
            Err(TrySendError::Disconnected(_)) => bump(&self.inner.stats.tx_no_connection),
        }
        Some(Ok(()))
    }
}

impl TcpTransport {
    /// The protocol core accepted a frame from `from`: the connections
    /// serving `from` are no longer pending.
    pub fn mark_authenticated(&self, from: SocketAddr) {
        let conns = self.inner.conns();
        let Some(v) = conns.get(&from) else {
            return;
        };
        for c in v {
            if !c.authenticated.swap(true, Ordering::Relaxed) {
                bump(&self.inner.stats.tcp_authenticated);
                self.inner.admission().remove(c.id);
                self.inner.pending().remove(&c.id);
                log::info!("TCP connection from {from} authenticated");
            }
        }
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::Relaxed);
    }
}

fn accept_loop(inner: &Arc<Inner>, listener: TcpListener) {
    while !inner.shutdown.load(Ordering::Relaxed) {
        let mut p = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut p, 1, POLL.as_millis() as libc::c_int) };
        let expired = inner.admission().expired(Instant::now());
        for id in expired {
            bump(&inner.stats.tcp_auth_timeout);
            log::debug!("TCP connection {id}: not authenticated in time, closing");
            inner.close_pending(id);
        }
        let (stream, from) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                log::debug!("TCP accept: {e}");
                std::thread::sleep(POLL);
                continue;
            }
        };
        let from = unmap(from);
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let verdict = inner.admission().admit(id, from.ip(), Instant::now());
        match verdict {
            Verdict::Refuse => {
                bump(&inner.stats.tcp_refused);
                log::debug!("TCP connection from {from} refused: too many from that source");
                continue;
            }
            Verdict::Admit { evict } => {
                if let Some(e) = evict {
                    bump(&inner.stats.tcp_evicted);
                    log::debug!(
                        "TCP connection {} evicted for a newer one from {from} ({})",
                        e.id,
                        if e.same_source {
                            "same source"
                        } else {
                            "pending budget full"
                        }
                    );
                    inner.close_pending(e.id);
                }
            }
        }
        let handle = match stream.try_clone() {
            Ok(h) => h,
            Err(e) => {
                inner.admission().remove(id);
                log::warn!("TCP connection from {from}: {e}");
                continue;
            }
        };
        inner.pending().insert(id, handle);
        bump(&inner.stats.tcp_accepted);
        log::debug!("TCP connection accepted from {from}");
        let i = inner.clone();
        let spawned = std::thread::Builder::new()
            .name("tcp-conn".into())
            .spawn(move || serve(&i, stream, from, id, false));
        if let Err(e) = spawned {
            inner.admission().remove(id);
            inner.close_pending(id);
            log::warn!("TCP connection from {from}: no thread: {e}");
        }
    }
}

fn dial_loop(inner: &Arc<Inner>, to: SocketAddr) {
    let mut backoff = BACKOFF_MIN;
    while !inner.shutdown.load(Ordering::Relaxed) {
        // Dialed connections go to configured endpoints: trusted from the
        // start, never counted against pending connections.
        match TcpStream::connect_timeout(&to, CONNECT_TIMEOUT) {
            Ok(stream) => {
                bump(&inner.stats.tcp_dialed);
                log::info!("TCP connection to {to} established");
                let started = Instant::now();
                let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
                serve(inner, stream, to, id, true);
                if started.elapsed() > BACKOFF_MAX {
                    backoff = BACKOFF_MIN;
                }
                log::info!("TCP connection to {to} lost; redialing in {backoff:?}");
            }
            Err(e) => log::debug!("TCP dial {to}: {e}; retrying in {backoff:?}"),
        }
        let until = Instant::now() + backoff;
        while Instant::now() < until && !inner.shutdown.load(Ordering::Relaxed) {
            std::thread::sleep((until - Instant::now()).min(POLL));
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Runs one connection: registers it for sends to `peer`, starts its writer
/// and reads frames into the inbox until it closes. `trusted`: dialed by
/// us (else pending until authenticated).
fn serve(inner: &Arc<Inner>, stream: TcpStream, peer: SocketAddr, id: u64, trusted: bool) {
    inner.live.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::sync_channel(SEND_QUEUE);
    let authenticated = Arc::new(AtomicBool::new(trusted));
    let setup = configure(&stream, inner.buffer).and_then(|()| stream.try_clone());
    match setup {
        Ok(wstream) => {
            inner.conns().entry(peer).or_default().push(Conn {
                id,
                tx,
                authenticated: authenticated.clone(),
            });
            let i = inner.clone();
            let writer = std::thread::Builder::new()
                .name("tcp-write".into())
                .spawn(move || write_loop(&i, wstream, rx));
            match writer {
                Ok(w) => {
                    read_loop(inner, &stream, peer, &authenticated);
                    let _ = stream.shutdown(Shutdown::Both);
                    forget(inner, peer, id);
                    let _ = w.join();
                }
                Err(e) => log::warn!("TCP {peer}: no writer thread: {e}"),
            }
        }
        Err(e) => log::warn!("TCP {peer}: socket setup failed: {e}"),
    }
    forget(inner, peer, id);
    inner.admission().remove(id);
    inner.pending().remove(&id);
    inner.live.fetch_sub(1, Ordering::Relaxed);
}

fn forget(inner: &Inner, peer: SocketAddr, id: u64) {
    let mut conns = inner.conns();
    if let Some(v) = conns.get_mut(&peer) {
        v.retain(|c| c.id != id);
        if v.is_empty() {
            conns.remove(&peer);
        }
    }
}

fn configure(stream: &TcpStream, buffer: usize) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL))?;
    let sock = socket2::SockRef::from(stream);
    sock.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(Duration::from_secs(10))
            .with_interval(Duration::from_secs(5)),
    )?;
    let _ = sock.set_send_buffer_size(buffer);
    let _ = sock.set_recv_buffer_size(buffer);
    Ok(())
}

fn read_loop(inner: &Inner, mut stream: &TcpStream, peer: SocketAddr, auth: &AtomicBool) {
    let mut buf = vec![0u8; READ_BUF];
    let mut dec = Decoder::new();
    let mut last = Instant::now();
    // Frames queued while pending ([`PENDING_FRAMES`]), and frames read
    // beyond that, held (at most one read's worth) until authenticated.
    let mut unauthenticated_frames = 0usize;
    let mut held: Vec<Vec<u8>> = Vec::new();
    while !inner.shutdown.load(Ordering::Relaxed) {
        let authenticated = auth.load(Ordering::Relaxed);
        if authenticated && !held.is_empty() {
            for f in held.drain(..) {
                inner.inbox.push(peer, f);
            }
        }
        if !authenticated && unauthenticated_frames >= PENDING_FRAMES {
            // Paused until authenticated; eviction or the deadline closes
            // the socket (seen at the next read).
            std::thread::sleep(POLL / 4);
            if !auth.load(Ordering::Relaxed) {
                let mut probe = [0u8; 1];
                match stream.peek(&mut probe) {
                    Ok(0) => return,
                    Err(e)
                        if !matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) =>
                    {
                        return
                    }
                    _ => continue,
                }
            }
            continue;
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => {
                if dec.in_frame() {
                    bump(&inner.stats.tcp_truncated);
                    log::info!("TCP {peer}: closed inside a frame (truncated frame dropped)");
                } else if authenticated {
                    log::info!("TCP {peer}: closed by the other side");
                } else {
                    log::debug!("TCP {peer}: closed before authenticating");
                }
                return;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if authenticated && last.elapsed() >= IDLE_TIMEOUT {
                    log::info!("TCP {peer}: no frame for {IDLE_TIMEOUT:?}, closing");
                    return;
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if dec.in_frame() {
                    bump(&inner.stats.tcp_truncated);
                }
                log::debug!("TCP {peer}: {e}");
                return;
            }
        };
        let mut frames = 0usize;
        let r = dec.feed(&buf[..n], |f| {
            frames += 1;
            if authenticated {
                inner.inbox.push(peer, inner.inbox.buffer(f));
            } else if unauthenticated_frames < PENDING_FRAMES {
                unauthenticated_frames += 1;
                inner.inbox.push(peer, inner.inbox.buffer(f));
            } else {
                held.push(f.to_vec());
            }
        });
        if frames > 0 {
            last = Instant::now();
        }
        if let Err(e) = r {
            bump(&inner.stats.tcp_bad_length);
            log::debug!("TCP {peer}: {e}; closing the connection");
            return;
        }
    }
}

fn write_loop(inner: &Inner, mut stream: TcpStream, rx: Receiver<Vec<u8>>) {
    let mut out = Vec::with_capacity(256 * 1024);
    loop {
        let first = match rx.recv_timeout(POLL) {
            Ok(b) => b,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if inner.shutdown.load(Ordering::Relaxed) {
                    return;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        out.clear();
        out.extend_from_slice(&first);
        // Coalesce what else is queued into one write.
        while out.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(b) => out.extend_from_slice(&b),
                Err(_) => break,
            }
        }
        if let Err(e) = stream.write_all(&out) {
            log::debug!("TCP write: {e}");
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
}

impl Transport for TcpTransport {
    fn send(&self, to: SocketAddr, contents: &[u8], segment_size: usize) -> io::Result<()> {
        self.try_send(to, contents, segment_size)
            .unwrap_or_else(|| {
                bump(&self.inner.stats.tx_no_connection);
                Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    format!("no TCP connection to {to}"),
                ))
            })
    }

    fn recv(&self, bufs: &mut [IoSliceMut<'_>], out: &mut [Received]) -> io::Result<usize> {
        self.inner.inbox.recv(bufs, out)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn max_segments(&self) -> usize {
        64
    }

    fn gro_segments(&self) -> usize {
        1
    }

    fn counters(&self) -> TransportCounters {
        let mut c = self.inner.stats.snapshot();
        c.tcp_pending = self.inner.admission().pending() as u64;
        c
    }

    fn tracks_authentication(&self) -> bool {
        true
    }

    fn authenticated(&self, from: SocketAddr) {
        self.mark_authenticated(from);
    }
}

impl AsRawFd for TcpTransport {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.inbox.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv_one(t: &TcpTransport) -> (SocketAddr, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut storage = [0u8; 10_000];
        let mut out = [Received::default(); 1];
        loop {
            let mut bufs = [IoSliceMut::new(&mut storage)];
            match t.recv(&mut bufs, &mut out) {
                Ok(_) => return (out[0].from, storage[..out[0].len].to_vec()),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("nothing received: {e}"),
            }
        }
    }

    #[test]
    fn dialer_and_acceptor_exchange_frames_and_garbage_is_counted() {
        let b =
            TcpTransport::start("127.0.0.1:0".parse().expect("addr"), vec![], 1 << 20).expect("b");
        let baddr = b.local_addr().expect("addr");
        let a = TcpTransport::start("127.0.0.1:0".parse().expect("addr"), vec![baddr], 1 << 20)
            .expect("a");
        // Until dialed, a send to the dial target is a counted loss.
        let deadline = Instant::now() + Duration::from_secs(5);
        while a.inner.conns().get(&baddr).is_none() {
            assert!(Instant::now() < deadline, "never connected");
            std::thread::sleep(Duration::from_millis(10));
        }
        a.send(baddr, &[1u8; 300], 100).expect("send");
        let (from, f) = recv_one(&b);
        assert_eq!(f, vec![1u8; 100]);
        recv_one(&b);
        recv_one(&b);
        b.send(from, b"back", 4).expect("reply");
        assert_eq!(recv_one(&a), (baddr, b"back".to_vec()));
        // An unknown address is not this transport's.
        assert!(a
            .try_send("127.0.0.1:9".parse().expect("addr"), b"x", 1)
            .is_none());
        // Garbage: an absurd length prefix closes that connection, counted.
        let mut evil = TcpStream::connect(baddr).expect("connect");
        evil.write_all(&[0xff, 0xff, 1, 2, 3]).expect("write");
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.counters().tcp_bad_length == 0 {
            assert!(Instant::now() < deadline, "bad length not counted");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The established connection still works.
        a.send(baddr, b"still", 5).expect("send");
        assert_eq!(recv_one(&b).1, b"still".to_vec());
    }

    fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A connection from `127.0.0.<host>` to `to`.
    fn connect_from(host: u8, to: SocketAddr) -> io::Result<TcpStream> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        s.bind(&SocketAddr::from(([127, 0, 0, host], 0)).into())?;
        s.connect(&to.into())?;
        Ok(s.into())
    }

    #[test]
    fn idle_connection_flood_never_displaces_an_authenticated_peer() {
        let b =
            TcpTransport::start("127.0.0.1:0".parse().expect("addr"), vec![], 1 << 20).expect("b");
        let baddr = b.local_addr().expect("addr");
        // Idle connections from eight sources fill the pending budget.
        let mut idle = Vec::new();
        for host in 2..10u8 {
            for _ in 0..4 {
                idle.push(connect_from(host, baddr).expect("connect"));
            }
        }
        wait_for("32 accepted", || b.counters().tcp_accepted == 32);
        assert_eq!(b.counters().tcp_pending, 32);
        // The real peer dials in: admitted by evicting the oldest idle one.
        let a = TcpTransport::start("127.0.0.1:0".parse().expect("addr"), vec![baddr], 1 << 20)
            .expect("a");
        wait_for("dialed", || a.inner.conns().get(&baddr).is_some());
        a.send(baddr, b"init", 4).expect("send");
        let (from, f) = recv_one(&b);
        assert_eq!(f, b"init".to_vec());
        assert!(b.counters().tcp_evicted >= 1);
        // The protocol core accepted its frame.
        b.authenticated(from);
        assert_eq!(b.counters().tcp_authenticated, 1);
        assert_eq!(b.counters().tcp_pending, 31);
        // 200 more idle connections from 40 sources: pending stays bounded,
        // the authenticated one stays.
        for k in 0..200u32 {
            let host = 20 + (k % 40) as u8;
            if let Ok(s) = connect_from(host, baddr) {
                idle.push(s);
            }
        }
        wait_for("flood accepted or refused", || {
            let c = b.counters();
            c.tcp_accepted + c.tcp_refused >= 33 + 200
        });
        let c = b.counters();
        assert!(c.tcp_pending <= super::super::admission::MAX_PENDING as u64);
        assert!(c.tcp_evicted >= 200 - 32, "{c:?}");
        b.send(from, b"reply", 5).expect("reply");
        assert_eq!(recv_one(&a), (baddr, b"reply".to_vec()));
        a.send(baddr, b"still", 5).expect("send");
        assert_eq!(recv_one(&b), (from, b"still".to_vec()));
        // A source over its accept burst is refused outright.
        let before = b.counters().tcp_refused;
        for _ in 0..30 {
            if let Ok(s) = connect_from(99, baddr) {
                idle.push(s);
            }
        }
        wait_for("refusals", || b.counters().tcp_refused >= before + 15);
    }

    #[test]
    fn a_pending_connection_queues_a_bounded_number_of_frames() {
        let b =
            TcpTransport::start("127.0.0.1:0".parse().expect("addr"), vec![], 1 << 20).expect("b");
        let baddr = b.local_addr().expect("addr");
        let mut evil = TcpStream::connect(baddr).expect("connect");
        let mut wire = Vec::new();
        for i in 0..300u16 {
            framing::encode(&i.to_be_bytes(), &mut wire).expect("encode");
        }
        evil.write_all(&wire).expect("write");
        let mut got = 0;
        let mut from = None;
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut storage = [0u8; 64];
        let mut out = [Received::default(); 1];
        while Instant::now() < deadline {
            let mut bufs = [IoSliceMut::new(&mut storage)];
            match b.recv(&mut bufs, &mut out) {
                Ok(_) => {
                    got += 1;
                    from = Some(out[0].from);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        assert_eq!(got, PENDING_FRAMES);
        // Once authenticated, the rest flows.
        b.authenticated(from.expect("a sender"));
        for _ in 0..(300 - PENDING_FRAMES) {
            recv_one(&b);
        }
    }
}
