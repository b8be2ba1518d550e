//! Network-namespace topologies: the one module that builds and tears down
//! labs (namespaces, veths, addresses, routes, sysctls, processes started
//! inside). The lab, the sweeps and every end-to-end test use it; nothing
//! else runs `ip netns` plumbing.
//!
//! - [`Lab`]: a set of namespaces named `tb<pid>x<n>-<short>`, removed on
//!   drop (also during a panic unwind), processes first.
//! - [`dc_pair`] / [`DcPair`]: the standard two-DC topology (docs/design.md).
//! - [`ha_sites`] / [`HaSites`]: two sites, each a router with N gateways
//!   (ECMP); [`hub_spokes`] / [`HubSpokes`]: a hub gateway and N spokes.
//! - [`cleanup_stale`]: removes namespaces of dead runs (our naming scheme,
//!   owner PID gone); [`Lab::new`] calls it.
//! - [`install_signal_cleanup`]: SIGINT/SIGTERM tear down all live labs.
//!
//! Plumbing shells out to iproute2 `ip`; [`Lab::run_in`] uses `setns(2)`.

mod dc;
mod error;
mod ha;
mod lab;
mod names;
mod process;
mod registry;
mod sys;

pub use dc::*;
pub use error::{Result, TopoError};
pub use ha::{ha_sites, hub_spokes, HaSite, HaSites, HubSpokes, HUB, MAX_PAIRS};
pub use lab::{Lab, KEEP_LOGS_ENV};
pub use names::{parse_ns_name, OwnedNs, IFNAME_MAX};
pub use registry::{install_signal_cleanup, live_labs, teardown_all};
pub use sys::check_privileges;

/// Removes namespaces left by crashed runs: names in our scheme
/// (`tb<pid>x<n>-...`) whose owner PID is no longer alive. Processes still
/// running inside them are killed by PID first. Names of live processes and
/// names outside the scheme are never touched. Returns the removed names.
pub fn cleanup_stale() -> Result<Vec<String>> {
    check_privileges()?;
    let me = std::process::id();
    let mut removed = Vec::new();
    for name in sys::list_netns()? {
        let Some(owner) = parse_ns_name(&name) else {
            continue;
        };
        if owner.pid == me || sys::pid_alive(owner.pid) {
            continue;
        }
        match sys::delete_netns(&name) {
            Ok(()) => removed.push(name),
            // A concurrent cleanup (another Lab::new) got there first.
            Err(_) if !sys::netns_path(&name).exists() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}
