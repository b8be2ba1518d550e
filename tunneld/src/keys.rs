//! X25519 static keys as WireGuard-style base64 text, and the private key file.
//!
//! Owns: [`PrivateKey`] (never printed by `Debug`), [`PublicKey`] (printed as
//! base64), generation from the OS random source, and loading a private key
//! file with the permission checks an operator expects (`chmod 600`, no
//! symlinks, a regular file owned by us or root); and [`SpkiPin`], the
//! SHA-256 of a QUIC certificate's public key that a peer is pinned by,
//! parsed once when the config is read.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Length of an X25519 key in bytes.
pub const KEY_LEN: usize = 32;

/// Longest key file we read: a key is 44 base64 characters; the rest is room
/// for white space and a trailing newline. Bounds the read of a wrong file.
const MAX_KEY_FILE_LEN: u64 = 1024;

/// Why a key could not be parsed, generated or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not valid standard base64 (with `=` padding).
    #[error("key is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// The base64 decoded to the wrong number of bytes (an X25519 key is 32).
    #[error("key decodes to {0} bytes, expected 32 (44 base64 characters)")]
    Length(usize),
    /// The key file could not be opened, inspected or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The key file's last path component is a symbolic link (refused so a
    /// link cannot redirect the daemon to some other secret).
    #[error("{}: is a symbolic link; point the config at the real file", path.display())]
    Symlink {
        /// The key file.
        path: PathBuf,
    },
    /// The key file is not a regular file (a directory, FIFO, device...).
    #[error("{}: not a regular file", path.display())]
    NotRegular {
        /// The key file.
        path: PathBuf,
    },
    /// The key file grants permissions to group or other users.
    #[error(
        "{}: mode {mode:04o} lets group/other users access the private key; \
         fix it with `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// The permission bits found (`mode & 0o7777`).
        mode: u32,
    },
    /// The key file is owned by a user other than us and root, who could
    /// replace the key.
    #[error(
        "{}: owned by uid {uid}, not by this user or root; fix it with `chown` and `chmod 600`",
        path.display()
    )]
    Owner {
        /// The key file.
        path: PathBuf,
        /// The owner found.
        uid: u32,
    },
    /// The key file is larger than any key file could be.
    #[error("{}: {len} bytes is too large for a key file", path.display())]
    TooLarge {
        /// The key file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The key file's content is not a key.
    #[error("{}: {source}", path.display())]
    BadContent {
        /// The key file.
        path: PathBuf,
        /// What is wrong with the content.
        #[source]
        source: Box<KeyError>,
    },
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(String),
}

fn decode32(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    // The decoded bytes may be a private key: wiped when dropped.
    let bytes = zeroize::Zeroizing::new(STANDARD.decode(text.trim())?);
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length(bytes.len()))
}

/// An X25519 private (static) key. `Debug` does not print it; its bytes
/// are wiped from memory when it is dropped.
#[derive(Clone)]
pub struct PrivateKey([u8; KEY_LEN]);

impl Drop for PrivateKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// An X25519 public key. `Display` and serde use base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; KEY_LEN]);

impl PrivateKey {
    /// Generates a new clamped key from the OS random source.
    pub fn generate() -> Result<PrivateKey, KeyError> {
        let mut b = [0u8; KEY_LEN];
        getrandom::getrandom(&mut b).map_err(|e| KeyError::Random(e.to_string()))?;
        b[0] &= 248;
        b[31] &= 127;
        b[31] |= 64;
        Ok(PrivateKey(b))
    }

    /// Wraps raw key bytes (used as given; X25519 clamps when multiplying).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> PrivateKey {
        PrivateKey(bytes)
    }

    /// Parses base64 text; surrounding white space (a trailing newline) is ignored.
    pub fn from_base64(text: &str) -> Result<PrivateKey, KeyError> {
        let mut raw = decode32(text)?;
        let key = PrivateKey(raw);
        zeroize::Zeroize::zeroize(&mut raw);
        Ok(key)
    }

    /// The key as base64 text (44 characters), as `wg genkey` prints it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }

    /// Loads a key file holding one base64 key, with the checks of
    /// [`read_secret_file`].
    pub fn load_file(path: &Path) -> Result<PrivateKey, KeyError> {
        let bytes = read_secret_file(path, MAX_KEY_FILE_LEN)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| KeyError::BadContent {
            path: path.to_path_buf(),
            source: Box::new(KeyError::Length(bytes.len())),
        })?;
        PrivateKey::from_base64(text).map_err(|e| KeyError::BadContent {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Writes the key as base64 plus newline to a new file with mode 0600.
    /// Fails if the file exists (never overwrites a key).
    pub fn save_file(&self, path: &Path) -> Result<(), KeyError> {
        use std::io::Write;
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(io)?;
        f.write_all(format!("{}\n", self.to_base64()).as_bytes())
            .map_err(io)
    }
}

/// Reads a file holding a secret (our Noise key, the QUIC TLS key) of at
/// most `max_len` bytes; the bytes are wiped from memory when dropped.
///
/// Refuses a symbolic link (the last component is opened with
/// `O_NOFOLLOW`), anything but a regular file, a file with any group or
/// other permission bit, and a file owned by another non-root user. The
/// checks run on the opened descriptor, so the file cannot be swapped
/// between check and read.
pub fn read_secret_file(
    path: &Path,
    max_len: u64,
) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::options()
        .read(true)
        // O_NONBLOCK: opening a FIFO must not hang the daemon; the
        // regular-file check below refuses it.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                KeyError::Symlink {
                    path: path.to_path_buf(),
                }
            } else {
                io(e)
            }
        })?;
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(KeyError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(KeyError::Owner {
            path: path.to_path_buf(),
            uid: meta.uid(),
        });
    }
    if meta.len() > max_len {
        return Err(KeyError::TooLarge {
            path: path.to_path_buf(),
            len: meta.len(),
        });
    }
    // Room for the whole file up front: a growing Vec would leave
    // unwiped copies of the secret behind in freed memory.
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(max_len as usize + 1));
    file.take(max_len).read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
}

impl PartialEq for PrivateKey {
    /// Compares without an early exit, so timing does not reveal the key.
    fn eq(&self, other: &Self) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for PrivateKey {}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PublicKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> PublicKey {
        PublicKey(bytes)
    }

    /// Parses base64 text; surrounding white space is ignored.
    pub fn from_base64(text: &str) -> Result<PublicKey, KeyError> {
        decode32(text).map(PublicKey)
    }

    /// The key as base64 text (44 characters).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PublicKey::from_base64(s)
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Checked inside the visitor so serde_norway reports the value's line.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PublicKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64 X25519 public key")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PublicKey, E> {
                PublicKey::from_base64(v).map_err(|e| E::custom(format!("invalid public key: {e}")))
            }
        }
        d.deserialize_str(V)
    }
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo: how a QUIC peer is
/// authenticated without web PKI (`peers[].quic.spki_sha256`). Written as
/// base64 (what `tunneld gencert` prints); 64 hex digits are accepted too.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpkiPin([u8; 32]);

impl SpkiPin {
    /// Wraps a SHA-256 digest.
    pub const fn from_bytes(bytes: [u8; 32]) -> SpkiPin {
        SpkiPin(bytes)
    }

    /// The digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::str::FromStr for SpkiPin {
    type Err = String;
    /// Parses 64 hex digits or base64 (standard alphabet) of 32 bytes;
    /// surrounding white space is ignored.
    fn from_str(text: &str) -> Result<SpkiPin, String> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|e| e.to_string())?
        } else {
            STANDARD
                .decode(t)
                .map_err(|_| format!("\"{t}\" is neither 64 hex digits nor base64"))?
        };
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(SpkiPin)
            .map_err(|_| {
                format!(
                    "\"{t}\" is {} bytes, a SHA-256 pin is 32 (see `tunneld gencert`)",
                    bytes.len()
                )
            })
    }
}

impl fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpkiPin({self})")
    }
}

impl serde::Serialize for SpkiPin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SpkiPin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Checked inside the visitor so serde_norway reports the value's line.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SpkiPin;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a SHA-256 SPKI pin (base64 or hex)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SpkiPin, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A temporary directory removed on drop (no tempfile crate in the workspace).
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "tunneld-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).expect("create temp dir");
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    // RFC 7748 section 6.1 test vector (Alice).
    const ALICE_PRIV: [u8; 32] = [
        0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2, 0x66,
        0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5, 0x1d, 0xb9,
        0x2c, 0x2a,
    ];
    const ALICE_PUB: [u8; 32] = [
        0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e, 0xf7,
        0x5a, 0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e, 0xaa, 0x9b,
        0x4e, 0x6a,
    ];

    #[test]
    fn public_matches_rfc7748_vector() {
        let k = PrivateKey::from_bytes(ALICE_PRIV);
        assert_eq!(k.public().as_bytes(), &ALICE_PUB);
    }

    #[test]
    fn base64_round_trip_and_trim() {
        let k = PrivateKey::generate().expect("rng");
        let text = format!("  {}\n", k.to_base64());
        let back = PrivateKey::from_base64(&text).expect("parses");
        assert_eq!(back, k);
        assert_eq!(k.to_base64().len(), 44);
        let p = k.public();
        assert_eq!(p.to_string().parse::<PublicKey>().expect("parses"), p);
        // generated keys are clamped
        assert_eq!(k.as_bytes()[0] & 7, 0);
        assert_eq!(k.as_bytes()[31] & 0xc0, 0x40);
    }

    #[test]
    fn bad_text_is_refused() {
        assert!(matches!(
            PublicKey::from_base64("not base64!"),
            Err(KeyError::Base64(_))
        ));
        // 16 bytes of valid base64
        assert!(matches!(
            PublicKey::from_base64("AAAAAAAAAAAAAAAAAAAAAA=="),
            Err(KeyError::Length(16))
        ));
        assert!(matches!(
            PublicKey::from_base64(""),
            Err(KeyError::Length(0))
        ));
    }

    #[test]
    fn debug_does_not_print_private_key() {
        let k = PrivateKey::from_bytes(ALICE_PRIV);
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&k.to_base64()), "{dbg}");
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn load_file_checks_mode_and_symlinks() {
        let dir = TempDir::new("keys");
        let k = PrivateKey::generate().expect("rng");
        let path = dir.0.join("a.key");
        k.save_file(&path).expect("save");
        assert_eq!(
            std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(PrivateKey::load_file(&path).expect("loads"), k);
        // save never overwrites
        assert!(k.save_file(&path).is_err());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = PrivateKey::load_file(&path).expect_err("0644 refused");
        assert!(matches!(err, KeyError::Permissions { mode: 0o644, .. }));
        assert!(err.to_string().contains("chmod 600"), "{err}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let link = dir.0.join("link.key");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        assert!(matches!(
            PrivateKey::load_file(&link),
            Err(KeyError::Symlink { .. })
        ));

        assert!(matches!(
            PrivateKey::load_file(&dir.0),
            Err(KeyError::NotRegular { .. })
        ));
        assert!(matches!(
            PrivateKey::load_file(&dir.0.join("missing.key")),
            Err(KeyError::Io { .. })
        ));

        let junk = dir.0.join("junk.key");
        std::fs::write(&junk, "hello\n").expect("write");
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = PrivateKey::load_file(&junk).expect_err("junk refused");
        assert!(matches!(err, KeyError::BadContent { .. }), "{err}");
    }

    #[test]
    fn serde_public_key() {
        let p = PrivateKey::from_bytes(ALICE_PRIV).public();
        let y = serde_norway::to_string(&p).expect("ser");
        let back: PublicKey = serde_norway::from_str(&y).expect("de");
        assert_eq!(back, p);
        let err = serde_norway::from_str::<PublicKey>("abc").expect_err("bad");
        assert!(err.to_string().contains("invalid public key"), "{err}");
    }

    #[test]
    fn pins_parse_as_hex_or_base64_and_refuse_other_lengths() {
        let hex = "00".repeat(31) + "ff";
        let pin: SpkiPin = hex.parse().expect("hex");
        assert_eq!(pin.as_bytes()[31], 0xff);
        let b64 = SpkiPin::from_bytes([7u8; 32]).to_string();
        assert_eq!(b64.len(), 44, "{b64}");
        assert_eq!(
            format!(" {b64}\n").parse::<SpkiPin>().expect("b64"),
            SpkiPin::from_bytes([7u8; 32])
        );
        let short = "AAAA".parse::<SpkiPin>().expect_err("short");
        assert!(short.contains("3 bytes") && short.contains("32"), "{short}");
        let junk = "not a pin!".parse::<SpkiPin>().expect_err("junk");
        assert!(junk.contains("neither"), "{junk}");
        // Serialised as the base64 that `tunneld gencert` prints.
        let yaml = serde_norway::to_string(&pin).expect("yaml");
        let back: SpkiPin = serde_norway::from_str(&yaml).expect("parse back");
        assert_eq!(back, pin);
        assert!(serde_norway::from_str::<SpkiPin>("AAAA").is_err());
    }
}
