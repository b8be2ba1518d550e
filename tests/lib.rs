//! End-to-end test support for the workspace: finding the built binaries,
//! the root/skip rule, pings with deadlines, and (in submodules) a tunneld
//! pair on a [`tunbench::topo::DcPair`], TCP transfers with digests and
//! packet capture. All namespace plumbing goes through `tunbench::topo`.

pub mod capture;
pub mod traffic;
pub mod tunnels;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tunbench::topo::Lab;

pub use capture::{contains, udp_payloads, Capture};
pub use traffic::{tcp_transfer, Pattern, Transfer};
pub use tunnels::{tunnel_config, Side, TunnelLab};

/// Set to a directory to test binaries from there instead of `target/`
/// (e.g. installed ones); it is searched first.
pub const BIN_DIR_ENV: &str = "E2E_BIN_DIR";

/// Path of the workspace binary `name`, built next to this test executable
/// (`target/release/NAME`, else `target/debug/NAME`; `$E2E_BIN_DIR/NAME`
/// first when that is set). Panics with the build command if it is missing.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe of the test binary");
    // target/<profile>/deps/<test-exe> → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        candidates.push(PathBuf::from(dir).join(name));
    }
    candidates.push(profile_dir.join(name));
    if let Some(target) = profile_dir.parent() {
        candidates.push(target.join("release").join(name));
        candidates.push(target.join("debug").join(name));
    }
    match candidates.iter().find(|p| p.is_file()) {
        Some(p) => p.clone(),
        None => panic!(
            "binary `{name}` not found (looked at {candidates:?}): \
             build it first: cargo build --release --workspace"
        ),
    }
}

/// True if this process may build namespace labs. Otherwise prints why the
/// test is skipped and returns false, except when CI=true: then a missing
/// privilege is a failure (panic), never a silent pass.
pub fn require_root() -> bool {
    match tunbench::topo::check_privileges() {
        Ok(()) => true,
        Err(e) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true and this test needs root: {e}");
            }
            eprintln!("SKIPPED (needs root): {e}");
            false
        }
    }
}

/// One `ping -c1 -W1` from namespace `ns` to `dst`; true if answered.
pub fn ping_once(lab: &Lab, ns: &str, dst: &str) -> bool {
    lab.exec(ns, "ping", &["-c1", "-W1", "-n", dst])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Pings `dst` from `ns` until it answers; returns how long that took, or
/// an error with the last ping output after `timeout`.
pub fn wait_ping(lab: &Lab, ns: &str, dst: &str, timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let out = lab
            .exec(ns, "ping", &["-c1", "-W1", "-n", dst])
            .with_context(|| format!("running ping in {ns}"))?;
        if out.status.success() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            bail!(
                "ping {ns} → {dst} got no answer within {timeout:?}; last output:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `probe` every 50 ms until it returns `Some`, or fails after `timeout`
/// with `what` in the message.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True if `msg` names line `n` in one of the usual shapes
/// (`line 7`, `line: 7`, `file:7:3`).
pub fn mentions_line(msg: &str, n: usize) -> bool {
    let lower = msg.to_ascii_lowercase();
    let ends_with_number = [format!("line {n}"), format!("line: {n}")];
    let numbered = ends_with_number.iter().any(|s| {
        lower.match_indices(s.as_str()).any(|(i, _)| {
            // "line 1" must not match "line 12".
            !lower[i + s.len()..].starts_with(|c: char| c.is_ascii_digit())
        })
    });
    numbered || lower.contains(&format!(":{n}:"))
}

/// A temp dir for tests that need no lab (e.g. `tunneld check`); removed on
/// drop unless TUNBENCH_KEEP_LOGS is set.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/e2e-<tag>-<pid>-<n>`, mode 0700.
    pub fn new(tag: &str) -> anyhow::Result<TempDir> {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("e2e-{tag}-{}-{n}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).with_context(|| format!("clearing {path:?}"))?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {path:?}"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os(tunbench::topo::KEEP_LOGS_ENV).is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Runs `tunneld genkey` and returns the private key text (trimmed).
pub fn genkey() -> anyhow::Result<String> {
    let out = std::process::Command::new(bin("tunneld"))
        .arg("genkey")
        .output()
        .context("running tunneld genkey")?;
    if !out.status.success() {
        bail!(
            "tunneld genkey failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if key.is_empty() {
        bail!("tunneld genkey printed no key");
    }
    Ok(key)
}

/// Runs `tunneld pubkey` with `private` on stdin; returns the public key.
pub fn pubkey(private: &str) -> anyhow::Result<String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(bin("tunneld"))
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running tunneld pubkey")?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{private}").context("writing the private key to tunneld pubkey")?;
    }
    let out = child
        .wait_with_output()
        .context("waiting for tunneld pubkey")?;
    if !out.status.success() {
        bail!(
            "tunneld pubkey failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if key.is_empty() {
        bail!("tunneld pubkey printed no key");
    }
    Ok(key)
}

/// Writes a key file with mode 0600 (created so, never world-readable).
pub fn write_key(path: &Path, key: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating key file {path:?}"))?;
    writeln!(f, "{key}").with_context(|| format!("writing {path:?}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_mentions() {
        assert!(mentions_line(
            "unknown field `colour` at line 9 column 1",
            9
        ));
        assert!(mentions_line("a.yaml:9:1: unknown field", 9));
        assert!(mentions_line("Line: 9", 9));
        assert!(!mentions_line("at line 19 column 1", 9));
        assert!(!mentions_line("at line 91 column 1", 9));
        assert!(!mentions_line("no location", 9));
    }
}
