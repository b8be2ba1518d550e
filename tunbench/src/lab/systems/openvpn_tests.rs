//! Unit tests of the openvpn row's generated files (config text, PKI) and
//! its log parsing.

use std::os::unix::fs::PermissionsExt;

use super::*;

fn end(role: Role) -> End {
    let (local, remote, il, ir, peer) = match role {
        Role::Server => (GW_A_WAN_V4, GW_B_WAN_V4, INNER_A, INNER_B, "gw-b"),
        Role::Client => (GW_B_WAN_V4, GW_A_WAN_V4, INNER_B, INNER_A, "gw-a"),
    };
    End {
        role,
        ifname: "tb1x1ova".into(),
        local,
        remote,
        inner_local: il,
        inner_remote: ir,
        ca: "/lab/ca.crt".into(),
        cert: "/lab/me.crt".into(),
        key: "/lab/me.key".into(),
        peer_cn: peer.into(),
    }
}

/// (directive, rest of the line) of each non-comment line.
fn directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(' ') {
            Some((d, rest)) => (d.to_string(), rest.to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

fn value<'a>(d: &'a [(String, String)], name: &str) -> Option<&'a str> {
    d.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn server_config_is_p2p_tls_server_with_gcm() {
    let text = config_text(&end(Role::Server));
    let d = directives(&text);
    assert_eq!(value(&d, "data-ciphers"), Some("AES-256-GCM"), "{text}");
    assert_eq!(value(&d, "tls-server"), Some(""), "{text}");
    assert_eq!(value(&d, "dh"), Some("none"), "{text}");
    assert_eq!(value(&d, "disable-dco"), Some(""), "{text}");
    assert_eq!(value(&d, "proto"), Some("udp4"), "{text}");
    assert_eq!(value(&d, "dev"), Some("tb1x1ova"), "{text}");
    assert_eq!(value(&d, "local"), Some("198.18.0.1"), "{text}");
    assert_eq!(value(&d, "remote"), Some("198.18.0.2"), "{text}");
    assert_eq!(value(&d, "port"), Some("1194"), "{text}");
    assert_eq!(
        value(&d, "ifconfig"),
        Some("198.19.2.1 198.19.2.2"),
        "{text}"
    );
    assert_eq!(value(&d, "remote-cert-tls"), Some("client"), "{text}");
    assert_eq!(value(&d, "verify-x509-name"), Some("gw-b name"), "{text}");
    assert_eq!(value(&d, "key"), Some("/lab/me.key"), "{text}");
    assert!(value(&d, "tls-client").is_none(), "{text}");
}

#[test]
fn client_config_mirrors_the_server() {
    let text = config_text(&end(Role::Client));
    let d = directives(&text);
    assert_eq!(value(&d, "tls-client"), Some(""), "{text}");
    assert!(value(&d, "tls-server").is_none(), "{text}");
    assert!(value(&d, "dh").is_none(), "dh is a server option: {text}");
    assert_eq!(value(&d, "data-ciphers"), Some("AES-256-GCM"), "{text}");
    assert_eq!(
        value(&d, "ifconfig"),
        Some("198.19.2.2 198.19.2.1"),
        "{text}"
    );
    assert_eq!(value(&d, "remote-cert-tls"), Some("server"), "{text}");
    assert_eq!(value(&d, "verify-x509-name"), Some("gw-a name"), "{text}");
}

#[test]
fn configs_use_no_deprecated_or_weak_options_and_no_duplicates() {
    // Removed or deprecated in 2.5/2.6, or static-key / compression modes.
    const BAD: &[&str] = &[
        "secret",
        "cipher",
        "ncp-ciphers",
        "ncp-disable",
        "comp-lzo",
        "compress",
        "allow-compression",
        "ns-cert-type",
        "tls-remote",
        "keysize",
        "key-method",
        "no-iv",
        "no-replay",
        "tun-ipv6",
        "prng",
        "client-cert-not-required",
        "link-mtu",
        "mtu-dynamic",
        "max-routes",
        "ifconfig-pool-linear",
        "opt-verify",
        "data-ciphers-fallback",
    ];
    for role in [Role::Server, Role::Client] {
        let text = config_text(&end(role));
        let d = directives(&text);
        for (k, _) in &d {
            assert!(!BAD.contains(&k.as_str()), "{k} in {text}");
            assert_eq!(
                d.iter().filter(|(j, _)| j == k).count(),
                1,
                "{k} twice in {text}"
            );
        }
        assert!(!text.contains("BF-CBC") && !text.contains("CBC"), "{text}");
        // Every data-channel cipher offered is AES-256-GCM, nothing else.
        let offered: Vec<&str> = value(&d, "data-ciphers")
            .unwrap_or_default()
            .split(':')
            .collect();
        assert_eq!(offered, [CIPHER]);
        // Every address is inside the lab's ranges.
        for k in ["local", "remote"] {
            let a: Ipv4Addr = value(&d, k).unwrap_or_default().parse().expect("address");
            assert_eq!(a.octets()[..2], [198, 18], "{k} {a}");
        }
        for a in value(&d, "ifconfig").unwrap_or_default().split(' ') {
            let a: Ipv4Addr = a.parse().expect("inner address");
            assert_eq!(a.octets()[..3], [198, 19, 2], "ifconfig {a}");
        }
    }
}

#[test]
fn tunnel_addresses_differ_from_the_other_rows() {
    for a in [INNER_A, INNER_B] {
        assert!(
            a.octets()[0] == 198 && (18..=19).contains(&a.octets()[1]),
            "{a}"
        );
        // tunneld uses 198.19.0.0/24, WireGuard 198.19.1.0/24.
        assert!(a.octets()[2] >= 2, "{a}");
    }
    assert_ne!(INNER_A, INNER_B);
}

#[test]
fn cipher_is_read_from_the_log() {
    let log = "2024 x Outgoing Data Channel: Cipher 'AES-256-GCM' initialized\n\
               2024 x Data Channel: cipher 'AES-256-GCM', peer-id: 0\n\
               2024 x Initialization Sequence Completed\n";
    assert_eq!(negotiated_cipher(log), Some("AES-256-GCM"));
    let chacha = "Data Channel: cipher 'CHACHA20-POLY1305', peer-id: 0";
    assert_eq!(negotiated_cipher(chacha), Some("CHACHA20-POLY1305"));
    assert_eq!(negotiated_cipher(""), None);
    assert_eq!(negotiated_cipher("Data Channel: cipher '"), None);
    assert_eq!(negotiated_cipher("Data Channel: cipher 'AES"), None);
    assert_eq!(negotiated_cipher("Data Channel: cipher ''"), None);
    assert_eq!(negotiated_cipher("Initialization Sequence Completed"), None);
    // Before the data-channel line: the p2p negotiation result.
    let ncp = "x P2P mode NCP negotiation result: TLS_export=1, DATA_v2=1, \
               peer-id 9279984, cipher=AES-256-GCM\nx Initialization Sequence Completed\n";
    assert_eq!(negotiated_cipher(ncp), Some("AES-256-GCM"));
    let ncp_end = "P2P mode NCP negotiation result: DATA_v2=1, cipher=BF-CBC";
    assert_eq!(negotiated_cipher(ncp_end), Some("BF-CBC"));
    assert_eq!(negotiated_cipher("NCP negotiation result: cipher=\n"), None);
    assert_eq!(
        negotiated_cipher("NCP negotiation result: DATA_v2=1\n"),
        None
    );
    // The cipher= of another line is not taken for the result.
    assert_eq!(
        negotiated_cipher("NCP negotiation result: DATA_v2=1\nfoo cipher=X\n"),
        None
    );
}

#[test]
fn pki_conf_separates_ca_server_and_client() {
    let c = pki_conf();
    let section = |name: &str| -> String {
        let head = format!("[{name}]\n");
        let start = c.find(&head).map(|i| i + head.len()).expect("section");
        c[start..]
            .split("\n[")
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert!(section("ca").contains("CA:TRUE"));
    assert!(section("ca").contains("keyCertSign"));
    assert!(section("server").contains("CA:FALSE"));
    assert!(section("server").contains("serverAuth"));
    assert!(!section("server").contains("clientAuth"));
    assert!(section("client").contains("clientAuth"));
    assert!(!section("client").contains("serverAuth"));
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tb-ovpn-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn private_files_are_0600_even_when_they_existed() {
    let d = temp_dir("mode");
    let p = d.join("k.key");
    std::fs::write(&p, "old").expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    write_private(&p, b"new").expect("write_private");
    assert_eq!(mode(&p), 0o600);
    assert_eq!(std::fs::read(&p).expect("read"), b"new");
    let q = d.join("fresh.key");
    write_private(&q, b"x").expect("write_private");
    assert_eq!(mode(&q), 0o600);
    assert!(write_private(&d.join("no/such/dir.key"), b"x").is_err());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn throwaway_pki_verifies_and_is_p256() {
    let Some(ossl) = which("openssl") else {
        eprintln!("skipped: no openssl command");
        return;
    };
    let d = temp_dir("pki");
    let pki = make_pki(&ossl, &d).expect("PKI");
    for key in [&pki.server.1, &pki.client.1] {
        assert_eq!(mode(key), 0o600, "{}", key.display());
    }
    assert!(!d.join("ca.key").exists(), "the CA key is thrown away");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    for (crt, eku) in [
        (&pki.server.0, "TLS Web Server Authentication"),
        (&pki.client.0, "TLS Web Client Authentication"),
    ] {
        openssl(&ossl, &["verify", "-CAfile", &s(&pki.ca), &s(crt)]).expect("chain verifies");
        let text = openssl(&ossl, &["x509", "-noout", "-text", "-in", &s(crt)]).expect("x509");
        let text = String::from_utf8_lossy(&text);
        assert!(
            text.contains("prime256v1") || text.contains("P-256"),
            "{text}"
        );
        assert!(text.contains(eku), "{text}");
        assert!(text.contains("CA:FALSE"), "{text}");
    }
    // A certificate not from this CA is rejected (the check can fail).
    let other = temp_dir("pki2");
    let pki2 = make_pki(&ossl, &other).expect("second PKI");
    assert!(openssl(
        &ossl,
        &["verify", "-CAfile", &s(&pki.ca), &s(&pki2.server.0)]
    )
    .is_err());
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&other);
}

#[test]
fn openssl_failure_names_the_command() {
    let Some(ossl) = which("openssl") else {
        eprintln!("skipped: no openssl command");
        return;
    };
    let e = openssl(&ossl, &["x509", "-in", "/nonexistent/tunbench.crt"]).expect_err("fails");
    assert!(e.contains("openssl x509"), "{e}");
}
