//! The error type of the topology module: one variant per way building or
//! tearing down a lab can fail, each carrying enough text to act on.

use std::io;

/// Result alias for [`crate::topo`].
pub type Result<T> = std::result::Result<T, TopoError>;

/// Everything that can go wrong while building, using or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum TopoError {
    /// The process lacks the privileges needed to create network namespaces
    /// (root, or CAP_NET_ADMIN + CAP_SYS_ADMIN for the `/run/netns` mounts).
    #[error("tunbench lab needs root (CAP_NET_ADMIN) to create network namespaces")]
    NotRoot,
    /// The iproute2 `ip` binary is not on `PATH`.
    #[error(
        "iproute2 `ip` was not found in PATH; install iproute2 (e.g. `apt-get install iproute2`)"
    )]
    IpMissing,
    /// An `ip` invocation exited non-zero; carries its arguments and stderr.
    #[error("`ip {args}` failed ({status}): {stderr}")]
    Ip {
        /// The arguments passed to `ip`, space-joined.
        args: String,
        /// The exit status as text.
        status: String,
        /// What `ip` wrote on stderr, trimmed.
        stderr: String,
    },
    /// A namespace, interface or tag name that cannot be used (empty, too
    /// long for the kernel's limits, or containing unsafe characters).
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The offending name.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A namespace name was added twice to the same lab.
    #[error("namespace {0:?} already exists in this lab")]
    DuplicateNamespace(String),
    /// The namespace passed in was not created by this lab; a lab only
    /// touches its own namespaces.
    #[error("namespace {0:?} does not belong to this lab")]
    UnknownNamespace(String),
    /// The PID was not spawned by this lab, or has already been stopped.
    #[error("process {0} was not spawned by this lab (or was already stopped)")]
    UnknownProcess(u32),
    /// `setns(2)` into a lab namespace failed.
    #[error("entering network namespace {ns:?} failed: {source}")]
    Setns {
        /// The full namespace name.
        ns: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Any other I/O failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What the module was doing.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The lab has already been torn down (e.g. by the signal handler).
    #[error("lab {0} has already been torn down")]
    TornDown(String),
}

impl TopoError {
    /// Wraps an I/O error with context.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        TopoError::Io {
            context: context.into(),
            source,
        }
    }
}
