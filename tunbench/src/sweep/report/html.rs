//! The HTML report: one self-contained file (inline CSS and SVG, no
//! scripts, no fetches) that reads in a browser and prints on A4.

use super::svg::{esc, line_chart, Series};
use super::{cell_headers, cell_row, plan_assumptions, system_row, Model, SYSTEM_HEADERS};
use tunneld::units::format_rate;

const CSS: &str = "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;background:#fff}\
h1{border-bottom:2px solid #1f77b4;padding-bottom:.2em}h2{margin-top:1.6em;color:#1f4e79}\
table{border-collapse:collapse;margin:.6em 0;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}\
th{background:#eef3f8}td:first-child,th:first-child{text-align:left}\
.charts{display:flex;flex-wrap:wrap;gap:12px}.charts svg{border:1px solid #e3e3e3;max-width:100%;height:auto}\
.best{background:#eef8ee;border-left:4px solid #2ca02c;padding:.5em 1em}\
@media print{body{margin:0;max-width:none}.charts{display:block}.charts svg{page-break-inside:avoid;width:48%}h2{page-break-after:avoid}}";

fn table(o: &mut String, headers: &[String], rows: &[Vec<String>]) {
    o.push_str("<table><thead><tr>");
    for h in headers {
        o.push_str(&format!("<th>{}</th>", esc(h)));
    }
    o.push_str("</tr></thead><tbody>");
    for r in rows {
        o.push_str("<tr>");
        for c in r {
            o.push_str(&format!("<td>{}</td>", esc(c)));
        }
        o.push_str("</tr>");
    }
    o.push_str("</tbody></table>");
}

fn mbit(v: f64) -> String {
    format!("{:.0}", v / 1e6)
}

/// Renders the report as one HTML page.
pub fn render(m: &Model) -> String {
    let mut o = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><style>{CSS}</style></head><body><h1>{t}</h1>",
        t = esc(&m.title)
    );
    o.push_str("<h2>Scenario</h2><table><tbody>");
    for (k, v) in &m.scenario {
        o.push_str(&format!(
            "<tr><th>{}</th><td style=\"text-align:left\">{}</td></tr>",
            esc(k),
            esc(v)
        ));
    }
    o.push_str("</tbody></table>");
    if !m.systems.is_empty() {
        o.push_str("<h2>Systems compared</h2>");
        let rows: Vec<Vec<String>> = m.systems.iter().map(system_row).collect();
        table(&mut o, &SYSTEM_HEADERS.map(str::to_string), &rows);
    }
    if let Some(b) = &m.best {
        o.push_str(&format!(
            "<h2>Best setting</h2><div class=\"best\"><p><b>{}</b>: {}, p99 RTT under load {} ms, {} CPU s/GB.</p>",
            esc(&b.cell.label()),
            esc(&format_rate(b.bits_per_second)),
            b.p99_loaded_ms.map_or("–".into(), |v| format!("{v:.1}")),
            b.cpu_s_per_gb.map_or("–".into(), |v| format!("{v:.2}")),
        ));
        if !m.margins.is_empty() {
            o.push_str("<ul>");
            for l in &m.margins {
                o.push_str(&format!("<li>{}</li>", esc(l)));
            }
            o.push_str("</ul>");
        }
        o.push_str("</div>");
    }
    for s in &m.series {
        o.push_str(&format!(
            "<h2>Against <code>{}</code></h2><div class=\"charts\">",
            esc(s.knob.as_str())
        ));
        o.push_str(&line_chart(
            &format!("Throughput vs {}", s.knob),
            s.knob.as_str(),
            "Mbit/s",
            &s.labels,
            &[
                Series {
                    name: "best",
                    color: "#1f77b4",
                    values: &s.best_bps,
                },
                Series {
                    name: "median",
                    color: "#ff7f0e",
                    values: &s.median_bps,
                },
            ],
            &mbit,
        ));
        o.push_str(&line_chart(
            &format!("RTT under load vs {}", s.knob),
            s.knob.as_str(),
            "ms",
            &s.labels,
            &[
                Series {
                    name: "p50",
                    color: "#2ca02c",
                    values: &s.p50_ms,
                },
                Series {
                    name: "p99",
                    color: "#d62728",
                    values: &s.p99_ms,
                },
            ],
            &|v| format!("{v:.1}"),
        ));
        o.push_str(&line_chart(
            &format!("CPU cost vs {}", s.knob),
            s.knob.as_str(),
            "CPU s per GB",
            &s.labels,
            &[Series {
                name: "median CPU s/GB",
                color: "#9467bd",
                values: &s.cpu_s_per_gb,
            }],
            &|v| format!("{v:.2}"),
        ));
        o.push_str("</div>");
    }
    if let Some(p) = &m.plan {
        o.push_str("<h2>Capacity planning</h2>");
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
        o.push_str("<p>Assumptions:</p><ul>");
        for a in plan_assumptions(p) {
            o.push_str(&format!("<li>{}</li>", esc(&a)));
        }
        o.push_str("</ul>");
    }
    if let Some(meta) = &m.meta {
        o.push_str("<h2>All cells</h2>");
        let rows: Vec<Vec<String>> = m.cells.iter().map(|c| cell_row(&meta.knobs, c)).collect();
        table(&mut o, &cell_headers(&meta.knobs), &rows);
        let errs: Vec<String> = m
            .cells
            .iter()
            .filter_map(|c| c.error.as_ref().map(|e| format!("{}: {e}", c.key)))
            .collect();
        if !errs.is_empty() {
            o.push_str("<p>Errors:</p><ul>");
            for e in errs {
                o.push_str(&format!("<li>{}</li>", esc(&e)));
            }
            o.push_str("</ul>");
        }
    }
    o.push_str(
        "<p style=\"color:#777;font-size:12px\">Generated by tunbench report.</p></body></html>\n",
    );
    o
}
