//! `tunbench report DIR`: a capacity-planning report from a sweep's results
//! (`sweep.json` + `cells.jsonl`) and/or a lab run's `results.json` in DIR.
//! This module gathers the figures: the conditions as the sweep really ran
//! (traffic, repeats, host, link check, each system's exact variant, the
//! run-to-run spread), the systems table with a named reference device, the
//! chosen setting (ties within the spread go to the cheapest cell, and the
//! link is named when it was the limit), per-knob series, the chosen cell
//! over time and the latency distributions, and the plan
//! ([`crate::sweep::plan`]). [`markdown`] and [`html`] render them, [`svg`]
//! draws the charts. Secrets (ESP keys, private keys) that a failed
//! command's text might carry are masked in everything rendered.

pub mod html;
pub mod markdown;
pub mod svg;

use std::path::Path;

use serde::Deserialize;

use super::choose::{self, link_verdict, LinkVerdict, Noise};
use super::knobs::{show, Knob, Value};
use super::plan::{self, Plan};
use super::results::{self, median, CellRecord, ResultsError, SweepMeta};
use crate::engine::LatencySummary;
use crate::lab::measure::TestFigures;
use crate::lab::scenario::SystemKind;
use tunneld::units::format_rate;

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
    /// A `--fill` template has an unknown or unterminated block.
    #[error("{file}: {message}")]
    Fill {
        /// The template.
        file: String,
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

/// A system row of the comparison table (from the lab run, the sweep's
/// baselines, the chosen tunneld cell, or the named reference device).
#[derive(Debug, Clone)]
pub struct SystemRow {
    /// Name.
    pub system: String,
    /// Implementation (and why that one), or the reason it did not run.
    pub note: String,
    /// Throughput, bit/s (the largest stream count for lab rows).
    pub bps: Option<f64>,
    /// p99 RTT under load, ms.
    pub p99_ms: Option<f64>,
    /// CPU s/GB.
    pub cpu_s_per_gb: Option<f64>,
    /// `measured` or `rated` (a stated figure, not measured here).
    pub basis: &'static str,
}

/// Throughput, latency and CPU against one knob's values.
#[derive(Debug, Clone)]
pub struct KnobSeries {
    /// The knob.
    pub knob: Knob,
    /// On/off or named values: drawn as bars (no order between them).
    pub categorical: bool,
    /// The values (x axis labels), in grid order.
    pub labels: Vec<String>,
    /// Best throughput at each value over the other knobs, bit/s.
    pub best_bps: Vec<Option<f64>>,
    /// Median throughput at each value, bit/s.
    pub median_bps: Vec<Option<f64>>,
    /// Median p50 RTT under load, ms.
    pub p50_ms: Vec<Option<f64>>,
    /// Median p99 RTT under load, ms.
    pub p99_ms: Vec<Option<f64>>,
    /// Median CPU s/GB.
    pub cpu_s_per_gb: Vec<Option<f64>>,
}

/// The chosen cell over time (one repeat: the one closest to the median).
#[derive(Debug, Clone)]
pub struct Timeline {
    /// Which cell and repeat.
    pub label: String,
    /// (s, bit/s) per engine interval.
    pub throughput: Vec<(f64, f64)>,
    /// (s, mean RTT ms) per 500 ms slot of the latency probes.
    pub rtt_ms: Vec<(f64, f64)>,
}

/// The loaded-latency distribution of one system.
#[derive(Debug, Clone)]
pub struct LatencyRow {
    /// System (or cell) label.
    pub label: String,
    /// The percentiles.
    pub summary: LatencySummary,
}

/// The decision: how the chosen setting was picked.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The chosen cell (cheapest of those tied with the fastest).
    pub chosen: CellRecord,
    /// The fastest cell.
    pub fastest: CellRecord,
    /// Keys of the cells tied with the fastest, cheapest first.
    pub ties: Vec<String>,
    /// Sentences: ties, clear winner, link or tunnel limit.
    pub lines: Vec<String>,
    /// The link verdict (rate-limited links only).
    pub link: Option<LinkVerdict>,
}

/// Everything a report shows.
#[derive(Debug, Clone)]
pub struct Model {
    /// Title.
    pub title: String,
    /// Conditions as run (label, text).
    pub conditions: Vec<(String, String)>,
    /// Systems compared.
    pub systems: Vec<SystemRow>,
    /// Sweep metadata, if a sweep is present.
    pub meta: Option<SweepMeta>,
    /// The cells, grid order.
    pub cells: Vec<CellRecord>,
    /// Per-knob series.
    pub series: Vec<KnobSeries>,
    /// The run-to-run spread used for ties.
    pub noise: Option<Noise>,
    /// How the setting was chosen.
    pub decision: Option<Decision>,
    /// Margin lines against the other systems and the reference.
    pub margins: Vec<String>,
    /// The chosen cell over time.
    pub timeline: Option<Timeline>,
    /// Loaded-latency distributions (chosen cell, baselines).
    pub latency: Vec<LatencyRow>,
    /// Capacity planning.
    pub plan: Option<Plan>,
}

/// Options of `tunbench report`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A per-pair throughput measured elsewhere (bit/s) and where.
    pub pair_rate: Option<(f64, String)>,
    /// Failover and drain figures of an HA lab run, one sentence each,
    /// stated with the plan.
    pub failover: Vec<String>,
}

/// Reads DIR and builds the model.
pub fn load(dir: &Path, opts: &Options) -> Result<Model, ReportError> {
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
    Ok(build(sweep.as_ref(), lab.as_ref(), opts))
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.digits$}"))
}

/// Masks secrets a command line in an error text may carry: hex keys
/// (`0x` and 32+ hex digits, as `ip xfrm` takes ESP keys), base64 keys
/// (43+ characters ending in `=`, as WireGuard and tunneld keys), and PEM
/// private-key blocks.
pub fn mask_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // PEM blocks first.
    while let Some(i) = rest.find("-----BEGIN") {
        let block_end = rest[i..]
            .find("PRIVATE KEY-----")
            .and_then(|j| rest[i + j + 16..].find("-----END").map(|k| i + j + 16 + k))
            .and_then(|e| rest[e + 8..].find("-----").map(|k| e + 8 + k + 5));
        match block_end {
            Some(e) => {
                out.push_str(&rest[..i]);
                out.push_str("<private key masked>");
                rest = &rest[e..];
            }
            None => {
                out.push_str(&rest[..i + 10]);
                rest = &rest[i + 10..];
            }
        }
    }
    out.push_str(rest);
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
    let mut masked = String::with_capacity(out.len());
    let chars: Vec<char> = out.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        // 0x + 32 or more hex digits.
        if chars[i] == '0' && chars.get(i + 1) == Some(&'x') {
            let n = chars[i + 2..]
                .iter()
                .take_while(|c| c.is_ascii_hexdigit())
                .count();
            if n >= 32 {
                masked.push_str("0x<key masked>");
                i += 2 + n;
                continue;
            }
        }
        // A base64 run of 43+ characters ending in '=', at a word start.
        if is_b64(chars[i]) && (i == 0 || !is_b64(chars[i - 1])) {
            let n = chars[i..].iter().take_while(|c| is_b64(**c)).count();
            let pad = chars[i + n..].iter().take_while(|c| **c == '=').count();
            if n >= 43 && pad >= 1 {
                masked.push_str("<key masked>");
                i += n + pad;
                continue;
            }
        }
        masked.push(chars[i]);
        i += 1;
    }
    masked
}

/// The implementation that ran, in a few words, and why that one: the
/// IPsec baseline is kernel xfrm ESP where the kernel has it, else
/// strongSwan's userspace kernel-libipsec, and that must be said beside
/// any comparison with it.
pub fn variant_summary(system: SystemKind, variant: &str) -> String {
    if system != SystemKind::Ipsec {
        return variant.to_string();
    }
    if variant.starts_with("kernel ESP") {
        return "kernel xfrm ESP (static SAs, AES-256-GCM): in-kernel IPsec".into();
    }
    if variant.starts_with("strongSwan") {
        let why = variant
            .rfind("Error: ")
            .map(|i| {
                variant[i + 7..]
                    .trim_end_matches([')', '.', ' '])
                    .trim()
                    .to_string()
            })
            .filter(|w| !w.is_empty());
        return format!(
            "strongSwan kernel-libipsec: userspace ESP on a TUN device, not kernel IPsec; chosen \
             because this kernel has no usable ESP{}",
            why.map(|w| format!(" (ip xfrm: {w})")).unwrap_or_default()
        );
    }
    variant.to_string()
}

fn dur(s: &tunneld::units::Span) -> String {
    crate::profile_units::human_duration(s.0)
}

fn distinct<T: PartialEq + Copy>(v: impl Iterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

fn list_u(v: &[usize]) -> String {
    match (v.iter().min(), v.iter().max()) {
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a}–{b}"),
        _ => "–".into(),
    }
}

/// The conditions as the sweep ran: from the stored test and the cells'
/// own records, never from the scenario's description.
fn conditions(meta: &SweepMeta, cells: &[CellRecord], noise: &Noise) -> Vec<(String, String)> {
    let mut c: Vec<(String, String)> = Vec::new();
    let measured: Vec<&CellRecord> = cells.iter().filter(|r| r.measured()).collect();
    let mut streams: Vec<u32> = distinct(
        cells
            .iter()
            .flat_map(|r| r.repeats.iter())
            .map(|f| f.streams),
    );
    streams.sort_unstable();
    let repeats: Vec<usize> = distinct(measured.iter().map(|r| r.repeats.len()));
    let streams_text = if streams.is_empty() {
        meta.test
            .as_ref()
            .map_or("–".into(), |t| t.streams.to_string())
    } else {
        streams
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let timing = meta.test.as_ref().map_or_else(
        || "durations not recorded".to_string(),
        |t| {
            format!(
                "{} measured after {} of warm-up per repeat{}",
                dur(&t.duration),
                dur(&t.warmup),
                t.congestion
                    .as_deref()
                    .map(|cc| format!(", congestion control {cc}"))
                    .unwrap_or_default()
            )
        },
    );
    c.push((
        "Traffic".into(),
        format!(
            "TCP host-a → host-b through the gateways, {streams_text} stream(s); {timing}; \
             {} repeat(s) per cell (cells report medians); latency probes {}",
            list_u(&repeats),
            meta.test.as_ref().map_or("–".into(), |t| if t.latency {
                format!("every {} during the load", dur(&t.latency_interval))
            } else {
                "off".into()
            })
        ),
    ));
    c.push((
        "Cells".into(),
        format!(
            "{} measured, {} failed, of {} in the grid ({})",
            measured.len(),
            cells.len() - measured.len(),
            meta.cells_total,
            meta.knobs
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(" × ")
        ),
    ));
    c.push((
        "Host".into(),
        format!(
            "{}, {} cores, kernel {} (gateways, end hosts and the WAN emulator share it)",
            meta.cpu_model
                .as_deref()
                .unwrap_or("CPU model not recorded"),
            meta.cpus,
            meta.kernel
        ),
    ));
    let w = &meta.scenario.wan;
    let mut link = format!(
        "configured rate {}, RTT {} ms, loss {}%{}",
        w.rate
            .map_or("unlimited".into(), |r| format_rate(r.0 as f64)),
        tick(w.one_way().as_secs_f64() * 2e3),
        w.loss.unwrap_or(0.0),
        w.jitter
            .map(|j| format!(", jitter ±{}", crate::profile_units::human_duration(j.0)))
            .unwrap_or_default()
    );
    match &meta.link {
        Some(l) => {
            link.push_str("; checked before the first cell: ");
            let mut parts = Vec::new();
            if let Some((min, avg)) = l.rtt_ms {
                parts.push(format!("RTT min {min:.2} / avg {avg:.2} ms"));
            }
            if let Some(b) = l.wire_bps {
                parts.push(format!(
                    "rate {} on the wire{}",
                    format_rate(b),
                    match l.method.as_deref() {
                        Some("udp-125-percent") => format!(
                            " (UDP offered at 125% of the rate{})",
                            l.loss_percent
                                .map(|x| format!(": {x:.1}% dropped at the limit, as expected"))
                                .unwrap_or_default()
                        ),
                        Some("tcp-4-streams") => " (4 TCP streams: a lower bound)".into(),
                        Some(m) => format!(" ({m})"),
                        None => String::new(),
                    }
                ));
            }
            if let Some(n) = &l.note {
                parts.push(n.clone());
            }
            link.push_str(&parts.join(", "));
        }
        None => link.push_str("; not checked (sweep from before link checks, or remote mode)"),
    }
    c.push(("WAN link".into(), link));
    if let Some(e) = meta
        .link
        .as_ref()
        .map(|l| &l.emulator)
        .or(meta.emulator.as_ref())
    {
        let note = meta
            .link
            .as_ref()
            .and_then(|l| l.netem_note.clone())
            .map(|n| format!(" — {n}"))
            .unwrap_or_default();
        c.push(("WAN emulator".into(), format!("{e}{note}")));
    }
    let s = &meta.scenario.tunneld;
    c.push((
        "tunneld base".into(),
        format!(
            "cipher {}, MTU {}, MSS clamp {}, offload {}, batch {}, workers {}, flows {} \
             (knobs in the grid override these)",
            s.cipher,
            s.mtu,
            s.mss_clamp,
            s.dataplane.offload,
            s.dataplane.batch,
            s.dataplane.workers,
            s.dataplane.flows
        ),
    ));
    for b in &meta.baselines {
        c.push((
            format!("Baseline {}", b.system),
            if b.figures.is_some() {
                variant_summary(b.system, &b.variant)
            } else {
                format!("did not run: {}", b.variant)
            },
        ));
    }
    c.push((
        "Run-to-run spread".into(),
        if noise.measured {
            format!(
                "{:.1}%: the median over {} cells of (max − min) ÷ median of a cell's repeats \
                 (largest {:.1}%); cells closer than this are ties",
                noise.percent,
                noise.cells,
                noise.max_percent.unwrap_or(noise.percent)
            )
        } else {
            format!(
                "unknown: one repeat per cell; cells within the stated {:.0}% are treated as \
                 ties (`planning.noise`)",
                noise.percent
            )
        },
    ));
    c.push((
        "Sweep".into(),
        format!(
            "{} — {} (mode {:?})",
            meta.name, meta.description, meta.mode
        ),
    ));
    c
}

fn tick(v: f64) -> String {
    svg::tick_label((v * 1000.0).round() / 1000.0)
}

/// The repeat of `r` closest to its median throughput.
fn representative(r: &CellRecord) -> Option<&TestFigures> {
    r.repeats
        .iter()
        .filter(|f| f.bits_per_second > 0.0)
        .min_by(|a, b| {
            (a.bits_per_second - r.bits_per_second)
                .abs()
                .total_cmp(&(b.bits_per_second - r.bits_per_second).abs())
        })
}

/// Builds the model from sweep and/or lab results.
pub fn build(sweep: Option<&results::SweepResults>, lab: Option<&LabDoc>, opts: &Options) -> Model {
    let meta = sweep.map(|s| s.meta.clone());
    let cells: Vec<CellRecord> = sweep.map(|s| s.cells.clone()).unwrap_or_default();
    let noise = meta
        .as_ref()
        .map(|m| choose::noise(&cells, m.noise_percent));
    let mut conds: Vec<(String, String)> = Vec::new();
    if let (Some(m), Some(n)) = (&meta, &noise) {
        conds = conditions(m, &cells, n);
    } else if let Some(l) = lab {
        let s = &l.scenario;
        conds.push(("Scenario".into(), format!("{} — {}", s.name, s.description)));
        if let Some(e) = l.link.get("emulator_label").and_then(|v| v.as_str()) {
            conds.push(("WAN emulator".into(), e.to_string()));
        }
    }
    let mut systems: Vec<SystemRow> = Vec::new();
    let mut latency: Vec<LatencyRow> = Vec::new();
    if let Some(l) = lab {
        for r in &l.rows {
            systems.push(SystemRow {
                system: format!("{} (lab run)", r.system),
                note: r
                    .variant
                    .as_deref()
                    .map(|v| variant_summary(r.system, v))
                    .or_else(|| r.reason.clone().map(|x| format!("{}: {x}", r.status)))
                    .unwrap_or_default(),
                bps: r
                    .throughput
                    .iter()
                    .max_by_key(|t| t.streams)
                    .map(|t| t.median_bps),
                p99_ms: r.latency_loaded_ms.map(|l| l.1),
                cpu_s_per_gb: r.cpu_s_per_gb,
                basis: "measured",
            });
        }
    }
    if let Some(m) = &meta {
        for b in &m.baselines {
            systems.push(SystemRow {
                system: b.system.to_string(),
                note: if b.figures.is_some() {
                    variant_summary(b.system, &b.variant)
                } else {
                    format!("did not run: {}", b.variant)
                },
                bps: b.figures.as_ref().map(|f| f.bits_per_second),
                p99_ms: b
                    .figures
                    .as_ref()
                    .and_then(|f| f.latency_loaded.as_ref())
                    .map(|l| l.p99_us / 1e3),
                cpu_s_per_gb: b.figures.as_ref().and_then(|f| f.cpu_s_per_gb),
                basis: "measured",
            });
            if let Some(l) = b.figures.as_ref().and_then(|f| f.latency_loaded.clone()) {
                latency.push(LatencyRow {
                    label: b.system.to_string(),
                    summary: l,
                });
            }
        }
    }
    let decision = match (&meta, &noise) {
        (Some(m), Some(n)) => {
            let all: Vec<&CellRecord> = cells.iter().collect();
            let link = link_verdict(m, &cells, n);
            choose::choose(&all, n, link.as_ref()).map(|ch| Decision {
                chosen: ch.pick.clone(),
                fastest: ch.fastest.clone(),
                ties: ch.ties.iter().map(|r| r.key.clone()).collect(),
                lines: super::tune::decision(m, &cells, &ch, n),
                link,
            })
        }
        _ => None,
    };
    let mut timeline = None;
    if let Some(d) = &decision {
        systems.push(SystemRow {
            system: "tunneld (chosen setting)".into(),
            note: d.chosen.cell.label(),
            bps: Some(d.chosen.bits_per_second),
            p99_ms: d.chosen.p99_loaded_ms,
            cpu_s_per_gb: d.chosen.cpu_s_per_gb,
            basis: "measured",
        });
        if d.fastest.key != d.chosen.key {
            systems.push(SystemRow {
                system: "tunneld (fastest cell)".into(),
                note: d.fastest.cell.label(),
                bps: Some(d.fastest.bits_per_second),
                p99_ms: d.fastest.p99_loaded_ms,
                cpu_s_per_gb: d.fastest.cpu_s_per_gb,
                basis: "measured",
            });
        }
        if let Some(f) = representative(&d.chosen) {
            if let Some(l) = &f.latency_loaded {
                latency.insert(
                    0,
                    LatencyRow {
                        label: "tunneld (chosen setting)".into(),
                        summary: l.clone(),
                    },
                );
            }
            let rtt: Vec<(f64, f64)> = f
                .latency_loaded
                .as_ref()
                .map(|l| {
                    l.timeline
                        .iter()
                        .map(|s| {
                            (
                                s.t_s + crate::engine::latency::TIMELINE_SLOT.as_secs_f64(),
                                s.mean_us / 1e3,
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            if !f.intervals.is_empty() || !rtt.is_empty() {
                timeline = Some(Timeline {
                    label: format!("{} (repeat closest to the median)", d.chosen.cell.label()),
                    throughput: f.intervals.iter().map(|i| (i[0], i[1])).collect(),
                    rtt_ms: rtt,
                });
            }
        }
    }
    if let Some(r) = meta.as_ref().and_then(|m| m.reference.as_ref()) {
        systems.push(SystemRow {
            system: format!("{} (reference)", r.name),
            note: "rated throughput as stated in the sweep profile; not measured here".into(),
            bps: Some(r.rate.0 as f64),
            p99_ms: None,
            cpu_s_per_gb: None,
            basis: "rated",
        });
    }
    let series = meta
        .as_ref()
        .map(|m| m.knobs.iter().map(|k| knob_series(*k, &cells)).collect())
        .unwrap_or_default();
    let mut margins = Vec::new();
    if let (Some(d), Some(n)) = (&decision, &noise) {
        let b = d.chosen.bits_per_second;
        let capped = d.link.as_ref().is_some_and(|l| l.limited);
        for s in &systems {
            if s.system.starts_with("tunneld") {
                continue;
            }
            let Some(x) = s.bps.filter(|x| *x > 0.0) else {
                continue;
            };
            let what = if s.basis == "rated" {
                format!(
                    "{}'s rated {}",
                    s.system.trim_end_matches(" (reference)"),
                    format_rate(x)
                )
            } else {
                format!("{} ({}) at {}", s.system, short(&s.note), format_rate(x))
            };
            let hi = b.max(x);
            let lo = b.min(x);
            let line = if s.basis != "rated" && choose::tied(hi, lo, n) {
                format!(
                    "Against {what}: within the run-to-run spread ({:+.1}%): no difference \
                     measured{}",
                    (b / x - 1.0) * 100.0,
                    if capped { "; the link capped both" } else { "" }
                )
            } else {
                format!(
                    "{:+.0}% throughput against {what} ({} vs {}){}",
                    (b / x - 1.0) * 100.0,
                    format_rate(b),
                    format_rate(x),
                    if capped && s.basis == "rated" {
                        "; tunneld's figure is capped by the emulated link"
                    } else {
                        ""
                    }
                )
            };
            margins.push(line);
        }
    }
    let plan = match (&meta, &decision, &noise) {
        (Some(m), Some(_), Some(n)) => {
            let all: Vec<&CellRecord> = cells.iter().collect();
            let link = decision.as_ref().and_then(|d| d.link.as_ref());
            choose::choose(&all, n, link)
                .and_then(|ch| plan::plan(m, &ch, link, opts.pair_rate.clone()))
                .map(|mut p| {
                    p.failover.clone_from(&opts.failover);
                    p
                })
        }
        _ => None,
    };
    Model {
        title: meta
            .as_ref()
            .map(|m| format!("Capacity plan: {}", m.name))
            .or_else(|| lab.map(|l| format!("Lab comparison: {}", l.scenario.name)))
            .unwrap_or_else(|| "tunbench report".into()),
        conditions: conds,
        systems,
        meta,
        cells,
        series,
        noise,
        decision,
        margins,
        timeline,
        latency,
        plan,
    }
}

/// The first clause of a note (before `:` or `;`), for inline mentions.
fn short(note: &str) -> String {
    note.split([';', ':'])
        .next()
        .unwrap_or(note)
        .trim()
        .to_string()
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
        categorical: values.iter().any(|v| !matches!(v, Value::Num(_))),
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

/// Table cells of one plan row.
pub fn plan_row(p: &Plan, r: &plan::PlanRow) -> Vec<String> {
    let mut v = vec![
        format_rate(r.target_bps),
        format!("{} + {} spare = {}", r.active, p.spares, r.total),
        format!(
            "{:.2} ({} whole)",
            r.cores_per_gateway,
            r.cores_per_gateway.ceil().max(1.0)
        ),
        format_rate(r.wan_bps),
        format!("{} ({})", format_rate(p.pair_bps), p.basis.label()),
    ];
    if let Some(u) = r.reference_units {
        v.push(u.to_string());
    }
    v
}

/// Headers matching [`plan_row`] (`reference`: the device's name).
pub fn plan_headers(reference: Option<&str>) -> Vec<String> {
    let mut h: Vec<String> = [
        "target (each direction)",
        "gateway pairs (N + spare)",
        "cores per gateway",
        "WAN capacity needed",
        "per pair",
    ]
    .map(str::to_string)
    .to_vec();
    if let Some(r) = reference {
        h.push(format!("{r} units (N + spare)"));
    }
    h
}

/// Table cells of one sweep cell: knob values, then figures.
pub fn cell_row(knobs: &[Knob], c: &CellRecord) -> Vec<String> {
    let mut row: Vec<String> = knobs
        .iter()
        .map(|k| c.cell.get(*k).map_or("–".into(), |v| show(*k, v)))
        .collect();
    row.push(if c.measured() {
        format_rate(c.bits_per_second)
    } else {
        "failed".into()
    });
    row.push(
        choose::cell_spread(c)
            .map(|s| format!("{s:.1}%"))
            .unwrap_or_else(|| "–".into()),
    );
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
            "spread",
            "p50 RTT ms",
            "p99 RTT ms",
            "CPU s/GB",
            "cores per gateway",
        ]
        .map(str::to_string),
    );
    h
}

/// Table cells of one system row.
pub fn system_row(s: &SystemRow) -> Vec<String> {
    vec![
        s.system.clone(),
        s.bps.map_or("–".into(), format_rate),
        fmt_opt(s.p99_ms, 1),
        fmt_opt(s.cpu_s_per_gb, 2),
        s.basis.to_string(),
        s.note.clone(),
    ]
}

/// Headers matching [`system_row`].
pub const SYSTEM_HEADERS: [&str; 6] = [
    "system",
    "throughput",
    "p99 RTT ms",
    "CPU s/GB",
    "basis",
    "variant / notes",
];

/// Table cells of one latency row (ms).
pub fn latency_row(l: &LatencyRow) -> Vec<String> {
    let ms = |us: f64| format!("{:.2}", us / 1e3);
    vec![
        l.label.clone(),
        ms(l.summary.min_us),
        ms(l.summary.p50_us),
        ms(l.summary.p90_us),
        ms(l.summary.p99_us),
        ms(l.summary.p999_us),
        ms(l.summary.max_us),
        l.summary.samples.to_string(),
    ]
}

/// Headers matching [`latency_row`].
pub const LATENCY_HEADERS: [&str; 8] = [
    "system", "min ms", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "probes",
];

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
