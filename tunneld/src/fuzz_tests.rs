//! Bounded, seeded mutation loops over every fuzz target of
//! [`crate::fuzzing`]: genuine inputs mutated (bit flips, byte writes,
//! truncations, splices) plus random ones. Deterministic, so a failure
//! reproduces; `TUNNELD_FUZZ_ITERS` sets the inputs per target (default
//! 3,000, a few seconds in all). CI runs them with overflow checks on:
//! `cargo test --profile fuzz -p tunneld --lib fuzz_tests`.

use crate::fuzzing::{self, DeviceTarget};
use crate::testkit::{PacketRepr, L4};
use crate::wire::testutil::{mutations, Rng};

fn iters() -> usize {
    std::env::var("TUNNELD_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
}

/// Mutations of each seed, splices of two seeds, and random inputs.
fn drive(seeds: &[Vec<u8>], mut f: impl FnMut(&[u8])) {
    let n = iters();
    let per = (n / seeds.len().max(1)).max(1);
    for s in seeds {
        mutations(s, per, |v| f(v));
    }
    let mut rng = Rng(0x5eed_f00d);
    for _ in 0..n / 4 {
        let a = &seeds[rng.below(seeds.len())];
        let b = &seeds[rng.below(seeds.len())];
        let cut_a = rng.below(a.len() + 1);
        let cut_b = rng.below(b.len() + 1);
        let mut v = a[..cut_a].to_vec();
        v.extend_from_slice(&b[cut_b..]);
        f(&v);
        let mut r = vec![0u8; rng.below(1600)];
        rng.fill(&mut r);
        f(&r);
    }
}

fn ipv4_tcp_syn() -> Vec<u8> {
    let mut r = PacketRepr::tcp("198.18.1.2", "198.18.2.2", 0);
    r.l4 = L4::Tcp {
        src_port: 40_000,
        dst_port: 5201,
        seq: 0,
        ack: 0,
        flags: crate::testkit::tcp_flags::SYN,
        window: 64_240,
        options: 4,
        mss: Some(1460),
    };
    r.emit(&[])
}

fn ipv6_udp() -> Vec<u8> {
    PacketRepr::udp("fd00::1", "fd00::2").emit(&[0; 8])
}

#[test]
fn fuzz_wire() {
    let t = DeviceTarget::new();
    let mut seeds = vec![ipv4_tcp_syn(), ipv6_udp()];
    seeds.extend(t.seeds().iter().cloned());
    drive(&seeds, fuzzing::wire);
}

#[test]
fn fuzz_framing() {
    let mut stream = vec![7u8];
    for f in [&b"abc"[..], &[0u8; 148][..], &[1u8; 1500][..]] {
        crate::transport::framing::encode(f, &mut stream).expect("encodes");
    }
    drive(&[stream], fuzzing::framing);
}

#[test]
fn fuzz_coalescer() {
    let mut seed = Vec::new();
    for _ in 0..4 {
        let p = ipv4_tcp_syn();
        seed.push((p.len() / 8) as u8);
        seed.extend_from_slice(&p[..p.len() / 8 * 8]);
    }
    drive(&[seed], fuzzing::coalescer);
}

#[test]
fn fuzz_tso_split() {
    use crate::tso::{VnetHdr, F_NEEDS_CSUM, VNET_HDR_LEN};
    let mut seeds = Vec::new();
    for (src, dst, gso_type) in [
        ("198.18.1.2", "198.18.2.2", 1),
        ("fd00:1::2", "fd00:2::2", 4),
    ] {
        let r = PacketRepr::tcp(src, dst, 1);
        let mut read = vec![0u8; VNET_HDR_LEN];
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: r.header_len() as u16,
            gso_size: 700,
            csum_start: r.ip_header_len() as u16,
            csum_offset: 16,
        }
        .emit(&mut read);
        read.extend_from_slice(&r.emit(&[9u8; 3000]));
        seeds.push(read);
    }
    drive(&seeds, fuzzing::tso_split);
}

#[test]
fn fuzz_handshake_and_cookie_messages() {
    let t = DeviceTarget::new();
    let seeds: Vec<Vec<u8>> = t
        .seeds()
        .iter()
        .filter(|f| matches!(f.first(), Some(1..=3)))
        .cloned()
        .collect();
    assert!(seeds.len() >= 3, "initiation, response and cookie seeds");
    // The Noise parts alone too (what the handshake layer parses).
    let mut all = seeds.clone();
    for s in &seeds {
        if s.len() > 8 + crate::wire::MACS_LEN {
            all.push(s[8..s.len() - crate::wire::MACS_LEN].to_vec());
        }
    }
    let n = iters() / 10;
    let mut k = 0;
    // Handshakes are public-key work: a tenth of the inputs.
    drive(&all, |v| {
        k += 1;
        if k % 10 == 0 || k < n {
            fuzzing::handshake(v);
        }
    });
}

#[test]
fn fuzz_config_yaml() {
    let dir = crate::keys::tests::TempDir::new("fuzz-config");
    let k = crate::keys::PrivateKey::from_bytes([3; 32]);
    k.save_file(&dir.0.join("a.key")).expect("key file");
    let peer = crate::keys::PrivateKey::from_bytes([4; 32])
        .public()
        .to_base64();
    let seed = fuzzing::config_seed(&peer);
    let parsed = crate::config::parse_str(&seed, &dir.0);
    assert!(parsed.is_ok(), "the seed is valid: {parsed:?}");
    // Text-level mutations too: YAML punctuation and big numbers.
    let mut rng = Rng(99);
    let inserts = [
        ":",
        "- ",
        "[",
        "]",
        "{",
        "\"",
        "\n",
        "  ",
        "0",
        "99999999999999999999",
        "1e400",
        "-1",
        "18446744073709551616s",
        "&a",
        "*a",
        "!!binary",
        "~",
        "\t",
    ];
    let base = seed.clone().into_bytes();
    drive(std::slice::from_ref(&base), |v| {
        fuzzing::config_yaml(v, &dir.0)
    });
    for _ in 0..iters() / 4 {
        let mut t = seed.clone();
        for _ in 0..1 + rng.below(3) {
            let mut at = rng.below(t.len() + 1);
            while !t.is_char_boundary(at) {
                at -= 1;
            }
            let ins = inserts[rng.below(inserts.len())];
            if rng.below(2) == 0 {
                t.insert_str(at, ins);
            } else {
                let mut end = (at + ins.len()).min(t.len());
                while !t.is_char_boundary(end) {
                    end -= 1;
                }
                t.replace_range(at..end, ins);
            }
        }
        fuzzing::config_yaml(t.as_bytes(), &dir.0);
    }
}

#[test]
fn fuzz_device_receive_path() {
    let mut t = DeviceTarget::new();
    let frames: Vec<Vec<u8>> = t.seeds().to_vec();
    assert!(
        frames.iter().any(|f| f.first() == Some(&4))
            && frames.iter().any(|f| f.first() == Some(&1)),
        "data and handshake seeds"
    );
    // Each input is a control byte and a frame.
    let mut rng = Rng(3);
    let seeds: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| {
            let mut v = vec![(rng.next() as u8) & 0x0f];
            v.extend_from_slice(f);
            v
        })
        .collect();
    drive(&seeds, |v| t.receive(v));
    // Whatever came in, the tunnel recovers.
    assert!(t.still_works(), "the pair carries data after the fuzzing");
}

#[test]
fn replay_window_matches_a_model() {
    // The model: a set of every counter seen, and the rule "newer than the
    // top, or within WINDOW of it and not seen". Counters mostly near the
    // top (reordering, duplicates), sometimes far ahead or far behind.
    use crate::crypto::replay::{ReplayWindow, WINDOW};
    use std::collections::HashSet;
    let mut rng = Rng(0xabad_cafe);
    let mut w = ReplayWindow::new();
    let mut seen = HashSet::new();
    let mut top: Option<u64> = None;
    for _ in 0..iters() * 100 {
        let t = top.unwrap_or(0);
        let c = match rng.below(16) {
            0 => t.saturating_add(rng.next() % 100_000),
            1 => t.saturating_sub(rng.next() % 20_000),
            2 => t.saturating_sub(WINDOW - 1 + rng.next() % 3),
            3 if rng.below(1_000) == 0 => u64::MAX - rng.next() % 4,
            _ => t.saturating_add(64).saturating_sub(rng.next() % 256),
        };
        let want = match top {
            None => true,
            Some(t) => c > t || (t - c < WINDOW && !seen.contains(&c)),
        };
        assert_eq!(w.check(c), want, "check({c}) with top {top:?}");
        assert_eq!(w.mark(c), want, "mark({c}) with top {top:?}");
        if want {
            seen.insert(c);
            top = Some(top.map_or(c, |t| t.max(c)));
        }
        assert_eq!(w.top(), top);
    }
}
