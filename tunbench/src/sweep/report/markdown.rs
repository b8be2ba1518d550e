//! The Markdown report (for review in a pull request): the same sections as
//! the HTML page, with tables instead of charts.

use super::{cell_headers, cell_row, plan_assumptions, system_row, Model, SYSTEM_HEADERS};
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

/// Renders the report as Markdown.
pub fn render(m: &Model) -> String {
    let mut o = format!("# {}\n\n", m.title);
    o.push_str("## Scenario\n\n");
    for (k, v) in &m.scenario {
        o.push_str(&format!("- **{k}**: {v}\n"));
    }
    o.push('\n');
    if !m.systems.is_empty() {
        o.push_str("## Systems compared\n\n");
        let rows: Vec<Vec<String>> = m.systems.iter().map(system_row).collect();
        table(&mut o, &SYSTEM_HEADERS.map(str::to_string), &rows);
    }
    if let Some(b) = &m.best {
        o.push_str("## Best setting\n\n");
        o.push_str(&format!(
            "**{}**: {}, p99 RTT under load {} ms, {} CPU s/GB.\n\n",
            b.cell.label(),
            format_rate(b.bits_per_second),
            opt(b.p99_loaded_ms, &|v| format!("{v:.1}")),
            opt(b.cpu_s_per_gb, &|v| format!("{v:.2}")),
        ));
        for l in &m.margins {
            o.push_str(&format!("- {l}\n"));
        }
        if !m.margins.is_empty() {
            o.push('\n');
        }
    }
    for s in &m.series {
        o.push_str(&format!("## Against `{}`\n\n", s.knob));
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
    if let Some(p) = &m.plan {
        o.push_str("## Capacity planning\n\n");
        let rows: Vec<Vec<String>> = p
            .rows
            .iter()
            .map(|r| {
                vec![
                    format_rate(r.target_bps),
                    r.pairs.to_string(),
                    format!("{:.1}", r.cores_per_gateway),
                ]
            })
            .collect();
        table(
            &mut o,
            &[
                "target (each direction)",
                "gateway pairs",
                "cores per gateway",
            ]
            .map(str::to_string),
            &rows,
        );
        o.push_str("Assumptions:\n\n");
        for a in plan_assumptions(p) {
            o.push_str(&format!("- {a}\n"));
        }
        o.push('\n');
    }
    if let Some(meta) = &m.meta {
        o.push_str("## All cells\n\n");
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
    o
}
