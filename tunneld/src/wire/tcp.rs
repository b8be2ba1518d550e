//! TCP MSS clamping: lower the MSS option of SYN segments crossing the
//! tunnel so that TCP never sends segments larger than the tunnel MTU allows
//! (PMTU discovery is often broken by filtered ICMP).
//!
//! The checksum is updated incrementally (RFC 1624), so the rest of the
//! segment is never read. Only a well-formed, unfragmented SYN whose whole
//! option list parses is touched.

use super::ip::{protocol, IpVersion, Ipv4Packet, Ipv6Packet};
use super::{fold, WireError};

mod field {
    use std::ops::Range;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const HEADER_LEN: usize = 20;
}

const FLAG_SYN: u8 = 0x02;
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_MSS_LEN: u8 = 4;

/// The MSS that fits a tunnel MTU: MTU minus the IP header (20 for IPv4, 40
/// for IPv6) and the 20-byte TCP header, as the kernel computes it.
pub fn max_mss_for_mtu(mtu: u16, version: IpVersion) -> u16 {
    let ip = match version {
        IpVersion::V4 => 20,
        IpVersion::V6 => 40,
    };
    mtu.saturating_sub(ip + 20)
}

/// Clamps with the MSS that fits `mtu` for the packet's own IP version.
pub fn clamp_tcp_mss_for_mtu(pkt: &mut [u8], mtu: u16) -> bool {
    match pkt.first().map(|b| b >> 4) {
        Some(4) => clamp_tcp_mss(pkt, max_mss_for_mtu(mtu, IpVersion::V4)),
        Some(6) => clamp_tcp_mss(pkt, max_mss_for_mtu(mtu, IpVersion::V6)),
        _ => false,
    }
}

/// If `pkt` is an IPv4 or IPv6 (next header directly TCP), unfragmented TCP
/// SYN with an MSS option above `max_mss`, lowers it to `max_mss`, fixes the
/// TCP checksum incrementally and returns true. Anything else (non-SYN,
/// fragments, malformed headers or options) is left untouched: false.
pub fn clamp_tcp_mss(pkt: &mut [u8], max_mss: u16) -> bool {
    let range = match tcp_range(pkt) {
        Ok(Some(r)) => r,
        _ => return false,
    };
    let Some(seg) = pkt.get_mut(range) else {
        return false;
    };
    clamp_segment(seg, max_mss)
}

/// The byte range of the TCP segment, when the packet carries one directly
/// and is not a fragment.
fn tcp_range(pkt: &[u8]) -> Result<Option<std::ops::Range<usize>>, WireError> {
    match pkt.first().map(|b| b >> 4) {
        Some(4) => {
            let p = Ipv4Packet::new_checked(pkt)?;
            if p.protocol() != protocol::TCP || p.is_fragment() {
                return Ok(None);
            }
            Ok(Some(p.header_len()..p.total_len()))
        }
        Some(6) => {
            let p = Ipv6Packet::new_checked(pkt)?;
            if p.next_header() != protocol::TCP {
                return Ok(None);
            }
            Ok(Some(super::ip::IPV6_HEADER_LEN..p.total_len()))
        }
        _ => Ok(None),
    }
}

/// Finds the offsets of MSS option values in the option list, or `None` if
/// the options are malformed. Bounded: each step advances at least one byte.
fn mss_offsets(options: &[u8]) -> Option<([usize; 4], usize)> {
    let mut found = [0usize; 4];
    let mut n = 0;
    let mut i = 0;
    while i < options.len() {
        match options[i] {
            OPT_END => break,
            OPT_NOP => i += 1,
            kind => {
                let len = usize::from(*options.get(i + 1)?);
                if len < 2 || i + len > options.len() {
                    return None;
                }
                if kind == OPT_MSS {
                    if len != usize::from(OPT_MSS_LEN) || n == found.len() {
                        return None;
                    }
                    found[n] = i + 2;
                    n += 1;
                }
                i += len;
            }
        }
    }
    Some((found, n))
}

fn clamp_segment(seg: &mut [u8], max_mss: u16) -> bool {
    if seg.len() < field::HEADER_LEN || seg[field::FLAGS] & FLAG_SYN == 0 {
        return false;
    }
    let doff = usize::from(seg[field::DATA_OFF] >> 4) * 4;
    if doff < field::HEADER_LEN || doff > seg.len() {
        return false;
    }
    let Some((offsets, n)) = mss_offsets(&seg[field::HEADER_LEN..doff]) else {
        return false;
    };
    let mut changed = false;
    for &off in &offsets[..n] {
        let at = field::HEADER_LEN + off;
        let old = u16::from_be_bytes([seg[at], seg[at + 1]]);
        if old <= max_mss {
            continue;
        }
        seg[at..at + 2].copy_from_slice(&max_mss.to_be_bytes());
        // A field at an odd offset straddles two checksum words: its bytes
        // enter the sum swapped.
        let (m_old, m_new) = if at % 2 == 0 {
            (old, max_mss)
        } else {
            (old.swap_bytes(), max_mss.swap_bytes())
        };
        let hc = u16::from_be_bytes([seg[field::CHECKSUM.start], seg[field::CHECKSUM.start + 1]]);
        // RFC 1624 eq. 3: HC' = ~(~HC + ~m + m')
        let sum = u64::from(!hc) + u64::from(!m_old) + u64::from(m_new);
        let new = !fold(sum);
        seg[field::CHECKSUM].copy_from_slice(&new.to_be_bytes());
        changed = true;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip::inner_ip_info;
    use crate::wire::testutil::mutations;
    use crate::wire::{fold, pseudo_header_sum, sum_words};

    /// SYN 198.18.1.2:40000 -> 198.18.2.2:5201, MSS 1460, SACK-permitted,
    /// timestamps, NOP, window scale 7 (as Linux sends it).
    static SYN_V4: [u8; 60] = [
        0x45, 0x00, 0x00, 0x3c, 0xbe, 0xef, 0x40, 0x00, 0x40, 0x06, 0xec, 0xa3, 0xc6, 0x12, 0x01,
        0x02, 0xc6, 0x12, 0x02, 0x02, 0x9c, 0x40, 0x14, 0x51, 0x1a, 0x2b, 0x3c, 0x4d, 0x00, 0x00,
        0x00, 0x00, 0xa0, 0x02, 0xfa, 0xf0, 0x51, 0x55, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04,
        0x02, 0x08, 0x0a, 0xa1, 0xb2, 0xc3, 0xd4, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x07,
    ];

    /// SYN [fd00:1::2]:40001 -> [fd00:2::2]:5201, MSS 1440, same options.
    static SYN_V6: [u8; 80] = [
        0x60, 0x01, 0x23, 0x45, 0x00, 0x28, 0x06, 0x40, 0xfd, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0xfd, 0x00, 0x00, 0x02, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x9c, 0x41, 0x14, 0x51, 0x1a,
        0x2b, 0x3c, 0x4d, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa, 0xf0, 0xe6, 0x88, 0x00, 0x00,
        0x02, 0x04, 0x05, 0xa0, 0x04, 0x02, 0x08, 0x0a, 0xa1, 0xb2, 0xc3, 0xd4, 0x00, 0x00, 0x00,
        0x00, 0x01, 0x03, 0x03, 0x07,
    ];

    /// Recomputes the TCP checksum from scratch: true when it verifies.
    fn tcp_checksum_ok(pkt: &[u8]) -> bool {
        let info = inner_ip_info(pkt).expect("valid IP");
        let seg = &pkt[info.header_len..info.total_len];
        let sum = pseudo_header_sum(info.src, info.dst, protocol::TCP, seg.len() as u32);
        fold(sum_words(sum, seg)) == 0xffff
    }

    /// Reads the first MSS option of a fixture.
    fn mss(pkt: &[u8]) -> u16 {
        let info = inner_ip_info(pkt).expect("valid IP");
        let seg = &pkt[info.header_len..];
        let doff = usize::from(seg[12] >> 4) * 4;
        let (offs, n) = mss_offsets(&seg[20..doff]).expect("options parse");
        assert!(n >= 1);
        u16::from_be_bytes([seg[20 + offs[0]], seg[21 + offs[0]]])
    }

    /// Rebuilds the v4 fixture with other options, fixing lengths and checksum.
    fn v4_with_options(opts: &[u8], flags: u8) -> Vec<u8> {
        let mut p = SYN_V4[..40].to_vec();
        p.extend_from_slice(opts);
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[32] = (((20 + opts.len()) / 4) as u8) << 4;
        p[33] = flags;
        p[36..38].copy_from_slice(&[0, 0]);
        let info = inner_ip_info(&p).expect("valid");
        let sum = pseudo_header_sum(info.src, info.dst, 6, (p.len() - 20) as u32);
        let c = !fold(sum_words(sum, &p[20..]));
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn fixtures_are_valid() {
        assert!(tcp_checksum_ok(&SYN_V4));
        assert!(tcp_checksum_ok(&SYN_V6));
        assert_eq!(mss(&SYN_V4), 1460);
        assert_eq!(mss(&SYN_V6), 1440);
    }

    #[test]
    fn clamps_v4() {
        let mut p = SYN_V4;
        assert!(clamp_tcp_mss(&mut p, 1380));
        assert_eq!(mss(&p), 1380);
        assert!(tcp_checksum_ok(&p));
        // only the MSS bytes and the checksum changed
        let diff: Vec<usize> = (0..p.len()).filter(|&i| p[i] != SYN_V4[i]).collect();
        assert!(
            diff.iter().all(|&i| matches!(i, 36 | 37 | 42 | 43)),
            "{diff:?}"
        );
        // idempotent, and never raises
        assert!(!clamp_tcp_mss(&mut p, 1380));
        assert!(!clamp_tcp_mss(&mut p, 1400));
        assert_eq!(mss(&p), 1380);
    }

    #[test]
    fn clamps_v6() {
        let mut p = SYN_V6;
        assert!(clamp_tcp_mss_for_mtu(&mut p, 1420));
        assert_eq!(mss(&p), 1360);
        assert!(tcp_checksum_ok(&p));
    }

    #[test]
    fn clamps_misaligned_option_and_many_values() {
        // NOP first puts the MSS value at an odd offset.
        let opts = [1, 2, 4, 0x23, 0x28, 1, 1, 1];
        for max in [0u16, 1, 255, 256, 1000, 1220, 0x2327] {
            let mut p = v4_with_options(&opts, FLAG_SYN);
            assert!(tcp_checksum_ok(&p));
            assert!(clamp_tcp_mss(&mut p, max));
            assert_eq!(mss(&p), max);
            assert!(tcp_checksum_ok(&p), "max {max}");
        }
        // SYN-ACK is clamped too
        let mut p = v4_with_options(&[2, 4, 0xff, 0xff], FLAG_SYN | 0x10);
        assert!(clamp_tcp_mss(&mut p, 1380));
        assert!(tcp_checksum_ok(&p));
    }

    #[test]
    fn leaves_other_packets_alone() {
        let check_untouched = |mut p: Vec<u8>, why: &str| {
            let orig = p.clone();
            assert!(!clamp_tcp_mss(&mut p, 1000), "{why}");
            assert_eq!(p, orig, "{why}");
        };
        let mut ack = SYN_V4.to_vec();
        ack[33] = 0x10;
        check_untouched(ack, "not a SYN");
        let mut frag = SYN_V4.to_vec();
        frag[6] = 0x20; // MF
        check_untouched(frag, "first fragment");
        let mut frag = SYN_V4.to_vec();
        frag[6] = 0x00;
        frag[7] = 0x10; // offset
        check_untouched(frag, "later fragment");
        let mut udp = SYN_V4.to_vec();
        udp[9] = 17;
        check_untouched(udp, "UDP");
        let mut v6frag = SYN_V6.to_vec();
        v6frag[6] = 44;
        check_untouched(v6frag, "IPv6 fragment header");
        check_untouched(
            v4_with_options(&[2, 4, 5], FLAG_SYN),
            "option runs past doff",
        );
        check_untouched(
            v4_with_options(&[3, 0, 2, 4, 0xff, 0xff, 0, 0], FLAG_SYN),
            "len 0",
        );
        check_untouched(v4_with_options(&[2, 3, 0xff, 0xff], FLAG_SYN), "MSS len 3");
        check_untouched(
            v4_with_options(&[9, 9, 0, 0], FLAG_SYN),
            "len beyond options",
        );
        // END stops the walk: an MSS after it is not an option
        check_untouched(
            v4_with_options(&[0, 0, 0, 0, 2, 4, 0xff, 0xff], FLAG_SYN),
            "after END",
        );
        let mut bad_doff = SYN_V4.to_vec();
        bad_doff[32] = 0xf0;
        check_untouched(bad_doff, "data offset beyond segment");
        let mut small_doff = SYN_V4.to_vec();
        small_doff[32] = 0x40;
        check_untouched(small_doff, "data offset < 5");
        check_untouched(SYN_V4[..59].to_vec(), "truncated");
        check_untouched(Vec::new(), "empty");
    }

    #[test]
    fn max_mss() {
        assert_eq!(max_mss_for_mtu(1420, IpVersion::V4), 1380);
        assert_eq!(max_mss_for_mtu(1420, IpVersion::V6), 1360);
        assert_eq!(max_mss_for_mtu(10, IpVersion::V6), 0);
    }

    #[test]
    fn fuzz_never_panics_and_keeps_checksums() {
        for seed in [&SYN_V4[..], &SYN_V6[..]] {
            mutations(seed, 20_000, |v| {
                let valid_before = inner_ip_info(v).is_ok() && tcp_checksum_ok(v);
                if clamp_tcp_mss(v, 536) && valid_before {
                    assert!(tcp_checksum_ok(v));
                }
            });
        }
    }
}
