//! The TUN → network direction of a worker (step 3 of the flow in
//! [`super`]):
//! 1. read: one read from the worker's TUN queue returns a packet or, with
//!    offload, a TCP super-packet split into up to [`MAX_SPLIT`] packets,
//!    each at the headroom offset of a pooled buffer; reads go on until
//!    `batch` packets are in or the queue is empty (with `queue: fq_codel`
//!    through [`super::queue`]);
//! 2. seal: every packet is sealed in place with the device's published
//!    snapshot, without its lock (a run of nonce counters reserved per
//!    batch); packets for a peer without a usable session go to the device
//!    under its lock, once per batch;
//! 3. send: runs of equal-sized frames to the same peer and outer flow
//!    leave with one GSO `sendmsg` of up to `batch` segments; the TX slots
//!    are one [`Slab`], so full-size frames sealed in consecutive slots
//!    are sent from where they were sealed (other runs are copied back to
//!    back first); with `flows` > 1 each packet's outer flow is its inner
//!    5-tuple's hash, taken before sealing, so an inner flow keeps its order.

use super::queue::TxQueue;
use super::stats::add;
use super::{time_now, would_block, Shared, MAX_FRAME, MAX_GSO_BYTES, TUN_WRITE_OFFSET};
use crate::config::QueueKind;
use crate::device::{Datagram, Outcome, HEADROOM, OVERHEAD, TAILROOM};
use crate::fastpath::{FastPath, Sealed, Tally};
use crate::slab::{Slab, Slots};
use crate::transport::Transport;
use crate::tun::{TunIo, MAX_SPLIT, READ_SCRATCH};
use std::io;
use std::sync::atomic::Ordering;

/// Most frames in one GSO run: the largest `dataplane.batch` (the kernel
/// takes at most 64 segments per send, 128 in newer kernels:
/// UDP_MAX_SEGMENTS).
const MAX_RUN: usize = 128;

/// Buffers of the TUN → network direction.
pub(super) struct TxState {
    pub(super) scratch: Vec<u8>,
    /// One slot per packet of the batch; sealed in place, full-size frames
    /// in consecutive slots form a GSO train where they lie.
    pub(super) bufs: Slab,
    pub(super) sizes: Vec<usize>,
    /// Outer flow of each packet (its inner 5-tuple's hash).
    pub(super) flow: Vec<usize>,
    /// The queue's flow hash of each packet (with `queue: fq_codel`).
    pub(super) hashes: Vec<u64>,
    /// ECN codepoint of each packet, for its outer header (RFC 6040 normal
    /// mode: copied from the inner header; 0 with `ecn: false`).
    pub(super) ecn: Vec<u8>,
    /// The transport's flow count.
    pub(super) flows: usize,
    pub(super) outcomes: Vec<Outcome>,
    /// Positions of the batch's packets left to the device (slow path).
    pub(super) slow: Vec<usize>,
    /// The batch's accounting on the lock-free path.
    pub(super) tally: Tally,
    /// Positions of the frames of the GSO run being formed.
    pub(super) run: Vec<usize>,
    /// A run whose frames do not lie back to back, copied.
    pub(super) gso: Vec<u8>,
    pub(super) control: Vec<Datagram>,
    pub(super) batch: usize,
    pub(super) max_segments: usize,
    /// ICMP "too big" answers for packets the transport cannot carry, and
    /// the GRO table their TUN write needs.
    pub(super) icmp: Vec<Vec<u8>>,
    pub(super) icmp_gro: tun_rs::GROTable,
    /// The fq_codel queue (`None` with `queue: fifo`).
    pub(super) queue: Option<TxQueue>,
}

impl TxState {
    pub(super) fn new(shared: &Shared<'_>) -> TxState {
        let k = &shared.knobs;
        let max_segments = shared.transport.max_segments().min(MAX_RUN);
        // A batch, plus room for one more super-packet's split: reads go on
        // while fewer than `batch` packets are in.
        let slots = MAX_SPLIT + k.batch;
        let queue = (k.queue == QueueKind::FqCodel).then(|| TxQueue::new(k, shared.mtu));
        TxState {
            scratch: vec![0u8; READ_SCRATCH],
            bufs: Slab::new(slots, slot_size(shared.mtu)),
            sizes: vec![0; slots],
            flow: vec![0; slots],
            hashes: vec![0; slots],
            ecn: vec![0; slots],
            flows: shared.transport.flows(),
            outcomes: Vec::with_capacity(slots),
            slow: Vec::with_capacity(slots),
            tally: Tally::default(),
            run: Vec::with_capacity(MAX_RUN),
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
    pub(super) fn backlog(&self) -> bool {
        self.queue.as_ref().is_some_and(|q| !q.fq.is_empty())
    }

    /// Reads from the TUN device if it is `readable` (through the queue, if
    /// any), then seals and sends one batch.
    pub(super) fn run(
        &mut self,
        shared: &Shared<'_>,
        tun: &dyn TunIo,
        readable: bool,
    ) -> io::Result<()> {
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
        Ok(())
    }

    /// `queue: fifo`: reads one batch straight into the send buffers.
    fn read_fifo(&mut self, shared: &Shared<'_>, tun: &dyn TunIo) -> io::Result<usize> {
        // Reads go on until `batch` packets are in or the ring is empty:
        // one read may be a super-packet of up to MAX_SPLIT packets (with
        // offload), so one is started only while that much room is left;
        // small packets (UDP, ACKs, interactive flows) are one per read,
        // and many of them still make one batch and few sends.
        let room = if tun.offload() { MAX_SPLIT } else { 1 };
        let mut n = 0;
        while n < self.batch && self.bufs.count() - n >= room {
            match read_tun(
                shared,
                tun,
                &mut self.scratch,
                &mut self.bufs.tail(n),
                &mut self.sizes[n..],
            )? {
                Some(k) => n += k,
                None => break,
            }
        }
        Ok(n)
    }

    /// Seals `bufs[..n]` under one device lock and sends them.
    fn seal_and_send(&mut self, shared: &Shared<'_>, tun: &dyn TunIo, n: usize) {
        let t = time_now();
        self.outcomes.clear();
        let floor = shared.transport.frame_floor();
        // What the outer header needs from the inner one is read here, as
        // sealing hides it (and outside the device lock): the outer flow
        // (inner 5-tuple hash; the fq_codel queue already hashed it, with
        // its own key, which keeps every inner flow on one outer flow just
        // as well) and the ECN field.
        for i in 0..n {
            let packet = &self.bufs.get(i)[HEADROOM..HEADROOM + self.sizes[i]];
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
            let floor = min_limit(floor, fp.probed_floor());
            self.tally.expect(n);
            for i in 0..n {
                if floor.is_some_and(|f| self.sizes[i] + OVERHEAD > f) {
                    let packet = &self.bufs.get(i)[HEADROOM..HEADROOM + self.sizes[i]];
                    if too_big(&fp, shared.transport, packet, &mut self.icmp) {
                        add(&shared.io.path_too_big, 1);
                        self.outcomes.push(Outcome::Held);
                        continue;
                    }
                }
                let o = match fp.encapsulate(
                    &mut self.tally,
                    self.bufs.slot(i),
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
                    dev.encapsulate(self.bufs.slot(i), self.sizes[i], &t, &mut self.control);
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
    pub(super) fn send(&mut self, shared: &Shared<'_>) {
        // (where, segment size, bytes so far, last frame's length); the
        // run's frames are `self.run`'s positions.
        let mut run: Option<(Destination, usize, usize, usize)> = None;
        self.run.clear();
        for i in 0..self.outcomes.len() {
            let Outcome::Send { to, len } = self.outcomes[i] else {
                continue;
            };
            let dest = (to, self.flow[i], self.ecn[i]);
            match run {
                Some((rdest, seg, bytes, _))
                    if rdest == dest
                        && len <= seg
                        && self.run.len() < self.max_segments
                        && bytes + len <= MAX_GSO_BYTES =>
                {
                    self.run.push(i);
                    // A shorter frame must be the run's last.
                    run = (len == seg).then_some((rdest, seg, bytes + len, len));
                    if run.is_none() {
                        self.flush(shared, rdest, seg, len);
                    }
                }
                _ => {
                    if let Some((rdest, seg, _, last)) = run.take() {
                        self.flush(shared, rdest, seg, last);
                    }
                    self.run.push(i);
                    run = Some((dest, len, len, len));
                }
            }
        }
        if let Some((dest, seg, _, last)) = run {
            self.flush(shared, dest, seg, last);
        }
    }

    /// Sends the run of frames at `self.run`'s positions (`seg` bytes each,
    /// the last `last`) as one GSO send, then empties the run. Frames that
    /// lie back to back in the slab leave from there; others are copied
    /// back to back into one buffer first.
    fn flush(
        &mut self,
        shared: &Shared<'_>,
        (to, flow, ecn): Destination,
        seg: usize,
        last: usize,
    ) {
        if self.run.is_empty() {
            return;
        }
        add(&shared.io.udp_sends, 1);
        add(&shared.io.udp_send_frames, self.run.len());
        let contents = match self.bufs.train(&self.run, seg, last) {
            Some(train) => train,
            None => {
                self.gso.clear();
                for (k, &i) in self.run.iter().enumerate() {
                    let len = if k + 1 == self.run.len() { last } else { seg };
                    self.gso.extend_from_slice(&self.bufs.get(i)[..len]);
                }
                add(&shared.io.udp_send_copies, 1);
                &self.gso[..]
            }
        };
        if let Err(e) = shared.transport.send_flow(flow, to, contents, seg, ecn) {
            shared.io.send_errors.fetch_add(1, Ordering::Relaxed);
            log::debug!("send to {to} failed: {e}");
        }
        self.run.clear();
    }
}

/// Size of every TX buffer: headroom, the largest inner packet, tag.
pub(super) fn slot_size(mtu: usize) -> usize {
    HEADROOM + mtu.clamp(576, MAX_FRAME - OVERHEAD) + TAILROOM
}

/// One TUN read into `bufs`: `Some(packets)`, or `None` when the ring is
/// empty (or the read failed in a way worth only a log line).
pub(super) fn read_tun(
    shared: &Shared<'_>,
    tun: &dyn TunIo,
    scratch: &mut [u8],
    bufs: &mut dyn Slots,
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

/// The smaller of two optional frame limits.
fn min_limit(a: Option<usize>, b: Option<usize>) -> Option<usize> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// True when `packet` does not fit the frame limit to its peer (QUIC
/// datagrams, the kernel's path MTU over UDP) or what path MTU probing
/// validated ([`crate::pmtud`]); then an ICMP "fragmentation needed" /
/// "packet too big" for its sender, from its destination, is queued in
/// `icmp` (nothing for packets that must not be answered, e.g. IPv4
/// without DF).
fn too_big(
    dev: &FastPath,
    transport: &dyn Transport,
    packet: &[u8],
    icmp: &mut Vec<Vec<u8>>,
) -> bool {
    // One parse and route lookup for both limits.
    let Some(peer) = dev.peer_for(packet) else {
        return false;
    };
    let kernel = peer.endpoint.and_then(|to| transport.max_frame(to));
    let Some(max) = min_limit(kernel, peer.probed_max_frame) else {
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
