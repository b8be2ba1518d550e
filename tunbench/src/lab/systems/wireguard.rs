//! WireGuard on each gateway, configured the same way whatever the
//! implementation: `wg set` (Debian package wireguard-tools) over the
//! cross-platform UAPI control socket, or over genetlink for the kernel's.
//! Userspace implementations ([`Launch`]): the built-in rows wireguard-go
//! (Debian), boringtun (`boringtun-cli`) and GotaTun (`gotatun`), and any
//! other that speaks the UAPI socket, named by its binary in the scenario
//! ([`UapiSpec`]); they differ only in how they are started ([`Flavour`]).
//! Kernel WireGuard (`ip link add type wireguard`) is a reference row where
//! the kernel has the module. The sockets live in the host-wide
//! /var/run/wireguard (shared across namespaces), so the two ends get
//! different (lab-prefixed) interface names.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tunneld::keys::PrivateKey;

use super::spec::{Flavour, UapiSpec, DEFAULT_START_TIMEOUT};
use super::{exec_ok, which, Ctx, NotRun, Running};
use crate::lab::scenario::SystemKind;
use crate::topo::{DcPair, GW_A_WAN_V4, GW_B_WAN_V4, LAN_A_V4, LAN_B_V4};

/// UDP port of both ends.
const PORT: u16 = 51900;
/// Where every UAPI implementation puts its control socket (`IFNAME.sock`).
const SOCK_DIR: &str = "/var/run/wireguard";
/// Tunnel MTU of every WireGuard row: WireGuard's own default (1500 minus
/// the 80-byte IPv6 + UDP + WireGuard overhead), set explicitly because
/// GotaTun leaves its TUN at 1500.
const MTU: &str = "1420";
/// How long `--version` may take: it prints a line and exits; a binary
/// that does neither is not waited for.
const VERSION_TIMEOUT: Duration = Duration::from_secs(3);

/// How a userspace implementation is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The program.
    pub bin: PathBuf,
    /// Its command line family (never [`Flavour::Auto`]).
    pub flavour: Flavour,
    /// Extra arguments before the interface name.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// How long it may take to create its UAPI socket.
    pub start_timeout: Duration,
}

impl Launch {
    /// A built-in flavour's launch of `bin`, with no extras.
    pub fn plain(bin: PathBuf, flavour: Flavour) -> Launch {
        Launch {
            bin,
            flavour,
            args: Vec::new(),
            env: Vec::new(),
            start_timeout: DEFAULT_START_TIMEOUT,
        }
    }

    /// The program's file name, for messages.
    fn program(&self) -> String {
        self.bin
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.bin.display().to_string())
    }

    /// The command that runs one end in the foreground on `ifname`.
    pub fn command(&self, ifname: &str) -> Command {
        let mut cmd = Command::new(&self.bin);
        match self.flavour {
            // `-f` since 2018; older builds read the variable instead.
            Flavour::Go | Flavour::Auto => {
                cmd.arg("-f").env("WG_PROCESS_FOREGROUND", "1");
            }
            // The lab runs as root, not through sudo: keep root (there is
            // no SUDO_UID to drop to). WG_SUDO is the same switch as
            // `--disable-drop-privileges`. In the foreground both log to
            // stdout (the lab's log) instead of /tmp/*.out.
            Flavour::Boringtun => {
                cmd.args(["--foreground", "--disable-drop-privileges"])
                    .env("WG_SUDO", "1");
            }
            Flavour::Gotatun => {
                cmd.args(["-f", "--disable-drop-privileges"])
                    .env("WG_SUDO", "1");
            }
        }
        cmd.args(&self.args).arg(ifname);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }
}

/// The first non-empty line `BIN --version` prints (stdout, else stderr),
/// if it prints one within [`VERSION_TIMEOUT`].
pub fn version_line(bin: &Path) -> Option<String> {
    let mut child = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() < VERSION_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let out = child.wait_with_output().ok()?;
    [out.stdout, out.stderr].iter().find_map(|b| {
        String::from_utf8_lossy(b)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
    })
}

/// `$CARGO_HOME/bin/NAME` or `$HOME/.cargo/bin/NAME`, if it exists.
fn cargo_bin(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    Some(home.join("bin").join(name)).filter(|p| p.is_file())
}

/// A built-in WireGuard row: the program, its flavour, the interface-name
/// suffixes and what to install when it is missing.
fn builtin(kind: SystemKind) -> Option<(&'static str, Flavour, [&'static str; 2], &'static str)> {
    match kind {
        SystemKind::WireguardGo => Some((
            "wireguard-go",
            Flavour::Go,
            ["wga", "wgb"],
            "needs the Debian packages wireguard-go and wireguard-tools",
        )),
        SystemKind::Boringtun => Some((
            "boringtun-cli",
            Flavour::Boringtun,
            ["bta", "btb"],
            "needs boringtun-cli (`cargo install --locked boringtun-cli`, see \
             tests/bench/install-baselines.sh) and the Debian package wireguard-tools",
        )),
        SystemKind::Gotatun => Some((
            "gotatun",
            Flavour::Gotatun,
            ["gta", "gtb"],
            "needs gotatun (`cargo install --locked gotatun-cli`, see \
             tests/bench/install-baselines.sh) and the Debian package wireguard-tools",
        )),
        _ => None,
    }
}

/// Where one end's WireGuard lives.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Engine {
    /// A userspace process per gateway.
    Userspace(Launch),
    /// The kernel's WireGuard.
    Kernel,
}

/// Both WireGuard ends.
#[derive(Debug)]
pub struct Wireguard {
    engine: Engine,
    variant: String,
    pids: Vec<u32>,
    /// (namespace, interface) of each end brought up so far.
    ends: Vec<(String, String)>,
}

impl Wireguard {
    /// Starts a built-in row: wireguard-go, boringtun, gotatun or
    /// wireguard-kernel.
    pub fn start_builtin(ctx: &Ctx, kind: SystemKind) -> Result<Wireguard, NotRun> {
        let wg_missing =
            || NotRun::NotInstalled("needs `wg` (Debian package wireguard-tools)".into());
        if kind == SystemKind::WireguardKernel {
            which("wg").ok_or_else(wg_missing)?;
            return Wireguard::start(ctx, Engine::Kernel, ["wka", "wkb"], String::new());
        }
        let Some((prog, flavour, suffixes, hint)) = builtin(kind) else {
            return Err(NotRun::Failed(format!("{kind} is not a WireGuard row")));
        };
        let bin = which(prog)
            .or_else(|| cargo_bin(prog))
            .ok_or_else(|| NotRun::NotInstalled(hint.into()))?;
        which("wg").ok_or_else(wg_missing)?;
        let variant = version_line(&bin).unwrap_or_else(|| prog.to_string());
        Wireguard::start(
            ctx,
            Engine::Userspace(Launch::plain(bin, flavour)),
            suffixes,
            variant,
        )
    }

    /// Starts a `wireguard: {binary: ...}` row; `index` (below
    /// [`super::spec::MAX_UAPI_ROWS`]) makes its interface names unique.
    pub fn start_spec(ctx: &Ctx, spec: &UapiSpec, index: usize) -> Result<Wireguard, NotRun> {
        let bin = spec.locate().map_err(|(missing, why)| {
            if missing {
                NotRun::NotInstalled(why)
            } else {
                NotRun::Failed(why)
            }
        })?;
        which("wg").ok_or_else(|| {
            NotRun::NotInstalled("needs `wg` (Debian package wireguard-tools)".into())
        })?;
        let version = version_line(&bin);
        let flavour = spec
            .resolve_flavour(&bin, version.as_deref())
            .map_err(NotRun::Failed)?;
        let variant = format!(
            "{} ({}, {} flavour)",
            version.as_deref().unwrap_or("version unknown"),
            bin.display(),
            flavour.as_str()
        );
        let launch = Launch {
            bin,
            flavour,
            args: spec.args.clone(),
            env: spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            start_timeout: spec.start_timeout(),
        };
        let (a, b) = (format!("u{index:x}a"), format!("u{index:x}b"));
        Wireguard::start(ctx, Engine::Userspace(launch), [&a, &b], variant)
    }

    fn start(
        ctx: &Ctx,
        engine: Engine,
        suffixes: [&str; 2],
        variant: String,
    ) -> Result<Wireguard, NotRun> {
        let dc = ctx.dc;
        let fail = |e: String| NotRun::Failed(e);
        let dir = dc.lab.dir().join(format!("wg-{}", ctx.instance));
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        let ka = PrivateKey::generate().map_err(|e| fail(e.to_string()))?;
        let kb = PrivateKey::generate().map_err(|e| fail(e.to_string()))?;
        let (fa, fb) = (dir.join("a.key"), dir.join("b.key"));
        ka.save_file(&fa).map_err(|e| fail(e.to_string()))?;
        kb.save_file(&fb).map_err(|e| fail(e.to_string()))?;
        let ifa = dc
            .lab
            .ifname(suffixes[0])
            .map_err(|e| fail(e.to_string()))?;
        let ifb = dc
            .lab
            .ifname(suffixes[1])
            .map_err(|e| fail(e.to_string()))?;
        let variant = match &engine {
            Engine::Kernel => format!(
                "kernel WireGuard (Linux {})",
                std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .map(|k| k.trim().to_string())
                    .unwrap_or_default()
            ),
            Engine::Userspace(_) => variant,
        };
        let mut me = Wireguard {
            engine,
            variant,
            pids: Vec::new(),
            ends: Vec::new(),
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
            let pid = match &me.engine {
                Engine::Kernel => {
                    if let Err(e) = dc.lab.ip(ns, &["link", "add", ifname, "type", "wireguard"]) {
                        me.stop(dc);
                        return Err(NotRun::NotInstalled(format!(
                            "the kernel has no WireGuard (`ip link add type wireguard`: {}); \
                             a reference row where the wireguard module is loaded",
                            super::answer(&e.to_string())
                        )));
                    }
                    None
                }
                Engine::Userspace(launch) => {
                    let pid = dc
                        .lab
                        .spawn(ns, launch.command(ifname))
                        .map_err(|e| fail(format!("starting {}: {e}", launch.program())))?;
                    me.pids.push(pid);
                    Some(pid)
                }
            };
            me.ends.push((ns.clone(), ifname.clone()));
            let setup = || -> Result<(), String> {
                if let (Some(pid), Engine::Userspace(launch)) = (pid, &me.engine) {
                    wait_sock(dc, launch, pid, &sock_path(ifname))?;
                }
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
                for args in [
                    &["addr", "add", addr, "dev", ifname][..],
                    &["link", "set", ifname, "mtu", MTU, "up"],
                    &["route", "add", lan, "dev", ifname],
                ] {
                    dc.lab.ip(ns, args).map_err(|e| e.to_string())?;
                }
                Ok(())
            };
            if let Err(e) = setup() {
                let log = match (pid, &me.engine) {
                    (Some(pid), Engine::Userspace(launch)) => format!(
                        "\n{} log:\n{}",
                        launch.program(),
                        super::tail(&dc.lab.log(pid), 10)
                    ),
                    _ => String::new(),
                };
                me.stop(dc);
                return Err(fail(format!("{e}{log}")));
            }
        }
        Ok(me)
    }
}

fn sock_path(ifname: &str) -> PathBuf {
    Path::new(SOCK_DIR).join(format!("{ifname}.sock"))
}

fn wait_sock(dc: &DcPair, launch: &Launch, pid: u32, sock: &Path) -> Result<(), String> {
    let start = Instant::now();
    let prog = launch.program();
    while !sock.exists() {
        if let Ok(Some(st)) = dc.lab.try_wait(pid) {
            return Err(format!("{prog} exited during start-up ({st})"));
        }
        if start.elapsed() > launch.start_timeout {
            return Err(format!(
                "{prog} did not create its UAPI socket {} within {:?} (is it a WireGuard \
                 implementation that speaks the UAPI socket, started with the right `flavour:`?)",
                sock.display(),
                launch.start_timeout
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Running for Wireguard {
    fn variant(&self) -> String {
        self.variant.clone()
    }
    fn pids(&self) -> Vec<u32> {
        self.pids.clone()
    }
    fn cpu_note(&self) -> Option<String> {
        (self.engine == Engine::Kernel).then(|| "kernel".into())
    }
    fn stop(&mut self, dc: &DcPair) {
        for pid in self.pids.drain(..) {
            let _ = dc.lab.stop(pid);
        }
        // A process killed after the grace period leaves its socket behind;
        // the names carry this run's prefix, so these are ours. A kernel
        // link (or a TUN whose process is gone) is deleted with its name.
        for (ns, ifname) in self.ends.drain(..) {
            let _ = std::fs::remove_file(sock_path(&ifname));
            super::ip_quiet(dc, &ns, &["link", "del", &ifname]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }
    fn env(cmd: &Command, k: &str) -> Option<String> {
        cmd.get_envs()
            .find(|(n, _)| *n == k)
            .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
    }

    #[test]
    fn commands_name_the_interface_and_keep_root() {
        let go = Launch::plain("/usr/bin/wireguard-go".into(), Flavour::Go).command("tb1x1wga");
        assert_eq!(args(&go), ["-f", "tb1x1wga"]);
        assert_eq!(env(&go, "WG_PROCESS_FOREGROUND").as_deref(), Some("1"));
        let bt = Launch::plain("/x/boringtun-cli".into(), Flavour::Boringtun).command("tb1x1bta");
        assert_eq!(
            args(&bt),
            ["--foreground", "--disable-drop-privileges", "tb1x1bta"]
        );
        assert_eq!(env(&bt, "WG_SUDO").as_deref(), Some("1"));
        let gt = Launch::plain("/x/gotatun".into(), Flavour::Gotatun).command("tb1x1gta");
        assert_eq!(args(&gt), ["-f", "--disable-drop-privileges", "tb1x1gta"]);
        assert_eq!(env(&gt, "WG_SUDO").as_deref(), Some("1"));
    }

    #[test]
    fn extra_arguments_go_before_the_interface_and_env_is_added() {
        let mut l = Launch::plain("/opt/boringtun".into(), Flavour::Boringtun);
        l.args = vec!["--threads".into(), "2".into()];
        l.env = vec![("WG_LOG_LEVEL".into(), "error".into())];
        let cmd = l.command("tb1x1u0a");
        assert_eq!(
            args(&cmd),
            [
                "--foreground",
                "--disable-drop-privileges",
                "--threads",
                "2",
                "tb1x1u0a"
            ]
        );
        assert_eq!(env(&cmd, "WG_LOG_LEVEL").as_deref(), Some("error"));
        assert_eq!(env(&cmd, "WG_SUDO").as_deref(), Some("1"));
    }

    #[test]
    fn builtin_rows_use_distinct_interface_names() {
        let mut all: Vec<&str> = [
            SystemKind::WireguardGo,
            SystemKind::Boringtun,
            SystemKind::Gotatun,
        ]
        .iter()
        .flat_map(|k| builtin(*k).expect("a WireGuard row").2)
        .collect();
        all.extend(["wka", "wkb"]);
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a suffix is shared: {all:?}");
        // Binary rows use u<hex>a / u<hex>b, which no built-in row starts with.
        assert!(all.iter().all(|s| !s.starts_with('u')));
        assert!(builtin(SystemKind::Raw).is_none());
        assert_eq!(
            sock_path("tb1x1bta"),
            PathBuf::from("/var/run/wireguard/tb1x1bta.sock")
        );
    }

    /// A fresh scratch directory of this test process.
    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tunbench-wg-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    fn script(dir: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    fn spec(binary: &Path) -> UapiSpec {
        UapiSpec {
            binary: binary.to_path_buf(),
            name: "x".into(),
            flavour: Flavour::Auto,
            args: Vec::new(),
            env: Default::default(),
            start_timeout: None,
        }
    }

    #[test]
    fn version_line_reads_the_first_line_and_gives_up_on_a_silent_binary() {
        let d = scratch("version");
        let talks = script(
            &d,
            "wg-new",
            "echo; echo 'gotatun 0.10.2'; echo more",
            0o755,
        );
        assert_eq!(version_line(&talks).as_deref(), Some("gotatun 0.10.2"));
        let stderr = script(&d, "wg-err", "echo 'wireguard-go v0.0.2025' >&2", 0o755);
        assert_eq!(
            version_line(&stderr).as_deref(),
            Some("wireguard-go v0.0.2025")
        );
        let silent = script(&d, "wg-silent", "exec sleep 30", 0o755);
        let t = Instant::now();
        assert_eq!(version_line(&silent), None);
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn binary_rows_are_checked_before_they_start() {
        let d = scratch("locate");
        let ok = script(&d, "neptun-cli", "true", 0o755);
        assert_eq!(spec(&ok).locate(), Ok(ok.clone()));
        // Not executable, a directory, missing, a bare name not in PATH.
        let plain = script(&d, "wireguard-go", "true", 0o644);
        let (missing, why) = spec(&plain).locate().expect_err("mode 644 refused");
        assert!(
            !missing && why.contains("not executable") && why.contains("644"),
            "{why}"
        );
        let (missing, why) = spec(&d).locate().expect_err("a directory refused");
        assert!(!missing && why.contains("not a file"), "{why}");
        let (missing, why) = spec(&d.join("absent")).locate().expect_err("absent");
        assert!(missing && why.contains("absent"), "{why}");
        let (missing, why) = spec(Path::new("no-such-wireguard-xyz"))
            .locate()
            .expect_err("not in PATH");
        assert!(missing && why.contains("not in PATH"), "{why}");
        // Flavour: from the file name, else the version line, else an error
        // that says how to set it; an explicit one wins.
        let s = spec(&ok);
        assert_eq!(s.resolve_flavour(&ok, None), Ok(Flavour::Boringtun));
        let other = d.join("wg-2025");
        assert_eq!(
            s.resolve_flavour(&other, Some("wireguard-go v0.0.20250522")),
            Ok(Flavour::Go)
        );
        let e = s
            .resolve_flavour(&other, Some("mystery 1.0"))
            .expect_err("unknown flavour");
        assert!(e.contains("flavour:") && e.contains("mystery 1.0"), "{e}");
        let mut forced = spec(&other);
        forced.flavour = Flavour::Gotatun;
        assert_eq!(forced.resolve_flavour(&other, None), Ok(Flavour::Gotatun));
        let _ = std::fs::remove_dir_all(&d);
    }
}
