//! Unit tests of the scenario profile: the shipped profiles parse, and bad
//! input is rejected with the field and line named.

use super::*;

const BASE: &str = "\
kind: scenario
name: t
wan:
  rate: 200M
  rtt: 10ms
  loss: 0.1%
systems: [raw, tunneld]
test:
  streams: [1, 4]
  duration: 2s
";

fn err(text: &str) -> String {
    match Scenario::parse(text, "t.yaml") {
        Ok(s) => panic!("accepted bad profile: {s:?}"),
        Err(e) => e.to_string(),
    }
}

fn with(line: usize, replacement: &str) -> String {
    let mut lines: Vec<String> = BASE.lines().map(str::to_string).collect();
    lines[line - 1] = replacement.to_string();
    lines.join("\n") + "\n"
}

#[test]
fn base_parses() {
    let s = Scenario::parse(BASE, "t.yaml").expect("base profile parses");
    assert_eq!(s.wan.rate, Some(Rate(200_000_000)));
    assert_eq!(s.wan.one_way(), Duration::from_millis(5));
    assert_eq!(s.wan.loss, Some(0.1));
    assert_eq!(s.systems, vec![SystemKind::Raw, SystemKind::Tunneld]);
    assert_eq!(s.test.streams, vec![1, 4]);
    assert_eq!(s.test.repeats, 1);
    assert!(s.wan.emulates());
}

#[test]
fn shipped_profiles_parse() {
    let quick = Scenario::quick().expect("built-in profile parses");
    assert!(quick.estimated_time() < Duration::from_secs(120));
    // Every shipped `kind: scenario` profile parses.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("profiles dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        if !text.contains("kind: scenario") {
            continue;
        }
        Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        n += 1;
    }
    assert!(n >= 7, "expected the shipped scenario profiles, found {n}");
    let app = Scenario::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/appliance-350m.yaml"),
    )
    .expect("appliance profile");
    assert_eq!(app.wan.rate, Some(Rate(350_000_000)));
    assert_eq!(app.wan.one_way(), Duration::from_millis(20));
}

#[test]
fn unknown_field_names_field_and_line() {
    let e = err(&with(6, "  colour: blue"));
    assert!(e.contains("colour"), "{e}");
    assert!(e.contains("t.yaml:6:"), "{e}");
}

#[test]
fn zero_and_negative_values_name_field_and_line() {
    for (line, text, field) in [
        (4, "  rate: 0", "wan.rate"),
        (4, "  rate: -5M", "wan.rate"),
        (5, "  rtt: -10ms", "wan.rtt"),
        (6, "  loss: -1%", "wan.loss"),
        (6, "  loss: 100%", "wan.loss"),
        (9, "  streams: [0, 4]", "test.streams"),
        (9, "  streams: []", "test.streams"),
        (9, "  streams: [4, 4]", "test.streams"),
        (10, "  duration: 0s", "test.duration"),
        (10, "  duration: -3s", "test.duration"),
    ] {
        let e = err(&with(line, text));
        assert!(e.contains(field), "{text}: {e}");
        assert!(e.contains(&format!("t.yaml:{line}:")), "{text}: {e}");
    }
}

#[test]
fn cross_field_rules_name_field_and_line() {
    let text = BASE.replace("  rtt: 10ms\n", "  rtt: 10ms\n  delay: 5ms\n");
    let e = err(&text);
    assert!(e.contains("wan.delay") && e.contains("t.yaml:6:"), "{e}");
    let text = BASE.replace("  loss: 0.1%\n", "  loss: 0.1%\n  jitter: 20ms\n");
    let e = err(&text);
    assert!(e.contains("wan.jitter") && e.contains("t.yaml:7:"), "{e}");
    let text = format!("{BASE}tunneld:\n  mtu: 100\n");
    let e = err(&text);
    assert!(e.contains("tunneld.mtu") && e.contains("t.yaml:12:"), "{e}");
}

#[test]
fn wrong_kind_and_system() {
    let e = err(&with(1, "kind: tunnel"));
    assert!(e.contains("kind") && e.contains("t.yaml:1:"), "{e}");
    let e = err(&with(7, "systems: [raw, l2tp]"));
    assert!(e.contains("l2tp") && e.contains("t.yaml:7:"), "{e}");
    let e = err("kind: scenario\nname: x\n");
    assert!(e.contains("systems") || e.contains("test"), "{e}");
}

#[test]
fn percent_parser() {
    assert_eq!(parse_percent("0.1%"), Ok(0.1));
    assert_eq!(parse_percent(" 2 "), Ok(2.0));
    assert!(parse_percent("abc").is_err());
    assert!(parse_percent("NaN").is_err());
}

#[test]
fn no_wan_means_no_emulation() {
    let text = "kind: scenario\nname: x\nsystems: [raw]\ntest:\n  streams: [1]\n  duration: 1s\n";
    let s = Scenario::parse(text, "x").expect("minimal profile");
    assert!(!s.wan.emulates());
}

#[test]
fn transport_rows_parse_and_name_their_transport() {
    for (text, name) in [
        (
            include_str!("../../../profiles/lab-transports.yaml"),
            "lab-transports",
        ),
        (
            include_str!("../../../profiles/lab-transports-loss.yaml"),
            "lab-transports-loss",
        ),
    ] {
        let s = Scenario::parse(text, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            s.systems,
            vec![
                SystemKind::Raw,
                SystemKind::Tunneld,
                SystemKind::TunneldTcp,
                SystemKind::TunneldQuic
            ]
        );
    }
    let names: Vec<&str> = [SystemKind::TunneldTcp, SystemKind::TunneldQuic]
        .iter()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(names, ["tunneld-tcp", "tunneld-quic"]);
    assert_eq!(
        SystemKind::TunneldQuic.tunneld_transport(),
        Some(tunneld::config::TransportKind::Quic)
    );
    assert_eq!(SystemKind::Raw.tunneld_transport(), None);
}

#[test]
fn comparison_rows_parse_by_name() {
    let text = "kind: scenario\nname: x\nsystems: [raw, boringtun, openvpn, wireguard-go]\n\
                test:\n  streams: [1]\n  duration: 1s\n";
    let s = Scenario::parse(text, "x").expect("profile with the comparison rows");
    assert_eq!(
        s.systems,
        vec![
            SystemKind::Raw,
            SystemKind::Boringtun,
            SystemKind::Openvpn,
            SystemKind::WireguardGo
        ]
    );
    for k in &s.systems {
        assert!(text.contains(k.as_str()), "{k}");
        assert_eq!(k.tunneld_transport(), None, "{k}");
    }
    // Near misses are rejected with the name and line.
    let e = err(&with(7, "systems: [raw, boring-tun]"));
    assert!(e.contains("boring-tun") && e.contains("t.yaml:7:"), "{e}");
    let e = err(&with(7, "systems: [openvpn, openvpn]"));
    assert!(e.contains("twice"), "{e}");
}

#[test]
fn tunneld_flows_setting() {
    let s = Scenario::parse(
        &format!("{BASE}tunneld:\n  dataplane:\n    flows: 4\n"),
        "t.yaml",
    )
    .expect("flows 4 parses");
    assert_eq!(s.tunneld.dataplane.flows, 4);
    assert_eq!(
        Scenario::parse(BASE, "t.yaml")
            .expect("base")
            .tunneld
            .dataplane
            .flows,
        1,
        "default"
    );
    for bad in ["0", "17"] {
        let e = err(&format!("{BASE}tunneld:\n  dataplane:\n    flows: {bad}\n"));
        assert!(
            e.contains("tunneld.dataplane.flows") && e.contains("t.yaml:13:"),
            "{e}"
        );
    }
    let e = err(&format!("{BASE}tunneld:\n  dataplane:\n    flows: many\n"));
    assert!(e.contains("flows") && e.contains("t.yaml:13:"), "{e}");
}

#[test]
fn ha_section_rules_name_the_field() {
    let base = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/lab-ha.yaml"),
    )
    .expect("lab-ha profile");
    let s = Scenario::parse(&base, "ha.yaml").expect("shipped HA profile parses");
    let ha = s.ha.expect("ha section");
    assert_eq!(ha.pairs, 2);
    assert_eq!(ha.failover.kill_at.0, Duration::from_secs(5));
    let bad = |from: &str, to: &str, field: &str| {
        let text = base.replacen(from, to, 1);
        assert_ne!(text, base, "{from} is in the profile");
        let e = Scenario::parse(&text, "ha.yaml")
            .expect_err("refused")
            .to_string();
        assert!(e.contains(field), "{field} missing in: {e}");
    };
    bad("  pairs: 2", "  pairs: 1", "ha.pairs");
    bad("  pairs: 2", "  pairs: 9", "ha.pairs");
    bad("    return_at: 11s", "    return_at: 30s", "ha.failover");
    bad("    kill_at: 5s", "    kill_at: 12s", "ha.failover");
    bad("    bin: 10ms", "    bin: 1ms", "ha.failover.bin");
    bad("    dead_after: 1s", "    dead_after: 300ms", "ha.health");
    bad("    at: 4s", "    at: 10s", "ha.drain.at");
    bad("systems: [tunneld]", "systems: [tunneld, raw]", "systems");
    bad("wan: {}", "wan: { rate: 1G }", "wan");
    bad(
        "    settle: 1s",
        "    settle: 1s\n    colour: red",
        "colour",
    );
}

const WG_BASE: &str = "kind: scenario\nname: x\ntest:\n  streams: [1]\n  duration: 1s\nsystems:\n";

#[test]
fn wireguard_rows_by_binary_parse() {
    let text = format!(
        "{WG_BASE}  - raw\n  - gotatun\n  - wireguard-kernel\n  - ipsec-kernel\n\
         \x20 - wireguard: {{binary: /opt/wg/wireguard-go, name: wireguard-go-2025}}\n\
         \x20 - wireguard:\n      binary: neptun-cli\n      name: neptun\n      flavour: boringtun\n\
         \x20     args: [--threads, \"2\"]\n      env: {{WG_LOG_LEVEL: error}}\n      start_timeout: 3s\n"
    );
    let s = Scenario::parse(&text, "x").unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = s.systems.iter().map(System::as_str).collect();
    assert_eq!(
        names,
        [
            "raw",
            "gotatun",
            "wireguard-kernel",
            "ipsec-kernel",
            "wireguard-go-2025",
            "neptun"
        ]
    );
    let System::Wireguard(go) = &s.systems[4] else {
        panic!("{:?}", s.systems[4])
    };
    assert_eq!(go.binary, std::path::PathBuf::from("/opt/wg/wireguard-go"));
    assert_eq!(go.flavour, Flavour::Auto);
    assert_eq!(go.start_timeout(), Duration::from_secs(10));
    let System::Wireguard(nep) = &s.systems[5] else {
        panic!("{:?}", s.systems[5])
    };
    assert_eq!(nep.flavour, Flavour::Boringtun);
    assert_eq!(nep.args, ["--threads", "2"]);
    assert_eq!(
        nep.env.get("WG_LOG_LEVEL").map(String::as_str),
        Some("error")
    );
    assert_eq!(nep.start_timeout(), Duration::from_secs(3));
    assert!(s.systems.iter().all(|r| r.tunneld_transport().is_none()));
    // The report's copy of the rows reads back as the same rows.
    let yaml = serde_norway::to_string(&s.systems).expect("serializes");
    assert!(yaml.contains("- wireguard:"), "{yaml}");
    let back: Vec<System> = serde_norway::from_str(&yaml).expect("reparses");
    assert_eq!(back, s.systems);
}

#[test]
fn bad_wireguard_rows_name_the_problem() {
    let row = |r: &str| err(&format!("{WG_BASE}  - raw\n  - {r}\n"));
    let cases = [
        // Duplicate names: two binary rows, or a binary row taking a built-in name.
        (
            "wireguard: {binary: /a/wireguard-go, name: wg}\n  - wireguard: {binary: /b/boringtun, name: wg}",
            "both named \"wg\"",
        ),
        ("wireguard: {binary: /a/wireguard-go, name: raw}", "both named \"raw\""),
        ("wireguard: {binary: /a/wireguard-go, name: \"\"}", "row name"),
        ("wireguard: {binary: /a/wireguard-go, name: \"my wg\"}", "row name"),
        ("wireguard: {binary: \"\", name: wg}", "`binary:` is empty"),
        ("wireguard: {binary: bin/wireguard-go, name: wg}", "relative"),
        ("wireguard: {binary: /a/wg, name: wg, flavour: rust}", "unknown variant `rust`"),
        ("wireguard: {binary: /a/wg, name: wg, colour: red}", "unknown field `colour`"),
        ("wireguard: {name: wg}", "missing field `binary`"),
        ("wireguard: {binary: /a/wg}", "missing field `name`"),
        ("wireguard: {binary: /a/wg, name: wg, start_timeout: 0s}", "start_timeout"),
        ("wireguard: {binary: /a/wg, name: wg, start_timeout: 10min}", "start_timeout"),
        ("wireguard: {binary: /a/wg, name: wg, env: {\"A=B\": x}}", "not a variable name"),
        ("openvpn: {binary: /a/wg, name: wg}", "unknown system `openvpn:`"),
        (
            "wireguard: {binary: /a/wg, name: wg}\n    tunneld: {}",
            "one system per list item",
        ),
        ("{}", "empty map"),
        ("wireguard-rs", "unknown variant `wireguard-rs`"),
    ];
    for (r, says) in cases {
        let e = row(r);
        assert!(e.contains(says), "{r}: {e}");
        // Line 8 is the second item; the duplicate's is the third, line 9.
        assert!(
            e.starts_with("t.yaml:8:") || e.starts_with("t.yaml:9:5: systems[2]: "),
            "{r}: not the item's line: {e}"
        );
    }
    let many: String = (0..=MAX_UAPI_ROWS)
        .map(|i| format!("  - wireguard: {{binary: /a/wg, name: wg{i}}}\n"))
        .collect();
    let e = err(&format!("{WG_BASE}{many}"));
    assert!(e.contains("at most 16"), "{e}");
}

#[test]
fn block_list_items_are_named_by_their_own_line() {
    let block =
        |items: &str| BASE.replace("systems: [raw, tunneld]\n", &format!("systems:\n{items}"));
    // Lines 8.. are the `- ` items of `systems`.
    let e = err(&block("  - raw\n  - l2tp\n"));
    assert!(
        e.starts_with("t.yaml:9:5: systems[1]: ") && e.contains("l2tp"),
        "{e}"
    );
    let e = err(&block("  - raw\n  - tunneld\n  - raw\n"));
    assert!(e.contains("listed twice"), "{e}");
    let e = err(&BASE.replace("  streams: [1, 4]\n", "  streams:\n    - 1\n    - 0\n"));
    assert!(e.starts_with("t.yaml:11:7: test.streams[1]: "), "{e}");
}
