//! Routes for the peers' allowed prefixes through the TUN device: which are
//! installed when (`routes.install`), in which kernel table and with which
//! metric, and what happens to a route of someone else's that was there
//! first.
//!
//! - `always`: every peer's prefixes from start to exit (a static gateway).
//! - `on-session`: a peer's prefixes only while it is up (a session is
//!   established and the peer is heard from, see [`crate::device::PeerEvent`]).
//!   A routing daemon that reads the table (BIRD's `kernel` protocol with
//!   `learn`, FRR's `redistribute kernel`) then announces the remote site
//!   only while the tunnel carries traffic (docs/ha.md).
//! - `off`: none; the operator routes into the device.
//!
//! A route for the same prefix, table and metric that is not ours (a static
//! route to the remote site over another path, say) is remembered before
//! ours replaces it and put back when ours goes (peer down, peer removed by
//! a reload, clean exit). After a SIGKILL the kernel removes our routes with
//! the device, but nothing can restore the remembered ones.
//!
//! [`RouteManager`] holds the state and talks to the kernel through a
//! [`RouteBackend`] (iproute2's `ip` in the daemon, a recording fake in the
//! unit tests). [`RouteWorker`] runs it on a thread of its own fed with the
//! data path's peer events, so `ip` never runs on the data path. A config
//! reload ([`crate::reload`]) calls [`RouteWorker::with`] and
//! [`RouteManager::set_peer`] / [`RouteManager::remove_peer`] to apply
//! changed prefixes.

use crate::config::{Config, RouteInstall, RoutesConfig};
use crate::device::PeerEvent;
use crate::prefix::Prefix;
use crate::tun::{run_ip, TunError};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// The metric an IPv6 route gets from the kernel when none is given
/// (IPv4 routes get 0).
pub const IPV6_DEFAULT_METRIC: u32 = 1024;

/// Flags `ip route show` prints that `ip route add` does not take; they
/// are dropped from a remembered route before it is put back.
const SHOW_ONLY_FLAGS: [&str; 10] = [
    "linkdown",
    "dead",
    "offload",
    "trap",
    "rt_offload",
    "rt_trap",
    "rt_offload_failed",
    "pervasive",
    "notify",
    "unresolved",
];

/// Why a route could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// `ip` failed or could not run.
    #[error(transparent)]
    Ip(#[from] TunError),
}

/// Where routes go: the kernel in the daemon, a fake in tests.
pub trait RouteBackend: Send {
    /// The routes of exactly `prefix` in `table` with `metric` (one
    /// `ip -o route show` line each).
    fn existing(
        &mut self,
        prefix: Prefix,
        table: u32,
        metric: u32,
    ) -> Result<Vec<String>, RouteError>;
    /// Installs (or replaces) `prefix` through `dev`.
    fn replace(
        &mut self,
        prefix: Prefix,
        dev: &str,
        table: u32,
        metric: u32,
    ) -> Result<(), RouteError>;
    /// Deletes our route of `prefix` through `dev` (gone already is fine).
    fn delete(
        &mut self,
        prefix: Prefix,
        dev: &str,
        table: u32,
        metric: u32,
    ) -> Result<(), RouteError>;
    /// Puts back a remembered route (an `ip -o route show` line).
    fn restore(&mut self, v6: bool, line: &str, table: u32) -> Result<(), RouteError>;
}

/// The kernel, through iproute2's `ip`.
#[derive(Debug, Default)]
pub struct IpBackend;

fn family(prefix: Prefix) -> &'static str {
    if prefix.is_ipv6() {
        "-6"
    } else {
        "-4"
    }
}

impl RouteBackend for IpBackend {
    fn existing(
        &mut self,
        prefix: Prefix,
        table: u32,
        metric: u32,
    ) -> Result<Vec<String>, RouteError> {
        let (p, t) = (prefix.to_string(), table.to_string());
        let out = run_ip(&[
            family(prefix),
            "-o",
            "route",
            "show",
            "table",
            &t,
            "exact",
            &p,
        ])?;
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && route_metric(l, prefix.is_ipv6()) == metric)
            .map(str::to_string)
            .collect())
    }

    fn replace(
        &mut self,
        prefix: Prefix,
        dev: &str,
        table: u32,
        metric: u32,
    ) -> Result<(), RouteError> {
        let (p, t, m) = (prefix.to_string(), table.to_string(), metric.to_string());
        run_ip(&[
            family(prefix),
            "route",
            "replace",
            &p,
            "dev",
            dev,
            "table",
            &t,
            "metric",
            &m,
        ])?;
        Ok(())
    }

    fn delete(
        &mut self,
        prefix: Prefix,
        dev: &str,
        table: u32,
        metric: u32,
    ) -> Result<(), RouteError> {
        let (p, t, m) = (prefix.to_string(), table.to_string(), metric.to_string());
        match run_ip(&[
            family(prefix),
            "route",
            "del",
            &p,
            "dev",
            dev,
            "table",
            &t,
            "metric",
            &m,
        ]) {
            Ok(_) => Ok(()),
            // Already gone (the device went first, or someone removed it).
            Err(TunError::Ip { stderr, .. })
                if stderr.contains("No such process") || stderr.contains("Cannot find device") =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn restore(&mut self, v6: bool, line: &str, table: u32) -> Result<(), RouteError> {
        let t = table.to_string();
        let mut args = vec![if v6 { "-6" } else { "-4" }, "route", "replace"];
        args.extend(restorable_tokens(line));
        args.extend(["table", &t]);
        run_ip(&args)?;
        Ok(())
    }
}

/// The metric of an `ip route show` line (the family default when absent).
fn route_metric(line: &str, v6: bool) -> u32 {
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "metric" || w == "priority" || w == "preference" {
            if let Some(v) = it.next().and_then(|v| v.parse().ok()) {
                return v;
            }
        }
    }
    if v6 {
        IPV6_DEFAULT_METRIC
    } else {
        0
    }
}

/// The tokens of an `ip route show` line that `ip route replace` accepts:
/// flags only shown are dropped, and so are `table X` (the table is given
/// apart) and `expires X` (a lifetime that restarts).
fn restorable_tokens(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "table" || w == "expires" {
            it.next();
        } else if !SHOW_ONLY_FLAGS.contains(&w) {
            out.push(w);
        }
    }
    out
}

/// Whether an `ip route show` line routes through device `dev`.
fn through_dev(line: &str, dev: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).any(|w| w[0] == "dev" && w[1] == dev)
}

/// One installed route and what it replaced.
#[derive(Debug, Clone)]
struct Installed {
    peer: String,
    /// The `ip route show` line of a foreign route ours replaced.
    replaced: Option<String>,
}

/// The routes of one TUN device: configured prefixes per peer, which peers
/// are up, which routes are installed, and what they replaced.
pub struct RouteManager {
    dev: String,
    settings: RoutesConfig,
    backend: Box<dyn RouteBackend>,
    /// Each peer's allowed prefixes, by name.
    peers: BTreeMap<String, Vec<Prefix>>,
    /// Peers that are up (`on-session`).
    up: BTreeSet<String>,
    /// Our routes, by prefix.
    installed: HashMap<Prefix, Installed>,
}

impl RouteManager {
    /// A manager for device `dev` with `settings`; installs nothing yet.
    pub fn new(dev: &str, settings: RoutesConfig, backend: Box<dyn RouteBackend>) -> Self {
        RouteManager {
            dev: dev.to_string(),
            settings,
            backend,
            peers: BTreeMap::new(),
            up: BTreeSet::new(),
            installed: HashMap::new(),
        }
    }

    /// The daemon's manager for `cfg`: the kernel through `ip`, every peer
    /// of the config set (so `always` routes are installed at once).
    pub fn from_config(cfg: &Config) -> Result<Self, RouteError> {
        let mut m = RouteManager::new(&cfg.interface.name, cfg.routes, Box::new(IpBackend));
        for p in &cfg.peers {
            m.set_peer(&p.name, &p.allowed_prefixes)?;
        }
        Ok(m)
    }

    /// The settings in force.
    pub fn settings(&self) -> RoutesConfig {
        self.settings
    }

    /// Prefixes with a route of ours, sorted by text.
    pub fn installed(&self) -> Vec<Prefix> {
        let mut v: Vec<Prefix> = self.installed.keys().copied().collect();
        v.sort_by_key(|p| p.to_string());
        v
    }

    /// Whether peer `name` is up as far as routes are concerned.
    pub fn is_up(&self, name: &str) -> bool {
        self.up.contains(name)
    }

    fn metric(&self, p: Prefix) -> u32 {
        self.settings
            .metric
            .unwrap_or(if p.is_ipv6() { IPV6_DEFAULT_METRIC } else { 0 })
    }

    fn wants(&self, name: &str) -> bool {
        match self.settings.install {
            RouteInstall::Always => true,
            RouteInstall::OnSession => self.up.contains(name),
            RouteInstall::Off => false,
        }
    }

    /// Sets (at start) or changes (on reload) peer `name`'s allowed
    /// prefixes: routes for prefixes it no longer has are withdrawn, new
    /// ones installed when the peer's routes are wanted now. Every change
    /// is attempted; the first error is returned.
    pub fn set_peer(&mut self, name: &str, prefixes: &[Prefix]) -> Result<(), RouteError> {
        self.peers.insert(name.to_string(), prefixes.to_vec());
        self.sync_peer(name)
    }

    /// Forgets peer `name` (removed by a reload) and withdraws its routes.
    pub fn remove_peer(&mut self, name: &str) -> Result<(), RouteError> {
        self.peers.remove(name);
        self.up.remove(name);
        self.sync_peer(name)
    }

    /// Applies a peer event from the data path.
    pub fn apply(&mut self, ev: &PeerEvent) -> Result<(), RouteError> {
        if ev.up {
            self.up.insert(ev.name.clone());
        } else {
            self.up.remove(&ev.name);
        }
        self.sync_peer(&ev.name)
    }

    /// Makes the routes of peer `name` match what is wanted now.
    fn sync_peer(&mut self, name: &str) -> Result<(), RouteError> {
        let want: Vec<Prefix> = if self.wants(name) {
            self.peers.get(name).cloned().unwrap_or_default()
        } else {
            Vec::new()
        };
        let stale: Vec<Prefix> = self
            .installed
            .iter()
            .filter(|(p, i)| i.peer == name && !want.contains(p))
            .map(|(p, _)| *p)
            .collect();
        let mut first_err = None;
        for p in stale {
            if let Err(e) = self.withdraw(p) {
                first_err.get_or_insert(e);
            }
        }
        for p in want {
            if let Err(e) = self.install(name, p) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn install(&mut self, peer: &str, p: Prefix) -> Result<(), RouteError> {
        if let Some(i) = self.installed.get_mut(&p) {
            // Prefixes do not overlap between peers (config rule), but a
            // reload may move one: it stays installed, now the new peer's.
            i.peer = peer.to_string();
            return Ok(());
        }
        let (table, metric) = (self.settings.table, self.metric(p));
        let replaced = self
            .backend
            .existing(p, table, metric)?
            .into_iter()
            .find(|l| !through_dev(l, &self.dev));
        if let Some(line) = &replaced {
            log::warn!(
                "route {p} (table {table}, metric {metric}) already exists ({line}); \
                 replaced while the tunnel carries it, restored after"
            );
        }
        self.backend.replace(p, &self.dev, table, metric)?;
        log::info!("route {p} via {} (table {table}) installed", self.dev);
        self.installed.insert(
            p,
            Installed {
                peer: peer.to_string(),
                replaced,
            },
        );
        Ok(())
    }

    fn withdraw(&mut self, p: Prefix) -> Result<(), RouteError> {
        let Some(i) = self.installed.remove(&p) else {
            return Ok(());
        };
        let (table, metric) = (self.settings.table, self.metric(p));
        if let Err(e) = self.backend.delete(p, &self.dev, table, metric) {
            // Still ours: try again on the next change or at exit.
            self.installed.insert(p, i);
            return Err(e);
        }
        log::info!("route {p} via {} (table {table}) withdrawn", self.dev);
        if let Some(line) = &i.replaced {
            self.backend.restore(p.is_ipv6(), line, table)?;
            log::info!("route restored: {line}");
        }
        Ok(())
    }

    /// Withdraws every route of ours and restores what they replaced (at
    /// exit). Every route is attempted; the first error is returned.
    pub fn withdraw_all(&mut self) -> Result<(), RouteError> {
        let mut first_err = None;
        for p in self.installed() {
            if let Err(e) = self.withdraw(p) {
                first_err.get_or_insert(e);
            }
        }
        self.up.clear();
        first_err.map_or(Ok(()), Err)
    }
}

/// A [`RouteManager`] on a thread of its own, applying peer events as the
/// data path sends them. Shared (`Arc`) between the daemon's start-up, the
/// data path's event sender and config reloads.
pub struct RouteWorker {
    manager: Arc<Mutex<RouteManager>>,
    running: Mutex<Option<(Sender<PeerEvent>, JoinHandle<()>)>>,
}

impl std::fmt::Debug for RouteWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteWorker")
            .field("installed", &lock(&self.manager).installed())
            .finish()
    }
}

impl RouteWorker {
    /// Starts the thread.
    pub fn start(manager: RouteManager) -> std::io::Result<RouteWorker> {
        let manager = Arc::new(Mutex::new(manager));
        let (tx, rx): (Sender<PeerEvent>, Receiver<PeerEvent>) = mpsc::channel();
        let m = Arc::clone(&manager);
        let thread = std::thread::Builder::new()
            .name("routes".into())
            .spawn(move || {
                for ev in rx {
                    if let Err(e) = lock(&m).apply(&ev) {
                        log::error!(
                            "routes for peer {} ({}): {e}",
                            ev.name,
                            if ev.up { "up" } else { "down" }
                        );
                    }
                }
            })?;
        Ok(RouteWorker {
            manager,
            running: Mutex::new(Some((tx, thread))),
        })
    }

    /// Where the data path sends peer events (`None` once stopped). Drop
    /// every clone before [`RouteWorker::stop`], which waits for them.
    pub fn sender(&self) -> Option<Sender<PeerEvent>> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(tx, _)| tx.clone())
    }

    /// Runs `f` on the manager (e.g. a reload's [`RouteManager::set_peer`]).
    pub fn with<R>(&self, f: impl FnOnce(&mut RouteManager) -> R) -> R {
        f(&mut lock(&self.manager))
    }

    /// Applies the events already sent, stops the thread (once every
    /// sender is gone), then withdraws every route and restores what they
    /// replaced. Later calls do nothing.
    pub fn stop(&self) -> Result<(), RouteError> {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some((tx, thread)) = running else {
            return Ok(());
        };
        drop(tx);
        if thread.join().is_err() {
            log::error!("the routes thread panicked");
        }
        lock(&self.manager).withdraw_all()
    }
}

impl Drop for RouteWorker {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::error!("withdrawing routes at exit: {e}");
        }
    }
}

fn lock(m: &Mutex<RouteManager>) -> MutexGuard<'_, RouteManager> {
    // A panic while applying one event leaves consistent enough state to
    // withdraw routes at exit.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
