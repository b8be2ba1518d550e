//! Running a sweep: the dispatcher. For each cell not yet in `cells.jsonl`,
//! one of two runners reconfigures tunneld, warms up, measures with the
//! traffic engine `repeats` times and appends the cell's line (fsync'd):
//! [`super::lab_runner`] restarts the lab's tunneld pair per cell in
//! namespaces it builds; [`super::remote`] rewrites the local tunneld's
//! config file and runs the user's restart command. What both share is in
//! [`super::cells`].

use super::knobs::Cell;
use super::profile::{Mode, SweepProfile};
use super::results::{self, CellRecord, CellWriter, SweepMeta, META_SCHEMA};

pub use super::cells::{Progress, RunError, SweepOptions};

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
            Mode::Lab => super::lab_runner::run(p, opts, &todo, &mut m, progress, &mut sink)?,
            Mode::Remote => super::remote::run(p, &todo, progress, &mut sink)?,
        }
    }
    let order = |r: &CellRecord| p.cells.iter().position(|c| c.key() == r.key);
    records.sort_by_key(|r| order(r).unwrap_or(usize::MAX));
    Ok(records)
}
