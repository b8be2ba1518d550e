//! The Markdown report (for review in a pull request, and the generated
//! blocks of the docs): the same sections and tables as the HTML page,
//! tables where the page has charts. Each section renders on its own, so
//! [`fill`] can refresh the `<!-- tunbench:NAME -->` blocks of a
//! hand-written document (docs/tuning.md) from a sweep.

use super::{
    cell_headers, cell_row, latency_row, mask_secrets, plan_headers, plan_row, system_row, Model,
    ReportError, LATENCY_HEADERS, SYSTEM_HEADERS,
};
use crate::sweep::knobs::Knob;
use crate::sweep::plan;
use tunneld::units::format_rate;

fn table(out: &mut String, headers: &[String], rows: &[Vec<String>]) {
    let clean = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    out.push_str(&format!(
        "| {} |\n|{}\n",
        headers
            .iter()
            .map(|h| clean(h))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(headers.len())
    ));
    for r in rows {
        out.push_str(&format!(
            "| {} |\n",
            r.iter().map(|c| clean(c)).collect::<Vec<_>>().join(" | ")
        ));
    }
    out.push('\n');
}

fn opt(v: Option<f64>, f: &dyn Fn(f64) -> String) -> String {
    v.map_or("–".into(), f)
}

/// Most rows of the timeline table: longer runs are sampled evenly.
const MAX_TIMELINE_ROWS: usize = 24;

/// One section by name (`conditions`, `systems`, `decision`, `knob:NAME`,
/// `timeline`, `latency`, `plan`, `cells`); None if the name is unknown
/// or the results have nothing for it.
pub fn section(m: &Model, name: &str) -> Option<String> {
    let mut o = String::new();
    match name {
        "conditions" => {
            if m.conditions.is_empty() {
                return None;
            }
            for (k, v) in &m.conditions {
                o.push_str(&format!("- **{k}**: {v}\n"));
            }
            o.push('\n');
        }
        "systems" => {
            if m.systems.is_empty() {
                return None;
            }
            let rows: Vec<Vec<String>> = m.systems.iter().map(system_row).collect();
            table(&mut o, &SYSTEM_HEADERS.map(str::to_string), &rows);
            for l in &m.margins {
                o.push_str(&format!("- {l}\n"));
            }
            if !m.margins.is_empty() {
                o.push('\n');
            }
        }
        "decision" => {
            let d = m.decision.as_ref()?;
            o.push_str(&format!(
                "**{}**: {}, p99 RTT under load {} ms, {} CPU s/GB, {} cores per gateway.\n\n",
                d.chosen.cell.label(),
                format_rate(d.chosen.bits_per_second),
                opt(d.chosen.p99_loaded_ms, &|v| format!("{v:.1}")),
                opt(d.chosen.cpu_s_per_gb, &|v| format!("{v:.2}")),
                opt(d.chosen.cpu_cores, &|v| format!("{v:.2}")),
            ));
            for l in &d.lines {
                o.push_str(&format!("- {l}\n"));
            }
            if d.ties.len() > 1 {
                o.push_str(&format!(
                    "- Tied cells, cheapest first: {}\n",
                    d.ties
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            o.push('\n');
        }
        "timeline" => {
            let t = m.timeline.as_ref()?;
            o.push_str(&format!("{}.\n\n", t.label));
            let n = t.throughput.len().max(t.rtt_ms.len());
            let stride = n.div_ceil(MAX_TIMELINE_ROWS).max(1);
            let rows: Vec<Vec<String>> = (0..n)
                .step_by(stride)
                .map(|i| {
                    let tp = t.throughput.get(i);
                    let rt = t.rtt_ms.get(i);
                    vec![
                        format!("{:.1}", tp.or(rt).map_or(0.0, |p| p.0)),
                        tp.map_or("–".into(), |p| format_rate(p.1)),
                        rt.map_or("–".into(), |p| format!("{:.2}", p.1)),
                    ]
                })
                .collect();
            table(
                &mut o,
                &["t s", "throughput", "mean RTT ms"].map(str::to_string),
                &rows,
            );
        }
        "latency" => {
            if m.latency.is_empty() {
                return None;
            }
            let rows: Vec<Vec<String>> = m.latency.iter().map(latency_row).collect();
            table(&mut o, &LATENCY_HEADERS.map(str::to_string), &rows);
        }
        "plan" => {
            let p = m.plan.as_ref()?;
            let reference = m
                .meta
                .as_ref()
                .and_then(|x| x.reference.as_ref())
                .map(|r| r.name.as_str());
            let rows: Vec<Vec<String>> = p.rows.iter().map(|r| plan_row(p, r)).collect();
            table(&mut o, &plan_headers(reference), &rows);
            o.push_str("Assumptions:\n\n");
            for a in plan::assumptions(p) {
                o.push_str(&format!("- {a}\n"));
            }
            o.push('\n');
        }
        "cells" => {
            let meta = m.meta.as_ref()?;
            let rows: Vec<Vec<String>> = m.cells.iter().map(|c| cell_row(&meta.knobs, c)).collect();
            table(&mut o, &cell_headers(&meta.knobs), &rows);
            let failed: Vec<String> = m
                .cells
                .iter()
                .filter_map(|c| c.error.as_ref().map(|e| format!("- `{}`: {e}", c.key)))
                .collect();
            if !failed.is_empty() {
                o.push_str("Errors:\n\n");
                o.push_str(&failed.join("\n"));
                o.push_str("\n\n");
            }
        }
        other => {
            let k = other.strip_prefix("knob:")?;
            let s = m.series.iter().find(|s| s.knob.as_str() == k)?;
            let headers: Vec<String> = [
                s.knob.as_str(),
                "best throughput",
                "median throughput",
                "median p50 RTT ms",
                "median p99 RTT ms",
                "median CPU s/GB",
            ]
            .map(str::to_string)
            .to_vec();
            let rows: Vec<Vec<String>> = (0..s.labels.len())
                .map(|i| {
                    vec![
                        s.labels[i].clone(),
                        opt(s.best_bps[i], &format_rate),
                        opt(s.median_bps[i], &format_rate),
                        opt(s.p50_ms[i], &|v| format!("{v:.1}")),
                        opt(s.p99_ms[i], &|v| format!("{v:.1}")),
                        opt(s.cpu_s_per_gb[i], &|v| format!("{v:.2}")),
                    ]
                })
                .collect();
            table(&mut o, &headers, &rows);
        }
    }
    Some(mask_secrets(&o))
}

/// Renders the report as Markdown.
pub fn render(m: &Model) -> String {
    let mut o = format!("# {}\n\n", m.title);
    let knobs: Vec<Knob> = m.series.iter().map(|s| s.knob).collect();
    let mut parts: Vec<(String, String)> = vec![
        ("Conditions as run".into(), "conditions".into()),
        ("Systems compared".into(), "systems".into()),
        ("Chosen setting".into(), "decision".into()),
        ("The chosen setting over time".into(), "timeline".into()),
        ("Latency under load".into(), "latency".into()),
    ];
    for k in knobs {
        parts.push((format!("Against `{k}`"), format!("knob:{k}")));
    }
    parts.push(("Capacity planning".into(), "plan".into()));
    parts.push(("All cells".into(), "cells".into()));
    for (title, name) in parts {
        if let Some(s) = section(m, &name) {
            o.push_str(&format!("## {title}\n\n{s}"));
        }
    }
    mask_secrets(&o)
}

/// Refills every `<!-- tunbench:NAME -->` … `<!-- /tunbench:NAME -->`
/// block of `template` with [`section`] NAME; text outside the blocks is
/// kept. A marker is a line of its own (a marker quoted in prose is text).
/// A block whose section has no figures says so.
pub fn fill(template: &str, m: &Model, file: &str) -> Result<String, ReportError> {
    let err = |message: String| ReportError::Fill {
        file: file.to_string(),
        message,
    };
    let open_name = |l: &str| {
        l.trim()
            .strip_prefix("<!-- tunbench:")
            .and_then(|x| x.strip_suffix("-->"))
            .map(|x| x.trim().to_string())
    };
    let mut out = String::with_capacity(template.len());
    let mut lines = template.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        out.push_str(line);
        out.push('\n');
        let Some(name) = open_name(line) else {
            continue;
        };
        let close = format!("<!-- /tunbench:{name} -->");
        let body = match section(m, &name) {
            Some(s) => s,
            None if is_section_name(&name) => "(no figures for this in the results)\n".into(),
            None => return Err(err(format!("line {}: unknown block `{name}`", i + 1))),
        };
        if !lines.any(|(_, l)| l.trim() == close) {
            return Err(err(format!(
                "line {}: block `{name}` has no `{close}`",
                i + 1
            )));
        }
        out.push('\n');
        out.push_str(body.trim_end());
        out.push_str("\n\n");
        out.push_str(&close);
        out.push('\n');
    }
    if !template.ends_with('\n') {
        out.pop();
    }
    Ok(out)
}

fn is_section_name(n: &str) -> bool {
    matches!(
        n,
        "conditions" | "systems" | "decision" | "timeline" | "latency" | "plan" | "cells"
    ) || n
        .strip_prefix("knob:")
        .is_some_and(|k| crate::sweep::knobs::ALL.iter().any(|x| x.as_str() == k))
}
