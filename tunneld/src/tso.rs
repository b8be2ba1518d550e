//! Splitting what one offloaded TUN read returns (a virtio-net header and
//! a packet, often a TCP or UDP super-packet of up to 64 KiB) into the
//! packets it stands for, each at an offset in a buffer of its own so the
//! frame header can be written in front of it. Sans-IO: bytes in, bytes
//! out, a typed error for every input that cannot be split.
//!
//! The split is the one Linux's TSO/USO software path (and wireguard-go's
//! `tun/offload_linux.go`, and tun-rs's `gso_split` after it) performs: each
//! segment gets the IP header with its length (and, over IPv4, its ID plus
//! the segment's index and a new header checksum), the transport header
//! with its sequence number (TCP: CWR only on the first segment, FIN and
//! PSH only on the last) or its length (UDP), and the transport checksum.
//! What differs is the work per byte: the payload is copied and folded into
//! the checksum in one pass ([`copy_and_sum`]), where copying first and
//! checksumming the copy reads every byte twice.
//!
//! A packet that is not GSO but asks for its checksum
//! (`VIRTIO_NET_HDR_F_NEEDS_CSUM`, the kernel's CHECKSUM_PARTIAL) gets it
//! filled in the same way while it is copied. Nothing here trusts the
//! header: every offset is checked against the packet before use.

use crate::slab::Slots;
use tun_rs::{VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_LEN};

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM` (linux/virtio_net.h).
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO, both IP versions).
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`: the super-packet's TCP flags carry ECN (CWR).
pub const GSO_ECN: u8 = 0x80;
/// Bytes of the virtio-net header in front of each offloaded read.
pub const VNET_HDR_LEN: usize = VIRTIO_NET_HDR_LEN;

const TCP: u8 = 6;
const UDP: u8 = 17;
/// TCP header field offsets and flags (RFC 9293).
const TCP_SEQ: usize = 4;
const TCP_FLAGS: usize = 13;
const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const CWR: u8 = 0x80;
/// Where each transport keeps its checksum (the vnet header must agree).
const TCP_CSUM: u16 = 16;
const UDP_CSUM: u16 = 6;
const UDP_HDR_LEN: usize = 8;

/// Why an offloaded read could not be split. The data path counts each as
/// one `io.tun_read_errors` (the packet is lost, as a NIC drops a frame
/// with a bad descriptor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// The read is not longer than the virtio-net header.
    #[error("read of {0} bytes holds no packet after the virtio-net header")]
    Short(usize),
    /// The GSO type is none we split (TCPv4, TCPv6, UDP L4), or ECN with UDP.
    #[error("unsupported virtio GSO type {0:#x}")]
    GsoType(u8),
    /// The IP version nibble is neither 4 nor 6, or does not match the GSO type.
    #[error("IP version {0} does not match the virtio GSO type")]
    Version(u8),
    /// `gso_size` is zero.
    #[error("virtio gso_size is zero")]
    ZeroGsoSize,
    /// `csum_start`/`csum_offset` point outside the packet, inside the IP
    /// header, or not at the transport's checksum field.
    #[error("virtio checksum start/offset do not fit the packet")]
    Checksum,
    /// The transport header is cut short, or its length field is invalid.
    #[error("transport header truncated or invalid")]
    Header,
    /// A GSO packet without payload.
    #[error("GSO packet without payload")]
    Empty,
    /// A segment would not fit the IP length fields.
    #[error("segment longer than an IP length field allows")]
    TooLong,
    /// More segments than buffers were offered: the whole super-packet is
    /// dropped (the device's `gso_max_segs` keeps the kernel within
    /// [`crate::tun::MAX_SPLIT`], so this means a misconfigured device).
    #[error("{segments} segments, room for {room}")]
    TooManySegments {
        /// Segments the super-packet holds.
        segments: usize,
        /// Buffers offered.
        room: usize,
    },
    /// An output buffer is shorter than `offset` plus a segment.
    #[error("output buffer of {have} bytes, {need} needed")]
    BufferTooSmall {
        /// Bytes one buffer has.
        have: usize,
        /// Bytes a segment needs there (offset included).
        need: usize,
    },
}

impl From<SplitError> for std::io::Error {
    fn from(e: SplitError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// The virtio-net header (linux/virtio_net.h), in the host's byte order as
/// the TUN device writes it (tun-rs never sets `TUNSETVNETLE`/`BE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`, with [`GSO_ECN`] possibly or-ed in.
    pub gso_type: u8,
    /// Length of the headers (not trusted: recomputed from the packet).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the transport header (and its checksum's coverage) starts.
    pub csum_start: u16,
    /// Where the checksum field is, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header from the first [`VNET_HDR_LEN`] bytes of `b`.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b = b.get(..VNET_HDR_LEN)?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `b`
    /// (nothing if `b` is shorter).
    pub fn emit(&self, b: &mut [u8]) {
        let Some(b) = b.get_mut(..VNET_HDR_LEN) else {
            return;
        };
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }
}

/// Splits `read` (a virtio-net header, then a packet) into `bufs`: packet
/// `i` lands at `bufs.slot(i)[offset..offset + sizes[i]]`. Returns how
/// many. The packet itself is only read.
pub fn split<S: Slots + ?Sized>(
    read: &[u8],
    bufs: &mut S,
    sizes: &mut [usize],
    offset: usize,
) -> Result<usize, SplitError> {
    if read.len() <= VNET_HDR_LEN {
        return Err(SplitError::Short(read.len()));
    }
    let Some(hdr) = VnetHdr::parse(read) else {
        return Err(SplitError::Short(read.len()));
    };
    let packet = &read[VNET_HDR_LEN..];
    let room = bufs.count().min(sizes.len());
    if room == 0 {
        return Err(SplitError::TooManySegments { segments: 1, room });
    }
    if hdr.gso_type == GSO_NONE {
        return copy_one(hdr, packet, bufs.slot(0), &mut sizes[0], offset);
    }
    let plan = Plan::new(hdr, packet)?;
    let segments = plan.payload.div_ceil(plan.gso_size);
    if segments > room {
        return Err(SplitError::TooManySegments { segments, room });
    }
    let need = offset + plan.hdr_len + plan.payload.min(plan.gso_size);
    for i in 0..segments {
        let have = bufs.slot(i).len();
        if have < need {
            return Err(SplitError::BufferTooSmall { have, need });
        }
    }
    let payload = &packet[plan.hdr_len..];
    for (i, (chunk, size)) in payload
        .chunks(plan.gso_size)
        .zip(sizes.iter_mut())
        .enumerate()
    {
        let last = i + 1 == segments;
        let out = &mut bufs.slot(i)[offset..offset + plan.hdr_len + chunk.len()];
        plan.emit(packet, i, last, chunk, out);
        *size = out.len();
    }
    Ok(segments)
}

/// A non-GSO packet: copied, with its checksum completed when asked.
fn copy_one(
    hdr: VnetHdr,
    packet: &[u8],
    buf: &mut [u8],
    size: &mut usize,
    offset: usize,
) -> Result<usize, SplitError> {
    let need = offset + packet.len();
    let have = buf.len();
    if have < need {
        return Err(SplitError::BufferTooSmall { have, need });
    }
    let out = &mut buf[offset..need];
    if hdr.flags & F_NEEDS_CSUM == 0 {
        out.copy_from_slice(packet);
    } else {
        // CHECKSUM_PARTIAL: the field holds the pseudo-header sum; the
        // checksum covers everything from `csum_start`.
        let start = usize::from(hdr.csum_start);
        let at = start + usize::from(hdr.csum_offset);
        if at + 2 > packet.len() {
            return Err(SplitError::Checksum);
        }
        out[..start].copy_from_slice(&packet[..start]);
        // The field's pseudo-header sum is summed with the rest, which is
        // what completing a partial checksum means.
        let sum = copy_and_sum(&mut out[start..], &packet[start..]);
        out[at..at + 2].copy_from_slice(&(!fold(sum)).to_ne_bytes());
    }
    *size = packet.len();
    Ok(1)
}

/// What every segment of one super-packet shares, checked once.
#[derive(Debug, Clone, Copy)]
struct Plan {
    v6: bool,
    proto: u8,
    /// IP header length, options or extension headers included.
    ip_len: usize,
    /// IP and transport headers.
    hdr_len: usize,
    gso_size: usize,
    /// Payload bytes after the headers.
    payload: usize,
    /// Sum of the addresses and the protocol of the pseudo-header.
    pseudo: u64,
    /// The first segment's TCP sequence number.
    seq: u32,
}

impl Plan {
    fn new(hdr: VnetHdr, packet: &[u8]) -> Result<Plan, SplitError> {
        if hdr.gso_size == 0 {
            return Err(SplitError::ZeroGsoSize);
        }
        let version = packet.first().map_or(0, |b| b >> 4);
        let v6 = match version {
            4 => false,
            6 => true,
            v => return Err(SplitError::Version(v)),
        };
        let ecn = hdr.gso_type & GSO_ECN != 0;
        let proto = match hdr.gso_type & !GSO_ECN {
            VIRTIO_NET_HDR_GSO_TCPV4 if !v6 => TCP,
            VIRTIO_NET_HDR_GSO_TCPV6 if v6 => TCP,
            VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6 => {
                return Err(SplitError::Version(version))
            }
            GSO_UDP_L4 if !ecn => UDP,
            _ => return Err(SplitError::GsoType(hdr.gso_type)),
        };
        let ip_len = usize::from(hdr.csum_start);
        let min_ip = if v6 { 40 } else { 20 };
        let want_offset = if proto == TCP { TCP_CSUM } else { UDP_CSUM };
        if ip_len < min_ip || hdr.csum_offset != want_offset {
            return Err(SplitError::Checksum);
        }
        // The header length is the packet's, not the vnet header's (the
        // kernel may claim the whole first packet on the forward path).
        let l4_len = if proto == TCP {
            let doff = packet.get(ip_len + 12).ok_or(SplitError::Header)?;
            let l = usize::from(doff >> 4) * 4;
            if !(20..=60).contains(&l) {
                return Err(SplitError::Header);
            }
            l
        } else {
            UDP_HDR_LEN
        };
        let hdr_len = ip_len + l4_len;
        if packet.len() < hdr_len {
            return Err(SplitError::Header);
        }
        let payload = packet.len() - hdr_len;
        if payload == 0 {
            return Err(SplitError::Empty);
        }
        let gso_size = usize::from(hdr.gso_size);
        let largest = hdr_len + payload.min(gso_size);
        if largest - if v6 { 40 } else { 0 } > usize::from(u16::MAX) {
            return Err(SplitError::TooLong);
        }
        let addrs = if v6 { &packet[8..40] } else { &packet[12..20] };
        Ok(Plan {
            v6,
            proto,
            ip_len,
            hdr_len,
            gso_size,
            payload,
            pseudo: sum(addrs) + u64::from(u16::from(proto).to_be()),
            seq: if proto == TCP {
                u32::from_be_bytes([
                    packet[ip_len + TCP_SEQ],
                    packet[ip_len + TCP_SEQ + 1],
                    packet[ip_len + TCP_SEQ + 2],
                    packet[ip_len + TCP_SEQ + 3],
                ])
            } else {
                0
            },
        })
    }

    /// Writes segment `i` (payload `chunk`) into `out`, which is exactly
    /// its length.
    fn emit(&self, packet: &[u8], i: usize, last: bool, chunk: &[u8], out: &mut [u8]) {
        let (ip, rest) = out.split_at_mut(self.ip_len);
        let (l4, data) = rest.split_at_mut(self.hdr_len - self.ip_len);
        ip.copy_from_slice(&packet[..self.ip_len]);
        let total = self.hdr_len + chunk.len();
        // Both bounded by `Plan::new`'s length check.
        if self.v6 {
            put16(ip, 4, (total - 40) as u16);
        } else {
            put16(ip, 2, total as u16);
            let id = u16::from_be_bytes([ip[4], ip[5]]).wrapping_add(i as u16);
            put16(ip, 4, id);
            put16(ip, 10, 0);
            let c = !fold(sum(ip));
            ip[10..12].copy_from_slice(&c.to_ne_bytes());
        }
        l4.copy_from_slice(&packet[self.ip_len..self.hdr_len]);
        let l4_total = (total - self.ip_len) as u16;
        let csum_at = if self.proto == TCP {
            let seq = self
                .seq
                .wrapping_add((self.gso_size as u32).wrapping_mul(i as u32));
            l4[TCP_SEQ..TCP_SEQ + 4].copy_from_slice(&seq.to_be_bytes());
            if i > 0 {
                l4[TCP_FLAGS] &= !CWR;
            }
            if !last {
                l4[TCP_FLAGS] &= !(FIN | PSH);
            }
            usize::from(TCP_CSUM)
        } else {
            put16(l4, 4, l4_total);
            usize::from(UDP_CSUM)
        };
        put16(l4, csum_at, 0);
        let acc = self.pseudo + u64::from(l4_total.to_be()) + sum(l4) + copy_and_sum(data, chunk);
        let mut c = !fold(acc);
        if self.proto == UDP && c == 0 {
            // RFC 768: a computed zero is sent as all ones.
            c = 0xffff;
        }
        l4[csum_at..csum_at + 2].copy_from_slice(&c.to_ne_bytes());
    }
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Folds a native-order sum to 16 bits (end-around carry). Stored with
/// `to_ne_bytes`, the result is the checksum in network order (RFC 1071:
/// the one's-complement sum does not depend on byte order).
fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The one's-complement sum of `data` in native byte order, unfolded.
fn sum(data: &[u8]) -> u64 {
    let mut acc = 0u64;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
    }
    acc + tail_sum(chunks.remainder())
}

fn tail_sum(rest: &[u8]) -> u64 {
    let mut t = [0u8; 4];
    t[..rest.len()].copy_from_slice(rest);
    u64::from(u32::from_ne_bytes(t))
}

/// Copies `src` into `dst` (of the same length) and returns the
/// one's-complement sum of the bytes in native order, unfolded: one pass
/// over the data. With AVX2 (checked once per call, a cached CPUID read)
/// the same loop is compiled for 256-bit vectors.
pub fn copy_and_sum(dst: &mut [u8], src: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above), the only
        // requirement of a `target_feature(enable = "avx2")` function.
        return unsafe { copy_and_sum_avx2(dst, src) };
    }
    copy_and_sum_portable(dst, src)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_and_sum_avx2(dst: &mut [u8], src: &[u8]) -> u64 {
    copy_and_sum_portable(dst, src)
}

/// Four independent accumulators of 32-bit halves keep the loop free of
/// carries (64 KiB sums to far below 2^64) and let the compiler vectorise it.
#[inline(always)]
fn copy_and_sum_portable(dst: &mut [u8], src: &[u8]) -> u64 {
    debug_assert_eq!(dst.len(), src.len());
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    const BLOCK: usize = 32;
    let mut acc = [0u64; 8];
    let mut d = dst.chunks_exact_mut(BLOCK);
    let mut s = src.chunks_exact(BLOCK);
    for (db, sb) in (&mut d).zip(&mut s) {
        db.copy_from_slice(sb);
        for (k, a) in acc.iter_mut().enumerate() {
            *a += u64::from(u32::from_ne_bytes([
                sb[4 * k],
                sb[4 * k + 1],
                sb[4 * k + 2],
                sb[4 * k + 3],
            ]));
        }
    }
    let (dr, sr) = (d.into_remainder(), s.remainder());
    dr.copy_from_slice(sr);
    acc.iter().sum::<u64>() + sum(sr)
}

#[cfg(test)]
#[path = "tso_tests.rs"]
mod tests;
