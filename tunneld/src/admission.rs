//! Admission of handshake messages: decides, before any public-key work,
//! whether a handshake message whose mac1 verified is processed, answered
//! with a cookie reply, or dropped. No I/O and no clock: the caller passes
//! `now`.
//!
//! - A load meter (a token bucket every such message draws from) notices a
//!   flood. While it is empty, and for [`UNDER_LOAD_HOLD`] after, we are
//!   *under load*.
//! - Not under load, every message is processed: a gateway's few
//!   handshakes cost one round trip, as without any of this.
//! - Under load, a message without a valid mac2 (a cookie for its source
//!   address, see [`crate::crypto::cookie`]) gets a cookie reply and no
//!   public-key work; one with a valid mac2 is processed if its source
//!   address is within its own budget ([`PER_SOURCE_PER_SEC`]). A spoofed
//!   flood therefore costs us one BLAKE2s and one XChaCha20-Poly1305 seal
//!   per message, never an X25519, and cannot spend a real peer's budget:
//!   that needs the peer's cookie, which only reaches the peer's address.
//!
//! The public-key work a flood can cause is the meter's burst when it
//! starts, then nothing from spoofed sources; sources that do receive our
//! replies get [`PER_SOURCE_PER_SEC`] each.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Handshake messages per second processed without proof of address
/// before we call it load: a gateway with a hundred peers rekeying every
/// two minutes needs about one per second, and each costs four X25519
/// operations (reading an initiation measured ~200 µs on a loaded 2-core
/// box, `handshake_cost` bench), so this caps unverified work at ~2% of a
/// core.
pub const HANDSHAKES_PER_SEC: f64 = 50.0;
/// The load meter's burst: all gateways of a site starting together.
pub const HANDSHAKE_BURST: f64 = 20.0;
/// How long we stay under load after the meter last ran dry, so the mode
/// does not flap with the meter's refill.
pub const UNDER_LOAD_HOLD: Duration = Duration::from_secs(1);
/// Handshake messages per second, under load, from one source address
/// that proved it receives our packets (WireGuard's figure): a real peer
/// retries once a second at most.
pub const PER_SOURCE_PER_SEC: f64 = 20.0;
/// Burst of one source (WireGuard's figure).
pub const PER_SOURCE_BURST: f64 = 5.0;
/// Source addresses tracked at once. Only addresses that proved
/// reachability get an entry, an entry is idle again after a quarter of a
/// second, so this is only reached by an attacker holding thousands of
/// addresses; 4096 entries are ~200 KiB.
pub const MAX_SOURCES: usize = 4096;
/// Cookie replies sent per second at most: each costs a BLAKE2s, a random
/// nonce and an XChaCha20-Poly1305 seal (~2.4 µs measured, ~1% of a core
/// at this rate) and sends 64 bytes for 148 received (no amplification),
/// so this bounds the reflection towards spoofed addresses at ~2.5 Mbit/s
/// while leaving a real peer's request a generous chance even in a flood
/// of 20,000 per second.
pub const COOKIE_REPLIES_PER_SEC: f64 = 5_000.0;
/// Burst of cookie replies.
pub const COOKIE_REPLY_BURST: f64 = 500.0;
/// Idle entries are swept at most this often when the table is full, so
/// a full table does not cost a scan per message.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// What to do with a handshake message whose mac1 verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Do the handshake.
    Process,
    /// Under load and no valid mac2: answer with a cookie reply.
    SendCookie,
    /// Over its source's budget, or over the cookie reply budget: drop
    /// (counted as `drop_handshake_ratelimit`).
    RateLimited,
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Bucket {
            level: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + dt * rate).min(burst);
        self.at = self.at.max(now);
    }

    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        self.refill(now, rate, burst);
        if self.level >= 1.0 {
            self.level -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The key a source is limited under: its IPv4 address, or its IPv6 /64
/// (one subscriber's allocation, as WireGuard does: an attacker with a /64
/// would otherwise hold 2^64 budgets).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// The admission state of one device.
#[derive(Debug, Default)]
pub struct Admission {
    meter: Option<Bucket>,
    under_load_until: Option<Instant>,
    sources: HashMap<IpAddr, Bucket>,
    cookies: Option<Bucket>,
    last_sweep: Option<Instant>,
}

impl Admission {
    /// No load, nothing tracked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether we are under load at `now`.
    pub fn under_load(&self, now: Instant) -> bool {
        self.under_load_until.is_some_and(|u| now < u)
    }

    /// Source addresses currently tracked (for tests and status).
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }

    /// Decides about one handshake message from `from` whose mac1 verified.
    /// `mac2_ok` is asked only under load (it costs two BLAKE2s).
    pub fn admit(&mut self, from: IpAddr, now: Instant, mac2_ok: impl FnOnce() -> bool) -> Admit {
        let meter = self
            .meter
            .get_or_insert_with(|| Bucket::full(HANDSHAKE_BURST, now));
        if !meter.take(now, HANDSHAKES_PER_SEC, HANDSHAKE_BURST) {
            self.under_load_until = Some(now + UNDER_LOAD_HOLD);
        }
        if !self.under_load(now) {
            return Admit::Process;
        }
        if mac2_ok() {
            return if self.take_source(source_key(from), now) {
                Admit::Process
            } else {
                Admit::RateLimited
            };
        }
        let cookies = self
            .cookies
            .get_or_insert_with(|| Bucket::full(COOKIE_REPLY_BURST, now));
        if cookies.take(now, COOKIE_REPLIES_PER_SEC, COOKIE_REPLY_BURST) {
            Admit::SendCookie
        } else {
            Admit::RateLimited
        }
    }

    fn take_source(&mut self, key: IpAddr, now: Instant) -> bool {
        if !self.sources.contains_key(&key) && self.sources.len() >= MAX_SOURCES {
            if self
                .last_sweep
                .is_some_and(|s| now.saturating_duration_since(s) < SWEEP_EVERY)
            {
                return false;
            }
            self.last_sweep = Some(now);
            // A bucket that has refilled completely holds no state worth keeping.
            let idle = Duration::from_secs_f64(PER_SOURCE_BURST / PER_SOURCE_PER_SEC);
            self.sources
                .retain(|_, b| now.saturating_duration_since(b.at) < idle);
            if self.sources.len() >= MAX_SOURCES {
                return false;
            }
        }
        self.sources
            .entry(key)
            .or_insert_with(|| Bucket::full(PER_SOURCE_BURST, now))
            .take(now, PER_SOURCE_PER_SEC, PER_SOURCE_BURST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn below_the_meter_everything_is_processed() {
        let mut a = Admission::new();
        let t0 = Instant::now();
        // 40 per second for 10 s, from anywhere, without cookies.
        let mut processed = 0;
        for i in 0..400u32 {
            let now = t0 + Duration::from_millis(25 * u64::from(i));
            if a.admit(ip("198.18.5.5"), now, || false) == Admit::Process {
                processed += 1;
            }
        }
        assert_eq!(processed, 400);
        assert!(!a.under_load(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn a_flood_gets_cookies_and_only_the_burst_is_processed() {
        let mut a = Admission::new();
        let t0 = Instant::now();
        let (mut processed, mut cookies, mut limited) = (0, 0, 0);
        // 2,000 per second for 10 s, none with a cookie.
        for i in 0..20_000u64 {
            let now = t0 + Duration::from_micros(500 * i);
            match a.admit(ip("198.18.9.9"), now, || false) {
                Admit::Process => processed += 1,
                Admit::SendCookie => cookies += 1,
                Admit::RateLimited => limited += 1,
            }
        }
        assert_eq!(processed, HANDSHAKE_BURST as u32, "only the burst");
        assert_eq!(cookies, 20_000 - processed);
        assert_eq!(limited, 0, "2,000/s is below the cookie reply budget");
        // The mode ends a second after the flood.
        let end = t0 + Duration::from_secs(10);
        assert!(a.under_load(end));
        assert!(!a.under_load(end + UNDER_LOAD_HOLD));
        assert_eq!(
            a.admit(ip("198.18.9.9"), end + 2 * UNDER_LOAD_HOLD, || false),
            Admit::Process
        );
    }

    #[test]
    fn under_load_a_proven_source_keeps_its_own_budget() {
        let mut a = Admission::new();
        let t0 = Instant::now();
        let (mut peer_ok, mut heavy_ok) = (0, 0);
        for i in 0..20_000u64 {
            let now = t0 + Duration::from_micros(500 * i);
            // Spoofed flood (no cookies)...
            a.admit(ip("198.18.9.9"), now, || false);
            // ...one abusive source with cookies at 2,000/s...
            if a.admit(ip("198.18.7.7"), now, || true) == Admit::Process {
                heavy_ok += 1;
            }
            // ...and a real peer retrying once a second with its cookie.
            if i % 2_000 == 1_000 && a.admit(ip("198.18.0.1"), now, || true) == Admit::Process {
                peer_ok += 1;
            }
        }
        assert_eq!(peer_ok, 10, "every retry of the real peer is processed");
        // 10 s at 20/s plus the burst (plus the meter's burst at the start).
        assert!(heavy_ok <= 10 * 20 + 5 + 20, "heavy source got {heavy_ok}");
        assert!(heavy_ok >= 10 * 20, "heavy source got {heavy_ok}");
    }

    #[test]
    fn cookie_replies_are_capped() {
        let mut a = Admission::new();
        let t0 = Instant::now();
        let mut cookies = 0;
        // 50,000 per second for 1 s.
        for i in 0..50_000u64 {
            if a.admit(ip("198.18.9.9"), t0 + Duration::from_micros(20 * i), || {
                false
            }) == Admit::SendCookie
            {
                cookies += 1;
            }
        }
        let most = (COOKIE_REPLIES_PER_SEC + COOKIE_REPLY_BURST) as u32;
        assert!(cookies <= most && cookies > most - 100, "{cookies}");
    }

    #[test]
    fn the_source_table_is_bounded_and_recycled() {
        let mut a = Admission::new();
        let t0 = Instant::now();
        // Put the device under load.
        for _ in 0..100 {
            a.admit(ip("198.18.9.9"), t0, || false);
        }
        for i in 0..(MAX_SOURCES as u32 + 100) {
            let src = IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000 + i));
            a.admit(src, t0, || true);
        }
        assert_eq!(a.tracked_sources(), MAX_SOURCES);
        // A new source is refused while the table is full of busy entries...
        assert_eq!(a.admit(ip("198.19.1.1"), t0, || true), Admit::RateLimited);
        // ...and admitted once they have gone idle.
        let later = t0 + Duration::from_millis(500);
        a.admit(ip("198.18.9.9"), later, || false);
        assert_eq!(a.admit(ip("198.19.1.1"), later, || true), Admit::Process);
        assert!(a.tracked_sources() < 10);
    }

    #[test]
    fn ipv6_sources_share_a_budget_per_64() {
        assert_eq!(source_key(ip("fd00:1:2:3:4::5")), ip("fd00:1:2:3::"));
        assert_eq!(source_key(ip("198.18.0.1")), ip("198.18.0.1"));
    }
}
