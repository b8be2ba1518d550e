//! Remote mode: `tunbench server` and tunneld already run on the far host.
//! Per cell, the local tunneld's config file (`remote.config`) is rewritten
//! with the cell's tunneld knobs and `remote.restart` is run through
//! `sh -c` (with the cell in `TUNBENCH_CELL` and `TUNBENCH_KNOB_<NAME>`
//! variables, so a script can reconfigure the far side too); after
//! `remote.settle` the engine measures against `remote.server`. The
//! original config is restored (and the restart command run) at the end.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use super::cells::{apply_knobs, failed, measure_cell, Progress, RunError};
use super::knobs::Cell;
use super::profile::{Remote, SweepProfile};
use super::results::CellRecord;
use crate::lab::measure::{self, TestFigures};

/// Runs a shell command with the cell's variables; Err carries its output.
fn shell(cmd: &str, cell: &Cell) -> Result<String, String> {
    let mut c = Command::new("sh");
    c.arg("-c").arg(cmd).env("TUNBENCH_CELL", cell.key());
    for (k, v) in &cell.knobs {
        c.env(
            format!("TUNBENCH_KNOB_{}", k.as_str().to_uppercase()),
            v.to_string(),
        );
    }
    let out = c.output().map_err(|e| format!("`{cmd}`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "`{cmd}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Writes `text` to `path` atomically (temp file in the same folder + rename).
fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tunbench-tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("replacing {}: {e}", path.display()))
}

/// Rewrites the config for `cell` and restarts tunneld.
fn reconfigure(r: &Remote, original: &str, cell: &Cell) -> Result<(), String> {
    let (Some(path), Some(restart)) = (&r.config, &r.restart) else {
        return Ok(());
    };
    if !cell.knobs.keys().any(|k| k.is_tunneld()) {
        return Ok(());
    }
    let name = path.display().to_string();
    let mut f = tunneld::config::parse_file_format(original, &name).map_err(|e| e.to_string())?;
    apply_knobs(&mut f, cell);
    let yaml = f.to_yaml().map_err(|e| e.to_string())?;
    let header = format!(
        "# Written by `tunbench sweep` for cell {}; the original is restored at the end.\n",
        cell.key()
    );
    write_atomic(path, &(header + &yaml))?;
    shell(restart, cell)?;
    Ok(())
}

/// Runs the remaining cells against the far host.
pub fn run(
    p: &SweepProfile,
    todo: &[(usize, &Cell)],
    progress: &dyn Progress,
    sink: &mut dyn FnMut(CellRecord) -> Result<(), RunError>,
) -> Result<(), RunError> {
    let Some(r) = &p.file.remote else {
        return Err(RunError::Remote(
            "the profile has no `remote:` section".into(),
        ));
    };
    let original = match &r.config {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| RunError::Remote(format!("reading {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let result = (|| {
        for &(index, cell) in todo {
            progress.cell(index, cell);
            let started = Instant::now();
            if let Some(orig) = &original {
                if let Err(e) = reconfigure(r, orig, cell) {
                    sink(failed(index, cell, e, started))?;
                    continue;
                }
            }
            std::thread::sleep(r.settle.0);
            let pids: Vec<u32> = match &r.pid_command {
                Some(c) => shell(c, cell)
                    .ok()
                    .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
                    .into_iter()
                    .collect(),
                None => Vec::new(),
            };
            let live_from = r
                .interface
                .as_ref()
                .map(|i| ("/proc/net/dev".to_string(), i.clone()));
            let repeats =
                measure_cell(p, cell, (&r.server, r.port), live_from, progress, &|spec| {
                    run_direct(spec, &pids)
                });
            sink(CellRecord::new(
                index,
                cell,
                repeats,
                started.elapsed().as_secs_f64(),
            ))?;
        }
        Ok(())
    })();
    if let (Some(orig), Some(path), Some(restart)) = (&original, &r.config, &r.restart) {
        let restored = write_atomic(path, orig).and_then(|_| shell(restart, &Cell::default()));
        if let Err(e) = restored {
            progress.note(&format!("could not restore {}: {e}", path.display()));
        }
    }
    result
}

/// One engine test from this host; CPU of `pids` is read around it.
fn run_direct(spec: &crate::engine::TestSpec, pids: &[u32]) -> TestFigures {
    let before = measure::cpu_total(pids);
    let res = crate::engine::run_client(spec).map_err(|e| e.to_string());
    let after = measure::cpu_total(pids);
    measure::figures(spec.params.parallel, res, before, after, pids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::knobs::{Knob, Value};

    #[test]
    fn reconfigure_rewrites_the_config_and_runs_the_command() {
        let dir = std::env::temp_dir().join(format!("tb-sweep-remote-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let example = include_str!("../../../profiles/tunnel-example.yaml");
        let cfg = dir.join("gw.yaml");
        std::fs::write(&cfg, example).expect("write");
        let marker = dir.join("restarted");
        let r = Remote {
            server: "198.18.2.2".into(),
            port: 5301,
            config: Some(cfg.clone()),
            restart: Some(format!(
                "echo \"$TUNBENCH_CELL $TUNBENCH_KNOB_BATCH\" > {}",
                marker.display()
            )),
            pid_command: None,
            interface: None,
            settle: tunneld::units::Span(std::time::Duration::ZERO),
        };
        let mut cell = Cell::default();
        cell.knobs.insert(Knob::Batch, Value::Num(16));
        cell.knobs.insert(Knob::Workers, Value::Num(1));
        reconfigure(&r, example, &cell).expect("reconfigure");
        let text = std::fs::read_to_string(&cfg).expect("read");
        let f = tunneld::config::parse_file_format(&text, "gw.yaml").expect("valid config");
        assert_eq!((f.dataplane.batch, f.dataplane.workers), (16, 1));
        assert_eq!(
            std::fs::read_to_string(&marker).expect("marker").trim(),
            "batch=16,workers=1 16"
        );
        let bad = Remote {
            restart: Some("exit 3".into()),
            ..r
        };
        assert!(reconfigure(&bad, example, &cell).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
