//! Zero-copy views over packets, and our UDP frame format. No I/O, no
//! allocation, no panics on any input once a view's checked constructor has
//! accepted the buffer.
//!
//! - [`ip`]: IPv4/IPv6 header views and [`inner_ip_info`] for routing and
//!   source checks of inner packets.
//! - [`tcp`]: [`clamp_tcp_mss`], rewriting the MSS option of SYNs.
//! - [`icmp`]: [`icmp_too_big`], building ICMP "fragmentation needed" /
//!   ICMPv6 "packet too big" replies.
//! - [`frame`]: the tunnel's own frames (handshake, cookie reply, data, keepalive).
//! - [`flow`]: [`flow_index`], the inner 5-tuple hash that picks a packet's
//!   outer UDP flow (`dataplane.flows`).
//!
//! The pattern is smoltcp's: `View<T: AsRef<[u8]>>` with `new_checked`, a
//! private table of field offsets, getters, and setters only when
//! `T: AsMut<[u8]>`.

pub mod ecn;
pub mod flow;
pub mod frame;
pub mod icmp;
pub mod ip;
pub mod tcp;

pub use flow::{flow_hash, flow_index};
pub use frame::{
    message_type, CookieReply, DataFrame, HandshakeInit, HandshakeResponse, MessageType,
    COOKIE_NONCE_LEN, COOKIE_REPLY_LEN, DATA_HEADER_LEN, HANDSHAKE_INIT_HEADER_LEN,
    HANDSHAKE_RESPONSE_HEADER_LEN, KEEPALIVE_LEN, MACS_LEN, MAC_LEN, MIN_NOISE_LEN,
    SEALED_COOKIE_LEN, TAG_LEN,
};
pub use icmp::icmp_too_big;
pub use ip::{inner_ip_info, IpInfo, IpVersion, Ipv4Packet, Ipv6Packet};
pub use tcp::{clamp_tcp_mss, clamp_tcp_mss_for_mtu, max_mss_for_mtu};

/// Why a buffer was not accepted. The dataplane counts every variant as a
/// `drop_malformed` (or, for [`WireError::IcmpSuppressed`], simply drops).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the header, or than a length field claims.
    #[error("truncated packet")]
    Truncated,
    /// The IP version nibble is neither 4 nor 6.
    #[error("bad IP version {0}")]
    BadVersion(u8),
    /// The reserved bytes of our frame header are not zero.
    #[error("reserved bytes not zero")]
    BadReserved,
    /// Our frame's type byte is not one we know.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// A known frame type, but not the one this view parses.
    #[error("unexpected message type {0}")]
    WrongType(u8),
    /// A length field is inconsistent (IPv4 IHL < 5, total length shorter
    /// than the header, IPv6 jumbogram, keepalive with a payload...).
    #[error("inconsistent length field")]
    BadLength,
    /// The output buffer is too small for what is to be written.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// The reply source address is of a different IP family than the packet.
    #[error("address family mismatch")]
    FamilyMismatch,
    /// The packet must not be answered with an ICMP error (RFC 1122 / 4443):
    /// it is an ICMP error itself, a non-first fragment, has DF clear, or
    /// comes from / goes to an address that is not a single host.
    #[error("no ICMP error allowed in reply: {0}")]
    IcmpSuppressed(&'static str),
}

/// Adds `data` as big-endian 16-bit words to a one's complement accumulator
/// (an odd trailing byte is padded with zero, as RFC 1071 says).
pub(crate) fn sum_words(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// [`sum_words`] of `data` (from 0), four bytes per step: the one's
/// complement sum is the same in any byte order (RFC 1071 section 2), so
/// native 32-bit words are summed (which the compiler vectorises), folded,
/// and swapped to big-endian word order. For the checksums of whole
/// packets on the data path; the result is folded to 16 bits.
pub(crate) fn sum_words_fast(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
    }
    let mut tail = [0u8; 4];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    acc += u64::from(u32::from_ne_bytes(tail));
    let folded = fold(acc);
    u64::from(if cfg!(target_endian = "little") {
        folded.swap_bytes()
    } else {
        folded
    })
}

/// Folds an accumulator to 16 bits (end-around carry).
pub(crate) fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum_words(0, data))
}

/// Sum of the TCP/UDP/ICMPv6 pseudo-header (RFC 793, RFC 8200 section 8.1).
pub(crate) fn pseudo_header_sum(
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    protocol: u8,
    len: u32,
) -> u64 {
    use std::net::IpAddr;
    let mut acc = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum_words(sum_words(0, &s.octets()), &d.octets()),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum_words(sum_words(0, &s.octets()), &d.octets()),
        _ => 0,
    };
    acc += u64::from(protocol);
    acc += u64::from(len >> 16) + u64::from(len & 0xffff);
    acc
}

#[cfg(test)]
mod sum_tests {
    use super::*;

    #[test]
    fn the_fast_sum_equals_the_word_sum() {
        let mut r = testutil::Rng(0x5eed);
        let data: Vec<u8> = (0..3000).map(|_| r.next() as u8).collect();
        for start in 0..6 {
            for len in [0, 1, 2, 3, 4, 5, 7, 8, 9, 20, 41, 1420, 2993] {
                let d = &data[start..start + len];
                assert_eq!(
                    u64::from(fold(sum_words_fast(d))),
                    u64::from(fold(sum_words(0, d))),
                    "start {start} len {len}"
                );
            }
        }
        let ones = [0xffu8; 64];
        assert_eq!(fold(sum_words_fast(&ones)), fold(sum_words(0, &ones)));
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    /// A tiny deterministic PRNG (xorshift64*) for fuzz-style tests.
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        pub(crate) fn fill(&mut self, buf: &mut [u8]) {
            for b in buf {
                *b = self.next() as u8;
            }
        }
    }

    /// Yields mutated copies of `seed`: truncations, bit flips, random tails.
    pub(crate) fn mutations(seed: &[u8], rounds: usize, mut f: impl FnMut(&mut Vec<u8>)) {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed.len() as u64);
        for cut in 0..=seed.len() {
            let mut v = seed[..cut].to_vec();
            f(&mut v);
        }
        for _ in 0..rounds {
            let mut v = seed.to_vec();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(v.len());
                if let Some(b) = v.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
            if rng.below(4) == 0 {
                let i = rng.below(v.len());
                if let Some(b) = v.get_mut(i) {
                    *b = rng.next() as u8;
                }
            }
            if rng.below(8) == 0 {
                let n = rng.below(v.len() + 1);
                v.truncate(n);
            }
            f(&mut v);
        }
        for _ in 0..rounds {
            let mut v = vec![0u8; rng.below(200)];
            rng.fill(&mut v);
            if let Some(b) = v.first_mut() {
                *b = [0x45, 0x46, 0x60, 0x04, 0x01, 0x02][rng.below(6)];
            }
            f(&mut v);
        }
    }

    #[test]
    fn checksum_rfc1071_example() {
        // RFC 1071 section 3 example: sum of these words is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(super::fold(super::sum_words(0, &data)), 0xddf2);
        assert_eq!(super::checksum(&data), !0xddf2);
        // odd length pads with zero
        assert_eq!(super::checksum(&[0x12]), !0x1200);
    }
}
