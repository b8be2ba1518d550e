//! The HTML report: one self-contained file (inline CSS and SVG, no
//! scripts, no fetches) that reads in a browser and prints on A4. Charts
//! use the page width; every table of the Markdown report is here too.

use super::svg::{
    bar_chart, esc, line_chart, plan_chart, systems_chart, xy_chart, PlanBar, Series, SystemBar,
    XySeries,
};
use super::{
    cell_headers, cell_row, latency_row, mask_secrets, plan_headers, plan_row, system_row, Model,
    LATENCY_HEADERS, SYSTEM_HEADERS,
};
use crate::sweep::plan;
use tunneld::units::format_rate;

const CSS: &str = "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;background:#fff}\
h1{border-bottom:2px solid #1f77b4;padding-bottom:.2em}h2{margin-top:1.6em;color:#1f4e79}\
table{border-collapse:collapse;margin:.6em 0;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}\
th{background:#eef3f8}td:first-child,th:first-child{text-align:left}\
.conditions th{text-align:left;vertical-align:top;white-space:nowrap}.conditions td{text-align:left}\
.chart{width:100%;margin:.8em 0}.chart svg{display:block;width:100%;height:auto;border:1px solid #e3e3e3}\
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:12px}\
.charts svg{display:block;width:100%;height:auto;border:1px solid #e3e3e3}\
.best{background:#eef8ee;border-left:4px solid #2ca02c;padding:.5em 1em}\
.basis{color:#555;font-size:13px}.notes td:last-child{text-align:left}\
@media print{body{margin:0;max-width:none}.charts{display:block}.charts svg,.chart svg{page-break-inside:avoid}h2{page-break-after:avoid}}";

fn table(o: &mut String, headers: &[String], rows: &[Vec<String>]) {
    table_with(o, "", headers, rows);
}

/// A table whose `class` (e.g. `notes`: the last column is text, left-aligned).
fn table_with(o: &mut String, class: &str, headers: &[String], rows: &[Vec<String>]) {
    if class.is_empty() {
        o.push_str("<table><thead><tr>");
    } else {
        o.push_str(&format!("<table class=\"{class}\"><thead><tr>"));
    }
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

fn list(o: &mut String, items: &[String]) {
    if items.is_empty() {
        return;
    }
    o.push_str("<ul>");
    for l in items {
        o.push_str(&format!("<li>{}</li>", esc(l)));
    }
    o.push_str("</ul>");
}

fn chart(o: &mut String, svg: &str) {
    o.push_str("<div class=\"chart\">");
    o.push_str(svg);
    o.push_str("</div>");
}

/// Renders the report as one HTML page.
pub fn render(m: &Model) -> String {
    let mut o = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><style>{CSS}</style></head><body><h1>{t}</h1>",
        t = esc(&m.title)
    );
    o.push_str("<h2>Conditions as run</h2><table class=\"conditions\"><tbody>");
    for (k, v) in &m.conditions {
        o.push_str(&format!("<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v)));
    }
    o.push_str("</tbody></table>");
    let reference = m.meta.as_ref().and_then(|x| x.reference.as_ref());
    if !m.systems.is_empty() {
        o.push_str("<h2>Systems compared</h2>");
        let bars: Vec<SystemBar> = m
            .systems
            .iter()
            .map(|s| SystemBar {
                label: s.system.clone(),
                bps: s.bps,
                cpu: s.cpu_s_per_gb,
                stated: s.basis == "rated",
            })
            .collect();
        chart(
            &mut o,
            &systems_chart(
                "Systems: throughput and CPU cost",
                &bars,
                reference.map(|r| (r.name.as_str(), r.rate.0 as f64)),
            ),
        );
        let rows: Vec<Vec<String>> = m.systems.iter().map(system_row).collect();
        table_with(&mut o, "notes", &SYSTEM_HEADERS.map(str::to_string), &rows);
        list(&mut o, &m.margins);
    }
    if let Some(d) = &m.decision {
        o.push_str(&format!(
            "<h2>Chosen setting</h2><div class=\"best\"><p><b>{}</b>: {}, p99 RTT under load {} ms, \
             {} CPU s/GB, {} cores per gateway.</p>",
            esc(&d.chosen.cell.label()),
            esc(&format_rate(d.chosen.bits_per_second)),
            d.chosen.p99_loaded_ms.map_or("–".into(), |v| format!("{v:.1}")),
            d.chosen.cpu_s_per_gb.map_or("–".into(), |v| format!("{v:.2}")),
            d.chosen.cpu_cores.map_or("–".into(), |v| format!("{v:.2}")),
        ));
        let mut lines = d.lines.clone();
        if d.ties.len() > 1 {
            lines.push(format!("Tied cells, cheapest first: {}", d.ties.join("; ")));
        }
        list(&mut o, &lines);
        o.push_str("</div>");
    }
    if let Some(t) = &m.timeline {
        o.push_str(&format!(
            "<h2>The chosen setting over time</h2><p class=\"basis\">{}.</p>",
            esc(&t.label)
        ));
        chart(
            &mut o,
            &xy_chart(
                "Throughput and RTT over time (chosen setting)",
                "seconds into the measured window",
                "throughput, Mbit/s",
                Some("mean RTT, ms (dashed)"),
                &[
                    XySeries {
                        name: "throughput",
                        color: "#1f77b4",
                        points: &t.throughput,
                        right: false,
                    },
                    XySeries {
                        name: "mean RTT (right axis)",
                        color: "#d62728",
                        points: &t.rtt_ms,
                        right: true,
                    },
                ],
                None,
                1e6,
                1.0,
            ),
        );
    }
    if !m.latency.is_empty() {
        o.push_str("<h2>Latency under load</h2>");
        const COLORS: [&str; 6] = [
            "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f",
        ];
        let pts: Vec<Vec<(f64, f64)>> = m
            .latency
            .iter()
            .map(|l| l.summary.cdf.iter().map(|q| (q[1] / 1e3, q[0])).collect())
            .collect();
        let series: Vec<XySeries> = m
            .latency
            .iter()
            .zip(&pts)
            .enumerate()
            .filter(|(_, (_, p))| !p.is_empty())
            .map(|(i, (l, p))| XySeries {
                name: &l.label,
                color: COLORS[i % COLORS.len()],
                points: p,
                right: false,
            })
            .collect();
        if !series.is_empty() {
            chart(
                &mut o,
                &xy_chart(
                    "RTT under load: distribution (CDF)",
                    "RTT, ms",
                    "fraction of probes",
                    None,
                    &series,
                    Some(1.0),
                    1.0,
                    1.0,
                ),
            );
        }
        let rows: Vec<Vec<String>> = m.latency.iter().map(latency_row).collect();
        table(&mut o, &LATENCY_HEADERS.map(str::to_string), &rows);
    }
    for s in &m.series {
        o.push_str(&format!(
            "<h2>Against <code>{}</code></h2><div class=\"charts\">",
            esc(s.knob.as_str())
        ));
        type Draw = fn(&str, &str, &str, &[String], &[Series], f64) -> String;
        let draw: Draw = if s.categorical { bar_chart } else { line_chart };
        o.push_str(&draw(
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
            1e6,
        ));
        o.push_str(&draw(
            &format!("RTT under load vs {}", s.knob),
            s.knob.as_str(),
            "ms",
            &s.labels,
            &[
                Series {
                    name: "median p50",
                    color: "#2ca02c",
                    values: &s.p50_ms,
                },
                Series {
                    name: "median p99",
                    color: "#d62728",
                    values: &s.p99_ms,
                },
            ],
            1.0,
        ));
        o.push_str(&draw(
            &format!("CPU cost vs {}", s.knob),
            s.knob.as_str(),
            "CPU s per GB",
            &s.labels,
            &[Series {
                name: "median CPU s/GB",
                color: "#9467bd",
                values: &s.cpu_s_per_gb,
            }],
            1.0,
        ));
        o.push_str("</div>");
    }
    if let Some(p) = &m.plan {
        o.push_str("<h2>Capacity planning</h2>");
        o.push_str(&format!(
            "<p class=\"basis\">Per-pair throughput: {} — <b>{}</b>.</p>",
            esc(&format_rate(p.pair_bps)),
            esc(p.basis.label())
        ));
        let bars: Vec<PlanBar> = p
            .rows
            .iter()
            .map(|r| PlanBar {
                label: format_rate(r.target_bps),
                active: r.active,
                spare: r.total - r.active,
                cores: r.cores_per_gateway,
                reference_units: r.reference_units,
            })
            .collect();
        chart(
            &mut o,
            &plan_chart(
                &format!(
                    "Plan: gateway pairs (N+{}) and cores per gateway against target rate",
                    p.spares
                ),
                &bars,
                reference.map(|r| r.name.as_str()),
            ),
        );
        let rows: Vec<Vec<String>> = p.rows.iter().map(|r| plan_row(p, r)).collect();
        table(
            &mut o,
            &plan_headers(reference.map(|r| r.name.as_str())),
            &rows,
        );
        o.push_str("<p>Assumptions:</p>");
        list(&mut o, &plan::assumptions(p));
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
            o.push_str("<p>Errors:</p>");
            list(&mut o, &errs);
        }
    }
    o.push_str(
        "<p style=\"color:#777;font-size:12px\">Generated by tunbench report.</p></body></html>\n",
    );
    mask_secrets(&o)
}
