//! `tunbench lab`: the WAN testbed. Builds host-a ─ gw-a ═ wan ═ gw-b ─ host-b
//! ([`crate::topo::dc_pair`]), emulates the WAN link ([`wan`], [`wanemu`]),
//! brings up each compared system in turn ([`systems`]), measures it with the
//! traffic engine ([`measure`]) and writes the comparison ([`report`]).

pub mod scenario;
pub mod wanemu;

pub use scenario::{Scenario, ScenarioError, SystemKind};
