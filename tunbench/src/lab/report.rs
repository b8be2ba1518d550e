//! The lab's results: the JSON document (schema `tunbench.lab/1`), the
//! per-system rows with medians over repeats, the terminal table and the
//! Markdown summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use tunneld::units::format_rate;

use super::measure::{PingFigures, TestFigures};
use super::scenario::{Scenario, System};
use super::wan::EmulatorKind;
use super::wanemu::EmuStats;

/// Schema name of `results.json`.
pub const SCHEMA: &str = "tunbench.lab/1";

/// What the link checks at the start of the run found.
#[derive(Debug, Clone, Serialize)]
pub struct LinkFigures {
    /// Which emulator carried the link.
    pub emulator: EmulatorKind,
    /// Its human label.
    pub emulator_label: String,
    /// Why netem was not used, if it was not.
    pub netem_note: Option<String>,
    /// Configured rate, bit/s (None = unlimited).
    pub configured_rate_bps: Option<u64>,
    /// Configured round trip added by the link, ms.
    pub configured_rtt_ms: f64,
    /// Configured random loss per direction, percent.
    pub configured_loss_percent: f64,
    /// Ping across the raw path.
    pub ping: Option<PingFigures>,
    /// Why the ping check failed.
    pub ping_error: Option<String>,
    /// Rate check: receiver payload rate, bit/s.
    pub udp_payload_bps: Option<f64>,
    /// The same as frame bytes on the wire (comparable to the configured rate).
    pub udp_wire_bps: Option<f64>,
    /// UDP rate check: loss seen by the receiver, percent.
    pub udp_loss_percent: Option<f64>,
    /// How the rate was checked: `udp-125-percent` or `tcp-4-streams`.
    pub rate_check: Option<String>,
    /// Why the rate check failed or was skipped.
    pub rate_note: Option<String>,
    /// Userspace emulator counters over the whole run.
    pub emulator_stats: Option<EmuStats>,
    /// CPU seconds the userspace emulator used over the whole run.
    pub emulator_cpu_s: Option<f64>,
}

/// One measurement round of one system.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// The system (its row name in JSON).
    #[serde(serialize_with = "super::systems::spec::serialize_name")]
    pub system: System,
    /// Repeat number, from 0.
    pub repeat: u32,
    /// Which implementation ran.
    pub variant: String,
    /// One per stream count.
    pub tests: Vec<TestFigures>,
}

/// Whether a row has numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RowStatus {
    /// Measured.
    Ok,
    /// Software missing.
    NotInstalled,
    /// Could not be brought up or measured.
    Failed,
}

/// Median throughput of one stream count.
#[derive(Debug, Clone, Serialize)]
pub struct StreamFigure {
    /// Parallel streams.
    pub streams: u32,
    /// Median over repeats, bit/s.
    pub median_bps: f64,
    /// Every repeat's value, bit/s.
    pub samples_bps: Vec<f64>,
}

/// One row of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The system (its row name in JSON).
    #[serde(serialize_with = "super::systems::spec::serialize_name")]
    pub system: System,
    /// Status.
    pub status: RowStatus,
    /// Why there are no numbers.
    pub reason: Option<String>,
    /// Which implementation ran.
    pub variant: Option<String>,
    /// Throughput per stream count (medians).
    pub throughput: Vec<StreamFigure>,
    /// Idle latency p50 / p99, ms (medians).
    pub latency_idle_ms: Option<(f64, f64)>,
    /// Latency under the largest load, p50 / p99, ms (medians).
    pub latency_loaded_ms: Option<(f64, f64)>,
    /// CPU seconds of the tunnel processes per GB carried (median, largest load).
    pub cpu_s_per_gb: Option<f64>,
    /// Why there is no CPU figure ("kernel").
    pub cpu_note: Option<String>,
    /// Errors of individual tests.
    pub errors: Vec<String>,
}

/// The whole result document.
#[derive(Debug, Clone, Serialize)]
pub struct LabReport {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Start, seconds since the Unix epoch.
    pub started_unix_s: f64,
    /// Wall time of the run, s.
    pub wall_s: f64,
    /// Kernel release.
    pub kernel: String,
    /// CPUs available.
    pub cpus: usize,
    /// The scenario as run.
    pub scenario: Scenario,
    /// Link checks.
    pub link: LinkFigures,
    /// The comparison.
    pub rows: Vec<Row>,
    /// Every measurement.
    pub measurements: Vec<Measurement>,
}

/// Median of `v` (mean of the middle two for even lengths); None if empty.
pub fn median(v: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Builds a measured row from its rounds.
pub fn measured_row(
    system: System,
    rounds: &[&Measurement],
    streams: &[u32],
    cpu_note: Option<String>,
) -> Row {
    let mut throughput = Vec::new();
    let mut errors = Vec::new();
    for &n in streams {
        let samples: Vec<f64> = rounds
            .iter()
            .flat_map(|m| m.tests.iter().filter(|t| t.streams == n))
            .filter(|t| t.bits_per_second > 0.0)
            .map(|t| t.bits_per_second)
            .collect();
        if let Some(m) = median(&samples) {
            throughput.push(StreamFigure {
                streams: n,
                median_bps: m,
                samples_bps: samples,
            });
        }
    }
    for m in rounds {
        for t in &m.tests {
            if let Some(e) = &t.error {
                errors.push(format!("repeat {}, {} streams: {e}", m.repeat, t.streams));
            }
        }
    }
    let maxn = streams.iter().copied().max().unwrap_or(1);
    let loaded: Vec<&TestFigures> = rounds
        .iter()
        .flat_map(|m| m.tests.iter().filter(|t| t.streams == maxn))
        .collect();
    let lat = |pick: &dyn Fn(&TestFigures) -> Option<(f64, f64)>| {
        let v: Vec<(f64, f64)> = loaded.iter().filter_map(|t| pick(t)).collect();
        let p50 = median(&v.iter().map(|x| x.0).collect::<Vec<_>>())?;
        let p99 = median(&v.iter().map(|x| x.1).collect::<Vec<_>>())?;
        Some((p50, p99))
    };
    let ms = |s: &Option<crate::engine::LatencySummary>| {
        s.as_ref()
            .filter(|l| l.samples > 0)
            .map(|l| (l.p50_us / 1e3, l.p99_us / 1e3))
    };
    let cpu = median(
        &loaded
            .iter()
            .filter_map(|t| t.cpu_s_per_gb)
            .collect::<Vec<_>>(),
    );
    let status = if throughput.is_empty() {
        RowStatus::Failed
    } else {
        RowStatus::Ok
    };
    Row {
        system,
        status,
        reason: (status == RowStatus::Failed).then(|| {
            errors
                .first()
                .cloned()
                .unwrap_or_else(|| "no test produced a number".into())
        }),
        variant: rounds.first().map(|m| m.variant.clone()),
        throughput,
        latency_idle_ms: lat(&|t| ms(&t.latency_idle)),
        latency_loaded_ms: lat(&|t| ms(&t.latency_loaded)),
        cpu_s_per_gb: cpu,
        cpu_note,
        errors,
    }
}

fn rate(bps: f64) -> String {
    format_rate(bps)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Columns of the table: system, one per stream count, latency, CPU.
fn cells(report: &LabReport) -> (Vec<String>, Vec<Vec<String>>) {
    let streams = &report.scenario.test.streams;
    let mut head = vec!["system".to_string()];
    for n in streams {
        head.push(format!("{n} stream{}", if *n == 1 { "" } else { "s" }));
    }
    head.extend([
        "idle p50/p99 ms".into(),
        "loaded p50/p99 ms".into(),
        "CPU s/GB".into(),
    ]);
    let mut rows = Vec::new();
    for r in &report.rows {
        let mut c = vec![r.system.to_string()];
        if r.status != RowStatus::Ok {
            let why = r.reason.as_deref().map(first_line).unwrap_or("");
            let tag = match r.status {
                RowStatus::NotInstalled => "not installed",
                _ => "failed",
            };
            c.push(format!("{tag}: {why}"));
            rows.push(c);
            continue;
        }
        for n in streams {
            c.push(
                r.throughput
                    .iter()
                    .find(|f| f.streams == *n)
                    .map(|f| rate(f.median_bps))
                    .unwrap_or_else(|| "-".into()),
            );
        }
        let pair = |p: Option<(f64, f64)>| {
            p.map(|(a, b)| format!("{a:.2} / {b:.2}"))
                .unwrap_or_else(|| "-".into())
        };
        c.push(pair(r.latency_idle_ms));
        c.push(pair(r.latency_loaded_ms));
        c.push(match (r.cpu_s_per_gb, &r.cpu_note) {
            (Some(v), _) => format!("{v:.2}"),
            (None, Some(n)) => n.clone(),
            (None, None) => "n/a".into(),
        });
        rows.push(c);
    }
    (head, rows)
}

/// The link-check lines shared by the table and the Markdown.
fn link_lines(report: &LabReport) -> Vec<String> {
    let l = &report.link;
    let mut v = vec![format!("emulator: {}", l.emulator_label)];
    if let Some(n) = &l.netem_note {
        v.push(format!("netem: {n}"));
    }
    let configured = format!(
        "configured: rate {}, RTT {:.1} ms, loss {}%",
        l.configured_rate_bps
            .map(|r| rate(r as f64))
            .unwrap_or_else(|| "unlimited".into()),
        l.configured_rtt_ms,
        l.configured_loss_percent
    );
    v.push(configured);
    match (&l.ping, &l.ping_error) {
        (Some(p), _) => v.push(format!(
            "measured RTT (ping, raw path): min {:.2} / avg {:.2} / max {:.2} ms ({}/{} replies)",
            p.min_ms, p.avg_ms, p.max_ms, p.received, p.sent
        )),
        (None, Some(e)) => v.push(format!("measured RTT: failed: {e}")),
        _ => {}
    }
    match (l.udp_wire_bps, &l.rate_note) {
        (Some(w), _) if l.rate_check.as_deref() == Some("tcp-4-streams") => v.push(format!(
            "measured rate (4 TCP streams, raw path, a lower bound): {} on the wire ({} goodput)",
            rate(w),
            rate(l.udp_payload_bps.unwrap_or(0.0)),
        )),
        (Some(w), _) => v.push(format!(
            "measured rate (UDP at 125%, raw path): {} on the wire ({} payload, {:.2}% lost)",
            rate(w),
            rate(l.udp_payload_bps.unwrap_or(0.0)),
            l.udp_loss_percent.unwrap_or(0.0)
        )),
        (None, Some(n)) => v.push(format!("measured rate: {n}")),
        _ => {}
    }
    v
}

/// The terminal table.
pub fn render_table(report: &LabReport) -> String {
    let (head, rows) = cells(report);
    let ncols = head.len();
    let mut width = vec![0usize; ncols];
    for r in std::iter::once(&head).chain(rows.iter()) {
        for (i, c) in r.iter().enumerate().take(ncols) {
            if r.len() == ncols || i == 0 {
                width[i] = width[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scenario {}: {}",
        report.scenario.name, report.scenario.description
    );
    for l in link_lines(report) {
        let _ = writeln!(out, "  {l}");
    }
    out.push('\n');
    for r in std::iter::once(&head).chain(rows.iter()) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if r.len() < ncols && i == r.len() - 1 {
                line.push_str(c);
            } else {
                let _ = write!(line, "{:<w$}  ", c, w = width[i]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// The Markdown summary.
pub fn render_markdown(report: &LabReport) -> String {
    let (head, rows) = cells(report);
    let mut md = String::new();
    let _ = writeln!(md, "# tunbench lab: {}\n", report.scenario.name);
    if !report.scenario.description.is_empty() {
        let _ = writeln!(md, "{}\n", report.scenario.description);
    }
    let _ = writeln!(
        md,
        "Kernel {}, {} CPUs; {} repeat(s), {} s per test after {} s warm-up; medians over repeats. \
         Throughput is TCP goodput measured by the receiver (host-b).\n",
        report.kernel,
        report.cpus,
        report.scenario.test.repeats,
        report.scenario.test.duration.0.as_secs_f64(),
        report.scenario.test.omit.0.as_secs_f64()
    );
    let _ = writeln!(md, "## Link\n");
    for l in link_lines(report) {
        let _ = writeln!(md, "- {l}");
    }
    let _ = writeln!(md, "\n## Comparison\n");
    let _ = writeln!(md, "| {} |", head.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(head.len()));
    for r in rows {
        let mut r = r.clone();
        while r.len() < head.len() {
            r.push(String::new());
        }
        let _ = writeln!(md, "| {} |", r.join(" | ").replace('\n', " "));
    }
    let _ = writeln!(md, "\n## Systems\n");
    let mut seen = BTreeMap::new();
    for r in &report.rows {
        seen.insert(r.system.clone(), ());
        let what = r
            .variant
            .clone()
            .or_else(|| r.reason.clone())
            .unwrap_or_default();
        let _ = writeln!(md, "- **{}**: {}", r.system, first_line(&what));
    }
    let _ = writeln!(
        md,
        "\nCPU s/GB: CPU time (user + system) of the tunnel processes on both gateways per \
         10^9 bytes carried, during the largest-stream test; `kernel` where the data path is \
         the kernel's and not attributable to a process."
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
    }
}
