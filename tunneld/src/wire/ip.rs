//! IPv4 and IPv6 header views, and [`inner_ip_info`]: what the dataplane
//! needs from an inner packet (family, addresses, lengths, protocol).
//!
//! Accessors index only inside what `new_checked` verified, so they never
//! panic on a checked view. `new_unchecked` views may panic on short buffers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{checksum, WireError};

/// IP protocol numbers used here.
pub mod protocol {
    /// ICMP (IPv4).
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 fragment extension header.
    pub const IPV6_FRAGMENT: u8 = 44;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
}

mod v4 {
    use std::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
    pub const HEADER_LEN: usize = 20;
}

mod v6 {
    use std::ops::Range;
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
    pub const HEADER_LEN: usize = 40;
}

/// Length of the fixed IPv4 header (no options).
pub const IPV4_HEADER_LEN: usize = v4::HEADER_LEN;
/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = v6::HEADER_LEN;

fn be16(b: &[u8], r: std::ops::Range<usize>) -> u16 {
    match b.get(r) {
        Some(&[x, y]) => u16::from_be_bytes([x, y]),
        _ => 0,
    }
}

/// A view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer without checks; accessors may panic if it is short.
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps a buffer after checking version 4, IHL >= 5, and
    /// header length <= total length <= buffer length. Bytes after the
    /// total length (link padding) are allowed and ignored.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        let Some(&first) = b.first() else {
            return Err(WireError::Truncated);
        };
        if first >> 4 != 4 {
            return Err(WireError::BadVersion(first >> 4));
        }
        if b.len() < v4::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let hl = usize::from(first & 0x0f) * 4;
        let total = usize::from(be16(b, v4::LENGTH));
        if hl < v4::HEADER_LEN || total < hl {
            return Err(WireError::BadLength);
        }
        if total > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(Ipv4Packet { buffer })
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[v4::VER_IHL] & 0x0f) * 4
    }

    /// DSCP and ECN byte.
    pub fn dscp_ecn(&self) -> u8 {
        self.b()[v4::DSCP_ECN]
    }

    /// Total length as claimed by the header.
    pub fn total_len(&self) -> usize {
        usize::from(be16(self.b(), v4::LENGTH))
    }

    /// Identification.
    pub fn ident(&self) -> u16 {
        be16(self.b(), v4::IDENT)
    }

    /// Don't Fragment flag.
    pub fn dont_frag(&self) -> bool {
        be16(self.b(), v4::FLG_OFF) & 0x4000 != 0
    }

    /// More Fragments flag.
    pub fn more_frags(&self) -> bool {
        be16(self.b(), v4::FLG_OFF) & 0x2000 != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> usize {
        usize::from(be16(self.b(), v4::FLG_OFF) & 0x1fff) * 8
    }

    /// Whether this is a fragment (first or later).
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.b()[v4::TTL]
    }

    /// Protocol of the payload.
    pub fn protocol(&self) -> u8 {
        self.b()[v4::PROTOCOL]
    }

    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.b(), v4::CHECKSUM)
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        let s = &self.b()[v4::SRC];
        Ipv4Addr::new(s[0], s[1], s[2], s[3])
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        let d = &self.b()[v4::DST];
        Ipv4Addr::new(d[0], d[1], d[2], d[3])
    }

    /// Whether the header checksum is correct.
    pub fn verify_checksum(&self) -> bool {
        checksum(&self.b()[..self.header_len()]) == 0
    }

    /// The header (with options).
    pub fn header(&self) -> &[u8] {
        &self.b()[..self.header_len()]
    }

    /// The payload: from the end of the header to the total length.
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Writes version 4 and the header length (a multiple of 4, 20..=60).
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        self.bm()[v4::VER_IHL] = 0x40 | ((header_len / 4) as u8 & 0x0f);
    }

    /// Sets the DSCP/ECN byte.
    pub fn set_dscp_ecn(&mut self, v: u8) {
        self.bm()[v4::DSCP_ECN] = v;
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, len: u16) {
        self.bm()[v4::LENGTH].copy_from_slice(&len.to_be_bytes());
    }

    /// Sets identification.
    pub fn set_ident(&mut self, v: u16) {
        self.bm()[v4::IDENT].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets flags (DF only) and a zero fragment offset.
    pub fn set_dont_frag_unfragmented(&mut self, df: bool) {
        let v: u16 = if df { 0x4000 } else { 0 };
        self.bm()[v4::FLG_OFF].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the TTL.
    pub fn set_ttl(&mut self, v: u8) {
        self.bm()[v4::TTL] = v;
    }

    /// Sets the protocol.
    pub fn set_protocol(&mut self, v: u8) {
        self.bm()[v4::PROTOCOL] = v;
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.bm()[v4::SRC].copy_from_slice(&a.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.bm()[v4::DST].copy_from_slice(&a.octets());
    }

    /// Computes and writes the header checksum.
    pub fn fill_checksum(&mut self) {
        self.bm()[v4::CHECKSUM].copy_from_slice(&[0, 0]);
        let hl = self.header_len();
        let c = checksum(&self.b()[..hl]);
        self.bm()[v4::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }

    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (h, t) = (self.header_len(), self.total_len());
        &mut self.bm()[h..t]
    }
}

/// A view of an IPv6 packet (fixed header; extension headers are payload).
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps a buffer without checks; accessors may panic if it is short.
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wraps a buffer after checking version 6 and 40 + payload length <=
    /// buffer length. A zero payload length (jumbogram) is refused.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        let Some(&first) = b.first() else {
            return Err(WireError::Truncated);
        };
        if first >> 4 != 6 {
            return Err(WireError::BadVersion(first >> 4));
        }
        if b.len() < v6::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let pl = usize::from(be16(b, v6::PAYLOAD_LEN));
        if pl == 0 && b[v6::NEXT_HEADER] == 0 {
            // Hop-by-hop with payload length 0: a jumbogram (RFC 2675).
            return Err(WireError::BadLength);
        }
        if v6::HEADER_LEN + pl > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(Ipv6Packet { buffer })
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Traffic class.
    pub fn traffic_class(&self) -> u8 {
        let b = self.b();
        (b[0] << 4) | (b[1] >> 4)
    }

    /// Flow label.
    pub fn flow_label(&self) -> u32 {
        let b = &self.b()[v6::VER_TC_FLOW];
        u32::from_be_bytes([0, b[1] & 0x0f, b[2], b[3]])
    }

    /// Payload length as claimed by the header.
    pub fn payload_len(&self) -> usize {
        usize::from(be16(self.b(), v6::PAYLOAD_LEN))
    }

    /// Header plus payload length.
    pub fn total_len(&self) -> usize {
        v6::HEADER_LEN + self.payload_len()
    }

    /// Next header (the first one after the fixed header).
    pub fn next_header(&self) -> u8 {
        self.b()[v6::NEXT_HEADER]
    }

    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.b()[v6::HOP_LIMIT]
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.b()[v6::SRC]);
        Ipv6Addr::from(a)
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.b()[v6::DST]);
        Ipv6Addr::from(a)
    }

    /// The payload (payload length bytes after the fixed header).
    pub fn payload(&self) -> &[u8] {
        &self.b()[v6::HEADER_LEN..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    fn bm(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Writes version 6, traffic class 0 and flow label 0.
    pub fn set_version_clear_flow(&mut self) {
        self.bm()[v6::VER_TC_FLOW].copy_from_slice(&[0x60, 0, 0, 0]);
    }

    /// Sets the payload length.
    pub fn set_payload_len(&mut self, len: u16) {
        self.bm()[v6::PAYLOAD_LEN].copy_from_slice(&len.to_be_bytes());
    }

    /// Sets the next header.
    pub fn set_next_header(&mut self, v: u8) {
        self.bm()[v6::NEXT_HEADER] = v;
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, v: u8) {
        self.bm()[v6::HOP_LIMIT] = v;
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.bm()[v6::SRC].copy_from_slice(&a.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.bm()[v6::DST].copy_from_slice(&a.octets());
    }

    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let t = self.total_len();
        &mut self.bm()[v6::HEADER_LEN..t]
    }
}

/// IP version of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// What the dataplane needs to know about an inner packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpInfo {
    /// IPv4 or IPv6.
    pub version: IpVersion,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Total length claimed by the header (checked <= the buffer length);
    /// bytes beyond it are padding.
    pub total_len: usize,
    /// IPv4 protocol, or the IPv6 next header (extension headers not walked).
    pub protocol: u8,
    /// Header length (IPv4 with options; 40 for IPv6).
    pub header_len: usize,
}

/// Parses the IP header of an inner packet (from TUN or decrypted).
pub fn inner_ip_info(pkt: &[u8]) -> Result<IpInfo, WireError> {
    match pkt.first().map(|b| b >> 4) {
        None => Err(WireError::Truncated),
        Some(4) => {
            let p = Ipv4Packet::new_checked(pkt)?;
            Ok(IpInfo {
                version: IpVersion::V4,
                src: p.src_addr().into(),
                dst: p.dst_addr().into(),
                total_len: p.total_len(),
                protocol: p.protocol(),
                header_len: p.header_len(),
            })
        }
        Some(6) => {
            let p = Ipv6Packet::new_checked(pkt)?;
            Ok(IpInfo {
                version: IpVersion::V6,
                src: p.src_addr().into(),
                dst: p.dst_addr().into(),
                total_len: p.total_len(),
                protocol: p.next_header(),
                header_len: v6::HEADER_LEN,
            })
        }
        Some(v) => Err(WireError::BadVersion(v)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::testutil::mutations;

    /// ICMP echo request 198.18.1.2 -> 198.18.2.2, 84 bytes, DF, TTL 64.
    pub(crate) static PING_V4: [u8; 84] = {
        let mut p = [0u8; 84];
        let h = [
            0x45, 0x00, 0x00, 0x54, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 198, 18, 1, 2,
            198, 18, 2, 2, 0x08, 0x00, 0x00, 0x00, 0x12, 0x34, 0x00, 0x01,
        ];
        let mut i = 0;
        while i < h.len() {
            p[i] = h[i];
            i += 1;
        }
        p
    };

    #[test]
    fn ipv4_info() {
        let info = inner_ip_info(&PING_V4).expect("valid");
        assert_eq!(info.version, IpVersion::V4);
        assert_eq!(info.src, "198.18.1.2".parse::<IpAddr>().expect("ip"));
        assert_eq!(info.dst, "198.18.2.2".parse::<IpAddr>().expect("ip"));
        assert_eq!(info.total_len, 84);
        assert_eq!(info.protocol, protocol::ICMP);
        assert_eq!(info.header_len, 20);
        let p = Ipv4Packet::new_checked(&PING_V4[..]).expect("valid");
        assert!(p.dont_frag() && !p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.payload().len(), 64);
    }

    #[test]
    fn ipv4_checksum_fill_and_verify() {
        let mut buf = PING_V4;
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).expect("valid");
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_ne!(p.checksum(), 0);
    }

    #[test]
    fn ipv4_length_checks() {
        // padding after total length is fine
        let mut padded = PING_V4.to_vec();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(inner_ip_info(&padded).expect("padded").total_len, 84);
        // total length beyond the buffer
        assert_eq!(inner_ip_info(&PING_V4[..83]), Err(WireError::Truncated));
        // IHL 4
        let mut b = PING_V4;
        b[0] = 0x44;
        assert_eq!(inner_ip_info(&b), Err(WireError::BadLength));
        // total length shorter than the header
        let mut b = PING_V4;
        b[3] = 19;
        b[2] = 0;
        assert_eq!(inner_ip_info(&b), Err(WireError::BadLength));
        // IHL 15 with total 84 is fine (options), IHL beyond total is not
        let mut b = PING_V4;
        b[3] = 40;
        b[0] = 0x4f;
        assert_eq!(inner_ip_info(&b), Err(WireError::BadLength));
        assert_eq!(inner_ip_info(&[]), Err(WireError::Truncated));
        assert_eq!(inner_ip_info(&[0x45; 19]), Err(WireError::Truncated));
        assert_eq!(inner_ip_info(&[0x55; 40]), Err(WireError::BadVersion(5)));
    }

    #[test]
    fn ipv6_info() {
        let mut b = [0u8; 48];
        b[0] = 0x60;
        b[5] = 8; // payload length
        b[6] = protocol::UDP;
        b[7] = 64;
        b[8] = 0xfd;
        b[23] = 1;
        b[24] = 0xfd;
        b[25] = 0x02;
        b[39] = 2;
        let info = inner_ip_info(&b).expect("valid");
        assert_eq!(info.version, IpVersion::V6);
        assert_eq!(info.src, "fd00::1".parse::<IpAddr>().expect("ip"));
        assert_eq!(info.dst, "fd02::2".parse::<IpAddr>().expect("ip"));
        assert_eq!(info.total_len, 48);
        assert_eq!(info.protocol, protocol::UDP);
        assert_eq!(info.header_len, 40);
        assert_eq!(inner_ip_info(&b[..47]), Err(WireError::Truncated));
        assert_eq!(inner_ip_info(&b[..39]), Err(WireError::Truncated));
        b[5] = 0;
        b[6] = 0;
        assert_eq!(inner_ip_info(&b), Err(WireError::BadLength));
    }

    #[test]
    fn fuzz_never_panics() {
        mutations(&PING_V4, 20_000, |v| {
            if let Ok(info) = inner_ip_info(v) {
                assert!(info.total_len <= v.len());
                assert!(info.header_len <= info.total_len);
            }
            if let Ok(p) = Ipv4Packet::new_checked(&v[..]) {
                let _ = (
                    p.payload(),
                    p.verify_checksum(),
                    p.src_addr(),
                    p.frag_offset(),
                );
            }
            if let Ok(p) = Ipv6Packet::new_checked(&v[..]) {
                let _ = (p.payload(), p.flow_label(), p.traffic_class());
            }
        });
    }
}
