//! What the two sweep runners (lab: [`super::lab_runner`], remote:
//! [`super::remote`]) share: the engine test of a cell, the cell's tunneld
//! knobs applied to a config, the live rate shown while a cell runs, the
//! record of a cell that failed, and the [`SweepOptions`], [`Progress`] and
//! [`RunError`] types of the dispatcher ([`super::runner::run`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tunneld::config::{CipherKind, TunnelFile};
use tunneld::units::Size;

use super::knobs::{cipher_of, transport_of, Cell, Knob};
use super::profile::SweepProfile;
use super::results::{CellRecord, ResultsError};
use crate::engine::{LatencyParams, Protocol, TestParams, TestSpec};
use crate::lab::measure::TestFigures;
use crate::lab::LabError;

/// Why a sweep stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Reading or writing the results folder failed.
    #[error(transparent)]
    Results(#[from] ResultsError),
    /// Building the lab or its WAN link failed.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// The namespace plumbing failed.
    #[error(transparent)]
    Topo(#[from] crate::topo::TopoError),
    /// The tunneld binary is missing (lab mode).
    #[error(
        "tunneld binary not found next to tunbench nor in PATH (cargo build --release -p tunneld)"
    )]
    NoTunneld,
    /// Remote mode: the local tunneld could not be reconfigured.
    #[error("reconfiguring the local tunneld: {0}")]
    Remote(String),
}

/// How a sweep is run.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Results folder (sweep.json, cells.jsonl).
    pub out_dir: PathBuf,
    /// Continue a sweep: skip cells already in cells.jsonl.
    pub resume: bool,
    /// The tunbench binary (for the userspace WAN emulator).
    pub tunbench_bin: PathBuf,
    /// The tunneld binary (lab mode).
    pub tunneld_bin: Option<PathBuf>,
    /// Seed of the WAN emulator's randomness.
    pub seed: u64,
}

/// What the caller shows while the sweep runs.
pub trait Progress: Sync {
    /// The sweep starts: `done` of `total` cells already finished.
    fn begin(&self, total: usize, done: usize);
    /// A line of news (topology, baselines...).
    fn note(&self, line: &str);
    /// A cell starts.
    fn cell(&self, index: usize, cell: &Cell);
    /// Live throughput of the current cell, bit/s.
    fn live(&self, bps: f64);
    /// A cell's line was written.
    fn done(&self, rec: &CellRecord);
}

/// The engine test of one repeat of `cell`.
pub fn cell_spec(p: &SweepProfile, cell: &Cell, server: &str, port: u16) -> TestSpec {
    let t = &p.file.test;
    let mut spec = TestSpec::new(server.to_string(), port);
    let num = |k: Knob| cell.get(k).and_then(|v| v.num());
    spec.params = TestParams {
        protocol: Protocol::Tcp,
        parallel: num(Knob::Streams).map_or(t.streams, |n| n as u32),
        time: t.duration.0,
        omit: t.warmup.0,
        interval: Duration::from_millis(500),
        window: num(Knob::Window),
        mss: num(Knob::Mss).map(|n| n as u32),
        congestion: t.congestion.clone(),
        latency: t.latency.then(|| LatencyParams {
            idle: Duration::ZERO,
            interval: t.latency_interval.0,
            ..Default::default()
        }),
        ..TestParams::default()
    };
    spec
}

/// Applies the cell's tunneld knobs to a config.
pub fn apply_knobs(f: &mut TunnelFile, cell: &Cell) {
    for (k, v) in &cell.knobs {
        match k {
            Knob::Cipher => {
                if let Some(c) = cipher_of(v) {
                    f.cipher = c;
                    f.insecure_lab_only = c == CipherKind::None;
                }
            }
            Knob::Offload => f.dataplane.offload = v.flag().unwrap_or(f.dataplane.offload),
            Knob::Batch => f.dataplane.batch = v.num().unwrap_or(f.dataplane.batch),
            Knob::Workers => f.dataplane.workers = v.num().unwrap_or(f.dataplane.workers),
            Knob::Flows => f.dataplane.flows = v.num().unwrap_or(f.dataplane.flows),
            Knob::Queue => {
                if let Some(q) = crate::sweep::knobs::queue_of(v) {
                    f.dataplane.queue = q;
                }
            }
            Knob::Mtu => {
                if let Some(m) = v.num().and_then(|m| u16::try_from(m).ok()) {
                    f.interface.mtu = m;
                }
            }
            Knob::MssClamp => f.mss_clamp = v.flag().unwrap_or(f.mss_clamp),
            Knob::SocketBuffer => {
                if let Some(n) = v.num() {
                    f.socket_buffer = Size(n);
                }
            }
            Knob::Transport => {
                // The peers' transport only; QUIC's certificates and pins
                // are filled in by `Tunneld::start_on` (lab mode).
                if let Some(t) = transport_of(v) {
                    for p in &mut f.peers {
                        p.transport = t;
                    }
                }
            }
            Knob::Mss | Knob::Window | Knob::Streams => {}
        }
    }
}

/// Polls `/proc/PID/net/dev` (the namespace of PID) for `iface`'s byte
/// counters and reports the rate until dropped.
pub(crate) struct LivePoll {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// rx + tx bytes of `iface` in a `/proc/net/dev` text.
pub(crate) fn dev_bytes(text: &str, iface: &str) -> Option<(u64, u64)> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{iface}:")))?;
    let f: Vec<u64> = line
        .split_once(':')?
        .1
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    Some((*f.first()?, *f.get(8)?))
}

impl LivePoll {
    pub(crate) fn start(
        path: String,
        iface: String,
        report: Arc<dyn Fn(f64) + Send + Sync>,
    ) -> LivePoll {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("sweep-live".into())
            .spawn(move || {
                let read = || {
                    std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|t| dev_bytes(&t, &iface))
                };
                let mut last = (read(), Instant::now());
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(500));
                    let now = (read(), Instant::now());
                    if let (Some(a), Some(b)) = (last.0, now.0) {
                        let bytes = (b.0.saturating_sub(a.0)).max(b.1.saturating_sub(a.1));
                        let secs = now.1.duration_since(last.1).as_secs_f64();
                        if secs > 0.0 {
                            report(bytes as f64 * 8.0 / secs);
                        }
                    }
                    last = now;
                }
            })
            .ok();
        LivePoll { stop, thread }
    }
}

impl Drop for LivePoll {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Measures `cell` the profile's `repeats` times against the engine server
/// at `server`, showing meanwhile the live rate of the interface named in
/// `live_from` (a `/proc/.../net/dev` path and the interface), if any; `run`
/// is one engine test.
pub(crate) fn measure_cell(
    p: &SweepProfile,
    cell: &Cell,
    server: (&str, u16),
    live_from: Option<(String, String)>,
    progress: &dyn Progress,
    run: &(dyn Fn(&TestSpec) -> TestFigures + Sync),
) -> Vec<TestFigures> {
    let live = Arc::new(AtomicU64::new(0));
    let lv = Arc::clone(&live);
    let _poll = live_from.map(|(path, iface)| {
        LivePoll::start(
            path,
            iface,
            Arc::new(move |bps| lv.store(bps as u64, Ordering::Relaxed)),
        )
    });
    (0..p.file.test.repeats)
        .map(|_| {
            let spec = cell_spec(p, cell, server.0, server.1);
            with_live(&live, progress, spec.params.parallel, || run(&spec))
        })
        .collect()
}

/// Runs `measure` (one engine test) while forwarding the live rate in
/// `live` to `progress` every 250 ms.
pub(crate) fn with_live(
    live: &std::sync::atomic::AtomicU64,
    progress: &dyn Progress,
    streams: u32,
    measure: impl FnOnce() -> TestFigures + Send,
) -> TestFigures {
    let finished = AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let f = measure();
            finished.store(true, Ordering::Relaxed);
            f
        });
        while !finished.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(250));
            progress.live(live.load(Ordering::Relaxed) as f64);
        }
        h.join()
            .unwrap_or_else(|_| TestFigures::failed(streams, "measurement thread panicked".into()))
    })
}

/// The record of a cell that could not be measured.
pub(crate) fn failed(index: usize, cell: &Cell, error: String, started: Instant) -> CellRecord {
    let mut r = CellRecord::new(index, cell, Vec::new(), started.elapsed().as_secs_f64());
    r.error = Some(error);
    r
}
