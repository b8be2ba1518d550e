//! The `tunbench lab` and hidden `tunbench wan-emu` subcommands (argument
//! structs and their run functions), kept out of main.rs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use tunbench::lab::{self, wanemu, LabOptions, Scenario};
use tunneld::units::{parse_duration, parse_rate, parse_size, UnitError};

/// `tunbench lab`.
#[derive(Debug, Args)]
pub struct LabArgs {
    /// Scenario profile (YAML, `kind: scenario`); default: the built-in quick
    /// scenario (profiles/lab-quick.yaml, about a minute).
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Output folder for results.json and summary.md (default lab-results/<UTC timestamp>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only remove namespaces (and their processes) left by crashed runs, then exit.
    #[arg(long)]
    cleanup: bool,
    /// tunneld binary (default: next to tunbench, else PATH).
    #[arg(long)]
    tunneld: Option<PathBuf>,
    /// Seed of the WAN emulator's random loss and jitter.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// `tunbench wan-emu` (hidden; run by the lab inside the wan namespace).
#[derive(Debug, Args)]
pub struct WanEmuArgs {
    /// Interface towards gw-a.
    #[arg(long)]
    if_a: String,
    /// Interface towards gw-b.
    #[arg(long)]
    if_b: String,
    /// Rate limit per direction, bit/s (absent: none).
    #[arg(long, value_parser = rate)]
    rate: Option<u64>,
    /// Token bucket burst, bytes.
    #[arg(long, default_value = "3028", value_parser = size)]
    burst: u64,
    /// Queue in front of the rate limit, as link time.
    #[arg(long, default_value = "50ms", value_parser = dur)]
    queue: Duration,
    /// One-way delay.
    #[arg(long, default_value = "0ms", value_parser = dur)]
    delay: Duration,
    /// Uniform jitter ± this.
    #[arg(long, default_value = "0ms", value_parser = dur)]
    jitter: Duration,
    /// Random loss, percent.
    #[arg(long, default_value = "0", value_parser = pct)]
    loss: f64,
    /// Share of packets that skip the delay, percent.
    #[arg(long, default_value = "0", value_parser = pct)]
    reorder: f64,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the counters (JSON) here on exit.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// Drop IP packets longer than this (a path-MTU black hole: no ICMP).
    #[arg(long)]
    mtu: Option<u64>,
    /// Apply `--mtu` only from the first SIGHUP on (a black hole that
    /// appears on a path already in use).
    #[arg(long, requires = "mtu")]
    mtu_after_sighup: bool,
}

fn size(s: &str) -> Result<u64, UnitError> {
    parse_size(s)
}
fn rate(s: &str) -> Result<u64, UnitError> {
    parse_rate(s)
}
fn dur(s: &str) -> Result<Duration, UnitError> {
    parse_duration(s)
}
fn pct(s: &str) -> Result<f64, String> {
    lab::scenario::parse_percent(s)
}

/// `YYYYMMDD-HHMMSS` in UTC.
fn utc_stamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn find_tunneld(explicit: Option<&PathBuf>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.clone());
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("tunneld")))
        .filter(|p| p.is_file());
    sibling.or_else(|| lab::systems::which("tunneld"))
}

/// Runs `tunbench lab`.
pub fn lab_cmd(a: &LabArgs) -> anyhow::Result<ExitCode> {
    tunbench::topo::check_privileges()?;
    tunbench::topo::install_signal_cleanup()?;
    if a.cleanup {
        let removed = tunbench::topo::cleanup_stale()?;
        if removed.is_empty() {
            println!("no leftovers of crashed runs");
        } else {
            println!(
                "removed {} namespace(s): {}",
                removed.len(),
                removed.join(" ")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let scenario = match &a.profile {
        Some(p) => Scenario::load(p)?,
        None => Scenario::quick()?,
    };
    let out_dir = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("lab-results").join(utc_stamp()));
    let opts = LabOptions {
        out_dir: out_dir.clone(),
        tunbench_bin: std::env::current_exe().context("locating the tunbench binary")?,
        tunneld_bin: find_tunneld(a.tunneld.as_ref()),
        seed: a.seed,
    };
    eprintln!(
        "tunbench lab: scenario {} (about {} s)",
        scenario.name,
        scenario.estimated_time().as_secs()
    );
    if let Some(plan) = &scenario.ha {
        let report = lab::ha::run(&scenario, plan, &opts, &|line| eprintln!("  {line}"))?;
        println!("{}", lab::ha::render(&report));
        println!(
            "results: {} and {}",
            out_dir.join("results.json").display(),
            out_dir.join("summary.md").display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let report = lab::run(&scenario, &opts, &|line| eprintln!("  {line}"))?;
    println!("{}", lab::report::render_table(&report));
    println!(
        "results: {} and {}",
        out_dir.join("results.json").display(),
        out_dir.join("summary.md").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs the emulator until SIGTERM/SIGINT.
pub fn wan_emu_cmd(a: &WanEmuArgs) -> anyhow::Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("signal handler")?;
    }
    let args = wanemu::EmuArgs {
        if_a: a.if_a.clone(),
        if_b: a.if_b.clone(),
        params: wanemu::LinkParams {
            rate: a.rate,
            burst: a.burst,
            queue_ns: a.queue.as_nanos() as u64,
            delay_ns: a.delay.as_nanos() as u64,
            jitter_ns: a.jitter.as_nanos() as u64,
            loss: a.loss / 100.0,
            reorder: a.reorder / 100.0,
        },
        seed: a.seed,
        mtu: a.mtu,
        outage: Arc::new(AtomicUsize::new(0)),
        mtu_on: Arc::new(AtomicUsize::new(usize::from(!a.mtu_after_sighup))),
    };
    // Fault injection: SIGHUP turns the `--mtu` black hole on.
    signal_hook::flag::register_usize(signal_hook::consts::SIGHUP, args.mtu_on.clone(), 1)
        .context("signal handler")?;
    // Fault injection: SIGUSR1 takes the link down, SIGUSR2 brings it back.
    signal_hook::flag::register_usize(signal_hook::consts::SIGUSR1, args.outage.clone(), 1)
        .context("signal handler")?;
    signal_hook::flag::register_usize(signal_hook::consts::SIGUSR2, args.outage.clone(), 0)
        .context("signal handler")?;
    let stats = wanemu::run(&args, stop, || {
        println!(
            "wan-emu ready: {} <-> {} {:?}",
            args.if_a, args.if_b, args.params
        );
    })?;
    let json = serde_json::to_string(&stats).context("serializing counters")?;
    println!("{json}");
    if let Some(p) = &a.stats {
        std::fs::write(p, &json).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stamp_shape() {
        let s = super::utc_stamp();
        assert_eq!(s.len(), 15, "{s}");
        assert!(s.starts_with("20"), "{s}");
    }
}
