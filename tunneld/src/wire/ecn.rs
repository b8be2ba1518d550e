//! ECN across the tunnel (RFC 3168 codepoints, RFC 6040 "normal mode").
//!
//! On encapsulation the outer header carries the inner packet's ECN field
//! unchanged, so an AQM on the path between the gateways can mark CE instead
//! of dropping. On decapsulation a CE (or ECT(1)) mark on the outer header
//! is carried into the inner packet by the table of RFC 6040 section 4.2;
//! an outer CE on an inner packet that is not ECN-capable means the path
//! signalled congestion to a flow that cannot hear it, so the packet is
//! dropped (and counted), as a router would have.
//!
//! The functions read and write the inner IPv4 TOS / IPv6 traffic-class
//! byte in place; the IPv4 header checksum is updated incrementally
//! (RFC 1624).

use super::fold;

/// Not ECN-capable transport.
pub const NOT_ECT: u8 = 0b00;
/// ECN-capable transport, codepoint 1 (L4S).
pub const ECT1: u8 = 0b01;
/// ECN-capable transport, codepoint 0 (classic ECN).
pub const ECT0: u8 = 0b10;
/// Congestion experienced.
pub const CE: u8 = 0b11;

/// The ECN codepoint of an inner IP packet (`NOT_ECT` when the packet is
/// too short or not IP: such a packet is dropped elsewhere).
pub fn of(packet: &[u8]) -> u8 {
    match packet.first().map(|b| b >> 4) {
        Some(4) => packet.get(1).map_or(NOT_ECT, |tos| tos & 0b11),
        Some(6) => packet.get(1).map_or(NOT_ECT, |b| (b >> 4) & 0b11),
        _ => NOT_ECT,
    }
}

/// Sets the ECN codepoint of an inner IP packet to `ecn` (IPv4: header
/// checksum updated). Returns false (and changes nothing) when the packet
/// is too short or not IP.
pub fn set(packet: &mut [u8], ecn: u8) -> bool {
    let ecn = ecn & 0b11;
    match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => {
            let old_word = u16::from_be_bytes([packet[0], packet[1]]);
            packet[1] = (packet[1] & !0b11) | ecn;
            let new_word = u16::from_be_bytes([packet[0], packet[1]]);
            if old_word != new_word {
                let hc = u16::from_be_bytes([packet[10], packet[11]]);
                // RFC 1624 eq. 3: HC' = ~(~HC + ~m + m')
                let sum = u64::from(!hc) + u64::from(!old_word) + u64::from(new_word);
                packet[10..12].copy_from_slice(&(!fold(sum)).to_be_bytes());
            }
            true
        }
        Some(6) if packet.len() >= 40 => {
            packet[1] = (packet[1] & !0b0011_0000) | (ecn << 4);
            true
        }
        _ => false,
    }
}

/// RFC 6040 section 4.2: the inner codepoint after decapsulation, given
/// the outer and inner ones; `None` means drop the packet.
pub fn decapsulated(outer: u8, inner: u8) -> Option<u8> {
    match (outer & 0b11, inner & 0b11) {
        (CE, NOT_ECT) => None,
        (CE, _) => Some(CE),
        (ECT1, ECT0) => Some(ECT1),
        (_, inner) => Some(inner),
    }
}

/// Applies [`decapsulated`] to an inner packet in place: `Some(true)` when
/// the packet's ECN field changed, `Some(false)` when it did not, `None`
/// when the packet must be dropped.
pub fn decapsulate(outer: u8, packet: &mut [u8]) -> Option<bool> {
    // The common case first: an unmarked outer header changes nothing.
    if outer & 0b11 == NOT_ECT || outer & 0b11 == ECT0 {
        return Some(false);
    }
    let inner = of(packet);
    let new = decapsulated(outer, inner)?;
    Some(new != inner && set(packet, new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum;

    /// An IPv4 header (20 bytes, UDP, TOS 0x00, valid checksum) and payload.
    fn v4(tos: u8) -> Vec<u8> {
        let mut p = vec![
            0x45, tos, 0x00, 0x20, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 198, 18, 1, 2,
            198, 18, 2, 2, 0x9c, 0x40, 0x14, 0x51, 0x00, 0x0c, 0x00, 0x00, 1, 2, 3, 4,
        ];
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn v6(tc: u8) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = 0x60 | (tc >> 4);
        p[1] = (tc << 4) | 0x0a; // flow label bits kept
        p[4..6].copy_from_slice(&8u16.to_be_bytes());
        p[6] = 17;
        p[7] = 64;
        p
    }

    #[test]
    fn reads_the_codepoint_of_both_families() {
        assert_eq!(of(&v4(0xb8 | ECT0)), ECT0);
        assert_eq!(of(&v4(CE)), CE);
        assert_eq!(of(&v6(0xb8 | ECT1)), ECT1);
        assert_eq!(of(&v6(0x00)), NOT_ECT);
        assert_eq!(of(&[]), NOT_ECT);
        assert_eq!(of(&[0x45]), NOT_ECT);
        assert_eq!(of(&[0x00, 0x03]), NOT_ECT);
    }

    #[test]
    fn setting_ce_keeps_dscp_and_a_valid_ipv4_checksum() {
        for tos in [0x00, 0x02, 0xb8 | ECT0, 0xfe, 0x01] {
            let mut p = v4(tos);
            assert!(set(&mut p, CE));
            assert_eq!(p[1], (tos & !0b11) | CE);
            assert_eq!(checksum(&p[..20]), 0, "tos {tos:#x}: header checksum");
            assert_eq!(&p[20..], &v4(tos)[20..], "payload untouched");
        }
        let mut p = v6(0xb8 | ECT0);
        assert!(set(&mut p, CE));
        assert_eq!(of(&p), CE);
        assert_eq!(p[0], 0x60 | (0xb8 >> 4), "version and DSCP kept");
        assert_eq!(p[1] & 0x0f, 0x0a, "flow label kept");
    }

    #[test]
    fn short_or_foreign_packets_are_left_alone() {
        for mut p in [vec![], vec![0x45; 19], vec![0x60; 39], vec![0x00; 60]] {
            let before = p.clone();
            assert!(!set(&mut p, CE));
            assert_eq!(p, before);
        }
    }

    #[test]
    fn rfc6040_decapsulation_table() {
        // Rows: inner; columns: outer Not-ECT, ECT(0), ECT(1), CE.
        let table = [
            (NOT_ECT, [Some(NOT_ECT), Some(NOT_ECT), Some(NOT_ECT), None]),
            (ECT0, [Some(ECT0), Some(ECT0), Some(ECT1), Some(CE)]),
            (ECT1, [Some(ECT1), Some(ECT1), Some(ECT1), Some(CE)]),
            (CE, [Some(CE), Some(CE), Some(CE), Some(CE)]),
        ];
        for (inner, row) in table {
            for (outer, want) in [NOT_ECT, ECT0, ECT1, CE].into_iter().zip(row) {
                assert_eq!(
                    decapsulated(outer, inner),
                    want,
                    "outer {outer} inner {inner}"
                );
            }
        }
    }

    #[test]
    fn decapsulate_marks_in_place_or_asks_for_a_drop() {
        let mut p = v4(ECT0);
        assert_eq!(decapsulate(CE, &mut p), Some(true));
        assert_eq!(of(&p), CE);
        assert_eq!(checksum(&p[..20]), 0);
        let mut p = v4(NOT_ECT);
        assert_eq!(decapsulate(CE, &mut p), None);
        assert_eq!(decapsulate(ECT0, &mut p), Some(false));
        assert_eq!(p, v4(NOT_ECT));
        let mut p = v6(CE);
        assert_eq!(decapsulate(CE, &mut p), Some(false));
        let mut p = v6(ECT0);
        assert_eq!(decapsulate(ECT1, &mut p), Some(true));
        assert_eq!(of(&p), ECT1);
    }
}
