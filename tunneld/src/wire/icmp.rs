//! ICMP "too big" replies: IPv4 destination unreachable / fragmentation
//! needed (type 3 code 4, RFC 792 + RFC 1191) and ICMPv6 packet too big
//! (type 2, RFC 4443), sent back to the sender of a packet that does not fit
//! the tunnel so its path MTU discovery lowers the size.
//!
//! Never answers what RFC 1122 / RFC 1812 / RFC 4443 forbid answering: an
//! ICMP error, a non-first fragment, a packet from an address that is not a
//! single host, an IPv4 packet to a broadcast/multicast address.

use std::net::IpAddr;

use super::ip::{protocol, Ipv4Packet, Ipv6Packet, IPV4_HEADER_LEN, IPV6_HEADER_LEN};
use super::{checksum, fold, pseudo_header_sum, sum_words, WireError};

/// Length of the ICMP / ICMPv6 header (type, code, checksum, 4 more bytes).
const ICMP_HEADER_LEN: usize = 8;
/// An ICMPv4 error should fit in 576 bytes (RFC 1812 4.3.2.3).
const ICMPV4_MAX_LEN: usize = 576;
/// An ICMPv6 error must not exceed the minimum IPv6 MTU (RFC 4443 2.4(c)).
const ICMPV6_MAX_LEN: usize = 1280;
/// TTL / hop limit of our replies (Linux default).
const REPLY_TTL: u8 = 64;
/// DSCP CS6 "internetwork control", as Linux marks ICMP errors.
const REPLY_TOS: u8 = 0xc0;

/// ICMPv4 query types, the only ICMP messages an error may answer.
fn icmpv4_is_query(ty: u8) -> bool {
    matches!(ty, 0 | 8 | 13 | 14 | 15 | 16 | 17 | 18)
}

/// Builds a complete IP packet into `out`: an ICMP "fragmentation needed"
/// (IPv4) or ICMPv6 "packet too big" carrying `mtu`, from `reply_src` to the
/// sender of `orig`, quoting as much of `orig` as fits in 576 (IPv4) or 1280
/// (IPv6) bytes. Returns the length written.
///
/// Errors: `orig` malformed ([`WireError::Truncated`] and friends), `reply_src`
/// of the other family ([`WireError::FamilyMismatch`]), `out` too small
/// ([`WireError::BufferTooSmall`], 576 / 1280 bytes always suffice), or a
/// packet that must not be answered ([`WireError::IcmpSuppressed`], also for
/// an IPv4 packet without DF, which a router fragments instead).
pub fn icmp_too_big(
    orig: &[u8],
    mtu: u16,
    reply_src: IpAddr,
    out: &mut [u8],
) -> Result<usize, WireError> {
    match orig.first().map(|b| b >> 4) {
        None => Err(WireError::Truncated),
        Some(4) => too_big_v4(orig, mtu, reply_src, out),
        Some(6) => too_big_v6(orig, mtu, reply_src, out),
        Some(v) => Err(WireError::BadVersion(v)),
    }
}

fn too_big_v4(
    orig: &[u8],
    mtu: u16,
    reply_src: IpAddr,
    out: &mut [u8],
) -> Result<usize, WireError> {
    let p = Ipv4Packet::new_checked(orig)?;
    let IpAddr::V4(our) = reply_src else {
        return Err(WireError::FamilyMismatch);
    };
    let (src, dst) = (p.src_addr(), p.dst_addr());
    if !p.dont_frag() {
        return Err(WireError::IcmpSuppressed("DF not set: fragment instead"));
    }
    if p.frag_offset() != 0 {
        return Err(WireError::IcmpSuppressed("non-first fragment"));
    }
    if src.is_unspecified() || src.is_broadcast() || src.is_multicast() || src.is_loopback() {
        return Err(WireError::IcmpSuppressed("source is not a single host"));
    }
    if dst.is_broadcast() || dst.is_multicast() {
        return Err(WireError::IcmpSuppressed(
            "broadcast or multicast destination",
        ));
    }
    if p.protocol() == protocol::ICMP {
        match p.payload().first() {
            Some(&ty) if icmpv4_is_query(ty) => {}
            _ => return Err(WireError::IcmpSuppressed("ICMP error (or unknown ICMP)")),
        }
    }
    let quote = p
        .total_len()
        .min(ICMPV4_MAX_LEN - IPV4_HEADER_LEN - ICMP_HEADER_LEN);
    let total = IPV4_HEADER_LEN + ICMP_HEADER_LEN + quote;
    let Some(out) = out.get_mut(..total) else {
        return Err(WireError::BufferTooSmall);
    };
    out[..IPV4_HEADER_LEN].fill(0);
    {
        let mut ip = Ipv4Packet::new_unchecked(&mut out[..]);
        ip.set_version_and_header_len(IPV4_HEADER_LEN);
        ip.set_dscp_ecn(REPLY_TOS);
        ip.set_total_len(total as u16);
        ip.set_ident(0);
        ip.set_dont_frag_unfragmented(false);
        ip.set_ttl(REPLY_TTL);
        ip.set_protocol(protocol::ICMP);
        ip.set_src_addr(our);
        ip.set_dst_addr(src);
        ip.fill_checksum();
    }
    let icmp = &mut out[IPV4_HEADER_LEN..];
    icmp[..4].copy_from_slice(&[3, 4, 0, 0]);
    icmp[4..6].fill(0);
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[ICMP_HEADER_LEN..].copy_from_slice(&orig[..quote]);
    let c = checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Ok(total)
}

fn too_big_v6(
    orig: &[u8],
    mtu: u16,
    reply_src: IpAddr,
    out: &mut [u8],
) -> Result<usize, WireError> {
    let p = Ipv6Packet::new_checked(orig)?;
    let IpAddr::V6(our) = reply_src else {
        return Err(WireError::FamilyMismatch);
    };
    let src = p.src_addr();
    if src.is_unspecified() || src.is_multicast() || src.is_loopback() {
        return Err(WireError::IcmpSuppressed("source is not a single host"));
    }
    // Packet Too Big is sent even for multicast destinations (RFC 4443 2.4(e)).
    if p.next_header() == protocol::ICMPV6 {
        match p.payload().first() {
            Some(&ty) if ty >= 128 => {}
            _ => return Err(WireError::IcmpSuppressed("ICMPv6 error")),
        }
    }
    let quote = p
        .total_len()
        .min(ICMPV6_MAX_LEN - IPV6_HEADER_LEN - ICMP_HEADER_LEN);
    let icmp_len = ICMP_HEADER_LEN + quote;
    let total = IPV6_HEADER_LEN + icmp_len;
    let Some(out) = out.get_mut(..total) else {
        return Err(WireError::BufferTooSmall);
    };
    {
        let mut ip = Ipv6Packet::new_unchecked(&mut out[..]);
        ip.set_version_clear_flow();
        ip.set_payload_len(icmp_len as u16);
        ip.set_next_header(protocol::ICMPV6);
        ip.set_hop_limit(REPLY_TTL);
        ip.set_src_addr(our);
        ip.set_dst_addr(src);
    }
    let icmp = &mut out[IPV6_HEADER_LEN..];
    icmp[..4].copy_from_slice(&[2, 0, 0, 0]);
    icmp[4..8].copy_from_slice(&u32::from(mtu).to_be_bytes());
    icmp[ICMP_HEADER_LEN..].copy_from_slice(&orig[..quote]);
    let sum = pseudo_header_sum(our.into(), src.into(), protocol::ICMPV6, icmp_len as u32);
    let c = !fold(sum_words(sum, icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip::{inner_ip_info, tests::PING_V4, IpVersion};
    use crate::wire::testutil::mutations;

    fn v4_packet(len: usize, proto: u8, first_payload_byte: u8) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[..20].copy_from_slice(&PING_V4[..20]);
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[9] = proto;
        for (i, b) in p[20..].iter_mut().enumerate() {
            *b = if i == 0 { first_payload_byte } else { i as u8 };
        }
        Ipv4Packet::new_checked(&mut p[..])
            .expect("valid")
            .fill_checksum();
        p
    }

    fn v6_packet(len: usize, next: u8, first_payload_byte: u8) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        p[6] = next;
        p[7] = 64;
        p[8..24].copy_from_slice(
            &"fd00:1::2"
                .parse::<std::net::Ipv6Addr>()
                .expect("ip")
                .octets(),
        );
        p[24..40].copy_from_slice(
            &"fd00:2::2"
                .parse::<std::net::Ipv6Addr>()
                .expect("ip")
                .octets(),
        );
        if let Some(b) = p.get_mut(40) {
            *b = first_payload_byte;
        }
        p
    }

    fn gw4() -> IpAddr {
        "198.19.0.1".parse().expect("ip")
    }

    fn gw6() -> IpAddr {
        "fd00:19::1".parse().expect("ip")
    }

    #[test]
    fn v4_small_packet_quoted_whole() {
        let orig = v4_packet(84, protocol::ICMP, 8);
        let mut out = [0u8; 600];
        let n = icmp_too_big(&orig, 1420, gw4(), &mut out).expect("reply");
        assert_eq!(n, 20 + 8 + 84);
        let reply = &out[..n];
        let p = Ipv4Packet::new_checked(reply).expect("valid IPv4");
        assert!(p.verify_checksum());
        assert_eq!(p.protocol(), protocol::ICMP);
        assert_eq!(IpAddr::from(p.src_addr()), gw4());
        assert_eq!(
            p.dst_addr(),
            Ipv4Packet::new_checked(&orig[..]).expect("v").src_addr()
        );
        let icmp = p.payload();
        assert_eq!(checksum(icmp), 0, "ICMP checksum verifies");
        assert_eq!(&icmp[..2], &[3, 4]);
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1420);
        assert_eq!(&icmp[8..], &orig[..]);
    }

    #[test]
    fn v4_large_packet_quote_fits_576() {
        let orig = v4_packet(1500, protocol::TCP, 0);
        let mut out = [0u8; 1500];
        let n = icmp_too_big(&orig, 1420, gw4(), &mut out).expect("reply");
        assert_eq!(n, 576);
        let p = Ipv4Packet::new_checked(&out[..n]).expect("valid");
        assert!(p.verify_checksum());
        assert_eq!(checksum(p.payload()), 0);
        assert_eq!(&p.payload()[8..], &orig[..548]);
        assert_eq!(
            icmp_too_big(&orig, 1420, gw4(), &mut out[..575]),
            Err(WireError::BufferTooSmall)
        );
    }

    #[test]
    fn v6_packet_too_big() {
        let orig = v6_packet(1500, protocol::TCP, 0);
        let mut out = [0u8; 1500];
        let n = icmp_too_big(&orig, 1420, gw6(), &mut out).expect("reply");
        assert_eq!(n, 1280);
        let info = inner_ip_info(&out[..n]).expect("valid IPv6");
        assert_eq!(info.version, IpVersion::V6);
        assert_eq!(info.total_len, 1280);
        assert_eq!(info.protocol, protocol::ICMPV6);
        assert_eq!(info.src, gw6());
        assert_eq!(info.dst, "fd00:1::2".parse::<IpAddr>().expect("ip"));
        let icmp = &out[40..n];
        let sum = pseudo_header_sum(info.src, info.dst, protocol::ICMPV6, icmp.len() as u32);
        assert_eq!(
            fold(sum_words(sum, icmp)),
            0xffff,
            "ICMPv6 checksum verifies"
        );
        assert_eq!(icmp[0], 2);
        assert_eq!(
            u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
            1420
        );
        assert_eq!(&icmp[8..], &orig[..1232]);
        // small original: quoted whole; echo request is answered
        let small = v6_packet(104, protocol::ICMPV6, 128);
        let n = icmp_too_big(&small, 1280, gw6(), &mut out).expect("reply");
        assert_eq!(n, 40 + 8 + 104);
    }

    #[test]
    fn never_answers_what_it_must_not() {
        let mut out = [0u8; 1500];
        let sup = |orig: &[u8], src: IpAddr, out: &mut [u8]| {
            matches!(
                icmp_too_big(orig, 1400, src, out),
                Err(WireError::IcmpSuppressed(_))
            )
        };
        // ICMP errors (dest unreachable, time exceeded) and empty ICMP
        assert!(sup(&v4_packet(1500, protocol::ICMP, 3), gw4(), &mut out));
        assert!(sup(&v4_packet(1500, protocol::ICMP, 11), gw4(), &mut out));
        assert!(sup(&v4_packet(20, protocol::ICMP, 0), gw4(), &mut out));
        assert!(sup(&v6_packet(1500, protocol::ICMPV6, 2), gw6(), &mut out));
        assert!(sup(&v6_packet(1500, protocol::ICMPV6, 1), gw6(), &mut out));
        assert!(sup(&v6_packet(40, protocol::ICMPV6, 0), gw6(), &mut out));
        // DF clear
        let mut p = v4_packet(1500, protocol::UDP, 0);
        p[6] = 0;
        assert!(sup(&p, gw4(), &mut out));
        // non-first fragment
        let mut p = v4_packet(1500, protocol::UDP, 0);
        p[6] = 0x40;
        p[7] = 0x10;
        assert!(sup(&p, gw4(), &mut out));
        // multicast destination, broadcast and unspecified source
        let mut p = v4_packet(1500, protocol::UDP, 0);
        p[16..20].copy_from_slice(&[224, 0, 0, 1]);
        assert!(sup(&p, gw4(), &mut out));
        let mut p = v4_packet(1500, protocol::UDP, 0);
        p[12..16].copy_from_slice(&[0, 0, 0, 0]);
        assert!(sup(&p, gw4(), &mut out));
        let mut p = v6_packet(1500, protocol::UDP, 0);
        p[8] = 0xff;
        assert!(sup(&p, gw6(), &mut out));
        // family mismatch, malformed
        assert_eq!(
            icmp_too_big(&v4_packet(100, 17, 0), 1400, gw6(), &mut out),
            Err(WireError::FamilyMismatch)
        );
        assert_eq!(
            icmp_too_big(&v4_packet(100, 17, 0)[..99], 1400, gw4(), &mut out),
            Err(WireError::Truncated)
        );
        assert_eq!(
            icmp_too_big(&[], 1400, gw4(), &mut out),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn fuzz_never_panics() {
        let mut out = [0u8; 1500];
        let v4 = v4_packet(200, protocol::TCP, 0);
        let v6 = v6_packet(200, protocol::TCP, 0);
        for (seed, src) in [(&v4, gw4()), (&v6, gw6())] {
            mutations(seed, 10_000, |v| {
                if let Ok(n) = icmp_too_big(v, 1280, src, &mut out) {
                    assert!(n <= 1280);
                    assert!(inner_ip_info(&out[..n]).is_ok());
                }
                let _ = icmp_too_big(v, 1280, src, &mut out[..30]);
            });
        }
    }
}
