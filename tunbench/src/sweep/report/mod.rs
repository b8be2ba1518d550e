//! `tunbench report DIR`: a capacity-planning report from a sweep's results
//! (`sweep.json` + `cells.jsonl`) and/or a lab run's `results.json` in DIR.
//! This module gathers the figures (systems table, per-knob series, best
//! cell and its margin, planning); [`markdown`] and [`html`] render them,
//! [`svg`] draws the charts.

pub mod html;
pub mod markdown;
pub mod svg;

use std::path::Path;

use serde::Deserialize;

use super::knobs::{show, Knob, Value};
use super::results::{self, median, CellRecord, ResultsError, SweepMeta};
use crate::lab::scenario::SystemKind;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The sweep results are unreadable.
    #[error(transparent)]
    Results(#[from] ResultsError),
    /// The lab's results.json is unreadable.
    #[error("{path}: {message}")]
    Lab {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// DIR holds neither sweep nor lab results.
    #[error(
        "{0} holds neither sweep results (sweep.json, cells.jsonl) nor lab results (results.json)"
    )]
    Empty(String),
}

/// One system of a lab run, as read from its results.json (only the
/// fields the report shows; the rest of the document is ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct LabRow {
    /// The system.
    pub system: SystemKind,
    /// ok, not-installed, failed.
    pub status: String,
    /// Why there are no numbers.
    #[serde(default)]
    pub reason: Option<String>,
    /// The implementation.
    #[serde(default)]
    pub variant: Option<String>,
    /// Per stream count.
    #[serde(default)]
    pub throughput: Vec<LabStreams>,
    /// p50/p99 under load, ms.
    #[serde(default)]
    pub latency_loaded_ms: Option<(f64, f64)>,
    /// CPU seconds per GB.
    #[serde(default)]
    pub cpu_s_per_gb: Option<f64>,
}

/// Throughput of one stream count in a lab row.
#[derive(Debug, Clone, Deserialize)]
pub struct LabStreams {
    /// Streams.
    pub streams: u32,
    /// Median, bit/s.
    pub median_bps: f64,
}

/// The parts of a lab results.json the report uses.
#[derive(Debug, Clone, Deserialize)]
pub struct LabDoc {
    /// The scenario as run.
    pub scenario: crate::lab::Scenario,
    /// The link checks (emulator label).
    pub link: serde_json::Value,
    /// One per system.
    pub rows: Vec<LabRow>,
}

impl LabDoc {
    /// Reads the document (the lab writes absent scenario fields as null,
    /// which the strict scenario fields refuse: they are dropped first).
    pub fn from_value(mut v: serde_json::Value) -> Result<LabDoc, String> {
        if let Some(s) = v.get_mut("scenario") {
            results::strip_nulls(s);
        }
        serde_json::from_value(v).map_err(|e| e.to_string())
    }
}

/// A system row of the comparison table (from the lab run or the sweep's
/// baselines).
#[derive(Debug, Clone)]
pub struct SystemRow {
    /// Name.
    pub system: String,
    /// Implementation or the reason it did not run.
    pub note: String,
    /// Throughput, bit/s (the largest stream count for lab rows).
    pub bps: Option<f64>,
    /// p99 RTT under load, ms.
    pub p99_ms: Option<f64>,
    /// CPU s/GB.
    pub cpu_s_per_gb: Option<f64>,
}

/// Throughput, latency and CPU against one knob's values.
#[derive(Debug, Clone)]
pub struct KnobSeries {
    /// The knob.
    pub knob: Knob,
    /// The values (x axis labels), in grid order.
    pub labels: Vec<String>,
    /// Best throughput at each value over the other knobs, bit/s.
    pub best_bps: Vec<Option<f64>>,
    /// Median throughput at each value, bit/s.
    pub median_bps: Vec<Option<f64>>,
    /// Median p50 / p99 RTT under load, ms.
    pub p50_ms: Vec<Option<f64>>,
    /// Median p99 RTT under load, ms.
    pub p99_ms: Vec<Option<f64>>,
    /// Median CPU s/GB.
    pub cpu_s_per_gb: Vec<Option<f64>>,
}

/// Sizing for one target rate.
#[derive(Debug, Clone)]
pub struct PlanRow {
    /// Target rate per direction, bit/s.
    pub target_bps: f64,
    /// Gateway pairs needed.
    pub pairs: u64,
    /// Cores per gateway (headroom included).
    pub cores_per_gateway: f64,
}

/// Planning figures and their basis.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The cell the figures come from.
    pub basis_key: String,
    /// Measured CPU seconds per GB (both gateways' tunneld, one direction).
    pub cpu_s_per_gb: f64,
    /// The rate it was measured at, bit/s.
    pub basis_bps: f64,
    /// Cores per Gbit/s per gateway with traffic both ways.
    pub cores_per_gbps: f64,
    /// Data-path threads of that cell.
    pub workers: u64,
    /// Largest rate one pair carries before its threads saturate, bit/s.
    pub pair_ceiling_bps: f64,
    /// Headroom, percent.
    pub headroom_percent: f64,
    /// One row per target.
    pub rows: Vec<PlanRow>,
}

/// Everything a report shows.
#[derive(Debug, Clone)]
pub struct Model {
    /// Title.
    pub title: String,
    /// Scenario lines (name, link, emulator, host).
    pub scenario: Vec<(String, String)>,
    /// Systems compared.
    pub systems: Vec<SystemRow>,
    /// Sweep metadata, if a sweep is present.
    pub meta: Option<SweepMeta>,
    /// The cells, grid order.
    pub cells: Vec<CellRecord>,
    /// Per-knob series.
    pub series: Vec<KnobSeries>,
    /// The fastest measured cell.
    pub best: Option<CellRecord>,
    /// Margin lines ("+12% over ipsec").
    pub margins: Vec<String>,
    /// Capacity planning.
    pub plan: Option<Plan>,
}

/// Reads DIR and builds the model.
pub fn load(dir: &Path) -> Result<Model, ReportError> {
    let sweep = if dir.join(results::META_FILE).exists() {
        Some(results::load(dir)?)
    } else {
        None
    };
    let lab_path = dir.join("results.json");
    let lab: Option<LabDoc> = if lab_path.exists() {
        let text = std::fs::read_to_string(&lab_path).map_err(|e| ReportError::Lab {
            path: lab_path.display().to_string(),
            message: e.to_string(),
        })?;
        let doc = serde_json::from_str(&text)
            .map_err(|e| e.to_string())
            .and_then(LabDoc::from_value);
        Some(doc.map_err(|message| ReportError::Lab {
            path: lab_path.display().to_string(),
            message,
        })?)
    } else {
        None
    };
    if sweep.is_none() && lab.is_none() {
        return Err(ReportError::Empty(dir.display().to_string()));
    }
    Ok(build(sweep.as_ref(), lab.as_ref()))
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.digits$}"))
}

/// Builds the model from sweep and/or lab results.
pub fn build(sweep: Option<&results::SweepResults>, lab: Option<&LabDoc>) -> Model {
    let meta = sweep.map(|s| s.meta.clone());
    let scenario = meta
        .as_ref()
        .map(|m| m.scenario.clone())
        .or_else(|| lab.map(|l| l.scenario.clone()));
    let mut sc = Vec::new();
    if let Some(s) = &scenario {
        sc.push(("Scenario".into(), format!("{} — {}", s.name, s.description)));
        let w = &s.wan;
        sc.push((
            "WAN link".into(),
            format!(
                "rate {}, RTT {:.1} ms, loss {}%, jitter {}",
                w.rate
                    .map_or("unlimited".into(), |r| tunneld::units::format_rate(
                        r.0 as f64
                    )),
                w.one_way().as_secs_f64() * 2e3,
                w.loss.unwrap_or(0.0),
                w.jitter.map_or("none".into(), |j| format!("±{:?}", j.0)),
            ),
        ));
        sc.push((
            "tunneld base".into(),
            format!(
                "cipher {}, MTU {}, MSS clamp {}",
                s.tunneld.cipher, s.tunneld.mtu, s.tunneld.mss_clamp
            ),
        ));
    }
    let emulator = meta
        .as_ref()
        .and_then(|m| m.emulator.clone())
        .or_else(|| lab.and_then(|l| l.link.get("emulator_label")?.as_str().map(str::to_string)));
    if let Some(e) = emulator {
        sc.push(("WAN emulator".into(), e));
    }
    if let Some(m) = &meta {
        sc.push((
            "Host".into(),
            format!("{} CPUs, kernel {}", m.cpus, m.kernel),
        ));
        sc.push((
            "Sweep".into(),
            format!(
                "{} ({}), {} of {} cells, mode {:?}",
                m.name,
                m.description,
                sweep.map_or(0, |s| s.cells.len()),
                m.cells_total,
                m.mode
            ),
        ));
    }
    let mut systems: Vec<SystemRow> = Vec::new();
    if let Some(l) = lab {
        for r in &l.rows {
            systems.push(SystemRow {
                system: format!("{} (lab run)", r.system),
                note: r
                    .variant
                    .clone()
                    .or_else(|| r.reason.clone().map(|x| format!("{}: {x}", r.status)))
                    .unwrap_or_default(),
                bps: r
                    .throughput
                    .iter()
                    .max_by_key(|t| t.streams)
                    .map(|t| t.median_bps),
                p99_ms: r.latency_loaded_ms.map(|l| l.1),
                cpu_s_per_gb: r.cpu_s_per_gb,
            });
        }
    }
    if let Some(m) = &meta {
        for b in &m.baselines {
            systems.push(SystemRow {
                system: format!("{} (sweep baseline)", b.system),
                note: b.variant.clone(),
                bps: b.figures.as_ref().map(|f| f.bits_per_second),
                p99_ms: b
                    .figures
                    .as_ref()
                    .and_then(|f| f.latency_loaded.as_ref())
                    .map(|l| l.p99_us / 1e3),
                cpu_s_per_gb: b.figures.as_ref().and_then(|f| f.cpu_s_per_gb),
            });
        }
    }
    let cells: Vec<CellRecord> = sweep.map(|s| s.cells.clone()).unwrap_or_default();
    let best = cells
        .iter()
        .filter(|c| c.measured())
        .max_by(|a, b| a.bits_per_second.total_cmp(&b.bits_per_second))
        .cloned();
    if let Some(b) = &best {
        systems.push(SystemRow {
            system: "tunneld (best cell)".into(),
            note: b.cell.label(),
            bps: Some(b.bits_per_second),
            p99_ms: b.p99_loaded_ms,
            cpu_s_per_gb: b.cpu_s_per_gb,
        });
    }
    let series = meta
        .as_ref()
        .map(|m| m.knobs.iter().map(|k| knob_series(*k, &cells)).collect())
        .unwrap_or_default();
    let mut margins = Vec::new();
    if let Some(b) = &best {
        for s in &systems {
            if s.system.starts_with("tunneld") {
                continue;
            }
            if let Some(x) = s.bps.filter(|x| *x > 0.0) {
                let pct = (b.bits_per_second / x - 1.0) * 100.0;
                margins.push(format!(
                    "{:+.0}% throughput against {} ({} vs {})",
                    pct,
                    s.system,
                    tunneld::units::format_rate(b.bits_per_second),
                    tunneld::units::format_rate(x)
                ));
            }
        }
    }
    let plan = match (&meta, &best) {
        (Some(m), Some(b)) => plan(m, b, &cells),
        _ => None,
    };
    Model {
        title: meta
            .as_ref()
            .map(|m| format!("Capacity plan: {}", m.name))
            .or_else(|| {
                scenario
                    .as_ref()
                    .map(|s| format!("Lab comparison: {}", s.name))
            })
            .unwrap_or_else(|| "tunbench report".into()),
        scenario: sc,
        systems,
        meta,
        cells,
        series,
        best,
        margins,
        plan,
    }
}

/// Throughput/latency/CPU against `knob`, over the other knobs.
pub fn knob_series(knob: Knob, cells: &[CellRecord]) -> KnobSeries {
    let mut values: Vec<Value> = Vec::new();
    for c in cells {
        if let Some(v) = c.cell.get(knob) {
            if !values.contains(v) {
                values.push(v.clone());
            }
        }
    }
    values.sort();
    let mut s = KnobSeries {
        knob,
        labels: values.iter().map(|v| show(knob, v)).collect(),
        best_bps: Vec::new(),
        median_bps: Vec::new(),
        p50_ms: Vec::new(),
        p99_ms: Vec::new(),
        cpu_s_per_gb: Vec::new(),
    };
    for v in &values {
        let at: Vec<&CellRecord> = cells
            .iter()
            .filter(|c| c.measured() && c.cell.get(knob) == Some(v))
            .collect();
        let col =
            |f: fn(&CellRecord) -> Option<f64>| median(at.iter().filter_map(|c| f(c)).collect());
        s.best_bps
            .push(at.iter().map(|c| c.bits_per_second).reduce(f64::max));
        s.median_bps.push(col(|c| Some(c.bits_per_second)));
        s.p50_ms.push(col(|c| c.p50_loaded_ms));
        s.p99_ms.push(col(|c| c.p99_loaded_ms));
        s.cpu_s_per_gb.push(col(|c| c.cpu_s_per_gb));
    }
    s
}

/// Planning from the best cell's measured CPU cost (or, if it has none,
/// the cheapest measured cell's).
fn plan(m: &SweepMeta, best: &CellRecord, cells: &[CellRecord]) -> Option<Plan> {
    let basis = if best.cpu_s_per_gb.is_some() {
        best
    } else {
        cells
            .iter()
            .filter(|c| c.cpu_s_per_gb.is_some())
            .min_by(|a, b| {
                a.cpu_s_per_gb
                    .unwrap_or(f64::MAX)
                    .total_cmp(&b.cpu_s_per_gb.unwrap_or(f64::MAX))
            })?
    };
    let cpu = basis.cpu_s_per_gb.filter(|c| *c > 0.0)?;
    // 1 Gbit/s = 0.125 GB/s. The lab measures one direction through both
    // gateways (A seals, B opens); a gateway carrying R each way both seals
    // and opens R, so its cost equals both lab gateways' at R.
    let cores_per_gbps = cpu * 0.125;
    let workers = basis
        .cell
        .get(Knob::Workers)
        .and_then(Value::num)
        .unwrap_or(tunneld::config::DEFAULT_WORKERS);
    let pair_ceiling_bps = workers as f64 / cores_per_gbps * 1e9;
    let head = 1.0 + m.headroom_percent / 100.0;
    let rows = m
        .targets_bps
        .iter()
        .map(|&t| {
            let t = t as f64;
            let pairs = (t / pair_ceiling_bps).ceil().max(1.0) as u64;
            PlanRow {
                target_bps: t,
                pairs,
                cores_per_gateway: cores_per_gbps * (t / 1e9 / pairs as f64) * head,
            }
        })
        .collect();
    Some(Plan {
        basis_key: basis.key.clone(),
        cpu_s_per_gb: cpu,
        basis_bps: basis.bits_per_second,
        cores_per_gbps,
        workers,
        pair_ceiling_bps,
        headroom_percent: m.headroom_percent,
        rows,
    })
}

/// The planning assumptions, stated once for both renderers.
pub fn plan_assumptions(p: &Plan) -> Vec<String> {
    vec![
        format!(
            "Basis: cell {} measured {:.2} CPU seconds per GB at {} in the tunneld processes of \
             both gateways together (one direction: gateway A seals, gateway B opens). Measured \
             on a rate-limited link, fixed costs (polling, timers) are spread over few bytes and \
             this overstates the cost at higher rates: plan from a sweep on an unlimited link.",
            p.basis_key,
            p.cpu_s_per_gb,
            tunneld::units::format_rate(p.basis_bps)
        ),
        format!(
            "A gateway carrying R Gbit/s in each direction both seals and opens R, so it needs \
             {:.3} cores per Gbit/s ({:.2} s/GB × 0.125 GB/s per Gbit/s); CPU cost is assumed to \
             grow linearly with rate.",
            p.cores_per_gbps, p.cpu_s_per_gb
        ),
        format!(
            "tunneld's data path runs {} thread(s) per gateway, so one pair tops out near {} \
             (threads × 1 core ÷ cost); beyond that traffic is split over several gateway pairs \
             (e.g. by prefix).",
            p.workers,
            tunneld::units::format_rate(p.pair_ceiling_bps)
        ),
        format!(
            "Cores per gateway include {:.0}% headroom; kernel time spent outside the tunneld \
             processes (NIC interrupts, routing) is not counted.",
            p.headroom_percent
        ),
    ]
}

/// Table cells of one sweep cell: knob values, then figures.
pub fn cell_row(knobs: &[Knob], c: &CellRecord) -> Vec<String> {
    let mut row: Vec<String> = knobs
        .iter()
        .map(|k| c.cell.get(*k).map_or("–".into(), |v| show(*k, v)))
        .collect();
    row.push(if c.measured() {
        tunneld::units::format_rate(c.bits_per_second)
    } else {
        "failed".into()
    });
    row.push(fmt_opt(c.p50_loaded_ms, 1));
    row.push(fmt_opt(c.p99_loaded_ms, 1));
    row.push(fmt_opt(c.cpu_s_per_gb, 2));
    row.push(fmt_opt(c.cpu_cores, 2));
    row
}

/// Headers matching [`cell_row`].
pub fn cell_headers(knobs: &[Knob]) -> Vec<String> {
    let mut h: Vec<String> = knobs.iter().map(|k| k.as_str().to_string()).collect();
    h.extend(
        [
            "throughput",
            "p50 RTT ms",
            "p99 RTT ms",
            "CPU s/GB",
            "cores",
        ]
        .map(str::to_string),
    );
    h
}

/// Table cells of one system row.
pub fn system_row(s: &SystemRow) -> Vec<String> {
    vec![
        s.system.clone(),
        s.bps.map_or("–".into(), tunneld::units::format_rate),
        fmt_opt(s.p99_ms, 1),
        fmt_opt(s.cpu_s_per_gb, 2),
        s.note.clone(),
    ]
}

/// Headers matching [`system_row`].
pub const SYSTEM_HEADERS: [&str; 5] = ["system", "throughput", "p99 RTT ms", "CPU s/GB", "notes"];

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
