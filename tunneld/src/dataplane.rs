//! The data path: the only place that knows about threads, polling, batches
//! and buffers. Protocol decisions are the [`Device`]'s.
//!
//! Parallelism model:
//! 1. `workers: 1` runs one loop for both directions; `workers: 2` runs a TX
//!    thread (TUN → network) and an RX thread (network → TUN), so system calls
//!    and crypto of the two directions overlap. These are OS threads (no
//!    async runtime), pinned to CPUs when `dataplane.cpus` says so. The control socket has a
//!    thread of its own and only reads a published [`Status`] snapshot.
//! 2. Each loop `poll()`s its descriptors at most [`TICK`] at a time, so timers
//!    and the shutdown flag are seen promptly.
//! 3. TX: one read returns a packet or, with TUN offload, a TCP super-packet
//!    split into up to [`MAX_SPLIT`] packets, each at the headroom offset of a
//!    pooled buffer; reads go on until `batch` packets are in or the ring is
//!    empty, so small packets (UDP, ACKs) batch as well as bulk TCP does.
//!    With `queue: fq_codel` (opt-in) the TUN ring is drained eagerly
//!    into a bounded pool and the packets are queued per inner flow
//!    ([`crate::fq`]); a batch is then the next `batch` packets the queue
//!    releases, so a ping never waits behind bulk data. With `queue: fifo`
//!    the batch read is the batch sent. The device lock is taken once per
//!    batch to seal every packet in place; then, unlocked, runs of
//!    equal-sized frames to the same peer and outer flow are copied back to
//!    back and sent with one GSO `sendmsg` of up to `batch` segments. With
//!    `flows` > 1 each packet's outer flow is its inner 5-tuple's hash,
//!    taken before sealing, so an inner flow keeps its order.
//! 4. RX: one `recvmmsg` returns up to [`MAX_RECV_BATCH`] buffers, each a
//!    GRO train of frames (at most [`RX_PASS_FRAMES`] frames' worth of
//!    buffers per pass, so a single loop turns back to its TX side within
//!    a fraction of a millisecond); the device lock is taken once to open every frame in
//!    place; then, unlocked, each inner packet is copied once, straight into
//!    its TCP flow's super-packet or a buffer of its own ([`crate::gro`],
//!    with offload on), and each buffer is one TUN write.
//! 5. The RX loop (or the only loop) also runs the device's timers every
//!    [`TICK`], runs the jobs other threads posted to the [`Mailbox`] (a
//!    reload) and publishes the status snapshot.
//!
//! Buffers are allocated once per worker; no allocation, lock or system call
//! happens per data packet. Control messages (handshakes, keepalives) are rare
//! and allocate.

use crate::config::{DataplaneConfig, QueueKind};
use crate::control::{DataplaneStatus, IoCounters, Status, StatusCell};
use crate::device::{Datagram, Device, Outcome, PeerEvent, Time, HEADROOM, OVERHEAD, TAILROOM};
use crate::fastpath::{FastPath, Opened, Sealed, Tally};
use crate::fq::{FqCodel, FqParams};
use crate::transport::{Received, Transport, MAX_RECV_BATCH};
use crate::tun::{Tun, MAX_SPLIT, READ_SCRATCH, VNET_HDR_LEN};
use arc_swap::ArcSwap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// I/O errors counted by both workers.
#[derive(Debug, Default)]
struct IoStats {
    send_errors: AtomicU64,
    recv_errors: AtomicU64,
    tun_write_errors: AtomicU64,
    tun_read_errors: AtomicU64,
    path_too_big: AtomicU64,
    tun_reads: AtomicU64,
    tun_read_packets: AtomicU64,
    tun_writes: AtomicU64,
    tun_write_packets: AtomicU64,
    udp_sends: AtomicU64,
    udp_send_frames: AtomicU64,
    udp_recv_buffers: AtomicU64,
    udp_recv_frames: AtomicU64,
    queue_codel_drops: AtomicU64,
    queue_overflow_drops: AtomicU64,
    queue_packets: AtomicU64,
    queue_ecn_marks: AtomicU64,
    ecn_path_ce: AtomicU64,
    ecn_not_ect_drops: AtomicU64,
}

impl IoStats {
    fn snapshot(&self) -> IoCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        IoCounters {
            send_errors: get(&self.send_errors),
            recv_errors: get(&self.recv_errors),
            tun_write_errors: get(&self.tun_write_errors),
            tun_read_errors: get(&self.tun_read_errors),
            path_too_big: get(&self.path_too_big),
            tun_reads: get(&self.tun_reads),
            tun_read_packets: get(&self.tun_read_packets),
            tun_writes: get(&self.tun_writes),
            tun_write_packets: get(&self.tun_write_packets),
            udp_sends: get(&self.udp_sends),
            udp_send_frames: get(&self.udp_send_frames),
            udp_recv_buffers: get(&self.udp_recv_buffers),
            udp_recv_frames: get(&self.udp_recv_frames),
            queue_codel_drops: get(&self.queue_codel_drops),
            queue_overflow_drops: get(&self.queue_overflow_drops),
            queue_packets: get(&self.queue_packets),
            queue_ecn_marks: get(&self.queue_ecn_marks),
            ecn_path_ce: get(&self.ecn_path_ce),
            ecn_not_ect_drops: get(&self.ecn_not_ect_drops),
        }
    }
}

fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

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
pub fn run(
    device: Device,
    tuns: &[Tun],
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
fn worker(shared: &Shared<'_>, tun: &Tun, role: Role) -> io::Result<()> {
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

/// Buffers of the TUN → network direction.
struct TxState {
    scratch: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    /// Outer flow of each packet (its inner 5-tuple's hash).
    flow: Vec<usize>,
    /// The queue's flow hash of each packet (with `queue: fq_codel`).
    hashes: Vec<u64>,
    /// ECN codepoint of each packet, for its outer header (RFC 6040 normal
    /// mode: copied from the inner header; 0 with `ecn: false`).
    ecn: Vec<u8>,
    /// The transport's flow count.
    flows: usize,
    outcomes: Vec<Outcome>,
    /// Positions of the batch's packets left to the device (slow path).
    slow: Vec<usize>,
    /// The batch's accounting on the lock-free path.
    tally: Tally,
    gso: Vec<u8>,
    control: Vec<Datagram>,
    batch: usize,
    max_segments: usize,
    /// ICMP "too big" answers for packets the transport cannot carry, and
    /// the GRO table their TUN write needs.
    icmp: Vec<Vec<u8>>,
    icmp_gro: tun_rs::GROTable,
    /// The fq_codel queue (`None` with `queue: fifo`).
    queue: Option<TxQueue>,
}

impl TxState {
    fn new(shared: &Shared<'_>) -> TxState {
        let k = &shared.knobs;
        let max_segments = shared.transport.max_segments();
        // A batch, plus room for one more super-packet's split: reads go on
        // while fewer than `batch` packets are in.
        let slots = MAX_SPLIT + k.batch;
        let queue = (k.queue == QueueKind::FqCodel).then(|| TxQueue::new(k, shared.mtu));
        TxState {
            scratch: vec![0u8; READ_SCRATCH],
            bufs: vec![vec![0u8; slot_size(shared.mtu)]; slots],
            sizes: vec![0; slots],
            flow: vec![0; slots],
            hashes: vec![0; slots],
            ecn: vec![0; slots],
            flows: shared.transport.flows(),
            outcomes: Vec::with_capacity(slots),
            slow: Vec::with_capacity(slots),
            tally: Tally::default(),
            gso: Vec::with_capacity(max_segments.max(1) * (MAX_FRAME + OVERHEAD)),
            control: Vec::new(),
            batch: k.batch,
            max_segments: max_segments.max(1),
            icmp: Vec::new(),
            icmp_gro: tun_rs::GROTable::default(),
            queue,
        }
    }

    /// Packets wait in the queue: the loop must come back without waiting.
    fn backlog(&self) -> bool {
        self.queue.as_ref().is_some_and(|q| !q.fq.is_empty())
    }

    /// Reads from the TUN device if it is `readable` (through the queue, if
    /// any), then seals and sends one batch.
    fn run(&mut self, shared: &Shared<'_>, tun: &Tun, readable: bool) -> io::Result<()> {
        let n = match self.queue.as_mut() {
            None if readable => self.read_fifo(shared, tun)?,
            None => 0,
            Some(q) => {
                if readable {
                    q.drain(shared, tun, &mut self.scratch)?;
                }
                let n = q.release(
                    &mut self.bufs,
                    &mut self.sizes,
                    &mut self.hashes,
                    self.batch,
                );
                q.publish(&shared.io);
                n
            }
        };
        if n == 0 {
            return Ok(());
        }
        self.seal_and_send(shared, tun, n);
        if let Some(q) = self.queue.as_mut() {
            q.take_back(&mut self.bufs, n);
        }
        Ok(())
    }

    /// `queue: fifo`: reads one batch straight into the send buffers.
    fn read_fifo(&mut self, shared: &Shared<'_>, tun: &Tun) -> io::Result<usize> {
        // Reads go on until `batch` packets are in or the ring is empty:
        // one read may be a super-packet of up to MAX_SPLIT packets (with
        // offload), so one is started only while that much room is left;
        // small packets (UDP, ACKs, interactive flows) are one per read,
        // and many of them still make one batch and few sends.
        let room = if tun.offload() { MAX_SPLIT } else { 1 };
        let mut n = 0;
        while n < self.batch && self.bufs.len() - n >= room {
            match read_tun(
                shared,
                tun,
                &mut self.scratch,
                &mut self.bufs[n..],
                &mut self.sizes[n..],
            )? {
                Some(k) => n += k,
                None => break,
            }
        }
        Ok(n)
    }

    /// Seals `bufs[..n]` under one device lock and sends them.
    fn seal_and_send(&mut self, shared: &Shared<'_>, tun: &Tun, n: usize) {
        let t = time_now();
        self.outcomes.clear();
        let floor = shared.transport.frame_floor();
        // What the outer header needs from the inner one is read here, as
        // sealing hides it (and outside the device lock): the outer flow
        // (inner 5-tuple hash; the fq_codel queue already hashed it, with
        // its own key, which keeps every inner flow on one outer flow just
        // as well) and the ECN field.
        for i in 0..n {
            let packet = &self.bufs[i][HEADROOM..HEADROOM + self.sizes[i]];
            if self.flows > 1 {
                self.flow[i] = if self.queue.is_some() {
                    (self.hashes[i] % self.flows as u64) as usize
                } else {
                    crate::wire::flow_index(packet, self.flows)
                };
            }
            self.ecn[i] = if shared.knobs.ecn {
                crate::wire::ecn::of(packet)
            } else {
                crate::wire::ecn::NOT_ECT
            };
        }
        // Sealed without the device lock; packets the snapshot cannot
        // seal (no session yet, or it just expired) go to the device, under
        // its lock, once per batch.
        self.slow.clear();
        {
            let fp = shared.fast.load();
            self.tally.expect(n);
            for i in 0..n {
                if floor.is_some_and(|f| self.sizes[i] + OVERHEAD > f) {
                    let packet = &self.bufs[i][HEADROOM..HEADROOM + self.sizes[i]];
                    if too_big(&fp, shared.transport, packet, &mut self.icmp) {
                        add(&shared.io.path_too_big, 1);
                        self.outcomes.push(Outcome::Held);
                        continue;
                    }
                }
                let o = match fp.encapsulate(
                    &mut self.tally,
                    &mut self.bufs[i],
                    self.sizes[i],
                    t.now,
                ) {
                    Sealed::Send { to, len } => Outcome::Send { to, len },
                    Sealed::Dropped => Outcome::Held,
                    Sealed::Slow => {
                        self.slow.push(i);
                        Outcome::Held
                    }
                };
                self.outcomes.push(o);
            }
            self.tally.flush(fp.counters());
        }
        if !self.slow.is_empty() {
            let mut dev = shared.lock();
            for &i in &self.slow {
                self.outcomes[i] =
                    dev.encapsulate(&mut self.bufs[i], self.sizes[i], &t, &mut self.control);
            }
        }
        if !self.icmp.is_empty() {
            if let Err(e) = tun.write_batch(&mut self.icmp_gro, &mut self.icmp, TUN_WRITE_OFFSET) {
                shared.io.tun_write_errors.fetch_add(1, Ordering::Relaxed);
                log::debug!("TUN write of ICMP too big failed: {e}");
            }
            self.icmp.clear();
        }
        self.send(shared);
        shared.send_control(&mut self.control);
    }

    /// Sends sealed frames, grouping runs of equal size to one peer on one
    /// outer flow into GSO sends (a shorter frame may end a run).
    fn send(&mut self, shared: &Shared<'_>) {
        // ((to, outer flow, outer ECN), segment, count)
        let mut run: Option<(Destination, usize, usize)> = None;
        self.gso.clear();
        for (i, o) in self.outcomes.iter().enumerate() {
            let Outcome::Send { to, len } = *o else {
                continue;
            };
            let frame = &self.bufs[i][..len];
            let dest = (to, self.flow[i], self.ecn[i]);
            match run {
                Some((rdest, seg, count))
                    if rdest == dest
                        && len <= seg
                        && count < self.max_segments
                        && self.gso.len() + len <= MAX_GSO_BYTES =>
                {
                    self.gso.extend_from_slice(frame);
                    // A shorter frame must be the run's last.
                    run = (len == seg).then_some((rdest, seg, count + 1));
                    if run.is_none() {
                        flush(shared, rdest, &self.gso, seg);
                        self.gso.clear();
                    }
                }
                _ => {
                    if let Some((rdest, seg, _)) = run.take() {
                        flush(shared, rdest, &self.gso, seg);
                        self.gso.clear();
                    }
                    self.gso.extend_from_slice(frame);
                    run = Some((dest, len, 1));
                }
            }
        }
        if let Some((dest, seg, _)) = run {
            flush(shared, dest, &self.gso, seg);
        }
    }
}

/// Size of every TX buffer: headroom, the largest inner packet, tag.
fn slot_size(mtu: usize) -> usize {
    HEADROOM + mtu.clamp(576, MAX_FRAME - OVERHEAD) + TAILROOM
}

/// One TUN read into `bufs`: `Some(packets)`, or `None` when the ring is
/// empty (or the read failed in a way worth only a log line).
fn read_tun(
    shared: &Shared<'_>,
    tun: &Tun,
    scratch: &mut [u8],
    bufs: &mut [Vec<u8>],
    sizes: &mut [usize],
) -> io::Result<Option<usize>> {
    match tun.read_batch(scratch, bufs, sizes, HEADROOM) {
        Ok(k) => {
            add(&shared.io.tun_reads, 1);
            add(&shared.io.tun_read_packets, k);
            Ok(Some(k))
        }
        Err(e) if would_block(&e) => Ok(None),
        Err(e) => {
            // A malformed super-packet is the kernel's doing and rare (the
            // device's gso_max_segs keeps super-packets within MAX_SPLIT
            // segments); it is counted, and logged at a bounded rate. A
            // broken descriptor shows up as EBADF and ends the loop.
            if e.raw_os_error() == Some(libc::EBADF) {
                return Err(e);
            }
            add(&shared.io.tun_read_errors, 1);
            if let Some(n) = TUN_READ_LOG.allow() {
                log::warn!(
                    "TUN read failed, packet lost: {e}{}",
                    crate::lograte::suppressed_note(n)
                );
            }
            Ok(None)
        }
    }
}

/// TUN read failures are logged at a bounded rate.
static TUN_READ_LOG: crate::lograte::LogLimiter = crate::lograte::LogLimiter::new();

/// The fq_codel stage of the TX direction: a pool of packet buffers and the
/// queue of their slot numbers. Buffers move between the read staging area,
/// the pool and the send batch by swapping `Vec`s, never by copying bytes.
struct TxQueue {
    fq: FqCodel,
    /// Packet buffers by slot; grown up to `capacity` as the queue first
    /// fills, then reused.
    pool: Vec<Vec<u8>>,
    lens: Vec<usize>,
    /// Flow hash of the packet in each slot.
    hashes: Vec<u64>,
    free: Vec<u32>,
    capacity: usize,
    buf_size: usize,
    /// Where one read lands before its packets are queued.
    staging: Vec<Vec<u8>>,
    staging_sizes: Vec<usize>,
    /// Slots whose buffers are in the send batch, by batch position.
    in_batch: Vec<u32>,
    dropped: Vec<u32>,
    /// Packets lost because no slot was free (not expected: see `new`).
    no_slot: u64,
    /// Secret key of the flow hash.
    key: u64,
    origin: Instant,
}

impl TxQueue {
    fn new(k: &DataplaneConfig, mtu: usize) -> TxQueue {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let mtu = mtu.clamp(576, MAX_FRAME - OVERHEAD);
        // The queue holds at most `queue_limit` packets once a read's worth
        // is enqueued (overflow drops happen at enqueue), so one more read's
        // worth of slots is always free for the next read.
        let capacity = k.queue_limit + MAX_SPLIT;
        let params = FqParams {
            target: nanos(k.codel_target),
            interval: nanos(k.codel_interval),
            // One TCP super-packet's worth per round: a bulk flow's
            // segments leave together, in one GSO send.
            quantum: 64 * 1024,
            limit: k.queue_limit,
            mtu: mtu as u32,
            ecn: k.ecn,
        };
        let batch = MAX_SPLIT.max(k.batch);
        TxQueue {
            fq: FqCodel::new(params, capacity),
            pool: Vec::new(),
            lens: vec![0; capacity],
            hashes: vec![0; capacity],
            free: Vec::with_capacity(capacity),
            capacity,
            buf_size: slot_size(mtu),
            staging: vec![vec![0u8; slot_size(mtu)]; MAX_SPLIT],
            staging_sizes: vec![0; MAX_SPLIT],
            in_batch: Vec::with_capacity(batch),
            dropped: Vec::with_capacity(capacity),
            no_slot: 0,
            key: {
                use std::hash::BuildHasher;
                std::collections::hash_map::RandomState::new().hash_one(0x0074_756e_6e65_6c64_u64)
            },
            origin: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn alloc(&mut self) -> Option<u32> {
        if let Some(s) = self.free.pop() {
            return Some(s);
        }
        if self.pool.len() < self.capacity {
            self.pool.push(vec![0u8; self.buf_size]);
            return Some((self.pool.len() - 1) as u32);
        }
        None
    }

    /// Reads the TUN ring until it is empty (at most [`MAX_DRAIN_READS`]
    /// reads) and queues every packet.
    fn drain(&mut self, shared: &Shared<'_>, tun: &Tun, scratch: &mut [u8]) -> io::Result<()> {
        for _ in 0..MAX_DRAIN_READS {
            let Some(k) = read_tun(
                shared,
                tun,
                scratch,
                &mut self.staging,
                &mut self.staging_sizes,
            )?
            else {
                break;
            };
            let now = self.now();
            for i in 0..k {
                let Some(slot) = self.alloc() else {
                    // Unreachable by the capacity argument in `new`; if it
                    // ever happens the packet is dropped and counted.
                    self.no_slot += 1;
                    continue;
                };
                let len = self.staging_sizes[i];
                std::mem::swap(&mut self.pool[slot as usize], &mut self.staging[i]);
                self.lens[slot as usize] = len;
                let packet = &self.pool[slot as usize][HEADROOM..HEADROOM + len];
                let hash = crate::wire::flow::flow_hash_keyed(packet, self.key);
                self.hashes[slot as usize] = hash;
                let pkt = crate::fq::Packet {
                    hash,
                    len,
                    ect: crate::wire::ecn::of(packet) != crate::wire::ecn::NOT_ECT,
                };
                self.fq.enqueue(slot, pkt, now, &mut self.dropped);
                self.free.append(&mut self.dropped);
            }
        }
        Ok(())
    }

    /// Moves up to `batch` packets from the queue into `bufs[..]` (their
    /// buffers swapped in); returns how many.
    /// Their flow hashes go to `hashes`, so the outer flow is not hashed
    /// again.
    fn release(
        &mut self,
        bufs: &mut [Vec<u8>],
        sizes: &mut [usize],
        hashes: &mut [u64],
        batch: usize,
    ) -> usize {
        let now = self.now();
        self.in_batch.clear();
        let want = batch.min(bufs.len());
        while self.in_batch.len() < want {
            let Some((slot, mark)) = self.fq.dequeue(now, &mut self.dropped) else {
                break;
            };
            let len = self.lens[slot as usize];
            if mark {
                // CoDel chose this ECN-capable packet: CE instead of a drop.
                let packet = &mut self.pool[slot as usize][HEADROOM..HEADROOM + len];
                crate::wire::ecn::set(packet, crate::wire::ecn::CE);
            }
            let i = self.in_batch.len();
            std::mem::swap(&mut bufs[i], &mut self.pool[slot as usize]);
            sizes[i] = len;
            hashes[i] = self.hashes[slot as usize];
            self.in_batch.push(slot);
        }
        self.free.append(&mut self.dropped);
        self.in_batch.len()
    }

    /// Returns the batch's buffers to their slots and frees the slots.
    fn take_back(&mut self, bufs: &mut [Vec<u8>], n: usize) {
        for (i, &slot) in self.in_batch.iter().take(n).enumerate() {
            std::mem::swap(&mut bufs[i], &mut self.pool[slot as usize]);
            self.free.push(slot);
        }
        self.in_batch.clear();
    }

    fn publish(&self, io: &IoStats) {
        let st = self.fq.stats();
        io.queue_codel_drops
            .store(st.codel_drops, Ordering::Relaxed);
        io.queue_overflow_drops
            .store(st.overflow_drops + self.no_slot, Ordering::Relaxed);
        io.queue_packets
            .store(self.fq.len() as u64, Ordering::Relaxed);
        io.queue_ecn_marks.store(st.ecn_marks, Ordering::Relaxed);
    }
}

/// True when `packet` does not fit the transport's current frame limit to
/// its peer (QUIC datagrams); then an ICMP "fragmentation needed" / "packet
/// too big" for its sender, from its destination, is queued in `icmp`
/// (nothing for packets that must not be answered, e.g. IPv4 without DF).
fn too_big(
    dev: &FastPath,
    transport: &dyn Transport,
    packet: &[u8],
    icmp: &mut Vec<Vec<u8>>,
) -> bool {
    let Some(max) = dev
        .endpoint_for(packet)
        .and_then(|to| transport.max_frame(to))
    else {
        return false;
    };
    if packet.len() + OVERHEAD <= max {
        return false;
    }
    let mtu = max.saturating_sub(OVERHEAD).min(usize::from(u16::MAX)) as u16;
    if let Ok(info) = crate::wire::inner_ip_info(packet) {
        let mut out = vec![0u8; TUN_WRITE_OFFSET + 1280];
        if let Ok(n) =
            crate::wire::icmp_too_big(packet, mtu, info.dst, &mut out[TUN_WRITE_OFFSET..])
        {
            out.truncate(TUN_WRITE_OFFSET + n);
            icmp.push(out);
        }
    }
    true
}

/// Where a GSO run goes: (peer, outer flow, outer ECN codepoint).
type Destination = (std::net::SocketAddr, usize, u8);

/// Sends one GSO run.
fn flush(shared: &Shared<'_>, (to, flow, ecn): Destination, contents: &[u8], seg: usize) {
    if contents.is_empty() {
        return;
    }
    add(&shared.io.udp_sends, 1);
    add(
        &shared.io.udp_send_frames,
        contents.len().div_ceil(seg.max(1)),
    );
    if let Err(e) = shared.transport.send_flow(flow, to, contents, seg, ecn) {
        shared.io.send_errors.fetch_add(1, Ordering::Relaxed);
        log::debug!("send to {to} failed: {e}");
    }
}

/// Buffers of the network → TUN direction.
struct RxState {
    bufs: Vec<Vec<u8>>,
    got: Vec<Received>,
    /// Inner packets found in `bufs`: (buffer, range).
    inner: Vec<(usize, Range<usize>)>,
    out: Vec<Vec<u8>>,
    gro: tun_rs::GROTable,
    /// TCP coalescing for TUN writes with offload on.
    coalescer: crate::gro::Coalescer,
    control: Vec<Datagram>,
    /// Senders of this pass that are peers' endpoints (only filled when the
    /// transport tracks authentication).
    authenticated: Vec<SocketAddr>,
    /// Receive buffers offered per pass (see [`RX_PASS_FRAMES`]).
    per_pass: usize,
    /// The batch's accounting on the lock-free path.
    tally: Tally,
}

impl RxState {
    fn new(shared: &Shared<'_>, tun: &Tun) -> RxState {
        let gro_segments = shared.transport.gro_segments();
        // A GRO train holds up to `gro_segments` frames of one flow.
        let slot = if gro_segments > 1 {
            65_536
        } else {
            MAX_FRAME + 64
        };
        RxState {
            bufs: vec![vec![0u8; slot]; MAX_RECV_BATCH],
            got: vec![Received::default(); MAX_RECV_BATCH],
            inner: Vec::with_capacity(MAX_RECV_BATCH * 64),
            // Write buffers for tun-rs, used only without offload (with it
            // the coalescer owns its buffers).
            out: (0..if tun.offload() { 0 } else { TUN_WRITE_BATCH })
                .map(|_| Vec::with_capacity(TUN_WRITE_CAPACITY))
                .collect(),
            gro: tun_rs::GROTable::default(),
            coalescer: crate::gro::Coalescer::with_udp(tun.uso()),
            control: Vec::new(),
            authenticated: Vec::new(),
            per_pass: (RX_PASS_FRAMES / gro_segments.max(1)).clamp(1, MAX_RECV_BATCH),
            tally: Tally::default(),
        }
    }

    /// Receives a batch, opens it, writes the inner packets to the TUN
    /// device.
    fn run(&mut self, shared: &Shared<'_>, tun: &Tun) {
        let n = {
            let mut slices: [IoSliceMut<'_>; MAX_RECV_BATCH] =
                std::array::from_fn(|_| IoSliceMut::new(&mut []));
            for (s, b) in slices.iter_mut().zip(self.bufs.iter_mut()) {
                *s = IoSliceMut::new(b);
            }
            match shared
                .transport
                .recv(&mut slices[..self.per_pass], &mut self.got)
            {
                Ok(n) => n,
                Err(e) if would_block(&e) => return,
                Err(e) => {
                    // ICMP errors surface here (e.g. port unreachable while
                    // the peer restarts); they are not fatal.
                    shared.io.recv_errors.fetch_add(1, Ordering::Relaxed);
                    log::debug!("receive failed: {e}");
                    return;
                }
            }
        };
        let t = time_now();
        self.inner.clear();
        add(&shared.io.udp_recv_buffers, n);
        add(
            &shared.io.udp_recv_frames,
            self.got[..n]
                .iter()
                .map(|r| r.len.div_ceil(r.stride.max(1)))
                .sum(),
        );
        {
            // Data frames are opened without the device lock; the lock is
            // taken (once per batch, and kept to its end) only for what the
            // snapshot cannot decide: handshakes, a session's first frame,
            // unknown indexes, a roaming peer.
            let fp = shared.fast.load();
            let mut dev: Option<MutexGuard<'_, Device>> = None;
            for (b, r) in self.got[..n].iter().enumerate() {
                let cap = self.bufs[b].len();
                let buf = &mut self.bufs[b][..r.len.min(cap)];
                let mut off = 0;
                while off < buf.len() {
                    let end = (off + r.stride).min(buf.len());
                    let frame = &mut buf[off..end];
                    let len = frame.len();
                    let opened = match fp.decapsulate(&mut self.tally, frame, len, r.from, t.now) {
                        Opened::Inner(range) => Some(range),
                        Opened::Done => None,
                        Opened::Slow => dev.get_or_insert_with(|| shared.lock()).decapsulate(
                            frame,
                            len,
                            r.from,
                            &t,
                            &mut self.control,
                        ),
                    };
                    if let Some(range) = opened {
                        // RFC 6040: a CE mark the path put on the outer
                        // header reaches the inner packet (or drops it when
                        // the inner flow cannot take ECN).
                        let keep = !shared.knobs.ecn
                            || match crate::wire::ecn::decapsulate(r.ecn, &mut frame[range.clone()])
                            {
                                Some(changed) => {
                                    if changed && r.ecn == crate::wire::ecn::CE {
                                        add(&shared.io.ecn_path_ce, 1);
                                    }
                                    true
                                }
                                None => {
                                    add(&shared.io.ecn_not_ect_drops, 1);
                                    false
                                }
                            };
                        if keep {
                            self.inner.push((b, off + range.start..off + range.end));
                        }
                    }
                    off = end;
                }
                // Tell a transport that holds unauthenticated connections
                // (TCP) which senders the device now knows as peers (the
                // device itself once it handled something this batch: the
                // snapshot may not show that change yet).
                if shared.track_auth
                    && !self.authenticated.contains(&r.from)
                    && dev.as_ref().map_or_else(
                        || fp.is_peer_endpoint(r.from),
                        |d| d.is_peer_endpoint(r.from),
                    )
                {
                    self.authenticated.push(r.from);
                }
            }
            self.tally.flush(fp.counters());
        }
        shared.send_control(&mut self.control);
        for from in self.authenticated.drain(..) {
            shared.transport.authenticated(from);
        }
        if tun.offload() {
            // Each inner packet is copied once, into its super-packet or
            // its own buffer ([`crate::gro`]), and each buffer is one write.
            for (b, range) in &self.inner {
                self.coalescer.push(&self.bufs[*b][range.clone()]);
            }
            let writes = self.coalescer.finish();
            add(&shared.io.tun_writes, writes.len());
            add(&shared.io.tun_write_packets, self.inner.len());
            for buf in writes {
                if let Err(e) = tun.write_raw(buf) {
                    shared.io.tun_write_errors.fetch_add(1, Ordering::Relaxed);
                    log::debug!("TUN write failed: {e}");
                }
            }
            return;
        }
        for chunk in self.inner.chunks(TUN_WRITE_BATCH) {
            for ((b, range), out) in chunk.iter().zip(self.out.iter_mut()) {
                out.clear();
                out.resize(TUN_WRITE_OFFSET, 0);
                out.extend_from_slice(&self.bufs[*b][range.clone()]);
            }
            add(&shared.io.tun_writes, 1);
            add(&shared.io.tun_write_packets, chunk.len());
            if let Err(e) = tun.write_batch(
                &mut self.gro,
                &mut self.out[..chunk.len()],
                TUN_WRITE_OFFSET,
            ) {
                shared.io.tun_write_errors.fetch_add(1, Ordering::Relaxed);
                log::debug!("TUN write failed: {e}");
            }
        }
    }
}

#[cfg(test)]
#[path = "dataplane_tests.rs"]
mod tests;
