//! The lock-free half of the protocol core: sealing and opening data frames
//! with a read-only snapshot of the [`Device`](crate::device::Device).
//!
//! The device (behind the data path's lock) owns handshakes, timers and
//! peer state; after every change it publishes a [`FastPath`]: the routing
//! table, each peer's endpoint and current session, and the receiver
//! indexes of every session it holds. Data-path workers load the snapshot
//! once per batch (one atomic load, no lock) and seal or open every frame
//! with it; the per-packet state they change is atomic (a session's send
//! counter and replay window, a peer's [`PeerStats`], the shared
//! [`FastCounters`]). What the snapshot cannot decide is handed back as
//! [`Sealed::Slow`] / [`Opened::Slow`], untouched, for the device to handle
//! under its lock: a packet for a peer without a usable session (staged, and
//! a handshake started), a frame for an unknown index (a triggered
//! handshake), the first frame of an unconfirmed session (key
//! confirmation), a frame that moves a peer's endpoint (roaming), and every
//! handshake message. A slow-path decision is taken before any byte of the
//! frame changes, so the device sees exactly what arrived.
//!
//! Per-batch accounting goes into a worker-local [`Tally`], added to the
//! shared atomics once per batch ([`Tally::flush`]), so workers sealing for
//! one peer do not contend on its counters packet by packet. The replay
//! window is marked per batch too: a worker opens its frames with
//! [`FastPath::decapsulate_deferred`], which leaves each authenticated
//! frame's counter in the tally, and [`FastPath::settle`] marks them under
//! one taking of each session's window lock before any of the batch's
//! packets is delivered, refusing the ones seen before.

use crate::crypto::aead::TAG_LEN;
use crate::device::{Counters, HEADROOM, OVERHEAD, TAILROOM};
use crate::peer::{PeerStats, Session, Slot};
use crate::prefix::Prefix;
use crate::wire::{self, MessageType};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters the lock-free path moves, shared by every worker; the
/// device's [`Counters`] add them to its own.
#[derive(Debug, Default)]
pub struct FastCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    drop_malformed: AtomicU64,
    drop_bad_tag: AtomicU64,
    drop_replay: AtomicU64,
    drop_spoofed_source: AtomicU64,
    drop_no_route: AtomicU64,
    drop_transit_denied: AtomicU64,
}

impl FastCounters {
    /// Adds these counters into `c`.
    pub fn add_to(&self, c: &mut Counters) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        c.rx_packets += get(&self.rx_packets);
        c.rx_bytes += get(&self.rx_bytes);
        c.tx_packets += get(&self.tx_packets);
        c.tx_bytes += get(&self.tx_bytes);
        c.drop_malformed += get(&self.drop_malformed);
        c.drop_bad_tag += get(&self.drop_bad_tag);
        c.drop_replay += get(&self.drop_replay);
        c.drop_spoofed_source += get(&self.drop_spoofed_source);
        c.drop_no_route += get(&self.drop_no_route);
        c.drop_transit_denied += get(&self.drop_transit_denied);
    }
}

/// One peer as the lock-free path sees it.
#[derive(Debug, Clone)]
pub struct FastPeer {
    pub(crate) endpoint: Option<SocketAddr>,
    /// The session to seal with (checked for age and counter use per packet).
    pub(crate) current: Option<Arc<Session>>,
    pub(crate) allowed: Vec<Prefix>,
    /// Peer positions this peer's packets may transit to; `None`: any.
    pub(crate) transit: Option<Vec<usize>>,
    /// On the UDP transport (see [`crate::device::moves_endpoint`]).
    pub(crate) udp: bool,
    pub(crate) stats: Arc<PeerStats>,
    /// The largest frame path MTU probing validated towards the peer
    /// ([`crate::pmtud`]); `None`: no limit of its own.
    pub(crate) probed_max_frame: Option<usize>,
}

/// A receiver index's session.
#[derive(Clone)]
pub struct IndexEntry {
    pub(crate) peer: usize,
    pub(crate) slot: Slot,
    pub(crate) session: Arc<Session>,
}

/// The device's read-mostly state, as published for the workers.
pub struct FastPath {
    pub(crate) routes: Vec<(Prefix, usize)>,
    pub(crate) peers: Vec<FastPeer>,
    pub(crate) indexes: HashMap<u32, IndexEntry>,
    pub(crate) mss_v4: Option<u16>,
    pub(crate) mss_v6: Option<u16>,
    pub(crate) reject_after: Duration,
    pub(crate) single_flow: bool,
    pub(crate) counters: Arc<FastCounters>,
    /// The smallest of the peers' `probed_max_frame`: frames up to it fit
    /// every probed path and need no per-peer lookup.
    pub(crate) probed_floor: Option<usize>,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("peers", &self.peers.len())
            .field("indexes", &self.indexes.len())
            .finish()
    }
}

/// What [`FastPath::encapsulate`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealed {
    /// Sealed in place: send `buf[..len]` to `to`.
    Send { to: SocketAddr, len: usize },
    /// Dropped and counted (malformed, no route).
    Dropped,
    /// Needs the device: no usable session or endpoint. The packet is as
    /// it was read (with its MSS clamped).
    Slow,
}

/// Why a packet from the TUN device goes nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unroutable {
    /// Not an IP packet we can parse, or no room to seal it.
    Malformed,
    /// No peer's prefixes cover its destination.
    NoRoute,
}

/// What [`FastPath::decapsulate`] did with a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The inner packet is `buf[range]`.
    Inner(Range<usize>),
    /// Consumed: a keepalive, or a frame dropped and counted.
    Done,
    /// An authenticated control message (a path MTU probe or ack,
    /// [`crate::pmtud::Control`]) from peer `peer`, in `buf[range]`, of a
    /// frame `frame_len` bytes long: for the device's
    /// [`crate::device::Device::on_control`]. Never for the TUN device.
    Control {
        peer: usize,
        range: Range<usize>,
        frame_len: usize,
    },
    /// Needs the device; the frame is untouched.
    Slow,
}

/// A worker's accounting for one batch, added to the shared atomics by
/// [`Tally::flush`]; also holds the run of send counters reserved for the
/// session it last sealed with.
#[derive(Debug, Default)]
pub struct Tally {
    rx_packets: u64,
    rx_bytes: u64,
    tx_packets: u64,
    tx_bytes: u64,
    drop_malformed: u64,
    drop_bad_tag: u64,
    drop_replay: u64,
    drop_spoofed_source: u64,
    drop_no_route: u64,
    drop_transit_denied: u64,
    /// The peer last seen and what happened with it since the last flush.
    peer: Option<PeerTally>,
    /// Counters reserved from `session` and not used yet: `next..end`.
    counters: Option<(Arc<Session>, u64, u64)>,
    /// Packets the batch still holds (how many counters to reserve at once).
    want: u64,
    /// The batch's clock reading (for the peers' traffic times).
    now: Option<Instant>,
    /// Data frames opened with [`FastPath::decapsulate_deferred`] whose
    /// counters [`FastPath::settle`] has yet to mark, in opening order.
    pending: Vec<PendingMark>,
}

/// An authenticated data frame waiting for its counter to be marked.
#[derive(Debug, Clone, Copy)]
struct PendingMark {
    /// Its session's receiver index (in the snapshot that opened it).
    index: u32,
    counter: u64,
    /// Inner bytes, counted once the counter is accepted.
    bytes: u64,
}

#[derive(Debug)]
struct PeerTally {
    stats: Arc<PeerStats>,
    tx_bytes: u64,
    rx_bytes: u64,
    session_bytes: Option<(Arc<Session>, u64)>,
    sent: Option<bool>,
    received: Option<bool>,
}

/// Most counters reserved at once: a batch's worth. Unused ones are never
/// sent (a gap the peer's replay window takes as loss), so reserving far
/// ahead would only waste counter space.
const MAX_RESERVE: u64 = 256;

impl Tally {
    /// Says that about `n` more packets will be sealed in this batch, so
    /// the next reservation takes that many counters in one atomic step.
    pub fn expect(&mut self, n: usize) {
        self.want = (n as u64).clamp(1, MAX_RESERVE);
    }

    fn counter(&mut self, s: &Arc<Session>) -> Option<u64> {
        if let Some((held, next, end)) = &mut self.counters {
            if Arc::ptr_eq(held, s) && *next < *end {
                let c = *next;
                *next += 1;
                self.want = self.want.saturating_sub(1).max(1);
                return Some(c);
            }
        }
        let n = self.want.max(1);
        // Near exhaustion a run may not fit: fall back to one counter.
        let (start, got) = match s.reserve(n) {
            Some(c) => (c, n),
            None => (s.reserve(1)?, 1),
        };
        self.counters = Some((s.clone(), start + 1, start + got));
        self.want = self.want.saturating_sub(1).max(1);
        Some(start)
    }

    fn peer(&mut self, stats: &Arc<PeerStats>) -> &mut PeerTally {
        if self
            .peer
            .as_ref()
            .is_some_and(|p| !Arc::ptr_eq(&p.stats, stats))
        {
            self.flush_peer();
        }
        self.peer.get_or_insert_with(|| PeerTally {
            stats: stats.clone(),
            tx_bytes: 0,
            rx_bytes: 0,
            session_bytes: None,
            sent: None,
            received: None,
        })
    }

    fn flush_peer(&mut self) {
        if let Some(p) = self.peer.take() {
            p.stats.add_tx(p.tx_bytes);
            p.stats.add_rx(p.rx_bytes);
            if let Some((s, n)) = p.session_bytes {
                s.add_sent_bytes(n);
            }
            // Received before sent: within one batch the order is unknown,
            // and "we sent data and heard nothing" must survive a batch
            // that did both only if nothing was heard.
            if let Some(data) = p.received {
                p.stats.received(self.now_of_batch(), data);
            }
            if let Some(data) = p.sent {
                p.stats.sent(self.now_of_batch(), data);
            }
        }
    }

    fn now_of_batch(&self) -> Instant {
        self.now.unwrap_or_else(Instant::now)
    }

    /// Data frames opened and not settled yet ([`FastPath::settle`]).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Adds everything counted since the last flush to the shared
    /// counters and peer stats, and drops the unused reserved counters.
    /// Frames still pending were never settled: their packets must not
    /// have been delivered, and they are counted as replays.
    pub fn flush(&mut self, shared: &FastCounters) {
        debug_assert!(self.pending.is_empty(), "flush before settle");
        self.drop_replay += self.pending.len() as u64;
        self.pending.clear();
        self.flush_peer();
        let add = |a: &AtomicU64, v: &mut u64| {
            if *v > 0 {
                a.fetch_add(std::mem::take(v), Ordering::Relaxed);
            }
        };
        add(&shared.rx_packets, &mut self.rx_packets);
        add(&shared.rx_bytes, &mut self.rx_bytes);
        add(&shared.tx_packets, &mut self.tx_packets);
        add(&shared.tx_bytes, &mut self.tx_bytes);
        add(&shared.drop_malformed, &mut self.drop_malformed);
        add(&shared.drop_bad_tag, &mut self.drop_bad_tag);
        add(&shared.drop_replay, &mut self.drop_replay);
        add(&shared.drop_spoofed_source, &mut self.drop_spoofed_source);
        add(&shared.drop_no_route, &mut self.drop_no_route);
        add(&shared.drop_transit_denied, &mut self.drop_transit_denied);
        self.counters = None;
        self.want = 1;
        self.now = None;
    }
}

impl FastPath {
    /// The shared counters this snapshot's [`Tally`]s flush into.
    pub fn counters(&self) -> &FastCounters {
        &self.counters
    }

    /// The peer whose prefixes cover `dst`.
    pub fn route(&self, dst: IpAddr) -> Option<usize> {
        self.routes
            .iter()
            .find(|(p, _)| p.contains(dst))
            .map(|(_, i)| *i)
    }

    /// The peer an inner packet would be sent to, without sealing it;
    /// `None` for unroutable or malformed packets.
    pub fn peer_for(&self, packet: &[u8]) -> Option<&FastPeer> {
        let dst = wire::inner_ip_info(packet).ok()?.dst;
        self.peers.get(self.route(dst)?)
    }

    /// The frame limit path MTU probing set towards the peer an inner
    /// packet goes to, if any.
    pub fn probed_max_frame(&self, packet: &[u8]) -> Option<usize> {
        self.peer_for(packet)?.probed_max_frame
    }

    /// The smallest frame limit probing set on any peer: frames up to it
    /// fit every path, and need no [`FastPath::probed_max_frame`].
    pub fn probed_floor(&self) -> Option<usize> {
        self.probed_floor
    }

    /// True when `addr` is some peer's current endpoint.
    pub fn is_peer_endpoint(&self, addr: SocketAddr) -> bool {
        self.peers.iter().any(|p| p.endpoint == Some(addr))
    }

    /// Seals one packet read from the TUN device into
    /// `buf[HEADROOM..HEADROOM + len]` (`buf` must have `TAILROOM` more
    /// bytes behind it) with the peer's current session.
    pub fn encapsulate(
        &self,
        tally: &mut Tally,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> Sealed {
        tally.now.get_or_insert(now);
        let pi = match self.classify(buf, len) {
            Ok(pi) => pi,
            Err(Unroutable::Malformed) => {
                tally.drop_malformed += 1;
                return Sealed::Dropped;
            }
            Err(Unroutable::NoRoute) => {
                tally.drop_no_route += 1;
                return Sealed::Dropped;
            }
        };
        let peer = &self.peers[pi];
        let (Some(to), Some(session)) = (
            peer.endpoint,
            peer.current
                .as_ref()
                .filter(|s| s.can_send(now, self.reject_after)),
        ) else {
            return Sealed::Slow;
        };
        let Some(counter) = tally.counter(session) else {
            return Sealed::Slow;
        };
        let total = seal(
            session,
            counter,
            MessageType::Data,
            &mut buf[..OVERHEAD + len],
        );
        let p = tally.peer(&peer.stats);
        p.tx_bytes += len as u64;
        match &mut p.session_bytes {
            Some((s, n)) if Arc::ptr_eq(s, session) => *n += len as u64,
            other => {
                if let Some((s, n)) = other.take() {
                    s.add_sent_bytes(n);
                }
                *other = Some((session.clone(), len as u64));
            }
        }
        p.sent = Some(true);
        tally.tx_packets += 1;
        tally.tx_bytes += len as u64;
        Sealed::Send { to, len: total }
    }

    /// Checks, routes and MSS-clamps a packet read from the TUN device into
    /// `buf[HEADROOM..HEADROOM + len]`: the position of the peer it goes to.
    pub(crate) fn classify(&self, buf: &mut [u8], len: usize) -> Result<usize, Unroutable> {
        if buf.len() < HEADROOM + len + TAILROOM {
            return Err(Unroutable::Malformed);
        }
        let packet = &mut buf[HEADROOM..HEADROOM + len];
        let dst = wire::inner_ip_info(packet)
            .map_err(|_| Unroutable::Malformed)?
            .dst;
        let pi = self.route(dst).ok_or(Unroutable::NoRoute)?;
        let mss = if dst.is_ipv4() {
            self.mss_v4
        } else {
            self.mss_v6
        };
        if let Some(mss) = mss {
            wire::clamp_tcp_mss(packet, mss);
        }
        Ok(pi)
    }

    /// Opens one data frame received from `from` in `buf[..len]` when the
    /// snapshot can decide it (see the module doc), and marks its counter
    /// in the replay window at once.
    pub fn decapsulate(
        &self,
        tally: &mut Tally,
        buf: &mut [u8],
        len: usize,
        from: SocketAddr,
        now: Instant,
    ) -> Opened {
        let opened = self.open(tally, buf, len, from, now, false);
        debug_assert_eq!(tally.pending(), 0);
        opened
    }

    /// [`FastPath::decapsulate`] for a batch: an authenticated data frame's
    /// counter is left in `tally` instead of being marked, and its inner
    /// packet ([`Opened::Inner`]) may be delivered only once
    /// [`FastPath::settle`] has accepted it. Keepalives, control messages
    /// and frames dropped after opening are marked at once, as before.
    pub fn decapsulate_deferred(
        &self,
        tally: &mut Tally,
        buf: &mut [u8],
        len: usize,
        from: SocketAddr,
        now: Instant,
    ) -> Opened {
        self.open(tally, buf, len, from, now, true)
    }

    /// Marks the counters of the frames [`FastPath::decapsulate_deferred`]
    /// opened since the last settle, one window lock per run of frames of
    /// one session, and counts the accepted ones. `refused(k)` is called
    /// for the `k`-th of them (from 0, in opening order) when its counter
    /// was seen before (a replay, or the same frame received twice in the
    /// batch, or by another worker first): its packet must be dropped.
    /// Must be called with the snapshot that opened them.
    pub fn settle(&self, tally: &mut Tally, mut refused: impl FnMut(usize)) {
        let pending = std::mem::take(&mut tally.pending);
        let mut k = 0;
        while k < pending.len() {
            let index = pending[k].index;
            let run = pending[k..].iter().take_while(|p| p.index == index).count();
            let frames = &pending[k..k + run];
            match self.indexes.get(&index) {
                Some(entry) => {
                    let peer = &self.peers[entry.peer];
                    let (accepted, bytes) = entry.session.mark_batch(|mark| {
                        let (mut n, mut bytes) = (0u64, 0u64);
                        for (j, f) in frames.iter().enumerate() {
                            if mark(f.counter) {
                                n += 1;
                                bytes += f.bytes;
                            } else {
                                refused(k + j);
                            }
                        }
                        (n, bytes)
                    });
                    tally.drop_replay += run as u64 - accepted;
                    if accepted > 0 {
                        let p = tally.peer(&peer.stats);
                        p.received = Some(true);
                        p.rx_bytes += bytes;
                        tally.rx_packets += accepted;
                        tally.rx_bytes += bytes;
                    }
                }
                // Cannot happen with the snapshot that opened them; if it
                // does, nothing unmarked is delivered.
                None => {
                    for j in 0..run {
                        refused(k + j);
                    }
                    tally.drop_replay += run as u64;
                }
            }
            k += run;
        }
        tally.pending = pending;
        tally.pending.clear();
    }

    fn open(
        &self,
        tally: &mut Tally,
        buf: &mut [u8],
        len: usize,
        from: SocketAddr,
        now: Instant,
        defer: bool,
    ) -> Opened {
        tally.now.get_or_insert(now);
        let Some(frame) = buf.get_mut(..len) else {
            tally.drop_malformed += 1;
            return Opened::Done;
        };
        match wire::message_type(frame) {
            Ok(MessageType::Data) | Ok(MessageType::Keepalive) => {}
            Ok(_) => return Opened::Slow,
            Err(_) => {
                tally.drop_malformed += 1;
                return Opened::Done;
            }
        }
        let Some((idx, counter, is_keepalive)) = data_header(frame) else {
            tally.drop_malformed += 1;
            return Opened::Done;
        };
        let Some(entry) = self.indexes.get(&idx) else {
            return Opened::Slow;
        };
        let session = &entry.session;
        let peer = &self.peers[entry.peer];
        if entry.slot == Slot::Next
            || now.duration_since(session.created) >= self.reject_after
            || (peer.endpoint != Some(from)
                && crate::device::moves_endpoint(
                    peer.endpoint,
                    from,
                    peer.udp && !self.single_flow,
                    is_keepalive,
                ))
        {
            return Opened::Slow;
        }
        if !session.may_accept(counter) {
            tally.drop_replay += 1;
            return Opened::Done;
        }
        let (header, body) = frame.split_at_mut(HEADROOM);
        let Ok(plain_len) = session.recv.open_in_place(counter, header, body) else {
            tally.drop_bad_tag += 1;
            return Opened::Done;
        };
        let control = !is_keepalive
            && plain_len > 0
            && crate::pmtud::Control::is_control(&frame[HEADROOM..HEADROOM + plain_len]);
        // A control message is traffic from the peer but not data: it must
        // not end path MTU probing's "data sent, none back" silence.
        let data = !is_keepalive && plain_len > 0 && !control;
        if defer && data {
            // Marked by `settle`, unless a check below drops the frame.
            let plain = &frame[HEADROOM..HEADROOM + plain_len];
            let why = match self.check_inner(entry.peer, plain) {
                Ok(n) => {
                    tally.pending.push(PendingMark {
                        index: idx,
                        counter,
                        bytes: n as u64,
                    });
                    return Opened::Inner(HEADROOM..HEADROOM + n);
                }
                Err(why) => why,
            };
            // Dropped: marked now, so a replay of it counts as one.
            if !session.mark(counter) {
                tally.drop_replay += 1;
                return Opened::Done;
            }
            tally.peer(&peer.stats).received = Some(true);
            self.count_inner_drop(tally, entry.peer, why);
            return Opened::Done;
        }
        if !session.mark(counter) {
            tally.drop_replay += 1;
            return Opened::Done;
        }
        let p = tally.peer(&peer.stats);
        p.received = Some(p.received.unwrap_or(false) || data);
        if control {
            return Opened::Control {
                peer: entry.peer,
                range: HEADROOM..HEADROOM + plain_len,
                frame_len: len,
            };
        }
        if !data {
            return Opened::Done;
        }
        match self.check_inner(entry.peer, &frame[HEADROOM..HEADROOM + plain_len]) {
            Ok(n) => {
                tally.peer(&peer.stats).rx_bytes += n as u64;
                tally.rx_packets += 1;
                tally.rx_bytes += n as u64;
                Opened::Inner(HEADROOM..HEADROOM + n)
            }
            Err(why) => {
                self.count_inner_drop(tally, entry.peer, why);
                Opened::Done
            }
        }
    }

    /// The checks an opened data frame's inner packet must pass: a
    /// well-formed IP packet (its length), from a source the peer may use,
    /// to a destination it may reach (transit).
    fn check_inner(&self, peer: usize, packet: &[u8]) -> Result<usize, InnerDrop> {
        let info = wire::inner_ip_info(packet).map_err(|_| InnerDrop::Malformed)?;
        let p = &self.peers[peer];
        if !p.allowed.iter().any(|a| a.contains(info.src)) {
            return Err(InnerDrop::SpoofedSource);
        }
        if let Some(to) = &p.transit {
            if self
                .route(info.dst)
                .is_some_and(|j| j != peer && !to.contains(&j))
            {
                return Err(InnerDrop::TransitDenied);
            }
        }
        Ok(info.total_len)
    }

    fn count_inner_drop(&self, tally: &mut Tally, peer: usize, why: InnerDrop) {
        match why {
            InnerDrop::Malformed => tally.drop_malformed += 1,
            InnerDrop::SpoofedSource => tally.drop_spoofed_source += 1,
            InnerDrop::TransitDenied => {
                tally.drop_transit_denied += 1;
                self.peers[peer].stats.add_transit_denied();
            }
        }
    }
}

/// Why an opened inner packet is dropped ([`FastPath::check_inner`]).
#[derive(Debug, Clone, Copy)]
enum InnerDrop {
    Malformed,
    SpoofedSource,
    TransitDenied,
}

/// A data or keepalive frame's receiver index, counter and whether it is a
/// keepalive; `None` when it is too short to hold a header and a tag.
pub(crate) fn data_header(frame: &[u8]) -> Option<(u32, u64, bool)> {
    let f = wire::DataFrame::new_checked(frame).ok()?;
    (f.payload().len() >= TAG_LEN).then(|| {
        (
            f.receiver_index(),
            f.counter(),
            frame[0] == MessageType::Keepalive as u8,
        )
    })
}

/// Writes the data header for `ty` with `counter` into `buf[..HEADROOM]`
/// and seals `buf[HEADROOM..]` (inner packet followed by room for the tag)
/// in place. Returns the frame length.
pub(crate) fn seal(session: &Session, counter: u64, ty: MessageType, buf: &mut [u8]) -> usize {
    let (header, body) = buf.split_at_mut(HEADROOM);
    // Both only fail for buffers without room for header and tag, or a
    // non-data type, which callers never pass; such a frame would be dropped
    // by the peer.
    if wire::DataFrame::emit_header(header, ty, session.remote_index, counter).is_err()
        || session.send.seal_in_place(counter, header, body).is_err()
    {
        log::error!("sealing a {} byte buffer failed", body.len());
    }
    buf.len()
}
