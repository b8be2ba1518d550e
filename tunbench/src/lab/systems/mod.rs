//! The systems a lab run compares, one row each: how each is brought up on
//! the [`DcPair`] (so that host-a reaches host-b through it), which
//! processes carry its traffic (for CPU accounting), and how it is taken
//! down again so the next system starts from a clean topology.

pub mod ipsec;
pub mod openvpn;
pub mod raw;
pub mod tunneld;
pub mod wireguard;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::scenario::{Scenario, SystemKind};
use crate::topo::{DcPair, HOST_B_V4};

/// What a system needs to start.
pub struct Ctx<'a> {
    /// The topology.
    pub dc: &'a DcPair,
    /// The scenario (tunneld settings).
    pub scenario: &'a Scenario,
    /// The tunneld binary, if found.
    pub tunneld_bin: Option<&'a Path>,
    /// Counts starts, so names and ports of successive instances differ.
    pub instance: u32,
}

/// Why a system has no numbers in this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotRun {
    /// Its software is absent; the text names the missing package.
    NotInstalled(String),
    /// It is installed but could not be brought up; the text says why.
    Failed(String),
}

impl std::fmt::Display for NotRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotRun::NotInstalled(s) => write!(f, "not installed: {s}"),
            NotRun::Failed(s) => write!(f, "failed: {s}"),
        }
    }
}

/// A system that is up.
pub trait Running {
    /// Which implementation runs, e.g. "strongSwan kernel-libipsec (userspace ESP)".
    fn variant(&self) -> String;
    /// PIDs of the processes that carry the tunnel's traffic; empty for
    /// kernel paths (their CPU is not attributable to a process).
    fn pids(&self) -> Vec<u32>;
    /// Why there is no per-process CPU figure (for kernel paths).
    fn cpu_note(&self) -> Option<String> {
        None
    }
    /// Tears the system down (processes, devices, routes, policies).
    fn stop(&mut self, dc: &DcPair);
}

/// Starts `kind` and waits until host-a reaches host-b through it.
pub fn start(kind: SystemKind, ctx: &Ctx) -> Result<Box<dyn Running>, NotRun> {
    let mut sys: Box<dyn Running> = match kind {
        SystemKind::Raw => Box::new(raw::Raw::start(ctx)?),
        SystemKind::Tunneld | SystemKind::TunneldTcp | SystemKind::TunneldQuic => {
            let transport = kind.tunneld_transport().unwrap_or_default();
            Box::new(tunneld::Tunneld::start_on(ctx, transport, &mut |_, _| {})?)
        }
        SystemKind::Ipsec => ipsec::start(ctx)?,
        SystemKind::WireguardGo => {
            Box::new(wireguard::Wireguard::start(ctx, wireguard::Userspace::Go)?)
        }
        SystemKind::Boringtun => Box::new(wireguard::Wireguard::start(
            ctx,
            wireguard::Userspace::Boringtun,
        )?),
        SystemKind::Openvpn => Box::new(openvpn::Openvpn::start(ctx)?),
    };
    if let Err(e) = wait_reachable(ctx.dc, Duration::from_secs(15)) {
        let logs = sys
            .pids()
            .iter()
            .map(|p| format!("--- pid {p} ---\n{}", tail(&ctx.dc.lab.log(*p), 15)))
            .collect::<Vec<_>>()
            .join("\n");
        sys.stop(ctx.dc);
        return Err(NotRun::Failed(format!("{e}\n{logs}")));
    }
    Ok(sys)
}

/// Pings host-b from host-a until it answers.
pub fn wait_reachable(dc: &DcPair, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    let dst = HOST_B_V4.to_string();
    loop {
        let ok = dc
            .lab
            .exec(&dc.host_a, "ping", &["-c1", "-W1", "-n", &dst])
            .map_err(|e| format!("cannot run ping: {e}"))?
            .status
            .success();
        if ok {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "host-a could not ping host-b ({dst}) through it within {timeout:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `bytes` to `path` as a new file readable by its owner only (an
/// existing file is replaced, so its old mode does not survive); the error
/// names the path.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Finds `name` in PATH (and the sbin directories, which a non-login root
/// shell may lack).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `ip -n NS ARGS` and ignores failure (cleanup of what may not exist).
pub fn ip_quiet(dc: &DcPair, ns: &str, args: &[&str]) {
    let _ = dc.lab.ip(ns, args);
}

/// Runs a program in a namespace; Err carries its stderr.
pub fn exec_ok(dc: &DcPair, ns: &str, prog: &str, args: &[&str]) -> Result<String, String> {
    let out = dc
        .lab
        .exec(ns, prog, args)
        .map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{prog} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}
