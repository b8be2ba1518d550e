//! Per-peer protocol state: the sessions we hold with one remote gateway, the
//! handshake in flight, timers, and the packets waiting for a session.
//!
//! No I/O and no clock: every method takes `now`. Which session is used:
//! - `current`: the session we seal with;
//! - `previous`: the session before the last rekey, still accepted on receive
//!   until it expires, so packets in flight during a rekey are not lost;
//! - `next`: a session we answered as responder but that the initiator has
//!   not yet used; it becomes `current` on its first authenticated packet
//!   (key confirmation, as in WireGuard).

use crate::crypto::aead::Aead;
use crate::crypto::cookie::CookieJar;
use crate::crypto::handshake::{Initiation, SessionKeys, TIMESTAMP_LEN};
use crate::crypto::ReplayWindow;
use crate::prefix::Prefix;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Packets held per peer while a handshake is in flight. 128 covers a TCP
/// window's worth of SYNs and the first flight of a few connections without
/// letting a dead peer pin memory (WireGuard holds the same number).
pub const MAX_STAGED_PACKETS: usize = 128;
/// Sessions refuse to seal beyond this counter; rekey by bytes comes far earlier.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// First retry of an unanswered initiation; doubled per attempt.
pub const HANDSHAKE_RETRY_BASE: Duration = Duration::from_secs(1);
/// Retry interval cap: a peer that comes back is found within this time even
/// if it does not initiate itself.
pub const HANDSHAKE_RETRY_MAX: Duration = Duration::from_secs(4);
/// Least time between two handshakes triggered by data frames for an
/// index we do not hold (WireGuard's REKEY_TIMEOUT): a peer that restarted
/// is answered at once, a spoofer replaying stale frames gets one
/// handshake per 5 s, not one per frame.
pub const TRIGGERED_HANDSHAKE_EVERY: Duration = Duration::from_secs(5);

/// One established session with a peer: immutable keys plus the two pieces
/// of state that change per packet, each safe to share between data-path
/// workers without the device lock:
/// - the send counter, an atomic from which runs of counters are reserved
///   ([`Session::reserve`]), so no two workers ever seal with one nonce;
/// - the replay window, behind a lock of its own, held for a bit test
///   before and a bit set after each decryption, never across one (a
///   per-session lock, so workers contend only when they open frames of
///   one session at the same instant).
///
/// Sessions are shared as `Arc<Session>` between the device and the
/// published [`crate::fastpath::FastPath`]; a rekey installs a new one and
/// the old one lives on as `previous` until it expires.
pub struct Session {
    pub(crate) send: Box<dyn Aead>,
    pub(crate) recv: Box<dyn Aead>,
    pub(crate) local_index: u32,
    pub(crate) remote_index: u32,
    send_counter: AtomicU64,
    replay: Mutex<ReplayWindow>,
    /// One past the replay window's highest accepted counter (0: none
    /// yet), readable without its lock: a counter at or above it is fresh
    /// at the time of the check, so in-order frames skip the lock before
    /// decryption ([`Session::mark`] checks again under it).
    replay_next: AtomicU64,
    pub(crate) created: Instant,
    pub(crate) initiator: bool,
    sent_bytes: AtomicU64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("counters_used", &self.counters_used())
            .finish()
    }
}

impl Session {
    /// Builds a session from handshake output with the configured cipher.
    pub fn new(
        keys: &SessionKeys,
        make: impl Fn(&[u8; 32]) -> Result<Box<dyn Aead>, crate::crypto::CryptoError>,
        now: Instant,
    ) -> Result<Self, crate::crypto::CryptoError> {
        Ok(Session {
            send: make(&keys.send)?,
            recv: make(&keys.recv)?,
            local_index: keys.local_index,
            remote_index: keys.remote_index,
            send_counter: AtomicU64::new(0),
            replay: Mutex::new(ReplayWindow::new()),
            replay_next: AtomicU64::new(0),
            created: now,
            initiator: keys.initiator,
            sent_bytes: AtomicU64::new(0),
        })
    }

    /// Whether this session may still seal at `now`.
    pub fn can_send(&self, now: Instant, reject_after: Duration) -> bool {
        self.send_counter.load(Ordering::Relaxed) < REJECT_AFTER_MESSAGES
            && now.duration_since(self.created) < reject_after
    }

    /// Reserves `n` consecutive send counters and returns the first, or
    /// `None` when that would pass [`REJECT_AFTER_MESSAGES`] (the counter
    /// then stays where it is, so it can never wrap to a used value).
    /// Counters reserved and not used are simply never sent: the peer's
    /// replay window sees a gap, as it does for a lost frame.
    pub fn reserve(&self, n: u64) -> Option<u64> {
        self.send_counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                c.checked_add(n).filter(|end| *end <= REJECT_AFTER_MESSAGES)
            })
            .ok()
    }

    /// Takes the next send counter (`None` once the session is exhausted).
    pub fn next_counter(&self) -> Option<u64> {
        self.reserve(1)
    }

    /// Counters handed out so far (the next one to be reserved).
    pub fn counters_used(&self) -> u64 {
        self.send_counter.load(Ordering::Relaxed)
    }

    /// Inner bytes sealed with this session (the rekey-by-bytes trigger).
    pub fn sent_bytes(&self) -> u64 {
        self.sent_bytes.load(Ordering::Relaxed)
    }

    /// Adds `n` sealed inner bytes.
    pub fn add_sent_bytes(&self, n: u64) {
        self.sent_bytes.fetch_add(n, Ordering::Relaxed);
    }

    fn window(&self) -> std::sync::MutexGuard<'_, ReplayWindow> {
        // The window is a plain bitmap: one a panicking thread left behind
        // is still a valid window.
        self.replay.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The check before decryption: false when `counter` was seen or is
    /// too old, so a replayed frame costs no decryption. A counter above
    /// the highest accepted one (in-order traffic) passes without the lock.
    /// Another opener may take the counter between this and
    /// [`Session::mark`], which therefore checks again.
    pub fn may_accept(&self, counter: u64) -> bool {
        counter >= self.replay_next.load(Ordering::Relaxed) || self.window().check(counter)
    }

    /// Records an authenticated frame's `counter`; false when it was seen
    /// before or is too old (the frame must then be dropped). Safe under
    /// concurrent calls: each counter is accepted at most once. The lock is
    /// held for a bit test and set, never across a decryption.
    pub fn mark(&self, counter: u64) -> bool {
        self.mark_batch(|mark| mark(counter))
    }

    /// [`Session::mark`] for many counters under one taking of the lock:
    /// `f` gets the marker and calls it once per counter (true: fresh,
    /// accept; false: seen or too old, drop). A worker opening a GRO train
    /// marks its ~44 frames with one lock instead of 44, so workers
    /// opening frames of one session at once seldom meet on it.
    pub fn mark_batch<R>(&self, f: impl FnOnce(&mut dyn FnMut(u64) -> bool) -> R) -> R {
        let mut w = self.window();
        let mut any = false;
        let r = f(&mut |counter| {
            let fresh = w.mark(counter);
            any |= fresh;
            fresh
        });
        if any {
            // Saturating: at u64::MAX the lock-free check lets the last
            // counter through to `mark`, which refuses it.
            let next = w.top().map_or(0, |t| t.saturating_add(1));
            self.replay_next.store(next, Ordering::Relaxed);
        }
        r
    }
}

/// An initiation we sent and are waiting on.
pub struct Pending {
    pub(crate) initiation: Initiation,
    pub(crate) sent_at: Instant,
    pub(crate) attempt: u32,
}

/// Which of a peer's sessions a local index belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Current,
    Previous,
    Next,
}

/// A configured remote gateway and its protocol state.
pub struct Peer {
    pub(crate) name: String,
    pub(crate) public: [u8; 32],
    pub(crate) endpoint: Option<SocketAddr>,
    /// The endpoint the config names (`endpoint` moves when the peer
    /// roams); a reload changes `endpoint` only when this changes.
    pub(crate) configured_endpoint: Option<SocketAddr>,
    pub(crate) allowed: Vec<Prefix>,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) current: Option<Arc<Session>>,
    pub(crate) previous: Option<Arc<Session>>,
    pub(crate) next: Option<Arc<Session>>,
    pub(crate) pending: Option<Pending>,
    /// Greatest initiation timestamp accepted from this peer (replay guard).
    pub(crate) last_timestamp: [u8; TIMESTAMP_LEN],
    pub(crate) last_handshake: Option<Instant>,
    /// Earliest time a new initiation may start (backoff between attempts).
    pub(crate) next_attempt: Option<Instant>,
    /// Traffic times and byte counts, updated by the data-path workers
    /// without the device lock and read by the timers.
    pub(crate) stats: Arc<PeerStats>,
    pub(crate) staged: VecDeque<Vec<u8>>,
    /// The MACs of the handshake messages we send this peer, and its cookie.
    pub(crate) jar: CookieJar,
    /// When data for an unknown index last triggered a handshake.
    pub(crate) triggered_at: Option<Instant>,
    pub(crate) handshakes: u64,
    /// Why there is no session, for `tunneld show` and the log.
    pub(crate) diag: Diagnosis,
    /// Path MTU probing towards this peer (set up by the device).
    pub(crate) pmtu: crate::pmtud::Pmtud,
}

/// What a peer without a session has done so far: initiations sent and
/// not answered, and the last refusal seen, so an operator reads "3
/// initiations unanswered since 12:01:07" instead of `"session": false`.
#[derive(Debug, Clone, Default)]
pub struct Diagnosis {
    /// Initiations sent since the last session was established.
    pub unanswered: u32,
    /// Wall-clock time (since the Unix epoch) of the first of them.
    pub unanswered_since: Option<Duration>,
    /// The last thing that went wrong with this peer's handshakes.
    pub refusal: Option<String>,
    /// When the log last said so (rate limit).
    pub logged_at: Option<Instant>,
}

impl Diagnosis {
    /// An initiation went out at wall-clock `unix`.
    pub fn initiated(&mut self, unix: Duration) {
        self.unanswered = self.unanswered.saturating_add(1);
        self.unanswered_since.get_or_insert(unix);
    }

    /// A session was established: nothing to explain any more.
    pub fn established(&mut self) {
        *self = Diagnosis::default();
    }
}

impl Peer {
    /// A peer with no session yet.
    pub fn new(
        name: String,
        public: [u8; 32],
        endpoint: Option<SocketAddr>,
        allowed: Vec<Prefix>,
        keepalive: Option<Duration>,
    ) -> Self {
        Peer {
            name,
            public,
            endpoint,
            configured_endpoint: endpoint,
            allowed,
            keepalive,
            current: None,
            previous: None,
            next: None,
            pending: None,
            last_timestamp: [0; TIMESTAMP_LEN],
            last_handshake: None,
            next_attempt: None,
            stats: Arc::new(PeerStats::new()),
            staged: VecDeque::new(),
            jar: CookieJar::new(&public),
            triggered_at: None,
            handshakes: 0,
            diag: Diagnosis::default(),
            pmtu: crate::pmtud::Pmtud::disabled(),
        }
    }

    /// The peer's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which session, if any, owns `local_index`.
    pub fn slot_of(&self, local_index: u32) -> Option<Slot> {
        let is =
            |s: &Option<Arc<Session>>| s.as_ref().is_some_and(|s| s.local_index == local_index);
        if is(&self.current) {
            Some(Slot::Current)
        } else if is(&self.previous) {
            Some(Slot::Previous)
        } else if is(&self.next) {
            Some(Slot::Next)
        } else {
            None
        }
    }

    /// The local indexes this peer holds: its sessions' and its handshake
    /// in flight's.
    pub fn local_indexes(&self) -> impl Iterator<Item = u32> + '_ {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .filter_map(|s| s.as_ref().map(|s| s.local_index))
            .chain(self.pending.as_ref().map(|p| p.initiation.local_index()))
    }

    /// A session by slot.
    pub fn session(&self, slot: Slot) -> Option<&Arc<Session>> {
        match slot {
            Slot::Current => self.current.as_ref(),
            Slot::Previous => self.previous.as_ref(),
            Slot::Next => self.next.as_ref(),
        }
    }

    /// Installs a new current session; the old current becomes previous.
    /// Returns the local indexes of sessions that were dropped.
    pub fn install_current(&mut self, s: Arc<Session>, dropped: &mut Vec<u32>) {
        if let Some(old) = self.previous.take() {
            dropped.push(old.local_index);
        }
        self.previous = self.current.take();
        self.current = Some(s);
    }

    /// Installs an unconfirmed responder session, replacing an older one.
    pub fn install_next(&mut self, s: Arc<Session>, dropped: &mut Vec<u32>) {
        if let Some(old) = self.next.replace(s) {
            dropped.push(old.local_index);
        }
    }

    /// Promotes `next` to `current` after its first authenticated packet.
    pub fn confirm_next(&mut self, dropped: &mut Vec<u32>) {
        if let Some(s) = self.next.take() {
            self.install_current(s, dropped);
        }
    }

    /// Drops sessions older than `reject_after`, reporting their indexes.
    pub fn expire(&mut self, now: Instant, reject_after: Duration, dropped: &mut Vec<u32>) {
        for s in [&mut self.current, &mut self.previous, &mut self.next] {
            if s.as_ref()
                .is_some_and(|x| now.duration_since(x.created) >= reject_after)
            {
                if let Some(x) = s.take() {
                    dropped.push(x.local_index);
                }
            }
        }
    }

    /// Whether `addr` is inside this peer's allowed prefixes.
    pub fn allows(&self, addr: std::net::IpAddr) -> bool {
        self.allowed.iter().any(|p| p.contains(addr))
    }

    /// Queues a packet until a session exists; false if the queue is full
    /// (the oldest packet is dropped to make room, as stale data is worth less).
    pub fn stage(&mut self, packet: &[u8]) -> bool {
        let full = self.staged.len() >= MAX_STAGED_PACKETS;
        if full {
            self.staged.pop_front();
        }
        self.staged.push_back(packet.to_vec());
        !full
    }

    /// Records that something was sent at `now` (`data`: an inner packet).
    pub fn sent(&self, now: Instant, data: bool) {
        self.stats.sent(now, data);
    }

    /// Records an authenticated packet received at `now` (`data`: an inner packet).
    pub fn received(&self, now: Instant, data: bool) {
        self.stats.received(now, data);
    }

    /// Whether data for an unknown index may trigger a handshake at `now`
    /// (at most one per [`TRIGGERED_HANDSHAKE_EVERY`]); records it if so.
    pub fn may_trigger(&mut self, now: Instant) -> bool {
        if self
            .triggered_at
            .is_some_and(|at| now.saturating_duration_since(at) < TRIGGERED_HANDSHAKE_EVERY)
        {
            return false;
        }
        self.triggered_at = Some(now);
        true
    }

    /// Delay before retrying an initiation that got no answer.
    pub fn retry_delay(attempt: u32) -> Duration {
        HANDSHAKE_RETRY_BASE
            .saturating_mul(1u32 << attempt.min(8))
            .min(HANDSHAKE_RETRY_MAX)
    }
}

/// A peer's traffic times and byte counts, shared by every data-path
/// worker and read by the device's timers. Times are stored as signed
/// nanoseconds from an origin (an `Instant` cannot be an atomic), with
/// [`NEVER`] for none. Writers skip the store when the value is already
/// there, so a batch of packets costs one write per field, not one per
/// packet, and workers do not bounce the cache line for nothing.
#[derive(Debug)]
pub struct PeerStats {
    origin: Instant,
    last_sent: AtomicI64,
    last_received: AtomicI64,
    /// First data packet sent since the peer was last heard from (dead-peer detection).
    unanswered_since: AtomicI64,
    /// First data packet sent since the last data packet received (path
    /// MTU probing's silence trigger: keepalives do not end it).
    data_unanswered_since: AtomicI64,
    /// First data packet received since we last sent anything (passive keepalive).
    ack_due_since: AtomicI64,
    tx_bytes: AtomicU64,
    rx_bytes: AtomicU64,
    /// Packets refused by the peer's `transit` list on the lock-free path.
    transit_denied: AtomicU64,
}

/// "No such time" in a [`PeerStats`] field.
const NEVER: i64 = i64::MIN;

impl Default for PeerStats {
    fn default() -> Self {
        Self::new()
    }
}

impl PeerStats {
    /// Nothing sent or received yet.
    pub fn new() -> Self {
        PeerStats {
            origin: Instant::now(),
            last_sent: AtomicI64::new(NEVER),
            last_received: AtomicI64::new(NEVER),
            unanswered_since: AtomicI64::new(NEVER),
            data_unanswered_since: AtomicI64::new(NEVER),
            ack_due_since: AtomicI64::new(NEVER),
            tx_bytes: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            transit_denied: AtomicU64::new(0),
        }
    }

    fn encode(&self, t: Instant) -> i64 {
        // i64 nanoseconds cover 292 years either side of the origin.
        let clamp = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        match t.checked_duration_since(self.origin) {
            Some(d) => clamp(d),
            None => -clamp(self.origin.duration_since(t)),
        }
    }

    fn decode(&self, v: i64) -> Option<Instant> {
        if v == NEVER {
            return None;
        }
        let d = Duration::from_nanos(v.unsigned_abs());
        if v >= 0 {
            self.origin.checked_add(d)
        } else {
            self.origin.checked_sub(d)
        }
    }

    fn get(&self, a: &AtomicI64) -> Option<Instant> {
        self.decode(a.load(Ordering::Relaxed))
    }

    fn set(a: &AtomicI64, v: i64) {
        if a.load(Ordering::Relaxed) != v {
            a.store(v, Ordering::Relaxed);
        }
    }

    fn set_if_never(a: &AtomicI64, v: i64) {
        if a.load(Ordering::Relaxed) == NEVER {
            let _ = a.compare_exchange(NEVER, v, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Something was sent at `now` (`data`: an inner packet).
    pub fn sent(&self, now: Instant, data: bool) {
        let v = self.encode(now);
        if self.last_sent.load(Ordering::Relaxed) < v {
            self.last_sent.fetch_max(v, Ordering::Relaxed);
        }
        Self::set(&self.ack_due_since, NEVER);
        if data {
            Self::set_if_never(&self.unanswered_since, v);
            Self::set_if_never(&self.data_unanswered_since, v);
        }
    }

    /// An authenticated packet was received at `now` (`data`: an inner packet).
    pub fn received(&self, now: Instant, data: bool) {
        let v = self.encode(now);
        if self.last_received.load(Ordering::Relaxed) < v {
            self.last_received.fetch_max(v, Ordering::Relaxed);
        }
        Self::set(&self.unanswered_since, NEVER);
        if data {
            Self::set(&self.data_unanswered_since, NEVER);
            Self::set_if_never(&self.ack_due_since, v);
        }
    }

    /// When anything was last sent.
    pub fn last_sent(&self) -> Option<Instant> {
        self.get(&self.last_sent)
    }

    /// When an authenticated packet was last received.
    pub fn last_received(&self) -> Option<Instant> {
        self.get(&self.last_received)
    }

    /// The first data packet sent since the peer was last heard from.
    pub fn unanswered_since(&self) -> Option<Instant> {
        self.get(&self.unanswered_since)
    }

    /// The first data packet sent since the last data packet received.
    pub fn data_unanswered_since(&self) -> Option<Instant> {
        self.get(&self.data_unanswered_since)
    }

    /// The first data packet received since we last sent anything.
    pub fn ack_due_since(&self) -> Option<Instant> {
        self.get(&self.ack_due_since)
    }

    /// Adds sealed inner bytes.
    pub fn add_tx(&self, n: u64) {
        if n > 0 {
            self.tx_bytes.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Adds opened inner bytes.
    pub fn add_rx(&self, n: u64) {
        if n > 0 {
            self.rx_bytes.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts a packet refused by the `transit` list.
    pub fn add_transit_denied(&self) {
        self.transit_denied.fetch_add(1, Ordering::Relaxed);
    }

    /// Inner bytes sealed for this peer.
    pub fn tx_bytes(&self) -> u64 {
        self.tx_bytes.load(Ordering::Relaxed)
    }

    /// Inner bytes opened from this peer.
    pub fn rx_bytes(&self) -> u64 {
        self.rx_bytes.load(Ordering::Relaxed)
    }

    /// Packets refused by the `transit` list on the lock-free path.
    pub fn transit_denied(&self) -> u64 {
        self.transit_denied.load(Ordering::Relaxed)
    }
}
