//! Optional shared-key authentication of the control connection: the server
//! sends a fresh random nonce ([`Msg::Challenge`](super::proto::Msg)), the
//! client answers with HMAC-SHA256(key, [`CONTEXT`] ‖ nonce)
//! ([`Msg::Auth`](super::proto::Msg)), and the server compares in constant
//! time. The key never crosses the wire and a fresh nonce per connection
//! makes a recorded answer useless. This authenticates the client to the
//! server only (it keeps strangers from using a server as a traffic
//! source); it does not encrypt or protect the test traffic.

use std::path::Path;

/// Domain separation: a MAC of this protocol cannot be mistaken for another.
pub const CONTEXT: &[u8] = b"tunbench control auth v1\0";
/// Bytes of a challenge nonce: 256 bits, never repeated in practice.
pub const NONCE_LEN: usize = 32;
/// Shortest key accepted: 128 bits, so guessing is not an option.
pub const MIN_KEY_LEN: usize = 16;
/// Longest key file read: a key is a line of text, not a document.
pub const MAX_KEY_FILE: u64 = 4096;

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("auth key file {path}: {error}")]
    Read {
        /// The path.
        path: String,
        /// The error.
        error: std::io::Error,
    },
    /// The key is too short (after trimming whitespace) or the file too big.
    #[error("auth key file {path}: {why}")]
    Invalid {
        /// The path.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// A shared key (its bytes are never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKey(Vec<u8>);

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKey(..)")
    }
}

impl Drop for AuthKey {
    fn drop(&mut self) {
        // Best effort: overwrite before the memory is freed.
        for b in self.0.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl AuthKey {
    /// A key from bytes (at least [`MIN_KEY_LEN`]).
    pub fn new(bytes: &[u8]) -> Option<AuthKey> {
        (bytes.len() >= MIN_KEY_LEN).then(|| AuthKey(bytes.to_vec()))
    }

    /// Reads a key file: its contents with surrounding whitespace trimmed
    /// (e.g. the output of `head -c 32 /dev/urandom | base64`).
    pub fn load(path: &Path) -> Result<AuthKey, AuthError> {
        let shown = path.display().to_string();
        let read = |error| AuthError::Read {
            path: shown.clone(),
            error,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.len() > MAX_KEY_FILE {
            return Err(AuthError::Invalid {
                path: shown,
                why: format!(
                    "{} bytes, a key file holds at most {MAX_KEY_FILE}",
                    meta.len()
                ),
            });
        }
        let data = std::fs::read(path).map_err(read)?;
        let trimmed = data.trim_ascii();
        AuthKey::new(trimmed).ok_or_else(|| AuthError::Invalid {
            path: shown,
            why: format!(
                "key of {} bytes, at least {MIN_KEY_LEN} needed",
                trimmed.len()
            ),
        })
    }

    /// The answer to `nonce`, hex.
    pub fn answer(&self, nonce: &[u8]) -> String {
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let mut ctx = ring::hmac::Context::with_key(&k);
        ctx.update(CONTEXT);
        ctx.update(nonce);
        hex(ctx.sign().as_ref())
    }

    /// Whether `answer` (hex) is the right answer to `nonce`, compared in
    /// constant time.
    pub fn verify(&self, nonce: &[u8], answer: &str) -> bool {
        let Some(tag) = unhex(answer) else {
            return false;
        };
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let mut msg = Vec::with_capacity(CONTEXT.len() + nonce.len());
        msg.extend_from_slice(CONTEXT);
        msg.extend_from_slice(nonce);
        ring::hmac::verify(&k, &msg, &tag).is_ok()
    }
}

/// A fresh random nonce.
pub fn nonce() -> Result<[u8; NONCE_LEN], getrandom::Error> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut n)?;
    Ok(n)
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parses hex of even length; `None` on anything else.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || s.len() > 256 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_key_verifies_wrong_key_and_garbage_do_not() {
        let k = AuthKey::new(b"0123456789abcdef-secret").expect("key");
        let other = AuthKey::new(b"0123456789abcdef-secreT").expect("key");
        let n = nonce().expect("nonce");
        let a = k.answer(&n);
        assert_eq!(a.len(), 64);
        assert!(k.verify(&n, &a));
        assert!(!other.verify(&n, &a));
        let n2 = nonce().expect("nonce");
        assert!(!k.verify(&n2, &a), "an answer is bound to its nonce");
        for bad in ["", "zz", "abc", &a[..62], &"0".repeat(64), &"é".repeat(32)] {
            assert!(!k.verify(&n, bad), "{bad:?}");
        }
        assert!(AuthKey::new(b"short").is_none());
        assert_eq!(format!("{k:?}"), "AuthKey(..)");
    }

    #[test]
    fn key_files_are_trimmed_and_checked() {
        let dir = std::env::temp_dir().join(format!("tb-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("k");
        std::fs::write(&p, "  0123456789abcdef0123\n").expect("write");
        let k = AuthKey::load(&p).expect("loads");
        assert_eq!(k, AuthKey::new(b"0123456789abcdef0123").expect("key"));
        std::fs::write(&p, "tooshort\n").expect("write");
        let e = AuthKey::load(&p).expect_err("short").to_string();
        assert!(e.contains("at least 16"), "{e}");
        std::fs::write(&p, vec![b'a'; 5000]).expect("write");
        assert!(AuthKey::load(&p).is_err());
        let e = AuthKey::load(&dir.join("missing"))
            .expect_err("missing")
            .to_string();
        assert!(e.contains("missing"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
