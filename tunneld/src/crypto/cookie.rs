//! The handshake MACs and cookies that keep a flood of handshake messages
//! from costing public-key work (the construction of the WireGuard paper,
//! section 5.4.4 and 5.3; our own code). No I/O and no clock: the caller
//! passes `now`.
//!
//! Every handshake message ends with two 16-byte MACs:
//! - `mac1 = MAC(HASH("mac1----" || receiver's static public key), msg_a)`,
//!   where `msg_a` is the message up to mac1. Anyone who knows the
//!   receiver's public key can compute it, so it is no authentication; it
//!   lets the receiver drop random bytes and messages meant for another
//!   key with one BLAKE2s, before any X25519 operation.
//! - `mac2 = MAC(cookie, msg_b)`, `msg_b` the message up to mac2, or zeros
//!   when the sender holds no cookie. A cookie is
//!   `MAC(secret, source IP || source port)` under a random secret the
//!   receiver replaces every [`SECRET_LIFETIME`]; a valid mac2 proves the
//!   sender receives packets at the address it sends from.
//!
//! Under load the receiver answers a message without a valid mac2 with a
//! cookie reply (type 3) instead of doing the handshake: the cookie,
//! sealed with XChaCha20-Poly1305 under `HASH("cookie--" || receiver's
//! public key)`, a random nonce, and the message's mac1 as associated data
//! (so only the sender of that message, which chose the mac1, accepts it).
//! The sender keeps the cookie for a while and puts a mac2 in its next
//! messages; the receiver then rate-limits per source address ([`crate::admission`]),
//! which spoofed sources can no longer spend.
//!
//! MAC is keyed BLAKE2s with a 16-byte output, HASH is BLAKE2s-256.

use crate::wire::{
    CookieReply, COOKIE_NONCE_LEN, COOKIE_REPLY_LEN, MACS_LEN, MAC_LEN, SEALED_COOKIE_LEN,
};
use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Label of the mac1 key derivation (WireGuard's, so the construction is
/// the analysed one).
const LABEL_MAC1: &[u8] = b"mac1----";
/// Label of the cookie sealing key derivation.
const LABEL_COOKIE: &[u8] = b"cookie--";
/// How long one cookie secret is used, as WireGuard: long enough that a
/// sender's cookie stays good for several handshake retries, short enough
/// that a cookie leaked by an on-path observer soon stops working.
pub const SECRET_LIFETIME: Duration = Duration::from_secs(120);
/// A sender stops using a cookie this long after receiving it: the secret
/// may have rotated meanwhile, and a stale mac2 only earns a new cookie
/// reply (the receiver also accepts the previous secret's cookies).
pub const COOKIE_USABLE_FOR: Duration = Duration::from_secs(115);

/// Why a cookie reply was refused; counted as `drop_cookie_invalid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// Not a well-formed cookie reply.
    #[error("malformed cookie reply")]
    Malformed,
    /// We sent no handshake message it could answer.
    #[error("no handshake message awaits a cookie")]
    Unsolicited,
    /// The sealed cookie did not open: forged, corrupted, or sealed for
    /// another message's mac1.
    #[error("cookie reply does not authenticate")]
    BadTag,
}

type Mac16 = Blake2sMac<U16>;

fn hash(label: &[u8], key: &[u8; 32]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    Digest::update(&mut h, label);
    Digest::update(&mut h, key);
    h.finalize().into()
}

/// Keyed BLAKE2s-128 over `parts`. Keys are at most 32 bytes, which
/// BLAKE2s always accepts.
fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut out = [0u8; MAC_LEN];
    if let Ok(mut m) = <Mac16 as KeyInit>::new_from_slice(key) {
        for p in parts {
            Mac::update(&mut m, p);
        }
        out.copy_from_slice(&m.finalize_fixed());
    }
    out
}

/// Bytes of a source address as the cookie binds them: the IP (4 or 16
/// bytes) and the port, big-endian.
fn address_bytes(a: SocketAddr) -> ([u8; 18], usize) {
    let mut b = [0u8; 18];
    let n = match a.ip() {
        IpAddr::V4(v4) => {
            b[..4].copy_from_slice(&v4.octets());
            4
        }
        IpAddr::V6(v6) => {
            b[..16].copy_from_slice(&v6.octets());
            16
        }
    };
    b[n..n + 2].copy_from_slice(&a.port().to_be_bytes());
    (b, n + 2)
}

/// Keys derived from one static public key: the receiver's mac1 key and
/// the key its cookie replies are sealed with.
#[derive(Clone)]
pub struct MacKeys {
    mac1: [u8; 32],
    cookie: [u8; 32],
}

impl std::fmt::Debug for MacKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MacKeys").finish_non_exhaustive()
    }
}

impl MacKeys {
    /// The keys for messages addressed to the holder of `public`.
    pub fn for_public(public: &[u8; 32]) -> Self {
        MacKeys {
            mac1: hash(LABEL_MAC1, public),
            cookie: hash(LABEL_COOKIE, public),
        }
    }

    fn mac1_of(&self, msg: &[u8]) -> Option<[u8; MAC_LEN]> {
        let n = msg.len().checked_sub(MACS_LEN)?;
        Some(mac(&self.mac1, &[&msg[..n]]))
    }
}

fn mac1_field(msg: &[u8]) -> Option<&[u8]> {
    let n = msg.len().checked_sub(MACS_LEN)?;
    msg.get(n..n + MAC_LEN)
}

fn mac2_field(msg: &[u8]) -> Option<&[u8]> {
    let n = msg.len().checked_sub(MAC_LEN)?;
    msg.get(n..)
}

/// Constant-time comparison of two MACs.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The receiving side: checks the MACs of handshake messages addressed to
/// us and makes cookie replies.
pub struct CookieChecker {
    keys: MacKeys,
    secret: Zeroizing<[u8; 32]>,
    previous: Option<Zeroizing<[u8; 32]>>,
    secret_born: Option<Instant>,
}

impl std::fmt::Debug for CookieChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieChecker").finish_non_exhaustive()
    }
}

fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    // Without an entropy source the secret is a fixed value: cookies still
    // prove reachability of an address (the MAC binds it) but become
    // predictable; getrandom fails only on systems without /dev/urandom.
    if getrandom::getrandom(&mut b).is_err() {
        log::error!("no entropy for the cookie secret");
    }
    b
}

impl CookieChecker {
    /// A checker for messages addressed to the holder of `our_public`.
    pub fn new(our_public: &[u8; 32]) -> Self {
        CookieChecker {
            keys: MacKeys::for_public(our_public),
            secret: Zeroizing::new(random32()),
            previous: None,
            secret_born: None,
        }
    }

    /// Whether the message's mac1 is right (one BLAKE2s, no public-key work).
    pub fn mac1_ok(&self, msg: &[u8]) -> bool {
        match (self.keys.mac1_of(msg), mac1_field(msg)) {
            (Some(want), Some(got)) => same(&want, got),
            _ => false,
        }
    }

    fn rotate(&mut self, now: Instant) {
        match self.secret_born {
            None => self.secret_born = Some(now),
            Some(born) if now.saturating_duration_since(born) >= SECRET_LIFETIME => {
                let old = std::mem::replace(&mut self.secret, Zeroizing::new(random32()));
                // A secret two lifetimes old is of no use to anyone.
                self.previous =
                    (now.saturating_duration_since(born) < 2 * SECRET_LIFETIME).then_some(old);
                self.secret_born = Some(now);
            }
            Some(_) => {}
        }
    }

    fn cookie_with(secret: &[u8; 32], from: SocketAddr) -> [u8; MAC_LEN] {
        let (a, n) = address_bytes(from);
        mac(secret, &[&a[..n]])
    }

    /// Whether the message's mac2 carries a cookie we gave `from` (under
    /// the current or the previous secret).
    pub fn mac2_ok(&mut self, msg: &[u8], from: SocketAddr, now: Instant) -> bool {
        self.rotate(now);
        let (Some(got), Some(n)) = (mac2_field(msg), msg.len().checked_sub(MAC_LEN)) else {
            return false;
        };
        let check = |secret: &[u8; 32]| {
            let cookie = Self::cookie_with(secret, from);
            same(&mac(&cookie, &[&msg[..n]]), got)
        };
        check(&self.secret) || self.previous.as_deref().is_some_and(check)
    }

    /// Writes into `out` a cookie reply to `msg` (received from `from`, its
    /// sender's index `sender_index`); returns its length.
    pub fn reply(
        &mut self,
        msg: &[u8],
        sender_index: u32,
        from: SocketAddr,
        now: Instant,
        out: &mut [u8; COOKIE_REPLY_LEN],
    ) -> Option<usize> {
        self.rotate(now);
        let mac1 = mac1_field(msg)?;
        let mut nonce = [0u8; COOKIE_NONCE_LEN];
        getrandom::getrandom(&mut nonce).ok()?;
        let mut sealed = [0u8; SEALED_COOKIE_LEN];
        sealed[..MAC_LEN].copy_from_slice(&Self::cookie_with(&self.secret, from));
        let aead = XChaCha20Poly1305::new((&self.keys.cookie).into());
        let tag = aead
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), mac1, &mut sealed[..MAC_LEN])
            .ok()?;
        sealed[MAC_LEN..].copy_from_slice(&tag);
        CookieReply::emit(out, sender_index, &nonce, &sealed).ok()?;
        Some(COOKIE_REPLY_LEN)
    }
}

/// The sending side, one per peer: stamps the MACs on the handshake
/// messages we send it and keeps the cookie it gave us.
pub struct CookieJar {
    keys: MacKeys,
    /// The cookie and when we received it.
    cookie: Option<([u8; MAC_LEN], Instant)>,
    /// The mac1 of the last handshake message we sent this peer: the
    /// associated data of the only cookie reply we accept.
    last_mac1: Option<[u8; MAC_LEN]>,
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieJar")
            .field("has_cookie", &self.cookie.is_some())
            .finish_non_exhaustive()
    }
}

impl CookieJar {
    /// A jar for messages to the holder of `peer_public`.
    pub fn new(peer_public: &[u8; 32]) -> Self {
        CookieJar {
            keys: MacKeys::for_public(peer_public),
            cookie: None,
            last_mac1: None,
        }
    }

    /// Fills the last [`MACS_LEN`] bytes of `msg` (a whole handshake
    /// message) with mac1, and mac2 if we hold a fresh cookie.
    pub fn stamp(&mut self, msg: &mut [u8], now: Instant) {
        let Some(n) = msg.len().checked_sub(MACS_LEN) else {
            return;
        };
        let mac1 = mac(&self.keys.mac1, &[&msg[..n]]);
        msg[n..n + MAC_LEN].copy_from_slice(&mac1);
        self.last_mac1 = Some(mac1);
        let mac2 = match self.cookie {
            Some((c, at)) if now.saturating_duration_since(at) < COOKIE_USABLE_FOR => {
                mac(&c, &[&msg[..n + MAC_LEN]])
            }
            _ => [0u8; MAC_LEN],
        };
        msg[n + MAC_LEN..].copy_from_slice(&mac2);
    }

    /// Whether we hold a cookie usable at `now`.
    pub fn has_cookie(&self, now: Instant) -> bool {
        self.cookie
            .is_some_and(|(_, at)| now.saturating_duration_since(at) < COOKIE_USABLE_FOR)
    }

    /// Takes the cookie out of a reply to our last handshake message.
    pub fn consume(&mut self, reply: &[u8], now: Instant) -> Result<(), CookieError> {
        let r = CookieReply::new_checked(reply).map_err(|_| CookieError::Malformed)?;
        let ad = self.last_mac1.ok_or(CookieError::Unsolicited)?;
        let mut cookie = [0u8; MAC_LEN];
        cookie.copy_from_slice(&r.sealed_cookie()[..MAC_LEN]);
        let tag = Tag::from_slice(&r.sealed_cookie()[MAC_LEN..]);
        let aead = XChaCha20Poly1305::new((&self.keys.cookie).into());
        aead.decrypt_in_place_detached(XNonce::from_slice(r.nonce()), &ad, &mut cookie, tag)
            .map_err(|_| CookieError::BadTag)?;
        self.cookie = Some((cookie, now));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESPONDER: [u8; 32] = [7; 32];

    fn msg(fill: u8) -> Vec<u8> {
        let mut m = vec![fill; 148];
        m[0] = 1;
        m[1..4].fill(0);
        m
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn mac1_binds_the_receivers_key_and_the_bytes() {
        let checker = CookieChecker::new(&RESPONDER);
        let mut jar = CookieJar::new(&RESPONDER);
        let now = Instant::now();
        let mut m = msg(0x11);
        assert!(!checker.mac1_ok(&m), "zero MACs fail");
        jar.stamp(&mut m, now);
        assert!(checker.mac1_ok(&m));
        for i in [0, 8, 115, 116, 131] {
            let mut bad = m.clone();
            bad[i] ^= 1;
            assert!(!checker.mac1_ok(&bad), "flip at {i}");
        }
        // mac2 is outside mac1.
        let mut m2 = m.clone();
        m2[140] ^= 1;
        assert!(checker.mac1_ok(&m2));
        let mut other = CookieJar::new(&[8; 32]);
        let mut m3 = msg(0x11);
        other.stamp(&mut m3, now);
        assert!(!checker.mac1_ok(&m3), "mac1 for another responder");
        assert!(!checker.mac1_ok(&m[..31]));
        assert!(!checker.mac1_ok(&[]));
    }

    #[test]
    fn cookie_round_trip_binds_the_source_address() {
        let mut checker = CookieChecker::new(&RESPONDER);
        let mut jar = CookieJar::new(&RESPONDER);
        let t0 = Instant::now();
        let from = addr("198.18.0.1:51820");
        let mut m = msg(0x22);
        jar.stamp(&mut m, t0);
        assert!(!checker.mac2_ok(&m, from, t0), "no cookie yet");
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        assert_eq!(checker.reply(&m, 5, from, t0, &mut reply), Some(64));
        assert_eq!(
            CookieReply::new_checked(&reply[..]).map(|r| r.receiver_index()),
            Ok(5)
        );
        jar.consume(&reply, t0).expect("cookie accepted");
        assert!(jar.has_cookie(t0));
        let mut m = msg(0x23);
        jar.stamp(&mut m, t0 + Duration::from_secs(1));
        assert!(checker.mac2_ok(&m, from, t0 + Duration::from_secs(1)));
        assert!(
            !checker.mac2_ok(&m, addr("198.18.0.1:51821"), t0),
            "another port"
        );
        assert!(
            !checker.mac2_ok(&m, addr("198.18.0.2:51820"), t0),
            "another IP"
        );
        // After one rotation the previous secret still counts, after two not.
        assert!(checker.mac2_ok(&m, from, t0 + SECRET_LIFETIME));
        assert!(!checker.mac2_ok(&m, from, t0 + 2 * SECRET_LIFETIME));
        // The sender stops using an old cookie.
        let mut late = msg(0x24);
        jar.stamp(&mut late, t0 + COOKIE_USABLE_FOR);
        assert_eq!(&late[132..], &[0u8; 16]);
        assert!(!jar.has_cookie(t0 + COOKIE_USABLE_FOR));
    }

    #[test]
    fn cookie_reply_only_opens_for_the_message_it_answers() {
        let mut checker = CookieChecker::new(&RESPONDER);
        let mut jar = CookieJar::new(&RESPONDER);
        let now = Instant::now();
        let from = addr("[fd00::1]:4000");
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        // A reply before we sent anything.
        let mut m = msg(0x33);
        CookieJar::new(&RESPONDER).stamp(&mut m, now);
        checker.reply(&m, 1, from, now, &mut reply).expect("reply");
        assert_eq!(jar.consume(&reply, now), Err(CookieError::Unsolicited));
        // A reply to a message we did not send (another mac1).
        let mut mine = msg(0x34);
        jar.stamp(&mut mine, now);
        assert_eq!(jar.consume(&reply, now), Err(CookieError::BadTag));
        // Sealed under another responder's key.
        let mut other = CookieChecker::new(&[9; 32]);
        other.reply(&mine, 1, from, now, &mut reply).expect("reply");
        assert_eq!(jar.consume(&reply, now), Err(CookieError::BadTag));
        // Tampered bytes.
        checker
            .reply(&mine, 1, from, now, &mut reply)
            .expect("reply");
        for i in [8, 31, 32, 63] {
            let mut bad = reply;
            bad[i] ^= 0x40;
            assert_eq!(jar.consume(&bad, now), Err(CookieError::BadTag), "flip {i}");
        }
        assert_eq!(jar.consume(&reply[..63], now), Err(CookieError::Malformed));
        assert!(!jar.has_cookie(now));
        jar.consume(&reply, now).expect("the genuine reply");
        assert!(jar.has_cookie(now));
    }

    #[test]
    fn fuzzed_messages_never_panic() {
        let mut checker = CookieChecker::new(&RESPONDER);
        let mut jar = CookieJar::new(&RESPONDER);
        let now = Instant::now();
        let from = addr("198.18.0.1:1");
        let mut m = msg(0x44);
        jar.stamp(&mut m, now);
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        checker.reply(&m, 1, from, now, &mut reply).expect("reply");
        crate::wire::testutil::mutations(&m, 5_000, |v| {
            let _ = checker.mac1_ok(v);
            let _ = checker.mac2_ok(v, from, now);
            let mut out = [0u8; COOKIE_REPLY_LEN];
            let _ = checker.reply(v, 1, from, now, &mut out);
            jar.stamp(v, now);
        });
        crate::wire::testutil::mutations(&reply, 5_000, |v| {
            let _ = jar.consume(v, now);
        });
    }
}
