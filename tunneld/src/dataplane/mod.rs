//! The data path: the only place that knows about threads, polling, batches
//! and buffers. Protocol decisions are the [`Device`]'s; sealing and opening
//! data frames are its lock-free half's ([`crate::fastpath`]).
//!
//! Parallelism model:
//! 1. `workers: N` runs N workers (`auto`: as many as
//!    [`crate::workers::decide`] found at start), OS threads (no async
//!    runtime) pinned to CPUs when `dataplane.cpus` says so. Each has its own TUN queue
//!    (IFF_MULTI_QUEUE with N > 1: the kernel reads an inner flow from one
//!    queue, so it keeps its order) and, with only UDP peers, its own UDP
//!    socket on the shared ports (SO_REUSEPORT: an outer flow hashes to one
//!    socket). Every worker both seals and opens ([`Role`]); with TCP or
//!    QUIC peers the one transport is shared and the first worker receives.
//!    The control socket has a thread of its own and only reads a
//!    published [`Status`] snapshot.
//! 2. Each worker `poll()`s its descriptors at most [`TICK`] at a time, so
//!    timers and the shutdown flag are seen promptly.
//! 3. TX ([`tx`], [`queue`]): read a batch from the TUN queue (through
//!    fq_codel if configured), seal it in place with the device's published
//!    snapshot (no lock), send runs of equal-sized frames with GSO.
//! 4. RX ([`rx`]): receive a batch of GRO trains, open every frame in place
//!    with the snapshot (no lock), write the inner packets to the TUN queue
//!    coalesced. The device lock is taken once per batch only for what the
//!    snapshot cannot decide (no session, handshakes, a session's first
//!    frame, unknown indexes, roaming, path MTU probes and acks).
//! 5. The first worker also runs the device's timers every [`TICK`], the
//!    jobs other threads posted to the [`Mailbox`] (a reload), and publishes
//!    the status snapshot with the I/O counters ([`stats`]).
//!
//! Buffers are allocated once per worker; no allocation, lock or system call
//! happens per data packet. Control messages (handshakes, keepalives) are rare
//! and allocate.

mod queue;
mod rx;
mod stats;
mod tx;

use crate::config::DataplaneConfig;
use crate::control::{DataplaneStatus, Status, StatusCell};
use crate::device::{Datagram, Device, PeerEvent, Time, OVERHEAD};
use crate::fastpath::FastPath;
use crate::transport::Transport;
use crate::tun::{TunIo, VNET_HDR_LEN};
use arc_swap::ArcSwap;
use rx::RxState;
use stats::IoStats;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tx::TxState;

pub use crate::tun::MAX_SPLIT as MAX_TUN_SPLIT;

/// Timer granularity: handshake retries and keepalives are in seconds, so
/// 50 ms is precise enough and costs nothing when idle.
pub const TICK: Duration = Duration::from_millis(50);
/// How often the path MTU to each UDP peer is re-read from the kernel
/// ([`crate::transport::pmtu`]): a second of oversized packets lost at
/// most after the path narrows, a few system calls per peer per second.
const PATH_CHECK: Duration = Duration::from_secs(1);
/// Largest frame: an inner packet of the largest TUN MTU plus our overhead.
const MAX_FRAME: usize = 9000 + OVERHEAD;
/// Most bytes one GSO send may carry: the whole train is one UDP datagram to
/// the kernel until it is segmented, so it must fit a UDP length (65,507
/// bytes over IPv4, less over IPv6 with extension headers). A 64 KiB TCP
/// super-packet grows past this once framed (48 segments × 32 bytes), so
/// such a packet leaves in two sends. (Lowering the TUN's gso_max_size to
/// avoid that turned TSO off on this kernel: measured, reverted.)
const MAX_GSO_BYTES: usize = 65_000;
/// Offset of inner packets in the buffers written to the TUN device: room
/// for the vnet header tun-rs writes in front of each.
const TUN_WRITE_OFFSET: usize = VNET_HDR_LEN;
/// Capacity of each TUN write buffer without offload (one packet each; with
/// offload [`crate::gro`] owns the write buffers).
const TUN_WRITE_CAPACITY: usize = TUN_WRITE_OFFSET + MAX_FRAME;
/// Inner packets handed to tun-rs per batched write without offload (one
/// RX batch of GRO trains can hold thousands).
const TUN_WRITE_BATCH: usize = 128;

/// Most TUN reads in one pass of the fq_codel drain: enough to empty a ring
/// of `txqueuelen` 500, few enough that sending is not starved.
const MAX_DRAIN_READS: usize = 512;

/// About the most frames one RX pass takes in: 32 GRO trains of 64 frames
/// would be ~3 MB, several milliseconds of opening and TUN writes during
/// which a single worker's TX side (a ping's answer, TCP ACKs) waits.
const RX_PASS_FRAMES: usize = 256;

/// Work for the protocol core from outside the data path (a config
/// reload): run under the device lock at the next timer tick.
pub type DeviceJob = Box<dyn FnOnce(&mut Device, &Time) + Send>;

/// Where other threads leave [`DeviceJob`]s for the data path. Jobs are
/// rare (an operator's reload), so a locked list checked once per tick
/// costs the data path nothing per packet.
#[derive(Default)]
pub struct Mailbox(Mutex<Vec<DeviceJob>>);

impl Mailbox {
    /// Queues `job` for the next tick (within [`TICK`] while the data path runs).
    pub fn post(&self, job: DeviceJob) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(job);
    }

    fn take(&self) -> Vec<DeviceJob> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mailbox")
    }
}

/// What the workers share.
struct Common<'a> {
    device: Mutex<Device>,
    /// The device's published snapshot: data frames are sealed and opened
    /// with it, without the device lock.
    fast: Arc<ArcSwap<FastPath>>,
    mailbox: &'a Mailbox,
    /// Every worker's transport (one each with UDP; one for all with TCP
    /// or QUIC peers).
    transports: &'a [&'a dyn Transport],
    status: &'a StatusCell,
    shutdown: &'a AtomicBool,
    io: IoStats,
    knobs: DataplaneConfig,
    mtu: usize,
    info: DataplaneStatus,
    started: Instant,
    /// `transport.tracks_authentication()`, read once.
    track_auth: bool,
    /// Where peer up/down events go (the route manager), if anywhere.
    events: Option<&'a Sender<PeerEvent>>,
}

impl Common<'_> {
    fn lock(&self) -> MutexGuard<'_, Device> {
        // A worker that panicked while holding the lock leaves the device in
        // a state that is still memory-safe; keep carrying traffic.
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transports' counters, the UDP ones summed over the workers'
    /// sockets.
    fn transport_counters(&self) -> crate::transport::TransportCounters {
        let mut all = self.transports[0].counters();
        for t in &self.transports[1..] {
            let c = t.counters();
            for (a, b) in all.udp_flow_datagrams.iter_mut().zip(&c.udp_flow_datagrams) {
                *a += b;
            }
            all.udp_rcvbuf_drops += c.udp_rcvbuf_drops;
            all.udp_rx_queued_bytes += c.udp_rx_queued_bytes;
        }
        all
    }
}

/// One worker's view: what all share, and its own transport.
struct Shared<'a> {
    common: &'a Common<'a>,
    transport: &'a dyn Transport,
}

impl<'a> std::ops::Deref for Shared<'a> {
    type Target = Common<'a>;
    fn deref(&self) -> &Common<'a> {
        self.common
    }
}

impl Shared<'_> {
    fn send_control(&self, control: &mut Vec<Datagram>) {
        for d in control.drain(..) {
            if let Err(e) = self.transport.send(d.to, &d.data, d.data.len()) {
                self.io.send_errors.fetch_add(1, Ordering::Relaxed);
                log::debug!("send to {} failed: {e}", d.to);
            }
        }
    }
}

fn time_now() -> Time {
    Time {
        now: Instant::now(),
        unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// How the rest of the daemon talks to a running data path.
#[derive(Debug, Clone, Copy)]
pub struct Links<'a> {
    /// Where each tick's status snapshot goes.
    pub status: &'a StatusCell,
    /// Jobs for the protocol core (reloads).
    pub mailbox: &'a Mailbox,
    /// Set to stop the data path.
    pub shutdown: &'a AtomicBool,
    /// Where peer up/down events go (taken from the device at each timer
    /// tick; see [`crate::routes::RouteWorker`]), if anywhere.
    pub events: Option<&'a Sender<PeerEvent>>,
    /// Why `dataplane.workers: auto` chose as many workers as there are
    /// TUN queues ([`crate::workers::decide`]), for the status; `None` for
    /// a count from the config.
    pub workers_auto: Option<&'a str>,
}

/// What a worker does. Every worker reads its own TUN queue and seals
/// what it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Also receives from its transport and opens, and runs the device's
    /// timers, mailbox and status publishing every [`TICK`].
    Lead,
    /// Also receives from its transport (its own SO_REUSEPORT socket).
    Both,
    /// Sends only: the transport is shared (TCP, QUIC) and the lead
    /// receives from it, so one ordered stream has one receiver.
    SendOnly,
}

impl Role {
    fn receives(self) -> bool {
        self != Role::SendOnly
    }
}

/// Moves packets until `links.shutdown` is set. Returns an error only for
/// failures that make going on pointless (the TUN device broke). `tuns`
/// holds one TUN queue per worker; `transports` one transport per worker
/// (UDP) or one for all (TCP, QUIC): worker `i` receives from
/// `transports[i]` if there is one and sends on it, or on the last. `mtu`
/// is the TUN device's: it sizes the pooled buffers of the fq_codel queue.
pub fn run<T: TunIo>(
    device: Device,
    tuns: &[T],
    transports: &[&dyn Transport],
    knobs: DataplaneConfig,
    mtu: usize,
    links: Links<'_>,
) -> io::Result<()> {
    let Links {
        status,
        mailbox,
        shutdown,
        events,
        workers_auto,
    } = links;
    let (Some(tun), Some(transport)) = (tuns.first(), transports.first()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the data path needs a TUN queue and a transport",
        ));
    };
    let workers = tuns.len();
    let info = DataplaneStatus {
        workers,
        workers_auto: workers_auto.map(str::to_string),
        batch: knobs.batch,
        tun_offload: tun.offload(),
        udp_gso_segments: transport.max_segments(),
        udp_gro_segments: transport.gro_segments(),
        queue: knobs.queue.as_str(),
        cpus: knobs
            .cpus
            .map(|c| (0..workers).map(|i| c.for_worker(i)).collect()),
        flows: transport.flows(),
    };
    log::info!(
        "data path: {} worker(s), batch {}, queue {}, TUN offload {}{}, UDP GSO {} segments, UDP GRO {} segments, {} UDP flow(s)",
        info.workers,
        info.batch,
        info.queue,
        if info.tun_offload { "on" } else { "off" },
        if tun.uso() { " (with USO)" } else { "" },
        info.udp_gso_segments,
        info.udp_gro_segments,
        info.flows
    );
    let common = Common {
        fast: device.fast_path(),
        device: Mutex::new(device),
        mailbox,
        transports,
        status,
        shutdown,
        io: IoStats::default(),
        knobs,
        mtu,
        info,
        started: Instant::now(),
        track_auth: transport.tracks_authentication(),
        events,
    };
    let role = |i: usize| match i {
        0 => Role::Lead,
        _ if i < transports.len() => Role::Both,
        _ => Role::SendOnly,
    };
    let start = |i: usize| -> io::Result<()> {
        let shared = Shared {
            common: &common,
            transport: transports[i.min(transports.len() - 1)],
        };
        if let Some(cpus) = knobs.cpus {
            pin_current_thread(cpus.for_worker(i))?;
        }
        // A failing worker stops the others by raising the shutdown flag.
        worker(&shared, &tuns[i], role(i)).inspect_err(|_| shutdown.store(true, Ordering::Relaxed))
    };
    if workers == 1 {
        return start(0);
    }
    std::thread::scope(|s| {
        let start = &start;
        let mut handles = Vec::with_capacity(workers - 1);
        for i in 1..workers {
            let spawned = std::thread::Builder::new()
                .name(format!("worker{i}"))
                .spawn_scoped(s, move || start(i));
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    shutdown.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        let mut result = start(0);
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("data-path worker panicked")));
            result = result.and(r);
        }
        result
    })
}

/// One data-path loop on its own TUN queue (see [`Role`]).
fn worker(shared: &Shared<'_>, tun: &dyn TunIo, role: Role) -> io::Result<()> {
    let rx = role.receives();
    let mut txs = TxState::new(shared);
    let mut rxs = rx.then(|| RxState::new(shared, tun));
    let mut last_tick = Instant::now() - TICK;
    let mut last_path_check = Instant::now() - PATH_CHECK;
    let mut backlog = false;
    while !shared.shutdown.load(Ordering::Relaxed) {
        // Every turn starts with one poll(2) of both descriptors; it waits
        // (at most a TICK) only when no packet is queued inside, and a
        // direction is served only when its descriptor is readable. An
        // idle direction costs no system call, and a lone packet costs a
        // poll, its read or receive, its send or write, and the next poll.
        let (tun_ready, net_ready) = poll_readable(
            Some(tun.as_raw_fd()),
            rx.then(|| shared.transport.as_raw_fd()),
            if backlog { Duration::ZERO } else { TICK },
        )?;
        if tun_ready || txs.backlog() {
            txs.run(shared, tun, tun_ready)?;
        }
        backlog = txs.backlog();
        if let Some(r) = rxs.as_mut() {
            if net_ready {
                r.run(shared, tun);
            }
        }
        if role == Role::Lead {
            let now = Instant::now();
            if now.duration_since(last_tick) >= TICK {
                last_tick = now;
                let refresh = now.duration_since(last_path_check) >= PATH_CHECK;
                tick(shared, refresh);
                if refresh {
                    last_path_check = now;
                }
            }
        }
    }
    Ok(())
}

/// The lead worker's [`TICK`]: the mailbox's jobs and the device's timers
/// under its lock, then (unlocked) their control messages, peer events,
/// path MTU refresh (`refresh_paths`) and the status snapshot.
fn tick(shared: &Shared<'_>, refresh_paths: bool) {
    let t = time_now();
    let mut control = Vec::new();
    let (snapshot, endpoints, events) = {
        let mut dev = shared.lock();
        for job in shared.mailbox.take() {
            job(&mut dev, &t);
        }
        dev.tick(&t, &mut control);
        (
            Status::snapshot(&dev, shared.io.snapshot(), shared.started, t.now),
            refresh_paths.then(|| dev.udp_endpoints()),
            dev.take_events(),
        )
    };
    shared.send_control(&mut control);
    if let Some(tx) = shared.events {
        for ev in events {
            // The receiver only goes away at shutdown.
            let _ = tx.send(ev);
        }
    }
    if let Some(e) = endpoints {
        // Outside the device lock: a few system calls per peer and socket.
        for t in shared.transports {
            t.refresh_paths(&e);
        }
        // The kernel's path MTUs, just re-read, are path MTU probing's
        // ceilings (one more device lock a second).
        shared
            .lock()
            .set_path_ceilings(t.now, |to| shared.transport.max_frame(to));
    }
    shared.status.publish(Status {
        dataplane: shared.info.clone(),
        transport: shared.transport_counters(),
        ..snapshot
    });
}

/// Pins the calling thread to `cpu`; an error names the CPU and what this
/// process may use.
fn pin_current_thread(cpu: u16) -> io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array; zeroed is the empty set, and
    // CPU_SET/CPU_ISSET stay inside it for cpu < CPU_SETSIZE (the config
    // allows at most 1023). sched_{set,get}affinity(0, ..) act on the
    // calling thread with a set of the size given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(usize::from(cpu), &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 {
            log::info!("data-path thread pinned to CPU {cpu}");
            return Ok(());
        }
        let e = io::Error::last_os_error();
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        let have = if libc::sched_getaffinity(
            0,
            std::mem::size_of::<libc::cpu_set_t>(),
            &mut allowed,
        ) == 0
        {
            (0..libc::CPU_SETSIZE as usize)
                .filter(|c| libc::CPU_ISSET(*c, &allowed))
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        } else {
            "unknown".into()
        };
        Err(io::Error::new(
            e.kind(),
            format!(
                "dataplane.cpus: cannot pin to CPU {cpu} ({e}); this process may use CPUs {have}"
            ),
        ))
    }
}

/// Waits until one of the descriptors is readable, at most `timeout`;
/// returns which are (an error or hang-up counts as readable, so that the
/// next read reports it).
fn poll_readable(
    a: Option<RawFd>,
    b: Option<RawFd>,
    timeout: Duration,
) -> io::Result<(bool, bool)> {
    let mut fds = [a, b].map(|fd| libc::pollfd {
        fd: fd.unwrap_or(-1),
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: `fds` is a valid array of two pollfd structs for the call;
    // negative fds are ignored by poll(2).
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout.as_millis() as libc::c_int) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
        return Ok((false, false));
    }
    let ready = |p: &libc::pollfd| p.fd >= 0 && p.revents != 0;
    Ok((ready(&fds[0]), ready(&fds[1])))
}

#[cfg(test)]
#[path = "../dataplane_tests.rs"]
mod tests;
