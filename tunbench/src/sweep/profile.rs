//! The sweep profile (`kind: sweep`): where to run (lab with a scenario's
//! WAN, or remote hosts), the traffic of each cell, the grid (a Cartesian
//! product or a listed set of points) and the planning targets. Strict
//! YAML: unknown fields and knobs, empty grids, zero or negative durations
//! are errors naming the field and the line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use tunneld::config::{CipherKind, TransportKind};
use tunneld::units::{parse_rate, Rate, Span};
use tunneld::yaml::{check_kind, ProfileError, ProfileKind, Quantity, Text};

use super::knobs::{
    cipher_value, transport_value, BatchV, Cell, FlowsV, Knob, MssV, MtuV, SockBufV, StreamsV,
    Value, WindowV, WorkersV,
};
use crate::lab::scenario::{de_pos_span, de_span, Scenario, SystemKind, TunneldSettings, Wan};

/// Most cells a profile may expand to (a typo guard: 1000 cells of 10 s are
/// already about 3 hours).
pub const MAX_CELLS: usize = 1000;
/// Most repeats per cell.
pub const MAX_REPEATS: u32 = 20;
/// Why a sweep profile was rejected. `Display` reads `FILE:LINE: FIELD: MESSAGE`.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The profile cannot be read, or: broken YAML, a wrong type, an unknown
    /// field or knob, a value out of range (the parser's message starts with the field path), or a rule
    /// across fields (grid and points both given, remote mode without
    /// `remote:`...).
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The referenced scenario profile is invalid.
    #[error("{file}: scenario: {source}")]
    Scenario {
        /// The sweep profile.
        file: String,
        /// The scenario's own error (boxed: it is as large as ours).
        #[source]
        source: Box<crate::lab::ScenarioError>,
    },
}

/// `kind: sweep`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SweepKind {
    /// A sweep profile.
    Sweep,
}

impl<'de> Deserialize<'de> for SweepKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Text {
            what: "the profile kind `sweep`",
            parse: |s| check_kind(s, ProfileKind::Sweep).map(|()| SweepKind::Sweep),
        })
    }
}

/// Where the sweep runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// In the namespace lab on this host, with the scenario's WAN emulation.
    #[default]
    Lab,
    /// Against real hosts: `tunbench server` and tunneld run on the far side.
    Remote,
}

/// The profile as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    /// Must be `sweep`.
    pub kind: SweepKind,
    /// Short name, used in reports.
    pub name: String,
    /// One line for humans.
    #[serde(default)]
    pub description: String,
    /// `lab` (default) or `remote`.
    #[serde(default)]
    pub mode: Mode,
    /// Lab: a scenario profile (relative to this file) giving the WAN link
    /// and tunneld's base settings. Not with `wan`.
    #[serde(default)]
    pub scenario: Option<PathBuf>,
    /// Lab: the WAN link inline (as in a scenario). Not with `scenario`.
    #[serde(default)]
    pub wan: Option<Wan>,
    /// tunneld base settings (override the scenario's).
    #[serde(default)]
    pub tunneld: Option<TunneldSettings>,
    /// Lab: systems measured once before the grid, for comparison (`raw`,
    /// `ipsec`, `wireguard-go`, `boringtun`, `openvpn`).
    #[serde(default)]
    pub baselines: Vec<SystemKind>,
    /// The traffic of each cell.
    pub test: CellTest,
    /// Knob → list of values; the sweep runs every combination.
    #[serde(default)]
    pub grid: Option<Grid>,
    /// Or: an explicit list of cells.
    #[serde(default, deserialize_with = "de_points")]
    pub points: Option<Vec<Grid1>>,
    /// Capacity-planning inputs for the report.
    #[serde(default)]
    pub planning: Planning,
    /// A device the buyer already knows (`{name: vendor-appliance, rate:
    /// 350M}`), drawn beside the measured systems in tables and charts.
    #[serde(default)]
    pub reference: Option<Reference>,
    /// Remote mode: the far side and how to reconfigure the local tunneld.
    #[serde(default)]
    pub remote: Option<Remote>,
}

/// `test:` — how each cell is measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellTest {
    /// Measured time of each repeat.
    #[serde(deserialize_with = "de_pos_span")]
    pub duration: Span,
    /// Warm-up before the measured window of each repeat (not counted).
    #[serde(default = "one_second", deserialize_with = "de_span")]
    pub warmup: Span,
    /// Measurements per cell (the cell reports medians).
    #[serde(default = "one", deserialize_with = "de_repeats")]
    pub repeats: u32,
    /// Latency probes during the load (p50/p99 under load).
    #[serde(default = "yes")]
    pub latency: bool,
    /// Gap between latency probes.
    #[serde(
        default = "ten_ms",
        deserialize_with = "de_pos_span",
        rename = "latency_interval"
    )]
    pub latency_interval: Span,
    /// TCP congestion control (e.g. `cubic`, `bbr`); default: the kernel's.
    #[serde(default)]
    pub congestion: Option<String>,
    /// Parallel streams when `streams` is not a knob.
    #[serde(default = "one", deserialize_with = "de_streams1")]
    pub streams: u32,
}

/// `planning:` — the rates the report sizes gateways for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Planning {
    /// Target rates per direction, e.g. `[2G, 10G]`.
    #[serde(default = "default_targets", deserialize_with = "de_rates")]
    pub targets: Vec<Rate>,
    /// Spare CPU kept on each gateway, percent (default 30).
    #[serde(default = "default_headroom", deserialize_with = "de_percent")]
    pub headroom: f64,
    /// Spare gateway pairs for failover on top of the pairs the target
    /// needs (default 1: N+1).
    #[serde(default = "default_spares", deserialize_with = "de_spares")]
    pub spares: u32,
    /// Run-to-run spread assumed when the sweep has one repeat per cell
    /// (cells closer than this are ties), percent (default 5).
    #[serde(default = "default_noise", deserialize_with = "de_percent")]
    pub noise: f64,
    /// A per-pair throughput measured elsewhere (e.g. on the production
    /// gateways); the plan uses it instead of the sweep's figures.
    #[serde(default, deserialize_with = "de_opt_rate")]
    pub pair_rate: Option<Rate>,
    /// Where `pair_rate` was measured (shown beside it).
    #[serde(default)]
    pub pair_rate_source: Option<String>,
}

impl Default for Planning {
    fn default() -> Self {
        Planning {
            targets: default_targets(),
            headroom: default_headroom(),
            spares: default_spares(),
            noise: default_noise(),
            pair_rate: None,
            pair_rate_source: None,
        }
    }
}

/// `reference:` — a named device and its rated throughput.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// What it is called in tables and charts.
    pub name: String,
    /// Its rated throughput (per direction), bit/s.
    #[serde(deserialize_with = "de_rate")]
    pub rate: Rate,
}

/// `remote:` — remote mode settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    /// The far host's `tunbench server` address (reached through the tunnel).
    pub server: String,
    /// Its control port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The local tunneld config file: rewritten with each cell's knobs.
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// Shell command run after the config is written (e.g. `systemctl
    /// restart tunneld`); gets the cell in `TUNBENCH_CELL` and
    /// `TUNBENCH_KNOB_<NAME>` variables.
    #[serde(default)]
    pub restart: Option<String>,
    /// Shell command printing the local tunneld's PID (for CPU figures).
    #[serde(default)]
    pub pid_command: Option<String>,
    /// Local TUN interface name, for the live throughput display.
    #[serde(default)]
    pub interface: Option<String>,
    /// Pause after the restart before measuring.
    #[serde(default = "two_seconds", deserialize_with = "de_span")]
    pub settle: Span,
}

macro_rules! grid_struct {
    ($(#[$m:meta])* $name:ident, $wrap:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// tunneld AEAD.
            #[serde(default, skip_serializing)]
            pub cipher: Option<$wrap<CipherKind>>,
            /// tunneld dataplane.offload.
            #[serde(default, skip_serializing)]
            pub offload: Option<$wrap<bool>>,
            /// tunneld dataplane.batch.
            #[serde(default, skip_serializing)]
            pub batch: Option<$wrap<BatchV>>,
            /// tunneld dataplane.workers.
            #[serde(default, skip_serializing)]
            pub workers: Option<$wrap<WorkersV>>,
            /// tunneld dataplane.flows.
            #[serde(default, skip_serializing)]
            pub flows: Option<$wrap<FlowsV>>,
            /// tunneld interface.mtu.
            #[serde(default, skip_serializing)]
            pub mtu: Option<$wrap<MtuV>>,
            /// tunneld mss_clamp.
            #[serde(default, skip_serializing)]
            pub mss_clamp: Option<$wrap<bool>>,
            /// tunneld socket_buffer.
            #[serde(default, skip_serializing)]
            pub socket_buffer: Option<$wrap<SockBufV>>,
            /// Engine TCP_MAXSEG.
            #[serde(default, skip_serializing)]
            pub mss: Option<$wrap<MssV>>,
            /// Engine socket buffer (window).
            #[serde(default, skip_serializing)]
            pub window: Option<$wrap<WindowV>>,
            /// Engine parallel streams.
            #[serde(default, skip_serializing)]
            pub streams: Option<$wrap<StreamsV>>,
            /// tunneld peers[].transport (udp, tcp, quic).
            #[serde(default, skip_serializing)]
            pub transport: Option<$wrap<TransportKind>>,
            /// tunneld dataplane.queue (fq_codel, fifo).
            #[serde(default, skip_serializing)]
            pub queue: Option<$wrap<tunneld::config::QueueKind>>,
        }

        impl $name {
            /// (knob, values) of the knobs given, in knob order.
            pub fn axes(&self) -> Vec<(Knob, Vec<Value>)> {
                let mut v = Vec::new();
                let n = |x: u64| Value::Num(x);
                if let Some(x) = &self.cipher { v.push((Knob::Cipher, x.items().map(|c| cipher_value(*c)).collect())); }
                if let Some(x) = &self.offload { v.push((Knob::Offload, x.items().map(|b| Value::Bool(*b)).collect())); }
                if let Some(x) = &self.batch { v.push((Knob::Batch, x.items().map(|b| n(b.0)).collect())); }
                if let Some(x) = &self.workers { v.push((Knob::Workers, x.items().map(|b| n(b.0)).collect())); }
                if let Some(x) = &self.flows { v.push((Knob::Flows, x.items().map(|b| n(b.0)).collect())); }
                if let Some(x) = &self.queue { v.push((Knob::Queue, x.items().map(|q| crate::sweep::knobs::queue_value(*q)).collect())); }
                if let Some(x) = &self.mtu { v.push((Knob::Mtu, x.items().map(|b| n(b.0)).collect())); }
                if let Some(x) = &self.mss_clamp { v.push((Knob::MssClamp, x.items().map(|b| Value::Bool(*b)).collect())); }
                if let Some(x) = &self.socket_buffer { v.push((Knob::SocketBuffer, x.items().map(|b| n(b.0)).collect())); }
                if let Some(x) = &self.transport { v.push((Knob::Transport, x.items().map(|t| transport_value(*t)).collect())); }
                if let Some(x) = &self.mss { v.push((Knob::Mss, x.items().map(|b| n(b.0)).collect())); }
                if let Some(x) = &self.window { v.push((Knob::Window, x.items().map(|b| n(b.0)).collect())); }
                if let Some(x) = &self.streams { v.push((Knob::Streams, x.items().map(|b| n(b.0)).collect())); }
                v
            }
        }
    };
}

grid_struct!(
    /// `grid:` — each knob with its list of values.
    Grid,
    List
);
grid_struct!(
    /// One item of `points:` — each knob with one value.
    Grid1,
    One
);

/// A non-empty list of distinct values (checked while read, so errors carry
/// the knob's field path and line).
#[derive(Debug, Clone)]
pub struct List<T>(pub Vec<T>);
/// A single value.
#[derive(Debug, Clone)]
pub struct One<T>(pub T);

impl<T> List<T> {
    fn items(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }
}
impl<T> One<T> {
    fn items(&self) -> impl Iterator<Item = &T> {
        std::iter::once(&self.0)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for One<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(One)
    }
}

struct ListVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de> + std::fmt::Debug + PartialEq> Visitor<'de> for ListVisitor<T> {
    type Value = List<T>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of values such as [16, 64]")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List<T>, A::Error> {
        let mut out: Vec<T> = Vec::new();
        while let Some(x) = seq.next_element::<T>()? {
            if out.contains(&x) {
                return Err(de::Error::custom(format!("{x:?} is listed twice")));
            }
            out.push(x);
        }
        if out.is_empty() {
            return Err(de::Error::custom(
                "empty list: give at least one value (or leave the knob out)",
            ));
        }
        Ok(List(out))
    }
}

impl<'de, T: Deserialize<'de> + std::fmt::Debug + PartialEq> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(ListVisitor(std::marker::PhantomData))
    }
}

fn de_points<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Grid1>>, D::Error> {
    let v = Vec::<Grid1>::deserialize(d)?;
    if v.is_empty() {
        return Err(de::Error::custom("empty list: give at least one point"));
    }
    Ok(Some(v))
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn one_second() -> Span {
    Span(Duration::from_secs(1))
}
fn two_seconds() -> Span {
    Span(Duration::from_secs(2))
}
fn ten_ms() -> Span {
    Span(Duration::from_millis(10))
}
fn default_port() -> u16 {
    crate::engine::DEFAULT_PORT
}
fn default_targets() -> Vec<Rate> {
    vec![Rate(2_000_000_000), Rate(10_000_000_000)]
}
fn default_headroom() -> f64 {
    30.0
}
fn default_spares() -> u32 {
    1
}
/// Spread assumed with one repeat: single runs of a TCP test on an idle
/// host typically differ by a few percent.
fn default_noise() -> f64 {
    5.0
}
/// Most spare pairs (a typo guard: more spares than this is a different
/// design, not a failover margin).
pub const MAX_SPARES: u32 = 8;
fn de_spares<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    d.deserialize_any(Quantity {
        what: "a number of spare gateway pairs (0 or more)",
        parse: |s| {
            let n: i64 = s
                .trim()
                .parse()
                .map_err(|_| format!("'{s}' is not a whole number"))?;
            if n < 0 || n > i64::from(MAX_SPARES) {
                return Err(format!("{n} is out of range 0..={MAX_SPARES}"));
            }
            Ok(n as u32)
        },
    })
}
fn de_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
    PosRate::deserialize(d).map(|r| Rate(r.0))
}
fn de_opt_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Rate>, D::Error> {
    de_rate(d).map(Some)
}

fn de_repeats<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    d.deserialize_any(Quantity {
        what: "a number of repeats (1 or more)",
        parse: |s| {
            let n: i64 = s
                .trim()
                .parse()
                .map_err(|_| format!("'{s}' is not a whole number"))?;
            if n < 1 || n > i64::from(MAX_REPEATS) {
                return Err(format!("{n} is out of range 1..={MAX_REPEATS}"));
            }
            Ok(n as u32)
        },
    })
}
fn de_streams1<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    StreamsV::deserialize(d).map(|s| s.0 as u32)
}
fn de_percent<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(Quantity {
        what: "a percentage such as 30%",
        parse: crate::lab::scenario::parse_percent,
    })
}

/// A target rate inside `planning.targets`.
#[derive(Debug, PartialEq)]
struct PosRate(u64);
impl<'de> Deserialize<'de> for PosRate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Quantity {
            what: "a rate such as 2G",
            parse: |s| match parse_rate(s) {
                Ok(0) => Err("must be greater than zero".into()),
                Ok(r) => Ok(PosRate(r)),
                Err(e) => Err(e.to_string()),
            },
        })
    }
}
fn de_rates<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Rate>, D::Error> {
    let l: List<PosRate> = List::deserialize(d)?;
    Ok(l.0.into_iter().map(|r| Rate(r.0)).collect())
}

/// A checked profile, ready to run.
#[derive(Debug, Clone)]
pub struct SweepProfile {
    /// The file as written.
    pub file: SweepFile,
    /// The profile's own text (stored with the results).
    pub text: String,
    /// The lab scenario: the referenced one, or one made from `wan:`.
    pub scenario: Scenario,
    /// The cells, in run order.
    pub cells: Vec<Cell>,
    /// The knobs that vary (grid axes, or knobs set by any point).
    pub knobs: Vec<Knob>,
}

impl SweepProfile {
    /// Reads and checks a profile file (a referenced scenario is read
    /// relative to the profile's directory).
    pub fn load(path: &Path) -> Result<SweepProfile, SweepError> {
        let file = path.display().to_string();
        let text = ProfileError::read(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        SweepProfile::parse(&text, &file, base)
    }

    /// Parses and checks profile text; `file` names it in errors, `base` is
    /// where a relative `scenario:` path starts.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<SweepProfile, SweepError> {
        use crate::profile_units::{check, SWEEP_FIELDS};
        let invalid = |field: &str, message: String| -> SweepError {
            ProfileError::invalid(Some(text), file, field, message).into()
        };
        check(text, SWEEP_FIELDS).map_err(|p| invalid(&p.field, p.message))?;
        let f: SweepFile = serde_norway::from_str(text)
            .map_err(|e| SweepError::from(ProfileError::from_yaml(&e, file)))?;
        if f.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty".into()));
        }
        if let Some(r) = &f.reference {
            if r.name.trim().is_empty() {
                return Err(invalid("reference.name", "must not be empty".into()));
            }
        }
        if f.planning.pair_rate_source.is_some() && f.planning.pair_rate.is_none() {
            return Err(invalid(
                "planning.pair_rate_source",
                "describes `pair_rate`, which is not given".into(),
            ));
        }
        let (cells, knobs): (Vec<Cell>, Vec<Knob>) = match (&f.grid, &f.points) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "points",
                    "give either `grid` (every combination) or `points` (a list), not both".into(),
                ))
            }
            (None, None) => {
                return Err(invalid(
                    "grid",
                    "missing: give `grid:` (knob: [values]) or `points:`".into(),
                ))
            }
            (Some(g), None) => {
                let axes = g.axes();
                if axes.is_empty() {
                    return Err(invalid(
                        "grid",
                        format!(
                            "empty grid: list at least one knob ({})",
                            super::knobs::ALL.map(|k| k.as_str()).join(", ")
                        ),
                    ));
                }
                let total: usize = axes.iter().map(|(_, v)| v.len()).product();
                if total > MAX_CELLS {
                    return Err(invalid(
                        "grid",
                        format!("{total} cells is more than the limit of {MAX_CELLS}"),
                    ));
                }
                (product(&axes), axes.iter().map(|(k, _)| *k).collect())
            }
            (None, Some(points)) => {
                let mut cells = Vec::new();
                let mut keys = BTreeSet::new();
                let mut knobs = BTreeSet::new();
                for (i, p) in points.iter().enumerate() {
                    let mut c = Cell::default();
                    for (k, mut v) in p.axes() {
                        if let Some(x) = v.pop() {
                            c.knobs.insert(k, x);
                            knobs.insert(k);
                        }
                    }
                    if !keys.insert(c.key()) {
                        return Err(invalid(
                            "points",
                            format!("point {} ({}) is listed twice", i + 1, c.key()),
                        ));
                    }
                    cells.push(c);
                }
                if cells.len() > MAX_CELLS {
                    return Err(invalid(
                        "points",
                        format!(
                            "{} points is more than the limit of {MAX_CELLS}",
                            cells.len()
                        ),
                    ));
                }
                (cells, knobs.into_iter().collect())
            }
        };
        if let Some(cc) = &f.test.congestion {
            if cc.is_empty() || !cc.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(invalid(
                    "test.congestion",
                    format!("\"{cc}\" is not a congestion control name (e.g. cubic, bbr)"),
                ));
            }
        }
        if f.test.duration.0 < crate::engine::spec::MIN_TIME {
            return Err(invalid(
                "test.duration",
                format!(
                    "{:?} is shorter than the engine's minimum {:?}",
                    f.test.duration.0,
                    crate::engine::spec::MIN_TIME
                ),
            ));
        }
        if f.baselines.iter().any(|b| b.tunneld_transport().is_some()) {
            return Err(invalid(
                "baselines",
                "tunneld is what the grid measures (its transports with the `transport` knob); \
                 list only raw, ipsec, ipsec-kernel, wireguard-go, boringtun, gotatun, \
                 wireguard-kernel, openvpn"
                    .into(),
            ));
        }
        if f.scenario.is_some() && f.wan.is_some() {
            return Err(invalid(
                "wan",
                "give either `scenario` (a scenario profile) or `wan` (inline), not both".into(),
            ));
        }
        match (f.mode, &f.remote) {
            (Mode::Remote, None) => {
                return Err(invalid(
                    "mode",
                    "`mode: remote` needs a `remote:` section".into(),
                ))
            }
            (Mode::Lab, Some(_)) => {
                return Err(invalid("remote", "only used with `mode: remote`".into()))
            }
            (Mode::Remote, Some(r)) => {
                let tunneld_knobs: Vec<&str> = knobs
                    .iter()
                    .filter(|k| k.is_tunneld())
                    .map(|k| k.as_str())
                    .collect();
                if !tunneld_knobs.is_empty() && (r.config.is_none() || r.restart.is_none()) {
                    return Err(invalid(
                        "remote",
                        format!(
                            "knobs {} reconfigure tunneld: give `remote.config` (the local tunneld \
                             config file) and `remote.restart` (the command that restarts it)",
                            tunneld_knobs.join(", ")
                        ),
                    ));
                }
                if knobs.contains(&Knob::Transport) {
                    let field = if f.grid.is_some() {
                        "grid.transport"
                    } else {
                        "points"
                    };
                    return Err(invalid(
                        field,
                        "remote mode rewrites only the local tunneld config, but a transport \
                         change (and QUIC's certificates and pins) must reach both gateways; \
                         sweep transports in lab mode"
                            .into(),
                    ));
                }
                if r.server.trim().is_empty() {
                    return Err(invalid("remote.server", "must not be empty".into()));
                }
                if !f.baselines.is_empty() {
                    return Err(invalid("baselines", "only measured in lab mode".into()));
                }
            }
            (Mode::Lab, None) => {}
        }
        let mut scenario = match &f.scenario {
            Some(p) => {
                let path = if p.is_absolute() {
                    p.clone()
                } else {
                    base.join(p)
                };
                Scenario::load(&path).map_err(|source| SweepError::Scenario {
                    file: file.to_string(),
                    source: Box::new(source),
                })?
            }
            None => {
                let inline = format!(
                    "kind: scenario\nname: {}\nsystems: [tunneld]\ntest: {{streams: [1], duration: 1s}}\n",
                    serde_json::to_string(&f.name).unwrap_or_else(|_| "sweep".into())
                );
                let mut s =
                    Scenario::parse(&inline, file).map_err(|source| SweepError::Scenario {
                        file: file.to_string(),
                        source: Box::new(source),
                    })?;
                s.wan = f.wan.clone().unwrap_or_default();
                s
            }
        };
        if let Some(t) = &f.tunneld {
            scenario.tunneld = t.clone();
        }
        Ok(SweepProfile {
            text: text.to_string(),
            file: f,
            scenario,
            cells,
            knobs,
        })
    }

    /// Rough wall time of the whole sweep.
    pub fn estimated_time(&self) -> Duration {
        let t = &self.file.test;
        let per_cell = (t.duration.0 + t.warmup.0 + Duration::from_secs(1)) * t.repeats
            + Duration::from_secs(2);
        per_cell * self.cells.len() as u32
    }
}

/// The Cartesian product of the axes, the last axis varying fastest.
fn product(axes: &[(Knob, Vec<Value>)]) -> Vec<Cell> {
    let mut cells = vec![Cell::default()];
    for (k, values) in axes {
        let mut next = Vec::with_capacity(cells.len() * values.len());
        for c in &cells {
            for v in values {
                let mut c = c.clone();
                c.knobs.insert(*k, v.clone());
                next.push(c);
            }
        }
        cells = next;
    }
    cells
}

#[cfg(test)]
#[path = "profile_tests.rs"]
mod tests;
