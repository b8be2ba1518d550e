//! [`Lab`]: one set of namespaces, veths and processes with a run-unique
//! prefix, torn down on drop (also while a panic unwinds) and by the signal
//! handler: processes first, then namespaces, then the temp dir.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::error::{Result, TopoError};
use super::names::{self, check_ifname};
use super::{process, registry, sys};

/// Set this env var to keep each lab's temp dir (configs, logs) after drop.
pub const KEEP_LOGS_ENV: &str = "TUNBENCH_KEEP_LOGS";

/// Lab numbers within this process; with the PID they make the prefix unique.
static NEXT_SEQ: AtomicU64 = AtomicU64::new(1);

/// A network-namespace testbed. See the module docs of [`crate::topo`].
pub struct Lab {
    shared: Arc<Shared>,
}

/// What the registry (signal handler) and the `Lab` handle share.
pub(super) struct Shared {
    pub(super) seq: u64,
    prefix: String,
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Full names, in creation order.
    namespaces: Vec<String>,
    /// Running (not yet stopped) children by PID.
    procs: BTreeMap<u32, Child>,
    /// Log file of every process ever spawned, by PID.
    logs: BTreeMap<u32, PathBuf>,
    next_log: u32,
    torn_down: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Teardown must work even if a panicking thread poisoned the lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops processes, deletes namespaces, removes the temp dir. Idempotent;
    /// problems are printed, since this runs from `Drop` and signal handling.
    pub(super) fn teardown(&self) {
        let mut st = self.lock();
        if st.torn_down {
            return;
        }
        st.torn_down = true;
        let procs: Vec<(u32, Child)> = std::mem::take(&mut st.procs).into_iter().collect();
        for (pid, res) in process::terminate_all(procs) {
            if let Err(e) = res {
                eprintln!("topo: lab {}: reaping process {pid}: {e}", self.prefix);
            }
        }
        for ns in st.namespaces.iter().rev() {
            if let Err(e) = sys::delete_netns(ns) {
                eprintln!("topo: lab {}: deleting namespace {ns}: {e}", self.prefix);
            }
        }
        st.namespaces.clear();
        if std::env::var_os(KEEP_LOGS_ENV).is_some() {
            eprintln!(
                "topo: lab {}: kept logs in {}",
                self.prefix,
                self.dir.display()
            );
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "topo: lab {}: removing {}: {e}",
                    self.prefix,
                    self.dir.display()
                );
            }
        }
    }
}

impl Lab {
    /// Creates an empty lab. `tag` names its temp dir (for humans); the
    /// namespace prefix is `tb<pid>x<n>`. Also removes leftovers of crashed
    /// runs (see [`super::cleanup_stale`]).
    pub fn new(tag: &str) -> Result<Lab> {
        sys::check_privileges()?;
        sys::check_ip()?;
        match super::cleanup_stale() {
            Ok(removed) if !removed.is_empty() => {
                eprintln!("topo: removed namespaces left by dead runs: {removed:?}");
            }
            Ok(_) => {}
            Err(e) => eprintln!("topo: cleaning up stale namespaces failed: {e}"),
        }
        let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed);
        let prefix = names::lab_prefix(std::process::id(), seq);
        let dir =
            std::env::temp_dir().join(format!("tunbench-{prefix}-{}", names::sanitize_tag(tag)));
        if dir.exists() {
            // Only possible after PID reuse by a run that kept its logs.
            std::fs::remove_dir_all(&dir)
                .map_err(|e| TopoError::io(format!("removing old {}", dir.display()), e))?;
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| TopoError::io(format!("creating {}", dir.display()), e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            // Configs and private keys live here.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| TopoError::io(format!("chmod {}", dir.display()), e))?;
        }
        let shared = Arc::new(Shared {
            seq,
            prefix,
            dir,
            state: Mutex::new(State::default()),
        });
        registry::register(&shared);
        Ok(Lab { shared })
    }

    /// The run-unique prefix (`tb<pid>x<n>`) every generated name carries.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// An interface name `<prefix><suffix>`, checked against the 15-char limit.
    pub fn ifname(&self, suffix: &str) -> Result<String> {
        names::prefixed_ifname(&self.shared.prefix, suffix)
    }

    /// The lab's temp dir (configs, logs); removed on drop unless
    /// `TUNBENCH_KEEP_LOGS` is set.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Full names of the namespaces created so far, in creation order.
    pub fn namespaces(&self) -> Vec<String> {
        self.shared.lock().namespaces.clone()
    }

    /// Creates namespace `<prefix>-<short>` with `lo` up; returns its full name.
    pub fn add_ns(&self, short: &str) -> Result<String> {
        let name = names::ns_name(&self.shared.prefix, short)?;
        // Held across creation so a concurrent teardown cannot miss it.
        let mut st = self.shared.lock();
        if st.torn_down {
            return Err(TopoError::TornDown(self.shared.prefix.clone()));
        }
        if st.namespaces.contains(&name) {
            return Err(TopoError::DuplicateNamespace(name));
        }
        sys::run_ip(&["netns", "add", &name])?;
        st.namespaces.push(name.clone());
        drop(st);
        self.ip(&name, &["link", "set", "lo", "up"])?;
        Ok(name)
    }

    fn check_own(&self, ns: &str) -> Result<()> {
        let st = self.shared.lock();
        if st.torn_down {
            return Err(TopoError::TornDown(self.shared.prefix.clone()));
        }
        if st.namespaces.iter().any(|n| n == ns) {
            Ok(())
        } else {
            Err(TopoError::UnknownNamespace(ns.to_string()))
        }
    }

    /// A veth pair `if_a` (in `ns_a`) ↔ `if_b` (in `ns_b`), created directly
    /// inside the namespaces (nothing appears in the host namespace), both up.
    pub fn link(&self, ns_a: &str, if_a: &str, ns_b: &str, if_b: &str) -> Result<()> {
        self.check_own(ns_a)?;
        self.check_own(ns_b)?;
        check_ifname(if_a)?;
        check_ifname(if_b)?;
        sys::run_ip(&[
            "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b,
        ])?;
        self.ip(ns_a, &["link", "set", if_a, "up"])?;
        self.ip(ns_b, &["link", "set", if_b, "up"])?;
        Ok(())
    }

    /// Runs `ip -n NS ARGS...`; returns stdout. Errors carry args and stderr.
    pub fn ip(&self, ns: &str, args: &[&str]) -> Result<String> {
        self.check_own(ns)?;
        let mut full = vec!["-n", ns];
        full.extend_from_slice(args);
        let out = sys::run_ip(&full)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sets sysctl `key` (dotted, e.g. `net.ipv4.ip_forward`) inside `ns`.
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<()> {
        let ok = !key.is_empty()
            && !key.contains("..")
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(TopoError::InvalidName {
                name: key.to_string(),
                reason: "not a sysctl key".to_string(),
            });
        }
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        // /proc/sys/net resolves against the opening thread's namespace.
        self.run_in(ns, || std::fs::write(&path, value))?
            .map_err(|e| TopoError::io(format!("sysctl {key}={value} in {ns}"), e))
    }

    /// Runs `PROGRAM ARGS` inside `ns` to completion and returns its output;
    /// a non-zero exit is not an error here (check `status`).
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Result<Output> {
        self.check_own(ns)?;
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| sys::map_spawn_error(&format!("running {program} in {ns}"), e))
    }

    /// Starts `cmd` inside `ns` (via `ip netns exec`, which execs, so the
    /// returned PID is the program's). stdout and stderr go to a log file in
    /// [`Lab::dir`]; read it with [`Lab::log`]. Killed on drop.
    pub fn spawn(&self, ns: &str, cmd: Command) -> Result<u32> {
        self.check_own(ns)?;
        let short = ns
            .strip_prefix(self.shared.prefix.as_str())
            .map(|s| s.trim_start_matches('-'))
            .unwrap_or(ns);
        let prog = Path::new(cmd.get_program())
            .file_name()
            .and_then(OsStr::to_str)
            .map(names::sanitize_tag)
            .unwrap_or_else(|| "proc".to_string());
        let mut st = self.shared.lock();
        if st.torn_down {
            return Err(TopoError::TornDown(self.shared.prefix.clone()));
        }
        st.next_log += 1;
        let log = self
            .shared
            .dir
            .join(format!("{:02}-{short}-{prog}.log", st.next_log));
        let mut real = process::netns_command(ns, &cmd, &log)?;
        let child = real
            .spawn()
            .map_err(|e| sys::map_spawn_error(&format!("starting {prog} in {ns}"), e))?;
        let pid = child.id();
        st.procs.insert(pid, child);
        st.logs.insert(pid, log);
        Ok(pid)
    }

    /// Stops one spawned process now (SIGTERM, up to 2 s, then SIGKILL),
    /// reaps it and returns its exit status.
    pub fn stop(&self, pid: u32) -> Result<ExitStatus> {
        let child = self
            .shared
            .lock()
            .procs
            .remove(&pid)
            .ok_or(TopoError::UnknownProcess(pid))?;
        let mut res = process::terminate_all(vec![(pid, child)]);
        match res.pop() {
            Some((_, r)) => r.map_err(|e| TopoError::io(format!("reaping process {pid}"), e)),
            None => Err(TopoError::UnknownProcess(pid)),
        }
    }

    /// Kills one spawned process at once (SIGKILL, no grace: a crash, as
    /// failover tests need), reaps it and returns its exit status.
    pub fn kill(&self, pid: u32) -> Result<ExitStatus> {
        let mut child = self
            .shared
            .lock()
            .procs
            .remove(&pid)
            .ok_or(TopoError::UnknownProcess(pid))?;
        // A zombie keeps its PID until waited for, so this cannot hit a reused PID.
        child
            .kill()
            .map_err(|e| TopoError::io(format!("killing process {pid}"), e))?;
        child
            .wait()
            .map_err(|e| TopoError::io(format!("reaping process {pid}"), e))
    }

    /// `Some(status)` if a spawned process has exited (it stays known to
    /// [`Lab::log`]), `None` while it runs.
    pub fn try_wait(&self, pid: u32) -> Result<Option<ExitStatus>> {
        let mut st = self.shared.lock();
        let child = st
            .procs
            .get_mut(&pid)
            .ok_or(TopoError::UnknownProcess(pid))?;
        child
            .try_wait()
            .map_err(|e| TopoError::io(format!("polling process {pid}"), e))
    }

    /// Everything a spawned process wrote to stdout/stderr so far.
    pub fn log(&self, pid: u32) -> String {
        let path = self.shared.lock().logs.get(&pid).cloned();
        match path {
            Some(p) => match std::fs::read(&p) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) => format!("<cannot read log {}: {e}>", p.display()),
            },
            None => format!("<no process {pid} was spawned by lab {}>", self.prefix()),
        }
    }

    /// Runs `f` on a thread that has entered namespace `ns`; sockets it
    /// creates live there (and stay there when moved out). A panic in `f` is
    /// resumed in the caller, so the lab still tears down during the unwind.
    pub fn run_in<F, R>(&self, ns: &str, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        self.check_own(ns)?;
        let file = sys::open_netns(ns)?;
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name(format!("netns-{ns}"))
                .spawn_scoped(s, move || -> Result<R> {
                    sys::enter_netns(&file, ns)?;
                    drop(file);
                    Ok(f())
                })
                .map_err(|e| TopoError::io("spawning a namespace thread", e))?;
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Tears the lab down now (same as dropping it).
    pub fn teardown(self) {}
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.shared.teardown();
        registry::unregister(self.shared.seq);
    }
}
