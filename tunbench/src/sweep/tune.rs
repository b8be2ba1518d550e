//! The tuner: picks the cell with the highest throughput among those whose
//! p99 latency under load and CPU use meet the stated limits, and writes it
//! as a tunneld profile (`kind: tunnel`) built from tunneld's own file
//! structs, so it is valid by construction. Engine-side knobs (window, MSS,
//! streams) are host settings, not tunneld's: they go into the header
//! comment.

use std::path::Path;
use std::time::Duration;

use tunneld::config::TunnelFile;
use tunneld::keys::PublicKey;
use tunneld::units::{format_rate, Span};

use super::knobs::{show, transport_of, Knob};
use super::results::{CellRecord, SweepMeta};
use super::runner::apply_knobs;
use crate::lab::systems::tunneld::{set_transport, tunnel_file, QuicCerts, QuicIdentity, Side};

/// Placeholder peer key in a tuned profile (the example profile's; the
/// header says to replace it).
pub const PLACEHOLDER_PEER_KEY: &str = "ywiVZdqg0pcdfEV466JrS3t6omdsTlhFlUPJx6GrkoA=";
/// Stand-in for the peer's QUIC SPKI pin in a tuned profile over QUIC.
pub const PLACEHOLDER_PIN: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";

/// The limits a pick must meet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Constraints {
    /// Highest p99 RTT under load, ms.
    pub max_p99_ms: f64,
    /// Most CPU cores the tunnel processes may use (both gateways together).
    pub max_cores: f64,
}

/// Why no cell was picked.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// No cell meets the limits; the text lists why the best ones failed.
    #[error("no cell meets p99 ≤ {max_p99_ms} ms and CPU ≤ {max_cores} cores: {detail}")]
    NoneFits {
        /// The p99 limit.
        max_p99_ms: f64,
        /// The CPU limit.
        max_cores: f64,
        /// Why the fastest cells were rejected.
        detail: String,
    },
    /// Rendering the profile failed.
    #[error("rendering the tuned profile: {0}")]
    Render(String),
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
        Some(x) if x > c.max_cores => Some(format!("{}: {x:.2} cores", r.key)),
        _ => None,
    }
}

/// The fastest cell meeting `c`.
pub fn pick<'a>(cells: &'a [CellRecord], c: &Constraints) -> Result<&'a CellRecord, TuneError> {
    let best = cells
        .iter()
        .filter(|r| violation(r, c).is_none())
        .max_by(|a, b| a.bits_per_second.total_cmp(&b.bits_per_second));
    best.ok_or_else(|| {
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
            pin: PLACEHOLDER_PIN.into(),
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

/// The tuned profile's text: a comment header (what was measured, the
/// constraints, the host-side settings) and the YAML.
pub fn render(meta: &SweepMeta, r: &CellRecord, c: &Constraints) -> Result<String, TuneError> {
    let yaml = tuned_file(meta, r)
        .to_yaml()
        .map_err(|e| TuneError::Render(e.to_string()))?;
    let mut h = String::new();
    h.push_str(&format!(
        "# tunneld profile tuned by `tunbench tune` from sweep \"{}\".\n",
        meta.name
    ));
    h.push_str(&format!(
        "# Scenario: {} ({}).\n",
        meta.scenario.name, meta.scenario.description
    ));
    h.push_str(&format!(
        "# Constraints: p99 RTT under load <= {} ms, CPU <= {} cores.\n",
        c.max_p99_ms, c.max_cores
    ));
    h.push_str(&format!(
        "# Picked cell {}: {}, p99 {} ms, {} cores, {} CPU s/GB.\n",
        r.key,
        format_rate(r.bits_per_second),
        r.p99_loaded_ms.map_or("?".into(), |v| format!("{v:.1}")),
        r.cpu_cores.map_or("?".into(), |v| format!("{v:.2}")),
        r.cpu_s_per_gb.map_or("?".into(), |v| format!("{v:.2}")),
    ));
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
    use crate::lab::scenario::Scenario;
    use crate::sweep::knobs::{Cell, Value};
    use crate::sweep::profile::Mode;

    fn rec(batch: u64, workers: u64, bps: f64, p99: f64, cores: f64) -> CellRecord {
        let mut cell = Cell::default();
        cell.knobs.insert(Knob::Batch, Value::Num(batch));
        cell.knobs.insert(Knob::Workers, Value::Num(workers));
        cell.knobs.insert(Knob::Window, Value::Num(4 << 20));
        let f = TestFigures {
            streams: 1,
            bits_per_second: bps,
            bytes_total: 1,
            retransmits: None,
            cpu_seconds: None,
            cpu_s_per_gb: None,
            latency_idle: None,
            latency_loaded: None,
            error: None,
        };
        let mut r = CellRecord::new(0, &cell, vec![f], 1.0);
        r.p99_loaded_ms = Some(p99);
        r.cpu_cores = Some(cores);
        r.cpu_s_per_gb = Some(cores * 8e9 / bps);
        r
    }

    fn meta() -> SweepMeta {
        SweepMeta {
            schema: super::super::results::META_SCHEMA.into(),
            name: "t".into(),
            description: String::new(),
            mode: Mode::Lab,
            scenario: Scenario::quick().expect("quick scenario"),
            knobs: vec![Knob::Batch, Knob::Workers],
            cells_total: 3,
            targets_bps: vec![],
            headroom_percent: 30.0,
            profile: String::new(),
            kernel: String::new(),
            cpus: 2,
            emulator: None,
            baselines: vec![],
        }
    }

    #[test]
    fn picks_fastest_within_limits() {
        let cells = vec![
            rec(8, 1, 1e9, 5.0, 0.5),
            rec(64, 2, 3e9, 50.0, 1.0), // too slow to answer
            rec(32, 2, 2e9, 8.0, 2.5),  // too many cores
            rec(16, 2, 1.5e9, 9.0, 0.9),
        ];
        let c = Constraints {
            max_p99_ms: 10.0,
            max_cores: 2.0,
        };
        assert_eq!(
            pick(&cells, &c).expect("pick").key,
            "batch=16,workers=2,window=4194304"
        );
        let strict = Constraints {
            max_p99_ms: 1.0,
            max_cores: 2.0,
        };
        let e = pick(&cells, &strict).expect_err("none fits").to_string();
        assert!(e.contains("p99 50.0 ms"), "{e}");
    }

    #[test]
    fn tuned_profile_is_a_valid_tunneld_config() {
        let r = rec(16, 1, 1e9, 5.0, 0.5);
        let text = render(
            &meta(),
            &r,
            &Constraints {
                max_p99_ms: 10.0,
                max_cores: 1.0,
            },
        )
        .expect("render");
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
    }

    #[test]
    fn tuned_profile_over_quic_has_certificates_and_pin() {
        let mut r = rec(16, 1, 1e9, 5.0, 0.5);
        r.cell.knobs.insert(
            Knob::Transport,
            crate::sweep::knobs::transport_value(tunneld::config::TransportKind::Quic),
        );
        let text = render(
            &meta(),
            &r,
            &Constraints {
                max_p99_ms: 10.0,
                max_cores: 1.0,
            },
        )
        .expect("render");
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
    }
}
