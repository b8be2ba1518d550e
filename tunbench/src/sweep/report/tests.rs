//! Report unit tests on synthetic results: series, chosen cell and ties,
//! margins, conditions as run, the plan and its basis, the reference
//! device in both formats, masking of secrets, filling doc blocks, and
//! that the HTML fetches nothing and runs nothing.

use super::*;
use crate::engine::latency::LatencySlot;
use crate::lab::measure::TestFigures;
use crate::lab::scenario::Scenario;
use crate::sweep::knobs::Cell;
use crate::sweep::plan::Basis;
use crate::sweep::profile::Reference;
use crate::sweep::results::{test_meta, Baseline, SweepResults};
use tunneld::units::Rate;

fn lat(p99_ms: f64) -> LatencySummary {
    LatencySummary {
        samples: 100,
        lost: 0,
        min_us: 1000.0,
        mean_us: 2000.0,
        p50_us: 2000.0,
        p90_us: 3000.0,
        p99_us: p99_ms * 1e3,
        p999_us: p99_ms * 1.1e3,
        max_us: p99_ms * 1.2e3,
        cdf: vec![
            [0.0, 1000.0],
            [0.5, 2000.0],
            [0.99, p99_ms * 1e3],
            [1.0, p99_ms * 1.2e3],
        ],
        timeline: vec![
            LatencySlot {
                t_s: 0.0,
                mean_us: 2000.0,
                max_us: 3000.0,
                samples: 50,
            },
            LatencySlot {
                t_s: 0.5,
                mean_us: 2500.0,
                max_us: 3500.0,
                samples: 50,
            },
        ],
    }
}

fn fig(bps: f64, cpu_s_per_gb: f64) -> TestFigures {
    TestFigures {
        streams: 4,
        bits_per_second: bps,
        bytes_total: 1_000_000_000,
        retransmits: None,
        cpu_seconds: Some(cpu_s_per_gb),
        cpu_s_per_gb: Some(cpu_s_per_gb),
        latency_idle: None,
        latency_loaded: Some(lat(10.0)),
        error: None,
        intervals: vec![[0.5, bps * 0.9], [1.0, bps * 1.1]],
    }
}

/// Four cells on an unlimited link: a clear winner (batch 64, workers 2).
fn results() -> SweepResults {
    let mut cells = Vec::new();
    for (i, (b, w, bps, cpu)) in [
        (8, 1, 1e9, 4.0),
        (8, 2, 1.5e9, 4.0),
        (64, 1, 2e9, 2.0),
        (64, 2, 3e9, 2.0),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = Cell::default();
        c.knobs.insert(Knob::Batch, Value::Num(b));
        c.knobs.insert(Knob::Workers, Value::Num(w));
        cells.push(CellRecord::new(
            i,
            &c,
            vec![fig(bps, cpu), fig(bps * 1.02, cpu)],
            1.0,
        ));
    }
    let mut meta = test_meta(vec![Knob::Batch, Knob::Workers]);
    meta.scenario.wan.rate = None;
    meta.name = "unit <sweep>".into();
    meta.cells_total = 4;
    meta.emulator = Some("userspace".into());
    meta.baselines = vec![Baseline {
        system: SystemKind::Ipsec,
        variant: "strongSwan IKEv2 + kernel-libipsec (userspace ESP, AES-256-GCM, ESP-in-UDP); \
                  no kernel ESP (`ip -n x xfrm state add spi 0x1001 aead rfc4106(gcm(aes)) \
                  0xdcc563accea3604046e26499cc3ced84e3395b70cde1b0fae4c2631be7902211ca3d2dbe 128` \
                  failed (exit status: 2): Error: Requested AEAD algorithm not found.)"
            .into(),
        figures: Some(fig(1.5e9, 6.0)),
    }];
    meta.reference = Some(Reference {
        name: "vendor-appliance".into(),
        rate: Rate(350_000_000),
    });
    SweepResults { meta, cells }
}

#[test]
fn series_choice_margin_and_plan() {
    let r = results();
    let m = build(Some(&r), None, &Options::default());
    assert_eq!(m.series.len(), 2);
    let batch = &m.series[0];
    assert!(!batch.categorical);
    assert_eq!(batch.labels, ["8", "64"]);
    assert_eq!(batch.best_bps, [Some(1.5e9 * 1.01), Some(3e9 * 1.01)]);
    let d = m.decision.as_ref().expect("decision");
    assert_eq!(d.chosen.key, "batch=64,workers=2");
    assert_eq!(d.ties.len(), 1);
    // Spread 2% measured from the two repeats.
    let n = m.noise.expect("noise");
    assert!(n.measured && (n.percent - 2.0 / 1.01).abs() < 1e-9, "{n:?}");
    assert!(
        m.margins.iter().any(|l| l.starts_with(
            "+102% throughput against ipsec (strongSwan kernel-libipsec) at 1.50 Gbit/s"
        )),
        "{:?}",
        m.margins
    );
    assert!(
        m.margins.iter().any(|l| l.starts_with(
            "+766% throughput against vendor-appliance's rated 350.00 Mbit/s (3.03 Gbit/s vs"
        ) && !l.contains("capped")),
        "{:?}",
        m.margins
    );
    let p = m.plan.as_ref().expect("plan");
    // Unlimited link: the pair figure is measured (3.03 Gbit/s); 2 s/GB →
    // 0.25 cores per Gbit/s; the projection is 2 workers ÷ 0.25 = 8 Gbit/s.
    assert_eq!(p.basis, Basis::Measured);
    assert!((p.cores_per_gbps - 0.25).abs() < 1e-9);
    assert!((p.projected_bps - 8e9).abs() < 1.0);
    assert_eq!((p.rows[0].active, p.rows[0].total), (1, 2));
    assert!((p.rows[0].cores_per_gateway - 0.5).abs() < 1e-9);
    assert_eq!((p.rows[1].active, p.rows[1].total), (4, 5));
    assert_eq!(p.rows[1].reference_units, Some(29 + 1));
    let t = m.timeline.as_ref().expect("timeline");
    assert_eq!(t.throughput.len(), 2);
    assert_eq!(t.rtt_ms, [(0.5, 2.0), (1.0, 2.5)]);
    assert_eq!(m.latency[0].label, "tunneld (chosen setting)");
}

#[test]
fn given_pair_rate_overrides_and_is_labelled() {
    let r = results();
    let m = build(
        Some(&r),
        None,
        &Options {
            pair_rate: Some((5e9, "HA lab".into())),
            failover: Vec::new(),
        },
    );
    let p = m.plan.expect("plan");
    assert_eq!(p.basis, Basis::Given("HA lab".into()));
    assert_eq!(p.rows[1].active, 2);
    assert!(plan::assumptions(&p)[1].contains("measured elsewhere (HA lab)"));
}

#[test]
fn link_limited_ties_go_to_the_cheapest_and_the_plan_is_projected() {
    let mut r = results();
    // A 200 Mbit/s link: every cell reaches ~180 Mbit/s, within 5%.
    r.meta.scenario.wan.rate = Some(Rate(200_000_000));
    for (i, c) in r.cells.iter_mut().enumerate() {
        let bps = 180e6 + i as f64 * 1e6;
        let cpu = [9.0, 4.0, 6.0, 8.0][i];
        *c = CellRecord::new(i, &c.cell, vec![fig(bps, cpu)], 1.0);
    }
    let m = build(Some(&r), None, &Options::default());
    let n = m.noise.expect("noise");
    assert!(!n.measured && n.percent == 5.0);
    let d = m.decision.as_ref().expect("decision");
    assert_eq!(d.chosen.key, "batch=8,workers=2", "cheapest of the ties");
    assert_eq!(d.ties.len(), 4);
    let link = d.link.as_ref().expect("verdict");
    assert!(link.limited && link.all_tied, "{link:?}");
    assert!(
        d.lines
            .iter()
            .any(|l| l.contains("any setting carries this link; cheapest: batch 8, workers 2")),
        "{:?}",
        d.lines
    );
    let p = m.plan.as_ref().expect("plan");
    assert_eq!(p.basis, Basis::Projected);
    assert!(p.carried_at_least_bps.is_some());
    assert!(plan::assumptions(p)[1].contains("is a projection, not a measurement"));
    let md = markdown::render(&m);
    assert!(md.contains("unknown: one repeat per cell"), "{md}");
    assert!(md.contains("(projected)"), "{md}");
}

#[test]
fn markdown_states_conditions_and_has_every_section() {
    let mut r = results();
    r.meta.test = Some(
        serde_norway::from_str("duration: 300ms\nwarmup: 200ms\nrepeats: 2\nstreams: 4\n")
            .expect("test"),
    );
    let md = markdown::render(&build(Some(&r), None, &Options::default()));
    for s in [
        "## Conditions as run",
        "4 stream(s); 300ms measured after 200ms of warm-up per repeat; 2 repeat(s) per cell",
        "Test CPU @ 3.0GHz, 2 cores, kernel 6.1",
        "2.0%: the median over 4 cells of (max − min) ÷ median of a cell's repeats",
        "## Systems compared",
        "vendor-appliance (reference)",
        "| rated |",
        "## Chosen setting",
        "## The chosen setting over time",
        "## Latency under load",
        "## Against `batch`",
        "## Capacity planning",
        "vendor-appliance units (N + spare)",
        "1 + 1 spare = 2",
        "Assumptions",
        "## All cells",
        "kernel-libipsec: userspace ESP on a TUN device, not kernel IPsec",
        "(ip xfrm: Requested AEAD algorithm not found)",
    ] {
        assert!(md.contains(s), "missing {s}:\n{md}");
    }
    assert!(!md.contains("dcc563acce"), "ESP key in the report:\n{md}");
}

#[test]
fn html_is_self_contained_and_titles_every_chart() {
    let mut r = results();
    r.meta.knobs.push(Knob::Offload);
    for c in &mut r.cells {
        c.cell
            .knobs
            .insert(Knob::Offload, Value::Bool(c.index % 2 == 0));
    }
    let h = html::render(&build(Some(&r), None, &Options::default()));
    assert!(h.starts_with("<!DOCTYPE html>"));
    // systems + timeline + CDF + 3 per knob × 3 knobs + plan.
    assert_eq!(h.matches("<svg").count(), 1 + 1 + 1 + 9 + 1);
    assert_eq!(h.matches("<svg").count(), h.matches("<title>").count() - 1);
    assert!(h.contains("unit &lt;sweep&gt;"));
    assert!(h.contains("vendor-appliance"));
    // offload is on/off: bars, no polyline in its charts.
    let offload = &h[h.find("Throughput vs offload").expect("offload chart")..];
    let offload = &offload[..offload.find("</svg>").expect("end")];
    assert!(!offload.contains("<polyline") && offload.contains("<rect"));
    for bad in ["<script", "src=", "href=", "@import", "url(", "dcc563acce"] {
        assert!(!h.contains(bad), "HTML contains {bad}");
    }
}

#[test]
fn secrets_are_masked() {
    let t = "spi 0x1001 key 0xdcc563accea3604046e26499cc3ced84e3395b70 and \
             ywiVZdqg0pcdfEV466JrS3t6omdsTlhFlUPJx6GrkoA= and \
             -----BEGIN PRIVATE KEY-----\nMC4CAQ\n-----END PRIVATE KEY----- end";
    let m = mask_secrets(t);
    assert!(
        m.contains("spi 0x1001 key 0x<key masked> and <key masked> and <private key masked> end"),
        "{m}"
    );
}

#[test]
fn fill_replaces_blocks_and_keeps_prose() {
    let m = build(Some(&results()), None, &Options::default());
    let t = "Prose quoting `<!-- tunbench:… -->`.\n<!-- tunbench:knob:batch -->\nold\n\
             <!-- /tunbench:knob:batch -->\nMore.\n<!-- tunbench:plan -->\n<!-- /tunbench:plan -->\n";
    let out = markdown::fill(t, &m, "t.md").expect("fill");
    assert!(
        out.starts_with(
            "Prose quoting `<!-- tunbench:… -->`.\n<!-- tunbench:knob:batch -->\n\n| batch |"
        ),
        "{out}"
    );
    assert!(!out.contains("old") && out.contains("More.") && out.contains("Assumptions"));
    // Idempotent: filling the output again changes nothing.
    assert_eq!(markdown::fill(&out, &m, "t.md").expect("again"), out);
    let e = markdown::fill(
        "<!-- tunbench:nonsense -->\n<!-- /tunbench:nonsense -->",
        &m,
        "t.md",
    )
    .expect_err("unknown");
    assert!(e.to_string().contains("unknown block `nonsense`"), "{e}");
    assert!(markdown::fill("<!-- tunbench:plan -->", &m, "t.md").is_err());
}

#[test]
fn lab_results_alone_make_a_systems_table() {
    let json = serde_json::json!({
        "scenario": Scenario::quick().expect("quick"),
        "link": {"emulator_label": "userspace"},
        "rows": [
            {"system": "raw", "status": "ok", "variant": "routed", "throughput": [{"streams": 1, "median_bps": 4e8}, {"streams": 4, "median_bps": 4.8e8}], "latency_loaded_ms": [20.5, 30.0], "cpu_s_per_gb": null},
            {"system": "ipsec", "status": "not-installed", "reason": "strongswan-charon missing"}
        ]
    });
    let lab = LabDoc::from_value(json).expect("lab doc");
    let m = build(None, Some(&lab), &Options::default());
    assert_eq!(m.systems.len(), 2);
    assert_eq!(m.systems[0].bps, Some(4.8e8));
    assert!(m.systems[1].note.contains("not-installed"));
    assert!(m.plan.is_none());
    let md = markdown::render(&m);
    assert!(md.contains("Lab comparison"));
}

#[test]
fn an_ha_lab_run_gives_the_pair_rate_and_the_failover_figures() {
    // results.json of `tunbench lab --profile profiles/lab-ha.yaml`.
    let ha: crate::lab::ha::HaReport =
        serde_json::from_str(include_str!("ha-lab-results.json")).expect("HA lab results");
    let ((pair, source), failover) = plan::from_ha(&ha, "/tmp/ha");
    assert_eq!(pair, ha.per_pair_bits_per_second);
    assert!(
        source.starts_with("HA lab lab-ha in /tmp/ha: one of 2 gateway pairs"),
        "{source}"
    );
    assert_eq!(failover.len(), 2, "failover and drain");
    assert!(
        failover[0].contains("longest gap in delivered bytes 1.43 s"),
        "{}",
        failover[0]
    );
    assert!(
        failover[0].contains("SHA-256 intact on every flow"),
        "{}",
        failover[0]
    );
    assert!(
        failover[1].starts_with("Draining a gateway"),
        "{}",
        failover[1]
    );
    let r = results();
    let m = build(
        Some(&r),
        None,
        &Options {
            pair_rate: Some((pair, source)),
            failover,
        },
    );
    let p = m.plan.as_ref().expect("plan");
    assert!(matches!(p.basis, Basis::Given(ref s) if s.starts_with("HA lab")));
    let said = plan::assumptions(p);
    assert!(
        said.iter().any(|l| l.starts_with("Failover (HA lab")),
        "{said:?}"
    );
    let md = markdown::render(&m);
    assert!(md.contains("longest gap in delivered bytes 1.43 s"), "{md}");
    let html = html::render(&m);
    assert!(html.contains("longest gap in delivered bytes 1.43 s"));
}
