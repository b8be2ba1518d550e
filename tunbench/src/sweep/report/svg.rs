//! Inline SVG charts drawn by hand: line charts over a knob's ordered
//! values, grouped bars for on/off and named knobs, x-y charts (time
//! series with a second axis, CDFs), the systems chart (throughput and CPU
//! per GB side by side, with a reference line) and the plan chart. Axes
//! have round ticks (1, 2, 2.5, 5 × 10^n); every chart carries a `<title>`
//! and scales to the page width (viewBox, `width="100%"`). No scripts, no
//! external resources; text is XML-escaped.

/// One series of values over categorical x labels.
#[derive(Debug, Clone)]
pub struct Series<'a> {
    /// Legend text.
    pub name: &'a str,
    /// Fill or stroke colour (CSS).
    pub color: &'a str,
    /// One value per x label (None: no point).
    pub values: &'a [Option<f64>],
}

/// One line of an x-y chart.
#[derive(Debug, Clone)]
pub struct XySeries<'a> {
    /// Legend text.
    pub name: &'a str,
    /// Stroke colour (CSS).
    pub color: &'a str,
    /// (x, y) points in x order.
    pub points: &'a [(f64, f64)],
    /// Drawn against the right-hand axis.
    pub right: bool,
}

/// Escapes text for XML content and attributes.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A round tick step and axis top for values up to `max`: the step is
/// 1, 2, 2.5 or 5 × 10^n giving at most [`MAX_TICKS`] intervals, the top
/// the first multiple of it at or above `max`.
pub fn ticks(max: f64) -> (f64, f64) {
    if !max.is_finite() || max <= 0.0 {
        return (0.25, 1.0);
    }
    let raw = max / MAX_TICKS as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag);
    let top = ((max / step) - 1e-9).ceil().max(1.0) * step;
    (step, top)
}

/// Most tick intervals on an axis (more crowds the labels).
const MAX_TICKS: usize = 5;
/// The drawing's coordinate width; the page scales it to its width.
const W: f64 = 900.0;
const H: f64 = 340.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 78.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 62.0;
const PW: f64 = W - LEFT - RIGHT;
const PH: f64 = H - TOP - BOTTOM;

/// A round number as an axis label (no trailing zeros).
pub fn tick_label(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn open(title: &str, h: f64) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {h}\" width=\"100%\" \
         preserveAspectRatio=\"xMidYMid meet\" role=\"img\" font-family=\"sans-serif\" \
         font-size=\"13\"><title>{t}</title>\
         <rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{h}\" fill=\"#ffffff\"/>\
         <text x=\"{cx}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">{t}</text>",
        t = esc(title),
        cx = W / 2.0
    )
}

/// Horizontal grid lines and labels of a y axis from 0 to `top`; `right`
/// puts the labels on the right-hand side.
fn y_axis(o: &mut String, step: f64, top: f64, title: &str, right: bool) {
    let y = |v: f64| TOP + PH * (1.0 - v / top);
    let n = (top / step).round() as usize;
    for i in 0..=n {
        let v = step * i as f64;
        let yy = y(v);
        if !right {
            o.push_str(&format!(
                "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#e2e2e2\"/>",
                W - RIGHT
            ));
        }
        let (x, anchor) = if right {
            (W - RIGHT + 6.0, "start")
        } else {
            (LEFT - 6.0, "end")
        };
        o.push_str(&format!(
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
            yy + 4.0,
            tick_label(v)
        ));
    }
    let tx = if right { W - 14.0 } else { 16.0 };
    let ty = TOP + PH / 2.0;
    o.push_str(&format!(
        "<text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 {tx} {ty:.1})\">{}</text>",
        esc(title)
    ));
}

fn frame(o: &mut String, x_title: &str) {
    o.push_str(&format!(
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b:.1}\" stroke=\"#333333\"/>\
         <line x1=\"{LEFT}\" y1=\"{b:.1}\" x2=\"{:.1}\" y2=\"{b:.1}\" stroke=\"#333333\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        W - RIGHT,
        LEFT + PW / 2.0,
        H - 30.0,
        esc(x_title),
        b = TOP + PH
    ));
}

fn legend(o: &mut String, items: &[(&str, &str)], h: f64) {
    let mut x = LEFT;
    for (name, color) in items {
        o.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"14\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            h - 16.0,
            esc(color),
            x + 18.0,
            h - 7.0,
            esc(name)
        ));
        x += 30.0 + 7.5 * name.chars().count() as f64;
    }
}

fn max_of<'a>(values: impl Iterator<Item = &'a Option<f64>>) -> f64 {
    values
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
}

fn x_labels(o: &mut String, labels: &[String], x: &dyn Fn(usize) -> f64) {
    for (i, l) in labels.iter().enumerate() {
        o.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x(i),
            TOP + PH + 18.0,
            esc(l)
        ));
    }
}

/// A line chart over ordered categories (a numeric knob's values); `scale`
/// divides values into the axis unit (e.g. 1e6 for Mbit/s).
pub fn line_chart(
    title: &str,
    x_title: &str,
    y_title: &str,
    labels: &[String],
    series: &[Series],
    scale: f64,
) -> String {
    let max = max_of(series.iter().flat_map(|s| s.values.iter())) / scale;
    let (step, top) = ticks(max);
    let n = labels.len().max(1);
    let x = |i: usize| {
        if n == 1 {
            LEFT + PW / 2.0
        } else {
            LEFT + PW * (0.04 + 0.92 * i as f64 / (n - 1) as f64)
        }
    };
    let y = |v: f64| TOP + PH * (1.0 - v / scale / top);
    let mut o = open(title, H);
    y_axis(&mut o, step, top, y_title, false);
    frame(&mut o, x_title);
    x_labels(&mut o, labels, &x);
    for s in series {
        let pts: Vec<(f64, f64)> = s
            .values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.filter(|v| v.is_finite()).map(|v| (x(i), y(v))))
            .collect();
        if pts.len() > 1 {
            let d: Vec<String> = pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
            o.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
                esc(s.color),
                d.join(" ")
            ));
        }
        for (a, b) in &pts {
            o.push_str(&format!(
                "<circle cx=\"{a:.1}\" cy=\"{b:.1}\" r=\"4\" fill=\"{}\"/>",
                esc(s.color)
            ));
        }
    }
    let items: Vec<(&str, &str)> = series.iter().map(|s| (s.name, s.color)).collect();
    legend(&mut o, &items, H);
    o.push_str("</svg>");
    o
}

/// Grouped bars over categories (on/off or named knob values, systems).
pub fn bar_chart(
    title: &str,
    x_title: &str,
    y_title: &str,
    labels: &[String],
    series: &[Series],
    scale: f64,
) -> String {
    let max = max_of(series.iter().flat_map(|s| s.values.iter())) / scale;
    let (step, top) = ticks(max);
    let n = labels.len().max(1);
    let slot = PW / n as f64;
    let bw = (slot * 0.7 / series.len().max(1) as f64).min(70.0);
    let group = bw * series.len() as f64;
    let x = |i: usize| LEFT + slot * (i as f64 + 0.5);
    let y = |v: f64| TOP + PH * (1.0 - v / scale / top);
    let mut o = open(title, H);
    y_axis(&mut o, step, top, y_title, false);
    frame(&mut o, x_title);
    x_labels(&mut o, labels, &x);
    for (si, s) in series.iter().enumerate() {
        for (i, v) in s.values.iter().enumerate() {
            let Some(v) = v.filter(|v| v.is_finite() && *v >= 0.0) else {
                continue;
            };
            let bx = x(i) - group / 2.0 + bw * si as f64;
            let by = y(v);
            o.push_str(&format!(
                "<rect x=\"{bx:.1}\" y=\"{by:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
                bw - 2.0,
                (TOP + PH - by).max(0.0),
                esc(s.color)
            ));
        }
    }
    let items: Vec<(&str, &str)> = series.iter().map(|s| (s.name, s.color)).collect();
    legend(&mut o, &items, H);
    o.push_str("</svg>");
    o
}

/// An x-y chart with numeric axes: a time series (with an optional
/// right-hand axis) or a CDF. `x_max`/`y_max` fix an axis top (e.g. 1 for
/// a CDF); `left_scale`/`right_scale` divide values into axis units.
#[allow(clippy::too_many_arguments)]
pub fn xy_chart(
    title: &str,
    x_title: &str,
    y_title: &str,
    y2_title: Option<&str>,
    series: &[XySeries],
    y_max: Option<f64>,
    left_scale: f64,
    right_scale: f64,
) -> String {
    let fold = |right: bool, f: fn(&(f64, f64)) -> f64| {
        series
            .iter()
            .filter(|s| s.right == right)
            .flat_map(|s| s.points.iter())
            .map(f)
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
    };
    let xmax = fold(false, |p| p.0).max(fold(true, |p| p.0));
    let (xstep, xtop) = ticks(xmax);
    let (lstep, ltop) = y_max.map_or_else(
        || ticks(fold(false, |p| p.1) / left_scale),
        |m| (m / 5.0, m),
    );
    let (rstep, rtop) = ticks(fold(true, |p| p.1) / right_scale);
    let x = |v: f64| LEFT + PW * v / xtop;
    let mut o = open(title, H);
    y_axis(&mut o, lstep, ltop, y_title, false);
    if let Some(t) = y2_title {
        y_axis(&mut o, rstep, rtop, t, true);
    }
    frame(&mut o, x_title);
    let n = (xtop / xstep).round() as usize;
    for i in 0..=n {
        let v = xstep * i as f64;
        o.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x(v),
            TOP + PH + 18.0,
            tick_label(v)
        ));
    }
    for s in series {
        let (scale, top) = if s.right {
            (right_scale, rtop)
        } else {
            (left_scale, ltop)
        };
        let d: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|p| format!("{:.1},{:.1}", x(p.0), TOP + PH * (1.0 - p.1 / scale / top)))
            .collect();
        if d.len() == 1 {
            o.push_str(&format!(
                "<circle cx=\"{}\" r=\"4\" fill=\"{}\"/>",
                d[0].replacen(',', "\" cy=\"", 1),
                esc(s.color)
            ));
        } else if !d.is_empty() {
            o.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{} points=\"{}\"/>",
                esc(s.color),
                if s.right {
                    " stroke-dasharray=\"6 3\""
                } else {
                    ""
                },
                d.join(" ")
            ));
        }
    }
    let items: Vec<(&str, &str)> = series.iter().map(|s| (s.name, s.color)).collect();
    legend(&mut o, &items, H);
    o.push_str("</svg>");
    o
}

/// One system of the systems chart.
#[derive(Debug, Clone)]
pub struct SystemBar {
    /// Row label.
    pub label: String,
    /// Throughput, bit/s.
    pub bps: Option<f64>,
    /// CPU seconds per GB.
    pub cpu: Option<f64>,
    /// A stated figure (a reference device), not a measurement.
    pub stated: bool,
}

/// Systems side by side: throughput (left panel) and CPU per GB (right
/// panel) on the same rows, with a dashed line at `reference` (bit/s).
pub fn systems_chart(title: &str, rows: &[SystemBar], reference: Option<(&str, f64)>) -> String {
    let row_h = 30.0;
    let top = TOP + 10.0;
    let h = top + row_h * rows.len().max(1) as f64 + 70.0;
    let label_w = 250.0;
    let gap = 40.0;
    let panel = (W - label_w - gap - 30.0) / 2.0;
    let (x1, x2) = (label_w, label_w + panel + gap);
    let bmax = rows
        .iter()
        .filter_map(|r| r.bps)
        .chain(reference.map(|r| r.1))
        .fold(0.0, f64::max)
        / 1e6;
    let (bstep, btop) = ticks(bmax);
    let (cstep, ctop) = ticks(rows.iter().filter_map(|r| r.cpu).fold(0.0, f64::max));
    let bottom = top + row_h * rows.len().max(1) as f64;
    let mut o = open(title, h);
    for (x0, step, tp, name) in [
        (x1, bstep, btop, "throughput, Mbit/s"),
        (x2, cstep, ctop, "CPU seconds per GB (lower is better)"),
    ] {
        let n = (tp / step).round() as usize;
        for i in 0..=n {
            let v = step * i as f64;
            let xx = x0 + panel * v / tp;
            o.push_str(&format!(
                "<line x1=\"{xx:.1}\" y1=\"{top:.1}\" x2=\"{xx:.1}\" y2=\"{bottom:.1}\" stroke=\"#e2e2e2\"/>\
                 <text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                bottom + 16.0,
                tick_label(v)
            ));
        }
        o.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
             <line x1=\"{x0:.1}\" y1=\"{top:.1}\" x2=\"{x0:.1}\" y2=\"{bottom:.1}\" stroke=\"#333333\"/>",
            x0 + panel / 2.0,
            bottom + 36.0,
            esc(name)
        ));
    }
    for (i, r) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        o.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x1 - 8.0,
            y + row_h * 0.62,
            esc(&r.label)
        ));
        let color = if r.stated { "#bbbbbb" } else { "#1f77b4" };
        if let Some(b) = r.bps.filter(|b| b.is_finite()) {
            o.push_str(&format!(
                "<rect x=\"{x1:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"/>",
                y + 5.0,
                panel * (b / 1e6) / btop,
                row_h - 10.0
            ));
        }
        if let Some(c) = r.cpu.filter(|c| c.is_finite()) {
            o.push_str(&format!(
                "<rect x=\"{x2:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#9467bd\"/>",
                y + 5.0,
                panel * c / ctop,
                row_h - 10.0
            ));
        } else {
            o.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#777777\">{}</text>",
                x2 + 6.0,
                y + row_h * 0.62,
                if r.stated {
                    "rated, not measured"
                } else {
                    "not measured"
                }
            ));
        }
    }
    if let Some((name, bps)) = reference {
        let xx = x1 + panel * (bps / 1e6) / btop;
        o.push_str(&format!(
            "<line x1=\"{xx:.1}\" y1=\"{:.1}\" x2=\"{xx:.1}\" y2=\"{bottom:.1}\" stroke=\"#d62728\" \
             stroke-width=\"2\" stroke-dasharray=\"6 4\"/>\
             <text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#d62728\">{}</text>",
            top - 4.0,
            top - 8.0,
            esc(name)
        ));
    }
    o.push_str("</svg>");
    o
}

/// One target of the plan chart.
#[derive(Debug, Clone)]
pub struct PlanBar {
    /// Target label (e.g. `10.00 Gbit/s`).
    pub label: String,
    /// Pairs that carry the target.
    pub active: u64,
    /// Spare pairs.
    pub spare: u64,
    /// Cores per gateway.
    pub cores: f64,
    /// Units of the reference device (spares included).
    pub reference_units: Option<u64>,
}

/// The plan against target rate: stacked bars of active and spare pairs
/// (and the reference device's units beside them) on the left axis, cores
/// per gateway as points on the right axis.
pub fn plan_chart(title: &str, rows: &[PlanBar], reference: Option<&str>) -> String {
    let units_max = rows
        .iter()
        .map(|r| (r.active + r.spare).max(r.reference_units.unwrap_or(0)))
        .max()
        .unwrap_or(1) as f64;
    let (lstep, ltop) = ticks(units_max);
    let (rstep, rtop) = ticks(rows.iter().map(|r| r.cores).fold(0.0, f64::max));
    let n = rows.len().max(1);
    let slot = PW / n as f64;
    let bw = (slot * 0.3).min(70.0);
    let x = |i: usize| LEFT + slot * (i as f64 + 0.5);
    let y = |v: f64| TOP + PH * (1.0 - v / ltop);
    let yr = |v: f64| TOP + PH * (1.0 - v / rtop);
    let mut o = open(title, H);
    y_axis(&mut o, lstep, ltop, "gateway pairs (units)", false);
    y_axis(&mut o, rstep, rtop, "cores per gateway", true);
    frame(&mut o, "target rate, each direction");
    let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    x_labels(&mut o, &labels, &x);
    let with_ref = rows.iter().any(|r| r.reference_units.is_some());
    let mut pts = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let bx = if with_ref { x(i) - bw } else { x(i) - bw / 2.0 };
        let ya = y(r.active as f64);
        let ys = y((r.active + r.spare) as f64);
        o.push_str(&format!(
            "<rect x=\"{bx:.1}\" y=\"{ya:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#1f77b4\"/>\
             <rect x=\"{bx:.1}\" y=\"{ys:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#aec7e8\"/>",
            bw - 2.0,
            TOP + PH - ya,
            bw - 2.0,
            (ya - ys).max(0.0)
        ));
        if let Some(u) = r.reference_units {
            let yu = y(u as f64);
            o.push_str(&format!(
                "<rect x=\"{:.1}\" y=\"{yu:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#bbbbbb\"/>",
                x(i),
                bw - 2.0,
                TOP + PH - yu
            ));
        }
        pts.push(format!("{:.1},{:.1}", x(i), yr(r.cores)));
        o.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"#d62728\"/>",
            x(i),
            yr(r.cores)
        ));
    }
    if pts.len() > 1 {
        o.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" points=\"{}\"/>",
            pts.join(" ")
        ));
    }
    let ref_name = reference.map(|r| format!("{r} units"));
    let mut items = vec![
        ("active pairs", "#1f77b4"),
        ("spare pairs", "#aec7e8"),
        ("cores per gateway", "#d62728"),
    ];
    if let (true, Some(n)) = (with_ref, ref_name.as_deref()) {
        items.push((n, "#bbbbbb"));
    }
    legend(&mut o, &items, H);
    o.push_str("</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_ticks() {
        assert_eq!(ticks(0.0), (0.25, 1.0));
        assert_eq!(ticks(320.0), (100.0, 400.0));
        assert_eq!(ticks(183.0), (50.0, 200.0));
        assert_eq!(ticks(1.9), (0.5, 2.0));
        assert_eq!(ticks(10.0), (2.0, 10.0));
        assert_eq!(ticks(7.3), (2.0, 8.0));
        assert_eq!(tick_label(2.5), "2.5");
        assert_eq!(tick_label(200.0), "200");
        // Every tick is a round number: step × k with step in 1/2/2.5/5 × 10^n.
        for m in [0.013, 0.7, 3.3, 47.0, 950.0, 12_345.0] {
            let (s, t) = ticks(m);
            let mant = s / 10f64.powf(s.log10().floor());
            assert!(
                [1.0, 2.0, 2.5, 5.0].iter().any(|x| (x - mant).abs() < 1e-9),
                "{m}: step {s}"
            );
            assert!(t >= m && t < m + s + 1e-9, "{m}: top {t}");
        }
    }

    #[test]
    fn charts_escape_title_and_draw() {
        let labels = vec!["8".to_string(), "<64>".to_string()];
        let v = [Some(1e6), Some(2e6)];
        let s = [Series {
            name: "best",
            color: "#1f77b4",
            values: &v,
        }];
        let svg = line_chart("a & b", "batch", "Mbit/s", &labels, &s, 1e6);
        assert!(svg.contains("<title>a &amp; b</title>") && svg.contains("&lt;64&gt;"));
        assert_eq!(svg.matches("<circle").count(), 2);
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(!svg.contains("<script"));
        let bars = bar_chart("t", "offload", "Mbit/s", &labels, &s, 1e6);
        assert_eq!(bars.matches("<rect").count(), 1 + 2 + 1);
        let pts = [(0.5, 100.0), (1.0, 120.0)];
        let xy = xy_chart(
            "x",
            "s",
            "Mbit/s",
            Some("ms"),
            &[XySeries {
                name: "n",
                color: "#000",
                points: &pts,
                right: true,
            }],
            None,
            1.0,
            1.0,
        );
        assert!(xy.contains("stroke-dasharray"));
    }
}
