//! The process-wide list of live labs, so that SIGINT/SIGTERM can tear every
//! one of them down before the process exits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::error::{Result, TopoError};
use super::lab::Shared;

/// Live labs by their per-process number.
static LIVE: Mutex<BTreeMap<u64, Arc<Shared>>> = Mutex::new(BTreeMap::new());
/// True once the signal thread runs.
static INSTALLED: Mutex<bool> = Mutex::new(false);

pub(super) fn register(lab: &Arc<Shared>) {
    LIVE.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(lab.seq, Arc::clone(lab));
}

pub(super) fn unregister(seq: u64) {
    LIVE.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&seq);
}

/// Number of labs currently alive in this process.
pub fn live_labs() -> usize {
    LIVE.lock().unwrap_or_else(PoisonError::into_inner).len()
}

/// Tears down every live lab of this process (what the signal handler does).
pub fn teardown_all() {
    let labs: Vec<Arc<Shared>> = LIVE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .cloned()
        .collect();
    for lab in labs {
        lab.teardown();
    }
}

/// Installs a SIGINT/SIGTERM handler (a thread, via signal-hook) that tears
/// down all live labs and then exits with 128 + signal number. Further
/// signals during cleanup are absorbed so a second Ctrl-C cannot interrupt
/// it. Calling it again is a no-op. Binaries call this; tests need not.
pub fn install_signal_cleanup() -> Result<()> {
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    if *installed {
        return Ok(());
    }
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| TopoError::io("installing SIGINT/SIGTERM handlers", e))?;
    std::thread::Builder::new()
        .name("topo-signals".to_string())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                eprintln!("topo: signal {sig}: tearing down {} lab(s)", live_labs());
                teardown_all();
                std::process::exit(128 + sig);
            }
        })
        .map_err(|e| TopoError::io("spawning the signal thread", e))?;
    *installed = true;
    Ok(())
}
