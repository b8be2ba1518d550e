//! The split against tun-rs's `gso_split` byte for byte over random
//! super-packets (IPv4 with options, IPv6 with extension headers, TCP with
//! options and every flag, UDP, odd lengths, 1 to 128 segments), against
//! an independent checksum check, and against malformed headers.

use super::*;
use crate::wire::testutil::{mutations, Rng};
use tun_rs::VirtioNetHdr;

const OFFSET: usize = 16;
const BUF: usize = OFFSET + 65_600;

/// tun-rs's read path (`handle_virtio_read`, not public) in front of its
/// public `gso_split`: the reference our split must match.
fn reference(read: &[u8], bufs: &mut [Vec<u8>], sizes: &mut [usize]) -> Option<usize> {
    let hdr = VnetHdr::parse(read)?;
    let mut input = read[VNET_HDR_LEN..].to_vec();
    if hdr.gso_type == GSO_NONE {
        if hdr.flags & F_NEEDS_CSUM != 0 {
            let start = usize::from(hdr.csum_start);
            let at = start + usize::from(hdr.csum_offset);
            let initial = u16::from_be_bytes([input[at], input[at + 1]]);
            input[at..at + 2].fill(0);
            let c = !tun_rs::checksum(&input[start..], u64::from(initial));
            input[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        bufs[0][OFFSET..OFFSET + input.len()].copy_from_slice(&input);
        sizes[0] = input.len();
        return Some(1);
    }
    let v6 = input.first()? >> 4 == 6;
    let start = usize::from(hdr.csum_start);
    let hdr_len = if hdr.gso_type & !GSO_ECN == GSO_UDP_L4 {
        start + 8
    } else {
        start + usize::from(*input.get(start + 12)? >> 4) * 4
    };
    let h = VirtioNetHdr {
        flags: hdr.flags,
        gso_type: hdr.gso_type,
        hdr_len: u16::try_from(hdr_len).ok()?,
        gso_size: hdr.gso_size,
        csum_start: hdr.csum_start,
        csum_offset: hdr.csum_offset,
    };
    tun_rs::gso_split(&mut input, h, bufs, sizes, OFFSET, v6).ok()
}

/// A random super-packet with a plausible vnet header.
fn random_super(r: &mut Rng) -> Vec<u8> {
    let v6 = r.below(2) == 1;
    let udp = r.below(4) == 0;
    let ip_len = if v6 {
        40 + 8 * r.below(3)
    } else {
        20 + 4 * r.below(11)
    };
    let l4_len = if udp { 8 } else { 20 + 4 * r.below(11) };
    let small = r.below(3) == 0;
    let gso_size = 1 + r.below(if small { 200 } else { 1500 });
    let max_payload = (65_000 - ip_len - l4_len).min(gso_size * 128);
    let payload = 1 + r.below(max_payload);
    let mut p = vec![0u8; ip_len + l4_len + payload];
    r.fill(&mut p);
    p[0] = if v6 {
        0x60 | (p[0] & 0x0f)
    } else {
        0x40 | (ip_len / 4) as u8
    };
    if !udp {
        p[ip_len + 12] = ((l4_len / 4) as u8) << 4 | (p[ip_len + 12] & 0x0f);
    }
    let ecn = r.below(2) == 1;
    let gso_type = match (v6, udp) {
        (_, true) => GSO_UDP_L4,
        (false, false) => VIRTIO_NET_HDR_GSO_TCPV4 | if ecn { GSO_ECN } else { 0 },
        (true, false) => VIRTIO_NET_HDR_GSO_TCPV6,
    };
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type,
        hdr_len: (ip_len + l4_len) as u16,
        gso_size: gso_size as u16,
        csum_start: ip_len as u16,
        csum_offset: if udp { UDP_CSUM } else { TCP_CSUM },
    };
    let mut read = vec![0u8; VNET_HDR_LEN];
    hdr.emit(&mut read);
    read.extend_from_slice(&p);
    read
}

/// A random non-GSO packet asking for its checksum.
fn random_partial(r: &mut Rng) -> Vec<u8> {
    let len = 28 + r.below(1500);
    let mut p = vec![0u8; len];
    r.fill(&mut p);
    let start = 20 + r.below(8);
    let off = if r.below(2) == 0 {
        6
    } else {
        16.min(len - start - 2)
    };
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: start as u16,
        csum_offset: off as u16,
    };
    let mut read = vec![0u8; VNET_HDR_LEN];
    hdr.emit(&mut read);
    read.extend_from_slice(&p);
    read
}

fn bufs() -> (Vec<Vec<u8>>, Vec<usize>) {
    (vec![vec![0u8; BUF]; 128], vec![0; 128])
}

#[test]
fn matches_tun_rs_byte_for_byte() {
    let mut r = Rng(0x7150_5eed);
    let (mut ours, mut our_sizes) = bufs();
    let (mut theirs, mut their_sizes) = bufs();
    let mut segments = 0;
    for round in 0..600 {
        let read = if round % 5 == 4 {
            random_partial(&mut r)
        } else {
            random_super(&mut r)
        };
        let n = split(&read, &mut ours, &mut our_sizes, OFFSET).expect("valid super-packet");
        let m = reference(&read, &mut theirs, &mut their_sizes).expect("tun-rs splits it");
        assert_eq!(n, m, "round {round}: segment count");
        for i in 0..n {
            assert_eq!(our_sizes[i], their_sizes[i], "round {round} segment {i}");
            let len = our_sizes[i];
            assert!(
                ours[i][OFFSET..OFFSET + len] == theirs[i][OFFSET..OFFSET + len],
                "round {round} segment {i} of {n} differs"
            );
        }
        segments += n;
    }
    assert!(segments > 10_000, "only {segments} segments compared");
}

/// Independent of tun-rs: every segment of a TCP/IPv4 super-packet carries
/// a valid IP and TCP checksum, consecutive sequence numbers and the flags
/// in the right places.
#[test]
fn segments_are_valid_tcp() {
    let (mut bufs, mut sizes) = bufs();
    let mut p = vec![0u8; 20 + 20 + 3001];
    p[0] = 0x45;
    p[4..6].copy_from_slice(&0xfffeu16.to_be_bytes());
    p[8] = 64;
    p[9] = TCP;
    p[12..16].copy_from_slice(&[198, 18, 1, 2]);
    p[16..20].copy_from_slice(&[198, 18, 2, 2]);
    p[20 + 4..20 + 8].copy_from_slice(&u32::MAX.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = CWR | PSH | FIN | 0x10;
    for (i, b) in p[40..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 40,
        gso_size: 1000,
        csum_start: 20,
        csum_offset: TCP_CSUM,
    };
    let mut read = vec![0u8; VNET_HDR_LEN];
    hdr.emit(&mut read);
    read.extend_from_slice(&p);
    let n = split(&read, &mut bufs, &mut sizes, OFFSET).expect("split");
    assert_eq!(n, 4);
    assert_eq!(&sizes[..4], &[1040, 1040, 1040, 41]);
    for i in 0..n {
        let s = &bufs[i][OFFSET..OFFSET + sizes[i]];
        assert_eq!(crate::wire::checksum(&s[..20]), 0, "IP checksum {i}");
        assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), sizes[i]);
        assert_eq!(
            u16::from_be_bytes([s[4], s[5]]),
            0xfffeu16.wrapping_add(i as u16)
        );
        let l4 = &s[20..];
        let pseudo = crate::wire::pseudo_header_sum(
            [198, 18, 1, 2].into(),
            [198, 18, 2, 2].into(),
            TCP,
            l4.len() as u32,
        );
        assert_eq!(
            !fold(crate::wire::sum_words(pseudo, l4)),
            0,
            "TCP checksum {i}"
        );
        let seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
        assert_eq!(seq, u32::MAX.wrapping_add(1000 * i as u32));
        let flags = l4[13];
        assert_eq!(flags & CWR != 0, i == 0, "CWR on the first only");
        assert_eq!(
            flags & (PSH | FIN) != 0,
            i == n - 1,
            "FIN/PSH on the last only"
        );
        assert_eq!(l4[20], (i * 1000) as u8, "payload of segment {i}");
    }
}

#[test]
fn too_many_segments_is_an_error_not_a_truncation() {
    let mut r = Rng(9);
    let (mut bufs, mut sizes) = bufs();
    loop {
        let read = random_super(&mut r);
        let hdr = VnetHdr::parse(&read).expect("header");
        let n = split(&read, &mut bufs, &mut sizes, OFFSET).expect("split");
        if n < 3 || hdr.gso_type == GSO_NONE {
            continue;
        }
        let e = split(&read, &mut bufs[..n - 1], &mut sizes[..n - 1], OFFSET);
        assert_eq!(
            e,
            Err(SplitError::TooManySegments {
                segments: n,
                room: n - 1
            })
        );
        break;
    }
}

#[test]
fn malformed_headers_are_typed_errors() {
    let (mut bufs, mut sizes) = bufs();
    let mut good = vec![0u8; VNET_HDR_LEN];
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 40,
        gso_size: 100,
        csum_start: 20,
        csum_offset: TCP_CSUM,
    }
    .emit(&mut good);
    let mut p = vec![0u8; 40 + 500];
    p[0] = 0x45;
    p[32] = 5 << 4;
    good.extend_from_slice(&p);
    assert_eq!(split(&good, &mut bufs, &mut sizes, OFFSET), Ok(5));
    let with = |f: &dyn Fn(&mut VnetHdr, &mut Vec<u8>)| {
        let mut read = good.clone();
        let mut h = VnetHdr::parse(&read).expect("header");
        f(&mut h, &mut read);
        h.emit(&mut read);
        let (mut bufs, mut sizes) = (vec![vec![0u8; 2000]; 8], vec![0; 8]);
        split(&read, &mut bufs, &mut sizes, OFFSET)
    };
    assert_eq!(
        split(&good[..VNET_HDR_LEN], &mut bufs, &mut sizes, 0),
        Err(SplitError::Short(VNET_HDR_LEN))
    );
    assert_eq!(with(&|h, _| h.gso_size = 0), Err(SplitError::ZeroGsoSize));
    assert_eq!(with(&|h, _| h.gso_type = 2), Err(SplitError::GsoType(2)));
    assert_eq!(
        with(&|h, _| h.gso_type = GSO_UDP_L4 | GSO_ECN),
        Err(SplitError::GsoType(GSO_UDP_L4 | GSO_ECN))
    );
    assert_eq!(
        with(&|h, _| h.gso_type = VIRTIO_NET_HDR_GSO_TCPV6),
        Err(SplitError::Version(4))
    );
    assert_eq!(
        with(&|_, r| r[VNET_HDR_LEN] = 0x75),
        Err(SplitError::Version(7))
    );
    assert_eq!(with(&|h, _| h.csum_start = 12), Err(SplitError::Checksum));
    assert_eq!(with(&|h, _| h.csum_offset = 6), Err(SplitError::Checksum));
    assert_eq!(
        with(&|_, r| r[VNET_HDR_LEN + 32] = 4 << 4),
        Err(SplitError::Header)
    );
    assert_eq!(
        with(&|_, r| r.truncate(VNET_HDR_LEN + 40)),
        Err(SplitError::Empty)
    );
    assert_eq!(
        with(&|_, r| r.truncate(VNET_HDR_LEN + 30)),
        Err(SplitError::Header)
    );
    let mut small = vec![vec![0u8; 100]; 8];
    assert_eq!(
        split(&good, &mut small, &mut sizes[..8], OFFSET),
        Err(SplitError::BufferTooSmall {
            have: 100,
            need: OFFSET + 140
        })
    );
    assert_eq!(
        with(&|h, _| {
            h.gso_type = GSO_NONE;
            h.csum_start = 530;
        }),
        Err(SplitError::Checksum)
    );
}

/// Mutated genuine reads and random bytes: never a panic; whatever tun-rs
/// accepts, the split accepts with the same bytes.
#[test]
fn fuzzed_reads_never_panic_and_agree_with_tun_rs() {
    let mut r = Rng(0xf0f0);
    let seeds: Vec<Vec<u8>> = (0..8)
        .map(|i| {
            if i % 4 == 3 {
                random_partial(&mut r)
            } else {
                random_super(&mut r)
            }
        })
        .collect();
    let (mut ours, mut our_sizes) = bufs();
    let (mut theirs, mut their_sizes) = bufs();
    let mut agreed = 0;
    for s in &seeds {
        mutations(s, 300, |v| {
            let got = split(v, &mut ours, &mut our_sizes, OFFSET);
            // tun-rs indexes a non-GSO packet's checksum field unchecked;
            // ask it only about reads it can take.
            let hdr = VnetHdr::parse(v);
            let safe = hdr.is_some_and(|h| {
                v.len() > VNET_HDR_LEN
                    && (h.gso_type != GSO_NONE
                        || h.flags & F_NEEDS_CSUM == 0
                        || usize::from(h.csum_start) + usize::from(h.csum_offset) + 2
                            <= v.len() - VNET_HDR_LEN)
            });
            if !safe {
                return;
            }
            match (got, reference(v, &mut theirs, &mut their_sizes)) {
                (Ok(n), Some(m)) => {
                    assert_eq!(n, m);
                    for i in 0..n {
                        let len = our_sizes[i];
                        assert_eq!(len, their_sizes[i]);
                        assert!(ours[i][OFFSET..OFFSET + len] == theirs[i][OFFSET..OFFSET + len]);
                    }
                    agreed += 1;
                }
                // A GSO read without payload: tun-rs returns no packet,
                // we count it.
                (Err(SplitError::Empty), Some(0)) => {}
                (Err(_), None) => {}
                (a, b) => panic!("split {a:?}, tun-rs {b:?}"),
            }
        });
    }
    assert!(agreed > 100, "only {agreed} mutated reads were splittable");
}

#[test]
fn copy_and_sum_equals_copy_then_sum() {
    let mut r = Rng(3);
    let mut src = vec![0u8; 5000];
    r.fill(&mut src);
    for start in 0..4 {
        for len in [0, 1, 2, 3, 7, 31, 32, 33, 63, 64, 65, 1448, 4093] {
            let s = &src[start..start + len];
            let mut d = vec![0u8; len];
            let acc = copy_and_sum(&mut d, s);
            assert_eq!(d, s);
            assert_eq!(fold(acc), fold(sum(s)), "start {start} len {len}");
            assert_eq!(
                fold(acc).to_ne_bytes(),
                crate::wire::fold(crate::wire::sum_words(0, s)).to_be_bytes()
            );
        }
    }
}
