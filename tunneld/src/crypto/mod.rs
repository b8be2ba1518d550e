//! Cryptography for the tunnel, all free of I/O and clocks:
//! - [`aead`]: the pluggable data-path AEAD (AES-256-GCM, ChaCha20-Poly1305, null);
//! - [`handshake`]: the Noise IK handshake that authenticates peers by static
//!   X25519 keys and derives per-session keys from fresh ephemerals;
//! - [`replay`]: the sliding anti-replay window for data counters;
//! - [`cookie`]: the handshake MACs and cookie replies (DoS defence).

pub mod aead;
pub mod cookie;
pub mod handshake;
pub mod replay;

pub use aead::{new_aead, Aead, CipherKind, CryptoError};
pub use handshake::{HandshakeError, SessionKeys};
pub use replay::ReplayWindow;
