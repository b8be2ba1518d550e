//! The lab runner of a sweep: builds the lab's topology once
//! ([`crate::topo::dc_pair`]) with the scenario's WAN emulation
//! ([`crate::lab::wan::WanLink`]), measures the configured baselines, then
//! restarts the lab's tunneld pair per cell through
//! [`crate::lab::systems::tunneld::Tunneld::start_on`] with the cell's knobs.

use std::time::{Duration, Instant};

use super::cells::{
    apply_knobs, cell_spec, failed, measure_cell, Progress, RunError, SweepOptions,
};
use super::knobs::{transport_of, Cell, Knob};
use super::profile::SweepProfile;
use super::results::{self, Baseline, CellRecord, SweepMeta};
use crate::engine::Server;
use crate::lab::measure::{self, ENGINE_PORT};
use crate::lab::systems::{self, tunneld::Side, tunneld::Tunneld, Ctx, Running};
use crate::lab::wan::WanLink;
use crate::lab::LabError;
use crate::topo::{dc_pair, HOST_B_V4};

/// Runs the remaining cells in the lab.
pub fn run(
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
        let live_from = pids
            .get(1)
            .map(|pid| (format!("/proc/{pid}/net/dev"), tun_b.clone()));
        let server = HOST_B_V4.to_string();
        let repeats = measure_cell(
            p,
            cell,
            (&server, ENGINE_PORT),
            live_from,
            progress,
            &|spec| measure::run_test(&dc, spec, &pids),
        );
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
