//! The tuner: among the cells whose p99 latency under load and CPU use
//! meet the stated limits, the fastest and every cell tied with it (within
//! the sweep's run-to-run spread, [`super::choose`]) are candidates, and the
//! cheapest in CPU per GB wins (then the lowest p99). The pick is written as
//! a tunneld profile (`kind: tunnel`) built from tunneld's own file
//! structs, so it is valid by construction, in human units (`120s`, `64G`,
//! `4M`), with a comment per tuned knob saying what it was chosen over and
//! why. Engine-side knobs (window, MSS, streams) are host settings, not
//! tunneld's: they go into the header comment.

use std::path::Path;
use std::time::Duration;

use serde_norway::Value as Yaml;
use tunneld::config::TunnelFile;
use tunneld::keys::{PublicKey, SpkiPin};
use tunneld::units::{format_rate, Span};

use super::cells::apply_knobs;
use super::choose::{choose, link_verdict, tied, Choice, LinkVerdict, Noise, LINK_BOUND};
use super::knobs::{show, transport_of, Knob};
use super::results::{CellRecord, SweepMeta};
use crate::lab::systems::tunneld::{set_transport, tunnel_file, QuicCerts, QuicIdentity, Side};
use crate::profile_units::{human_duration, human_size};

/// Placeholder peer key in a tuned profile (the example profile's; the
/// header says to replace it).
pub const PLACEHOLDER_PEER_KEY: &str = "ywiVZdqg0pcdfEV466JrS3t6omdsTlhFlUPJx6GrkoA=";
/// Stand-in for the peer's QUIC SPKI pin in a tuned profile over QUIC
/// (`q83vEjRW...` in base64, the example profile's).
pub const PLACEHOLDER_PIN: SpkiPin = SpkiPin::from_bytes([
    0xab, 0xcd, 0xef, 0x12, 0x34, 0x56, 0x78, 0x90, 0xab, 0xcd, 0xef, 0x12, 0x34, 0x56, 0x78, 0x90,
    0xab, 0xcd, 0xef, 0x12, 0x34, 0x56, 0x78, 0x90, 0xab, 0xcd, 0xef, 0x12, 0x34, 0x56, 0x78, 0x90,
]);

/// The limits a pick must meet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Constraints {
    /// Highest p99 RTT under load, ms.
    pub max_p99_ms: f64,
    /// Most CPU cores per gateway, for a gateway carrying the cell's rate
    /// in each direction (numerically: both lab gateways' tunneld at the
    /// measured one-way rate; the same unit as the plan's cores per
    /// gateway).
    pub max_cores: f64,
}

/// Why no cell was picked.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// No cell meets the limits; the text lists why the best ones failed.
    #[error(
        "no cell meets p99 ≤ {max_p99_ms} ms and CPU ≤ {max_cores} cores per gateway: {detail}"
    )]
    NoneFits {
        /// The p99 limit.
        max_p99_ms: f64,
        /// The CPU limit.
        max_cores: f64,
        /// Why the fastest cells were rejected.
        detail: String,
    },
    /// A limit is negative, zero or not a number.
    #[error("{name} must be a positive number, not {value}")]
    BadLimit {
        /// The option.
        name: &'static str,
        /// What was given.
        value: f64,
    },
    /// Rendering the profile failed.
    #[error("rendering the tuned profile: {0}")]
    Render(String),
}

impl Constraints {
    /// Checks that both limits are positive numbers (infinity: no limit).
    pub fn new(max_p99_ms: f64, max_cores: f64) -> Result<Constraints, TuneError> {
        for (name, value) in [("--max-p99-ms", max_p99_ms), ("--max-cores", max_cores)] {
            if value.is_nan() || value <= 0.0 {
                return Err(TuneError::BadLimit { name, value });
            }
        }
        Ok(Constraints {
            max_p99_ms,
            max_cores,
        })
    }
}

/// Why `r` fails `c` (None: it fits).
pub fn violation(r: &CellRecord, c: &Constraints) -> Option<String> {
    if !r.measured() {
        return Some(format!(
            "{}: not measured ({})",
            r.key,
            r.error.as_deref().unwrap_or("no figures")
        ));
    }
    match r.p99_loaded_ms {
        None => return Some(format!("{}: no latency under load measured", r.key)),
        Some(p) if p > c.max_p99_ms => return Some(format!("{}: p99 {p:.1} ms", r.key)),
        _ => {}
    }
    match r.cpu_cores {
        None => Some(format!("{}: no CPU figure", r.key)),
        Some(x) if x > c.max_cores => Some(format!("{}: {x:.2} cores per gateway", r.key)),
        _ => None,
    }
}

/// The pick among the cells meeting `c`: the cheapest of those tied with
/// the fastest (within `noise`, or capped by the link alike).
pub fn pick<'a>(
    meta: &SweepMeta,
    cells: &'a [CellRecord],
    c: &Constraints,
    noise: &Noise,
) -> Result<Choice<'a>, TuneError> {
    let fits: Vec<&CellRecord> = cells.iter().filter(|r| violation(r, c).is_none()).collect();
    let link = link_verdict(meta, cells, noise);
    choose(&fits, noise, link.as_ref()).ok_or_else(|| {
        let mut by_speed: Vec<&CellRecord> = cells.iter().collect();
        by_speed.sort_by(|a, b| b.bits_per_second.total_cmp(&a.bits_per_second));
        let detail = by_speed
            .iter()
            .take(3)
            .filter_map(|r| violation(r, c))
            .collect::<Vec<_>>()
            .join("; ");
        TuneError::NoneFits {
            max_p99_ms: c.max_p99_ms,
            max_cores: c.max_cores,
            detail: if detail.is_empty() {
                "no cells".into()
            } else {
                detail
            },
        }
    })
}

/// One sentence on how the pick was made: ties, clear winner, link limit.
pub fn decision(meta: &SweepMeta, cells: &[CellRecord], ch: &Choice, noise: &Noise) -> Vec<String> {
    let mut v = Vec::new();
    let spread = if noise.measured {
        format!(
            "the measured run-to-run spread of {:.1}% (median over {} cells with repeats)",
            noise.percent, noise.cells
        )
    } else {
        format!(
            "the stated {:.0}% (spread unknown: one repeat per cell)",
            noise.percent
        )
    };
    if ch.ties.len() > 1 && ch.pick.key == ch.fastest.key {
        v.push(format!(
            "{} of {} eligible cells are within {spread} of the fastest or capped by the link \
             alike: ties; the fastest ({}, {}) is also the cheapest in CPU per GB.",
            ch.ties.len(),
            ch.eligible,
            ch.fastest.key,
            format_rate(ch.fastest.bits_per_second),
        ));
    } else if ch.ties.len() > 1 {
        v.push(format!(
            "{} of {} eligible cells are within {spread} of the fastest ({}, {}) or capped by \
             the link alike: ties; the cheapest in CPU per GB wins ({}, {:.2} s/GB against {:.2} \
             for the fastest).",
            ch.ties.len(),
            ch.eligible,
            ch.fastest.key,
            format_rate(ch.fastest.bits_per_second),
            ch.pick.key,
            ch.pick.cpu_s_per_gb.unwrap_or(f64::NAN),
            ch.fastest.cpu_s_per_gb.unwrap_or(f64::NAN),
        ));
    } else {
        v.push(format!(
            "{} is faster than every other eligible cell by more than {spread}.",
            ch.pick.key
        ));
    }
    if let Some(l) = link_verdict(meta, cells, noise) {
        if l.limited && l.all_tied {
            v.push(format!(
                "The link ({}), not the tunnel, was the limit: any setting carries this link; \
                 cheapest: {}. Throughput differences between these cells are the link's; the \
                 plan uses their CPU cost.",
                format_rate(l.rate_bps),
                ch.pick.cell.label()
            ));
        } else if l.limited {
            v.push(format!(
                "The link ({}), not the tunnel, limited the fastest cells: they carried {}, at \
                 least {:.0}% of the ~{} of TCP goodput the link allows after headers; any of \
                 them carries this link; cheapest: {}.",
                format_rate(l.rate_bps),
                format_rate(ch.fastest.bits_per_second),
                super::choose::LINK_BOUND * 100.0,
                format_rate(l.ceiling_bps),
                ch.pick.cell.label()
            ));
        } else {
            v.push(format!(
                "The tunnel, not the link ({}), was the limit: the fastest cell reached {:.0}% of \
                 the link's goodput ceiling ({}).",
                format_rate(l.rate_bps),
                ch.fastest.bits_per_second / l.ceiling_bps * 100.0,
                format_rate(l.ceiling_bps)
            ));
        }
    }
    v
}

/// The tuned tunneld config of gateway A (lab addresses as placeholders).
pub fn tuned_file(meta: &SweepMeta, r: &CellRecord) -> TunnelFile {
    let peer = PublicKey::from_base64(PLACEHOLDER_PEER_KEY)
        .unwrap_or_else(|_| PublicKey::from_bytes([9; 32]));
    let mut f = tunnel_file(
        Side::A,
        "tun0",
        Path::new("gw-a.key"),
        Path::new("/run/tunneld/tun0.sock"),
        peer,
        &meta.scenario.tunneld,
    );
    f.peers[0].name = "dc-b".into();
    f.peers[0].keepalive = Some(Span(Duration::from_secs(25)));
    if let Some(t) = r.cell.get(Knob::Transport).and_then(transport_of) {
        let id = |gw: &str| QuicIdentity {
            cert_file: format!("{gw}.crt").into(),
            key_file: format!("{gw}.crt.key").into(),
            pin: PLACEHOLDER_PIN,
        };
        let placeholders = QuicCerts {
            a: id("gw-a"),
            b: id("gw-b"),
        };
        set_transport(Side::A, &mut f, t, Some(&placeholders));
    }
    apply_knobs(&mut f, &r.cell);
    f
}

/// Rewrites the machine units of tunneld's serializer in the units people
/// write: sizes (`socket_buffer`, `after_bytes`) as `4M`/`64G`, durations
/// as `120s`/`25s`/`500ms`. Exact, so the file parses back to the same
/// values.
pub fn humanize(yaml: &str) -> Result<String, TuneError> {
    fn walk(v: &mut Yaml, key: Option<&str>) {
        match v {
            Yaml::Mapping(m) => {
                for (k, x) in m.iter_mut() {
                    walk(x, k.as_str());
                }
            }
            Yaml::Sequence(s) => s.iter_mut().for_each(|x| walk(x, None)),
            Yaml::Number(n) if matches!(key, Some("socket_buffer" | "after_bytes")) => {
                if let Some(b) = n.as_u64() {
                    *v = Yaml::String(human_size(b));
                }
            }
            Yaml::String(t) => {
                let unit_ok = t.ends_with("ms") || t.ends_with("us");
                let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                if unit_ok && !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
                    if let Ok(d) = tunneld::units::parse_duration(t) {
                        *t = human_duration(d);
                    }
                }
            }
            _ => {}
        }
    }
    let mut v: Yaml = serde_norway::from_str(yaml).map_err(|e| TuneError::Render(e.to_string()))?;
    walk(&mut v, None);
    serde_norway::to_string(&v).map_err(|e| TuneError::Render(e.to_string()))
}

/// Where a tunneld knob sits in the tunnel file.
fn yaml_path(k: Knob) -> Option<&'static str> {
    Some(match k {
        Knob::Cipher => "cipher",
        Knob::Offload => "dataplane.offload",
        Knob::Batch => "dataplane.batch",
        Knob::Workers => "dataplane.workers",
        Knob::Flows => "dataplane.flows",
        Knob::Queue => "dataplane.queue",
        Knob::Mtu => "interface.mtu",
        Knob::MssClamp => "mss_clamp",
        Knob::SocketBuffer => "socket_buffer",
        Knob::Transport => "peers.transport",
        Knob::Mss | Knob::Window | Knob::Streams => return None,
    })
}

/// Why knob `k` of the pick has its value: each other value measured with
/// the same other knobs, and how it compared.
pub fn knob_reason(
    k: Knob,
    pick: &CellRecord,
    cells: &[CellRecord],
    c: &Constraints,
    noise: &Noise,
    link: Option<&LinkVerdict>,
) -> String {
    let floor = link
        .filter(|l| l.limited)
        .map_or(f64::INFINITY, |l| LINK_BOUND * l.ceiling_bps);
    let Some(v) = pick.cell.get(k) else {
        return String::new();
    };
    let siblings: Vec<&CellRecord> = cells
        .iter()
        .filter(|o| {
            o.cell.get(k).is_some_and(|x| x != v)
                && o.cell.knobs.len() == pick.cell.knobs.len()
                && o.cell
                    .knobs
                    .iter()
                    .all(|(kk, vv)| *kk == k || pick.cell.get(*kk) == Some(vv))
        })
        .collect();
    let pct = |a: f64, b: f64| (a / b - 1.0) * 100.0;
    let parts: Vec<String> = siblings
        .iter()
        .map(|o| {
            let ov = o.cell.get(k).map(|x| show(k, x)).unwrap_or_default();
            if let Some(why) = violation(o, c) {
                let why = why
                    .split_once(": ")
                    .map_or(why.as_str(), |x| x.1)
                    .to_string();
                return format!("{ov} ({why})");
            }
            let faster = o.bits_per_second > pick.bits_per_second;
            let (hi, lo) = if faster {
                (o.bits_per_second, pick.bits_per_second)
            } else {
                (pick.bits_per_second, o.bits_per_second)
            };
            let cpu = match (o.cpu_s_per_gb, pick.cpu_s_per_gb) {
                (Some(a), Some(b)) if b > 0.0 => format!(", {:+.0}% CPU per GB", pct(a, b)),
                _ => String::new(),
            };
            if !tied(hi, lo, noise) && lo >= floor {
                format!(
                    "{ov} (throughput {:+.1}%, both capped by the link: a tie{cpu})",
                    pct(o.bits_per_second, pick.bits_per_second)
                )
            } else if tied(hi, lo, noise) {
                format!(
                    "{ov} (throughput {:+.1}%, within the {:.1}% spread: a tie{cpu})",
                    pct(o.bits_per_second, pick.bits_per_second),
                    noise.percent
                )
            } else {
                format!(
                    "{ov} (throughput {:+.0}%{cpu})",
                    pct(o.bits_per_second, pick.bits_per_second)
                )
            }
        })
        .collect();
    if parts.is_empty() {
        format!(
            "{k}: {} (no other value was measured with the same other knobs)",
            show(k, v)
        )
    } else {
        format!("{k}: {} chosen over {}", show(k, v), parts.join("; "))
    }
}

/// Inserts `comment` (one or more `# ` lines) above the line of `path`.
fn comment_above(text: &str, path: &str, comment: &str) -> String {
    let Some((line, _)) = tunneld::yaml::locate(text, path) else {
        return text.to_string();
    };
    let mut out = String::with_capacity(text.len() + comment.len() + 16);
    for (i, l) in text.lines().enumerate() {
        if i + 1 == line {
            let indent: String = l
                .chars()
                .take_while(|c| *c == ' ' || *c == '-')
                .map(|_| ' ')
                .collect();
            for c in wrap(comment, 88 - indent.len().min(40)) {
                out.push_str(&format!("{indent}# {c}\n"));
            }
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Splits `text` into lines of at most about `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for w in text.split_whitespace() {
        let cur = lines.last_mut().map_or(0, |l| l.len());
        if cur > 0 && cur + 1 + w.len() > width {
            lines.push(String::new());
        }
        if let Some(l) = lines.last_mut() {
            if !l.is_empty() {
                l.push(' ');
            }
            l.push_str(w);
        }
    }
    lines
}

/// The tuned profile's text: a comment header (what was measured, the
/// constraints, how the pick was made, the host-side settings) and the
/// YAML in human units with a comment on each tuned knob.
pub fn render(
    meta: &SweepMeta,
    cells: &[CellRecord],
    ch: &Choice,
    c: &Constraints,
    noise: &Noise,
) -> Result<String, TuneError> {
    let r = ch.pick;
    let yaml = tuned_file(meta, r)
        .to_yaml()
        .map_err(|e| TuneError::Render(e.to_string()))?;
    let mut yaml = humanize(&yaml)?;
    let link = link_verdict(meta, cells, noise);
    for k in r.cell.knobs.keys() {
        if let Some(path) = yaml_path(*k) {
            let why = knob_reason(*k, r, cells, c, noise, link.as_ref());
            yaml = comment_above(&yaml, path, &why);
        }
    }
    let mut h = String::new();
    h.push_str(&format!(
        "# tunneld profile tuned by `tunbench tune` from sweep \"{}\".\n",
        meta.name
    ));
    h.push_str(&format!("# Scenario: {}.\n", meta.scenario.name));
    let lim = |v: f64, unit: &str| {
        if v.is_finite() {
            format!("{v} {unit}")
        } else {
            "no limit".into()
        }
    };
    h.push_str(&format!(
        "# Constraints: p99 RTT under load <= {}, CPU <= {} per gateway (carrying the rate each way).\n",
        lim(c.max_p99_ms, "ms"),
        lim(c.max_cores, "cores")
    ));
    h.push_str(&format!(
        "# Picked cell {}: {}, p99 {} ms, {} cores per gateway, {} CPU s/GB.\n",
        r.key,
        format_rate(r.bits_per_second),
        r.p99_loaded_ms.map_or("?".into(), |v| format!("{v:.1}")),
        r.cpu_cores.map_or("?".into(), |v| format!("{v:.2}")),
        r.cpu_s_per_gb.map_or("?".into(), |v| format!("{v:.2}")),
    ));
    for line in decision(meta, cells, ch, noise) {
        for l in wrap(&line, 86) {
            h.push_str(&format!("# {l}\n"));
        }
    }
    let host: Vec<String> = r
        .cell
        .knobs
        .iter()
        .filter(|(k, _)| !k.is_tunneld())
        .map(|(k, v)| match k {
            Knob::Window => format!(
                "TCP socket buffers {} (net.ipv4.tcp_rmem/wmem max)",
                show(*k, v)
            ),
            Knob::Mss => format!("TCP MSS {v}"),
            _ => format!("{v} parallel TCP streams"),
        })
        .collect();
    if !host.is_empty() {
        h.push_str(&format!(
            "# Host-side settings of the picked cell (not tunneld's): {}.\n",
            host.join("; ")
        ));
    }
    h.push_str(
        "# Replace the addresses, key file, peer key and endpoint (and over QUIC the\n\
         # certificate files and the peer's pin: `tunneld gencert`) with your gateways' own\n\
         # (these are the lab's); `tunneld check --config FILE` validates the result.\n",
    );
    Ok(h + &yaml)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::measure::TestFigures;
    use crate::sweep::knobs::{Cell, Value};
    use crate::sweep::results::test_meta;

    fn rec(batch: u64, workers: u64, bps: f64, p99: f64, cores: f64) -> CellRecord {
        let mut cell = Cell::default();
        cell.knobs.insert(Knob::Batch, Value::Num(batch));
        cell.knobs.insert(Knob::Workers, Value::Num(workers));
        cell.knobs.insert(Knob::Window, Value::Num(4 << 20));
        let f = TestFigures {
            bits_per_second: bps,
            bytes_total: 1,
            ..TestFigures::empty(1)
        };
        let mut r = CellRecord::new(0, &cell, vec![f], 1.0);
        r.p99_loaded_ms = Some(p99);
        r.cpu_cores = Some(cores);
        r.cpu_s_per_gb = Some(cores * 8e9 / bps);
        r
    }

    /// An unlimited link: only the tunnel limits these cells.
    fn meta() -> SweepMeta {
        let mut m = test_meta(vec![Knob::Batch, Knob::Workers]);
        m.scenario.wan.rate = None;
        m
    }

    fn stated() -> Noise {
        crate::sweep::choose::noise(&[], 5.0)
    }

    #[test]
    fn picks_fastest_within_limits() {
        let cells = vec![
            rec(8, 1, 1e9, 5.0, 0.5),
            rec(64, 2, 3e9, 50.0, 1.0), // too slow to answer
            rec(32, 2, 2e9, 8.0, 2.5),  // too many cores
            rec(16, 2, 1.5e9, 9.0, 0.9),
        ];
        let c = Constraints::new(10.0, 2.0).expect("limits");
        let ch = pick(&meta(), &cells, &c, &stated()).expect("pick");
        assert_eq!(ch.pick.key, "batch=16,workers=2,window=4194304");
        let strict = Constraints::new(1.0, 2.0).expect("limits");
        let e = pick(&meta(), &cells, &strict, &stated())
            .expect_err("none fits")
            .to_string();
        assert!(e.contains("p99 50.0 ms"), "{e}");
    }

    #[test]
    fn ties_go_to_the_cheapest_cell() {
        // batch 64 is 2% faster than batch 8 but costs twice the CPU: a
        // tie at a 5% spread, so the cheaper batch 8 is picked; batch 16 is
        // cheaper still but 20% slower: not a tie.
        let cells = vec![
            rec(8, 1, 1.96e9, 5.0, 0.5),
            rec(64, 1, 2.0e9, 5.0, 1.0),
            rec(16, 1, 1.6e9, 5.0, 0.1),
        ];
        let c = Constraints::new(10.0, 2.0).expect("limits");
        let ch = pick(&meta(), &cells, &c, &stated()).expect("pick");
        assert_eq!(ch.pick.key, "batch=8,workers=1,window=4194304");
        assert_eq!(ch.fastest.key, "batch=64,workers=1,window=4194304");
        assert_eq!(ch.ties.len(), 2);
        let why = knob_reason(Knob::Batch, ch.pick, &cells, &c, &stated(), None);
        assert!(why.starts_with("batch: 8 chosen over 64 (throughput +2.0%, within the 5.0% spread: a tie, +96% CPU per GB)"), "{why}");
        assert!(why.contains("16 (throughput -18%"), "{why}");
    }

    #[test]
    fn negative_or_zero_limits_are_refused() {
        assert!(Constraints::new(-1.0, 2.0).is_err());
        assert!(Constraints::new(10.0, 0.0).is_err());
        assert!(Constraints::new(f64::NAN, 1.0).is_err());
        let e = Constraints::new(10.0, -2.0)
            .expect_err("negative")
            .to_string();
        assert!(e.contains("--max-cores") && e.contains("-2"), "{e}");
        assert!(Constraints::new(f64::INFINITY, f64::INFINITY).is_ok());
    }

    fn render_one(r: CellRecord) -> String {
        let cells = vec![r];
        let c = Constraints::new(10.0, 1.0).expect("limits");
        let ch = pick(&meta(), &cells, &c, &stated()).expect("pick");
        render(&meta(), &cells, &ch, &c, &stated()).expect("render")
    }

    #[test]
    fn tuned_profile_is_a_valid_tunneld_config_in_human_units() {
        let text = render_one(rec(16, 1, 1e9, 5.0, 0.5));
        let dir = std::env::temp_dir().join(format!("tb-tune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        tunneld::keys::PrivateKey::generate()
            .expect("key")
            .save_file(&dir.join("gw-a.key"))
            .expect("save key");
        let cfg = tunneld::config::parse_str(&text, &dir)
            .unwrap_or_else(|e| panic!("tunneld rejects the tuned profile: {e}\n{text}"));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(cfg.peers.len(), 1);
        let f = tunneld::config::parse_file_format(&text, "tuned.yaml").expect("file format");
        assert_eq!((f.dataplane.batch, f.dataplane.workers), (16, 1));
        assert!(text.contains("TCP socket buffers 4.0 MiB"), "{text}");
        for human in ["after_time: 120s", "after_bytes: 64G", "keepalive: 25s"] {
            assert!(text.contains(human), "{human} missing:\n{text}");
        }
        assert!(
            !text.contains("000ms") && !text.contains("68719476736"),
            "{text}"
        );
        assert!(
            text.contains("# batch: 16 (no other value was measured"),
            "{text}"
        );
    }

    #[test]
    fn tuned_profile_over_quic_has_certificates_and_pin() {
        let mut r = rec(16, 1, 1e9, 5.0, 0.5);
        r.cell.knobs.insert(
            Knob::Transport,
            crate::sweep::knobs::transport_value(tunneld::config::TransportKind::Quic),
        );
        let text = render_one(r);
        let dir = std::env::temp_dir().join(format!("tb-tune-q-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        tunneld::keys::PrivateKey::generate()
            .expect("key")
            .save_file(&dir.join("gw-a.key"))
            .expect("save key");
        let (cert, key, _) = tunneld::transport::quic::generate_cert().expect("cert");
        std::fs::write(dir.join("gw-a.crt"), cert).expect("cert file");
        std::fs::write(dir.join("gw-a.crt.key"), key).expect("key file");
        let cfg = tunneld::config::parse_str(&text, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = cfg.unwrap_or_else(|e| panic!("tunneld rejects the tuned profile: {e}\n{text}"));
        assert_eq!(cfg.peers.len(), 1);
        let f = tunneld::config::parse_file_format(&text, "tuned.yaml").expect("file format");
        assert_eq!(f.peers[0].transport, tunneld::config::TransportKind::Quic);
        assert!(f.quic.is_some() && f.peers[0].quic.is_some(), "{text}");
        assert!(text.contains("gencert"), "{text}");
        assert!(text.contains("# transport: quic"), "{text}");
    }
}
