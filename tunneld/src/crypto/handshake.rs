//! The Noise IK handshake (via `snow`): the initiator knows the responder's
//! static key in advance, both sides prove possession of their static keys, and
//! fresh ephemeral keys give every session forward secrecy.
//!
//! The handshake states are values that consume themselves (rustls style):
//! [`start_initiation`] → [`Initiation::finish`] on the initiator,
//! [`read_initiation`] → [`ReceivedInitiation::respond`] on the responder. No
//! I/O and no clock: the caller supplies the timestamp carried in the first
//! message (used by the responder to reject replayed initiations) and writes
//! the returned Noise bytes into our frame headers.
//!
//! After the two messages, Noise's Split() yields two 32-byte keys; the data
//! path uses them with its own AEAD (see [`super::aead`]) and counter nonces.

use snow::params::NoiseParams;
use zeroize::{Zeroize, Zeroizing};

/// The Noise protocol name: IK pattern, X25519, ChaCha20-Poly1305, BLAKE2s.
pub const NOISE_PATTERN: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Bound into the handshake hash so a handshake for another protocol (or
/// another version of ours) can never complete against us.
const PROLOGUE: &[u8] = b"tunneld handshake v1";
/// Length of the timestamp payload of the first message (seconds u64 BE,
/// nanoseconds u32 BE, so byte order compares like time).
pub const TIMESTAMP_LEN: usize = 12;
/// Noise bytes of the first message: e (32) + encrypted s (32+16) +
/// encrypted timestamp (12+16).
pub const INIT_NOISE_LEN: usize = 32 + 48 + TIMESTAMP_LEN + 16;
/// Noise bytes of the second message: e (32) + encrypted empty payload (16).
pub const RESPONSE_NOISE_LEN: usize = 32 + 16;

/// Why a handshake message was refused. The daemon counts these as
/// `drop_handshake_invalid`.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The Noise message did not decrypt or verify: wrong responder key,
    /// corrupted bytes, or not a handshake message at all.
    #[error("noise handshake failed: {0}")]
    Noise(#[from] snow::Error),
    /// The message has the wrong length for its position in the handshake.
    #[error("handshake message has length {got}, expected {expected}")]
    BadLength { got: usize, expected: usize },
    /// The peer's static key was not available after the first message
    /// (cannot happen with IK unless snow misbehaves).
    #[error("initiator static key missing")]
    NoRemoteStatic,
    /// The output buffer is too small for the message.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// The initiation already completed; a second response is refused.
    #[error("handshake already finished")]
    Finished,
}

/// Our static key pair. The private key is wiped from memory when the
/// identity is dropped.
#[derive(Clone)]
pub struct Identity {
    private: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

impl Identity {
    /// Builds an identity from the raw private key and its public key.
    pub fn new(private: [u8; 32], public: [u8; 32]) -> Self {
        Identity {
            private: Zeroizing::new(private),
            public,
        }
    }

    /// Our public key.
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }
}

/// Keys and indexes of one freshly established session. The keys are
/// wiped from memory when this is dropped (the AEADs built from them hold
/// their own expanded copies).
#[derive(Clone)]
pub struct SessionKeys {
    /// Key sealing what we send.
    pub send: [u8; 32],
    /// Key opening what we receive.
    pub recv: [u8; 32],
    /// Index the peer puts in frames addressed to us.
    pub local_index: u32,
    /// Index we put in frames addressed to the peer.
    pub remote_index: u32,
    /// True if we sent the first handshake message.
    pub initiator: bool,
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        self.send.zeroize();
        self.recv.zeroize();
    }
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("initiator", &self.initiator)
            .finish_non_exhaustive()
    }
}

fn params() -> NoiseParams {
    // The pattern string is a constant known to parse; a failure here is a
    // programming error caught by the unit tests.
    #[allow(clippy::expect_used)]
    NOISE_PATTERN.parse().expect("valid noise pattern")
}

/// An initiation we sent and whose response we await.
pub struct Initiation {
    hs: snow::HandshakeState,
    local_index: u32,
    peer_public: [u8; 32],
}

impl std::fmt::Debug for Initiation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiation")
            .field("local_index", &self.local_index)
            .finish_non_exhaustive()
    }
}

/// Starts a handshake towards `peer_public`: writes the first Noise message
/// into `out` and returns the pending state and the number of bytes written.
pub fn start_initiation(
    id: &Identity,
    peer_public: &[u8; 32],
    local_index: u32,
    timestamp: [u8; TIMESTAMP_LEN],
    out: &mut [u8],
) -> Result<(Initiation, usize), HandshakeError> {
    if out.len() < INIT_NOISE_LEN {
        return Err(HandshakeError::BufferTooSmall);
    }
    let mut hs = snow::Builder::new(params())
        .prologue(PROLOGUE)?
        .local_private_key(&id.private[..])?
        .remote_public_key(peer_public)?
        .build_initiator()?;
    let n = hs.write_message(&timestamp, out)?;
    Ok((
        Initiation {
            hs,
            local_index,
            peer_public: *peer_public,
        },
        n,
    ))
}

impl Initiation {
    /// Our index for the session this handshake will create.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// The responder this initiation is addressed to.
    pub fn peer_public(&self) -> &[u8; 32] {
        &self.peer_public
    }

    /// Reads the responder's message (whose frame carried `remote_index`)
    /// and returns the session keys. A message that fails leaves the
    /// initiation as it was (snow restores its state), so a forged response
    /// cannot kill the handshake the genuine response completes; after a
    /// success the initiation is spent and the caller drops it.
    pub fn finish(
        &mut self,
        response: &[u8],
        remote_index: u32,
    ) -> Result<SessionKeys, HandshakeError> {
        if response.len() != RESPONSE_NOISE_LEN {
            return Err(HandshakeError::BadLength {
                got: response.len(),
                expected: RESPONSE_NOISE_LEN,
            });
        }
        if self.hs.is_handshake_finished() {
            return Err(HandshakeError::Finished);
        }
        let mut payload = [0u8; 64];
        self.hs.read_message(response, &mut payload)?;
        let (send, recv) = self.hs.dangerously_get_raw_split();
        Ok(SessionKeys {
            send,
            recv,
            local_index: self.local_index,
            remote_index,
            initiator: true,
        })
    }
}

/// A first message that decrypted correctly; the caller checks that the
/// initiator is a known peer and that the timestamp is fresh before answering.
pub struct ReceivedInitiation {
    hs: snow::HandshakeState,
    /// The initiator's static public key (authenticated).
    pub peer_public: [u8; 32],
    /// The initiator's timestamp (authenticated).
    pub timestamp: [u8; TIMESTAMP_LEN],
    /// The initiator's index for the new session.
    pub remote_index: u32,
}

impl std::fmt::Debug for ReceivedInitiation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivedInitiation")
            .field("remote_index", &self.remote_index)
            .finish_non_exhaustive()
    }
}

/// Reads a first message addressed to `id` (its frame carried `remote_index`).
pub fn read_initiation(
    id: &Identity,
    noise: &[u8],
    remote_index: u32,
) -> Result<ReceivedInitiation, HandshakeError> {
    if noise.len() != INIT_NOISE_LEN {
        return Err(HandshakeError::BadLength {
            got: noise.len(),
            expected: INIT_NOISE_LEN,
        });
    }
    let mut hs = snow::Builder::new(params())
        .prologue(PROLOGUE)?
        .local_private_key(&id.private[..])?
        .build_responder()?;
    let mut payload = [0u8; 64];
    let n = hs.read_message(noise, &mut payload)?;
    if n != TIMESTAMP_LEN {
        return Err(HandshakeError::BadLength {
            got: n,
            expected: TIMESTAMP_LEN,
        });
    }
    let peer_public: [u8; 32] = hs
        .get_remote_static()
        .and_then(|s| s.try_into().ok())
        .ok_or(HandshakeError::NoRemoteStatic)?;
    let mut timestamp = [0u8; TIMESTAMP_LEN];
    timestamp.copy_from_slice(&payload[..TIMESTAMP_LEN]);
    Ok(ReceivedInitiation {
        hs,
        peer_public,
        timestamp,
        remote_index,
    })
}

impl ReceivedInitiation {
    /// Writes the second message into `out` and returns the session keys and
    /// the number of bytes written.
    pub fn respond(
        mut self,
        local_index: u32,
        out: &mut [u8],
    ) -> Result<(SessionKeys, usize), HandshakeError> {
        if out.len() < RESPONSE_NOISE_LEN {
            return Err(HandshakeError::BufferTooSmall);
        }
        let n = self.hs.write_message(&[], out)?;
        let (init_to_resp, resp_to_init) = self.hs.dangerously_get_raw_split();
        Ok((
            SessionKeys {
                send: resp_to_init,
                recv: init_to_resp,
                local_index,
                remote_index: self.remote_index,
                initiator: false,
            },
            n,
        ))
    }
}

/// Encodes a wall-clock time (seconds and nanoseconds since the Unix epoch)
/// as the handshake timestamp.
pub fn timestamp(secs: u64, nanos: u32) -> [u8; TIMESTAMP_LEN] {
    let mut t = [0u8; TIMESTAMP_LEN];
    t[..8].copy_from_slice(&secs.to_be_bytes());
    t[8..].copy_from_slice(&nanos.to_be_bytes());
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(seed: u8) -> Identity {
        let mut private = [seed; 32];
        private[0] &= 248;
        private[31] &= 127;
        private[31] |= 64;
        let secret = x25519_dalek::StaticSecret::from(private);
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        Identity::new(private, public)
    }

    #[test]
    fn full_handshake_gives_matching_keys() {
        let a = identity(1);
        let b = identity(2);
        let mut m1 = [0u8; 256];
        let (mut init, n1) =
            start_initiation(&a, b.public(), 11, timestamp(100, 5), &mut m1).expect("init");
        assert_eq!(n1, INIT_NOISE_LEN);
        let recv = read_initiation(&b, &m1[..n1], 11).expect("read init");
        assert_eq!(&recv.peer_public, a.public());
        assert_eq!(recv.timestamp, timestamp(100, 5));
        let mut m2 = [0u8; 256];
        let (kb, n2) = recv.respond(22, &mut m2).expect("respond");
        assert_eq!(n2, RESPONSE_NOISE_LEN);
        let ka = init.finish(&m2[..n2], 22).expect("finish");
        assert_eq!(ka.send, kb.recv);
        assert_eq!(ka.recv, kb.send);
        assert_ne!(ka.send, ka.recv);
        assert_eq!((ka.local_index, ka.remote_index), (11, 22));
        assert_eq!((kb.local_index, kb.remote_index), (22, 11));
        assert!(ka.initiator && !kb.initiator);
    }

    #[test]
    fn fresh_ephemerals_give_fresh_keys() {
        let a = identity(1);
        let b = identity(2);
        let run = || {
            let mut m1 = [0u8; 256];
            let (mut init, n1) =
                start_initiation(&a, b.public(), 1, timestamp(1, 0), &mut m1).expect("init");
            let recv = read_initiation(&b, &m1[..n1], 1).expect("read");
            let mut m2 = [0u8; 256];
            let (_, n2) = recv.respond(2, &mut m2).expect("respond");
            init.finish(&m2[..n2], 2).expect("finish").send
        };
        assert_ne!(run(), run());
    }

    #[test]
    fn initiation_to_wrong_responder_key_fails() {
        let a = identity(1);
        let b = identity(2);
        let c = identity(3);
        let mut m1 = [0u8; 256];
        // a believes it talks to c, but b receives it.
        let (_, n1) = start_initiation(&a, c.public(), 1, timestamp(1, 0), &mut m1).expect("init");
        assert!(matches!(
            read_initiation(&b, &m1[..n1], 1),
            Err(HandshakeError::Noise(_))
        ));
    }

    #[test]
    fn unknown_initiator_is_reported_for_the_caller_to_reject() {
        // The responder learns the initiator's key; deciding it is unknown is
        // the caller's job (peer table), so the key must come out authenticated.
        let stranger = identity(9);
        let b = identity(2);
        let mut m1 = [0u8; 256];
        let (_, n1) =
            start_initiation(&stranger, b.public(), 1, timestamp(1, 0), &mut m1).expect("init");
        let recv = read_initiation(&b, &m1[..n1], 1).expect("decrypts");
        assert_eq!(&recv.peer_public, stranger.public());
    }

    #[test]
    fn corrupted_and_truncated_messages_fail() {
        let a = identity(1);
        let b = identity(2);
        let mut m1 = [0u8; 256];
        let (mut init, n1) =
            start_initiation(&a, b.public(), 1, timestamp(1, 0), &mut m1).expect("init");
        for i in [0, 40, n1 - 1] {
            let mut bad = m1[..n1].to_vec();
            bad[i] ^= 0x80;
            assert!(read_initiation(&b, &bad, 1).is_err(), "flip at {i}");
        }
        assert!(matches!(
            read_initiation(&b, &m1[..n1 - 1], 1),
            Err(HandshakeError::BadLength { .. })
        ));
        assert!(read_initiation(&b, &[0u8; INIT_NOISE_LEN], 1).is_err());
        let recv = read_initiation(&b, &m1[..n1], 1).expect("read");
        let mut m2 = [0u8; 256];
        let (_, n2) = recv.respond(2, &mut m2).expect("respond");
        let mut bad = m2[..n2].to_vec();
        bad[40] ^= 1;
        assert!(init.finish(&bad, 2).is_err());
    }

    #[test]
    fn forged_responses_do_not_spoil_the_genuine_one() {
        let a = identity(1);
        let b = identity(2);
        let mallory = identity(6);
        let mut m1 = [0u8; 256];
        let (mut init, n1) =
            start_initiation(&a, b.public(), 1, timestamp(1, 0), &mut m1).expect("init");
        // Forgeries first: random bytes, a real response from another
        // responder key (Mallory answering the initiation she saw), and a
        // genuine response with a flipped bit.
        assert!(init.finish(&[0x55; RESPONSE_NOISE_LEN], 9).is_err());
        let mut stolen = [0u8; 256];
        let (_, ns) = start_initiation(&a, mallory.public(), 1, timestamp(1, 0), &mut stolen)
            .expect("init for mallory");
        let recv_m = read_initiation(&mallory, &stolen[..ns], 1).expect("read");
        let mut forged = [0u8; 256];
        let (_, nf) = recv_m.respond(9, &mut forged).expect("respond");
        assert!(init.finish(&forged[..nf], 9).is_err());
        let recv = read_initiation(&b, &m1[..n1], 1).expect("read");
        let mut m2 = [0u8; 256];
        let (kb, n2) = recv.respond(2, &mut m2).expect("respond");
        let mut bad = m2[..n2].to_vec();
        bad[33] ^= 1;
        assert!(init.finish(&bad, 2).is_err());
        let ka = init
            .finish(&m2[..n2], 2)
            .expect("genuine response still works");
        assert_eq!(ka.send, kb.recv);
        assert!(matches!(
            init.finish(&m2[..n2], 2),
            Err(HandshakeError::Finished)
        ));
    }

    #[test]
    fn response_from_other_handshake_fails() {
        let a = identity(1);
        let b = identity(2);
        let mut m1 = [0u8; 256];
        let (mut init1, _) =
            start_initiation(&a, b.public(), 1, timestamp(1, 0), &mut m1).expect("i");
        let mut m1b = [0u8; 256];
        let (_, n1b) = start_initiation(&a, b.public(), 2, timestamp(2, 0), &mut m1b).expect("i");
        let recv = read_initiation(&b, &m1b[..n1b], 2).expect("read");
        let mut m2 = [0u8; 256];
        let (_, n2) = recv.respond(3, &mut m2).expect("respond");
        assert!(init1.finish(&m2[..n2], 3).is_err());
    }

    #[test]
    fn timestamps_order_bytewise() {
        assert!(timestamp(1, 999_999_999) < timestamp(2, 0));
        assert!(timestamp(2, 1) > timestamp(2, 0));
    }
}
