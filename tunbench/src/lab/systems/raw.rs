//! `raw`: the LANs routed across the underlay with no tunnel — the ceiling.

use super::{ip_quiet, Ctx, NotRun, Running};
use crate::topo::{DcPair, LAN_A_V4, LAN_A_V6, LAN_B_V4, LAN_B_V6};

/// Routes installed by [`DcPair::route_lans_directly`].
#[derive(Debug)]
pub struct Raw;

impl Raw {
    /// Installs the direct routes.
    pub fn start(ctx: &Ctx) -> Result<Raw, NotRun> {
        ctx.dc
            .route_lans_directly()
            .map_err(|e| NotRun::Failed(e.to_string()))?;
        Ok(Raw)
    }
}

/// Removes the direct LAN routes again.
pub fn unroute(dc: &DcPair) {
    ip_quiet(dc, &dc.gw_a, &["route", "del", LAN_B_V4]);
    ip_quiet(dc, &dc.gw_a, &["-6", "route", "del", LAN_B_V6]);
    ip_quiet(dc, &dc.gw_b, &["route", "del", LAN_A_V4]);
    ip_quiet(dc, &dc.gw_b, &["-6", "route", "del", LAN_A_V6]);
}

impl Running for Raw {
    fn variant(&self) -> String {
        "routed, no tunnel".into()
    }
    fn pids(&self) -> Vec<u32> {
        Vec::new()
    }
    fn cpu_note(&self) -> Option<String> {
        Some("kernel".into())
    }
    fn stop(&mut self, dc: &DcPair) {
        unroute(dc);
    }
}
