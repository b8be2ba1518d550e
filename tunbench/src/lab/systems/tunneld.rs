//! `tunneld`: a daemon on each gateway, configured with the scenario's
//! settings. Configs are built from tunneld's own file-format structs
//! ([`tunneld::config::TunnelFile`]), keys with [`tunneld::keys`]; the
//! daemons install the LAN routes themselves. [`tunnel_file`] is also what
//! the end-to-end tests use to configure a pair.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tunneld::config::{CipherKind, InterfaceFile, Kind, PeerFile, RekeyFile, TunnelFile};
use tunneld::keys::{PrivateKey, PublicKey};
use tunneld::prefix::Prefix;
use tunneld::units::{Size, Span};

use super::{Ctx, NotRun, Running};
use crate::lab::scenario::TunneldSettings;
use crate::topo::{self, DcPair};

/// UDP port both daemons listen on.
pub const PORT: u16 = 51820;
/// How long a daemon gets to answer `status` after start.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Which gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// gw-a (DC A).
    A,
    /// gw-b (DC B).
    B,
}

impl Side {
    /// "a" or "b".
    pub fn letter(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }

    /// The other gateway.
    pub fn peer(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// This gateway's underlay listen address.
    pub fn listen(self) -> SocketAddr {
        let ip = match self {
            Side::A => topo::GW_A_WAN_V4,
            Side::B => topo::GW_B_WAN_V4,
        };
        SocketAddr::new(ip.into(), PORT)
    }

    /// This gateway's tunnel-inner addresses (v4, v6) without prefix length.
    pub fn inner(self) -> (&'static str, &'static str) {
        match self {
            Side::A => ("198.19.0.1", "fd00:19::1"),
            Side::B => ("198.19.0.2", "fd00:19::2"),
        }
    }

    /// The LAN prefixes behind this gateway (v4, v6).
    pub fn lan(self) -> (&'static str, &'static str) {
        match self {
            Side::A => (topo::LAN_A_V4, topo::LAN_A_V6),
            Side::B => (topo::LAN_B_V4, topo::LAN_B_V6),
        }
    }
}

fn prefix(text: &str) -> Prefix {
    // The texts are this module's constants; a bad one is a programming error
    // caught by the unit test below.
    Prefix::parse_interface_addr(text).unwrap_or_else(|_| {
        Prefix::new(IpAddr::from([198, 19, 0, 0]), 24).expect("constant prefix")
    })
}

fn network(text: &str) -> Prefix {
    prefix(text).trunc()
}

/// The standard config of one side: tunnel `tun`, key file `key_file`,
/// control socket `sock`, peer key `peer`, settings from the scenario.
pub fn tunnel_file(
    side: Side,
    tun: &str,
    key_file: &Path,
    sock: &Path,
    peer: PublicKey,
    s: &TunneldSettings,
) -> TunnelFile {
    let (v4, v6) = side.inner();
    let (pv4, pv6) = side.peer().inner();
    let (lan4, lan6) = side.peer().lan();
    TunnelFile {
        kind: Kind::Tunnel,
        interface: InterfaceFile {
            name: tun.to_string(),
            addresses: vec![prefix(&format!("{v4}/24")), prefix(&format!("{v6}/64"))],
            mtu: s.mtu,
        },
        listen: side.listen(),
        private_key_file: key_file.to_path_buf(),
        cipher: s.cipher,
        insecure_lab_only: s.cipher == CipherKind::None,
        control_socket: Some(sock.to_path_buf()),
        socket_buffer: s
            .socket_buffer
            .unwrap_or(Size(tunneld::config::DEFAULT_SOCKET_BUFFER)),
        mss_clamp: s.mss_clamp,
        dataplane: s.dataplane.clone(),
        quic: None,
        rekey: RekeyFile::default(),
        peers: vec![PeerFile {
            name: side.peer().letter().to_string(),
            public_key: peer,
            endpoint: Some(side.peer().listen()),
            allowed_prefixes: vec![
                network(&format!("{pv4}/32")),
                network(lan4),
                network(&format!("{pv6}/128")),
                network(lan6),
            ],
            keepalive: Some(Span(Duration::from_secs(5))),
            transport: Default::default(),
            quic: None,
        }],
    }
}

/// Both daemons.
#[derive(Debug)]
pub struct Tunneld {
    pids: Vec<u32>,
    variant: String,
}

struct Prepared {
    config: PathBuf,
    sock: PathBuf,
    ns: String,
}

impl Tunneld {
    /// Writes keys and configs, starts both daemons, waits for `status`.
    pub fn start(ctx: &Ctx) -> Result<Tunneld, NotRun> {
        Self::start_with(ctx, &mut |_, _| {})
    }

    // ---- hook for `tunbench sweep` (added on the sweep branch) ----
    /// As [`Tunneld::start`], but `edit` may change each side's generated
    /// config (dataplane knobs, MTU, ...) before it is written. The sweep
    /// uses it to run one cell's tunneld settings.
    pub fn start_with(
        ctx: &Ctx,
        edit: &mut dyn FnMut(Side, &mut TunnelFile),
    ) -> Result<Tunneld, NotRun> {
        let bin = ctx.tunneld_bin.ok_or_else(|| {
            NotRun::NotInstalled(
                "tunneld binary not found next to tunbench nor in PATH (cargo build --release)"
                    .into(),
            )
        })?;
        let dc = ctx.dc;
        let dir = dc.lab.dir().join(format!("tunneld-{}", ctx.instance));
        std::fs::create_dir_all(&dir)
            .map_err(|e| NotRun::Failed(format!("creating {}: {e}", dir.display())))?;
        let fail = |what: &str, e: &dyn std::fmt::Display| NotRun::Failed(format!("{what}: {e}"));
        let mut keys = Vec::new();
        for side in [Side::A, Side::B] {
            let k = PrivateKey::generate().map_err(|e| fail("generating a key", &e))?;
            let path = dir.join(format!("{}.key", side.letter()));
            k.save_file(&path).map_err(|e| fail("saving a key", &e))?;
            keys.push((path, k.public()));
        }
        let mut prepared = Vec::new();
        for (i, side) in [Side::A, Side::B].into_iter().enumerate() {
            let tun = dc
                .lab
                .ifname(&format!("t{}", side.letter()))
                .map_err(|e| fail("naming the TUN device", &e))?;
            let sock = dir.join(format!("{}.sock", side.letter()));
            let mut file = tunnel_file(
                side,
                &tun,
                &keys[i].0,
                &sock,
                keys[1 - i].1,
                &ctx.scenario.tunneld,
            );
            edit(side, &mut file);
            let yaml = serde_norway::to_string(&file).map_err(|e| fail("rendering YAML", &e))?;
            let config = dir.join(format!("{}.yaml", side.letter()));
            std::fs::write(&config, yaml).map_err(|e| fail("writing the config", &e))?;
            let ns = match side {
                Side::A => dc.gw_a.clone(),
                Side::B => dc.gw_b.clone(),
            };
            prepared.push(Prepared { config, sock, ns });
        }
        let mut me = Tunneld {
            pids: Vec::new(),
            variant: format!(
                "tunneld {} mtu {}",
                ctx.scenario.tunneld.cipher, ctx.scenario.tunneld.mtu
            ),
        };
        for p in &prepared {
            let mut cmd = Command::new(bin);
            cmd.arg("run").arg("--config").arg(&p.config);
            cmd.env(
                "RUST_LOG",
                std::env::var("TUNBENCH_TUNNELD_LOG").unwrap_or_else(|_| "warn".into()),
            );
            let pid = match dc.lab.spawn(&p.ns, cmd) {
                Ok(pid) => pid,
                Err(e) => {
                    me.stop(dc);
                    return Err(fail("starting tunneld", &e));
                }
            };
            me.pids.push(pid);
            if let Err(e) = wait_started(dc, pid, &p.sock) {
                me.stop(dc);
                return Err(NotRun::Failed(e));
            }
        }
        Ok(me)
    }
}

/// Waits until the control socket exists and the daemon still runs.
fn wait_started(dc: &DcPair, pid: u32, sock: &Path) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if let Ok(Some(st)) = dc.lab.try_wait(pid) {
            return Err(format!(
                "tunneld exited during start-up ({st}): {}",
                super::tail(&dc.lab.log(pid), 15)
            ));
        }
        if sock.exists() {
            return Ok(());
        }
        if start.elapsed() > START_TIMEOUT {
            return Err(format!(
                "tunneld did not open its control socket within {START_TIMEOUT:?}: {}",
                super::tail(&dc.lab.log(pid), 15)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Running for Tunneld {
    fn variant(&self) -> String {
        self.variant.clone()
    }
    fn pids(&self) -> Vec<u32> {
        self.pids.clone()
    }
    fn stop(&mut self, dc: &DcPair) {
        for pid in self.pids.drain(..) {
            let _ = dc.lab.stop(pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_passes_tunneld_checks() {
        let dir = std::env::temp_dir().join(format!("tb-lab-cfg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ka = PrivateKey::generate().expect("key");
        let kb = PrivateKey::generate().expect("key");
        ka.save_file(&dir.join("a.key")).expect("save");
        let file = tunnel_file(
            Side::A,
            "tb1x1ta",
            Path::new("a.key"),
            &dir.join("a.sock"),
            kb.public(),
            &TunneldSettings::default(),
        );
        let yaml = serde_norway::to_string(&file).expect("yaml");
        let cfg = tunneld::config::parse_str(&yaml, &dir)
            .unwrap_or_else(|e| panic!("tunneld rejects the lab's config: {e}\n{yaml}"));
        assert_eq!(cfg.peers.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
