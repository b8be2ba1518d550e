//! Report unit tests on synthetic results: series, best cell, margins,
//! planning arithmetic, and that the HTML fetches nothing and runs nothing.

use super::*;
use crate::lab::measure::TestFigures;
use crate::lab::scenario::Scenario;
use crate::sweep::knobs::Cell;
use crate::sweep::profile::Mode;
use crate::sweep::results::{Baseline, SweepResults, META_SCHEMA};

fn fig(bps: f64, cpu_s_per_gb: f64) -> TestFigures {
    TestFigures {
        streams: 1,
        bits_per_second: bps,
        bytes_total: 1_000_000_000,
        retransmits: None,
        cpu_seconds: Some(cpu_s_per_gb),
        cpu_s_per_gb: Some(cpu_s_per_gb),
        latency_idle: None,
        latency_loaded: None,
        error: None,
    }
}

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
        cells.push(CellRecord::new(i, &c, vec![fig(bps, cpu)], 1.0));
    }
    SweepResults {
        meta: SweepMeta {
            schema: META_SCHEMA.into(),
            name: "unit <sweep>".into(),
            description: "d".into(),
            mode: Mode::Lab,
            scenario: Scenario::quick().expect("quick"),
            knobs: vec![Knob::Batch, Knob::Workers],
            cells_total: 4,
            targets_bps: vec![2_000_000_000, 10_000_000_000],
            headroom_percent: 0.0,
            profile: String::new(),
            kernel: "6.1".into(),
            cpus: 2,
            emulator: Some("userspace".into()),
            baselines: vec![Baseline {
                system: SystemKind::Ipsec,
                variant: "strongSwan".into(),
                figures: Some(fig(1.5e9, 6.0)),
            }],
        },
        cells,
    }
}

#[test]
fn series_best_margin_and_plan() {
    let r = results();
    let m = build(Some(&r), None);
    assert_eq!(m.series.len(), 2);
    let batch = &m.series[0];
    assert_eq!(batch.labels, ["8", "64"]);
    assert_eq!(batch.best_bps, [Some(1.5e9), Some(3e9)]);
    assert_eq!(batch.median_bps, [Some(1.25e9), Some(2.5e9)]);
    let best = m.best.as_ref().expect("best");
    assert_eq!(best.key, "batch=64,workers=2");
    assert!(
        m.margins.iter().any(|l| l.starts_with("+100%")),
        "{:?}",
        m.margins
    );
    let p = m.plan.as_ref().expect("plan");
    // 2 s/GB → 0.25 cores per Gbit/s; 2 workers → 8 Gbit/s per pair.
    assert!((p.cores_per_gbps - 0.25).abs() < 1e-9);
    assert!((p.pair_ceiling_bps - 8e9).abs() < 1.0);
    assert_eq!(p.rows[0].pairs, 1);
    assert!((p.rows[0].cores_per_gateway - 0.5).abs() < 1e-9);
    assert_eq!(p.rows[1].pairs, 2);
    assert!((p.rows[1].cores_per_gateway - 1.25).abs() < 1e-9);
}

#[test]
fn markdown_has_every_section() {
    let md = markdown::render(&build(Some(&results()), None));
    for s in [
        "## Scenario",
        "## Systems compared",
        "## Best setting",
        "## Against `batch`",
        "## Capacity planning",
        "Assumptions",
        "## All cells",
        "ipsec (sweep baseline)",
    ] {
        assert!(md.contains(s), "missing {s}:\n{md}");
    }
}

#[test]
fn html_is_self_contained() {
    let h = html::render(&build(Some(&results()), None));
    assert!(h.starts_with("<!DOCTYPE html>"));
    assert_eq!(h.matches("<svg").count(), 6);
    assert!(h.contains("unit &lt;sweep&gt;"));
    for bad in ["<script", "src=", "href=", "@import", "url("] {
        assert!(!h.contains(bad), "HTML contains {bad}");
    }
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
    let m = build(None, Some(&lab));
    assert_eq!(m.systems.len(), 2);
    assert_eq!(m.systems[0].bps, Some(4.8e8));
    assert!(m.systems[1].note.contains("not-installed"));
    assert!(m.plan.is_none());
    let md = markdown::render(&m);
    assert!(md.contains("Lab comparison"));
}
