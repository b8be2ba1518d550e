//! The data-path AEAD as a provider of trait objects (rustls style), so the
//! session code does not care which cipher runs and tunbench can compare them,
//! including a null cipher that isolates framing cost from crypto cost.
//!
//! Nonces are derived from the 64-bit frame counter (4 zero bytes followed by
//! the counter, little-endian); a session never repeats a counter, so a nonce is
//! never reused under one key.

use std::fmt;

use ring::aead::{self as ring_aead, LessSafeKey, UnboundKey};

/// The AEAD that protects data frames (`cipher:` in the config, which
/// re-exports it as `config::CipherKind`).
#[derive(
    Clone, Copy, PartialEq, Eq, Debug, Default, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum CipherKind {
    /// AES-256-GCM (ring; AES-NI/VAES). The default: fastest on x86-64 servers.
    #[default]
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    /// ChaCha20-Poly1305: for CPUs without AES instructions.
    #[serde(rename = "chacha20-poly1305")]
    ChaCha20Poly1305,
    /// No encryption nor authentication; lab measurements only.
    #[serde(rename = "none")]
    None,
}

impl CipherKind {
    /// The config spelling: `aes-256-gcm`, `chacha20-poly1305` or `none`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CipherKind::Aes256Gcm => "aes-256-gcm",
            CipherKind::ChaCha20Poly1305 => "chacha20-poly1305",
            CipherKind::None => "none",
        }
    }
}

impl fmt::Display for CipherKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CipherKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "aes-256-gcm" => Ok(CipherKind::Aes256Gcm),
            "chacha20-poly1305" => Ok(CipherKind::ChaCha20Poly1305),
            "none" => Ok(CipherKind::None),
            _ => Err(format!(
                "unknown cipher \"{s}\" (expected aes-256-gcm, chacha20-poly1305 or none)"
            )),
        }
    }
}

/// Length of the authentication tag appended to every sealed payload.
pub const TAG_LEN: usize = 16;

/// Why sealing or opening failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The tag did not verify: wrong key, corrupted or forged frame.
    #[error("authentication tag mismatch")]
    BadTag,
    /// The buffer is shorter than a tag, or has no room for one.
    #[error("buffer too short for the AEAD tag")]
    Truncated,
    /// The cipher library refused the key (never expected for 32-byte keys).
    #[error("cipher rejected the key")]
    BadKey,
}

/// An authenticated cipher bound to one direction of one session.
pub trait Aead: Send + Sync {
    /// Encrypts `buf[..buf.len() - TAG_LEN]` in place and writes the tag into the
    /// last `TAG_LEN` bytes. `aad` is authenticated but not encrypted.
    fn seal_in_place(&self, counter: u64, aad: &[u8], buf: &mut [u8]) -> Result<(), CryptoError>;

    /// Verifies and decrypts `buf` (ciphertext followed by tag) in place and
    /// returns the plaintext length (`buf.len() - TAG_LEN`).
    fn open_in_place(&self, counter: u64, aad: &[u8], buf: &mut [u8])
        -> Result<usize, CryptoError>;

    /// The cipher's name as written in the config.
    fn name(&self) -> &'static str;
}

/// Builds the AEAD for `kind` keyed with `key`.
pub fn new_aead(kind: CipherKind, key: &[u8; 32]) -> Result<Box<dyn Aead>, CryptoError> {
    Ok(match kind {
        CipherKind::Aes256Gcm => {
            Box::new(RingAead::new(&ring_aead::AES_256_GCM, key, "aes-256-gcm")?)
        }
        CipherKind::ChaCha20Poly1305 => Box::new(RingAead::new(
            &ring_aead::CHACHA20_POLY1305,
            key,
            "chacha20-poly1305",
        )?),
        CipherKind::None => Box::new(NullAead),
    })
}

fn nonce(counter: u64) -> ring_aead::Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    ring_aead::Nonce::assume_unique_for_key(n)
}

/// AES-256-GCM or ChaCha20-Poly1305 from ring (AES-NI/VAES, AVX2 code paths).
struct RingAead {
    key: LessSafeKey,
    name: &'static str,
}

impl RingAead {
    fn new(
        alg: &'static ring_aead::Algorithm,
        key: &[u8; 32],
        name: &'static str,
    ) -> Result<Self, CryptoError> {
        let unbound = UnboundKey::new(alg, key).map_err(|_| CryptoError::BadKey)?;
        Ok(RingAead {
            key: LessSafeKey::new(unbound),
            name,
        })
    }
}

impl Aead for RingAead {
    fn seal_in_place(&self, counter: u64, aad: &[u8], buf: &mut [u8]) -> Result<(), CryptoError> {
        let body_len = buf
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(CryptoError::Truncated)?;
        let (body, tag_out) = buf.split_at_mut(body_len);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), ring_aead::Aad::from(aad), body)
            .map_err(|_| CryptoError::BadKey)?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(())
    }

    fn open_in_place(
        &self,
        counter: u64,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<usize, CryptoError> {
        if buf.len() < TAG_LEN {
            return Err(CryptoError::Truncated);
        }
        self.key
            .open_in_place(nonce(counter), ring_aead::Aad::from(aad), buf)
            .map(|plain| plain.len())
            .map_err(|_| CryptoError::BadTag)
    }

    fn name(&self) -> &'static str {
        self.name
    }
}

/// No confidentiality and no integrity: the tag is all zeros. Only for labs
/// that want to measure framing cost (`insecure_lab_only: true`).
struct NullAead;

impl Aead for NullAead {
    fn seal_in_place(&self, _: u64, _: &[u8], buf: &mut [u8]) -> Result<(), CryptoError> {
        let body_len = buf
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(CryptoError::Truncated)?;
        buf[body_len..].fill(0);
        Ok(())
    }

    fn open_in_place(&self, _: u64, _: &[u8], buf: &mut [u8]) -> Result<usize, CryptoError> {
        let body_len = buf
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(CryptoError::Truncated)?;
        if buf[body_len..].iter().any(|&b| b != 0) {
            return Err(CryptoError::BadTag);
        }
        Ok(body_len)
    }

    fn name(&self) -> &'static str {
        "none"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(kind: CipherKind) {
        let key = [7u8; 32];
        let a = new_aead(kind, &key).expect("key");
        let b = new_aead(kind, &key).expect("key");
        let aad = [1u8, 0, 0, 0, 9, 9, 9, 9];
        let msg = b"an inner IP packet, more or less";
        let mut buf = msg.to_vec();
        buf.extend_from_slice(&[0u8; TAG_LEN]);
        a.seal_in_place(42, &aad, &mut buf).expect("seal");
        if kind != CipherKind::None {
            assert_ne!(
                &buf[..msg.len()],
                &msg[..],
                "ciphertext differs from plaintext"
            );
        }
        let mut copy = buf.clone();
        let n = b.open_in_place(42, &aad, &mut copy).expect("open");
        assert_eq!(&copy[..n], &msg[..]);
        if kind == CipherKind::None {
            return;
        }
        // Wrong counter, wrong aad, flipped bit, wrong key: all rejected.
        let mut c = buf.clone();
        assert_eq!(b.open_in_place(43, &aad, &mut c), Err(CryptoError::BadTag));
        let mut c = buf.clone();
        assert_eq!(
            b.open_in_place(42, &[0u8; 8], &mut c),
            Err(CryptoError::BadTag)
        );
        let mut c = buf.clone();
        c[3] ^= 1;
        assert_eq!(b.open_in_place(42, &aad, &mut c), Err(CryptoError::BadTag));
        let other = new_aead(kind, &[8u8; 32]).expect("key");
        let mut c = buf.clone();
        assert_eq!(
            other.open_in_place(42, &aad, &mut c),
            Err(CryptoError::BadTag)
        );
        let mut short = vec![0u8; TAG_LEN - 1];
        assert_eq!(
            b.open_in_place(1, &aad, &mut short),
            Err(CryptoError::Truncated)
        );
    }

    #[test]
    fn aes_gcm_roundtrip_and_rejects() {
        roundtrip(CipherKind::Aes256Gcm);
    }

    #[test]
    fn chacha_roundtrip_and_rejects() {
        roundtrip(CipherKind::ChaCha20Poly1305);
    }

    #[test]
    fn null_cipher_roundtrip_and_nonzero_tag_rejected() {
        roundtrip(CipherKind::None);
        let a = new_aead(CipherKind::None, &[0; 32]).expect("key");
        let mut buf = vec![0u8; 20];
        buf[19] = 1;
        assert_eq!(a.open_in_place(0, &[], &mut buf), Err(CryptoError::BadTag));
    }

    #[test]
    fn empty_payload_keepalive() {
        let a = new_aead(CipherKind::Aes256Gcm, &[3; 32]).expect("key");
        let mut buf = [0u8; TAG_LEN];
        a.seal_in_place(0, b"hdr", &mut buf).expect("seal");
        assert_eq!(a.open_in_place(0, b"hdr", &mut buf), Ok(0));
    }
}
