//! Our UDP frame format (all integers little-endian, as WireGuard's):
//!
//! ```text
//! common:              type u8 | reserved [u8;3] (zero)
//! HandshakeInit (1):   common | sender_index u32 | noise message | mac1 [16] | mac2 [16]
//! HandshakeResponse(2):common | sender_index u32 | receiver_index u32 | noise | mac1 | mac2
//! CookieReply (3):     common | receiver_index u32 | nonce [24] | sealed cookie [16+16]
//! Data (4)/Keepalive(5): common | receiver_index u32 | counter u64 | ciphertext | tag[16]
//! ```
//!
//! The 16-byte data header is the AEAD associated data. A keepalive carries
//! an empty plaintext, so it is exactly 32 bytes. The two MACs that end every
//! handshake message and the cookie reply are WireGuard's DoS defence; their
//! cryptography is in [`crate::crypto::cookie`].

use super::WireError;

/// Length of the data/keepalive header (type, reserved, receiver, counter).
pub const DATA_HEADER_LEN: usize = 16;
/// Length of the AEAD tag.
pub const TAG_LEN: usize = 16;
/// Size of a keepalive frame: header + tag of an empty plaintext.
pub const KEEPALIVE_LEN: usize = DATA_HEADER_LEN + TAG_LEN;
/// Header length of a handshake initiation.
pub const HANDSHAKE_INIT_HEADER_LEN: usize = 8;
/// Header length of a handshake response.
pub const HANDSHAKE_RESPONSE_HEADER_LEN: usize = 12;
/// Smallest Noise payload accepted in a handshake message (one ephemeral
/// public key); the Noise layer checks the exact length.
pub const MIN_NOISE_LEN: usize = 32;
/// Length of each of the two MACs ending a handshake message.
pub const MAC_LEN: usize = 16;
/// Bytes the MACs add to a handshake message (mac1, mac2).
pub const MACS_LEN: usize = 2 * MAC_LEN;
/// Length of the cookie reply's XChaCha20-Poly1305 nonce.
pub const COOKIE_NONCE_LEN: usize = 24;
/// Length of a sealed cookie: a 16-byte cookie and its 16-byte tag.
pub const SEALED_COOKIE_LEN: usize = 16 + TAG_LEN;
/// Size of a cookie reply frame: header, receiver, nonce, sealed cookie.
pub const COOKIE_REPLY_LEN: usize = 8 + COOKIE_NONCE_LEN + SEALED_COOKIE_LEN;

mod field {
    use std::ops::Range;
    pub const TYPE: usize = 0;
    pub const RESERVED: Range<usize> = 1..4;
    pub const INDEX: Range<usize> = 4..8;
    pub const COUNTER: Range<usize> = 8..16;
    pub const RESPONSE_RECEIVER: Range<usize> = 8..12;
    pub const COOKIE_NONCE: Range<usize> = 8..32;
    pub const COOKIE_SEALED: Range<usize> = 32..64;
}

/// The frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// First handshake message (initiator → responder).
    HandshakeInit = 1,
    /// Second handshake message (responder → initiator).
    HandshakeResponse = 2,
    /// A cookie for the sender's address, sent instead of a handshake
    /// response while the responder is under load.
    CookieReply = 3,
    /// Encrypted inner packet.
    Data = 4,
    /// Encrypted empty packet that keeps the session (and NAT state) alive.
    Keepalive = 5,
}

impl MessageType {
    /// The type byte.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

impl TryFrom<u8> for MessageType {
    type Error = WireError;
    fn try_from(v: u8) -> Result<Self, WireError> {
        Ok(match v {
            1 => MessageType::HandshakeInit,
            2 => MessageType::HandshakeResponse,
            3 => MessageType::CookieReply,
            4 => MessageType::Data,
            5 => MessageType::Keepalive,
            _ => return Err(WireError::UnknownType(v)),
        })
    }
}

/// Reads the type of a received frame, checking the reserved bytes are zero.
pub fn message_type(buf: &[u8]) -> Result<MessageType, WireError> {
    let Some(header) = buf.get(..4) else {
        return Err(WireError::Truncated);
    };
    let ty = MessageType::try_from(header[field::TYPE])?;
    if header[field::RESERVED] != [0, 0, 0] {
        return Err(WireError::BadReserved);
    }
    Ok(ty)
}

fn le32(b: &[u8], r: std::ops::Range<usize>) -> u32 {
    match b.get(r) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
        _ => 0,
    }
}

fn write_common(buf: &mut [u8], ty: MessageType) {
    buf[field::TYPE] = ty.as_u8();
    buf[field::RESERVED].copy_from_slice(&[0, 0, 0]);
}

/// A view of a data or keepalive frame.
#[derive(Debug, Clone)]
pub struct DataFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> DataFrame<T> {
    /// Checks type (data or keepalive), reserved bytes, and length: at least
    /// header + tag; a keepalive exactly that.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        let ty = message_type(b)?;
        match ty {
            MessageType::Data | MessageType::Keepalive => {}
            other => return Err(WireError::WrongType(other.as_u8())),
        }
        if b.len() < KEEPALIVE_LEN {
            return Err(WireError::Truncated);
        }
        if ty == MessageType::Keepalive && b.len() != KEEPALIVE_LEN {
            return Err(WireError::BadLength);
        }
        Ok(DataFrame { buffer })
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Data or keepalive.
    pub fn message_type(&self) -> MessageType {
        if self.b()[field::TYPE] == MessageType::Keepalive.as_u8() {
            MessageType::Keepalive
        } else {
            MessageType::Data
        }
    }

    /// Our index for the session, chosen by us in the handshake.
    pub fn receiver_index(&self) -> u32 {
        le32(self.b(), field::INDEX)
    }

    /// The nonce counter.
    pub fn counter(&self) -> u64 {
        let mut c = [0u8; 8];
        c.copy_from_slice(&self.b()[field::COUNTER]);
        u64::from_le_bytes(c)
    }

    /// The 16-byte header: the AEAD associated data.
    pub fn header(&self) -> &[u8] {
        &self.b()[..DATA_HEADER_LEN]
    }

    /// Ciphertext followed by the tag.
    pub fn payload(&self) -> &[u8] {
        &self.b()[DATA_HEADER_LEN..]
    }

    /// Ciphertext without the tag.
    pub fn ciphertext(&self) -> &[u8] {
        let b = self.b();
        &b[DATA_HEADER_LEN..b.len() - TAG_LEN]
    }

    /// The tag.
    pub fn tag(&self) -> &[u8] {
        let b = self.b();
        &b[b.len() - TAG_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> DataFrame<T> {
    /// Ciphertext and tag, mutable (open in place).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[DATA_HEADER_LEN..]
    }

    /// The header (read-only) and the payload (mutable) at once, for
    /// in-place AEAD that needs the associated data alongside.
    pub fn split_header_payload(&mut self) -> (&[u8], &mut [u8]) {
        let (h, p) = self.buffer.as_mut().split_at_mut(DATA_HEADER_LEN);
        (h, p)
    }
}

impl DataFrame<&[u8]> {
    /// Writes a 16-byte data/keepalive header at the start of `buf`.
    pub fn emit_header(
        buf: &mut [u8],
        ty: MessageType,
        receiver_index: u32,
        counter: u64,
    ) -> Result<(), WireError> {
        emit_data_header(buf, ty, receiver_index, counter)
    }
}

/// Writes a 16-byte data/keepalive header at the start of `buf`
/// (same as [`DataFrame::emit_header`]).
pub fn emit_data_header(
    buf: &mut [u8],
    ty: MessageType,
    receiver_index: u32,
    counter: u64,
) -> Result<(), WireError> {
    if !matches!(ty, MessageType::Data | MessageType::Keepalive) {
        return Err(WireError::WrongType(ty.as_u8()));
    }
    let Some(h) = buf.get_mut(..DATA_HEADER_LEN) else {
        return Err(WireError::BufferTooSmall);
    };
    write_common(h, ty);
    h[field::INDEX].copy_from_slice(&receiver_index.to_le_bytes());
    h[field::COUNTER].copy_from_slice(&counter.to_le_bytes());
    Ok(())
}

/// A view of a handshake initiation.
#[derive(Debug, Clone)]
pub struct HandshakeInit<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> HandshakeInit<T> {
    /// Checks type 1, reserved bytes and a minimum length of header + 32 +
    /// the two MACs.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        let ty = message_type(b)?;
        if ty != MessageType::HandshakeInit {
            return Err(WireError::WrongType(ty.as_u8()));
        }
        if b.len() < HANDSHAKE_INIT_HEADER_LEN + MIN_NOISE_LEN + MACS_LEN {
            return Err(WireError::Truncated);
        }
        Ok(HandshakeInit { buffer })
    }

    /// The initiator's index for the session.
    pub fn sender_index(&self) -> u32 {
        le32(self.buffer.as_ref(), field::INDEX)
    }

    /// The Noise handshake message (between the header and the MACs).
    pub fn noise(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[HANDSHAKE_INIT_HEADER_LEN..b.len() - MACS_LEN]
    }

    /// The whole message, MACs included (what [`crate::crypto::cookie`] checks).
    pub fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

impl HandshakeInit<&[u8]> {
    /// Writes the 8-byte header; the Noise message follows at
    /// [`HANDSHAKE_INIT_HEADER_LEN`].
    pub fn emit_header(buf: &mut [u8], sender_index: u32) -> Result<(), WireError> {
        let Some(h) = buf.get_mut(..HANDSHAKE_INIT_HEADER_LEN) else {
            return Err(WireError::BufferTooSmall);
        };
        write_common(h, MessageType::HandshakeInit);
        h[field::INDEX].copy_from_slice(&sender_index.to_le_bytes());
        Ok(())
    }
}

/// A view of a handshake response.
#[derive(Debug, Clone)]
pub struct HandshakeResponse<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> HandshakeResponse<T> {
    /// Checks type 2, reserved bytes and a minimum length of header + 32 +
    /// the two MACs.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        let ty = message_type(b)?;
        if ty != MessageType::HandshakeResponse {
            return Err(WireError::WrongType(ty.as_u8()));
        }
        if b.len() < HANDSHAKE_RESPONSE_HEADER_LEN + MIN_NOISE_LEN + MACS_LEN {
            return Err(WireError::Truncated);
        }
        Ok(HandshakeResponse { buffer })
    }

    /// The responder's index for the session.
    pub fn sender_index(&self) -> u32 {
        le32(self.buffer.as_ref(), field::INDEX)
    }

    /// The initiator's index (from its HandshakeInit).
    pub fn receiver_index(&self) -> u32 {
        le32(self.buffer.as_ref(), field::RESPONSE_RECEIVER)
    }

    /// The Noise handshake message (between the header and the MACs).
    pub fn noise(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[HANDSHAKE_RESPONSE_HEADER_LEN..b.len() - MACS_LEN]
    }

    /// The whole message, MACs included (what [`crate::crypto::cookie`] checks).
    pub fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A view of a cookie reply.
#[derive(Debug, Clone)]
pub struct CookieReply<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> CookieReply<T> {
    /// Checks type 3, reserved bytes and the exact length.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        let ty = message_type(b)?;
        if ty != MessageType::CookieReply {
            return Err(WireError::WrongType(ty.as_u8()));
        }
        match b.len() {
            COOKIE_REPLY_LEN => Ok(CookieReply { buffer }),
            n if n < COOKIE_REPLY_LEN => Err(WireError::Truncated),
            _ => Err(WireError::BadLength),
        }
    }

    /// The index of the handshake message this reply answers (its sender's).
    pub fn receiver_index(&self) -> u32 {
        le32(self.buffer.as_ref(), field::INDEX)
    }

    /// The XChaCha20-Poly1305 nonce.
    pub fn nonce(&self) -> &[u8] {
        &self.buffer.as_ref()[field::COOKIE_NONCE]
    }

    /// The sealed cookie (16 bytes and the tag).
    pub fn sealed_cookie(&self) -> &[u8] {
        &self.buffer.as_ref()[field::COOKIE_SEALED]
    }
}

impl CookieReply<&[u8]> {
    /// Writes a whole cookie reply into `buf[..COOKIE_REPLY_LEN]`.
    pub fn emit(
        buf: &mut [u8],
        receiver_index: u32,
        nonce: &[u8; COOKIE_NONCE_LEN],
        sealed: &[u8; SEALED_COOKIE_LEN],
    ) -> Result<(), WireError> {
        let Some(h) = buf.get_mut(..COOKIE_REPLY_LEN) else {
            return Err(WireError::BufferTooSmall);
        };
        write_common(h, MessageType::CookieReply);
        h[field::INDEX].copy_from_slice(&receiver_index.to_le_bytes());
        h[field::COOKIE_NONCE].copy_from_slice(nonce);
        h[field::COOKIE_SEALED].copy_from_slice(sealed);
        Ok(())
    }
}

impl HandshakeResponse<&[u8]> {
    /// Writes the 12-byte header; the Noise message follows at
    /// [`HANDSHAKE_RESPONSE_HEADER_LEN`].
    pub fn emit_header(
        buf: &mut [u8],
        sender_index: u32,
        receiver_index: u32,
    ) -> Result<(), WireError> {
        let Some(h) = buf.get_mut(..HANDSHAKE_RESPONSE_HEADER_LEN) else {
            return Err(WireError::BufferTooSmall);
        };
        write_common(h, MessageType::HandshakeResponse);
        h[field::INDEX].copy_from_slice(&sender_index.to_le_bytes());
        h[field::RESPONSE_RECEIVER].copy_from_slice(&receiver_index.to_le_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testutil::mutations;

    /// Data frame: receiver 0x01020304, counter 0x1122334455667788, 4 bytes
    /// of ciphertext, tag 0xa0..0xaf.
    static DATA: [u8; 36] = [
        0x04, 0x00, 0x00, 0x00, 0x04, 0x03, 0x02, 0x01, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22,
        0x11, 0xde, 0xad, 0xbe, 0xef, 0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9,
        0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf,
    ];

    #[test]
    fn data_frame_view() {
        assert_eq!(message_type(&DATA), Ok(MessageType::Data));
        let f = DataFrame::new_checked(&DATA[..]).expect("valid");
        assert_eq!(f.message_type(), MessageType::Data);
        assert_eq!(f.receiver_index(), 0x0102_0304);
        assert_eq!(f.counter(), 0x1122_3344_5566_7788);
        assert_eq!(f.header(), &DATA[..16]);
        assert_eq!(f.payload().len(), 20);
        assert_eq!(f.ciphertext(), &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(f.tag()[0], 0xa0);
    }

    #[test]
    fn emit_matches_fixture() {
        let mut buf = DATA;
        buf[..16].fill(0xff);
        DataFrame::emit_header(
            &mut buf,
            MessageType::Data,
            0x0102_0304,
            0x1122_3344_5566_7788,
        )
        .expect("fits");
        assert_eq!(buf, DATA);
        assert_eq!(
            emit_data_header(&mut [0u8; 15], MessageType::Data, 1, 1),
            Err(WireError::BufferTooSmall)
        );
        assert_eq!(
            emit_data_header(&mut [0u8; 16], MessageType::HandshakeInit, 1, 1),
            Err(WireError::WrongType(1))
        );
    }

    #[test]
    fn keepalive_is_exactly_32_bytes() {
        let mut k = [0u8; KEEPALIVE_LEN];
        DataFrame::emit_header(&mut k, MessageType::Keepalive, 7, 9).expect("fits");
        let f = DataFrame::new_checked(&k[..]).expect("valid");
        assert_eq!(f.message_type(), MessageType::Keepalive);
        assert!(f.ciphertext().is_empty());
        let mut long = [0u8; KEEPALIVE_LEN + 1];
        long[0] = 5;
        assert_eq!(
            DataFrame::new_checked(&long[..]).err(),
            Some(WireError::BadLength)
        );
        assert_eq!(
            DataFrame::new_checked(&k[..31]).err(),
            Some(WireError::Truncated)
        );
    }

    #[test]
    fn header_checks() {
        assert_eq!(message_type(&[4, 0, 0]), Err(WireError::Truncated));
        assert_eq!(message_type(&[4, 0, 1, 0]), Err(WireError::BadReserved));
        assert_eq!(message_type(&[0, 0, 0, 0]), Err(WireError::UnknownType(0)));
        assert_eq!(message_type(&[6, 0, 0, 0]), Err(WireError::UnknownType(6)));
        assert_eq!(message_type(&[3, 0, 0, 0]), Ok(MessageType::CookieReply));
        let mut d = DATA;
        d[3] = 1;
        assert_eq!(
            DataFrame::new_checked(&d[..]).err(),
            Some(WireError::BadReserved)
        );
        assert_eq!(
            DataFrame::new_checked(&[1u8, 0, 0, 0][..]).err(),
            Some(WireError::WrongType(1))
        );
    }

    #[test]
    fn handshake_views() {
        let mut init = [0u8; HANDSHAKE_INIT_HEADER_LEN + 48 + MACS_LEN];
        HandshakeInit::emit_header(&mut init, 0xdead_beef).expect("fits");
        init[8..56].fill(0x5a);
        init[56..].fill(0x77);
        assert_eq!(&init[..8], &[1, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde]);
        let v = HandshakeInit::new_checked(&init[..]).expect("valid");
        assert_eq!(v.sender_index(), 0xdead_beef);
        assert_eq!(v.noise(), &[0x5a; 48]);
        assert_eq!(v.bytes().len(), 88);
        assert_eq!(
            HandshakeInit::new_checked(&init[..71]).err(),
            Some(WireError::Truncated)
        );
        assert!(HandshakeInit::new_checked(&init[..72]).is_ok());

        let mut resp = [0u8; HANDSHAKE_RESPONSE_HEADER_LEN + 32 + MACS_LEN];
        HandshakeResponse::emit_header(&mut resp, 11, 22).expect("fits");
        let v = HandshakeResponse::new_checked(&resp[..]).expect("valid");
        assert_eq!((v.sender_index(), v.receiver_index()), (11, 22));
        assert_eq!(v.noise().len(), 32);
        assert_eq!(
            HandshakeResponse::new_checked(&resp[..75]).err(),
            Some(WireError::Truncated)
        );
        assert_eq!(
            HandshakeResponse::new_checked(&init[..]).err(),
            Some(WireError::WrongType(1))
        );
        assert_eq!(
            HandshakeResponse::emit_header(&mut [0u8; 11], 1, 2),
            Err(WireError::BufferTooSmall)
        );
    }

    #[test]
    fn cookie_reply_view() {
        let mut buf = [0u8; COOKIE_REPLY_LEN + 1];
        CookieReply::emit(&mut buf, 0x0a0b_0c0d, &[3; 24], &[9; 32]).expect("fits");
        assert_eq!(&buf[..8], &[3, 0, 0, 0, 0x0d, 0x0c, 0x0b, 0x0a]);
        let v = CookieReply::new_checked(&buf[..COOKIE_REPLY_LEN]).expect("valid");
        assert_eq!(v.receiver_index(), 0x0a0b_0c0d);
        assert_eq!(v.nonce(), &[3; 24]);
        assert_eq!(v.sealed_cookie(), &[9; 32]);
        assert_eq!(
            CookieReply::new_checked(&buf[..]).err(),
            Some(WireError::BadLength)
        );
        assert_eq!(
            CookieReply::new_checked(&buf[..63]).err(),
            Some(WireError::Truncated)
        );
        assert_eq!(
            CookieReply::emit(&mut [0u8; 63], 1, &[0; 24], &[0; 32]),
            Err(WireError::BufferTooSmall)
        );
        assert_eq!(
            CookieReply::new_checked(&DATA[..]).err(),
            Some(WireError::WrongType(4))
        );
    }

    #[test]
    fn fuzz_never_panics() {
        mutations(&DATA, 20_000, |v| {
            let _ = message_type(v);
            if let Ok(f) = DataFrame::new_checked(&v[..]) {
                let _ = (
                    f.receiver_index(),
                    f.counter(),
                    f.ciphertext(),
                    f.tag(),
                    f.header(),
                );
            }
            if let Ok(h) = HandshakeInit::new_checked(&v[..]) {
                let _ = (h.sender_index(), h.noise());
            }
            if let Ok(h) = HandshakeResponse::new_checked(&v[..]) {
                let _ = (h.sender_index(), h.receiver_index(), h.noise());
            }
            if let Ok(c) = CookieReply::new_checked(&v[..]) {
                let _ = (c.receiver_index(), c.nonce(), c.sealed_cookie());
            }
        });
        let mut cookie = [0u8; COOKIE_REPLY_LEN];
        CookieReply::emit(&mut cookie, 7, &[1; 24], &[2; 32]).expect("fits");
        mutations(&cookie, 20_000, |v| {
            if let Ok(c) = CookieReply::new_checked(&v[..]) {
                let _ = (c.receiver_index(), c.nonce(), c.sealed_cookie());
            }
            if let Ok(h) = HandshakeInit::new_checked(&v[..]) {
                let _ = (h.sender_index(), h.noise(), h.bytes());
            }
            if let Ok(h) = HandshakeResponse::new_checked(&v[..]) {
                let _ = (h.sender_index(), h.receiver_index(), h.noise());
            }
        });
    }
}
