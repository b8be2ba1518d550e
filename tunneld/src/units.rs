//! Human-friendly quantities: sizes (`256K`, `8M`), bit rates (`350M`, `1G`) and
//! durations (`500ms`, `10s`, `2m`), shared by the tunneld config and tunbench's
//! command line and profiles.
//!
//! Conventions follow the tools network engineers already use (iperf3, tc):
//! sizes are binary (`K` = 1024 bytes), rates are decimal (`M` = 10^6 bit/s).

use std::fmt;
use std::time::Duration;

use crate::yaml::Quantity;

/// Why a quantity could not be parsed. The message names the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// The text is empty or only white space.
    #[error("empty value")]
    Empty,
    /// The number part is missing, negative or not a number.
    #[error("'{0}' is not a non-negative number with an optional unit")]
    BadNumber(String),
    /// The unit suffix is not one this kind of quantity knows.
    #[error("unknown unit '{unit}' in '{text}' (expected one of {expected})")]
    BadUnit {
        text: String,
        unit: String,
        expected: &'static str,
    },
    /// The value does not fit in 64 bits.
    #[error("'{0}' is too large")]
    Overflow(String),
}

fn split_number(text: &str) -> Result<(f64, &str), UnitError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(UnitError::Empty);
    }
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(end);
    let value: f64 = num
        .parse()
        .map_err(|_| UnitError::BadNumber(text.to_string()))?;
    if !value.is_finite() || value < 0.0 {
        return Err(UnitError::BadNumber(text.to_string()));
    }
    Ok((value, unit.trim()))
}

fn scale(text: &str, value: f64, mult: f64) -> Result<u64, UnitError> {
    let v = (value * mult).round();
    if v >= u64::MAX as f64 {
        return Err(UnitError::Overflow(text.to_string()));
    }
    Ok(v as u64)
}

/// Parses a size in bytes: `1500`, `256K`, `8M`, `1G`, `64KiB`, `1.5M`.
/// K/M/G/T are powers of 1024 (with or without `B`/`iB`).
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let (value, unit) = split_number(text)?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(UnitError::BadUnit {
                text: text.to_string(),
                unit: unit.to_string(),
                expected: "B, K, M, G, T",
            })
        }
    };
    scale(text, value, mult)
}

/// Parses a bit rate in bit/s: `350M`, `1G`, `2.5Gbit`, `100mbps`, `800000`.
/// K/M/G/T are powers of 1000, as in tc and iperf3 rates.
pub fn parse_rate(text: &str) -> Result<u64, UnitError> {
    let (value, unit) = split_number(text)?;
    let lower = unit.to_ascii_lowercase();
    let prefix = lower
        .strip_suffix("bit/s")
        .or_else(|| lower.strip_suffix("bps"))
        .or_else(|| lower.strip_suffix("bit"))
        .unwrap_or(&lower);
    let mult = match prefix {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "t" => 1e12,
        _ => {
            return Err(UnitError::BadUnit {
                text: text.to_string(),
                unit: unit.to_string(),
                expected: "K, M, G, T (optionally followed by bit, bps or bit/s)",
            })
        }
    };
    scale(text, value, mult)
}

/// Parses a duration: `10s`, `500ms`, `250us`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let (value, unit) = split_number(text)?;
    let secs = match unit.to_ascii_lowercase().as_str() {
        "" | "s" | "sec" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "ns" => value / 1e9,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(UnitError::BadUnit {
                text: text.to_string(),
                unit: unit.to_string(),
                expected: "ns, us, ms, s, m, h",
            })
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| UnitError::Overflow(text.to_string()))
}

/// Formats a byte count with binary units, e.g. `8.0 MiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Formats a bit rate with decimal units, e.g. `9.41 Gbit/s`.
pub fn format_rate(bits_per_sec: f64) -> String {
    let (v, u) = if bits_per_sec >= 1e9 {
        (bits_per_sec / 1e9, "Gbit/s")
    } else if bits_per_sec >= 1e6 {
        (bits_per_sec / 1e6, "Mbit/s")
    } else if bits_per_sec >= 1e3 {
        (bits_per_sec / 1e3, "Kbit/s")
    } else {
        (bits_per_sec, "bit/s")
    };
    format!("{v:.2} {u}")
}

/// A size that deserializes from `"8M"` or `8388608` and serializes as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Size(pub u64);

/// A rate in bit/s that deserializes from `"350M"` or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Rate(pub u64);

/// A duration that deserializes from `"10s"`/`"500ms"` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Span(pub Duration);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_rate(self.0 as f64))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::str::FromStr for Size {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s).map(Size)
    }
}

impl std::str::FromStr for Rate {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_rate(s).map(Rate)
    }
}

impl std::str::FromStr for Span {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(Span)
    }
}

impl<'de> serde::Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Quantity {
            what: "a size in bytes such as a number or a string with a unit",
            parse: |s| parse_size(s).map(Size).map_err(|e| e.to_string()),
        })
    }
}

impl<'de> serde::Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Quantity {
            what: "a rate in bit/s such as a number or a string with a unit",
            parse: |s| parse_rate(s).map(Rate).map_err(|e| e.to_string()),
        })
    }
}

impl<'de> serde::Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Quantity {
            what: "a duration such as a number or a string with a unit",
            parse: |s| parse_duration(s).map(Span).map_err(|e| e.to_string()),
        })
    }
}

impl serde::Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl serde::Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl serde::Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Whole milliseconds read best; anything finer is written in µs so
        // that a written config parses back to the same value.
        let d = self.0;
        if d.subsec_nanos() % 1_000_000 == 0 {
            s.serialize_str(&format!("{}ms", d.as_millis()))
        } else {
            s.serialize_str(&format!("{}us", d.as_micros()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1500"), Ok(1500));
        assert_eq!(parse_size("256K"), Ok(256 * 1024));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert_eq!(parse_size(" 64 KB "), Ok(65536));
        assert!(matches!(parse_size("-1"), Err(UnitError::BadNumber(_))));
        assert!(matches!(parse_size("8X"), Err(UnitError::BadUnit { .. })));
        assert_eq!(parse_size(""), Err(UnitError::Empty));
        assert!(matches!(
            parse_size("99999999T"),
            Err(UnitError::Overflow(_))
        ));
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("350M"), Ok(350_000_000));
        assert_eq!(parse_rate("1G"), Ok(1_000_000_000));
        assert_eq!(parse_rate("2.5Gbit"), Ok(2_500_000_000));
        assert_eq!(parse_rate("100mbps"), Ok(100_000_000));
        assert_eq!(parse_rate("10Mbit/s"), Ok(10_000_000));
        assert!(parse_rate("1Q").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn formatting() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(8 << 20), "8.0 MiB");
        assert_eq!(format_rate(9.41e9), "9.41 Gbit/s");
        assert_eq!(format_rate(350e6), "350.00 Mbit/s");
    }

    #[test]
    fn serde_accepts_numbers_and_strings() {
        #[derive(serde::Deserialize)]
        struct T {
            a: Size,
            b: Rate,
            c: Span,
            d: Size,
        }
        let t: T = serde_norway::from_str("a: 8M\nb: 1G\nc: 250ms\nd: 1400\n").expect("parses");
        assert_eq!(t.a, Size(8 << 20));
        assert_eq!(t.b, Rate(1_000_000_000));
        assert_eq!(t.c, Span(Duration::from_millis(250)));
        assert_eq!(t.d, Size(1400));
        let err = serde_norway::from_str::<T>("a: 8X\nb: 1G\nc: 1s\nd: 1\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unknown unit"), "{err}");
        assert!(err.contains("line 1"), "{err}");
    }
}
