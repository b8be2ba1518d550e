//! The operating-system edge of the topology module: running `ip`, checking
//! privileges, entering a namespace with `setns(2)`, signalling PIDs. The only
//! file in `topo` with `unsafe`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use super::error::{Result, TopoError};

/// Where iproute2 keeps named namespaces (`NETNS_RUN_DIR`).
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Capability bits we need: CAP_NET_ADMIN (12) for links and addresses,
/// CAP_SYS_ADMIN (21) for the bind mounts `ip netns add` makes.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// Runs `ip ARGS` in the caller's namespace; non-zero exit is an error that
/// carries the arguments and stderr.
pub fn run_ip(args: &[&str]) -> Result<Output> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| map_spawn_error("running `ip`", e))?;
    if !out.status.success() {
        return Err(TopoError::Ip {
            args: args.join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// Maps "no such file" when spawning `ip` to [`TopoError::IpMissing`].
pub fn map_spawn_error(context: &str, e: io::Error) -> TopoError {
    if e.kind() == io::ErrorKind::NotFound {
        TopoError::IpMissing
    } else {
        TopoError::io(context, e)
    }
}

/// Ok if this process may create network namespaces: effective UID 0, or
/// both CAP_NET_ADMIN and CAP_SYS_ADMIN in the effective set.
pub fn check_privileges() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let need = (1u64 << CAP_NET_ADMIN) | (1u64 << CAP_SYS_ADMIN);
    if cap_eff & need == need {
        Ok(())
    } else {
        Err(TopoError::NotRoot)
    }
}

/// Ok if `ip` can be run at all.
pub fn check_ip() -> Result<()> {
    run_ip(&["-V"]).map(|_| ())
}

/// True if a process with this PID exists (a zombie counts as alive: its PID
/// is not free yet).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Sends `sig` to one PID (never a group: `pid` must be positive).
pub fn signal_pid(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain kill(2) on a single positive PID.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The bind-mount file of a named namespace.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_RUN_DIR).join(name)
}

/// Opens a named namespace for a later [`enter_netns`].
pub fn open_netns(name: &str) -> Result<File> {
    File::open(netns_path(name)).map_err(|e| TopoError::Setns {
        ns: name.to_string(),
        source: e,
    })
}

/// Moves the calling thread (only it) into the network namespace `file`.
pub fn enter_netns(file: &File, name: &str) -> Result<()> {
    // SAFETY: setns on a valid, open namespace fd; CLONE_NEWNET only changes
    // this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(TopoError::Setns {
            ns: name.to_string(),
            source: io::Error::last_os_error(),
        })
    }
}

/// All named network namespaces on the host.
pub fn list_netns() -> Result<Vec<String>> {
    let dir = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TopoError::io(format!("listing {NETNS_RUN_DIR}"), e)),
    };
    let mut names = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|e| TopoError::io(format!("listing {NETNS_RUN_DIR}"), e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// PIDs of processes whose network namespace is `name` (`ip netns pids`).
pub fn pids_in_netns(name: &str) -> Result<Vec<u32>> {
    let out = run_ip(&["netns", "pids", name])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Kills (SIGKILL, by PID) whatever still runs inside namespace `name`,
/// except this process, then deletes the namespace name. Its veths go with it
/// once nothing holds the namespace any more.
pub fn delete_netns(name: &str) -> Result<()> {
    let me = std::process::id();
    for pid in pids_in_netns(name).unwrap_or_default() {
        if pid != me {
            let _ = signal_pid(pid, libc::SIGKILL);
        }
    }
    run_ip(&["netns", "del", name]).map(|_| ())
}
