//! The WAN link between the gateways: a plain bridge when the scenario asks
//! for nothing, netem where the kernel has it, else the userspace emulator
//! ([`crate::lab::wanemu`]) spawned as `tunbench wan-emu` in the wan
//! namespace in place of the bridge.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::error::{LabError, Result};
use super::scenario::{EmulatorChoice, Wan};
use super::wanemu::{EmuStats, LinkParams};
use crate::topo::DcPair;

/// Which emulator carries the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EmulatorKind {
    /// Plain bridge: the scenario set no rate, delay, loss or reorder.
    NoEmulation,
    /// Kernel netem (+ its rate limit) on both wan-side ports.
    Netem,
    /// `tunbench wan-emu` (AF_PACKET) in the wan namespace.
    Userspace,
}

impl EmulatorKind {
    /// Human label for reports.
    pub fn label(self) -> &'static str {
        match self {
            EmulatorKind::NoEmulation => "no emulation (plain bridge)",
            EmulatorKind::Netem => "netem (kernel)",
            EmulatorKind::Userspace => "tunbench wan-emu (userspace AF_PACKET)",
        }
    }
}

/// The running WAN emulation.
#[derive(Debug)]
pub struct WanLink {
    /// Which emulator.
    pub kind: EmulatorKind,
    /// Why netem was not used, when it was not.
    pub netem_note: Option<String>,
    /// PID of the userspace emulator.
    pub pid: Option<u32>,
    stats_file: Option<PathBuf>,
}

/// The userspace emulator's link parameters for a scenario.
pub fn link_params(w: &Wan) -> LinkParams {
    let rate = w.rate.map(|r| r.0);
    // Burst: 1 ms at the link rate, at least two full frames.
    let burst = rate.map(|r| (r / 8 / 1000).max(2 * 1514)).unwrap_or(0);
    LinkParams {
        rate,
        burst,
        queue_ns: w.queue_time().as_nanos() as u64,
        delay_ns: w.one_way().as_nanos() as u64,
        jitter_ns: w.jitter.map(|j| j.0.as_nanos() as u64).unwrap_or(0),
        loss: w.loss.unwrap_or(0.0) / 100.0,
        reorder: w.reorder.unwrap_or(0.0) / 100.0,
    }
}

fn us(d: Duration) -> String {
    format!("{}us", d.as_micros())
}

/// netem arguments for one port (egress towards a gateway).
fn netem_args(w: &Wan) -> Vec<String> {
    let mut a: Vec<String> = vec!["netem".into(), "delay".into(), us(w.one_way())];
    if let Some(j) = w.jitter.filter(|j| !j.0.is_zero()) {
        a.push(us(j.0));
    }
    if let Some(l) = w.loss.filter(|l| *l > 0.0) {
        a.extend(["loss".into(), format!("{l}%")]);
    }
    if let Some(r) = w.reorder.filter(|r| *r > 0.0) {
        a.extend(["reorder".into(), format!("{r}%")]);
    }
    if let Some(r) = w.rate {
        a.extend(["rate".into(), format!("{}bit", r.0)]);
    }
    // Room for the delay-bandwidth product plus the queue, in packets.
    let rate = w.rate.map(|r| r.0).unwrap_or(10_000_000_000) as f64;
    let secs = (w.one_way() + w.queue_time()).as_secs_f64();
    let limit = ((rate * secs / 8.0 / 1500.0) as u64).max(1000);
    a.extend(["limit".into(), limit.to_string()]);
    a
}

/// Tries netem on a port; removes it again. `Err` says why it is unusable.
fn probe_netem(dc: &DcPair, wan_ns: &str, port: &str) -> std::result::Result<(), String> {
    let args = ["qdisc", "add", "dev", port, "root", "netem", "delay", "1ms"];
    match dc.lab.exec(wan_ns, "tc", &args) {
        Ok(o) if o.status.success() => {
            let _ = dc
                .lab
                .exec(wan_ns, "tc", &["qdisc", "del", "dev", port, "root"]);
            Ok(())
        }
        Ok(o) => Err(format!(
            "kernel has no netem (`tc qdisc add ... netem`: {})",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("tc not usable: {e}")),
    }
}

impl WanLink {
    /// Sets up the emulation the scenario asks for on `dc`'s wan namespace.
    pub fn setup(dc: &DcPair, w: &Wan, tunbench: &Path, seed: u64) -> Result<WanLink> {
        let wan_ns = dc
            .wan
            .clone()
            .ok_or_else(|| LabError::Wan("the topology has no wan namespace".into()))?;
        let (port_a, port_b, br) = dc
            .wan_ifaces()
            .ok_or_else(|| LabError::Wan("no wan interfaces".into()))?;
        if !w.emulates() {
            return Ok(WanLink {
                kind: EmulatorKind::NoEmulation,
                netem_note: None,
                pid: None,
                stats_file: None,
            });
        }
        let netem = match w.emulator {
            EmulatorChoice::Userspace => Err("userspace emulator chosen by the profile".into()),
            _ => probe_netem(dc, &wan_ns, &port_a),
        };
        match (&netem, w.emulator) {
            (Ok(()), _) => {
                for port in [&port_a, &port_b] {
                    let mut args: Vec<String> = ["qdisc", "add", "dev", port.as_str(), "root"]
                        .map(String::from)
                        .to_vec();
                    args.extend(netem_args(w));
                    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                    dc.lab
                        .exec(&wan_ns, "tc", &refs)
                        .map_err(|e| LabError::Wan(e.to_string()))
                        .and_then(|o| {
                            if o.status.success() {
                                Ok(())
                            } else {
                                Err(LabError::Wan(format!(
                                    "tc {}: {}",
                                    args.join(" "),
                                    String::from_utf8_lossy(&o.stderr).trim()
                                )))
                            }
                        })?;
                }
                return Ok(WanLink {
                    kind: EmulatorKind::Netem,
                    netem_note: None,
                    pid: None,
                    stats_file: None,
                });
            }
            (Err(why), EmulatorChoice::Netem) => {
                return Err(LabError::Wan(format!(
                    "the profile asks for netem, but {why}"
                )))
            }
            _ => {}
        }
        // Userspace: the emulator replaces the bridge.
        for port in [&port_a, &port_b] {
            dc.lab.ip(&wan_ns, &["link", "set", port, "nomaster"])?;
        }
        dc.lab.ip(&wan_ns, &["link", "set", &br, "down"])?;
        let p = link_params(w);
        let stats_file = dc.lab.dir().join("wan-emu-stats.json");
        let mut cmd = Command::new(tunbench);
        cmd.arg("wan-emu")
            .args(["--if-a", &port_a, "--if-b", &port_b])
            .args(["--delay", &format!("{}ns", p.delay_ns)])
            .args(["--jitter", &format!("{}ns", p.jitter_ns)])
            .args(["--loss", &format!("{}", p.loss * 100.0)])
            .args(["--reorder", &format!("{}", p.reorder * 100.0)])
            .args(["--queue", &format!("{}ns", p.queue_ns)])
            .args(["--burst", &p.burst.to_string()])
            .args(["--seed", &seed.to_string()])
            .arg("--stats")
            .arg(&stats_file);
        if let Some(r) = p.rate {
            cmd.args(["--rate", &r.to_string()]);
        }
        let pid = dc.lab.spawn(&wan_ns, cmd)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if dc.lab.log(pid).contains("wan-emu ready") {
                break;
            }
            if let Some(st) = dc.lab.try_wait(pid)? {
                return Err(LabError::Wan(format!(
                    "tunbench wan-emu exited during start-up ({st}): {}",
                    dc.lab.log(pid).trim()
                )));
            }
            if Instant::now() > deadline {
                return Err(LabError::Wan(format!(
                    "tunbench wan-emu did not get ready within 5 s: {}",
                    dc.lab.log(pid).trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(WanLink {
            kind: EmulatorKind::Userspace,
            netem_note: netem.err(),
            pid: Some(pid),
            stats_file: Some(stats_file),
        })
    }

    /// Stops the userspace emulator and returns its counters.
    pub fn finish(&mut self, dc: &DcPair) -> Option<EmuStats> {
        let pid = self.pid.take()?;
        let _ = dc.lab.stop(pid);
        let text = std::fs::read_to_string(self.stats_file.as_ref()?).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// CPU seconds the userspace emulator used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        super::measure::cpu_seconds(self.pid?)
    }
}
