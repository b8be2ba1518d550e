//! Userspace WireGuard on each gateway, in one of two implementations
//! ([`Userspace`]): `wireguard-go` (Debian package wireguard-go) or
//! Cloudflare's `boringtun` (`boringtun-cli` from crates.io). Both are
//! configured the same way, with `wg set` (Debian package wireguard-tools)
//! over their control socket. The sockets live in the host-wide
//! /var/run/wireguard (shared across namespaces), so the two ends get
//! different (lab-prefixed) interface names.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tunneld::keys::PrivateKey;

use super::{exec_ok, which, Ctx, NotRun, Running};
use crate::topo::{DcPair, GW_A_WAN_V4, GW_B_WAN_V4, LAN_A_V4, LAN_B_V4};

/// UDP port of both ends.
const PORT: u16 = 51900;
/// Where both implementations put their control sockets (`IFNAME.sock`).
const SOCK_DIR: &str = "/var/run/wireguard";

/// Which userspace WireGuard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Userspace {
    /// wireguard-go from Debian.
    Go,
    /// boringtun-cli (Cloudflare), from `cargo install boringtun-cli`.
    Boringtun,
}

impl Userspace {
    /// The program's name.
    pub fn program(self) -> &'static str {
        match self {
            Userspace::Go => "wireguard-go",
            Userspace::Boringtun => "boringtun-cli",
        }
    }

    /// What to install when the program is missing.
    fn install_hint(self) -> &'static str {
        match self {
            Userspace::Go => "needs the Debian packages wireguard-go and wireguard-tools",
            Userspace::Boringtun => {
                "needs boringtun-cli (`cargo install --locked boringtun-cli`, see \
                 tests/bench/install-baselines.sh) and the Debian package wireguard-tools"
            }
        }
    }

    /// Interface-name suffixes of the two ends (distinct per implementation,
    /// so a socket left by one can never be mistaken for the other's).
    fn if_suffixes(self) -> [&'static str; 2] {
        match self {
            Userspace::Go => ["wga", "wgb"],
            Userspace::Boringtun => ["bta", "btb"],
        }
    }

    /// The command that runs one end in the foreground on `ifname`.
    pub fn command(self, bin: &Path, ifname: &str) -> Command {
        let mut cmd = Command::new(bin);
        match self {
            Userspace::Go => {
                cmd.arg("-f").arg(ifname);
            }
            Userspace::Boringtun => {
                // The lab runs as root, not through sudo: keep root (it has
                // no SUDO_UID to drop to). WG_SUDO is the same switch as
                // `--disable-drop-privileges`, set both as in the notes'
                // tested command line. With --foreground it logs to stdout
                // (the lab's log) instead of /tmp/boringtun.out.
                cmd.args(["--foreground", "--disable-drop-privileges"])
                    .arg(ifname)
                    .env("WG_SUDO", "1");
            }
        }
        cmd
    }

    /// The program's own version line, if it tells.
    fn version(self, bin: &Path) -> Option<String> {
        let out = Command::new(bin).arg("--version").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().next()?.trim();
        (!line.is_empty()).then(|| line.to_string())
    }
}

/// Looks the programs up: the implementation's binary (also in
/// `~/.cargo/bin` for boringtun-cli, where a plain `cargo install` puts it)
/// and `wg`.
fn find(imp: Userspace) -> Option<(PathBuf, PathBuf)> {
    let bin = which(imp.program()).or_else(|| match imp {
        Userspace::Go => None,
        Userspace::Boringtun => cargo_bin(imp.program()),
    })?;
    Some((bin, which("wg")?))
}

/// `$CARGO_HOME/bin/NAME` or `$HOME/.cargo/bin/NAME`, if it exists.
fn cargo_bin(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    Some(home.join("bin").join(name)).filter(|p| p.is_file())
}

/// Both WireGuard processes.
#[derive(Debug)]
pub struct Wireguard {
    imp: Userspace,
    bin: PathBuf,
    pids: Vec<u32>,
    ifnames: Vec<String>,
}

impl Wireguard {
    /// Starts and configures both ends with implementation `imp`.
    pub fn start(ctx: &Ctx, imp: Userspace) -> Result<Wireguard, NotRun> {
        let Some((bin, _wg)) = find(imp) else {
            return Err(NotRun::NotInstalled(imp.install_hint().into()));
        };
        let dc = ctx.dc;
        let prog = imp.program();
        let fail = |e: String| NotRun::Failed(e);
        let dir = dc.lab.dir().join(format!("wg-{}", ctx.instance));
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        let ka = PrivateKey::generate().map_err(|e| fail(e.to_string()))?;
        let kb = PrivateKey::generate().map_err(|e| fail(e.to_string()))?;
        let (fa, fb) = (dir.join("a.key"), dir.join("b.key"));
        ka.save_file(&fa).map_err(|e| fail(e.to_string()))?;
        kb.save_file(&fb).map_err(|e| fail(e.to_string()))?;
        let [sa, sb] = imp.if_suffixes();
        let ifa = dc.lab.ifname(sa).map_err(|e| fail(e.to_string()))?;
        let ifb = dc.lab.ifname(sb).map_err(|e| fail(e.to_string()))?;
        let mut me = Wireguard {
            imp,
            bin: bin.clone(),
            pids: Vec::new(),
            ifnames: Vec::new(),
        };
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
            let pid = dc
                .lab
                .spawn(ns, imp.command(&bin, ifname))
                .map_err(|e| fail(format!("starting {prog}: {e}")))?;
            me.pids.push(pid);
            me.ifnames.push(ifname.clone());
            let sock = sock_path(ifname);
            let setup = || -> Result<(), String> {
                wait_sock(dc, prog, pid, &sock)?;
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
                return Err(fail(format!("{e}\n{prog} log:\n{log}")));
            }
        }
        Ok(me)
    }
}

fn sock_path(ifname: &str) -> PathBuf {
    Path::new(SOCK_DIR).join(format!("{ifname}.sock"))
}

fn wait_sock(dc: &DcPair, prog: &str, pid: u32, sock: &Path) -> Result<(), String> {
    let start = Instant::now();
    while !sock.exists() {
        if let Ok(Some(st)) = dc.lab.try_wait(pid) {
            return Err(format!("{prog} exited during start-up ({st})"));
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "{prog} did not open {} within 10 s",
                sock.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Running for Wireguard {
    fn variant(&self) -> String {
        self.imp
            .version(&self.bin)
            .unwrap_or_else(|| self.imp.program().into())
    }
    fn pids(&self) -> Vec<u32> {
        self.pids.clone()
    }
    fn stop(&mut self, dc: &DcPair) {
        for pid in self.pids.drain(..) {
            let _ = dc.lab.stop(pid);
        }
        // A process killed after the grace period leaves its socket behind;
        // the names carry this run's prefix, so these are ours.
        for ifname in self.ifnames.drain(..) {
            let _ = std::fs::remove_file(sock_path(&ifname));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_name_the_interface_and_keep_root() {
        let go = Userspace::Go.command(Path::new("/usr/bin/wireguard-go"), "tb1x1wga");
        let args: Vec<_> = go.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(args, ["-f", "tb1x1wga"]);
        let bt = Userspace::Boringtun.command(Path::new("/x/boringtun-cli"), "tb1x1bta");
        let args: Vec<_> = bt.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args,
            ["--foreground", "--disable-drop-privileges", "tb1x1bta"]
        );
        let envs: Vec<_> = bt.get_envs().collect();
        assert_eq!(
            envs,
            [(
                std::ffi::OsStr::new("WG_SUDO"),
                Some(std::ffi::OsStr::new("1"))
            )]
        );
    }

    #[test]
    fn implementations_use_distinct_interface_names() {
        let go = Userspace::Go.if_suffixes();
        let bt = Userspace::Boringtun.if_suffixes();
        assert_ne!(go[0], go[1]);
        assert_ne!(bt[0], bt[1]);
        assert!(go.iter().all(|s| !bt.contains(s)));
        assert_eq!(
            sock_path("tb1x1bta"),
            PathBuf::from("/var/run/wireguard/tb1x1bta.sock")
        );
    }
}
