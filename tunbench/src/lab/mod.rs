//! `tunbench lab`: the WAN testbed. Builds host-a ─ gw-a ═ wan ═ gw-b ─ host-b
//! ([`crate::topo::dc_pair`]), emulates the WAN link ([`wan`], [`wanemu`]),
//! checks it (ping RTT, UDP rate), brings up each compared system in turn
//! ([`systems`]), measures it with the traffic engine ([`measure`]) and
//! writes the comparison ([`report`]).
//!
//! Order of a run: topology → engine server in host-b → WAN emulation →
//! link checks over the raw path → for each repeat, every system (order
//! rotated per repeat): start, one engine test per stream count, stop →
//! emulator counters → report. Everything is torn down when the
//! [`DcPair`] drops, also on error and on SIGINT/SIGTERM (the caller
//! installs [`crate::topo::install_signal_cleanup`]).

pub mod error;
pub mod ha;
pub mod measure;
pub mod report;
pub mod scenario;
pub mod systems;
pub mod wan;
pub mod wanemu;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub use error::{LabError, Result};
pub use report::{LabReport, Row, RowStatus};
pub use scenario::{Scenario, ScenarioError, System, SystemKind};

use crate::engine::Server;
use crate::topo::{dc_pair, DcPair};
use report::{LinkFigures, Measurement};
use systems::{Ctx, NotRun};
use wan::{EmulatorKind, WanLink};

/// How a lab run is carried out.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Where results.json and summary.md go (created).
    pub out_dir: PathBuf,
    /// The tunbench binary (spawned as `tunbench wan-emu` in the wan namespace).
    pub tunbench_bin: PathBuf,
    /// The tunneld binary, if found.
    pub tunneld_bin: Option<PathBuf>,
    /// Seed of the emulator's loss/jitter RNG.
    pub seed: u64,
}

/// Runs the scenario; writes `results.json` and `summary.md` into
/// `opts.out_dir` and returns the report. `progress` receives one line per step.
pub fn run(s: &Scenario, opts: &LabOptions, progress: &dyn Fn(&str)) -> Result<LabReport> {
    std::fs::create_dir_all(&opts.out_dir)
        .map_err(|e| LabError::io(format!("creating {}", opts.out_dir.display()), e))?;
    let started = Instant::now();
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    progress("building the topology (5 namespaces)");
    let dc = dc_pair("lab", true)?;
    // Dropped before the topology; its accept loop polls a flag, so it
    // stops from any namespace.
    let server = dc
        .lab
        .run_in(&dc.host_b, || {
            Server::bind((std::net::Ipv4Addr::UNSPECIFIED, measure::ENGINE_PORT).into())
                .map(Server::spawn)
        })?
        .map_err(|e| LabError::Wan(format!("engine server in host-b: {e}")))?;
    progress("setting up the WAN link");
    let mut link = WanLink::setup(&dc, &s.wan, &opts.tunbench_bin, opts.seed)?;
    progress(&format!("WAN emulator: {}", link.kind.label()));
    let mut figures = check_link(&dc, s, &link, progress);

    let mut measurements: Vec<Measurement> = Vec::new();
    let mut not_run: BTreeMap<System, NotRun> = BTreeMap::new();
    let mut cpu_notes: BTreeMap<System, Option<String>> = BTreeMap::new();
    let mut instance = 0;
    let maxn = s.test.streams.iter().copied().max().unwrap_or(1);
    for repeat in 0..s.test.repeats {
        let n = s.systems.len();
        for i in 0..n {
            let kind = s.systems[(i + repeat as usize) % n].clone();
            if matches!(not_run.get(&kind), Some(NotRun::NotInstalled(_))) {
                continue;
            }
            instance += 1;
            let ctx = Ctx {
                dc: &dc,
                scenario: s,
                tunneld_bin: opts.tunneld_bin.as_deref(),
                instance,
            };
            progress(&format!(
                "repeat {}/{}: {kind}: starting",
                repeat + 1,
                s.test.repeats
            ));
            let mut sys = match systems::start_system(&kind, &ctx) {
                Ok(sys) => sys,
                Err(e) => {
                    progress(&format!(
                        "  {kind}: {}",
                        e.to_string().lines().next().unwrap_or("")
                    ));
                    not_run.insert(kind, e);
                    continue;
                }
            };
            cpu_notes.insert(kind.clone(), sys.cpu_note());
            let pids = sys.pids();
            let mut tests = Vec::new();
            for &streams in &s.test.streams {
                let spec = measure::tcp_spec(s, streams, streams == maxn);
                let f = measure::run_test(&dc, &spec, &pids);
                progress(&format!(
                    "  {kind}: {streams} stream(s): {}{}",
                    tunneld::units::format_rate(f.bits_per_second),
                    f.error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ));
                tests.push(f);
            }
            measurements.push(Measurement {
                system: kind.clone(),
                repeat,
                variant: sys.variant(),
                tests,
            });
            sys.stop(&dc);
        }
    }
    figures.emulator_cpu_s = link.cpu_seconds();
    figures.emulator_stats = link.finish(&dc);
    drop(server);
    progress("tearing down");
    drop(dc);

    let rows = s
        .systems
        .iter()
        .map(|kind| {
            let rounds: Vec<&Measurement> =
                measurements.iter().filter(|m| &m.system == kind).collect();
            if rounds.is_empty() {
                let (status, reason) = match not_run.get(kind) {
                    Some(NotRun::NotInstalled(r)) => (RowStatus::NotInstalled, r.clone()),
                    Some(NotRun::Failed(r)) => (RowStatus::Failed, r.clone()),
                    None => (RowStatus::Failed, "never ran".into()),
                };
                Row {
                    system: kind.clone(),
                    status,
                    reason: Some(reason),
                    variant: None,
                    throughput: Vec::new(),
                    latency_idle_ms: None,
                    latency_loaded_ms: None,
                    cpu_s_per_gb: None,
                    cpu_note: None,
                    errors: Vec::new(),
                }
            } else {
                report::measured_row(
                    kind.clone(),
                    &rounds,
                    &s.test.streams,
                    cpu_notes.get(kind).cloned().flatten(),
                )
            }
        })
        .collect();
    let report = LabReport {
        schema: report::SCHEMA.into(),
        started_unix_s,
        wall_s: started.elapsed().as_secs_f64(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_string())
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        scenario: s.clone(),
        link: figures,
        rows,
        measurements,
    };
    write_outputs(&report, &opts.out_dir)?;
    Ok(report)
}

/// Writes results.json and summary.md.
pub fn write_outputs(report: &LabReport, dir: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| LabError::io("serializing results", std::io::Error::other(e)))?;
    let p = dir.join("results.json");
    std::fs::write(&p, json + "\n")
        .map_err(|e| LabError::io(format!("writing {}", p.display()), e))?;
    let p = dir.join("summary.md");
    std::fs::write(&p, report::render_markdown(report))
        .map_err(|e| LabError::io(format!("writing {}", p.display()), e))?;
    Ok(())
}

/// Ping and UDP-rate checks over the raw path (routes removed afterwards).
pub(crate) fn check_link(
    dc: &DcPair,
    s: &Scenario,
    link: &WanLink,
    progress: &dyn Fn(&str),
) -> LinkFigures {
    let mut f = LinkFigures {
        emulator: link.kind,
        emulator_label: link.kind.label().into(),
        netem_note: link.netem_note.clone(),
        configured_rate_bps: s.wan.rate.map(|r| r.0),
        configured_rtt_ms: s.wan.one_way().as_secs_f64() * 2e3,
        configured_loss_percent: s.wan.loss.unwrap_or(0.0),
        ping: None,
        ping_error: None,
        udp_payload_bps: None,
        udp_wire_bps: None,
        udp_loss_percent: None,
        rate_check: None,
        rate_note: None,
        emulator_stats: None,
        emulator_cpu_s: None,
    };
    if let Err(e) = dc.route_lans_directly() {
        f.ping_error = Some(e.to_string());
        return f;
    }
    if let Err(e) = systems::wait_reachable(dc, std::time::Duration::from_secs(10)) {
        f.ping_error = Some(e);
        systems::raw::unroute(dc);
        return f;
    }
    match measure::ping(dc, 20) {
        Ok(p) => {
            progress(&format!(
                "link check: RTT min {:.2} / avg {:.2} ms (configured {:.1} ms)",
                p.min_ms, p.avg_ms, f.configured_rtt_ms
            ));
            f.ping = Some(p);
        }
        Err(e) => f.ping_error = Some(e),
    }
    match s.wan.rate {
        None => {
            f.rate_note = Some(if link.kind == EmulatorKind::NoEmulation {
                "no emulation: no rate limit to check".into()
            } else {
                "no rate limit configured".into()
            })
        }
        Some(r) if r.0 > measure::UDP_CHECK_MAX_RATE => {
            // A UDP sender of 1400-byte datagrams cannot offer multi-Gbit/s
            // on a small box: check with 4 TCP streams instead (a lower bound).
            let mut spec = measure::tcp_spec(s, 4, false);
            spec.params.time = std::time::Duration::from_secs(2);
            spec.params.omit = std::time::Duration::from_secs(1);
            let t = measure::run_test(dc, &spec, &[]);
            let wire = t.bits_per_second * 1514.0 / 1448.0;
            progress(&format!(
                "link check: rate {} on the wire with 4 TCP streams (configured {})",
                tunneld::units::format_rate(wire),
                tunneld::units::format_rate(r.0 as f64)
            ));
            f.rate_check = Some("tcp-4-streams".into());
            f.udp_payload_bps = Some(t.bits_per_second);
            f.udp_wire_bps = Some(wire);
            f.rate_note = t.error;
        }
        Some(r) => match measure::udp_rate_check(dc, r.0) {
            Ok((payload, loss)) => {
                let wire = payload * f64::from(measure::UDP_CHECK_FRAME)
                    / f64::from(measure::UDP_CHECK_LEN);
                progress(&format!(
                    "link check: rate {} on the wire (configured {})",
                    tunneld::units::format_rate(wire),
                    tunneld::units::format_rate(r.0 as f64)
                ));
                f.rate_check = Some("udp-125-percent".into());
                f.udp_payload_bps = Some(payload);
                f.udp_wire_bps = Some(wire);
                f.udp_loss_percent = Some(loss);
            }
            Err(e) => f.rate_note = Some(format!("UDP rate check failed: {e}")),
        },
    }
    systems::raw::unroute(dc);
    f
}
