//! Inline SVG line charts drawn by hand: categorical x axis (a knob's
//! values), linear y axis from zero, one polyline per series, a legend.
//! No scripts, no external resources; text is XML-escaped.

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series<'a> {
    /// Legend text.
    pub name: &'a str,
    /// Stroke colour (CSS).
    pub color: &'a str,
    /// One value per x label (None: no point).
    pub values: &'a [Option<f64>],
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

/// A "nice" axis maximum ≥ `v` (1, 2, 2.5, 5 × 10^n).
pub fn nice_max(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= v {
            return m * mag;
        }
    }
    10.0 * mag
}

const W: f64 = 560.0;
const H: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 56.0;

/// Draws a line chart. `fmt` formats y tick values.
pub fn line_chart(
    title: &str,
    x_title: &str,
    y_title: &str,
    labels: &[String],
    series: &[Series],
    fmt: &dyn Fn(f64) -> String,
) -> String {
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let ymax = nice_max(max * 1.05);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let n = labels.len().max(1);
    let x = |i: usize| {
        if n == 1 {
            LEFT + pw / 2.0
        } else {
            LEFT + pw * i as f64 / (n - 1) as f64
        }
    };
    let y = |v: f64| TOP + ph * (1.0 - v / ymax);
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" \
         height=\"{H}\" role=\"img\" aria-label=\"{t}\" font-family=\"sans-serif\" font-size=\"12\">\
         <rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#ffffff\"/>\
         <text x=\"{cx}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">{t}</text>",
        t = esc(title),
        cx = W / 2.0
    );
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let yy = y(v);
        o.push_str(&format!(
            "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#dddddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            esc(&fmt(v))
        ));
    }
    o.push_str(&format!(
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{:.1}\" stroke=\"#333333\"/>\
         <line x1=\"{LEFT}\" y1=\"{b:.1}\" x2=\"{:.1}\" y2=\"{b:.1}\" stroke=\"#333333\"/>",
        TOP + ph,
        W - RIGHT,
        b = TOP + ph
    ));
    for (i, l) in labels.iter().enumerate() {
        o.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x(i),
            TOP + ph + 16.0,
            esc(l)
        ));
    }
    o.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text x=\"14\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {:.1})\">{}</text>",
        LEFT + pw / 2.0,
        H - 22.0,
        esc(x_title),
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(y_title)
    ));
    for (si, s) in series.iter().enumerate() {
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
                "<circle cx=\"{a:.1}\" cy=\"{b:.1}\" r=\"3.5\" fill=\"{}\"/>",
                esc(s.color)
            ));
        }
        let lx = LEFT + 10.0 + 150.0 * si as f64;
        o.push_str(&format!(
            "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"12\" height=\"4\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            H - 10.0,
            esc(s.color),
            lx + 16.0,
            H - 5.0,
            esc(s.name)
        ));
    }
    o.push_str("</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axis() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.2e8), 5e8);
        assert_eq!(nice_max(1.9), 2.0);
        assert_eq!(nice_max(2.1), 2.5);
    }

    #[test]
    fn chart_escapes_and_draws_points() {
        let labels = vec!["8".to_string(), "<64>".to_string()];
        let v = [Some(1.0), Some(2.0)];
        let svg = line_chart(
            "a & b",
            "batch",
            "Mbit/s",
            &labels,
            &[Series {
                name: "best",
                color: "#1f77b4",
                values: &v,
            }],
            &|x| format!("{x}"),
        );
        assert!(svg.contains("a &amp; b") && svg.contains("&lt;64&gt;"));
        assert_eq!(svg.matches("<circle").count(), 2);
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(!svg.contains("<script"));
    }
}
