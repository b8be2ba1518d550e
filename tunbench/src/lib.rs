//! tunbench: measure IP tunnels honestly.
