//! Running a sweep: for each cell not yet in `cells.jsonl`, reconfigure
//! tunneld (a restart with a newly generated config), warm up, measure with
//! the traffic engine `repeats` times, append the cell's line (fsync'd).
//!
//! Lab mode builds the lab's topology once ([`crate::topo::dc_pair`]) with
//! the scenario's WAN emulation ([`crate::lab::wan::WanLink`]) and restarts
//! the lab's tunneld pair per cell through
//! [`crate::lab::systems::tunneld::Tunneld::start_with`]. Remote mode
//! rewrites the local tunneld's config file and runs the user's restart
//! command ([`super::remote`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tunneld::config::{CipherKind, TunnelFile};
use tunneld::units::Size;

use super::knobs::{cipher_of, transport_of, Cell, Knob};
use super::profile::{Mode, SweepProfile};
use super::results::{
    self, Baseline, CellRecord, CellWriter, ResultsError, SweepMeta, META_SCHEMA,
};
use crate::engine::{LatencyParams, Protocol, Server, TestParams, TestSpec};
use crate::lab::measure::{self, TestFigures, ENGINE_PORT};
use crate::lab::systems::{self, tunneld::Side, tunneld::Tunneld, Ctx, Running};
use crate::lab::wan::WanLink;
use crate::lab::LabError;
use crate::topo::{dc_pair, HOST_B_V4};

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

fn meta(p: &SweepProfile) -> SweepMeta {
    SweepMeta {
        schema: META_SCHEMA.into(),
        name: p.file.name.clone(),
        description: p.file.description.clone(),
        mode: p.file.mode,
        scenario: p.scenario.clone(),
        knobs: p.knobs.clone(),
        cells_total: p.cells.len(),
        targets_bps: p.file.planning.targets.iter().map(|r| r.0).collect(),
        headroom_percent: p.file.planning.headroom,
        profile: p.text.clone(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_string())
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        emulator: None,
        baselines: Vec::new(),
        test: Some(p.file.test.clone()),
        cpu_model: cpu_model(),
        link: None,
        reference: p.file.reference.clone(),
        spares: p.file.planning.spares,
        noise_percent: p.file.planning.noise,
        pair_rate_bps: p.file.planning.pair_rate.map(|r| r.0),
        pair_rate_source: p.file.planning.pair_rate_source.clone(),
    }
}

/// The CPU model of this host (`model name` of /proc/cpuinfo; on CPUs
/// that lack it, e.g. some ARM kernels, `Hardware` or `CPU part`).
pub fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    ["model name", "Hardware", "CPU part"].iter().find_map(|k| {
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(a, _)| a.trim() == *k)
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|v| !v.is_empty())
    })
}

/// Runs (or resumes) the sweep; returns every cell's record, in grid order.
pub fn run(
    p: &SweepProfile,
    opts: &SweepOptions,
    progress: &dyn Progress,
) -> Result<Vec<CellRecord>, RunError> {
    let (mut writer, done) = CellWriter::open(&opts.out_dir, opts.resume)?;
    let mut m = meta(p);
    if opts.resume {
        if let Ok(old) = results::load(&opts.out_dir) {
            m.baselines = old.meta.baselines;
            m.emulator = old.meta.emulator;
            m.link = old.meta.link;
        }
    }
    results::write_meta(&opts.out_dir, &m)?;
    let done_keys: std::collections::BTreeSet<String> =
        done.iter().map(|r| r.key.clone()).collect();
    let todo: Vec<(usize, &Cell)> = p
        .cells
        .iter()
        .enumerate()
        .filter(|(_, c)| !done_keys.contains(&c.key()))
        .collect();
    progress.begin(p.cells.len(), p.cells.len() - todo.len());
    let mut records = done;
    if !todo.is_empty() {
        let mut sink = |rec: CellRecord| -> Result<(), RunError> {
            writer.append(&rec)?;
            progress.done(&rec);
            records.push(rec);
            Ok(())
        };
        match p.file.mode {
            Mode::Lab => run_lab(p, opts, &todo, &mut m, progress, &mut sink)?,
            Mode::Remote => super::remote::run(p, &todo, progress, &mut sink)?,
        }
    }
    let order = |r: &CellRecord| p.cells.iter().position(|c| c.key() == r.key);
    records.sort_by_key(|r| order(r).unwrap_or(usize::MAX));
    Ok(records)
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

fn run_lab(
    p: &SweepProfile,
    opts: &SweepOptions,
    todo: &[(usize, &Cell)],
    meta: &mut SweepMeta,
    progress: &dyn Progress,
    sink: &mut dyn FnMut(CellRecord) -> Result<(), RunError>,
) -> Result<(), RunError> {
    let bin = opts.tunneld_bin.as_deref().ok_or(RunError::NoTunneld)?;
    progress.note("building the topology (5 namespaces)");
    let dc = dc_pair("sweep", true)?;
    // Dropped before the topology; its accept loop polls a flag, so it
    // stops from any namespace.
    let _server = dc
        .lab
        .run_in(&dc.host_b, || {
            Server::bind((std::net::Ipv4Addr::UNSPECIFIED, ENGINE_PORT).into()).map(Server::spawn)
        })?
        .map_err(|e| LabError::Wan(format!("engine server in host-b: {e}")))?;
    let mut link = WanLink::setup(&dc, &p.scenario.wan, &opts.tunbench_bin, opts.seed)?;
    progress.note(&format!("WAN emulator: {}", link.kind.label()));
    meta.emulator = Some(link.kind.label().to_string());
    if meta.link.is_none() {
        // Once per sweep, before the first cell, as the lab does: what the
        // emulated link really gives (RTT, rate on the wire).
        let check = crate::lab::check_link(&dc, &p.scenario, &link, &|l: &str| progress.note(l));
        meta.link = Some((&check).into());
    }
    let mut instance = 0u32;
    let first = p.cells.first().cloned().unwrap_or_default();
    if meta.baselines.is_empty() && !p.file.baselines.is_empty() {
        for &kind in &p.file.baselines {
            instance += 1;
            let ctx = Ctx {
                dc: &dc,
                scenario: &p.scenario,
                tunneld_bin: Some(bin),
                instance,
            };
            progress.note(&format!("baseline {kind}: starting"));
            let b = match systems::start(kind, &ctx) {
                Ok(mut sys) => {
                    let spec = cell_spec(p, &first, &HOST_B_V4.to_string(), ENGINE_PORT);
                    let f = measure::run_test(&dc, &spec, &sys.pids());
                    progress.note(&format!(
                        "baseline {kind}: {}",
                        tunneld::units::format_rate(f.bits_per_second)
                    ));
                    let variant = sys.variant();
                    sys.stop(&dc);
                    Baseline {
                        system: kind,
                        variant,
                        figures: Some(f),
                    }
                }
                Err(e) => {
                    progress.note(&format!("baseline {kind}: {e}"));
                    Baseline {
                        system: kind,
                        variant: e.to_string(),
                        figures: None,
                    }
                }
            };
            meta.baselines.push(b);
        }
    }
    results::write_meta(&opts.out_dir, meta)?;
    let live_bps = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for &(index, cell) in todo {
        progress.cell(index, cell);
        let started = Instant::now();
        instance += 1;
        let ctx = Ctx {
            dc: &dc,
            scenario: &p.scenario,
            tunneld_bin: Some(bin),
            instance,
        };
        let mut tun_b = String::new();
        let transport = cell
            .get(Knob::Transport)
            .and_then(transport_of)
            .unwrap_or_default();
        let started_sys = Tunneld::start_on(&ctx, transport, &mut |side, f| {
            apply_knobs(f, cell);
            if side == Side::B {
                tun_b = f.interface.name.clone();
            }
        });
        let mut sys = match started_sys {
            Ok(s) => s,
            Err(e) => {
                sink(failed(index, cell, e.to_string(), started))?;
                continue;
            }
        };
        if let Err(e) = systems::wait_reachable(&dc, Duration::from_secs(15)) {
            sys.stop(&dc);
            sink(failed(index, cell, e, started))?;
            continue;
        }
        let pids = sys.pids();
        let mut repeats: Vec<TestFigures> = Vec::new();
        {
            let lb = Arc::clone(&live_bps);
            let _poll = pids.get(1).map(|pid| {
                LivePoll::start(
                    format!("/proc/{pid}/net/dev"),
                    tun_b.clone(),
                    Arc::new(move |bps| lb.store(bps as u64, Ordering::Relaxed)),
                )
            });
            for _ in 0..p.file.test.repeats {
                let spec = cell_spec(p, cell, &HOST_B_V4.to_string(), ENGINE_PORT);
                repeats.push(with_live(&live_bps, progress, spec.params.parallel, || {
                    measure::run_test(&dc, &spec, &pids)
                }));
            }
        }
        sys.stop(&dc);
        sink(CellRecord::new(
            index,
            cell,
            repeats,
            started.elapsed().as_secs_f64(),
        ))?;
    }
    link.finish(&dc);
    Ok(())
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
        h.join().unwrap_or_else(|_| TestFigures {
            streams,
            bits_per_second: 0.0,
            bytes_total: 0,
            retransmits: None,
            cpu_seconds: None,
            cpu_s_per_gb: None,
            latency_idle: None,
            latency_loaded: None,
            error: Some("measurement thread panicked".into()),
            intervals: Vec::new(),
        })
    })
}

/// The record of a cell that could not be measured.
pub(crate) fn failed(index: usize, cell: &Cell, error: String, started: Instant) -> CellRecord {
    let mut r = CellRecord::new(index, cell, Vec::new(), started.elapsed().as_secs_f64());
    r.error = Some(error);
    r
}
