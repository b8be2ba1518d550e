//! Who may hold an accepted TCP connection before it has authenticated:
//! the TCP transport's admission policy, sans I/O (the caller passes the
//! clock and closes what the policy names).
//!
//! An accepted connection is *pending* until the protocol core accepts a
//! frame from it (the transport is told through
//! [`super::Transport::authenticated`]). Pending connections, and only they,
//! are limited:
//! - at most [`MAX_PENDING`] in all; a new one evicts the oldest pending
//!   connection, so a flood of idle connections cannot keep a real peer's
//!   redial out (the peer's connection needs one round trip to authenticate);
//! - at most [`MAX_PENDING_PER_SOURCE`] per source (an IPv4 address or an
//!   IPv6 /64); a new one evicts that source's oldest, so one source's churn
//!   only displaces itself;
//! - at most [`ACCEPT_BURST`] new connections per source, refilled at
//!   [`ACCEPTS_PER_SEC`]; beyond, a connection is closed at once (refused),
//!   which bounds the thread churn one source can cause;
//! - [`AUTH_DEADLINE`] to authenticate, counted from the accept whatever the
//!   connection sends (bytes do not extend it).
//!
//! Dialed connections and authenticated ones are not tracked here: they are
//! never refused or evicted because of pending ones.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Pending connections at most. Each costs two threads and a 64 KiB read
/// buffer; 32 covers many peers redialing at once (a redial authenticates
/// within a round trip) while bounding what an idle-connection flood holds.
pub const MAX_PENDING: usize = 32;
/// Pending connections per source at most: a redialing peer has one
/// connection in progress, plus a dying one or two behind the same NAT.
pub const MAX_PENDING_PER_SOURCE: usize = 4;
/// Time to authenticate. A handshake is one round trip and a DH; the
/// initiator retries after 1 s then 2 s and 4 s, so 10 s covers the first
/// three attempts on a lossy path (TCP hides loss, but not a slow redial).
pub const AUTH_DEADLINE: Duration = Duration::from_secs(10);
/// New connections per source per second, sustained: far above a peer's
/// redial rate (backoff from 100 ms), far below a thread-churn flood.
pub const ACCEPTS_PER_SEC: f64 = 5.0;
/// New connections per source accepted back to back.
pub const ACCEPT_BURST: f64 = 10.0;
/// Sources whose accept rate is tracked at most: beyond, sources whose
/// bucket has refilled are forgotten (they would start full anyway); if
/// none has, the least recently seen is.
pub const MAX_SOURCES: usize = 4096;

/// What to do with a newly accepted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Close it at once: its source opens connections too fast.
    Refuse,
    /// Keep it; close `evict` first (an older pending connection).
    Admit { evict: Option<Evicted> },
}

/// A pending connection displaced by a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// The connection's id.
    pub id: u64,
    /// True when displaced by its own source's limit, false by the total.
    pub same_source: bool,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    id: u64,
    source: IpAddr,
    at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The pending connections and the per-source accept rates.
#[derive(Debug, Default)]
pub struct Admission {
    /// Oldest first.
    pending: VecDeque<Pending>,
    sources: HashMap<IpAddr, Bucket>,
}

/// The unit limits apply to: an IPv4 address, or an IPv6 /64 (one host
/// usually holds a whole /64).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Admission {
    /// No connection pending.
    pub fn new() -> Admission {
        Admission::default()
    }

    /// Pending connections now.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Decides on connection `id` accepted from `ip` at `now`; an admitted
    /// one is pending from now on.
    pub fn admit(&mut self, id: u64, ip: IpAddr, now: Instant) -> Verdict {
        let source = source_key(ip);
        if !self.take_token(source, now) {
            return Verdict::Refuse;
        }
        let from_source = self.pending.iter().filter(|p| p.source == source).count();
        let evict = if from_source >= MAX_PENDING_PER_SOURCE {
            self.pending
                .iter()
                .position(|p| p.source == source)
                .map(|i| (i, true))
        } else if self.pending.len() >= MAX_PENDING {
            Some((0, false))
        } else {
            None
        };
        let evict = evict.and_then(|(i, same_source)| {
            self.pending.remove(i).map(|p| Evicted {
                id: p.id,
                same_source,
            })
        });
        self.pending.push_back(Pending {
            id,
            source,
            at: now,
        });
        Verdict::Admit { evict }
    }

    /// Connection `id` authenticated (or closed): no longer pending. True
    /// if it was.
    pub fn remove(&mut self, id: u64) -> bool {
        match self.pending.iter().position(|p| p.id == id) {
            Some(i) => {
                self.pending.remove(i);
                true
            }
            None => false,
        }
    }

    /// Removes and returns the pending connections whose deadline passed.
    pub fn expired(&mut self, now: Instant) -> Vec<u64> {
        let mut out = Vec::new();
        // Oldest first, so expired ones are at the front.
        while let Some(p) = self.pending.front() {
            if now.saturating_duration_since(p.at) < AUTH_DEADLINE {
                break;
            }
            out.push(p.id);
            self.pending.pop_front();
        }
        out
    }

    fn take_token(&mut self, source: IpAddr, now: Instant) -> bool {
        if !self.sources.contains_key(&source) && self.sources.len() >= MAX_SOURCES {
            self.prune(now);
        }
        let b = self.sources.entry(source).or_insert(Bucket {
            tokens: ACCEPT_BURST,
            at: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * ACCEPTS_PER_SEC;
        b.tokens = (b.tokens + refill).min(ACCEPT_BURST);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn prune(&mut self, now: Instant) {
        let full = |b: &Bucket| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * ACCEPTS_PER_SEC
                >= ACCEPT_BURST
        };
        self.sources.retain(|_, b| !full(b));
        if self.sources.len() >= MAX_SOURCES {
            if let Some(oldest) = self
                .sources
                .iter()
                .min_by_key(|(_, b)| b.at)
                .map(|(k, _)| *k)
            {
                self.sources.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000 + n))
    }

    fn admitted(v: Verdict) -> Option<Evicted> {
        match v {
            Verdict::Admit { evict } => evict,
            Verdict::Refuse => panic!("refused"),
        }
    }

    #[test]
    fn the_oldest_pending_connection_makes_room_for_a_new_one() {
        let t0 = Instant::now();
        let mut a = Admission::new();
        // Sources 1..=8, four connections each (within each source's burst).
        let mut id = 0;
        for s in 1..=8 {
            for _ in 0..4 {
                id += 1;
                assert_eq!(admitted(a.admit(id, ip(s), t0)), None);
            }
        }
        assert_eq!(a.pending(), MAX_PENDING);
        // A ninth source (the real peer) gets in by evicting connection 1.
        let e = admitted(a.admit(100, ip(9), t0)).expect("an eviction");
        assert_eq!(
            e,
            Evicted {
                id: 1,
                same_source: false
            }
        );
        assert_eq!(a.pending(), MAX_PENDING);
        // It authenticates: no longer pending, and nothing can evict it.
        assert!(a.remove(100));
        assert!(!a.remove(100));
        for k in 0..200u32 {
            a.admit(1000 + u64::from(k), ip(20 + k), t0);
        }
        assert_eq!(a.pending(), MAX_PENDING);
    }

    #[test]
    fn one_source_displaces_only_itself_and_is_rate_limited() {
        let t0 = Instant::now();
        let mut a = Admission::new();
        assert_eq!(admitted(a.admit(1, ip(1), t0)), None);
        for id in 2..=4 {
            assert_eq!(admitted(a.admit(id, ip(2), t0)), None);
        }
        assert_eq!(admitted(a.admit(5, ip(2), t0)), None);
        // Source 2's fifth: its own oldest (2) goes, not source 1's.
        assert_eq!(
            admitted(a.admit(6, ip(2), t0)),
            Some(Evicted {
                id: 2,
                same_source: true
            })
        );
        assert_eq!(a.pending(), 1 + MAX_PENDING_PER_SOURCE);
        // The burst is ACCEPT_BURST connections; then refused until refill.
        let mut refused = 0;
        for id in 7..30 {
            if a.admit(id, ip(2), t0) == Verdict::Refuse {
                refused += 1;
            }
        }
        assert_eq!(refused, 23 - (ACCEPT_BURST as usize - 5));
        assert_eq!(
            a.admit(40, ip(2), t0 + Duration::from_millis(100)),
            Verdict::Refuse
        );
        // 1/ACCEPTS_PER_SEC later, one more token.
        assert!(matches!(
            a.admit(41, ip(2), t0 + Duration::from_millis(210)),
            Verdict::Admit { .. }
        ));
        // An IPv6 /64 is one source.
        let v6 = |h: u16| IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 1, h, h, h, h));
        for h in 1..=4 {
            assert_eq!(admitted(a.admit(100 + u64::from(h), v6(h), t0)), None);
        }
        assert!(admitted(a.admit(105, v6(9), t0)).is_some_and(|e| e.same_source));
    }

    #[test]
    fn pending_connections_expire_at_the_deadline_whatever_they_send() {
        let t0 = Instant::now();
        let mut a = Admission::new();
        a.admit(1, ip(1), t0);
        a.admit(2, ip(2), t0 + Duration::from_secs(3));
        assert!(a
            .expired(t0 + AUTH_DEADLINE - Duration::from_millis(1))
            .is_empty());
        assert_eq!(a.expired(t0 + AUTH_DEADLINE), vec![1]);
        assert_eq!(a.pending(), 1);
        assert_eq!(
            a.expired(t0 + Duration::from_secs(3) + AUTH_DEADLINE),
            vec![2]
        );
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn the_source_table_is_bounded() {
        let t0 = Instant::now();
        let mut a = Admission::new();
        for k in 0..(MAX_SOURCES as u32 + 500) {
            a.admit(u64::from(k), ip(k), t0);
            a.remove(u64::from(k));
        }
        assert!(a.sources.len() <= MAX_SOURCES);
    }
}
