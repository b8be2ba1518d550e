//! TCP receive coalescing for TUN writes (what Linux GRO does on a NIC):
//! in-order segments of one TCP flow become one super-packet written with a
//! virtio-net header (TSO type, `gso_size`, checksum left partial), so the
//! kernel handles 64 KiB at a time and re-segments only if it forwards.
//!
//! Each opened inner packet is copied once, straight into its output
//! buffer: a segment that continues a flow appends its payload to that
//! flow's super-packet, anything else is written as it is. Output buffers
//! are pooled; nothing is allocated per packet. Where the TUN device takes
//! UDP segmentation offload (USO, Linux 6.2+), UDP flows are coalesced the
//! same way: equal-sized datagrams of one flow (a shorter last one ends
//! it), valid non-zero checksums, at most 64 per super-packet.
//!
//! Segments merge only as Linux GRO would merge them: same flow (addresses,
//! ports, family), next sequence number, same IP header fields (TOS/traffic
//! class, TTL/hop limit, DF, IPv6 flow label), no IPv4 options or IPv6
//! extension headers, no fragments, same TCP header apart from PSH (ACK
//! number, window, options), only ACK/PSH flags, a valid TCP checksum (the
//! super-packet's checksum is left for the kernel to finish, so a corrupt
//! segment must not hide in it), payloads of the first segment's size with
//! at most a shorter last one, PSH only on the last, 64 KiB at most. Writes
//! keep each flow's order.

use crate::tso::{
    F_NEEDS_CSUM as VIRTIO_NET_HDR_F_NEEDS_CSUM, GSO_UDP_L4 as VIRTIO_NET_HDR_GSO_UDP_L4,
};
use crate::wire::{fold, pseudo_header_sum, sum_words_fast};
use std::net::IpAddr;
use tun_rs::{VirtioNetHdr, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6};

// Room in front of each packet for the virtio-net header.
use crate::tso::VNET_HDR_LEN as VNET;
/// Flows that can grow at once; a packet of a further flow closes the
/// oldest.
const MAX_OPEN: usize = 16;
/// Largest super-packet (an IP length field's limit).
const MAX_IP_LEN: usize = 65_535;
/// Most datagrams in one UDP super-packet (the kernel's UDP_MAX_SEGMENTS
/// was 64 before 6.9).
const MAX_UDP_SEGMENTS: u32 = 64;
const TCP: u8 = 6;
const UDP: u8 = 17;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const ECE: u8 = 0x40;

/// What a segment's flow is and how it may continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    v6: bool,
    /// TCP or UDP.
    proto: u8,
    src: [u8; 16],
    dst: [u8; 16],
    ports: [u8; 4],
}

/// A parsed TCP segment or UDP datagram that may be coalesced.
#[derive(Debug, Clone, Copy)]
struct Seg {
    key: Key,
    /// IP header length (20 or 40: options and extension headers are
    /// never coalesced).
    ip_hl: usize,
    /// TCP header length, or 8 for UDP.
    l4_hl: usize,
    /// TCP only.
    seq: u32,
    /// TCP only.
    flags: u8,
    payload: usize,
}

/// A super-packet being built: where, and what the next segment must be.
#[derive(Debug, Clone, Copy)]
struct Open {
    key: Key,
    buf: usize,
    next_seq: u32,
    gso_size: usize,
}

/// Per output buffer: segments in it and its header lengths.
#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    segments: u32,
    v6: bool,
    proto: u8,
    ip_hl: usize,
    l4_hl: usize,
    gso_size: usize,
}

/// The coalescer of one receive loop.
#[derive(Debug, Default)]
pub struct Coalescer {
    /// Output buffers (virtio-net header, then the packet); `bufs[..used]`
    /// are this batch's, in write order.
    bufs: Vec<Vec<u8>>,
    meta: Vec<Meta>,
    used: usize,
    open: Vec<Open>,
    /// Coalesce UDP too (the device takes USO).
    udp: bool,
}

impl Coalescer {
    /// An empty coalescer of TCP flows; buffers are allocated as batches
    /// first need them, then reused.
    pub fn new() -> Coalescer {
        Coalescer::default()
    }

    /// A coalescer of TCP flows and, with `udp` (the TUN device takes
    /// USO), of UDP flows.
    pub fn with_udp(udp: bool) -> Coalescer {
        Coalescer {
            udp,
            ..Coalescer::default()
        }
    }

    /// Adds one inner packet (an opened frame's plaintext).
    pub fn push(&mut self, packet: &[u8]) {
        let Some(t) = parse(packet).filter(|t| t.key.proto == TCP || self.udp) else {
            self.plain(packet, None);
            return;
        };
        // TCP: ACK, maybe PSH (last) and ECE (equal in all); never SYN,
        // FIN, RST, URG or CWR. UDP: a checksum to verify (0 says none).
        let flags_ok = if t.key.proto == TCP {
            t.flags & !(PSH | ECE) == ACK
        } else {
            packet[t.ip_hl + 6..t.ip_hl + 8] != [0, 0]
        };
        let mergeable = flags_ok && t.payload > 0 && checksum_ok(packet, &t);
        let at = self.open.iter().position(|o| o.key == t.key);
        if !mergeable {
            // Written alone; the flow's super-packet (if any) is closed so
            // that nothing later overtakes this segment.
            if let Some(i) = at {
                self.open.remove(i);
            }
            self.plain(packet, None);
            return;
        }
        if let Some(i) = at {
            let o = self.open[i];
            if self.continues(&o, packet, &t) {
                let buf = &mut self.bufs[o.buf];
                buf.extend_from_slice(&packet[t.ip_hl + t.l4_hl..]);
                if t.flags & PSH != 0 {
                    // PSH travels on the last segment: the super-packet's.
                    buf[VNET + t.ip_hl + 13] |= PSH;
                }
                self.meta[o.buf].segments += 1;
                let room = VNET + MAX_IP_LEN - buf.len();
                let full = t.key.proto == UDP && self.meta[o.buf].segments >= MAX_UDP_SEGMENTS;
                if t.flags & PSH != 0 || t.payload < o.gso_size || room < o.gso_size || full {
                    self.open.remove(i);
                } else {
                    self.open[i].next_seq = o.next_seq.wrapping_add(t.payload as u32);
                }
                return;
            }
            self.open.remove(i);
        }
        let buf = self.plain(packet, Some(&t));
        if t.flags & PSH == 0 {
            if self.open.len() == MAX_OPEN {
                self.open.remove(0);
            }
            self.open.push(Open {
                key: t.key,
                buf,
                next_seq: t.seq.wrapping_add(t.payload as u32),
                gso_size: t.payload,
            });
        }
    }

    /// Finishes the batch: the buffers to write, each a virtio-net header
    /// and a packet, in order. The next `push` starts a new batch.
    pub fn finish(&mut self) -> &[Vec<u8>] {
        for (buf, m) in self.bufs[..self.used].iter_mut().zip(&self.meta) {
            let hdr = if m.segments > 1 {
                finish_super_packet(buf, m)
            } else {
                VirtioNetHdr::default()
            };
            // Cannot fail: every buffer starts with VNET bytes.
            let _ = hdr.encode(&mut buf[..VNET]);
        }
        let used = self.used;
        self.used = 0;
        self.open.clear();
        &self.bufs[..used]
    }

    /// Copies `packet` into the next output buffer; returns its index.
    fn plain(&mut self, packet: &[u8], seg: Option<&Seg>) -> usize {
        if self.used == self.bufs.len() {
            self.bufs.push(Vec::with_capacity(VNET + MAX_IP_LEN));
            self.meta.push(Meta::default());
        }
        let i = self.used;
        self.used += 1;
        let buf = &mut self.bufs[i];
        buf.clear();
        buf.resize(VNET, 0);
        buf.extend_from_slice(packet);
        self.meta[i] = match seg {
            Some(t) => Meta {
                segments: 1,
                v6: t.key.v6,
                proto: t.key.proto,
                ip_hl: t.ip_hl,
                l4_hl: t.l4_hl,
                gso_size: t.payload,
            },
            None => Meta::default(),
        };
        i
    }

    /// Whether segment `t` (`packet`) continues the super-packet `o`.
    fn continues(&self, o: &Open, packet: &[u8], t: &Seg) -> bool {
        let head = &self.bufs[o.buf][VNET..];
        let m = &self.meta[o.buf];
        if (t.key.proto == TCP && t.seq != o.next_seq)
            || t.payload > o.gso_size
            || t.ip_hl != m.ip_hl
            || t.l4_hl != m.l4_hl
            || head.len() + t.payload > MAX_IP_LEN
        {
            return false;
        }
        let ip_same = if t.key.v6 {
            // Version, traffic class, flow label; next header; hop limit.
            head[..4] == packet[..4] && head[6..8] == packet[6..8]
        } else {
            // TOS; flags (DF) and fragment offset; TTL and protocol.
            head[1] == packet[1] && head[6..10] == packet[6..10]
        };
        if t.key.proto == UDP {
            return ip_same;
        }
        let (h, p) = (&head[t.ip_hl..], &packet[t.ip_hl..]);
        // ACK number; data offset; flags but PSH (the head has none);
        // window; urgent pointer; options.
        ip_same
            && h[8..13] == p[8..13]
            && h[13] == p[13] & !PSH
            && h[14..16] == p[14..16]
            && h[18..t.l4_hl] == p[18..t.l4_hl]
    }
}

/// Sets the IP length fields and the partial TCP checksum of a buffer
/// holding `m.segments` merged segments; returns its virtio-net header.
fn finish_super_packet(buf: &mut [u8], m: &Meta) -> VirtioNetHdr {
    let pkt = &mut buf[VNET..];
    let len = pkt.len();
    let l4_len = len - m.ip_hl;
    let (src, dst) = if m.v6 {
        pkt[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        let s: [u8; 16] = pkt[8..24].try_into().unwrap_or([0; 16]);
        let d: [u8; 16] = pkt[24..40].try_into().unwrap_or([0; 16]);
        (IpAddr::from(s), IpAddr::from(d))
    } else {
        pkt[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        pkt[10..12].copy_from_slice(&[0, 0]);
        let c = !fold(sum_words_fast(&pkt[..m.ip_hl]));
        pkt[10..12].copy_from_slice(&c.to_be_bytes());
        let s: [u8; 4] = pkt[12..16].try_into().unwrap_or([0; 4]);
        let d: [u8; 4] = pkt[16..20].try_into().unwrap_or([0; 4]);
        (IpAddr::from(s), IpAddr::from(d))
    };
    // CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum; the
    // kernel adds the segment from csum_start and stores the complement.
    let partial = fold(pseudo_header_sum(src, dst, m.proto, l4_len as u32));
    let (csum_offset, gso_type) = if m.proto == UDP {
        pkt[m.ip_hl + 4..m.ip_hl + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        (6, VIRTIO_NET_HDR_GSO_UDP_L4)
    } else if m.v6 {
        (16, VIRTIO_NET_HDR_GSO_TCPV6)
    } else {
        (16, VIRTIO_NET_HDR_GSO_TCPV4)
    };
    let at = m.ip_hl + csum_offset;
    pkt[at..at + 2].copy_from_slice(&partial.to_be_bytes());
    VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type,
        hdr_len: (m.ip_hl + m.l4_hl) as u16,
        gso_size: m.gso_size as u16,
        csum_start: m.ip_hl as u16,
        csum_offset: csum_offset as u16,
    }
}

/// A TCP segment or UDP datagram that could be coalesced: IPv4 without
/// options or fragmentation, or IPv6 with TCP/UDP as the first next header;
/// lengths consistent. `None` for everything else.
fn parse(p: &[u8]) -> Option<Seg> {
    let (v6, ip_hl, proto) = match p.first()? >> 4 {
        4 => {
            let ok = p.len() >= 28
                && p[0] & 0x0f == 5
                && usize::from(u16::from_be_bytes([p[2], p[3]])) == p.len()
                // No MF, offset 0 (DF may be either).
                && u16::from_be_bytes([p[6], p[7]]) & 0x3fff == 0;
            (false, ok.then_some(20)?, p[9])
        }
        6 => {
            let ok = p.len() >= 48 && usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 == p.len();
            (true, ok.then_some(40)?, p[6])
        }
        _ => return None,
    };
    let l4 = &p[ip_hl..];
    let l4_hl = match proto {
        TCP if l4.len() >= 20 => usize::from(l4[12] >> 4) * 4,
        UDP if usize::from(u16::from_be_bytes([l4[4], l4[5]])) == l4.len() => 8,
        _ => return None,
    };
    if (proto == TCP && l4_hl < 20) || l4.len() < l4_hl {
        return None;
    }
    let mut key = Key {
        v6,
        proto,
        src: [0; 16],
        dst: [0; 16],
        ports: [l4[0], l4[1], l4[2], l4[3]],
    };
    if v6 {
        key.src.copy_from_slice(&p[8..24]);
        key.dst.copy_from_slice(&p[24..40]);
    } else {
        key.src[..4].copy_from_slice(&p[12..16]);
        key.dst[..4].copy_from_slice(&p[16..20]);
    }
    let (seq, flags) = if proto == TCP {
        (u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]), l4[13])
    } else {
        (0, 0)
    };
    Some(Seg {
        key,
        ip_hl,
        l4_hl,
        seq,
        flags,
        payload: l4.len() - l4_hl,
    })
}

/// Whether the TCP or UDP checksum of `p` is right.
fn checksum_ok(p: &[u8], t: &Seg) -> bool {
    let (src, dst) = if t.key.v6 {
        (IpAddr::from(t.key.src), IpAddr::from(t.key.dst))
    } else {
        let s: [u8; 4] = t.key.src[..4].try_into().unwrap_or([0; 4]);
        let d: [u8; 4] = t.key.dst[..4].try_into().unwrap_or([0; 4]);
        (IpAddr::from(s), IpAddr::from(d))
    };
    let seg = &p[t.ip_hl..];
    let sum = pseudo_header_sum(src, dst, t.key.proto, seg.len() as u32) + sum_words_fast(seg);
    fold(sum) == 0xffff
}
