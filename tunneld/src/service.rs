//! systemd integration (`Type=notify` units): readiness once the TUN
//! device, routes and sockets are up, reload and stop notifications, and a
//! watchdog that pings only while the data path still publishes its status
//! snapshot, so a wedged data path is restarted by systemd rather than
//! left looking alive. Outside systemd (no `NOTIFY_SOCKET`) every call here
//! does nothing.

use crate::control::StatusCell;
use sd_notify::NotifyState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("systemd notification failed: {e}");
    }
}

/// Startup is complete: the tunnel carries traffic.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload starts (systemd shows the unit as reloading until [`ready`]).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(t) => notify(&[NotifyState::Reloading, t]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// The daemon is shutting down.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// Pings systemd's watchdog (`WatchdogSec=`) while the data path turns.
#[derive(Debug)]
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts pinging at half the unit's watchdog interval, when systemd
    /// asked for a watchdog; `None` otherwise.
    pub fn start(status: Arc<StatusCell>) -> Option<Watchdog> {
        let interval = sd_notify::watchdog_enabled()?;
        let every = interval / 2;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                let step = Duration::from_millis(100).min(every);
                let mut waited = Duration::ZERO;
                while !stop2.load(Ordering::Relaxed) {
                    std::thread::sleep(step);
                    waited += step;
                    if waited < every {
                        continue;
                    }
                    waited = Duration::ZERO;
                    // The data path publishes every 50 ms tick; a snapshot
                    // older than half the interval means it has stopped.
                    if status.fresh(every) {
                        notify(&[NotifyState::Watchdog]);
                    } else {
                        log::error!(
                            "data path has not published status for {every:?}: \
                             no watchdog ping"
                        );
                    }
                }
            })
            .ok()?;
        log::info!("systemd watchdog: pinging every {every:?} while the data path runs");
        Some(Watchdog {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
