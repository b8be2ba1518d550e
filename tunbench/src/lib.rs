//! tunbench: measure IP tunnels honestly.
//!
//! - [`engine`]: the iperf3-class traffic engine (`tunbench server` / `tunbench client`).
//! - [`topo`]: network-namespace topologies.
pub mod engine;
pub mod lab;
pub mod profile_units;
pub mod sweep;
pub mod topo;
