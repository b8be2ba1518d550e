//! Unit tests of the sweep profile parser: the grid expands as written,
//! malformed profiles name the field and the line.

use super::*;

const TINY: &str = "\
kind: sweep
name: tiny
wan:
  rate: 200M
  rtt: 10ms
test:
  duration: 2s
  warmup: 500ms
grid:
  batch: [8, 64]
  workers: [1, 2]
";

fn parse(text: &str) -> Result<SweepProfile, SweepError> {
    SweepProfile::parse(text, "t.yaml", Path::new("."))
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tiny_grid_expands_to_four_cells() {
    let p = parse(TINY).expect("parses");
    let keys: Vec<String> = p.cells.iter().map(|c| c.key()).collect();
    assert_eq!(
        keys,
        [
            "batch=8,workers=1",
            "batch=8,workers=2",
            "batch=64,workers=1",
            "batch=64,workers=2"
        ]
    );
    assert_eq!(p.knobs, vec![Knob::Batch, Knob::Workers]);
    assert_eq!(p.scenario.wan.rate, Some(Rate(200_000_000)));
    assert_eq!(p.file.test.warmup.0, Duration::from_millis(500));
}

#[test]
fn sizes_and_ciphers_become_canonical_values() {
    let t = TINY.replace(
        "  batch: [8, 64]\n  workers: [1, 2]\n",
        "  window: [256K, 4M]\n  cipher: [aes-256-gcm, none]\n",
    );
    let p = parse(&t).expect("parses");
    assert_eq!(p.cells.len(), 4);
    assert_eq!(p.cells[0].key(), "cipher=aes-256-gcm,window=262144");
}

#[test]
fn points_are_a_listed_set() {
    let t = TINY.replace(
        "grid:\n  batch: [8, 64]\n  workers: [1, 2]\n",
        "points:\n  - {batch: 8, offload: false}\n  - {batch: 64}\n",
    );
    let p = parse(&t).expect("parses");
    assert_eq!(p.cells.len(), 2);
    assert_eq!(p.cells[0].key(), "offload=false,batch=8");
    assert_eq!(p.knobs, vec![Knob::Offload, Knob::Batch]);
    let dup = t.replace("{batch: 64}", "{batch: 8, offload: false}");
    assert!(err(&dup).contains("listed twice"));
}

#[test]
fn unknown_knob_names_field_and_line() {
    let e = err(&TINY.replace("workers: [1, 2]", "flux: [1, 2]"));
    assert!(e.contains("flux"), "{e}");
    assert!(e.starts_with("t.yaml:11:"), "{e}");
}

#[test]
fn unknown_top_level_field() {
    let e = err(&format!("{TINY}colour: red\n"));
    assert!(e.contains("colour"), "{e}");
    assert!(e.starts_with("t.yaml:12:"), "{e}");
}

#[test]
fn empty_grid_and_empty_lists() {
    let e = err(&TINY.replace("  batch: [8, 64]\n  workers: [1, 2]\n", "  {}\n"));
    assert!(e.contains("grid") && e.contains("empty grid"), "{e}");
    let e = err(&TINY.replace("workers: [1, 2]", "workers: []"));
    assert!(e.contains("workers") && e.contains("empty list"), "{e}");
    assert!(e.starts_with("t.yaml:11:"), "{e}");
    let e = err(&TINY.replace("grid:\n  batch: [8, 64]\n  workers: [1, 2]\n", ""));
    assert!(e.contains("grid") && e.contains("missing"), "{e}");
}

#[test]
fn negative_and_zero_durations() {
    let e = err(&TINY.replace("duration: 2s", "duration: -2s"));
    assert!(e.contains("test.duration") && e.contains("negative"), "{e}");
    assert!(e.starts_with("t.yaml:7:"), "{e}");
    let e = err(&TINY.replace("duration: 2s", "duration: 0s"));
    assert!(e.contains("test.duration"), "{e}");
    let e = err(&TINY.replace("warmup: 500ms", "warmup: -1s"));
    assert!(e.contains("test.warmup"), "{e}");
}

#[test]
fn out_of_range_values() {
    let e = err(&TINY.replace("batch: [8, 64]", "batch: [8, 500]"));
    assert!(
        e.contains("grid.batch") && e.contains("out of range"),
        "{e}"
    );
    let e = err(&TINY.replace("workers: [1, 2]", "workers: [1, 1]"));
    assert!(e.contains("twice"), "{e}");
    let e = err(&TINY.replace("workers: [1, 2]", "cipher: [rot13]"));
    assert!(e.contains("grid.cipher"), "{e}");
}

#[test]
fn transport_knob_in_grid_and_points() {
    let p = parse(&TINY.replace("workers: [1, 2]", "transport: [udp, tcp, quic]")).expect("grid");
    assert_eq!(p.knobs, vec![Knob::Batch, Knob::Transport]);
    let keys: Vec<String> = p.cells.iter().map(|c| c.key()).collect();
    assert_eq!(keys.len(), 6, "{keys:?}");
    assert!(
        keys.contains(&"batch=64,transport=quic".to_string()),
        "{keys:?}"
    );
    let points = TINY.replace(
        "grid:\n  batch: [8, 64]\n  workers: [1, 2]\n",
        "points:\n  - {transport: tcp}\n  - {transport: quic, batch: 8}\n",
    );
    let p = parse(&points).expect("points");
    let keys: Vec<String> = p.cells.iter().map(|c| c.key()).collect();
    assert_eq!(keys, ["transport=tcp", "batch=8,transport=quic"]);
}

#[test]
fn unknown_transport_is_refused_with_field_and_line() {
    let e = err(&TINY.replace("workers: [1, 2]", "transport: [udp, sctp]"));
    assert!(e.contains("grid.transport") && e.contains("sctp"), "{e}");
    assert!(e.starts_with("t.yaml:11:"), "{e}");
    let e = err(&TINY.replace("workers: [1, 2]", "transport: [udp, udp]"));
    assert!(e.contains("twice"), "{e}");
}

#[test]
fn transport_knob_is_refused_in_remote_mode() {
    let remote = TINY.replace("workers: [1, 2]", "transport: [udp, tcp]")
        + "mode: remote\nremote:\n  server: 198.18.2.2\n  config: /tmp/x.yaml\n  restart: \"true\"\n";
    let e = err(&remote);
    assert!(
        e.contains("grid.transport") && e.contains("both gateways"),
        "{e}"
    );
}

#[test]
fn tunneld_rows_are_not_baselines() {
    let e = err(&format!("{TINY}baselines: [raw, tunneld-tcp]\n"));
    assert!(e.contains("baselines"), "{e}");
}

#[test]
fn cross_field_rules() {
    let e = err(&format!("{TINY}points:\n  - {{batch: 8}}\n"));
    assert!(e.contains("points") && e.contains("not both"), "{e}");
    let e = err(&TINY.replace("kind: sweep", "kind: scenario"));
    assert!(e.contains("kind"), "{e}");
    let e = err(&format!("{TINY}mode: remote\n"));
    assert!(e.contains("mode") && e.contains("remote:"), "{e}");
    let remote = format!("{TINY}mode: remote\nremote:\n  server: 198.18.2.2\n");
    let e = err(&remote);
    assert!(e.contains("remote.config") && e.contains("batch"), "{e}");
    let ok =
        format!("{remote}  config: /etc/tunneld/a.yaml\n  restart: systemctl restart tunneld\n");
    parse(&ok).expect("remote profile parses");
    let e = err(&format!("{TINY}baselines: [tunneld]\n"));
    assert!(e.contains("baselines"), "{e}");
}

#[test]
fn scenario_reference_resolves_relative_to_the_profile() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let t = TINY.replace(
        "wan:\n  rate: 200M\n  rtt: 10ms\n",
        "scenario: appliance-350m.yaml\n",
    );
    let p = SweepProfile::parse(&t, "t.yaml", &dir).expect("parses");
    assert_eq!(p.scenario.wan.rate, Some(Rate(350_000_000)));
    let e =
        SweepProfile::parse(&t, "t.yaml", Path::new("/nonexistent")).expect_err("missing scenario");
    assert!(e.to_string().contains("appliance-350m.yaml"), "{e}");
}

#[test]
fn shipped_sweep_profiles_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("profiles dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        if !text.contains("kind: sweep") {
            continue;
        }
        SweepProfile::load(&path).unwrap_or_else(|e| panic!("{e}"));
        n += 1;
    }
    assert!(n >= 4, "expected the shipped sweep profiles, found {n}");
}

/// Gateway A's tunneld config as the lab writes it for profile `p`.
fn gw_a_file(p: &SweepProfile) -> tunneld::config::TunnelFile {
    crate::lab::systems::tunneld::tunnel_file(
        crate::lab::systems::tunneld::Side::A,
        "tun0",
        Path::new("gw-a.key"),
        Path::new("gw-a.sock"),
        tunneld::keys::PublicKey::from_bytes([9; 32]),
        &p.scenario.tunneld,
    )
}

#[test]
fn flows_knob_in_grid_and_applied_to_the_config() {
    let p = parse(&TINY.replace("workers: [1, 2]", "flows: [1, 4]")).expect("grid");
    assert_eq!(p.knobs, vec![Knob::Batch, Knob::Flows]);
    let keys: Vec<String> = p.cells.iter().map(|c| c.key()).collect();
    assert!(keys.contains(&"batch=64,flows=4".to_string()), "{keys:?}");
    let cell = p
        .cells
        .iter()
        .find(|c| c.key() == "batch=8,flows=4")
        .expect("cell");
    let mut f = gw_a_file(&p);
    assert_eq!(f.dataplane.flows, 1, "scenario default");
    crate::sweep::cells::apply_knobs(&mut f, cell);
    assert_eq!((f.dataplane.batch, f.dataplane.flows), (8, 4));
    for bad in ["[0, 4]", "[1, 17]", "[two]"] {
        let e = err(&TINY.replace("workers: [1, 2]", &format!("flows: {bad}")));
        assert!(e.contains("grid.flows"), "{e}");
    }
}

#[test]
fn queue_knob_in_grid_and_applied_to_the_config() {
    let p = parse(&TINY.replace("workers: [1, 2]", "queue: [fifo, fq_codel]")).expect("grid");
    assert_eq!(p.knobs, vec![Knob::Batch, Knob::Queue]);
    let cell = p
        .cells
        .iter()
        .find(|c| c.key() == "batch=8,queue=fq_codel")
        .expect("cell");
    let mut f = gw_a_file(&p);
    assert_eq!(f.dataplane.queue, tunneld::config::QueueKind::Fifo);
    crate::sweep::cells::apply_knobs(&mut f, cell);
    assert_eq!(f.dataplane.queue, tunneld::config::QueueKind::FqCodel);
    for bad in ["[red]", "[fq_codel, 3]", "fifo"] {
        let e = err(&TINY.replace("workers: [1, 2]", &format!("queue: {bad}")));
        assert!(e.contains("grid.queue"), "{e}");
    }
}

#[test]
fn block_list_items_are_named_by_their_own_line() {
    // A unitless size as the second `- ` item of a grid axis: line 12.
    let t = TINY.replace(
        "grid:\n  batch: [8, 64]\n  workers: [1, 2]\n",
        "grid:\n  window:\n    - 256K\n    - 4\n",
    );
    let e = err(&t);
    assert!(e.starts_with("t.yaml:12:7: grid.window[1]: "), "{e}");
    // In the second point of a block list of mappings: line 13.
    let t = TINY.replace(
        "grid:\n  batch: [8, 64]\n  workers: [1, 2]\n",
        "points:\n  - window: 4M\n    batch: 8\n  - batch: 16\n    window: 4\n",
    );
    let e = err(&t);
    assert!(e.starts_with("t.yaml:13:13: points[1].window: "), "{e}");
    // In a flow mapping item: line 11, the value's column.
    let t = TINY.replace(
        "grid:\n  batch: [8, 64]\n  workers: [1, 2]\n",
        "points:\n  - {batch: 8}\n  - {batch: 16, socket_buffer: 512}\n",
    );
    let e = err(&t);
    assert!(
        e.starts_with("t.yaml:11:32: points[1].socket_buffer: "),
        "{e}"
    );
    // A rule across fields still finds the key's line.
    let e = err(&format!("{TINY}points:\n  - batch: 8\n"));
    assert!(e.starts_with("t.yaml:12:1: points: "), "{e}");
}
