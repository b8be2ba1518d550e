//! Config tests: one per rule (each asserts the field path and line appear in
//! the message), strictness, defaults, round trip and the example profile.

use super::*;
use crate::keys::tests::TempDir;
use crate::units::{Size, Span};

/// A directory with our key file `a.key` (mode 0600) and two peer keys.
struct Fixture {
    dir: TempDir,
    ours: PublicKey,
    b: PublicKey,
    c: PublicKey,
}

fn fixture() -> Fixture {
    let dir = TempDir::new("config");
    let k = PrivateKey::generate().expect("rng");
    k.save_file(&dir.0.join("a.key")).expect("save key");
    Fixture {
        ours: k.public(),
        b: PrivateKey::generate().expect("rng").public(),
        c: PrivateKey::generate().expect("rng").public(),
        dir,
    }
}

impl Fixture {
    /// A valid two-peer config.
    fn yaml(&self) -> String {
        format!(
            "\
kind: tunnel
interface:
  name: tun-a
  addresses: [198.19.0.1/24, \"fd00:19::1/64\"]
  mtu: 1420
listen: 0.0.0.0:51820
private_key_file: a.key
cipher: aes-256-gcm
peers:
  - name: dc-b
    public_key: \"{b}\"
    endpoint: 198.18.0.2:51820
    allowed_prefixes: [198.19.0.2/32, 198.18.2.0/24, \"fd00:2::/64\"]
    keepalive: 10s
  - name: dc-c
    public_key: \"{c}\"
    allowed_prefixes:
      - 198.19.0.3/32
      - 198.18.3.0/24
",
            b = self.b,
            c = self.c
        )
    }

    fn parse(&self, text: &str) -> Result<Config, ConfigError> {
        parse_str(text, &self.dir.0)
    }

    /// Parses `text`, expects an error, checks it names `field` and the line
    /// of the first line containing `marker`, and returns the message.
    fn expect_err(&self, text: &str, field: &str, marker: &str) -> String {
        let line = text
            .lines()
            .position(|l| l.contains(marker))
            .map(|i| i + 1)
            .expect("marker is in the text");
        self.expect_err_line(text, field, line)
    }

    /// Like `expect_err` with the expected 1-based line given.
    fn expect_err_line(&self, text: &str, field: &str, line: usize) -> String {
        let err = self.parse(text).expect_err("config must be refused");
        let msg = err.to_string();
        eprintln!("{msg}");
        assert!(msg.contains(field), "field {field} missing in: {msg}");
        assert!(
            msg.starts_with(&format!("<config>:{line}:")),
            "line {line} missing in: {msg}"
        );
        assert_eq!(err.line(), Some(line), "{msg}");
        msg
    }
}

#[test]
fn valid_config_parses() {
    let f = fixture();
    let c = f.parse(&f.yaml()).expect("valid config");
    assert_eq!(c.interface.name, "tun-a");
    assert_eq!(c.interface.addresses.len(), 2);
    assert_eq!(c.interface.addresses[0].to_string(), "198.19.0.1/24");
    assert_eq!(c.public_key, f.ours);
    assert_eq!(c.peers.len(), 2);
    assert_eq!(c.peers[0].public_key, f.b);
    assert_eq!(
        c.peers[0].endpoint,
        Some("198.18.0.2:51820".parse().expect("addr"))
    );
    assert_eq!(c.peers[0].keepalive, Some(Duration::from_secs(10)));
    assert_eq!(c.peers[1].endpoint, None);
    assert_eq!(c.peers[1].allowed_prefixes[1].to_string(), "198.18.3.0/24");
}

#[test]
fn defaults_applied() {
    let f = fixture();
    let text = format!(
        "kind: tunnel\ninterface:\n  name: t0\n  addresses: [198.19.0.1/24]\n\
         listen: \"[::]:51820\"\nprivate_key_file: a.key\npeers:\n  - name: p\n    \
         public_key: {}\n    allowed_prefixes: [198.18.2.0/24]\n",
        f.b
    );
    let c = f.parse(&text).expect("minimal config");
    assert_eq!(c.interface.mtu, 1420);
    assert_eq!(c.cipher, CipherKind::Aes256Gcm);
    assert!(!c.insecure_lab_only);
    assert_eq!(c.control_socket, PathBuf::from("/run/tunneld/t0.sock"));
    assert_eq!(c.socket_buffer, 4 << 20);
    assert!(c.mss_clamp);
    assert_eq!(c.rekey_after_time, Duration::from_secs(120));
    assert_eq!(c.rekey_after_bytes, 64 << 30);
    assert_eq!(c.peers[0].keepalive, None);
    assert!(c.listen.is_ipv6());
    assert_eq!(c.dataplane, crate::config::DataplaneConfig::default());
    assert_eq!(c.dataplane.queue, crate::config::QueueKind::Fifo);
}

#[test]
fn queue_settings_parse_and_bad_ones_name_field_and_line() {
    let f = fixture();
    let with = |dp: &str| {
        f.yaml()
            .replace("peers:\n", &format!("dataplane:\n{dp}peers:\n"))
    };
    let c = f
        .parse(&with(
            "  queue: fq_codel\n  codel_target: 1ms\n  codel_interval: 20ms\n  queue_limit: 2048\n",
        ))
        .expect("valid queue settings");
    assert_eq!(c.dataplane.queue, crate::config::QueueKind::FqCodel);
    assert_eq!(c.dataplane.codel_target, Duration::from_millis(1));
    assert_eq!(c.dataplane.codel_interval, Duration::from_millis(20));
    assert_eq!(c.dataplane.queue_limit, 2048);
    assert!(c.dataplane.ecn, "ECN is on unless turned off");
    let c = f.parse(&with("  ecn: false\n")).expect("ecn: false");
    assert!(!c.dataplane.ecn);
    let t = with("  ecn: sometimes\n");
    f.expect_err(&t, "dataplane.ecn", "ecn: sometimes");
    let t = with("  queue: red\n");
    f.expect_err(&t, "dataplane.queue", "queue: red");
    let t = with("  queue_limit: 10\n");
    let msg = f.expect_err(&t, "dataplane.queue_limit", "queue_limit:");
    assert!(msg.contains("256..=65536"), "{msg}");
    let t = with("  queue_limit: -1\n");
    f.expect_err(&t, "dataplane.queue_limit", "queue_limit:");
    let t = with("  codel_target: 0s\n");
    f.expect_err(&t, "dataplane.codel_target", "codel_target:");
    let t = with("  codel_target: fast\n");
    f.expect_err(&t, "dataplane.codel_target", "codel_target:");
    let t = with("  codel_target: 50ms\n  codel_interval: 10ms\n");
    let msg = f.expect_err(&t, "dataplane.codel_target", "codel_target:");
    assert!(msg.contains("below dataplane.codel_interval"), "{msg}");
    let t = with("  codel_interval: 1h\n");
    f.expect_err(&t, "dataplane.codel_interval", "codel_interval:");
    let t = with("  codel: on\n");
    f.expect_err(&t, "codel", "codel: on");
}

#[test]
fn cpus_pin_workers_and_bad_lists_name_field_and_line() {
    let f = fixture();
    let with = |dp: &str| {
        f.yaml()
            .replace("peers:\n", &format!("dataplane:\n{dp}peers:\n"))
    };
    let one = f.parse(&with("  cpus: [1]\n")).expect("one CPU");
    let c = one.dataplane.cpus.expect("pinned");
    assert_eq!(
        (c.as_slice(), c.for_worker(0), c.for_worker(3)),
        (&[1u16][..], 1, 1)
    );
    let two = f
        .parse(&with("  workers: 2\n  cpus: [0, 3]\n"))
        .expect("two CPUs");
    let c = two.dataplane.cpus.expect("pinned");
    assert_eq!((c.for_worker(0), c.for_worker(1)), (0, 3));
    let four = f
        .parse(&with("  workers: 4\n  cpus: [4, 5, 6, 7]\n"))
        .expect("one CPU per worker");
    assert_eq!(
        four.dataplane.cpus.expect("pinned").as_slice(),
        &[4, 5, 6, 7]
    );
    assert_eq!(f.parse(&f.yaml()).expect("default").dataplane.cpus, None);
    for (bad, why) in [
        ("[]", "0 CPUs"),
        ("[0, 1, 2]\n  workers: 4", "3 CPUs listed for 4 worker"),
        ("[1024]", "out of range"),
    ] {
        let t = with(&format!("  cpus: {bad}\n"));
        let msg = f.expect_err(&t, "dataplane.cpus", "cpus:");
        assert!(msg.contains(why), "{bad}: {msg}");
    }
    for bad in ["[-1]", "[one]", "0", "[1.5]"] {
        let t = with(&format!("  cpus: {bad}\n"));
        f.expect_err(&t, "cpus", "cpus:");
    }
}

#[test]
fn workers_take_a_count_or_auto_and_refuse_the_rest_by_line() {
    let f = fixture();
    let with = |dp: &str| {
        f.yaml()
            .replace("peers:\n", &format!("dataplane:\n{dp}peers:\n"))
    };
    use crate::config::Workers;
    let n = |dp: &str| f.parse(&with(dp)).expect(dp).dataplane.workers;
    assert_eq!(n("  workers: 1\n"), Workers::Count(1));
    assert_eq!(n("  workers: 64\n"), Workers::Count(64));
    // `auto` stays `auto` in the checked config: the daemon resolves it at
    // start, so `check` and reload compare it as written.
    assert_eq!(n("  workers: auto\n"), Workers::Auto);
    assert_eq!(n(""), Workers::Count(1), "the default");
    // With `auto`, a CPU list is a cap, never too short; it is kept whole.
    let pinned = f
        .parse(&with("  workers: auto\n  cpus: [2, 3, 5]\n"))
        .expect("auto with CPUs");
    assert_eq!(pinned.dataplane.workers, Workers::Auto);
    assert_eq!(
        pinned.dataplane.cpus.expect("pinned").as_slice(),
        &[2, 3, 5]
    );
    for bad in ["0", "65", "-1", "many", "1.5"] {
        let t = with(&format!("  workers: {bad}\n"));
        f.expect_err(&t, "workers", "workers:");
    }
}

#[test]
fn explicit_values_and_relative_paths() {
    let f = fixture();
    let text = f.yaml().replace(
        "cipher: aes-256-gcm\n",
        "cipher: chacha20-poly1305\ncontrol_socket: run/a.sock\nsocket_buffer: 8M\n\
         mss_clamp: false\nrekey:\n  after_time: 2s\n  after_bytes: 1M\n",
    );
    let c = f.parse(&text).expect("valid");
    assert_eq!(c.cipher, CipherKind::ChaCha20Poly1305);
    assert_eq!(c.control_socket, f.dir.0.join("run/a.sock"));
    assert_eq!(c.socket_buffer, 8 << 20);
    assert!(!c.mss_clamp);
    assert_eq!(c.rekey_after_time, Duration::from_secs(2));
    assert_eq!(c.rekey_after_bytes, 1 << 20);
}

#[test]
fn endpoint_without_port() {
    let f = fixture();
    let text = f
        .yaml()
        .replace("endpoint: 198.18.0.2:51820", "endpoint: 198.18.0.2");
    let msg = f.expect_err(&text, "peers[0].endpoint", "endpoint:");
    assert!(
        msg.contains("<config>:12:15: peers[0].endpoint: invalid socket address \"198.18.0.2\""),
        "{msg}"
    );
}

#[test]
fn endpoint_port_zero() {
    let f = fixture();
    let text = f.yaml().replace("198.18.0.2:51820", "198.18.0.2:0");
    let msg = f.expect_err(&text, "peers[0].endpoint", "endpoint:");
    assert!(msg.contains("port 0"), "{msg}");
}

#[test]
fn listen_bad() {
    let f = fixture();
    let text = f.yaml().replace("listen: 0.0.0.0:51820", "listen: 0.0.0.0");
    f.expect_err(&text, "listen: invalid socket address", "listen:");
}

#[test]
fn ipv6_endpoint_with_ipv4_listen() {
    let f = fixture();
    let text = f.yaml().replace("198.18.0.2:51820", "\"[fd00::2]:51820\"");
    let msg = f.expect_err(&text, "peers[0].endpoint", "endpoint:");
    assert!(msg.contains("[::]:51820"), "{msg}");
}

#[test]
fn interface_name_bad_chars() {
    let f = fixture();
    let text = f.yaml().replace("name: tun-a", "name: \"tun a\"");
    let msg = f.expect_err(&text, "interface.name", "tun a");
    assert!(msg.contains("letters, digits"), "{msg}");
}

#[test]
fn interface_name_too_long() {
    let f = fixture();
    let text = f.yaml().replace("name: tun-a", "name: tunnel-to-dc-b-01");
    let msg = f.expect_err(&text, "interface.name", "tunnel-to-dc-b-01");
    assert!(msg.contains("1 to 15"), "{msg}");
}

#[test]
fn mtu_out_of_range() {
    let f = fixture();
    let text = f.yaml().replace("mtu: 1420", "mtu: 9001");
    let msg = f.expect_err(&text, "interface.mtu", "mtu:");
    assert!(msg.contains("576..=9000"), "{msg}");
}

#[test]
fn mtu_too_small_for_ipv6() {
    let f = fixture();
    let text = f.yaml().replace("mtu: 1420", "mtu: 1200");
    let msg = f.expect_err(&text, "interface.mtu", "mtu:");
    assert!(msg.contains("interface.addresses[1] is IPv6"), "{msg}");
    // without the IPv6 address it is fine
    let v4 = text.replace(", \"fd00:19::1/64\"", "");
    assert_eq!(f.parse(&v4).expect("v4 only").interface.mtu, 1200);
}

#[test]
fn interface_address_bad() {
    let f = fixture();
    let text = f.yaml().replace("198.19.0.1/24", "198.19.0.1/33");
    let msg = f.expect_err(&text, "interface.addresses[0]", "addresses:");
    assert!(msg.contains("0..=32"), "{msg}");
}

#[test]
fn interface_addresses_empty() {
    let f = fixture();
    let text = f.yaml().replace("[198.19.0.1/24, \"fd00:19::1/64\"]", "[]");
    f.expect_err(&text, "interface.addresses", "addresses:");
}

#[test]
fn allowed_prefix_host_bits() {
    let f = fixture();
    let text = f.yaml().replace("198.18.2.0/24", "198.18.2.1/24");
    let msg = f.expect_err(&text, "peers[0].allowed_prefixes[1]", "198.18.2.1/24");
    assert!(msg.contains("did you mean 198.18.2.0/24?"), "{msg}");
}

#[test]
fn allowed_prefixes_empty() {
    let f = fixture();
    let text = f
        .yaml()
        .replace("[198.19.0.2/32, 198.18.2.0/24, \"fd00:2::/64\"]", "[]");
    f.expect_err(&text, "peers[0].allowed_prefixes", "allowed_prefixes: []");
}

#[test]
fn allowed_prefixes_overlap_between_peers() {
    let f = fixture();
    let text = f.yaml().replace("- 198.18.3.0/24", "- 198.18.2.128/25");
    let msg = f.expect_err(&text, "peers[1].allowed_prefixes[1]", "198.18.2.128/25");
    assert!(
        msg.contains("overlaps 198.18.2.0/24 of peers[0] (dc-b)"),
        "{msg}"
    );
}

#[test]
fn peer_name_duplicate() {
    let f = fixture();
    let text = f.yaml().replace("name: dc-c", "name: dc-b");
    let line = f
        .yaml()
        .lines()
        .position(|l| l.contains("dc-c"))
        .expect("dc-c")
        + 1;
    let msg = f.expect_err_line(&text, "peers[1].name", line);
    assert!(
        msg.contains("duplicate peer name \"dc-b\" (also peers[0])"),
        "{msg}"
    );
}

#[test]
fn peer_name_bad() {
    let f = fixture();
    let text = f.yaml().replace("name: dc-c", "name: dc/c");
    f.expect_err(&text, "peers[1].name", "dc/c");
}

#[test]
fn public_key_bad() {
    let f = fixture();
    let text = f.yaml().replace(&f.c.to_string(), "AAAA");
    let msg = f.expect_err(&text, "peers[1].public_key", "AAAA");
    assert!(msg.contains("32"), "{msg}");
}

#[test]
fn public_key_duplicate() {
    let f = fixture();
    let text = f.yaml().replace(&f.c.to_string(), &f.b.to_string());
    let b = f.b.to_string();
    let second = text.rfind(&b).expect("two copies");
    let line = text[..second].lines().count();
    let msg = f.parse(&text).expect_err("dup").to_string();
    assert!(msg.starts_with(&format!("<config>:{line}:")), "{msg}");
    assert!(
        msg.contains("peers[1].public_key: same public key as peers[0]"),
        "{msg}"
    );
}

#[test]
fn public_key_is_our_own() {
    let f = fixture();
    let text = f.yaml().replace(&f.c.to_string(), &f.ours.to_string());
    let msg = f.expect_err(&text, "peers[1].public_key", &f.ours.to_string());
    assert!(msg.contains("our own public key"), "{msg}");
}

#[test]
fn keepalive_out_of_range() {
    let f = fixture();
    let text = f.yaml().replace("keepalive: 10s", "keepalive: 2h");
    let msg = f.expect_err(&text, "peers[0].keepalive", "keepalive:");
    assert!(msg.contains("1s..=1h"), "{msg}");
}

#[test]
fn rekey_too_small() {
    let f = fixture();
    let base = f.yaml();
    let t = base.replace("peers:\n", "rekey:\n  after_time: 500ms\npeers:\n");
    f.expect_err(&t, "rekey.after_time", "after_time:");
    let t = base.replace("peers:\n", "rekey:\n  after_bytes: 1K\npeers:\n");
    f.expect_err(&t, "rekey.after_bytes", "after_bytes:");
}

#[test]
fn rekey_too_large_is_refused_not_a_panic_at_start() {
    let f = fixture();
    let base = f.yaml();
    let t = base.replace(
        "peers:\n",
        "rekey:\n  after_time: 15000000000000000000s\npeers:\n",
    );
    let msg = f.expect_err(&t, "rekey.after_time", "after_time:");
    assert!(msg.contains("24h"), "{msg}");
    let t = base.replace("peers:\n", "rekey:\n  after_time: 25h\npeers:\n");
    f.expect_err(&t, "rekey.after_time", "after_time:");
    let t = base.replace("peers:\n", "rekey:\n  after_bytes: 2T\npeers:\n");
    f.expect_err(&t, "rekey.after_bytes", "after_bytes:");
    let t = base.replace(
        "peers:\n",
        "rekey:\n  after_time: 24h\n  after_bytes: 1T\npeers:\n",
    );
    let c = f.parse(&t).expect("the maxima are accepted");
    let _ = crate::device::Device::new(&c);
}

#[test]
fn extreme_numbers_in_every_duration_and_size_never_panic() {
    // Each field that takes a duration or size, with values at and beyond
    // what the units can hold: a clear error or a config whose device
    // builds, never a panic.
    let f = fixture();
    let base = f.yaml();
    let values = [
        "0",
        "1",
        "0s",
        "1ns",
        "18446744073709551615",
        "18446744073709551616",
        "15000000000000000000s",
        "18446744073709551615s",
        "99999999999999999999999h",
        "1e30",
        "-1s",
        "1.5s",
        "NaN",
        "1Y",
        "18446744073709551615G",
        "9999999T",
        "1s1s",
        "",
    ];
    let fields = [
        ("rekey:\n  after_time: {}\n", ""),
        ("rekey:\n  after_bytes: {}\n", ""),
        ("socket_buffer: {}\n", ""),
        ("dataplane:\n  codel_target: {}\n", ""),
        ("dataplane:\n  codel_interval: {}\n", ""),
        ("dataplane:\n  queue_limit: {}\n", ""),
        ("dataplane:\n  batch: {}\n", ""),
        ("dataplane:\n  flows: {}\n", ""),
        ("quic:\n  idle_timeout: {}\n", ""),
        ("quic:\n  keepalive: {}\n", ""),
    ];
    let mut built = 0;
    for (field, _) in fields {
        for v in values {
            let top = field.replace("{}", v);
            let t = base.replace("peers:\n", &format!("{top}peers:\n"));
            if let Ok(c) = f.parse(&t) {
                let _ = crate::device::Device::new(&c);
                built += 1;
            }
        }
        let t = base.replace("keepalive: 10s", &format!("keepalive: {}", values[6]));
        assert!(f.parse(&t).is_err());
    }
    assert!(built > 0, "some values are valid");
}

#[test]
fn endpoint_inside_the_peers_own_prefixes_is_a_routing_loop() {
    let f = fixture();
    let text = f
        .yaml()
        .replace("endpoint: 198.18.0.2:51820", "endpoint: 198.18.2.9:51820");
    let msg = f.expect_err(&text, "peers[0].endpoint", "endpoint:");
    assert!(msg.contains("loop"), "{msg}");
    let text = f
        .yaml()
        .replace(
            "endpoint: 198.18.0.2:51820",
            "endpoint: \"[fd00:2::1]:51820\"",
        )
        .replace("listen: 0.0.0.0:51820", "listen: \"[::]:51820\"");
    f.expect_err(&text, "peers[0].endpoint", "endpoint:");
}

#[test]
fn socket_buffer_out_of_range() {
    let f = fixture();
    let t = f.yaml().replace("peers:\n", "socket_buffer: 2G\npeers:\n");
    let msg = f.expect_err(&t, "socket_buffer", "socket_buffer:");
    assert!(msg.contains("64K..=1G"), "{msg}");
}

#[test]
fn dataplane_flows_default_and_explicit() {
    let f = fixture();
    let c = f.parse(&f.yaml()).expect("valid config");
    assert_eq!(c.dataplane.flows, 1, "default");
    for n in [1usize, 4, 16] {
        let t = f
            .yaml()
            .replace("peers:\n", &format!("dataplane:\n  flows: {n}\npeers:\n"));
        let c = f.parse(&t).expect("flows in range");
        assert_eq!(c.dataplane.flows, n);
        assert_eq!(c.dataplane.batch, 64, "other knobs keep their defaults");
    }
}

#[test]
fn dataplane_flows_out_of_range() {
    let f = fixture();
    for bad in ["0", "17", "1000"] {
        let t = f.yaml().replace(
            "peers:\n",
            &format!("dataplane:\n  workers: 1\n  flows: {bad}\npeers:\n"),
        );
        let msg = f.expect_err(&t, "dataplane.flows", "flows:");
        assert!(msg.contains("1..=16") && msg.contains(bad), "{msg}");
    }
}

#[test]
fn dataplane_flows_wrong_type_and_unknown_field() {
    let f = fixture();
    for bad in ["four", "-1", "2.5", "[4]", "true"] {
        let t = f
            .yaml()
            .replace("peers:\n", &format!("dataplane:\n  flows: {bad}\npeers:\n"));
        f.expect_err(&t, "dataplane.flows", "flows:");
    }
    // A misspelt knob is named, not ignored.
    let t = f
        .yaml()
        .replace("peers:\n", "dataplane:\n  flow: 4\npeers:\n");
    f.expect_err(&t, "unknown field `flow`", "flow: 4");
}

#[test]
fn cipher_unknown() {
    let f = fixture();
    let t = f
        .yaml()
        .replace("cipher: aes-256-gcm", "cipher: aes-128-cbc");
    let msg = f.expect_err(&t, "cipher", "cipher:");
    assert!(msg.contains("aes-128-cbc"), "{msg}");
}

#[test]
fn cipher_none_needs_insecure_lab_only() {
    let f = fixture();
    let t = f.yaml().replace("cipher: aes-256-gcm", "cipher: none");
    let msg = f.expect_err(&t, "cipher", "cipher:");
    assert!(msg.contains("insecure_lab_only: true"), "{msg}");
    let ok = t.replace("cipher: none", "cipher: none\ninsecure_lab_only: true");
    assert_eq!(f.parse(&ok).expect("allowed").cipher, CipherKind::None);
}

#[test]
fn wrong_kind() {
    let f = fixture();
    let t = f.yaml().replace("kind: tunnel", "kind: scenario");
    let msg = f.expect_err(&t, "kind", "kind:");
    assert!(msg.contains("tunbench"), "{msg}");
    let missing = f.yaml().replace("kind: tunnel\n", "");
    let msg = f.parse(&missing).expect_err("no kind").to_string();
    assert!(msg.contains("missing field `kind`"), "{msg}");
}

#[test]
fn unknown_field_top_level() {
    let f = fixture();
    let t = f
        .yaml()
        .replace("cipher: aes-256-gcm", "cipher: aes-256-gcm\nmtu: 1400");
    let msg = f.expect_err(&t, "unknown field `mtu`", "mtu: 1400");
    assert!(msg.starts_with("<config>:9:1:"), "{msg}");
}

#[test]
fn unknown_field_in_peer() {
    let f = fixture();
    let t = f.yaml().replace(
        "    keepalive: 10s",
        "    keepalive: 10s\n    persistent_keepalive: 25",
    );
    f.expect_err(
        &t,
        "peers[0]: unknown field `persistent_keepalive`",
        "persistent_keepalive",
    );
}

#[test]
fn peers_empty_and_missing() {
    // A gateway may start with no peers (a hub before its spokes, a config
    // from `tunneld init`): a reload adds them. The field itself is required.
    let f = fixture();
    let y = f.yaml();
    let cut = y.find("peers:").expect("peers");
    let t = format!("{}peers: []\n", &y[..cut]);
    assert!(f.parse(&t).expect("no peers yet").peers.is_empty());
    let msg = f.parse(&y[..cut]).expect_err("no peers").to_string();
    assert!(msg.contains("missing field `peers`"), "{msg}");
}

#[test]
fn metrics_listen_defaults_to_loopback() {
    let f = fixture();
    let y = f.yaml();
    let cut = y.find("peers:").expect("peers");
    let with = |m: &str| format!("{}{m}\n{}", &y[..cut], &y[cut..]);
    assert_eq!(f.parse(&y).expect("no section").metrics_listen, None);
    let c = f.parse(&with("metrics: {}")).expect("empty section");
    assert_eq!(c.metrics_listen, Some(DEFAULT_METRICS_LISTEN));
    assert!(DEFAULT_METRICS_LISTEN.ip().is_loopback());
    let c = f
        .parse(&with("metrics: {listen: \"[::1]:9100\"}"))
        .expect("v6");
    assert_eq!(c.metrics_listen, Some("[::1]:9100".parse().expect("addr")));
    f.expect_err(
        &with("metrics: {listen: nowhere}"),
        "metrics.listen",
        "nowhere",
    );
    f.expect_err(&with("metrics: {port: 9}"), "port", "port: 9");
}

#[test]
fn broken_yaml() {
    let f = fixture();
    let t = f.yaml().replace("  mtu: 1420", "  mtu: [1420");
    let err = f.parse(&t).expect_err("broken");
    assert!(
        matches!(
            err,
            ConfigError::Profile(ProfileError { line: Some(_), .. })
        ),
        "{err}"
    );
    let t = f.yaml().replace("listen: 0.0.0.0:51820", "listen: {a");
    assert!(f.parse(&t).is_err());
    assert!(f.parse("").is_err());
    assert!(f.parse("- 1\n- 2\n").is_err());
    let msg = f
        .parse(&f.yaml().replace("mtu: 1420", "mtu: big"))
        .expect_err("type")
        .to_string();
    assert!(
        msg.contains("interface.mtu") && msg.starts_with("<config>:5:"),
        "{msg}"
    );
}

#[test]
fn key_file_mode_0644_refused() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture();
    std::fs::set_permissions(
        f.dir.0.join("a.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let text = f.yaml();
    let msg = f.expect_err(&text, "private_key_file", "private_key_file:");
    assert!(msg.contains("chmod 600"), "{msg}");
}

#[test]
fn key_file_missing() {
    let f = fixture();
    let t = f.yaml().replace("a.key", "nope.key");
    let err = f.parse(&t).expect_err("missing key");
    assert!(matches!(err, ConfigError::Key { .. }), "{err}");
    assert!(err.to_string().contains("nope.key"), "{err}");
}

#[test]
fn load_reads_file_and_names_it() {
    let f = fixture();
    let path = f.dir.0.join("tunnel.yaml");
    std::fs::write(&path, f.yaml()).expect("write");
    let c = load(&path).expect("loads");
    assert_eq!(c.peers.len(), 2);
    std::fs::write(&path, f.yaml().replace("198.18.0.2:51820", "198.18.0.2")).expect("write");
    let msg = load(&path).expect_err("bad").to_string();
    assert!(
        msg.starts_with(&format!("{}:12:15: peers[0].endpoint", path.display())),
        "{msg}"
    );
    let missing = f.dir.0.join("missing.yaml");
    assert!(matches!(load(&missing), Err(ConfigError::Io { .. })));
}

#[test]
fn round_trip_generated_config() {
    let f = fixture();
    let raw = TunnelFile {
        kind: Kind::Tunnel,
        interface: InterfaceFile {
            name: "tun-x".into(),
            addresses: vec![
                Prefix::parse_interface_addr("198.19.0.1/24").expect("addr"),
                Prefix::parse_interface_addr("fd00:19::1/64").expect("addr"),
            ],
            mtu: 1380,
        },
        listen: "[::]:51821".parse().expect("addr"),
        private_key_file: "a.key".into(),
        cipher: CipherKind::None,
        insecure_lab_only: true,
        control_socket: Some("/tmp/x.sock".into()),
        socket_buffer: Size(16 << 20),
        mss_clamp: false,
        dataplane: DataplaneFile {
            offload: false,
            batch: 1,
            workers: 1,
            queue: crate::config::QueueKind::Fifo,
            codel_target: Span(Duration::from_micros(1500)),
            codel_interval: Span(Duration::from_millis(20)),
            queue_limit: 1024,
            ecn: false,
            cpus: Some(vec![0, 1]),
            flows: 3,
        },
        quic: None,
        health: Some(crate::config::HealthFile {
            interval: Span(Duration::from_millis(200)),
            dead_after: Span(Duration::from_secs(1)),
        }),
        pmtud: Some(crate::config::file::PmtudFile {
            enabled: false,
            interval: Span(Duration::from_secs(300)),
        }),
        routes: crate::config::RoutesFile {
            install: crate::config::RouteInstall::OnSession,
            table: 100,
            metric: Some(50),
        },
        metrics: None,
        rekey: RekeyFile {
            after_time: Span(Duration::from_millis(1500)),
            after_bytes: Size(1 << 20),
        },
        peers: vec![
            PeerFile {
                name: "dc-b".into(),
                public_key: f.b,
                endpoint: Some("[fd00::2]:51820".parse().expect("addr")),
                allowed_prefixes: vec!["198.18.2.0/24".parse().expect("p")],
                keepalive: Some(Span(Duration::from_secs(25))),
                transport: TransportKind::Tcp,
                quic: None,
                transit: Some(vec!["dc-c".into()]),
            },
            PeerFile {
                name: "dc-c".into(),
                public_key: f.c,
                endpoint: None,
                allowed_prefixes: vec!["fd00:3::/64".parse().expect("p")],
                keepalive: None,
                transport: TransportKind::Udp,
                quic: None,
                transit: None,
            },
        ],
    };
    let yaml = raw.to_yaml().expect("serializes");
    assert_eq!(parse_file_format(&yaml, "gen").expect("reparses"), raw);
    let from_text = f.parse(&yaml).expect("generated config parses");
    let direct = check(&raw, &f.dir.0, "gen", None).expect("struct checks");
    assert_eq!(from_text, direct);
    assert_eq!(from_text.interface.mtu, 1380);
    assert_eq!(from_text.rekey_after_time, Duration::from_millis(1500));
    assert_eq!(from_text.peers[1].endpoint, None);

    // A struct built in code is held to the same rules (no line then).
    let mut bad = raw.clone();
    bad.peers[1].allowed_prefixes = vec!["198.18.2.0/25".parse().expect("p")];
    let err = check(&bad, &f.dir.0, "gen", None).expect_err("overlap");
    assert!(
        err.to_string()
            .starts_with("gen: peers[1].allowed_prefixes[0]"),
        "{err}"
    );
    let mut bad = raw;
    bad.interface.name = "has space".into();
    assert!(check(&bad, &f.dir.0, "gen", None).is_err());
}

#[test]
fn example_profile_parses() {
    let f = fixture();
    let text = include_str!("../../../profiles/tunnel-example.yaml");
    // The profile names gw-a.key; our fixture key stands in for it.
    std::fs::copy(f.dir.0.join("a.key"), f.dir.0.join("gw-a.key")).expect("copy key");
    let c = f.parse(text).expect("example profile parses");
    assert_eq!(c.interface.name, "tun-a");
    assert!(c
        .interface
        .addresses
        .iter()
        .any(|a| a.to_string() == "198.19.0.1/24"));
    assert!(c.peers.iter().any(|p| p
        .allowed_prefixes
        .iter()
        .any(|a| a.to_string() == "198.18.2.0/24")));
}

#[test]
fn garbage_never_panics() {
    let f = fixture();
    let y = f.yaml();
    // Every prefix of a valid file and some byte mutations: errors, never panics.
    for cut in 0..y.len() {
        if y.is_char_boundary(cut) {
            let _ = f.parse(&y[..cut]);
        }
    }
    for (i, c) in y.char_indices().step_by(7) {
        for r in [":", "-", "[", "\"", " ", "\n"] {
            let mut t = y.clone();
            t.replace_range(i..i + c.len_utf8(), r);
            let _ = f.parse(&t);
        }
    }
}

// ---- transports ----

const PIN: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";

/// The fixture's config with dc-b on `transport` (plus `extra_peer` lines
/// under dc-b) and `top` appended at the top level.
fn with_transport(f: &Fixture, extra_peer: &str, top: &str) -> String {
    let y = f.yaml().replace(
        "    keepalive: 10s\n",
        &format!("    keepalive: 10s\n{extra_peer}"),
    );
    format!("{y}{top}")
}

#[test]
fn transport_defaults_to_udp_and_tcp_needs_nothing_else() {
    let f = fixture();
    let c = f.parse(&f.yaml()).expect("valid");
    assert!(c.peers.iter().all(|p| p.transport == TransportKind::Udp));
    assert_eq!(c.quic, None);
    let c = f
        .parse(&with_transport(&f, "    transport: tcp\n", ""))
        .expect("tcp peer");
    assert_eq!(c.peers[0].transport, TransportKind::Tcp);
    assert_eq!(c.peers[1].transport, TransportKind::Udp);
}

#[test]
fn quic_peer_with_endpoint_section_parses() {
    let f = fixture();
    let text = with_transport(
        &f,
        &format!("    transport: quic\n    quic:\n      spki_sha256: \"{PIN}\"\n"),
        "quic:\n  cert_file: a.crt\n  key_file: a.crt.key\n  port: 51821\n  idle_timeout: 20s\n",
    );
    let c = f.parse(&text).expect("quic config");
    let q = c.quic.expect("quic section");
    assert_eq!(q.listen.port(), 51821);
    assert_eq!(q.cert_file, f.dir.0.join("a.crt"));
    assert_eq!(q.idle_timeout, Duration::from_secs(20));
    assert_eq!(q.keepalive, DEFAULT_QUIC_KEEPALIVE);
    assert_eq!(c.peers[0].transport, TransportKind::Quic);
    let pin = c.peers[0].quic_pin.expect("pin");
    assert_eq!(pin.as_bytes()[..4], [0xab, 0xcd, 0xef, 0x12]);
}

#[test]
fn transport_rules_name_field_and_line() {
    let f = fixture();
    let quic_top = "quic:\n  cert_file: a.crt\n  key_file: a.crt.key\n  port: 51821\n";
    // Unknown transport: a parse error on the value.
    let t = with_transport(&f, "    transport: sctp\n", "");
    let m = f.expect_err(&t, "transport", "transport: sctp");
    assert!(m.contains("udp") && m.contains("tcp"), "{m}");
    // quic without the peer's pin.
    let t = with_transport(&f, "    transport: quic\n", quic_top);
    let m = f.expect_err(&t, "peers[0].transport", "transport: quic");
    assert!(m.contains("spki_sha256"), "{m}");
    // quic without our certificate.
    let t = with_transport(
        &f,
        &format!("    transport: quic\n    quic:\n      spki_sha256: \"{PIN}\"\n"),
        "",
    );
    let m = f.expect_err(&t, "peers[0].transport", "transport: quic");
    assert!(m.contains("cert_file"), "{m}");
    // A pin that is not 32 bytes.
    let t = with_transport(
        &f,
        "    transport: quic\n    quic:\n      spki_sha256: \"AAAA\"\n",
        quic_top,
    );
    f.expect_err(&t, "spki_sha256", "spki_sha256");
    // A pin on a tcp peer.
    let t = with_transport(
        &f,
        &format!("    transport: tcp\n    quic:\n      spki_sha256: \"{PIN}\"\n"),
        "",
    );
    let m = f.expect_err(&t, "peers[0].quic", "    quic:");
    assert!(m.contains("tcp"), "{m}");
    // A quic section nobody uses.
    let t = with_transport(&f, "", quic_top);
    let m = f.expect_err(&t, "quic", "quic:");
    assert!(m.contains("no peer"), "{m}");
    // QUIC on the UDP port while dc-c still uses udp.
    let t = with_transport(
        &f,
        &format!("    transport: quic\n    quic:\n      spki_sha256: \"{PIN}\"\n"),
        "quic:\n  cert_file: a.crt\n  key_file: a.crt.key\n",
    );
    let line = t.lines().position(|l| l == "quic:").expect("quic line") + 1;
    let m = f.expect_err_line(&t, "quic", line);
    assert!(m.contains("quic.port") && m.contains("dc-c"), "{m}");
    let t = with_transport(
        &f,
        &format!("    transport: quic\n    quic:\n      spki_sha256: \"{PIN}\"\n"),
        "quic:\n  cert_file: a.crt\n  key_file: a.crt.key\n  port: 51820\n",
    );
    f.expect_err(&t, "quic.port", "port: 51820");
    // Keepalive not below the idle timeout.
    let t = with_transport(
        &f,
        &format!("    transport: quic\n    quic:\n      spki_sha256: \"{PIN}\"\n"),
        "quic:\n  cert_file: a.crt\n  key_file: a.crt.key\n  port: 51821\n  \
         idle_timeout: 5s\n  keepalive: 5s\n",
    );
    f.expect_err(&t, "quic.keepalive", "keepalive: 5s");
}

#[test]
fn transport_example_profiles_parse() {
    let f = fixture();
    std::fs::copy(f.dir.0.join("a.key"), f.dir.0.join("gw-a.key")).expect("copy key");
    let tcp = f
        .parse(include_str!("../../../profiles/tunnel-tcp-example.yaml"))
        .expect("tcp profile");
    assert_eq!(tcp.peers[0].transport, TransportKind::Tcp);
    let quic = f
        .parse(include_str!("../../../profiles/tunnel-quic-example.yaml"))
        .expect("quic profile");
    assert_eq!(quic.peers[0].transport, TransportKind::Quic);
    assert!(quic.quic.is_some());
}

#[test]
fn health_and_routes_sections() {
    let f = fixture();
    let base = f.yaml();
    // Defaults: no fast detection, routes always in main.
    let c = f.parse(&base).expect("base parses");
    assert_eq!(c.health, None);
    assert_eq!(c.routes.install, RouteInstall::Always);
    assert_eq!(c.routes.table, MAIN_ROUTE_TABLE);
    assert_eq!(c.routes.metric, None);

    let text = format!(
        "{base}health:\n  interval: 200ms\n  dead_after: 1s\nroutes:\n  install: on-session\n  table: 100\n  metric: 20\n"
    );
    let c = f.parse(&text).expect("health and routes parse");
    assert_eq!(
        c.health,
        Some(HealthConfig {
            interval: Duration::from_millis(200),
            dead_after: Duration::from_secs(1)
        })
    );
    assert_eq!(c.routes.install, RouteInstall::OnSession);
    assert_eq!((c.routes.table, c.routes.metric), (100, Some(20)));
    let c = f
        .parse(&format!("{base}routes:\n  table: main\n  install: off\n"))
        .expect("table main parses");
    assert_eq!((c.routes.table, c.routes.install), (254, RouteInstall::Off));

    // Bad values name the field and the line.
    f.expect_err(
        &format!("{base}routes:\n  table: 255\n"),
        "reserved",
        "table: 255",
    );
    f.expect_err(
        &format!("{base}routes:\n  table: loopy\n"),
        "not a routing table",
        "table: loopy",
    );
    f.expect_err(
        &format!("{base}routes:\n  table: 4294967296\n"),
        "not a routing table",
        "table: 4294967296",
    );
    f.expect_err(
        &format!("{base}routes:\n  install: sometimes\n"),
        "install",
        "install: sometimes",
    );
    f.expect_err(
        &format!("{base}routes:\n  colour: red\n"),
        "colour",
        "colour: red",
    );
    let msg = f.expect_err(
        &format!("{base}health:\n  interval: 10ms\n  dead_after: 1s\n"),
        "health.interval",
        "interval: 10ms",
    );
    assert!(msg.contains("out of range"), "{msg}");
    let msg = f.expect_err(
        &format!("{base}health:\n  interval: 600ms\n  dead_after: 1s\n"),
        "health.dead_after",
        "dead_after: 1s",
    );
    assert!(msg.contains("2 x health.interval"), "{msg}");
    f.expect_err(
        &format!("{base}health:\n  interval: 200ms\n"),
        "dead_after",
        "interval: 200ms",
    );
}

#[test]
fn pmtud_defaults_bounds_and_located_errors() {
    let f = fixture();
    let base = f.yaml();
    let c = f.parse(&base).expect("parses");
    assert_eq!(c.pmtud, PmtudConfig::default());
    assert_eq!(
        (c.pmtud.enabled, c.pmtud.interval),
        (true, Duration::from_secs(120))
    );
    let c = f
        .parse(&format!("{base}pmtud:\n  enabled: false\n"))
        .expect("off");
    assert_eq!(
        (c.pmtud.enabled, c.pmtud.interval),
        (false, Duration::from_secs(120))
    );
    let c = f
        .parse(&format!("{base}pmtud:\n  interval: 10m\n"))
        .expect("interval");
    assert_eq!(c.pmtud.interval, Duration::from_secs(600));
    let msg = f.expect_err(
        &format!("{base}pmtud:\n  interval: 1s\n"),
        "pmtud.interval",
        "interval: 1s",
    );
    assert!(msg.contains("out of range 10s..=3600s"), "{msg}");
    f.expect_err(
        &format!("{base}pmtud:\n  interval: 2h\n"),
        "pmtud.interval",
        "interval: 2h",
    );
    f.expect_err(
        &format!("{base}pmtud:\n  enabled: maybe\n"),
        "enabled",
        "enabled: maybe",
    );
    f.expect_err(
        &format!("{base}pmtud:\n  probes: 3\n"),
        "probes",
        "probes: 3",
    );
}

#[test]
fn transit_names_other_peers() {
    let f = fixture();
    let base = f.yaml();
    let with = |list: &str| {
        base.replace(
            "    keepalive: 10s\n",
            &format!("    keepalive: 10s\n    transit: {list}\n"),
        )
    };
    let c = f.parse(&with("[dc-c]")).expect("transit parses");
    assert_eq!(c.peers[0].transit, Some(vec![1]));
    assert_eq!(c.peers[1].transit, None);
    assert_eq!(
        f.parse(&with("[]")).expect("empty").peers[0].transit,
        Some(vec![])
    );
    let msg = f.expect_err(&with("[dc-x]"), "peers[0].transit[0]", "transit: [dc-x]");
    assert!(msg.contains("not the name of a peer"), "{msg}");
    let msg = f.expect_err(&with("[dc-b]"), "peers[0].transit[0]", "transit: [dc-b]");
    assert!(msg.contains("itself"), "{msg}");
    let msg = f.expect_err(
        &with("[dc-c, dc-c]"),
        "peers[0].transit[1]",
        "transit: [dc-c, dc-c]",
    );
    assert!(msg.contains("twice"), "{msg}");
}

#[test]
fn block_list_items_are_named_by_their_own_line() {
    let f = fixture();
    // peers[1] is the `- name: dc-c` item on line 15; its second
    // allowed prefix is the `- ` item on line 19.
    let t = f
        .yaml()
        .replace("      - 198.18.3.0/24", "      - 198.18.2.128/25");
    let msg = f.expect_err_line(&t, "peers[1].allowed_prefixes[1]", 19);
    assert!(msg.starts_with("<config>:19:9: "), "{msg}");
    let t = f.yaml().replace("  - name: dc-c", "  - name: dc-b");
    let msg = f.expect_err_line(&t, "peers[1].name", 15);
    assert!(msg.starts_with("<config>:15:11: "), "{msg}");
}
