//! The systems a lab run compares, one row each: how each is brought up on
//! the [`DcPair`] (so that host-a reaches host-b through it), which
//! processes carry its traffic (for CPU accounting), and how it is taken
//! down again so the next system starts from a clean topology.

pub mod ipsec;
pub mod openvpn;
pub mod raw;
pub mod spec;
pub mod tunneld;
pub mod wireguard;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::scenario::{Scenario, System, SystemKind};
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

/// Starts a scenario row and waits until host-a reaches host-b through it.
pub fn start_system(sys: &System, ctx: &Ctx) -> Result<Box<dyn Running>, NotRun> {
    match sys {
        System::Builtin(kind) => start(*kind, ctx),
        System::Wireguard(spec) => {
            // The row's place among the binary rows names its interfaces.
            let index = ctx
                .scenario
                .systems
                .iter()
                .filter(|s| matches!(s, System::Wireguard(_)))
                .position(|s| s == sys)
                .unwrap_or(0);
            let up = wireguard::Wireguard::start_spec(ctx, spec, index)?;
            reachable(Box::new(up), ctx)
        }
    }
}

/// Starts `kind` and waits until host-a reaches host-b through it.
pub fn start(kind: SystemKind, ctx: &Ctx) -> Result<Box<dyn Running>, NotRun> {
    let sys: Box<dyn Running> = match kind {
        SystemKind::Raw => Box::new(raw::Raw::start(ctx)?),
        SystemKind::Tunneld | SystemKind::TunneldTcp | SystemKind::TunneldQuic => {
            let transport = kind.tunneld_transport().unwrap_or_default();
            Box::new(tunneld::Tunneld::start_on(ctx, transport, &mut |_, _| {})?)
        }
        SystemKind::Ipsec => ipsec::start(ctx)?,
        SystemKind::IpsecKernel => ipsec::start_kernel(ctx)?,
        SystemKind::WireguardGo
        | SystemKind::Boringtun
        | SystemKind::Gotatun
        | SystemKind::WireguardKernel => Box::new(wireguard::Wireguard::start_builtin(ctx, kind)?),
        SystemKind::Openvpn => Box::new(openvpn::Openvpn::start(ctx)?),
    };
    reachable(sys, ctx)
}

/// Waits until host-a reaches host-b through `sys`; on failure stops it
/// and says why, with the tail of each of its processes' logs.
fn reachable(mut sys: Box<dyn Running>, ctx: &Ctx) -> Result<Box<dyn Running>, NotRun> {
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

/// The program's own answer in an [`exec_ok`] or `ip` error (the text after
/// the command line and exit status), for short reasons.
pub fn answer(err: &str) -> &str {
    err.rsplit_once("): ").map_or(err, |(_, a)| a).trim()
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

#[cfg(test)]
mod tests {
    #[test]
    fn answer_keeps_the_programs_words() {
        let e = "`ip -n tb1x1-gw-a link add tb1x1wka type wireguard` failed (exit status: 2): \
                 Error: Unknown device type.";
        assert_eq!(super::answer(e), "Error: Unknown device type.");
        assert_eq!(super::answer("plain words"), "plain words");
    }
}
