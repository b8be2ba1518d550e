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

/// One established session with a peer.
pub struct Session {
    pub(crate) send: Box<dyn Aead>,
    pub(crate) recv: Box<dyn Aead>,
    pub(crate) local_index: u32,
    pub(crate) remote_index: u32,
    pub(crate) send_counter: u64,
    pub(crate) replay: ReplayWindow,
    pub(crate) created: Instant,
    pub(crate) initiator: bool,
    pub(crate) sent_bytes: u64,
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
            send_counter: 0,
            replay: ReplayWindow::new(),
            created: now,
            initiator: keys.initiator,
            sent_bytes: 0,
        })
    }

    /// Whether this session may still seal at `now`.
    pub fn can_send(&self, now: Instant, reject_after: Duration) -> bool {
        self.send_counter < REJECT_AFTER_MESSAGES && now.duration_since(self.created) < reject_after
    }

    /// Takes the next send counter.
    pub fn next_counter(&mut self) -> u64 {
        let c = self.send_counter;
        self.send_counter += 1;
        c
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
    pub(crate) current: Option<Session>,
    pub(crate) previous: Option<Session>,
    pub(crate) next: Option<Session>,
    pub(crate) pending: Option<Pending>,
    /// Greatest initiation timestamp accepted from this peer (replay guard).
    pub(crate) last_timestamp: [u8; TIMESTAMP_LEN],
    pub(crate) last_handshake: Option<Instant>,
    /// Earliest time a new initiation may start (backoff between attempts).
    pub(crate) next_attempt: Option<Instant>,
    pub(crate) last_sent: Option<Instant>,
    pub(crate) last_received: Option<Instant>,
    /// First data packet sent since the peer was last heard from (dead-peer detection).
    pub(crate) unanswered_since: Option<Instant>,
    /// First data packet sent since the last data packet received (path
    /// MTU probing's silence trigger: keepalives do not end it).
    pub(crate) data_unanswered_since: Option<Instant>,
    /// First data packet received since we last sent anything (passive keepalive).
    pub(crate) ack_due_since: Option<Instant>,
    pub(crate) staged: VecDeque<Vec<u8>>,
    /// The MACs of the handshake messages we send this peer, and its cookie.
    pub(crate) jar: CookieJar,
    /// When data for an unknown index last triggered a handshake.
    pub(crate) triggered_at: Option<Instant>,
    pub(crate) tx_bytes: u64,
    pub(crate) rx_bytes: u64,
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
            last_sent: None,
            last_received: None,
            unanswered_since: None,
            data_unanswered_since: None,
            ack_due_since: None,
            staged: VecDeque::new(),
            jar: CookieJar::new(&public),
            triggered_at: None,
            tx_bytes: 0,
            rx_bytes: 0,
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
        let is = |s: &Option<Session>| s.as_ref().is_some_and(|s| s.local_index == local_index);
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

    /// Mutable access to a session by slot.
    pub fn session_mut(&mut self, slot: Slot) -> Option<&mut Session> {
        match slot {
            Slot::Current => self.current.as_mut(),
            Slot::Previous => self.previous.as_mut(),
            Slot::Next => self.next.as_mut(),
        }
    }

    /// Installs a new current session; the old current becomes previous.
    /// Returns the local indexes of sessions that were dropped.
    pub fn install_current(&mut self, s: Session, dropped: &mut Vec<u32>) {
        if let Some(old) = self.previous.take() {
            dropped.push(old.local_index);
        }
        self.previous = self.current.take();
        self.current = Some(s);
    }

    /// Installs an unconfirmed responder session, replacing an older one.
    pub fn install_next(&mut self, s: Session, dropped: &mut Vec<u32>) {
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
    pub fn sent(&mut self, now: Instant, data: bool) {
        self.last_sent = Some(now);
        self.ack_due_since = None;
        if data && self.unanswered_since.is_none() {
            self.unanswered_since = Some(now);
        }
        if data && self.data_unanswered_since.is_none() {
            self.data_unanswered_since = Some(now);
        }
    }

    /// Records an authenticated packet received at `now` (`data`: an inner packet).
    pub fn received(&mut self, now: Instant, data: bool) {
        self.last_received = Some(now);
        self.unanswered_since = None;
        if data {
            self.data_unanswered_since = None;
        }
        if data && self.ack_due_since.is_none() {
            self.ack_due_since = Some(now);
        }
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
