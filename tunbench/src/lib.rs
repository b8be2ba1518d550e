//! tunbench: measure IP tunnels honestly.
pub mod topo;
