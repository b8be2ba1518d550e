//! Units in profiles cannot silently mean something else: a rate or a byte
//! size written without a unit (`rate: 200`, `window: 4`) is refused with
//! the likely unit suggested ("did you mean 200M?"), and a rate in bytes per
//! second (`100MBps`, `100MB/s`) is refused with its bit/s equivalent,
//! because the profiles' rates are bits per second (as in tc and iperf3)
//! and `MBps` read as `Mbps` would be off by a factor of eight.
//!
//! The check runs over the profile's YAML text before it is deserialized
//! (the typed fields still accept plain numbers, which is what the stored
//! JSON results hold), so it applies to what a person wrote and names the
//! field and its line. Counts documented as bytes (MTU, MSS) are not sizes
//! here and stay plain numbers. The human formatters at the end write the
//! same units back (`120s`, `64G`, `4M`).

use std::time::Duration;

use serde_norway::Value;

/// What kind of quantity a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitKind {
    /// Bits per second (`K`/`M`/`G` are powers of 1000).
    Rate,
    /// Bytes (`K`/`M`/`G` are powers of 1024).
    Size,
}

/// A field whose value lacks its unit or uses a misleading one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitProblem {
    /// The field path of the value (`wan.rate`, `grid.window[1]`).
    pub field: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// The rate and size fields of a `kind: scenario` profile.
pub const SCENARIO_FIELDS: &[(&str, UnitKind)] = &[
    ("wan.rate", UnitKind::Rate),
    ("test.window", UnitKind::Size),
    ("tunneld.socket_buffer", UnitKind::Size),
];

/// The rate and size fields of a `kind: sweep` profile (`*` = every item
/// of a list).
pub const SWEEP_FIELDS: &[(&str, UnitKind)] = &[
    ("wan.rate", UnitKind::Rate),
    ("tunneld.socket_buffer", UnitKind::Size),
    ("planning.targets.*", UnitKind::Rate),
    ("planning.pair_rate", UnitKind::Rate),
    ("reference.rate", UnitKind::Rate),
    ("grid.window.*", UnitKind::Size),
    ("grid.socket_buffer.*", UnitKind::Size),
    ("points.*.window", UnitKind::Size),
    ("points.*.socket_buffer", UnitKind::Size),
];

/// Checks `fields` of the YAML `text`. YAML that does not parse is left
/// to the typed parser, whose error names the line. The problem names the
/// exact value (`grid.window[1]`, `points[0].socket_buffer`), so its line
/// is that of the list item.
pub fn check(text: &str, fields: &[(&str, UnitKind)]) -> Result<(), UnitProblem> {
    let Ok(root) = serde_norway::from_str::<Value>(text) else {
        return Ok(());
    };
    for (path, kind) in fields {
        let segs: Vec<&str> = path.split('.').collect();
        let mut found = Vec::new();
        collect(&root, &segs, String::new(), &mut found);
        for (field, v) in found {
            if let Some(message) = problem(v, *kind) {
                return Err(UnitProblem { field, message });
            }
        }
    }
    Ok(())
}

/// The values at `segs` below `v` with their field paths (`*` = each item
/// of a list, written `[i]`).
fn collect<'a>(v: &'a Value, segs: &[&str], at: String, out: &mut Vec<(String, &'a Value)>) {
    let Some((first, rest)) = segs.split_first() else {
        out.push((at, v));
        return;
    };
    match (*first, v) {
        ("*", Value::Sequence(items)) => {
            for (i, item) in items.iter().enumerate() {
                collect(item, rest, format!("{at}[{i}]"), out);
            }
        }
        ("*", other) => collect(other, rest, at, out),
        (key, Value::Mapping(m)) => {
            if let Some(x) = m.get(key) {
                let at = if at.is_empty() {
                    key.to_string()
                } else {
                    format!("{at}.{key}")
                };
                collect(x, rest, at, out);
            }
        }
        _ => {}
    }
}

/// Why one value is refused (None: it states its unit).
fn problem(v: &Value, kind: UnitKind) -> Option<String> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_string(),
        _ => return None,
    };
    let unit_at = text.find(|c: char| !(c.is_ascii_digit() || c == '.'));
    let Some(at) = unit_at.filter(|_| !text.starts_with('-')) else {
        return if text.starts_with('-') {
            None // negative values are the typed parser's to refuse
        } else {
            Some(unitless(&text, kind))
        };
    };
    match kind {
        UnitKind::Rate => bytes_per_second(&text, &text[..at], text[at..].trim()),
        UnitKind::Size => None,
    }
}

fn unitless(text: &str, kind: UnitKind) -> String {
    let n: f64 = text.parse().unwrap_or(0.0);
    match kind {
        UnitKind::Rate => format!(
            "`{text}` has no unit and would mean {text} bit/s: did you mean {}? Write rates \
             with a unit (K, M, G: bit/s, e.g. 350M or 1G; `{text}bit` if you do mean bit/s)",
            suggest_rate(n)
        ),
        UnitKind::Size => format!(
            "`{text}` has no unit and would mean {text} bytes: did you mean {}? Write sizes \
             with a unit (K, M, G: binary, e.g. 256K or 4M; `{text}B` if you do mean bytes)",
            suggest_size(n)
        ),
    }
}

/// The rate someone writing a bare `n` most likely meant: a small number
/// is Mbit/s (nobody plans links in bit/s), a large one is bit/s written
/// out, shown with its unit.
pub fn suggest_rate(n: f64) -> String {
    if n < 100_000.0 {
        format!("{}M", trim(n))
    } else {
        human_rate(n as u64)
    }
}

/// The size someone writing a bare `n` most likely meant: up to 64 it is
/// MiB (socket buffers of a few MiB), below 1024 KiB, else bytes written
/// out, shown with its unit.
pub fn suggest_size(n: f64) -> String {
    if n <= 64.0 {
        format!("{}M", trim(n))
    } else if n < 1024.0 {
        format!("{}K", trim(n))
    } else {
        human_size(n as u64)
    }
}

/// `100MBps`, `100MB/s`, `100MByte/s`: bytes per second, refused with the
/// bit/s equivalent. `b` (lower case) is bits: `100Mbps`, `100mbit`.
fn bytes_per_second(text: &str, number: &str, unit: &str) -> Option<String> {
    let bytes = ["Bps", "B/s", "Byte/s", "Bytes/s", "byte/s", "bytes/s"]
        .iter()
        .find_map(|suffix| unit.strip_suffix(suffix));
    let prefix = bytes?;
    let mult = match prefix.to_ascii_lowercase().as_str() {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        _ => return None,
    };
    let n: f64 = number.parse().ok()?;
    Some(format!(
        "`{text}` is bytes per second; rates here are bits per second: write {} \
         ({} × 8), or {}{}bit if you meant bits",
        human_rate((n * mult * 8.0) as u64),
        text,
        trim(n),
        prefix.to_ascii_uppercase()
    ))
}

fn trim(n: f64) -> String {
    let s = format!("{n:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A rate with the largest decimal unit that keeps it short: `350M`,
/// `1G`, `2.5G`, `800K`, `1500bit`.
pub fn human_rate(bps: u64) -> String {
    for (mult, unit) in [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")] {
        let v = bps as f64 / mult;
        if v >= 1.0 && (v * 1000.0).fract() == 0.0 {
            return format!("{}{unit}", trim(v));
        }
    }
    format!("{bps}bit")
}

/// A size with the largest binary unit that divides it exactly: `4M`,
/// `64G`, `1536K`, `1500B` (exact, so it parses back to the same bytes).
pub fn human_size(bytes: u64) -> String {
    for (shift, unit) in [(40u32, "T"), (30, "G"), (20, "M"), (10, "K")] {
        let m = 1u64 << shift;
        if bytes >= m && bytes % m == 0 {
            return format!("{}{unit}", bytes / m);
        }
    }
    format!("{bytes}B")
}

/// A duration in the largest unit that divides it exactly (`25s`,
/// `500ms`); minutes from 10 minutes and hours from 2 hours up, so that
/// rekey times read as people write them (`120s`, not `2m`).
pub fn human_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    for (unit_ns, unit) in [
        (3_600_000_000_000u128, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
    ] {
        if ns % unit_ns == 0 {
            // Minutes only above two hours' worth would be odd; seconds up
            // to 10 minutes read as people write rekey times (`120s`).
            if unit == "m" && ns < 600_000_000_000 {
                continue;
            }
            if unit == "h" && ns < 7_200_000_000_000 {
                continue;
            }
            return format!("{}{unit}", ns / unit_ns);
        }
    }
    format!("{ns}ns")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str, fields: &[(&str, UnitKind)]) -> UnitProblem {
        check(text, fields).expect_err("refused")
    }

    #[test]
    fn unitless_rate_is_refused_with_a_suggestion() {
        let e = err("wan:\n  rate: 200\n", SCENARIO_FIELDS);
        assert_eq!(e.field, "wan.rate");
        assert!(e.message.contains("did you mean 200M?"), "{}", e.message);
        let e = err("wan:\n  rate: \"350000000\"\n", SCENARIO_FIELDS);
        assert!(e.message.contains("did you mean 350M?"), "{}", e.message);
        let e = err("planning:\n  targets: [2G, 10]\n", SWEEP_FIELDS);
        assert_eq!(e.field, "planning.targets[1]");
        assert!(e.message.contains("10M"), "{}", e.message);
        assert!(check(
            "wan: {rate: 200M}\nplanning: {targets: [2G]}\n",
            SWEEP_FIELDS
        )
        .is_ok());
        assert!(check("wan: {rate: 200bit}\n", SWEEP_FIELDS).is_ok());
        assert!(check("wan: {rate: 1.5Gbit/s}\n", SWEEP_FIELDS).is_ok());
        assert!(check("wan: {rate: 100Mbps}\n", SWEEP_FIELDS).is_ok());
    }

    #[test]
    fn bytes_per_second_is_refused_with_the_bit_rate() {
        let e = err("reference: {name: x, rate: 100MBps}\n", SWEEP_FIELDS);
        assert_eq!(e.field, "reference.rate");
        assert!(e.message.contains("write 800M"), "{}", e.message);
        let e = err("wan: {rate: 1GB/s}\n", SWEEP_FIELDS);
        assert!(e.message.contains("write 8G"), "{}", e.message);
    }

    #[test]
    fn unitless_sizes_are_refused_in_lists_and_points() {
        let e = err("grid:\n  window: [256K, 4]\n", SWEEP_FIELDS);
        assert_eq!(e.field, "grid.window[1]");
        assert!(e.message.contains("did you mean 4M?"), "{}", e.message);
        let e = err("points:\n  - {window: 4194304}\n", SWEEP_FIELDS);
        assert_eq!(e.field, "points[0].window");
        assert!(e.message.contains("did you mean 4M?"), "{}", e.message);
        let e = err("tunneld: {socket_buffer: 512}\n", SCENARIO_FIELDS);
        assert!(e.message.contains("512K"), "{}", e.message);
        assert!(check("grid: {window: [4194304B, 4M], batch: [8]}\n", SWEEP_FIELDS).is_ok());
        // Not YAML: left to the typed parser.
        assert!(check("grid: [", SWEEP_FIELDS).is_ok());
    }

    #[test]
    fn human_units_are_exact() {
        assert_eq!(human_size(4 << 20), "4M");
        assert_eq!(human_size(64 << 30), "64G");
        assert_eq!(human_size(1536 << 10), "1536K");
        assert_eq!(human_size(1500), "1500B");
        assert_eq!(human_rate(350_000_000), "350M");
        assert_eq!(human_rate(2_500_000_000), "2.5G");
        assert_eq!(human_rate(1234), "1.234K");
        assert_eq!(human_duration(Duration::from_secs(120)), "120s");
        assert_eq!(human_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(human_duration(Duration::from_secs(3 * 3600)), "3h");
        assert_eq!(human_duration(Duration::from_secs(900)), "15m");
        assert_eq!(human_duration(Duration::from_micros(1500)), "1500us");
        for b in [4u64 << 20, 64 << 30, 1500, 1536 << 10] {
            assert_eq!(tunneld::units::parse_size(&human_size(b)), Ok(b));
        }
        for r in [350_000_000u64, 2_500_000_000, 1500] {
            assert_eq!(tunneld::units::parse_rate(&human_rate(r)), Ok(r));
        }
    }
}
