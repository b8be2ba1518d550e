//! Several gateway pairs between two sites, held together by BGP: the
//! [`HaLab`] (topology from [`crate::topo::ha_sites`], a tunneld pair per
//! gateway pair with `routes.install: on-session` and fast `health:`, BIRD 2
//! on every router and gateway), the verified [`flows`] that measure a
//! failover, and the `tunbench lab` run of a profile with an `ha:` section
//! ([`run`]).
//!
//! Tests and the lab use the same [`HaLab`]: start it, then kill, stop,
//! restart or cut any gateway, and read the routers' ECMP next hops.

pub mod bird;
pub mod flows;
mod run;

pub use run::{
    render, run, DrainFigures, DrainPlan, FailoverFigures, FailoverPlan, HaPlan, HaReport,
    PairFigures, SCHEMA,
};

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tunneld::config::{
    HealthFile, InterfaceFile, Kind, PeerFile, RekeyFile, RouteInstall, RoutesFile, TunnelFile,
};
use tunneld::keys::{PrivateKey, PublicKey};
use tunneld::units::Span;

use crate::topo::{ha_sites, HaSite, HaSites};

/// UDP port of every tunneld in the HA lab.
pub const PORT: u16 = 51820;
/// How long a daemon (tunneld, BIRD) gets to open its control socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the HA lab could not be built or driven.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    /// Namespace plumbing failed.
    #[error(transparent)]
    Topo(#[from] crate::topo::TopoError),
    /// A daemon did not start or a step failed; the text says which and why.
    #[error("{0}")]
    Step(String),
}

/// Result alias of the HA lab.
pub type Result<T> = std::result::Result<T, HaError>;

fn step(e: impl std::fmt::Display) -> HaError {
    HaError::Step(e.to_string())
}

/// How the HA lab runs its gateways.
#[derive(Debug, Clone)]
pub struct HaOptions {
    /// The tunneld binary.
    pub tunneld_bin: PathBuf,
    /// `health:` of every tunneld.
    pub health: HealthFile,
    /// tunneld's data-path knobs.
    pub dataplane: tunneld::config::DataplaneFile,
    /// `RUST_LOG` of the daemons.
    pub log: String,
}

impl HaOptions {
    /// Defaults for `tunneld_bin`: keepalive every 200 ms, down after 1 s.
    pub fn new(tunneld_bin: PathBuf) -> HaOptions {
        HaOptions {
            tunneld_bin,
            health: HealthFile {
                interval: Span(Duration::from_millis(200)),
                dead_after: Span(Duration::from_secs(1)),
            },
            dataplane: Default::default(),
            log: "info".into(),
        }
    }
}

/// One gateway: its namespace, tunneld and BIRD.
#[derive(Debug)]
pub struct Gateway {
    /// Which site.
    pub site: HaSite,
    /// Pair number (1-based).
    pub pair: usize,
    /// Namespace.
    pub ns: String,
    /// TUN device name.
    pub tun: String,
    /// tunneld's config file (edit [`Gateway::config`] and restart to change).
    pub config_path: PathBuf,
    /// tunneld's config.
    pub config: TunnelFile,
    /// tunneld's control socket.
    pub sock: PathBuf,
    /// Running tunneld.
    pub tunneld: Option<u32>,
    /// Every tunneld PID (for logs).
    pub history: Vec<u32>,
    /// BIRD's control socket.
    pub bird_sock: PathBuf,
    /// Running BIRD.
    pub bird: Option<u32>,
}

/// Two sites joined by N tunneld pairs, BIRD everywhere. Dropping it stops
/// every daemon and removes every namespace.
pub struct HaLab {
    /// The topology (its lab owns the daemons).
    pub sites: HaSites,
    /// Gateways: site A's pairs 1..=N, then site B's.
    pub gateways: Vec<Gateway>,
    /// BIRD control sockets of rtr-a and rtr-b.
    pub router_socks: [PathBuf; 2],
    /// BIRD PIDs of the routers.
    pub router_birds: [Option<u32>; 2],
    opts: HaOptions,
}

fn tunnel_inner(site: HaSite, pair: usize) -> Ipv4Addr {
    let host = match site {
        HaSite::A => 1,
        HaSite::B => 2,
    };
    Ipv4Addr::new(198, 19, pair as u8, host)
}

fn prefix(s: &str) -> Result<tunneld::prefix::Prefix> {
    s.parse().map_err(|e| step(format!("prefix {s}: {e}")))
}

fn iface_addr(s: &str) -> Result<tunneld::prefix::Prefix> {
    tunneld::prefix::Prefix::parse_interface_addr(s).map_err(|e| step(format!("address {s}: {e}")))
}

/// The tunneld config of gateway `pair` of `site`.
#[allow(clippy::too_many_arguments)]
fn gateway_file(
    site: HaSite,
    pair: usize,
    tun: &str,
    key_file: &Path,
    sock: &Path,
    peer: PublicKey,
    opts: &HaOptions,
) -> Result<TunnelFile> {
    let other = site.other();
    Ok(TunnelFile {
        kind: Kind::Tunnel,
        interface: InterfaceFile {
            name: tun.to_string(),
            addresses: vec![iface_addr(&format!("{}/24", tunnel_inner(site, pair)))?],
            mtu: tunneld::config::DEFAULT_MTU,
        },
        listen: SocketAddr::new(site.gw_wan(pair).into(), PORT),
        private_key_file: key_file.to_path_buf(),
        cipher: Default::default(),
        insecure_lab_only: false,
        control_socket: Some(sock.to_path_buf()),
        socket_buffer: tunneld::units::Size(tunneld::config::DEFAULT_SOCKET_BUFFER),
        mss_clamp: true,
        rekey: RekeyFile::default(),
        dataplane: opts.dataplane.clone(),
        quic: None,
        metrics: None,
        health: Some(opts.health),
        pmtud: None,
        routes: RoutesFile {
            install: RouteInstall::OnSession,
            ..RoutesFile::default()
        },
        peers: vec![PeerFile {
            name: format!("{}{pair}", other.letter()),
            public_key: peer,
            endpoint: Some(SocketAddr::new(other.gw_wan(pair).into(), PORT)),
            allowed_prefixes: vec![
                prefix(&format!("{}/32", tunnel_inner(other, pair)))?,
                prefix(other.lan())?,
            ],
            keepalive: None,
            transport: Default::default(),
            quic: None,
            transit: None,
        }],
    })
}

impl HaLab {
    /// Builds the sites with `pairs` gateway pairs, starts BIRD on both
    /// routers and every gateway and tunneld on every gateway, and waits
    /// until both routers route the remote LAN over all `pairs` gateways.
    pub fn start(tag: &str, pairs: usize, opts: HaOptions) -> Result<HaLab> {
        let sites = ha_sites(tag, pairs)?;
        let dir = sites.lab.dir().to_path_buf();
        let mut keys = std::collections::BTreeMap::new();
        for site in [HaSite::A, HaSite::B] {
            for pair in 1..=pairs {
                let k = PrivateKey::generate().map_err(step)?;
                let path = dir.join(format!("gw{}{pair}.key", site.letter()));
                k.save_file(&path).map_err(step)?;
                keys.insert((site, pair), (path, k.public()));
            }
        }
        let mut gateways = Vec::new();
        for site in [HaSite::A, HaSite::B] {
            for pair in 1..=pairs {
                let tun = sites.lab.ifname(&format!("t{}{pair}", site.letter()))?;
                let sock = dir.join(format!("gw{}{pair}.sock", site.letter()));
                let (key_path, _) = &keys[&(site, pair)];
                let (_, peer) = keys[&(site.other(), pair)];
                let config = gateway_file(site, pair, &tun, key_path, &sock, peer, &opts)?;
                gateways.push(Gateway {
                    site,
                    pair,
                    ns: sites.gw(site, pair).to_string(),
                    config_path: dir.join(format!("gw{}{pair}.yaml", site.letter())),
                    config,
                    sock,
                    tun,
                    tunneld: None,
                    history: Vec::new(),
                    bird_sock: dir.join(format!("bird-gw{}{pair}.ctl", site.letter())),
                    bird: None,
                });
            }
        }
        let router_socks = [dir.join("bird-rtr-a.ctl"), dir.join("bird-rtr-b.ctl")];
        let mut lab = HaLab {
            sites,
            gateways,
            router_socks,
            router_birds: [None, None],
            opts,
        };
        for site in [HaSite::A, HaSite::B] {
            lab.start_router_bird(site)?;
        }
        for g in 0..lab.gateways.len() {
            let (site, pair) = (lab.gateways[g].site, lab.gateways[g].pair);
            lab.start_bird(site, pair)?;
            lab.start_tunneld(site, pair)?;
        }
        for site in [HaSite::A, HaSite::B] {
            lab.wait_paths(site, pairs, Duration::from_secs(20))?;
        }
        Ok(lab)
    }

    /// Gateway pairs.
    pub fn pairs(&self) -> usize {
        self.sites.pairs
    }

    fn index(&self, site: HaSite, pair: usize) -> usize {
        let base = match site {
            HaSite::A => 0,
            HaSite::B => self.sites.pairs,
        };
        base + pair - 1
    }

    /// Gateway `pair` of `site`.
    pub fn gateway(&self, site: HaSite, pair: usize) -> &Gateway {
        &self.gateways[self.index(site, pair)]
    }

    /// Mutable gateway (to edit its config before a restart).
    pub fn gateway_mut(&mut self, site: HaSite, pair: usize) -> &mut Gateway {
        let i = self.index(site, pair);
        &mut self.gateways[i]
    }

    fn spawn_bird(&self, ns: &str, name: &str, config: &str, sock: &Path) -> Result<u32> {
        let dir = self.sites.lab.dir();
        let conf = dir.join(format!("bird-{name}.conf"));
        std::fs::write(&conf, config)
            .map_err(|e| step(format!("writing {}: {e}", conf.display())))?;
        let _ = std::fs::remove_file(sock);
        let mut cmd = Command::new("bird");
        cmd.arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(sock)
            .arg("-P")
            .arg(dir.join(format!("bird-{name}.pid")));
        let pid = self.sites.lab.spawn(ns, cmd).map_err(|e| {
            step(format!(
                "starting bird in {ns} (is the bird2 package installed?): {e}"
            ))
        })?;
        self.wait_socket(pid, sock, "bird")?;
        Ok(pid)
    }

    fn wait_socket(&self, pid: u32, sock: &Path, what: &str) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.sites.lab.try_wait(pid)? {
                return Err(step(format!(
                    "{what} exited during start-up ({st}): {}",
                    self.sites.lab.log(pid)
                )));
            }
            if sock.exists() {
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(step(format!(
                    "{what} did not open {} within {START_TIMEOUT:?}: {}",
                    sock.display(),
                    self.sites.lab.log(pid)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn site_index(site: HaSite) -> usize {
        match site {
            HaSite::A => 0,
            HaSite::B => 1,
        }
    }

    /// Starts BIRD on `site`'s router.
    pub fn start_router_bird(&mut self, site: HaSite) -> Result<()> {
        let i = Self::site_index(site);
        let conf = bird::router_config(site, self.sites.pairs);
        let ns = self.sites.router(site).to_string();
        let pid = self.spawn_bird(
            &ns,
            &format!("rtr-{}", site.letter()),
            &conf,
            &self.router_socks[i],
        )?;
        self.router_birds[i] = Some(pid);
        Ok(())
    }

    /// Starts BIRD on gateway `pair` of `site`.
    pub fn start_bird(&mut self, site: HaSite, pair: usize) -> Result<u32> {
        let g = self.gateway(site, pair);
        let conf = bird::gateway_config(site, pair, &g.tun);
        let pid = self.spawn_bird(
            &g.ns,
            &format!("gw{}{pair}", site.letter()),
            &conf,
            &g.bird_sock,
        )?;
        self.gateway_mut(site, pair).bird = Some(pid);
        Ok(pid)
    }

    /// Kills BIRD on a gateway (SIGKILL).
    pub fn kill_bird(&mut self, site: HaSite, pair: usize) -> Result<()> {
        if let Some(pid) = self.gateway_mut(site, pair).bird.take() {
            self.sites.lab.kill(pid)?;
        }
        Ok(())
    }

    /// Writes the gateway's config and starts its tunneld; returns once its
    /// control socket exists.
    pub fn start_tunneld(&mut self, site: HaSite, pair: usize) -> Result<u32> {
        let g = self.gateway(site, pair);
        let yaml = g.config.to_yaml().map_err(step)?;
        std::fs::write(&g.config_path, yaml).map_err(step)?;
        let _ = std::fs::remove_file(&g.sock);
        let mut cmd = Command::new(&self.opts.tunneld_bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&g.config_path)
            .env("RUST_LOG", &self.opts.log);
        let pid = self.sites.lab.spawn(&g.ns, cmd)?;
        let sock = g.sock.clone();
        let g = self.gateway_mut(site, pair);
        g.tunneld = Some(pid);
        g.history.push(pid);
        self.wait_socket(pid, &sock, "tunneld")?;
        Ok(pid)
    }

    /// Kills a gateway's tunneld (SIGKILL: no clean-up of its own; the
    /// kernel removes its TUN device and routes).
    pub fn kill_tunneld(&mut self, site: HaSite, pair: usize) -> Result<()> {
        if let Some(pid) = self.gateway_mut(site, pair).tunneld.take() {
            self.sites.lab.kill(pid)?;
        }
        Ok(())
    }

    /// Stops a gateway's tunneld cleanly (SIGTERM).
    pub fn stop_tunneld(&mut self, site: HaSite, pair: usize) -> Result<()> {
        if let Some(pid) = self.gateway_mut(site, pair).tunneld.take() {
            self.sites.lab.stop(pid)?;
        }
        Ok(())
    }

    /// `birdc` on a gateway.
    pub fn birdc_gw(&self, site: HaSite, pair: usize, args: &[&str]) -> Result<String> {
        let g = self.gateway(site, pair);
        bird::birdc(&self.sites, &g.ns, &g.bird_sock, args).map_err(step)
    }

    /// `birdc` on a router.
    pub fn birdc_router(&self, site: HaSite, args: &[&str]) -> Result<String> {
        bird::birdc(
            &self.sites,
            self.sites.router(site),
            &self.router_socks[Self::site_index(site)],
            args,
        )
        .map_err(step)
    }

    /// The gateways (pair numbers) `site`'s router forwards the remote LAN
    /// to, read from its kernel.
    pub fn router_paths(&self, site: HaSite) -> Result<Vec<usize>> {
        let hops = bird::kernel_next_hops(&self.sites, self.sites.router(site), site.other().lan())
            .map_err(step)?;
        Ok((1..=self.sites.pairs)
            .filter(|&i| hops.contains(&site.gw_link(i).1))
            .collect())
    }

    /// Waits until `site`'s router has exactly `n` paths to the remote LAN;
    /// returns how long that took.
    pub fn wait_paths(&self, site: HaSite, n: usize, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let paths = self.router_paths(site)?;
            if paths.len() == n {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(step(format!(
                    "rtr-{} has {} path(s) {paths:?} to {} after {timeout:?}, expected {n}\n{}",
                    site.letter(),
                    paths.len(),
                    site.other().lan(),
                    self.describe()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `tunneld status` of a gateway, parsed.
    pub fn status(&self, site: HaSite, pair: usize) -> Result<serde_json::Value> {
        let g = self.gateway(site, pair);
        let text = tunneld::control::query(&g.sock, "status").map_err(step)?;
        serde_json::from_str(&text).map_err(step)
    }

    /// Cuts (or restores) gateway `pair`'s WAN link on `site`.
    pub fn set_wan(&self, site: HaSite, pair: usize, up: bool) -> Result<()> {
        Ok(self.sites.set_wan(site, pair, up)?)
    }

    /// Every daemon's log and the routers' BIRD state, for failure messages.
    pub fn describe(&self) -> String {
        let lab = &self.sites.lab;
        let mut s = String::new();
        for site in [HaSite::A, HaSite::B] {
            let i = Self::site_index(site);
            s += &format!("===== rtr-{} =====\n", site.letter());
            s += &bird::birdc(
                &self.sites,
                self.sites.router(site),
                &self.router_socks[i],
                &["show", "route", "all"],
            )
            .unwrap_or_else(|e| e);
            s += &lab
                .ip(self.sites.router(site), &["route"])
                .unwrap_or_else(|e| e.to_string());
            if let Some(pid) = self.router_birds[i] {
                s += &lab.log(pid);
            }
        }
        for g in &self.gateways {
            s += &format!("===== gw{}{} =====\n", g.site.letter(), g.pair);
            s += &lab.ip(&g.ns, &["route"]).unwrap_or_else(|e| e.to_string());
            if let Some(pid) = g.bird {
                s += &lab.log(pid);
            }
            for pid in &g.history {
                s += &format!("--- tunneld {pid} ---\n{}\n", lab.log(*pid));
            }
        }
        s
    }
}
