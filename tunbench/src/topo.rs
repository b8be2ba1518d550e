//! Network-namespace topologies (filled in by the topo branch).
