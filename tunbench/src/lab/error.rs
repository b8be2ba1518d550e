//! The lab's error type: what can stop a whole `tunbench lab` run. A system
//! that cannot run is not an error: its row carries the reason instead.

/// Why a lab run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Building or using the namespaces failed (not root, `ip` missing, ...).
    #[error(transparent)]
    Topo(#[from] crate::topo::TopoError),
    /// The scenario profile is invalid.
    #[error(transparent)]
    Scenario(#[from] crate::lab::scenario::ScenarioError),
    /// The WAN emulation could not be set up or verified.
    #[error("WAN emulation: {0}")]
    Wan(String),
    /// A file or process operation failed, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What the lab was doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The gateway-pair (HA) lab could not be built or a step of it failed.
    #[error("HA lab: {0}")]
    Ha(String),
    /// A binary the lab needs (tunbench itself, tunneld) was not found.
    #[error("{0}")]
    Missing(String),
}

impl LabError {
    /// Wraps an I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result alias of the lab.
pub type Result<T> = std::result::Result<T, LabError>;
