//! Status, metrics, the human view and reloads over a Unix control socket.
//!
//! The data path publishes a [`Status`] snapshot every tick into a
//! [`StatusCell`]; the control thread answers requests from that snapshot, so
//! the data path never waits for a client. Protocol: the client writes one
//! line, `status` (JSON), `metrics` (Prometheus text), `show` (the view
//! `tunneld show` prints) or `reload`, and reads the answer until the
//! server closes the connection. Answers that report a failure start with
//! `error: `. The socket is created with mode 0600 (under a umask, so it is
//! never reachable by others, not even between bind and chmod), and each
//! client is served on its own thread, at most [`MAX_CLIENTS`] at once, so
//! a client that stalls does not hold the others up.

use crate::device::{Counters, Device, PeerStatus};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest request line accepted; anything longer is not one of our commands.
const MAX_REQUEST: u64 = 256;
/// How long a client may take to send its request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `tunneld reload` waits for the answer: loading the file and
/// the data path applying it take well under a second.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);
/// Clients served at once: an operator, a monitoring agent and a scraper
/// need a few; beyond this a connection is closed at once, so a local
/// client opening connections in a loop cannot exhaust threads.
pub const MAX_CLIENTS: usize = 8;

pub use crate::io_counters::IoCounters;

/// The data path's shape and which offloads are active (probed at start).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DataplaneStatus {
    pub workers: usize,
    /// For `dataplane.workers: auto`, why this many (e.g. `16 usable CPUs,
    /// eth0 has 4 RX queues`); `null` for a count from the config.
    pub workers_auto: Option<String>,
    pub batch: usize,
    /// TUN TSO/GRO via IFF_VNET_HDR.
    pub tun_offload: bool,
    /// Datagrams per UDP send (1: no GSO).
    pub udp_gso_segments: usize,
    /// Datagrams per UDP receive buffer (1: no GRO).
    pub udp_gro_segments: usize,
    /// TUN → network queue: `fq_codel` or `fifo`.
    pub queue: &'static str,
    /// CPUs the workers are pinned to (worker 0 first), if pinned.
    pub cpus: Option<Vec<u16>>,
    /// UDP flows (sockets) frames are spread over (`dataplane.flows`; 1
    /// when no peer uses UDP).
    pub flows: usize,
}

/// What `tunneld status` prints.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    pub interface: String,
    pub listen: String,
    pub cipher: String,
    pub uptime_secs: f64,
    pub dataplane: DataplaneStatus,
    pub peers: Vec<PeerStatus>,
    pub counters: Counters,
    pub io: IoCounters,
    /// Connection counters of the TCP and QUIC transports (zero on UDP).
    pub transport: crate::transport::TransportCounters,
    /// Our static public key (base64), as peers list it.
    pub public_key: String,
    /// Config reloads so far.
    pub reloads: ReloadStatus,
}

/// Reloads so far and how the last one ended.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    pub applied: u64,
    pub refused: u64,
    /// What the last reload did, or why it was refused.
    pub last: Option<String>,
    /// When (Unix seconds).
    pub last_unix: Option<u64>,
}

impl Status {
    /// Takes a snapshot of `device`.
    pub fn snapshot(device: &Device, io: IoCounters, started: Instant, now: Instant) -> Status {
        Status {
            uptime_secs: now.duration_since(started).as_secs_f64(),
            peers: device.peer_status(now),
            counters: device.counters(),
            io,
            ..Status::default()
        }
    }

    /// Renders the Prometheus (OpenMetrics) text format.
    pub fn prometheus(&self) -> String {
        crate::metrics::render(self)
    }
}

/// The latest snapshot, shared between the data path and the control thread.
#[derive(Debug, Default)]
pub struct StatusCell {
    inner: Mutex<Status>,
    base: Status,
    reloads: Mutex<ReloadStatus>,
    published_at: Mutex<Option<Instant>>,
}

impl StatusCell {
    /// A cell whose snapshots carry the fixed fields of `base` (interface,
    /// listen address, cipher, public key).
    pub fn new(base: Status) -> StatusCell {
        StatusCell {
            inner: Mutex::new(base.clone()),
            base,
            ..StatusCell::default()
        }
    }

    /// Replaces the snapshot (fixed fields are filled in from the base).
    pub fn publish(&self, mut s: Status) {
        s.interface.clone_from(&self.base.interface);
        s.listen.clone_from(&self.base.listen);
        s.cipher.clone_from(&self.base.cipher);
        s.public_key.clone_from(&self.base.public_key);
        if let Ok(mut g) = self.inner.lock() {
            *g = s;
        }
        if let Ok(mut g) = self.published_at.lock() {
            *g = Some(Instant::now());
        }
    }

    /// The latest snapshot.
    pub fn get(&self) -> Status {
        let mut s = self.inner.lock().map(|g| g.clone()).unwrap_or_default();
        if let Ok(r) = self.reloads.lock() {
            s.reloads = r.clone();
        }
        s
    }

    /// Whether the data path published within `max_age` (the watchdog's
    /// test that it still turns).
    pub fn fresh(&self, max_age: Duration) -> bool {
        self.published_at
            .lock()
            .ok()
            .and_then(|g| *g)
            .is_some_and(|at| at.elapsed() <= max_age)
    }

    /// Counts a reload and remembers what it said.
    pub fn record_reload(&self, applied: bool, what: String) {
        if let Ok(mut r) = self.reloads.lock() {
            if applied {
                r.applied += 1;
            } else {
                r.refused += 1;
            }
            r.last = Some(what);
            r.last_unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs());
        }
    }
}

/// Why the control socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another process answers on the socket path: a second daemon for the
    /// same interface is refused.
    #[error("{0} is in use by a running tunneld")]
    InUse(PathBuf),
    /// Creating the directory or binding the socket failed.
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The control socket server; the socket file is removed on drop.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Reloads the running config on request; the answer is a line for the
/// operator (`reload` answers, SIGHUP logs).
pub type ReloadFn = dyn Fn() -> Result<String, String> + Send + Sync;

impl ControlServer {
    /// Binds `path` (replacing a stale socket file) and serves `status`;
    /// `reload` answers the `reload` command (without it, reloads are refused).
    pub fn start(
        path: &Path,
        status: Arc<StatusCell>,
        reload: Option<Arc<ReloadFn>>,
    ) -> Result<ControlServer, ControlError> {
        let err = |source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir).map_err(err)?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                    .map_err(err)?;
            }
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a socket; refusing to remove it",
                )));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(err)?;
        }
        let listener = bind_private(path).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                serve_clients(
                    || listener.accept().map(|(s, _)| s),
                    move |stream| {
                        if let Err(e) = answer(stream, &status, reload.as_deref()) {
                            log::debug!("control client: {e}");
                        }
                    },
                    &stop2,
                )
            })
            .map_err(err)?;
        Ok(ControlServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds a Unix socket that only its owner can connect to: the mode is
/// set by the umask at creation, so there is no moment where it is open
/// to others.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    // SAFETY: umask(2) only swaps the process's file creation mask and
    // cannot fail. Threads running now create no files (the transports
    // open sockets, which the mask does not affect).
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above; restores the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts clients from a non-blocking listener until `stop` is set and
/// serves each on a thread of its own, at most [`MAX_CLIENTS`] at once (a
/// client over that is closed at once). Shared by the control socket and
/// the `/metrics` HTTP listener.
pub(crate) fn serve_clients<S: Send + 'static>(
    mut accept: impl FnMut() -> io::Result<S>,
    handle: impl Fn(S) + Send + Sync + 'static,
    stop: &AtomicBool,
) {
    let handle = Arc::new(handle);
    let busy = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        match accept() {
            Ok(client) => {
                if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    log::debug!("control: {MAX_CLIENTS} clients busy; one closed");
                    continue;
                }
                let (h, b) = (handle.clone(), busy.clone());
                let spawned = std::thread::Builder::new()
                    .name("control-client".into())
                    .spawn(move || {
                        h(client);
                        b.fetch_sub(1, Ordering::AcqRel);
                    });
                if let Err(e) = spawned {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    log::warn!("control: cannot start a client thread: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                log::warn!("control accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn answer(stream: UnixStream, status: &StatusCell, reload: Option<&ReloadFn>) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(io::Read::take(&stream, MAX_REQUEST)).read_line(&mut line)?;
    let reply = match line.trim() {
        "status" => serde_json::to_string_pretty(&status.get()).map_err(io::Error::other)? + "\n",
        "metrics" => status.get().prometheus(),
        "show" => crate::show::render(&status.get(), unix_now()),
        "reload" => match reload.map(|r| r()) {
            Some(Ok(done)) => format!("{done}\n"),
            Some(Err(why)) => format!("error: {why}\n"),
            None => "error: this daemon cannot reload\n".into(),
        },
        other => format!(
            "error: unknown command {:?} (expected status, metrics, show or reload)\n",
            other
        ),
    };
    (&stream).write_all(reply.as_bytes())
}

/// Seconds since the Unix epoch now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Sends `command` to the daemon at `path` and returns its answer.
pub fn query(path: &Path, command: &str) -> io::Result<String> {
    let mut stream = UnixStream::connect(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{}: {e} (is tunneld running?)", path.display()),
        )
    })?;
    let wait = if command == "reload" {
        RELOAD_TIMEOUT
    } else {
        CLIENT_TIMEOUT
    };
    stream.set_read_timeout(Some(wait))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut out = String::new();
    io::Read::read_to_string(&mut stream, &mut out)?;
    Ok(out)
}
