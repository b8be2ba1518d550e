//! Reloading a running tunnel's config (SIGHUP, `tunneld reload`) without
//! dropping the sessions of peers that did not change.
//!
//! A reload re-reads the file the daemon started from and checks it like
//! `tunneld check`. Then:
//! 1. [`restart_only`] compares it with the running config: what the data
//!    path sized or bound at start (interface, listen address, key, cipher,
//!    `dataplane`, sockets, the TCP and QUIC peer sets) cannot change live,
//!    and a file that changes any of it is refused as a whole, naming each
//!    field, so the running tunnel is untouched.
//! 2. The protocol core applies the rest ([`Device::reconfigure`]) at the
//!    data path's next tick, through the [`Mailbox`]: peers matched by
//!    public key keep their sessions.
//! 3. The route manager ([`crate::routes`]) forgets removed peers' routes
//!    and takes each peer's prefixes, installing them as `routes.install`
//!    says (at once, or while the peer is up) and restoring what it replaced.
//!
//! A file that does not load (broken YAML, a missing key) leaves the running
//! config as it was and the error says why.

use crate::config::{self, Config, ConfigError, TransportKind};
use crate::dataplane::Mailbox;
use crate::device::Reconfigured;
use crate::prefix::Prefix;
use crate::routes::{RouteError, RouteWorker};
use crate::tun::TunError;
use std::fmt;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// How long a reload waits for the data path to apply it: a few ticks,
/// plus slack for a loaded machine. A data path that does not answer in
/// this time has stopped.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a reload was refused; the running config is unchanged in every case
/// but [`ReloadError::Routes`].
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load or fails a check.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The file changes settings that only a restart applies.
    #[error("needs a restart (nothing was changed): {}", .0.join("; "))]
    NeedsRestart(Vec<String>),
    /// The data path did not take the new config (it has stopped).
    #[error("the data path did not apply the new config within {0:?}")]
    NotApplied(Duration),
    /// The peers were reconfigured but a kernel route could not be changed.
    #[error("peers reconfigured, but changing routes failed: {0}")]
    Routes(#[source] TunError),
}

/// What a successful reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Peers added, removed, changed and kept.
    pub peers: Reconfigured,
    /// Routes added to and removed from the TUN device.
    pub routes_added: Vec<Prefix>,
    pub routes_removed: Vec<Prefix>,
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.peers;
        let list = |v: &[String]| v.join(", ");
        let mut parts = Vec::new();
        if !p.added.is_empty() {
            parts.push(format!("added {}", list(&p.added)));
        }
        if !p.removed.is_empty() {
            parts.push(format!("removed {}", list(&p.removed)));
        }
        if !p.changed.is_empty() {
            parts.push(format!("changed {}", list(&p.changed)));
        }
        parts.push(format!("{} peer(s) unchanged", p.unchanged.len()));
        if !self.routes_added.is_empty() || !self.routes_removed.is_empty() {
            parts.push(format!(
                "routes +{} -{}",
                self.routes_added.len(),
                self.routes_removed.len()
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Re-reads and applies the daemon's config file; one reload at a time.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    current: Mutex<Config>,
    mailbox: Arc<Mailbox>,
    /// The daemon's route manager: it keeps `routes.install` (`on-session`
    /// routes only for peers that are up) and restores routes it replaced.
    routes: Arc<RouteWorker>,
}

impl Reloader {
    /// A reloader for the daemon started from `path` with `running`,
    /// whose protocol core reads `mailbox` and whose routes `routes` keeps.
    pub fn new(
        path: PathBuf,
        running: Config,
        mailbox: Arc<Mailbox>,
        routes: Arc<RouteWorker>,
    ) -> Reloader {
        Reloader {
            path,
            current: Mutex::new(running),
            mailbox,
            routes,
        }
    }

    /// The config file this daemon reloads.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Reads the file again and applies it (see the module docs).
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let new = config::load(&self.path)?;
        let refused = restart_only(&current, &new);
        if !refused.is_empty() {
            return Err(ReloadError::NeedsRestart(refused));
        }
        let old_routes = prefixes(&current);
        let new_routes = prefixes(&new);
        let removed: Vec<Prefix> = old_routes
            .iter()
            .filter(|p| !new_routes.contains(p))
            .copied()
            .collect();
        let added: Vec<Prefix> = new_routes
            .iter()
            .filter(|p| !old_routes.contains(p))
            .copied()
            .collect();
        let (tx, rx) = mpsc::sync_channel(1);
        let cfg = new.clone();
        self.mailbox.post(Box::new(move |device, _| {
            let _ = tx.send(device.reconfigure(&cfg));
        }));
        let peers = rx
            .recv_timeout(APPLY_TIMEOUT)
            .map_err(|_| ReloadError::NotApplied(APPLY_TIMEOUT))?;
        self.routes
            .with(|m| -> Result<(), RouteError> {
                for p in current
                    .peers
                    .iter()
                    .filter(|p| !new.peers.iter().any(|q| q.name == p.name))
                {
                    m.remove_peer(&p.name)?;
                }
                for p in &new.peers {
                    m.set_peer(&p.name, &p.allowed_prefixes)?;
                }
                Ok(())
            })
            .map_err(|RouteError::Ip(e)| ReloadError::Routes(e))?;
        *current = new;
        Ok(ReloadReport {
            peers,
            routes_added: added,
            routes_removed: removed,
        })
    }
}

/// Every allowed prefix of every peer, in config order.
fn prefixes(cfg: &Config) -> Vec<Prefix> {
    cfg.peers
        .iter()
        .flat_map(|p| p.allowed_prefixes.iter().copied())
        .collect()
}

/// The changes from `old` to `new` that only a restart can apply, one
/// sentence each (empty: the reload can go ahead).
pub fn restart_only(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |changed: bool, what: &str, why: &str| {
        if changed {
            out.push(format!("{what} changed ({why})"));
        }
    };
    field(
        old.interface.name != new.interface.name,
        "interface.name",
        "the TUN device is created at start",
    );
    field(
        old.interface.addresses != new.interface.addresses,
        "interface.addresses",
        "addresses are set on the device at start",
    );
    field(
        old.interface.mtu != new.interface.mtu,
        "interface.mtu",
        "buffers are sized for it at start",
    );
    field(
        old.listen != new.listen,
        "listen",
        "the sockets are bound at start",
    );
    field(
        old.private_key != new.private_key,
        "private_key_file (the key itself)",
        "every session depends on it",
    );
    field(
        old.cipher != new.cipher || old.insecure_lab_only != new.insecure_lab_only,
        "cipher",
        "sessions are keyed for it",
    );
    field(
        old.control_socket != new.control_socket,
        "control_socket",
        "it is bound at start",
    );
    field(
        old.socket_buffer != new.socket_buffer,
        "socket_buffer",
        "socket buffers are sized at start",
    );
    field(
        old.routes != new.routes,
        "routes",
        "the route manager installs into one table with one policy from start to exit",
    );
    field(
        old.dataplane != new.dataplane,
        "dataplane",
        "threads, queues and buffers are set up at start",
    );
    field(
        old.quic != new.quic,
        "quic",
        "the endpoint is bound at start",
    );
    field(
        old.metrics_listen != new.metrics_listen,
        "metrics.listen",
        "the HTTP listener is bound at start",
    );
    // The TCP dialer and the QUIC endpoint learn their peers at start.
    let stream_peers = |c: &Config| {
        let mut v: Vec<String> = c
            .peers
            .iter()
            .filter(|p| p.transport != TransportKind::Udp)
            .map(|p| {
                format!(
                    "{}/{}/{:?}/{:?}/{:?}",
                    p.public_key, p.transport, p.endpoint, p.quic_pin, p.name
                )
            })
            .collect();
        v.sort();
        v
    };
    field(
        stream_peers(old) != stream_peers(new),
        "a tcp or quic peer (added, removed, or its endpoint, pin or name)",
        "the TCP dialer and QUIC endpoint take their peers at start",
    );
    for p in &new.peers {
        if let Some(o) = old.peers.iter().find(|o| o.public_key == p.public_key) {
            field(
                o.transport != p.transport,
                &format!("peers[{}].transport", p.name),
                "the transports are started at start",
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn base() -> Config {
        with_dataplane("")
    }

    /// The base config with `dataplane` lines (`  workers: auto\n`).
    fn with_dataplane(dp: &str) -> Config {
        let dir = crate::keys::tests::TempDir::new("reload");
        PrivateKey::from_bytes([1; 32])
            .save_file(&dir.0.join("k"))
            .expect("key file");
        let peer = PrivateKey::from_bytes([2; 32]).public();
        let yaml = format!(
            "kind: tunnel\ninterface: {{name: t0, addresses: [198.19.0.1/24]}}\n\
             listen: 198.18.0.1:51820\nprivate_key_file: k\npeers:\n\
             - name: b\n  public_key: \"{peer}\"\n  endpoint: 198.18.0.2:51820\n  \
             allowed_prefixes: [198.18.2.0/24]\n{}",
            if dp.is_empty() {
                String::new()
            } else {
                format!("dataplane:\n{dp}")
            }
        );
        config::parse_str(&yaml, &dir.0).expect("base config")
    }

    #[test]
    fn live_changes_pass_and_restart_only_changes_are_named() {
        let old = base();
        let mut new = old.clone();
        new.peers[0]
            .allowed_prefixes
            .push("198.18.3.0/24".parse().expect("prefix"));
        new.peers[0].keepalive = Some(Duration::from_secs(5));
        new.rekey_after_time = Duration::from_secs(60);
        new.mss_clamp = !new.mss_clamp;
        assert!(restart_only(&old, &new).is_empty());

        let mut bad = new.clone();
        bad.interface.name = "t1".into();
        bad.listen = "198.18.0.1:51821".parse().expect("addr");
        bad.dataplane.workers = config::Workers::Count(2);
        let why = restart_only(&old, &bad);
        assert_eq!(why.len(), 3, "{why:?}");
        assert!(why[0].starts_with("interface.name changed"), "{why:?}");
        assert!(why[1].starts_with("listen changed"), "{why:?}");
        assert!(why[2].starts_with("dataplane changed"), "{why:?}");

        let mut tcp = old.clone();
        tcp.peers[0].transport = TransportKind::Tcp;
        let why = restart_only(&old, &tcp);
        assert!(
            why.iter().any(|w| w.contains("peers[b].transport")),
            "{why:?}"
        );
    }

    #[test]
    fn an_unchanged_auto_is_no_change_whatever_it_resolved_to() {
        // The daemon resolves `auto` at start and keeps the config as
        // written, so the reloaded file compares equal to it.
        let old = with_dataplane("  workers: auto\n");
        let mut new = with_dataplane("  workers: auto\n");
        assert_eq!(old.dataplane.workers, config::Workers::Auto);
        new.peers[0].keepalive = Some(Duration::from_secs(5));
        assert!(restart_only(&old, &new).is_empty());
        let pinned = with_dataplane("  workers: auto\n  cpus: [0, 1]\n");
        assert!(restart_only(&pinned, &pinned.clone()).is_empty());
        // auto to a count (even the one auto chose) needs a restart.
        let two = with_dataplane("  workers: 2\n");
        let why = restart_only(&old, &two);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].starts_with("dataplane changed"), "{why:?}");
    }

    #[test]
    fn report_reads_as_a_sentence() {
        let r = ReloadReport {
            peers: Reconfigured {
                added: vec!["c".into()],
                removed: vec!["d".into()],
                changed: vec![],
                unchanged: vec!["a".into(), "b".into()],
            },
            routes_added: vec!["198.18.3.0/24".parse().expect("prefix")],
            routes_removed: vec![],
        };
        assert_eq!(
            r.to_string(),
            "added c; removed d; 2 peer(s) unchanged; routes +1 -0"
        );
    }
}
