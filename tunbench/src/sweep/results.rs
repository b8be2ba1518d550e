//! A sweep's output folder: `sweep.json` (what was swept: profile, scenario,
//! knobs, host) and `cells.jsonl` (one JSON line per finished cell, appended
//! and fsync'd before the next cell starts). Reading tolerates a torn last
//! line (a run killed mid-write) and cuts it off before appending again, so
//! a resumed sweep neither loses nor duplicates a cell.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::knobs::{Cell, Knob};
use super::profile::{CellTest, Mode, Reference};
use crate::engine::LatencySummary;
use crate::lab::measure::TestFigures;
use crate::lab::scenario::{Scenario, SystemKind};

/// Schema of each line of `cells.jsonl`.
pub const CELL_SCHEMA: &str = "tunbench.sweep-cell/1";
/// Schema of `sweep.json`.
pub const META_SCHEMA: &str = "tunbench.sweep/1";
/// The cell lines.
pub const CELLS_FILE: &str = "cells.jsonl";
/// The sweep description.
pub const META_FILE: &str = "sweep.json";

/// Why results could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A complete line (or sweep.json) is not what we write.
    #[error("{path}:{line}: not a sweep result: {message}")]
    Corrupt {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// Results exist and neither `--resume` nor a fresh folder was given.
    #[error(
        "{0} already holds cells: pass --resume to continue that sweep, or choose another --out"
    )]
    Exists(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ResultsError + '_ {
    move |source| ResultsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// `sweep.json`: what the sweep is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepMeta {
    /// Always [`META_SCHEMA`].
    pub schema: String,
    /// Profile name.
    pub name: String,
    /// Profile description.
    pub description: String,
    /// lab or remote.
    pub mode: Mode,
    /// The scenario (WAN link, base tunneld settings); absent fields are
    /// left out rather than written as null, which the strict scenario
    /// fields refuse.
    #[serde(serialize_with = "ser_without_nulls")]
    pub scenario: Scenario,
    /// The knobs that vary, in key order.
    pub knobs: Vec<Knob>,
    /// Cells in the grid.
    pub cells_total: usize,
    /// Planning targets, bit/s.
    pub targets_bps: Vec<u64>,
    /// Planning headroom, percent.
    pub headroom_percent: f64,
    /// The profile text.
    pub profile: String,
    /// Kernel release.
    pub kernel: String,
    /// CPUs of this host.
    pub cpus: usize,
    /// WAN emulator used (lab mode), once known.
    #[serde(default)]
    pub emulator: Option<String>,
    /// Baseline systems measured before the grid (lab mode).
    #[serde(default)]
    pub baselines: Vec<Baseline>,
    /// The test each cell ran (as configured; the cells' repeats record
    /// what actually ran).
    #[serde(default)]
    pub test: Option<CellTest>,
    /// CPU model of this host (`model name` in /proc/cpuinfo).
    #[serde(default)]
    pub cpu_model: Option<String>,
    /// The check of the emulated link before the first cell (lab mode).
    #[serde(default)]
    pub link: Option<LinkCheck>,
    /// A named device drawn beside the measured systems.
    #[serde(default)]
    pub reference: Option<Reference>,
    /// Spare gateway pairs for failover.
    #[serde(default = "one_spare")]
    pub spares: u32,
    /// Spread assumed with one repeat, percent.
    #[serde(default = "five_percent")]
    pub noise_percent: f64,
    /// A per-pair throughput measured elsewhere, bit/s.
    #[serde(default)]
    pub pair_rate_bps: Option<u64>,
    /// Where it was measured.
    #[serde(default)]
    pub pair_rate_source: Option<String>,
}

fn one_spare() -> u32 {
    1
}
fn five_percent() -> f64 {
    5.0
}

/// The emulated link as checked over the raw path before the first cell.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LinkCheck {
    /// The emulator that carried the link.
    pub emulator: String,
    /// Why netem was not used, if it was not.
    #[serde(default)]
    pub netem_note: Option<String>,
    /// Configured rate, bit/s (None: unlimited).
    #[serde(default)]
    pub configured_rate_bps: Option<u64>,
    /// Configured RTT added by the link, ms.
    pub configured_rtt_ms: f64,
    /// Ping RTT measured (min, avg), ms.
    #[serde(default)]
    pub rtt_ms: Option<(f64, f64)>,
    /// Rate measured on the wire, bit/s.
    #[serde(default)]
    pub wire_bps: Option<f64>,
    /// How the rate was checked.
    #[serde(default)]
    pub method: Option<String>,
    /// Loss seen by the UDP rate check, percent.
    #[serde(default)]
    pub loss_percent: Option<f64>,
    /// Why a check failed or was skipped.
    #[serde(default)]
    pub note: Option<String>,
}

impl From<&crate::lab::report::LinkFigures> for LinkCheck {
    fn from(f: &crate::lab::report::LinkFigures) -> LinkCheck {
        LinkCheck {
            emulator: f.emulator_label.clone(),
            netem_note: f.netem_note.clone(),
            configured_rate_bps: f.configured_rate_bps,
            configured_rtt_ms: f.configured_rtt_ms,
            rtt_ms: f.ping.as_ref().map(|p| (p.min_ms, p.avg_ms)),
            wire_bps: f.udp_wire_bps,
            method: f.rate_check.clone(),
            loss_percent: f.udp_loss_percent,
            note: f.ping_error.clone().or_else(|| f.rate_note.clone()),
        }
    }
}

/// Removes null members (recursively): absent optional fields read back as
/// absent, which the strict scenario fields require.
pub(crate) fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn ser_without_nulls<S: serde::Serializer>(s: &Scenario, ser: S) -> Result<S::Ok, S::Error> {
    let mut v = serde_json::to_value(s).map_err(serde::ser::Error::custom)?;
    strip_nulls(&mut v);
    v.serialize(ser)
}

/// A comparison system measured once with the sweep's test.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    /// Which.
    pub system: SystemKind,
    /// Implementation that ran, or why it did not.
    pub variant: String,
    /// The measurement (absent if it could not run).
    pub figures: Option<TestFigures>,
}

/// One line of `cells.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellRecord {
    /// Always [`CELL_SCHEMA`].
    pub schema: String,
    /// The stable cell key ([`Cell::key`]).
    pub key: String,
    /// Position in the grid.
    pub index: usize,
    /// The knob values.
    pub cell: Cell,
    /// Each repeat's measurement.
    pub repeats: Vec<TestFigures>,
    /// Median receiver goodput over repeats, bit/s.
    pub bits_per_second: f64,
    /// Median p50 RTT under load, ms.
    pub p50_loaded_ms: Option<f64>,
    /// Median p99 RTT under load, ms.
    pub p99_loaded_ms: Option<f64>,
    /// Median p99 RTT before the load, ms.
    pub p99_idle_ms: Option<f64>,
    /// Median CPU seconds of the tunnel processes per GB carried.
    pub cpu_s_per_gb: Option<f64>,
    /// CPU cores the tunnel processes used at the measured rate.
    pub cpu_cores: Option<f64>,
    /// Why the cell has no (or partial) figures.
    pub error: Option<String>,
    /// Wall time of the cell, seconds.
    pub wall_s: f64,
    /// When the cell finished, seconds since the Unix epoch.
    pub finished_unix_s: f64,
}

/// The median of `v` (None if empty).
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn ms(l: &Option<LatencySummary>, f: fn(&LatencySummary) -> f64) -> Option<f64> {
    l.as_ref().filter(|s| s.samples > 0).map(|s| f(s) / 1000.0)
}

impl CellRecord {
    /// Summarises the repeats of one cell.
    pub fn new(index: usize, cell: &Cell, repeats: Vec<TestFigures>, wall_s: f64) -> CellRecord {
        let ok: Vec<&TestFigures> = repeats.iter().filter(|r| r.bits_per_second > 0.0).collect();
        let med = |f: &dyn Fn(&TestFigures) -> Option<f64>| {
            median(ok.iter().filter_map(|r| f(r)).collect())
        };
        let bps = med(&|r| Some(r.bits_per_second)).unwrap_or(0.0);
        let cpu_s_per_gb = med(&|r| r.cpu_s_per_gb);
        let errors: Vec<String> = repeats.iter().filter_map(|r| r.error.clone()).collect();
        CellRecord {
            schema: CELL_SCHEMA.into(),
            key: cell.key(),
            index,
            cell: cell.clone(),
            bits_per_second: bps,
            p50_loaded_ms: med(&|r| ms(&r.latency_loaded, |s| s.p50_us)),
            p99_loaded_ms: med(&|r| ms(&r.latency_loaded, |s| s.p99_us)),
            p99_idle_ms: med(&|r| ms(&r.latency_idle, |s| s.p99_us)),
            cpu_cores: cpu_s_per_gb.map(|c| c * bps / 8e9),
            cpu_s_per_gb,
            error: if errors.is_empty() {
                None
            } else {
                Some(errors.join("; "))
            },
            repeats,
            wall_s,
            finished_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        }
    }

    /// True if the cell measured something.
    pub fn measured(&self) -> bool {
        self.bits_per_second > 0.0
    }
}

/// Everything in a results folder.
#[derive(Debug, Clone)]
pub struct SweepResults {
    /// sweep.json.
    pub meta: SweepMeta,
    /// The cells, in file order (one per key).
    pub cells: Vec<CellRecord>,
}

/// Reads `cells.jsonl`: complete lines only (a torn last line is skipped).
/// Returns the records and the byte length of the complete part.
pub fn read_cells(path: &Path) -> Result<(Vec<CellRecord>, u64), ResultsError> {
    let text = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io(path)(e)),
    };
    let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut out: Vec<CellRecord> = Vec::new();
    for (i, line) in text[..complete].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let rec: CellRecord = serde_json::from_slice(line).map_err(|e| ResultsError::Corrupt {
            path: path.display().to_string(),
            line: i + 1,
            message: e.to_string(),
        })?;
        if rec.schema != CELL_SCHEMA {
            return Err(ResultsError::Corrupt {
                path: path.display().to_string(),
                line: i + 1,
                message: format!("schema {} (expected {CELL_SCHEMA})", rec.schema),
            });
        }
        // A duplicate key would only come from two sweeps writing one file;
        // the later line wins.
        out.retain(|r| r.key != rec.key);
        out.push(rec);
    }
    Ok((out, complete as u64))
}

/// Reads a results folder.
pub fn load(dir: &Path) -> Result<SweepResults, ResultsError> {
    let p = dir.join(META_FILE);
    let text = std::fs::read_to_string(&p).map_err(io(&p))?;
    let meta: SweepMeta = serde_json::from_str(&text).map_err(|e| ResultsError::Corrupt {
        path: p.display().to_string(),
        line: e.line(),
        message: e.to_string(),
    })?;
    let (cells, _) = read_cells(&dir.join(CELLS_FILE))?;
    Ok(SweepResults { meta, cells })
}

/// Appends cell lines durably.
#[derive(Debug)]
pub struct CellWriter {
    file: File,
    path: PathBuf,
}

impl CellWriter {
    /// Opens `dir/cells.jsonl` for appending. With `resume`, a torn last
    /// line is cut off and the finished cells are returned; without it the
    /// file must be absent or empty.
    pub fn open(dir: &Path, resume: bool) -> Result<(CellWriter, Vec<CellRecord>), ResultsError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(CELLS_FILE);
        let (done, complete) = read_cells(&path)?;
        if !resume && !done.is_empty() {
            return Err(ResultsError::Exists(path.display().to_string()));
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(false)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        let keep = if resume { complete } else { 0 };
        file.set_len(keep).map_err(io(&path))?;
        file.seek(SeekFrom::End(0)).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))?;
        Ok((
            CellWriter { file, path },
            if resume { done } else { Vec::new() },
        ))
    }

    /// Writes one line and fsyncs it.
    pub fn append(&mut self, rec: &CellRecord) -> Result<(), ResultsError> {
        let mut line = serde_json::to_vec(rec).map_err(|e| ResultsError::Io {
            path: self.path.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(io(&self.path))?;
        self.file.sync_data().map_err(io(&self.path))
    }
}

/// Writes `sweep.json` (atomically: temp file + rename).
pub fn write_meta(dir: &Path, meta: &SweepMeta) -> Result<(), ResultsError> {
    let p = dir.join(META_FILE);
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    let json = serde_json::to_string_pretty(meta).map_err(|e| ResultsError::Io {
        path: p.display().to_string(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&tmp, json + "\n").map_err(io(&tmp))?;
    std::fs::rename(&tmp, &p).map_err(io(&p))
}

/// Counts lines per key (for checks: every key exactly once).
pub fn key_counts(path: &Path) -> Result<BTreeMap<String, usize>, ResultsError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut m = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Ok(r) = serde_json::from_str::<CellRecord>(line) {
            *m.entry(r.key).or_insert(0) += 1;
        }
    }
    Ok(m)
}

/// A sweep description for unit tests: the quick scenario, `knobs`,
/// targets 2G and 10G, no headroom, one spare.
#[cfg(test)]
pub(crate) fn test_meta(knobs: Vec<Knob>) -> SweepMeta {
    SweepMeta {
        schema: META_SCHEMA.into(),
        name: "t".into(),
        description: String::new(),
        mode: Mode::Lab,
        scenario: Scenario::quick().expect("quick scenario"),
        knobs,
        cells_total: 0,
        targets_bps: vec![2_000_000_000, 10_000_000_000],
        headroom_percent: 0.0,
        profile: String::new(),
        kernel: "6.1".into(),
        cpus: 2,
        emulator: None,
        baselines: vec![],
        test: None,
        cpu_model: Some("Test CPU @ 3.0GHz".into()),
        link: None,
        reference: None,
        spares: 1,
        noise_percent: 5.0,
        pair_rate_bps: None,
        pair_rate_source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::knobs::Value;

    fn fig(bps: f64) -> TestFigures {
        TestFigures {
            streams: 1,
            bits_per_second: bps,
            bytes_total: (bps / 8.0 * 3.0) as u64,
            retransmits: None,
            cpu_seconds: Some(0.5),
            cpu_s_per_gb: Some(2.0),
            latency_idle: None,
            latency_loaded: None,
            error: None,
            intervals: Vec::new(),
        }
    }

    fn cell(b: u64) -> Cell {
        let mut c = Cell::default();
        c.knobs.insert(Knob::Batch, Value::Num(b));
        c
    }

    #[test]
    fn median_and_summary() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN]), None);
        let r = CellRecord::new(0, &cell(8), vec![fig(1e9), fig(3e9), fig(2e9)], 1.0);
        assert_eq!(r.bits_per_second, 2e9);
        // 2 s per GB at 2 Gbit/s (0.25 GB/s) is half a core.
        assert_eq!(r.cpu_cores, Some(0.5));
        assert!(r.p99_loaded_ms.is_none());
    }

    #[test]
    fn torn_line_is_cut_and_resume_keeps_cells() {
        let dir = std::env::temp_dir().join(format!("tb-sweep-res-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut w, done) = CellWriter::open(&dir, false).expect("open");
        assert!(done.is_empty());
        w.append(&CellRecord::new(0, &cell(8), vec![fig(1e9)], 1.0))
            .expect("append");
        w.append(&CellRecord::new(1, &cell(16), vec![fig(1e9)], 1.0))
            .expect("append");
        drop(w);
        // A run killed in the middle of a line.
        let path = dir.join(CELLS_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).expect("reopen");
        f.write_all(b"{\"schema\":\"tunbench.swe").expect("torn");
        drop(f);
        assert!(matches!(
            CellWriter::open(&dir, false),
            Err(ResultsError::Exists(_))
        ));
        let (mut w, done) = CellWriter::open(&dir, true).expect("resume");
        assert_eq!(done.len(), 2);
        w.append(&CellRecord::new(2, &cell(32), vec![fig(1e9)], 1.0))
            .expect("append");
        drop(w);
        let counts = key_counts(&path).expect("counts");
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|&n| n == 1), "{counts:?}");
        // Garbage in a complete line is an error naming the line.
        std::fs::write(&path, "{\"x\":1}\n").expect("write");
        let e = read_cells(&path).expect_err("corrupt");
        assert!(e.to_string().contains(":1:"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
