//! `wireguard-go`: userspace WireGuard on each gateway (Debian packages
//! wireguard-go and wireguard-tools), configured with `wg set`. Its control
//! sockets live in the host-wide /var/run/wireguard, so the two ends get
//! different (lab-prefixed) interface names.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tunneld::keys::PrivateKey;

use super::{exec_ok, which, Ctx, NotRun, Running};
use crate::topo::{DcPair, GW_A_WAN_V4, GW_B_WAN_V4, LAN_A_V4, LAN_B_V4};

/// UDP port of both ends.
const PORT: u16 = 51900;

/// Both wireguard-go processes.
#[derive(Debug)]
pub struct WireguardGo {
    pids: Vec<u32>,
}

impl WireguardGo {
    /// Starts and configures both ends.
    pub fn start(ctx: &Ctx) -> Result<WireguardGo, NotRun> {
        let (Some(wggo), Some(_wg)) = (which("wireguard-go"), which("wg")) else {
            return Err(NotRun::NotInstalled(
                "needs the Debian packages wireguard-go and wireguard-tools".into(),
            ));
        };
        let dc = ctx.dc;
        let fail = |e: String| NotRun::Failed(e);
        let dir = dc.lab.dir().join(format!("wg-{}", ctx.instance));
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        let ka = PrivateKey::generate().map_err(|e| fail(e.to_string()))?;
        let kb = PrivateKey::generate().map_err(|e| fail(e.to_string()))?;
        let (fa, fb) = (dir.join("a.key"), dir.join("b.key"));
        ka.save_file(&fa).map_err(|e| fail(e.to_string()))?;
        kb.save_file(&fb).map_err(|e| fail(e.to_string()))?;
        let ifa = dc.lab.ifname("wga").map_err(|e| fail(e.to_string()))?;
        let ifb = dc.lab.ifname("wgb").map_err(|e| fail(e.to_string()))?;
        let mut me = WireguardGo { pids: Vec::new() };
        let ends = [
            (
                &dc.gw_a,
                &ifa,
                &fa,
                kb.public().to_base64(),
                GW_B_WAN_V4,
                "198.19.1.1/24",
                "198.19.1.2/32",
                LAN_B_V4,
            ),
            (
                &dc.gw_b,
                &ifb,
                &fb,
                ka.public().to_base64(),
                GW_A_WAN_V4,
                "198.19.1.2/24",
                "198.19.1.1/32",
                LAN_A_V4,
            ),
        ];
        for (ns, ifname, key, peer, endpoint, addr, peer_inner, lan) in ends {
            let mut cmd = Command::new(&wggo);
            cmd.arg("-f").arg(ifname);
            let pid = dc
                .lab
                .spawn(ns, cmd)
                .map_err(|e| fail(format!("starting wireguard-go: {e}")))?;
            me.pids.push(pid);
            let sock = PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"));
            let setup = || -> Result<(), String> {
                wait_sock(dc, pid, &sock)?;
                let allowed = format!("{peer_inner},{lan}");
                let ep = format!("{endpoint}:{PORT}");
                let port = PORT.to_string();
                let keyf = key.to_string_lossy();
                exec_ok(
                    dc,
                    ns,
                    "wg",
                    &[
                        "set",
                        ifname,
                        "private-key",
                        &keyf,
                        "listen-port",
                        &port,
                        "peer",
                        &peer,
                        "endpoint",
                        &ep,
                        "allowed-ips",
                        &allowed,
                        "persistent-keepalive",
                        "5",
                    ],
                )?;
                dc.lab
                    .ip(ns, &["addr", "add", addr, "dev", ifname])
                    .map_err(|e| e.to_string())?;
                dc.lab
                    .ip(ns, &["link", "set", ifname, "up"])
                    .map_err(|e| e.to_string())?;
                dc.lab
                    .ip(ns, &["route", "add", lan, "dev", ifname])
                    .map_err(|e| e.to_string())?;
                Ok(())
            };
            if let Err(e) = setup() {
                let log = super::tail(&dc.lab.log(pid), 10);
                me.stop(dc);
                return Err(fail(format!("{e}\nwireguard-go log:\n{log}")));
            }
        }
        Ok(me)
    }
}

fn wait_sock(dc: &DcPair, pid: u32, sock: &Path) -> Result<(), String> {
    let start = Instant::now();
    while !sock.exists() {
        if let Ok(Some(st)) = dc.lab.try_wait(pid) {
            return Err(format!("wireguard-go exited during start-up ({st})"));
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "wireguard-go did not open {} within 10 s",
                sock.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Running for WireguardGo {
    fn variant(&self) -> String {
        let v = Command::new("wireguard-go")
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty());
        v.unwrap_or_else(|| "wireguard-go".into())
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
