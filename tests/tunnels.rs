//! A tunneld pair on the standard lab topology: keys, configs (the YAML
//! contract of the `tunnel` kind), starting/stopping each side inside its
//! gateway namespace, and reading `tunneld status`. When a test panics, the
//! pair prints both daemons' configs and logs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tunbench::topo::{self, dc_pair, DcPair};

use crate::{bin, genkey, pubkey, write_key};

// The gateway sides, their addresses and the daemons' port are the lab's.
pub use tunbench::lab::systems::tunneld::{Side, PORT};

/// First handshake and route set-up after both daemons answer `status`.
const SESSION_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a freshly started daemon gets to answer `status`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The baseline config of one side as JSON (rendered to YAML on start):
/// exactly the contract's example, mirrored for gw-b. Tests tweak it.
pub fn tunnel_config(side: Side, tun: &str, control_socket: &Path, peer_public_key: &str) -> Value {
    let (v4, v6) = side.inner();
    let (pv4, pv6) = side.peer().inner();
    let (lan4, lan6) = match side.peer() {
        Side::A => (topo::LAN_A_V4, topo::LAN_A_V6),
        Side::B => (topo::LAN_B_V4, topo::LAN_B_V6),
    };
    json!({
        "kind": "tunnel",
        "interface": {
            "name": tun,
            "addresses": [format!("{v4}/24"), format!("{v6}/64")],
            "mtu": 1420
        },
        "listen": side.listen().to_string(),
        "private_key_file": format!("{}.key", side.letter()),
        "cipher": "aes-256-gcm",
        "control_socket": control_socket.display().to_string(),
        "rekey": { "after_time": "120s", "after_bytes": "64G" },
        "peers": [{
            "name": side.peer().letter(),
            "public_key": peer_public_key,
            "endpoint": side.peer().listen().to_string(),
            "allowed_prefixes": [format!("{pv4}/32"), lan4, format!("{pv6}/128"), lan6],
            "keepalive": "5s"
        }]
    })
}

/// One gateway's daemon.
pub struct Tunnel {
    /// Which side.
    pub side: Side,
    /// Its gateway namespace.
    pub ns: String,
    /// TUN device name (carries the lab prefix).
    pub tun: String,
    /// Config file in the lab dir.
    pub config_path: PathBuf,
    /// The config as JSON; edit and restart to change it.
    pub config: Value,
    /// The running daemon, if any.
    pub pid: Option<u32>,
    /// Every PID this side ever had (for logs).
    pub history: Vec<u32>,
    /// Extra environment for the daemon (e.g. systemd's NOTIFY_SOCKET).
    pub env: Vec<(String, String)>,
}

/// A [`DcPair`] with a tunneld on each gateway.
pub struct TunnelLab {
    /// The topology (drops last: daemons are stopped, namespaces deleted).
    pub dc: DcPair,
    /// gw-a's daemon.
    pub a: Tunnel,
    /// gw-b's daemon.
    pub b: Tunnel,
}

impl TunnelLab {
    /// Builds a `dc_pair(tag, with_wan)`, makes keys (mode 0600) and configs,
    /// applies `tweak` to each side's config, and starts both daemons (each
    /// answering `status`). No routes between the LANs exist except what the
    /// daemons install.
    pub fn start(
        tag: &str,
        with_wan: bool,
        tweak: impl Fn(Side, &mut Value),
    ) -> anyhow::Result<TunnelLab> {
        let dc = dc_pair(tag, with_wan).context("building the dc_pair topology")?;
        let dir = dc.lab.dir().to_path_buf();
        let mut keys = BTreeMap::new();
        for side in [Side::A, Side::B] {
            let private = genkey()?;
            let public = pubkey(&private)?;
            write_key(&dir.join(format!("{}.key", side.letter())), &private)?;
            keys.insert(side.letter(), public);
        }
        let make = |side: Side, ns: &str| -> anyhow::Result<Tunnel> {
            let tun = dc.lab.ifname(&format!("t{}", side.letter()))?;
            let sock = dir.join(format!("{}.sock", side.letter()));
            let peer_key = keys.get(side.peer().letter()).cloned().unwrap_or_default();
            let mut config = tunnel_config(side, &tun, &sock, &peer_key);
            tweak(side, &mut config);
            Ok(Tunnel {
                side,
                ns: ns.to_string(),
                tun,
                config_path: dir.join(format!("{}.yaml", side.letter())),
                config,
                pid: None,
                history: Vec::new(),
                env: Vec::new(),
            })
        };
        let a = make(Side::A, &dc.gw_a)?;
        let b = make(Side::B, &dc.gw_b)?;
        let mut tl = TunnelLab { dc, a, b };
        tl.start_side(Side::A)?;
        tl.start_side(Side::B)?;
        Ok(tl)
    }

    /// The lab.
    pub fn lab(&self) -> &topo::Lab {
        &self.dc.lab
    }

    /// One side's daemon.
    pub fn side(&self, side: Side) -> &Tunnel {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    fn side_mut(&mut self, side: Side) -> &mut Tunnel {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    /// Writes the side's config (`config` as YAML) to its file.
    pub fn write_config(&self, side: Side) -> anyhow::Result<()> {
        let yaml = serde_norway::to_string(&self.side(side).config).context("rendering YAML")?;
        let t = self.side(side);
        std::fs::write(&t.config_path, yaml).with_context(|| format!("writing {:?}", t.config_path))
    }

    /// Mutable access to a side's daemon (to edit its config).
    pub fn side_config(&mut self, side: Side) -> &mut Value {
        &mut self.side_mut(side).config
    }

    /// Runs `tunneld SUBCOMMAND --config FILE` of one side in its namespace.
    pub fn tunneld(&self, side: Side, subcommand: &str) -> anyhow::Result<std::process::Output> {
        let t = self.side(side);
        let config = t.config_path.to_string_lossy();
        Ok(self.dc.lab.exec(
            &t.ns,
            &bin("tunneld").to_string_lossy(),
            &[subcommand, "--config", &config],
        )?)
    }

    /// Writes the side's config and starts `tunneld run` in its gateway
    /// namespace; returns once `tunneld status` answers. On failure the error
    /// carries the daemon's log.
    pub fn start_side(&mut self, side: Side) -> anyhow::Result<u32> {
        self.write_config(side)?;
        let t = self.side(side);
        let mut cmd = Command::new(bin("tunneld"));
        cmd.arg("run").arg("--config").arg(&t.config_path).env(
            "RUST_LOG",
            std::env::var("E2E_TUNNELD_LOG").unwrap_or_else(|_| "info".to_string()),
        );
        cmd.env("RUST_BACKTRACE", "1");
        cmd.envs(t.env.iter().map(|(k, v)| (k, v)));
        let pid = self.dc.lab.spawn(&t.ns, cmd)?;
        let tm = self.side_mut(side);
        tm.pid = Some(pid);
        tm.history.push(pid);
        let started = crate::wait_for(START_TIMEOUT, "tunneld status to answer", || {
            if let Some(st) = self.dc.lab.try_wait(pid)? {
                bail!(
                    "tunneld {} exited during start-up ({st}); log:\n{}",
                    side.letter(),
                    self.dc.lab.log(pid)
                );
            }
            Ok(self.status(side).ok())
        });
        if let Err(e) = started {
            bail!("{e:#}\n{}", self.describe(side));
        }
        Ok(pid)
    }

    /// Stops a side's daemon (SIGTERM, grace, SIGKILL) and returns its status.
    pub fn stop_side(&mut self, side: Side) -> anyhow::Result<ExitStatus> {
        let pid = self
            .side_mut(side)
            .pid
            .take()
            .with_context(|| format!("tunneld {} is not running", side.letter()))?;
        Ok(self.dc.lab.stop(pid)?)
    }

    /// `tunneld status --config FILE` of one side, parsed.
    pub fn status(&self, side: Side) -> anyhow::Result<Value> {
        let t = self.side(side);
        let tunneld = bin("tunneld");
        let config = t.config_path.to_string_lossy();
        let out = self.dc.lab.exec(
            &t.ns,
            &tunneld.to_string_lossy(),
            &["status", "--config", &config],
        )?;
        if !out.status.success() {
            bail!(
                "tunneld status ({}) failed ({}): {}",
                side.letter(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "tunneld status printed no JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// One counter from `status.counters`; an error names the missing field.
    pub fn counter(&self, side: Side, name: &str) -> anyhow::Result<u64> {
        let status = self.status(side)?;
        status
            .get("counters")
            .and_then(|c| c.get(name))
            .and_then(Value::as_u64)
            .with_context(|| format!("status has no counters.{name}: {status}"))
    }

    /// All `counters` of a side, by name.
    pub fn counters(&self, side: Side) -> anyhow::Result<BTreeMap<String, u64>> {
        let status = self.status(side)?;
        let obj = status
            .get("counters")
            .and_then(Value::as_object)
            .with_context(|| format!("status has no counters object: {status}"))?;
        Ok(obj
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
            .collect())
    }

    /// Waits until counter `name` of `side` exceeds `base`; returns it.
    pub fn wait_counter_above(
        &self,
        side: Side,
        name: &str,
        base: u64,
        timeout: Duration,
    ) -> anyhow::Result<u64> {
        let mut last = base;
        let r = crate::wait_for(timeout, &format!("counters.{name} > {base}"), || {
            last = self.counter(side, name)?;
            Ok((last > base).then_some(last))
        });
        r.with_context(|| format!("counters.{name} stayed at {last}"))
    }

    /// Config and log of one side (for failure messages).
    pub fn describe(&self, side: Side) -> String {
        let t = self.side(side);
        let mut s = format!(
            "===== tunneld {} in {} (config {:?}) =====\n",
            side.letter(),
            t.ns,
            t.config_path
        );
        s += &std::fs::read_to_string(&t.config_path).unwrap_or_default();
        for pid in &t.history {
            s += &format!("----- log of pid {pid} -----\n{}\n", self.dc.lab.log(*pid));
        }
        s
    }

    /// Both sides' configs and logs.
    pub fn logs(&self) -> String {
        format!("{}{}", self.describe(Side::A), self.describe(Side::B))
    }

    /// Waits until the session is up: the first end-to-end ping host-a →
    /// host-b gets through, and both daemons' status shows the session
    /// (status is published once per 50 ms tick, so it lags the ping).
    pub fn wait_session(&self) {
        crate::wait_ping(
            self.lab(),
            &self.dc.host_a,
            &topo::HOST_B_V4.to_string(),
            SESSION_TIMEOUT,
        )
        .expect("host-a reaches host-b through the tunnel");
        crate::wait_for(
            Duration::from_secs(5),
            "both sides' status to show the session",
            || {
                let up = |side| {
                    self.status(side)
                        .map(|st| st["peers"][0]["session"] == serde_json::json!(true))
                };
                Ok((up(Side::A)? && up(Side::B)?).then_some(()))
            },
        )
        .expect("status shows the session");
    }

    /// Waits until a ping from host-a reaches `dst` (after a start or restart).
    pub fn wait_ping_from(
        &self,
        ns: &str,
        dst: &str,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        crate::wait_ping(self.lab(), ns, dst, timeout)
    }
}

impl Drop for TunnelLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}
