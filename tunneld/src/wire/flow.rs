//! Which outer UDP flow an inner packet leaves on: a hash of its 5-tuple
//! (addresses, protocol, and TCP/UDP ports), so that every packet of one
//! inner flow takes the same outer socket and stays in order, while
//! different inner flows spread over the `dataplane.flows` sockets (and so
//! over RSS queues and ECMP paths).
//!
//! Ports are used only for TCP and UDP packets that are not fragments
//! (IPv4 MF set or offset non-zero, or an IPv6 fragment header): every
//! fragment of a datagram then hashes like its first one. IPv6 extension
//! headers are not walked; a packet with one hashes on its addresses and
//! first next-header value, which is stable within a flow.
//!
//! [`flow_hash`] is not keyed: choosing inner flows only lets a sender pick
//! which of our own sockets carries them, which it could do anyway. The
//! fq_codel queue ([`crate::fq`]) uses [`flow_hash_keyed`] with a random
//! key, so that a sender cannot aim its flow at another flow's queue.
//! Malformed packets hash to something (they are dropped later); no input
//! panics.

use super::ip::protocol;

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// splitmix64's finaliser: FNV's low bits are weak for short inputs, and a
/// full avalanche lets a plain modulo pick the flow.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 5-tuple hash of an inner IP packet (see the module comment).
pub fn flow_hash(pkt: &[u8]) -> u64 {
    flow_hash_keyed(pkt, 0)
}

/// [`flow_hash`] started from a secret `key`.
pub fn flow_hash_keyed(pkt: &[u8], key: u64) -> u64 {
    let mut h = FNV_OFFSET ^ mix(key);
    // (protocol, offset of the transport header if ports are usable)
    let (proto, l4) = match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 20 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            h = fnv(h, &pkt[12..20]);
            let proto = pkt[9];
            let flags_off = u16::from_be_bytes([pkt[6], pkt[7]]);
            // MF (0x2000) or a fragment offset: no ports.
            let fragment = flags_off & 0x3fff != 0;
            (proto, (!fragment && ihl >= 20).then_some(ihl))
        }
        Some(6) if pkt.len() >= 40 => {
            h = fnv(h, &pkt[8..40]);
            let next = pkt[6];
            (next, (next != protocol::IPV6_FRAGMENT).then_some(40))
        }
        _ => return mix(fnv(h, pkt.get(..1).unwrap_or_default())),
    };
    h = fnv(h, &[proto]);
    if matches!(proto, protocol::TCP | protocol::UDP) {
        if let Some(ports) = l4.and_then(|o| pkt.get(o..o + 4)) {
            h = fnv(h, ports);
        }
    }
    mix(h)
}

/// The outer flow (0..flows) for an inner packet; always 0 with one flow.
pub fn flow_index(pkt: &[u8], flows: usize) -> usize {
    if flows <= 1 {
        return 0;
    }
    (flow_hash(pkt) % flows as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testutil::mutations;

    /// An IPv4 packet: `proto` from src:sport to dst:dport with `payload` bytes.
    fn v4(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16, payload: u8) -> Vec<u8> {
        let len = 20 + 20 + usize::from(payload);
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[4..6].copy_from_slice(&u16::from(payload).to_be_bytes()); // IP ID varies
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        // Sequence numbers, flags, payload: differ per packet of a flow.
        for (i, b) in p[24..].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(payload);
        }
        p
    }

    fn v6(next: u8, sport: u16, dport: u16, payload: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40 + 20 + usize::from(payload)];
        p[0] = 0x60;
        p[1] = payload; // traffic class / flow label bits vary
        p[4..6].copy_from_slice(&(20 + u16::from(payload)).to_be_bytes());
        p[6] = next;
        p[7] = 64;
        p[8] = 0xfd;
        p[23] = 1;
        p[24] = 0xfd;
        p[39] = 2;
        p[40..42].copy_from_slice(&sport.to_be_bytes());
        p[42..44].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn one_inner_flow_always_takes_the_same_outer_flow() {
        for flows in [2usize, 4, 16] {
            for proto in [protocol::TCP, protocol::UDP] {
                let first = flow_index(
                    &v4([198, 18, 1, 2], [198, 18, 2, 2], proto, 40000, 5201, 0),
                    flows,
                );
                for payload in 1..=200u8 {
                    let p = v4(
                        [198, 18, 1, 2],
                        [198, 18, 2, 2],
                        proto,
                        40000,
                        5201,
                        payload,
                    );
                    assert_eq!(flow_index(&p, flows), first, "v4 {proto} payload {payload}");
                }
                let first6 = flow_index(&v6(proto, 40000, 5201, 0), flows);
                for payload in 1..=200u8 {
                    assert_eq!(flow_index(&v6(proto, 40000, 5201, payload), flows), first6);
                }
            }
        }
    }

    #[test]
    fn different_inner_flows_spread_over_all_outer_flows() {
        for flows in [2usize, 4, 16] {
            let mut used = vec![0usize; flows];
            let conns = 64 * flows;
            for i in 0..conns {
                let sport = 32768 + i as u16;
                let p = v4(
                    [198, 18, 1, 2],
                    [198, 18, 2, 2],
                    protocol::TCP,
                    sport,
                    5201,
                    10,
                );
                used[flow_index(&p, flows)] += 1;
            }
            // 64 per flow expected; every flow well used, none hogging.
            for (f, &n) in used.iter().enumerate() {
                assert!(
                    (16..=160).contains(&n),
                    "{flows} flows: flow {f} got {n}: {used:?}"
                );
            }
        }
        // Ports matter in both directions, and addresses matter.
        let base = v4(
            [198, 18, 1, 2],
            [198, 18, 2, 2],
            protocol::UDP,
            1000,
            2000,
            0,
        );
        let h = flow_hash(&base);
        assert_ne!(
            h,
            flow_hash(&v4(
                [198, 18, 1, 2],
                [198, 18, 2, 2],
                protocol::UDP,
                1000,
                2001,
                0
            ))
        );
        assert_ne!(
            h,
            flow_hash(&v4(
                [198, 18, 1, 3],
                [198, 18, 2, 2],
                protocol::UDP,
                1000,
                2000,
                0
            ))
        );
        assert_ne!(
            h,
            flow_hash(&v4(
                [198, 18, 1, 2],
                [198, 18, 2, 2],
                protocol::TCP,
                1000,
                2000,
                0
            ))
        );
        assert_ne!(
            flow_hash(&v6(protocol::TCP, 1, 2, 0)),
            flow_hash(&v6(protocol::TCP, 1, 3, 0))
        );
    }

    #[test]
    fn no_ports_for_fragments_and_other_protocols() {
        // Fragments of one datagram: the first (MF) and later ones (offset)
        // hash alike, whatever their "port" bytes hold.
        let mut first = v4(
            [198, 18, 1, 2],
            [198, 18, 2, 2],
            protocol::UDP,
            1000,
            2000,
            0,
        );
        first[6] = 0x20; // MF
        let mut later = v4([198, 18, 1, 2], [198, 18, 2, 2], protocol::UDP, 7, 9, 0);
        later[6] = 0x00;
        later[7] = 0xb9; // offset 185 × 8
        assert_eq!(flow_hash(&first), flow_hash(&later));
        // ICMP: the "ports" (type, code, checksum) are ignored.
        let a = v4(
            [198, 18, 1, 2],
            [198, 18, 2, 2],
            protocol::ICMP,
            0x0800,
            1,
            0,
        );
        let b = v4(
            [198, 18, 1, 2],
            [198, 18, 2, 2],
            protocol::ICMP,
            0x0000,
            2,
            0,
        );
        assert_eq!(flow_hash(&a), flow_hash(&b));
        // IPv6 with a fragment header: addresses only.
        assert_eq!(
            flow_hash(&v6(protocol::IPV6_FRAGMENT, 1, 2, 0)),
            flow_hash(&v6(protocol::IPV6_FRAGMENT, 3, 4, 0))
        );
    }

    #[test]
    fn one_flow_is_always_zero_and_garbage_never_panics() {
        let p = v4([198, 18, 1, 2], [198, 18, 2, 2], protocol::TCP, 1, 2, 0);
        assert_eq!(flow_index(&p, 1), 0);
        assert_eq!(flow_index(&p, 0), 0);
        for flows in [1usize, 3, 16] {
            mutations(&p, 2000, |m| assert!(flow_index(m, flows) < flows.max(1)));
            let mut short_ihl = p.clone();
            short_ihl[0] = 0x41; // IHL 4: no ports read
            assert!(flow_index(&short_ihl, flows) < flows.max(1));
        }
    }

    #[test]
    fn keyed_hash_keeps_flows_together_and_moves_buckets() {
        let a = v4(
            [198, 18, 1, 2],
            [198, 18, 2, 2],
            protocol::TCP,
            4096,
            80,
            10,
        );
        let a2 = v4(
            [198, 18, 1, 2],
            [198, 18, 2, 2],
            protocol::TCP,
            4096,
            80,
            200,
        );
        let b = v4(
            [198, 18, 1, 2],
            [198, 18, 2, 2],
            protocol::TCP,
            4097,
            80,
            10,
        );
        for key in [1u64, 0xdead_beef, u64::MAX] {
            assert_eq!(flow_hash_keyed(&a, key), flow_hash_keyed(&a2, key));
            assert_ne!(flow_hash_keyed(&a, key), flow_hash_keyed(&b, key));
        }
        assert_eq!(flow_hash_keyed(&a, 0), flow_hash(&a));
        // Another key puts flows in other buckets (of 1024), so collisions
        // cannot be aimed without it.
        let moved = (0..64u16)
            .filter(|&p| {
                let x = v4([198, 18, 1, 2], [198, 18, 2, 2], protocol::UDP, p, 53, 1);
                flow_hash_keyed(&x, 1) & 1023 != flow_hash_keyed(&x, 2) & 1023
            })
            .count();
        assert!(moved > 56, "{moved} of 64 flows changed bucket");
    }
}
