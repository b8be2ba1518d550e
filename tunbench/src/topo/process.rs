//! Processes a lab starts inside its namespaces: building the
//! `ip netns exec` command line from the caller's `Command`, and stopping
//! children by PID (SIGTERM, a grace period, then SIGKILL, always reaped).

use std::fs::File;
use std::io;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::error::{Result, TopoError};
use super::sys;

/// How long a child gets between SIGTERM and SIGKILL: enough for a daemon to
/// remove its TUN device and routes, short enough that a hung one does not
/// stall teardown.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often we look for the exit during the grace period.
const POLL: Duration = Duration::from_millis(10);

/// Rewrites `cmd` as `ip netns exec NS PROGRAM ARGS...`, keeping its
/// environment changes and working directory, with stdin from /dev/null and
/// stdout + stderr appended to `log`.
pub fn netns_command(ns: &str, cmd: &Command, log: &Path) -> Result<Command> {
    let open_log = || {
        File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| TopoError::io(format!("opening log {}", log.display()), e))
    };
    let mut real = Command::new("ip");
    real.args(["netns", "exec", ns])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => real.env(k, v),
            None => real.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        real.current_dir(dir);
    }
    real.stdin(Stdio::null())
        .stdout(Stdio::from(open_log()?))
        .stderr(Stdio::from(open_log()?));
    Ok(real)
}

/// Stops several children at once: SIGTERM to each, one shared grace period,
/// SIGKILL to whoever is left, then reaps all. Returns each PID's status.
pub fn terminate_all(mut children: Vec<(u32, Child)>) -> Vec<(u32, io::Result<ExitStatus>)> {
    let mut done = Vec::with_capacity(children.len());
    // Already exited? Reap without signalling: the PID may otherwise be
    // signalled after being reused.
    children.retain_mut(|(pid, child)| match child.try_wait() {
        Ok(Some(st)) => {
            done.push((*pid, Ok(st)));
            false
        }
        Ok(None) => {
            // A zombie keeps its PID, so this cannot hit a reused PID.
            let _ = sys::signal_pid(*pid, libc::SIGTERM);
            true
        }
        Err(e) => {
            done.push((*pid, Err(e)));
            false
        }
    });
    let deadline = Instant::now() + STOP_GRACE;
    while !children.is_empty() && Instant::now() < deadline {
        children.retain_mut(|(pid, child)| match child.try_wait() {
            Ok(Some(st)) => {
                done.push((*pid, Ok(st)));
                false
            }
            Ok(None) => true,
            Err(e) => {
                done.push((*pid, Err(e)));
                false
            }
        });
        if !children.is_empty() {
            thread::sleep(POLL);
        }
    }
    for (pid, mut child) in children {
        log::warn!("process {pid} ignored SIGTERM for {STOP_GRACE:?}; sending SIGKILL");
        let _ = child.kill();
        done.push((pid, child.wait()));
    }
    done
}
