//! Pins the TUN offload behaviour (issue 5) with hand-built byte fixtures:
//! tun-rs's `gso_split` (a kernel TCP super-packet read with IFF_VNET_HDR,
//! cut into MTU-sized packets) and our `tunneld::gro::Coalescer` (the
//! per-flow TCP coalescing done before the TUN writes). Packets are built
//! and checked by the small builder below, with checksum code of its own,
//! so a checksum bug in either cannot hide behind itself. No root, no
//! devices.

use tun_rs::{
    gso_split, VirtioNetHdr, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_LEN,
};
use tunneld::device::HEADROOM;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM` (not re-exported by tun-rs).
const NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_ECN`: the super-packet carries CWR on its first segment.
const GSO_ECN: u8 = 0x80;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const URG: u8 = 0x20;
const CWR: u8 = 0x80;
/// IPv6 next-header values of the extension headers we build.
const HOP_BY_HOP: u8 = 0;
const DEST_OPTIONS: u8 = 60;
/// The offset the data path splits to (frame header room in front).
const SPLIT_OFFSET: usize = HEADROOM;
/// The offset the data path writes to the TUN device at.
const GRO_OFFSET: usize = VIRTIO_NET_HDR_LEN;
/// Sentinel filling output buffers, to see what tun-rs wrote.
const SENTINEL: u8 = 0xa5;

// ---------------------------------------------------------------- checksums

fn sum_words(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    let mut sum: u64 = chunks
        .by_ref()
        .map(|c| u64::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The TCP pseudo-header sum for `tcp_len` bytes of TCP header and data.
fn pseudo(src: &[u8], dst: &[u8], tcp_len: usize) -> u64 {
    sum_words(src) + sum_words(dst) + 6 + tcp_len as u64
}

// ---------------------------------------------------------------- builder

/// One TCP/IP packet's headers; `build` adds a payload and valid checksums.
#[derive(Clone, Debug)]
struct Seg {
    v6: bool,
    src: Vec<u8>,
    dst: Vec<u8>,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    tcp_options: Vec<u8>,
    /// IPv4 TOS or IPv6 traffic class.
    tos: u8,
    /// IPv4 TTL or IPv6 hop limit.
    ttl: u8,
    ip_id: u16,
    df: bool,
    mf: bool,
    ip_options: Vec<u8>,
    /// IPv6 only: an 8-byte extension header of this type before TCP.
    ext: Option<u8>,
    flow_label: u32,
}

fn timestamps(tsval: u32, tsecr: u32) -> Vec<u8> {
    let mut o = vec![1, 1, 8, 10];
    o.extend_from_slice(&tsval.to_be_bytes());
    o.extend_from_slice(&tsecr.to_be_bytes());
    o
}

impl Seg {
    fn v4() -> Seg {
        Seg {
            v6: false,
            src: vec![198, 18, 1, 2],
            dst: vec![198, 18, 2, 2],
            sport: 40_000,
            dport: 5201,
            seq: 0x1000_0000,
            ack: 0x2000_0000,
            flags: ACK,
            window: 502,
            tcp_options: timestamps(1_000, 2_000),
            tos: 0,
            ttl: 64,
            ip_id: 0x4242,
            df: true,
            mf: false,
            ip_options: Vec::new(),
            ext: None,
            flow_label: 0,
        }
    }

    fn v6() -> Seg {
        let mut src = vec![0u8; 16];
        src[..4].copy_from_slice(&[0xfd, 0, 0, 1]);
        src[15] = 2;
        let mut dst = src.clone();
        dst[3] = 2;
        Seg {
            v6: true,
            src,
            dst,
            flow_label: 0x5_1234,
            ..Seg::v4()
        }
    }

    fn ip_header_len(&self) -> usize {
        if self.v6 {
            40 + if self.ext.is_some() { 8 } else { 0 }
        } else {
            20 + self.ip_options.len()
        }
    }

    fn tcp_header_len(&self) -> usize {
        20 + self.tcp_options.len()
    }

    fn headers_len(&self) -> usize {
        self.ip_header_len() + self.tcp_header_len()
    }

    fn build(&self, payload: &[u8]) -> Vec<u8> {
        assert_eq!(
            self.tcp_options.len() % 4,
            0,
            "TCP options are 32-bit words"
        );
        assert_eq!(self.ip_options.len() % 4, 0, "IP options are 32-bit words");
        let iph = self.ip_header_len();
        let tcp_len = self.tcp_header_len() + payload.len();
        let total = iph + tcp_len;
        let mut p = vec![0u8; total];
        if self.v6 {
            let fl = self.flow_label & 0xf_ffff;
            p[0] = 0x60 | (self.tos >> 4);
            p[1] = (self.tos << 4) | (fl >> 16) as u8;
            p[2] = (fl >> 8) as u8;
            p[3] = fl as u8;
            p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            p[6] = self.ext.unwrap_or(6);
            p[7] = self.ttl;
            p[8..24].copy_from_slice(&self.src);
            p[24..40].copy_from_slice(&self.dst);
            if self.ext.is_some() {
                // Next header TCP, length 0 (8 bytes), one PadN option of 4.
                p[40..48].copy_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
            }
        } else {
            p[0] = 0x40 | (iph / 4) as u8;
            p[1] = self.tos;
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
            p[6] = if self.df { 0x40 } else { 0 } | if self.mf { 0x20 } else { 0 };
            p[8] = self.ttl;
            p[9] = 6;
            p[12..16].copy_from_slice(&self.src);
            p[16..20].copy_from_slice(&self.dst);
            p[20..iph].copy_from_slice(&self.ip_options);
            let c = !fold(sum_words(&p[..iph]));
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let t = &mut p[iph..];
        t[0..2].copy_from_slice(&self.sport.to_be_bytes());
        t[2..4].copy_from_slice(&self.dport.to_be_bytes());
        t[4..8].copy_from_slice(&self.seq.to_be_bytes());
        t[8..12].copy_from_slice(&self.ack.to_be_bytes());
        t[12] = ((self.tcp_header_len() / 4) as u8) << 4;
        t[13] = self.flags;
        t[14..16].copy_from_slice(&self.window.to_be_bytes());
        t[20..20 + self.tcp_options.len()].copy_from_slice(&self.tcp_options);
        t[self.tcp_header_len()..].copy_from_slice(payload);
        let c = !fold(pseudo(&self.src, &self.dst, tcp_len) + sum_words(t));
        t[16..18].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// The super-packet as the kernel hands it over with IFF_VNET_HDR: the
    /// TCP checksum field holds only the folded pseudo-header sum
    /// (CHECKSUM_PARTIAL), and the vnet header says where to finish it.
    fn super_packet(&self, payload: &[u8], gso_size: u16) -> (Vec<u8>, VirtioNetHdr) {
        let mut p = self.build(payload);
        let iph = self.ip_header_len();
        let partial = fold(pseudo(&self.src, &self.dst, p.len() - iph));
        p[iph + 16..iph + 18].copy_from_slice(&partial.to_be_bytes());
        let mut gso_type = if self.v6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        };
        if self.flags & CWR != 0 {
            gso_type |= GSO_ECN;
        }
        let hdr = VirtioNetHdr {
            flags: NEEDS_CSUM,
            gso_type,
            hdr_len: self.headers_len() as u16,
            gso_size,
            csum_start: iph as u16,
            csum_offset: 16,
        };
        (p, hdr)
    }
}

/// A payload byte pattern where no two nearby positions look alike.
fn pattern(from: usize, len: usize) -> Vec<u8> {
    (from..from + len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

// ---------------------------------------------------------------- parser

/// Our own reading of a TCP/IP packet, independent of tun-rs.
struct View<'a> {
    p: &'a [u8],
    v6: bool,
    /// Offset of the TCP header.
    l4: usize,
    /// TCP header length.
    thl: usize,
}

impl<'a> View<'a> {
    fn new(p: &'a [u8]) -> View<'a> {
        assert!(p.len() >= 40, "packet too short: {}", p.len());
        let v6 = p[0] >> 4 == 6;
        let l4 = if v6 {
            match p[6] {
                6 => 40,
                HOP_BY_HOP | DEST_OPTIONS => 40 + (usize::from(p[41]) + 1) * 8,
                other => panic!("unexpected IPv6 next header {other}"),
            }
        } else {
            assert_eq!(p[0] >> 4, 4, "IP version");
            assert_eq!(p[9], 6, "IPv4 protocol TCP");
            usize::from(p[0] & 0x0f) * 4
        };
        let thl = usize::from(p[l4 + 12] >> 4) * 4;
        View { p, v6, l4, thl }
    }

    fn u16_at(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.p[at], self.p[at + 1]])
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes([self.p[at], self.p[at + 1], self.p[at + 2], self.p[at + 3]])
    }

    fn addrs(&self) -> (&[u8], &[u8]) {
        if self.v6 {
            (&self.p[8..24], &self.p[24..40])
        } else {
            (&self.p[12..16], &self.p[16..20])
        }
    }

    /// The IP length field matches the buffer.
    fn ip_len_ok(&self) -> bool {
        if self.v6 {
            usize::from(self.u16_at(4)) == self.p.len() - 40
        } else {
            usize::from(self.u16_at(2)) == self.p.len()
        }
    }

    fn ipv4_checksum_ok(&self) -> bool {
        self.v6 || fold(sum_words(&self.p[..self.l4])) == 0xffff
    }

    fn tcp_checksum_ok(&self) -> bool {
        let (s, d) = self.addrs();
        let tcp = &self.p[self.l4..];
        fold(pseudo(s, d, tcp.len()) + sum_words(tcp)) == 0xffff
    }

    fn ip_id(&self) -> u16 {
        self.u16_at(4)
    }

    fn seq(&self) -> u32 {
        self.u32_at(self.l4 + 4)
    }

    fn flags(&self) -> u8 {
        self.p[self.l4 + 13]
    }

    fn payload(&self) -> &[u8] {
        &self.p[self.l4 + self.thl..]
    }
}

// ---------------------------------------------------------------- split

/// Splits `input` into fresh sentinel-filled buffers of `slot` bytes at
/// [`SPLIT_OFFSET`]; returns the packets (without the offset) or the error.
fn split(
    input: &mut [u8],
    hdr: VirtioNetHdr,
    bufs: usize,
    slot: usize,
    v6: bool,
) -> std::io::Result<Vec<Vec<u8>>> {
    let mut out = vec![vec![SENTINEL; slot]; bufs];
    let mut sizes = vec![0usize; bufs];
    let n = gso_split(input, hdr, &mut out, &mut sizes, SPLIT_OFFSET, v6)?;
    assert!(n <= bufs, "more segments than buffers");
    for b in &out {
        assert!(
            b[..SPLIT_OFFSET].iter().all(|&x| x == SENTINEL),
            "bytes before the offset were written"
        );
    }
    Ok(out[..n]
        .iter()
        .zip(&sizes)
        .map(|(b, &len)| {
            assert!(SPLIT_OFFSET + len <= slot, "size beyond the buffer");
            b[SPLIT_OFFSET..SPLIT_OFFSET + len].to_vec()
        })
        .collect())
}

/// Splits a ~20 KB super-packet of `tmpl` and checks every segment.
fn split_and_check(tmpl: &Seg) {
    const GSO: usize = 1380;
    const PAYLOAD: usize = 20_000;
    let payload = pattern(0, PAYLOAD);
    let (mut input, hdr) = tmpl.super_packet(&payload, GSO as u16);
    let segs = split(&mut input, hdr, 64, SPLIT_OFFSET + 1600, tmpl.v6).expect("split");
    let want = PAYLOAD.div_ceil(GSO);
    assert_eq!(segs.len(), want, "segment count");
    let mut carried = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        let v = View::new(seg);
        let last = i + 1 == want;
        let len = if last {
            PAYLOAD - GSO * (want - 1)
        } else {
            GSO
        };
        assert_eq!(seg.len(), tmpl.headers_len() + len, "segment {i} length");
        assert!(v.ip_len_ok(), "segment {i}: IP length field");
        assert!(v.ipv4_checksum_ok(), "segment {i}: IPv4 header checksum");
        assert!(v.tcp_checksum_ok(), "segment {i}: TCP checksum");
        if !tmpl.v6 {
            assert_eq!(
                v.ip_id(),
                tmpl.ip_id.wrapping_add(i as u16),
                "segment {i}: IPv4 ID"
            );
        }
        assert_eq!(
            v.seq(),
            tmpl.seq.wrapping_add((i * GSO) as u32),
            "segment {i}: sequence number"
        );
        let mut flags = tmpl.flags;
        if !last {
            flags &= !(FIN | PSH);
        }
        if i > 0 {
            flags &= !CWR;
        }
        assert_eq!(v.flags(), flags, "segment {i}: TCP flags");
        assert_eq!(v.payload(), &payload[i * GSO..i * GSO + len], "segment {i}");
        carried.extend_from_slice(v.payload());
        // Everything else (ports, ack, window, options, TOS/TTL, DF, flow
        // label, extension header) equals an independently built segment.
        let expect = Seg {
            seq: v.seq(),
            flags,
            ip_id: tmpl.ip_id.wrapping_add(i as u16),
            ..tmpl.clone()
        }
        .build(&payload[i * GSO..i * GSO + len]);
        assert_eq!(seg, &expect, "segment {i} bytes");
    }
    assert_eq!(carried, payload, "payload carried once, in order");
}

#[test]
fn split_ipv4_ack_psh() {
    split_and_check(&Seg {
        flags: ACK | PSH,
        ..Seg::v4()
    });
}

#[test]
fn split_ipv4_fin_and_cwr() {
    split_and_check(&Seg {
        flags: ACK | PSH | FIN | CWR,
        ..Seg::v4()
    });
}

#[test]
fn split_ipv4_wraps_sequence_and_ip_id() {
    split_and_check(&Seg {
        flags: ACK | PSH,
        seq: u32::MAX - 3000,
        ip_id: u16::MAX - 4,
        ..Seg::v4()
    });
}

#[test]
fn split_ipv4_with_ip_options() {
    // Kernel TSO packets may carry IP options; csum_start covers them.
    split_and_check(&Seg {
        flags: ACK | PSH,
        ip_options: vec![1, 1, 1, 0], // NOP NOP NOP EOL
        ..Seg::v4()
    });
}

#[test]
fn split_ipv6_ack_psh() {
    split_and_check(&Seg {
        flags: ACK | PSH,
        ..Seg::v6()
    });
}

#[test]
fn split_ipv6_fin_and_cwr() {
    split_and_check(&Seg {
        flags: ACK | PSH | FIN | CWR,
        ..Seg::v6()
    });
}

#[test]
fn split_ipv6_with_extension_header() {
    // The payload length includes the extension header, the TCP checksum does not.
    split_and_check(&Seg {
        flags: ACK | PSH,
        ext: Some(DEST_OPTIONS),
        ..Seg::v6()
    });
}

#[test]
fn split_exact_multiple_has_no_empty_tail() {
    let tmpl = Seg {
        flags: ACK | PSH,
        ..Seg::v4()
    };
    let payload = pattern(0, 4 * 1000);
    let (mut input, hdr) = tmpl.super_packet(&payload, 1000);
    let segs = split(&mut input, hdr, 8, SPLIT_OFFSET + 1600, false).expect("split");
    assert_eq!(segs.len(), 4);
    assert!(segs.iter().all(|s| View::new(s).payload().len() == 1000));
    assert_eq!(View::new(&segs[3]).flags(), ACK | PSH);
}

#[test]
fn split_too_few_buffers_is_an_error() {
    let tmpl = Seg::v4();
    let payload = pattern(0, 20_000);
    let (mut input, hdr) = tmpl.super_packet(&payload, 1380);
    // 15 segments needed.
    let r = split(&mut input, hdr, 14, SPLIT_OFFSET + 1600, false);
    assert!(r.is_err(), "14 buffers for 15 segments must fail");
    assert!(split(&mut input, hdr, 15, SPLIT_OFFSET + 1600, false).is_ok());
}

#[test]
fn split_too_small_buffers_is_an_error() {
    let tmpl = Seg::v4();
    let (mut input, hdr) = tmpl.super_packet(&pattern(0, 5_000), 1380);
    let full = SPLIT_OFFSET + tmpl.headers_len() + 1380;
    assert!(split(&mut input, hdr, 8, full - 1, false).is_err());
    assert!(split(&mut input, hdr, 8, full, false).is_ok());
}

#[test]
fn split_rejects_malformed_vnet_headers() {
    let tmpl = Seg::v4();
    let (input, good) = tmpl.super_packet(&pattern(0, 5_000), 1380);
    let len = input.len() as u16;
    let bad = [
        (
            "hdr_len beyond packet",
            VirtioNetHdr {
                hdr_len: len + 1,
                ..good
            },
        ),
        (
            "gso_size 0",
            VirtioNetHdr {
                gso_size: 0,
                ..good
            },
        ),
        (
            "csum_offset not TCP's",
            VirtioNetHdr {
                csum_offset: 6,
                ..good
            },
        ),
        (
            "csum_start inside IP header",
            VirtioNetHdr {
                csum_start: 10,
                ..good
            },
        ),
        (
            "hdr_len below csum_start",
            VirtioNetHdr {
                hdr_len: 10,
                ..good
            },
        ),
        (
            "TCP header too short",
            VirtioNetHdr {
                hdr_len: 30,
                ..good
            },
        ),
        (
            "IPv6 type for IPv4",
            VirtioNetHdr {
                gso_type: VIRTIO_NET_HDR_GSO_TCPV6,
                ..good
            },
        ),
        (
            "unknown GSO type",
            VirtioNetHdr {
                gso_type: 0x7f,
                ..good
            },
        ),
        (
            "csum_start+offset overflow",
            VirtioNetHdr {
                csum_start: u16::MAX,
                ..good
            },
        ),
    ];
    for (what, hdr) in bad {
        let mut copy = input.clone();
        let r = split(&mut copy, hdr, 16, SPLIT_OFFSET + 1600, false);
        assert!(r.is_err(), "{what}: accepted");
    }
    // Truncated packets with the good header.
    for cut in [0, 1, 19, 20, 39, 51] {
        let mut copy = input[..cut].to_vec();
        let r = split(&mut copy, good, 16, SPLIT_OFFSET + 1600, false);
        assert!(r.is_err(), "packet cut to {cut} bytes: accepted");
    }
}

/// A small deterministic generator for the robustness loops.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn split_never_panics_on_random_headers_and_lengths() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (v4, h4) = Seg::v4().super_packet(&pattern(0, 3_000), 536);
    let (v6, h6) = Seg::v6().super_packet(&pattern(0, 3_000), 536);
    let mut accepted = 0;
    for round in 0..20_000 {
        let (base, good, is_v6) = if round % 2 == 0 {
            (&v4, h4, false)
        } else {
            (&v6, h6, true)
        };
        let mut hdr = good;
        // Perturb one or two fields, sometimes to extreme values.
        for _ in 0..1 + rng.below(2) {
            let v = match rng.below(4) {
                0 => 0,
                1 => u16::MAX,
                2 => rng.below(128) as u16,
                _ => rng.next() as u16,
            };
            match rng.below(6) {
                0 => hdr.hdr_len = v,
                1 => hdr.gso_size = v,
                2 => hdr.csum_start = v,
                3 => hdr.csum_offset = v,
                4 => hdr.gso_type = v as u8,
                _ => hdr.flags = v as u8,
            }
        }
        let cut = if rng.below(3) == 0 {
            rng.below(base.len() as u64 + 1) as usize
        } else {
            base.len()
        };
        let mut input = base[..cut].to_vec();
        let slot = SPLIT_OFFSET + [40, 600, 1600][rng.below(3) as usize];
        let bufs = [0, 1, 8, 64][rng.below(4) as usize];
        if split(&mut input, hdr, bufs, slot, is_v6).is_ok() {
            accepted += 1;
        }
    }
    // The unperturbed-length cases with harmless changes (e.g. flags) pass.
    assert!(accepted > 0, "no case accepted: the loop tests nothing");
}

// ---------------------------------------------------------------- coalesce

/// Runs our coalescer over `packets`; returns the buffers to write, in order.
fn coalesce(packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut c = tunneld::gro::Coalescer::new();
    for p in packets {
        c.push(p);
    }
    c.finish().to_vec()
}

/// The vnet header in front of a buffer to write.
fn vnet(buf: &[u8]) -> VirtioNetHdr {
    VirtioNetHdr::decode(&buf[..VIRTIO_NET_HDR_LEN]).expect("vnet header")
}

/// Checks a packet written as-is: GSO_NONE header, bytes untouched.
fn assert_plain(buf: &[u8], original: &[u8], what: &str) {
    let h = vnet(buf);
    assert_eq!(
        (h.flags, h.gso_type, h.gso_size),
        (0, 0, 0),
        "{what}: plain header"
    );
    assert_eq!(&buf[GRO_OFFSET..], original, "{what}: bytes changed");
}

/// Checks a coalesced packet: its vnet header, IP length, the partial
/// checksum the kernel finishes, and returns its payload.
fn check_coalesced(buf: &[u8], tmpl: &Seg, gso_size: usize) -> Vec<u8> {
    let h = vnet(buf);
    let pkt = &buf[GRO_OFFSET..];
    let v = View::new(pkt);
    let want_type = if tmpl.v6 {
        VIRTIO_NET_HDR_GSO_TCPV6
    } else {
        VIRTIO_NET_HDR_GSO_TCPV4
    };
    assert_eq!(h.gso_type, want_type, "gso_type");
    assert_eq!(usize::from(h.gso_size), gso_size, "gso_size");
    assert_eq!(h.flags, NEEDS_CSUM, "flags");
    assert_eq!(
        usize::from(h.csum_start),
        tmpl.ip_header_len(),
        "csum_start"
    );
    assert_eq!(h.csum_offset, 16, "csum_offset");
    assert_eq!(usize::from(h.hdr_len), tmpl.headers_len(), "hdr_len");
    assert!(v.ip_len_ok(), "IP length field");
    assert!(v.ipv4_checksum_ok(), "IPv4 header checksum");
    // CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum; the
    // kernel sums from csum_start to the end and stores the complement.
    let (s, d) = v.addrs();
    let tcp_len = pkt.len() - v.l4;
    let field = v.u16_at(v.l4 + 16);
    assert_eq!(field, fold(pseudo(s, d, tcp_len)), "partial checksum");
    let mut done = pkt.to_vec();
    let c = !fold(sum_words(&done[usize::from(h.csum_start)..]));
    let at = usize::from(h.csum_start + h.csum_offset);
    done[at..at + 2].copy_from_slice(&c.to_be_bytes());
    assert!(View::new(&done).tcp_checksum_ok(), "completed TCP checksum");
    v.payload().to_vec()
}

/// `n` in-order segments of `mss` payload bytes of the flow `tmpl`, the
/// last with PSH; payload byte `i` of the stream is `pattern(i)`.
fn flow(tmpl: &Seg, n: usize, mss: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            Seg {
                seq: tmpl.seq.wrapping_add((i * mss) as u32),
                ip_id: tmpl.ip_id.wrapping_add(i as u16),
                flags: if i + 1 == n { ACK | PSH } else { ACK },
                ..tmpl.clone()
            }
            .build(&pattern(i * mss, mss))
        })
        .collect()
}

fn coalesce_one_flow(tmpl: &Seg) {
    const N: usize = 46;
    const MSS: usize = 1368;
    let segs = flow(tmpl, N, MSS);
    let out = coalesce(&segs);
    assert_eq!(out.len(), 1, "one super-packet");
    let payload = check_coalesced(&out[0], tmpl, MSS);
    assert_eq!(payload, pattern(0, N * MSS), "payload concatenated");
    let v = View::new(&out[0][GRO_OFFSET..]);
    assert_eq!(v.seq(), tmpl.seq, "first sequence number");
    assert_eq!(v.flags(), ACK | PSH, "PSH of the last segment kept");
    // Splitting it again gives the original segments back, byte for byte.
    let mut input = out[0][GRO_OFFSET..].to_vec();
    let back = split(&mut input, vnet(&out[0]), 64, SPLIT_OFFSET + 1600, tmpl.v6)
        .expect("split the coalesced packet");
    assert_eq!(back, segs, "split(coalesce(x)) == x");
}

#[test]
fn coalesce_ipv4_flow_into_one_super_packet() {
    coalesce_one_flow(&Seg::v4());
}

#[test]
fn coalesce_ipv6_flow_into_one_super_packet() {
    coalesce_one_flow(&Seg::v6());
}

#[test]
fn coalesce_across_sequence_wrap() {
    coalesce_one_flow(&Seg {
        seq: u32::MAX - 5_000,
        ..Seg::v4()
    });
}

#[test]
fn coalesce_two_interleaved_flows() {
    let a = Seg::v4();
    let b = Seg {
        sport: 40_001,
        seq: 77,
        ..Seg::v4()
    };
    let (fa, fb) = (flow(&a, 10, 1368), flow(&b, 10, 1368));
    let mixed: Vec<Vec<u8>> = fa
        .iter()
        .zip(&fb)
        .flat_map(|(x, y)| [x.clone(), y.clone()])
        .collect();
    let out = coalesce(&mixed);
    assert_eq!(out.len(), 2, "one super-packet per flow");
    for (buf, tmpl) in out.iter().zip([&a, &b]) {
        assert_eq!(
            View::new(&buf[GRO_OFFSET..]).u16_at(tmpl.ip_header_len()),
            tmpl.sport
        );
        assert_eq!(check_coalesced(buf, tmpl, 1368), pattern(0, 10 * 1368));
    }
}

#[test]
fn coalesce_mixed_families_stay_apart() {
    let (f4, f6) = (flow(&Seg::v4(), 4, 1368), flow(&Seg::v6(), 4, 1368));
    let mixed: Vec<Vec<u8>> = f4
        .iter()
        .zip(&f6)
        .flat_map(|(x, y)| [x.clone(), y.clone()])
        .collect();
    let out = coalesce(&mixed);
    assert_eq!(out.len(), 2);
    check_coalesced(&out[0], &Seg::v4(), 1368);
    check_coalesced(&out[1], &Seg::v6(), 1368);
}

/// Segments 0, 1, 2 of a flow where segment 1 is built from `odd`; checks
/// that segment 1 is written on its own, unchanged.
fn middle_stays_alone(odd: impl Fn(Seg) -> Seg, what: &str) {
    middle_stays_alone_in(&Seg::v4(), odd, what);
}

fn middle_stays_alone_in(base: &Seg, odd: impl Fn(Seg) -> Seg, what: &str) {
    let base = base.clone();
    let mut segs = flow(&base, 3, 1368);
    segs[2] = Seg {
        seq: base.seq.wrapping_add(2 * 1368),
        ..base.clone()
    }
    .build(&pattern(2 * 1368, 1368));
    let s1 = odd(Seg {
        seq: base.seq.wrapping_add(1368),
        ..base.clone()
    });
    segs[1] = s1.build(&pattern(1368, 1368));
    let out = coalesce(&segs);
    let alone: Vec<&Vec<u8>> = out
        .iter()
        .filter(|b| b[GRO_OFFSET..] == segs[1][..])
        .collect();
    assert_eq!(
        alone.len(),
        1,
        "{what}: segment not written alone and unchanged"
    );
    assert_plain(alone[0], &segs[1], what);
    // Nothing else may contain segment 1's data.
    let total: usize = out
        .iter()
        .map(|b| View::new(&b[GRO_OFFSET..]).payload().len())
        .sum();
    assert_eq!(total, 3 * 1368, "{what}: data duplicated or lost");
}

#[test]
fn coalesce_keeps_segments_with_other_flags_apart() {
    for (flags, what) in [
        (ACK | FIN, "FIN"),
        (ACK | RST, "RST"),
        (ACK | SYN, "SYN"),
        (ACK | URG, "URG"),
        (ACK | CWR, "CWR"),
    ] {
        middle_stays_alone(|s| Seg { flags, ..s }, what);
    }
}

#[test]
fn coalesce_keeps_different_tcp_options_apart() {
    middle_stays_alone(
        |s| Seg {
            tcp_options: timestamps(1_001, 2_000),
            ..s
        },
        "other timestamp",
    );
    middle_stays_alone(
        |s| Seg {
            tcp_options: Vec::new(),
            ..s
        },
        "no options",
    );
}

#[test]
fn coalesce_keeps_different_tos_ttl_df_apart() {
    middle_stays_alone(|s| Seg { tos: 0x10, ..s }, "TOS");
    middle_stays_alone(|s| Seg { ttl: 63, ..s }, "TTL");
    middle_stays_alone(|s| Seg { df: false, ..s }, "DF");
}

#[test]
fn coalesce_keeps_different_ipv6_traffic_class_hop_limit_apart() {
    middle_stays_alone_in(
        &Seg::v6(),
        |s| Seg { tos: 0x10, ..s },
        "traffic class (high nibble)",
    );
    middle_stays_alone_in(
        &Seg::v6(),
        |s| Seg { tos: 0x01, ..s },
        "traffic class (low nibble)",
    );
    middle_stays_alone_in(&Seg::v6(), |s| Seg { ttl: 63, ..s }, "hop limit");
}

/// tun-rs merged these (unlike Linux GRO); ours keeps them apart.
#[test]
fn coalesce_keeps_different_ipv6_flow_label_apart() {
    middle_stays_alone_in(
        &Seg::v6(),
        |s| Seg {
            flow_label: 0x5_4321,
            ..s
        },
        "flow label",
    );
}

/// tun-rs merged these and lost the later window update (unlike Linux
/// GRO); ours keeps them apart.
#[test]
fn coalesce_keeps_different_window_apart() {
    middle_stays_alone(|s| Seg { window: 900, ..s }, "window");
}

#[test]
fn coalesce_keeps_other_ack_apart() {
    middle_stays_alone(
        |s| Seg {
            ack: s.ack + 1,
            ..s
        },
        "ACK number",
    );
}

#[test]
fn coalesce_never_merges_bad_checksums() {
    let base = Seg::v4();
    let mut segs = flow(&base, 3, 1368);
    let l4 = base.ip_header_len();
    segs[1][l4 + 16] ^= 0x01;
    let out = coalesce(&segs);
    let alone: Vec<&Vec<u8>> = out
        .iter()
        .filter(|b| b[GRO_OFFSET..] == segs[1][..])
        .collect();
    assert_eq!(alone.len(), 1, "corrupt segment written on its own");
    assert_plain(alone[0], &segs[1], "bad checksum");
}

#[test]
fn coalesce_never_merges_ip_options_or_extension_headers() {
    let cases = [
        (
            Seg {
                ip_options: vec![1, 1, 1, 0],
                ..Seg::v4()
            },
            "IPv4 options",
        ),
        (
            Seg {
                ext: Some(HOP_BY_HOP),
                ..Seg::v6()
            },
            "IPv6 hop-by-hop",
        ),
        (
            Seg {
                ext: Some(DEST_OPTIONS),
                ..Seg::v6()
            },
            "IPv6 destination options",
        ),
        (
            Seg {
                df: false,
                mf: true,
                ..Seg::v4()
            },
            "IPv4 fragment",
        ),
    ];
    for (tmpl, what) in cases {
        let segs = flow(&tmpl, 4, 1000);
        let out = coalesce(&segs);
        assert_eq!(out.len(), 4, "{what}: merged");
        for (buf, seg) in out.iter().zip(&segs) {
            assert_plain(buf, seg, what);
        }
    }
}

#[test]
fn coalesce_never_merges_across_a_gap() {
    let segs = flow(&Seg::v4(), 4, 1368);
    let gap = vec![segs[0].clone(), segs[2].clone()];
    let out = coalesce(&gap);
    assert_eq!(out.len(), 2);
    assert_plain(&out[0], &segs[0], "before the gap");
    assert_plain(&out[1], &segs[2], "after the gap");
}

#[test]
fn coalesce_reordered_segments_keep_each_packet_contiguous() {
    let tmpl = Seg {
        flags: ACK,
        ..Seg::v4()
    };
    let mut segs: Vec<Vec<u8>> = (0..6)
        .map(|i| {
            Seg {
                seq: tmpl.seq + (i * 1368) as u32,
                ..tmpl.clone()
            }
            .build(&pattern(i * 1368, 1368))
        })
        .collect();
    segs.swap(1, 3); // 0 3 2 1 4 5
    let out = coalesce(&segs);
    let mut covered = vec![0u8; 6];
    for buf in &out {
        let v = View::new(&buf[GRO_OFFSET..]);
        let start = v.seq().wrapping_sub(tmpl.seq) as usize;
        assert_eq!(start % 1368, 0);
        assert_eq!(
            v.payload(),
            &pattern(start, v.payload().len())[..],
            "packet at {start} holds a contiguous run of the stream"
        );
        for c in &mut covered[start / 1368..(start + v.payload().len()) / 1368] {
            *c += 1;
        }
    }
    assert_eq!(covered, vec![1; 6], "every segment written exactly once");
}

#[test]
fn coalesce_nothing_after_a_short_or_psh_segment() {
    let base = Seg::v4();
    // 1368, 700, 1368: the short one ends the super-packet.
    let s: Vec<Vec<u8>> = [(0, 1368, ACK), (1368, 700, ACK), (2068, 1368, ACK)]
        .iter()
        .map(|&(off, len, flags)| {
            Seg {
                seq: base.seq + off as u32,
                flags,
                ..base.clone()
            }
            .build(&pattern(off, len))
        })
        .collect();
    let out = coalesce(&s);
    assert_eq!(out.len(), 2);
    assert_eq!(check_coalesced(&out[0], &base, 1368), pattern(0, 2068));
    assert_plain(&out[1], &s[2], "after the short segment");
    // PSH in the middle: it ends the super-packet.
    let mut f = flow(&base, 3, 1368);
    f[1] = Seg {
        seq: base.seq + 1368,
        flags: ACK | PSH,
        ..base.clone()
    }
    .build(&pattern(1368, 1368));
    f[2] = Seg {
        seq: base.seq + 2 * 1368,
        flags: ACK,
        ..base.clone()
    }
    .build(&pattern(2 * 1368, 1368));
    let out = coalesce(&f);
    assert_eq!(out.len(), 2);
    assert_eq!(check_coalesced(&out[0], &base, 1368), pattern(0, 2 * 1368));
    assert_eq!(View::new(&out[0][GRO_OFFSET..]).flags(), ACK | PSH);
    assert_plain(&out[1], &f[2], "after PSH");
}

#[test]
fn coalesce_writes_non_tcp_and_pure_acks_unchanged() {
    let base = Seg::v4();
    let ack_only = base.build(&[]);
    let ack_only2 = Seg {
        window: 600,
        ..base.clone()
    }
    .build(&[]);
    let mut udp = base.build(&pattern(0, 100));
    udp[9] = 17;
    let out = coalesce(&[ack_only.clone(), ack_only2.clone(), udp.clone()]);
    assert_eq!(out.len(), 3);
    assert_plain(&out[0], &ack_only, "pure ACK");
    assert_plain(&out[1], &ack_only2, "pure ACK");
    assert_plain(&out[2], &udp, "UDP without UDP GRO");
}

/// tun-rs let the 16-bit IP length wrap here; ours stops at 64 KiB.
#[test]
fn coalesce_never_exceeds_the_ip_length_limit() {
    let tmpl = Seg::v4();
    let segs = flow(&tmpl, 60, 1368); // 82 KB of payload
    let out = coalesce(&segs);
    let mut stream = Vec::new();
    for buf in &out {
        let pkt = &buf[GRO_OFFSET..];
        assert!(pkt.len() <= 65_535, "super-packet of {} bytes", pkt.len());
        assert!(View::new(pkt).ip_len_ok(), "IP length field");
        stream.extend_from_slice(View::new(pkt).payload());
    }
    assert_eq!(stream, pattern(0, 60 * 1368));
    assert_eq!(out.len(), 2, "47 + 13 segments");
    check_coalesced(&out[0], &tmpl, 1368);
}

#[test]
fn coalesce_never_panics_on_damaged_batches() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let f4 = flow(&Seg::v4(), 6, 600);
    let f6 = flow(&Seg::v6(), 6, 600);
    for _ in 0..5_000 {
        let mut batch: Vec<Vec<u8>> = f4.iter().chain(&f6).cloned().collect();
        for p in batch.iter_mut() {
            match rng.below(4) {
                0 => {
                    // Damage a header byte.
                    let at = rng.below(80) as usize;
                    p[at] = rng.next() as u8;
                }
                1 => {
                    let cut = 1 + rng.below(p.len() as u64) as usize;
                    p.truncate(cut);
                }
                _ => {}
            }
        }
        let _ = coalesce(&batch);
    }
}

// ---------------------------------------------------------------- UDP (USO)

/// A UDP datagram 198.18.1.2:40000 -> 198.18.2.2:5201 (or the fd00::
/// equivalents) with a valid checksum.
fn udp(v6: bool, payload: &[u8]) -> Vec<u8> {
    let ip_hl = if v6 { 40 } else { 20 };
    let udp_len = 8 + payload.len();
    let mut p = vec![0u8; ip_hl + udp_len];
    let (s, d): (Vec<u8>, Vec<u8>) = if v6 {
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        p[6] = 17;
        p[7] = 64;
        let mut s = [0u8; 16];
        s[..2].copy_from_slice(&[0xfd, 0x00]);
        s[15] = 2;
        let mut d = s;
        d[15] = 3;
        p[8..24].copy_from_slice(&s);
        p[24..40].copy_from_slice(&d);
        (s.to_vec(), d.to_vec())
    } else {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[198, 18, 1, 2]);
        p[16..20].copy_from_slice(&[198, 18, 2, 2]);
        let c = !fold(sum_words(&p[..20]));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        (p[12..16].to_vec(), p[16..20].to_vec())
    };
    let u = &mut p[ip_hl..];
    u[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    u[2..4].copy_from_slice(&5201u16.to_be_bytes());
    u[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    u[8..].copy_from_slice(payload);
    // The TCP pseudo-header helper with UDP's protocol number instead.
    let sum = pseudo(&s, &d, udp_len) - 6 + 17 + sum_words(u);
    let mut c = !fold(sum);
    if c == 0 {
        c = 0xffff;
    }
    u[6..8].copy_from_slice(&c.to_be_bytes());
    p
}

fn coalesce_udp(packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut c = tunneld::gro::Coalescer::with_udp(true);
    for p in packets {
        c.push(p);
    }
    c.finish().to_vec()
}

/// Checks a UDP super-packet; returns its payload.
fn check_udp_coalesced(buf: &[u8], v6: bool, gso_size: usize, segments: usize) -> Vec<u8> {
    let h = vnet(buf);
    let pkt = &buf[GRO_OFFSET..];
    let ip_hl = if v6 { 40 } else { 20 };
    assert_eq!((h.flags, h.gso_type), (NEEDS_CSUM, 5), "USO header");
    assert_eq!(usize::from(h.gso_size), gso_size, "gso_size");
    assert_eq!(usize::from(h.hdr_len), ip_hl + 8, "hdr_len");
    assert_eq!((usize::from(h.csum_start), h.csum_offset), (ip_hl, 6));
    let ip_len_ok = if v6 {
        usize::from(u16::from_be_bytes([pkt[4], pkt[5]])) == pkt.len() - 40
    } else {
        usize::from(u16::from_be_bytes([pkt[2], pkt[3]])) == pkt.len()
            && fold(sum_words(&pkt[..20])) == 0xffff
    };
    assert!(ip_len_ok, "IP length / header checksum");
    let udp_len = pkt.len() - ip_hl;
    assert_eq!(
        usize::from(u16::from_be_bytes([pkt[ip_hl + 4], pkt[ip_hl + 5]])),
        udp_len,
        "UDP length"
    );
    let (s, d) = if v6 {
        (&pkt[8..24], &pkt[24..40])
    } else {
        (&pkt[12..16], &pkt[16..20])
    };
    let field = u16::from_be_bytes([pkt[ip_hl + 6], pkt[ip_hl + 7]]);
    assert_eq!(
        field,
        fold(pseudo(s, d, udp_len) - 6 + 17),
        "partial checksum"
    );
    let payload = pkt[ip_hl + 8..].to_vec();
    assert_eq!(
        payload.len().div_ceil(gso_size),
        segments,
        "segments in the super-packet"
    );
    payload
}

#[test]
fn udp_flow_coalesces_with_uso_ipv4_and_ipv6() {
    for v6 in [false, true] {
        let mut dgrams: Vec<Vec<u8>> = (0..10).map(|i| udp(v6, &pattern(i * 1200, 1200))).collect();
        dgrams.push(udp(v6, &pattern(12_000, 500)));
        let out = coalesce_udp(&dgrams);
        assert_eq!(out.len(), 1, "v6 {v6}: one super-packet");
        let payload = check_udp_coalesced(&out[0], v6, 1200, 11);
        assert_eq!(payload, pattern(0, 12_500), "v6 {v6}: payload");
        // Without USO every datagram is written as it is.
        let out = coalesce(&dgrams);
        assert_eq!(out.len(), 11);
        for (b, d) in out.iter().zip(&dgrams) {
            assert_plain(b, d, "UDP without USO");
        }
    }
}

#[test]
fn udp_coalescing_stops_at_64_datagrams_and_after_a_short_one() {
    let dgrams: Vec<Vec<u8>> = (0..70)
        .map(|i| udp(false, &pattern(i * 900, 900)))
        .collect();
    let out = coalesce_udp(&dgrams);
    assert_eq!(out.len(), 2, "64 + 6");
    let mut all = check_udp_coalesced(&out[0], false, 900, 64);
    all.extend(check_udp_coalesced(&out[1], false, 900, 6));
    assert_eq!(all, pattern(0, 70 * 900));
    // 900, 400, 900: the short one ends the super-packet.
    let d = vec![
        udp(false, &pattern(0, 900)),
        udp(false, &pattern(900, 400)),
        udp(false, &pattern(1300, 900)),
    ];
    let out = coalesce_udp(&d);
    assert_eq!(out.len(), 2);
    assert_eq!(
        check_udp_coalesced(&out[0], false, 900, 2),
        pattern(0, 1300)
    );
    assert_plain(&out[1], &d[2], "after the short datagram");
}

#[test]
fn udp_without_or_with_a_bad_checksum_is_never_merged() {
    let mut no_sum = udp(false, &pattern(0, 800));
    no_sum[26..28].copy_from_slice(&[0, 0]);
    let mut bad = udp(false, &pattern(800, 800));
    bad[30] ^= 1;
    let good = udp(false, &pattern(1600, 800));
    let d = vec![no_sum.clone(), bad.clone(), good.clone(), good.clone()];
    let out = coalesce_udp(&d);
    assert_plain(&out[0], &no_sum, "checksum 0");
    assert_plain(&out[1], &bad, "bad checksum");
    // The two good ones (same bytes, so same size) do merge.
    assert_eq!(out.len(), 3);
}
