//! The scenario profile (`kind: scenario`): the emulated WAN link, which
//! systems to compare, the traffic to run and tunneld's settings. Strict
//! YAML: unknown fields, zero or negative quantities and impossible
//! combinations are errors that name the field and the line.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use tunneld::config::CipherKind;
use tunneld::units::{parse_duration, parse_rate, parse_size, Rate, Size, Span};
use tunneld::yaml::{check_kind, ProfileError, ProfileKind, Quantity, Text};

/// The built-in quick scenario (`tunbench lab` without `--profile`).
pub const QUICK_PROFILE: &str = include_str!("../../../profiles/lab-quick.yaml");

/// Most streams a profile may ask for (the engine's own limit is higher; more
/// streams than this on a 2-core lab only measure scheduler noise).
pub const MAX_STREAMS: u32 = 64;
/// Most repeats (each repeat runs every system once).
pub const MAX_REPEATS: u32 = 100;

/// Why a profile was rejected: the shared profile error, whose `Display`
/// reads `FILE:LINE:COLUMN: FIELD: MESSAGE`.
pub type ScenarioError = ProfileError;

/// `kind: scenario` (the only kind tunbench lab reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A lab scenario.
    Scenario,
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Text {
            what: "the profile kind `scenario`",
            parse: |s| check_kind(s, ProfileKind::Scenario).map(|()| Kind::Scenario),
        })
    }
}

/// A system compared in the lab (one row of the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SystemKind {
    /// Routed, no tunnel: the ceiling.
    #[serde(rename = "raw")]
    Raw,
    /// IPsec: kernel ESP (static SAs) or strongSwan with kernel-libipsec.
    #[serde(rename = "ipsec")]
    Ipsec,
    /// wireguard-go (userspace WireGuard).
    #[serde(rename = "wireguard-go")]
    WireguardGo,
    /// boringtun (Cloudflare's userspace WireGuard, `boringtun-cli`).
    #[serde(rename = "boringtun")]
    Boringtun,
    /// GotaTun (Mullvad's boringtun fork with UDP GRO and batching,
    /// `gotatun` from `cargo install gotatun-cli`).
    #[serde(rename = "gotatun")]
    Gotatun,
    /// Kernel WireGuard (`ip link add type wireguard`, configured with `wg`):
    /// a reference row, the ceiling of a kernel WireGuard data path.
    #[serde(rename = "wireguard-kernel")]
    WireguardKernel,
    /// Kernel ESP only (static `ip xfrm` SAs, AES-256-GCM): a reference row;
    /// unlike `ipsec` it never falls back to userspace strongSwan.
    #[serde(rename = "ipsec-kernel")]
    IpsecKernel,
    /// OpenVPN 2.6 over UDP, AES-256-GCM, TLS mode (no DCO).
    #[serde(rename = "openvpn")]
    Openvpn,
    /// tunneld with the profile's settings, over UDP.
    #[serde(rename = "tunneld")]
    Tunneld,
    /// tunneld with the profile's settings, every peer on `transport: tcp`.
    #[serde(rename = "tunneld-tcp")]
    TunneldTcp,
    /// tunneld with the profile's settings, every peer on `transport: quic`
    /// (certificates generated per run).
    #[serde(rename = "tunneld-quic")]
    TunneldQuic,
}

impl SystemKind {
    /// The profile spelling, also the row name.
    pub fn as_str(self) -> &'static str {
        match self {
            SystemKind::Raw => "raw",
            SystemKind::Ipsec => "ipsec",
            SystemKind::WireguardGo => "wireguard-go",
            SystemKind::Boringtun => "boringtun",
            SystemKind::Gotatun => "gotatun",
            SystemKind::WireguardKernel => "wireguard-kernel",
            SystemKind::IpsecKernel => "ipsec-kernel",
            SystemKind::Openvpn => "openvpn",
            SystemKind::Tunneld => "tunneld",
            SystemKind::TunneldTcp => "tunneld-tcp",
            SystemKind::TunneldQuic => "tunneld-quic",
        }
    }

    /// The tunneld transport of a tunneld row; `None` for the other systems.
    pub fn tunneld_transport(self) -> Option<tunneld::config::TransportKind> {
        use tunneld::config::TransportKind;
        match self {
            SystemKind::Tunneld => Some(TransportKind::Udp),
            SystemKind::TunneldTcp => Some(TransportKind::Tcp),
            SystemKind::TunneldQuic => Some(TransportKind::Quic),
            SystemKind::Raw
            | SystemKind::Ipsec
            | SystemKind::WireguardGo
            | SystemKind::Boringtun
            | SystemKind::Gotatun
            | SystemKind::WireguardKernel
            | SystemKind::IpsecKernel
            | SystemKind::Openvpn => None,
        }
    }
}

impl fmt::Display for SystemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which WAN emulator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmulatorChoice {
    /// netem where the kernel has it, else the userspace emulator.
    #[default]
    Auto,
    /// netem only (the run fails where the kernel lacks it).
    Netem,
    /// The userspace AF_PACKET emulator even where netem exists.
    Userspace,
}

/// The whole profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Must be `scenario`.
    pub kind: Kind,
    /// Short name, used in reports.
    pub name: String,
    /// One line for humans.
    #[serde(default)]
    pub description: String,
    /// The emulated WAN link.
    #[serde(default)]
    pub wan: Wan,
    /// Rows of the comparison, in this order.
    #[serde(deserialize_with = "de_systems")]
    pub systems: Vec<System>,
    /// The traffic.
    pub test: TestPlan,
    /// tunneld's settings for the `tunneld` row.
    #[serde(default)]
    pub tunneld: TunneldSettings,
    /// Several gateway pairs with BGP and ECMP instead of the comparison
    /// (docs/ha.md): throughput per pair count, failover, drain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<crate::lab::ha::HaPlan>,
}

/// `wan:` — the emulated link between the gateways.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wan {
    /// Link rate (each direction); absent = no rate limit.
    #[serde(default, deserialize_with = "de_opt_pos_rate")]
    pub rate: Option<Rate>,
    /// Round-trip delay added by the link (half each way). Not with `delay`.
    #[serde(default, deserialize_with = "de_opt_span")]
    pub rtt: Option<Span>,
    /// One-way delay (each direction). Not with `rtt`.
    #[serde(default, deserialize_with = "de_opt_span")]
    pub delay: Option<Span>,
    /// Random variation added to each packet's one-way delay (uniform ±).
    #[serde(default, deserialize_with = "de_opt_span")]
    pub jitter: Option<Span>,
    /// Random loss, percent (`0.1%` or `0.1`), each direction.
    #[serde(default, deserialize_with = "de_opt_percent")]
    pub loss: Option<f64>,
    /// Share of packets sent at once, skipping the delay (reordering), percent.
    #[serde(default, deserialize_with = "de_opt_percent")]
    pub reorder: Option<f64>,
    /// Queue in front of the rate limit, as time at the link rate (default 50ms).
    #[serde(default, deserialize_with = "de_opt_pos_span")]
    pub queue: Option<Span>,
    /// Which emulator.
    #[serde(default)]
    pub emulator: EmulatorChoice,
}

/// `test:` — what each system is measured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestPlan {
    /// Stream counts to run, e.g. `[1, 4]` (each ≥ 1).
    #[serde(deserialize_with = "de_streams")]
    pub streams: Vec<u32>,
    /// Measured time of each test.
    #[serde(deserialize_with = "de_pos_span")]
    pub duration: Span,
    /// Warm-up before the measured window (not counted).
    #[serde(default, deserialize_with = "de_span")]
    pub omit: Span,
    /// How many times each system is measured (systems alternate).
    #[serde(default = "one", deserialize_with = "de_repeats")]
    pub repeats: u32,
    /// Idle latency probing before the load (0 = no latency probes).
    #[serde(default = "default_latency_idle", deserialize_with = "de_span")]
    pub latency_idle: Span,
    /// Gap between latency probes.
    #[serde(default = "default_latency_interval", deserialize_with = "de_pos_span")]
    pub latency_interval: Span,
    /// TCP congestion control (e.g. `cubic`, `bbr`); default: the kernel's.
    #[serde(default)]
    pub congestion: Option<String>,
    /// Socket buffer (SO_SNDBUF/SO_RCVBUF) for the data sockets; default: autotuning.
    #[serde(default, deserialize_with = "de_opt_pos_size")]
    pub window: Option<Size>,
}

/// `tunneld:` — the settings of the tunneld row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunneldSettings {
    /// AEAD.
    #[serde(default)]
    pub cipher: CipherKind,
    /// Tunnel MTU.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// UDP socket buffer.
    #[serde(default, deserialize_with = "de_opt_pos_size")]
    pub socket_buffer: Option<Size>,
    /// TCP MSS clamping.
    #[serde(default = "yes")]
    pub mss_clamp: bool,
    /// Data-path knobs (offload, batch, workers, flows), as in the tunneld config.
    #[serde(default)]
    pub dataplane: tunneld::config::DataplaneFile,
}

impl Default for TunneldSettings {
    fn default() -> Self {
        TunneldSettings {
            cipher: CipherKind::default(),
            mtu: default_mtu(),
            socket_buffer: None,
            mss_clamp: true,
            dataplane: tunneld::config::DataplaneFile::default(),
        }
    }
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn default_mtu() -> u16 {
    tunneld::config::DEFAULT_MTU
}
fn default_latency_idle() -> Span {
    Span(Duration::from_secs(1))
}
fn default_latency_interval() -> Span {
    Span(Duration::from_millis(10))
}

impl Wan {
    /// One-way delay per direction (from `rtt`/2 or `delay`).
    pub fn one_way(&self) -> Duration {
        match (self.delay, self.rtt) {
            (Some(d), _) => d.0,
            (None, Some(r)) => r.0 / 2,
            (None, None) => Duration::ZERO,
        }
    }

    /// True if anything beyond a plain bridge is asked for.
    pub fn emulates(&self) -> bool {
        self.rate.is_some()
            || !self.one_way().is_zero()
            || self.jitter.is_some_and(|j| !j.0.is_zero())
            || self.loss.is_some_and(|l| l > 0.0)
            || self.reorder.is_some_and(|r| r > 0.0)
    }

    /// The queue in front of the rate limit (default 50 ms).
    pub fn queue_time(&self) -> Duration {
        self.queue.map(|q| q.0).unwrap_or(Duration::from_millis(50))
    }
}

impl Scenario {
    /// The built-in quick scenario.
    pub fn quick() -> Result<Scenario, ScenarioError> {
        Scenario::parse(QUICK_PROFILE, "lab-quick.yaml (built in)")
    }

    /// Reads and checks a profile file.
    pub fn load(path: &std::path::Path) -> Result<Scenario, ScenarioError> {
        let text = ProfileError::read(path)?;
        Scenario::parse(&text, &path.display().to_string())
    }

    /// Parses and checks profile text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Scenario, ScenarioError> {
        use crate::profile_units::{check, SCENARIO_FIELDS};
        let invalid =
            |field: &str, message: String| ProfileError::invalid(Some(text), file, field, message);
        check(text, SCENARIO_FIELDS).map_err(|p| invalid(&p.field, p.message))?;
        let s: Scenario =
            serde_norway::from_str(text).map_err(|e| ProfileError::from_yaml(&e, file))?;
        if s.wan.rtt.is_some() && s.wan.delay.is_some() {
            return Err(invalid(
                "wan.delay",
                "give either `rtt` (round trip) or `delay` (one way), not both".into(),
            ));
        }
        if s.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty".into()));
        }
        if let Some(j) = s.wan.jitter {
            if j.0 > s.wan.one_way() && !j.0.is_zero() {
                return Err(invalid(
                    "wan.jitter",
                    format!(
                        "{:?} is larger than the one-way delay {:?}; a packet cannot leave before it arrives",
                        j.0,
                        s.wan.one_way()
                    ),
                ));
            }
        }
        if !tunneld::config::MTU_RANGE.contains(&s.tunneld.mtu) {
            return Err(invalid(
                "tunneld.mtu",
                format!(
                    "{} is out of range {}..={}",
                    s.tunneld.mtu,
                    tunneld::config::MTU_RANGE.start(),
                    tunneld::config::MTU_RANGE.end()
                ),
            ));
        }
        if let Some(b) = s.tunneld.socket_buffer {
            if !tunneld::config::SOCKET_BUFFER_RANGE.contains(&b.0) {
                return Err(invalid(
                    "tunneld.socket_buffer",
                    format!("{} bytes is out of range 64K..=1G", b.0),
                ));
            }
        }
        let dp = &s.tunneld.dataplane;
        for (field, v, range) in [
            (
                "tunneld.dataplane.batch",
                dp.batch,
                tunneld::config::BATCH_RANGE,
            ),
            (
                "tunneld.dataplane.workers",
                dp.workers,
                tunneld::config::WORKERS_RANGE,
            ),
            (
                "tunneld.dataplane.flows",
                dp.flows,
                tunneld::config::FLOWS_RANGE,
            ),
        ] {
            if !range.contains(&v) {
                return Err(invalid(
                    field,
                    format!("{v} is out of range {}..={}", range.start(), range.end()),
                ));
            }
        }
        if s.test.duration.0 < crate::engine::spec::MIN_TIME {
            return Err(invalid(
                "test.duration",
                format!(
                    "{:?} is shorter than the engine's minimum {:?}",
                    s.test.duration.0,
                    crate::engine::spec::MIN_TIME
                ),
            ));
        }
        if let Some(ha) = &s.ha {
            if s.systems != [SystemKind::Tunneld] {
                return Err(invalid(
                    "systems",
                    "an `ha:` scenario measures tunneld gateway pairs: systems must be [tunneld]"
                        .into(),
                ));
            }
            if s.wan.emulates() {
                return Err(invalid(
                    "wan",
                    "the gateway-pair lab has no WAN emulation yet; use `wan: {}`".into(),
                ));
            }
            if let Err((field, message)) = ha.check() {
                return Err(invalid(&field, message));
            }
        }
        if let Err((item, message)) = check_rows(&s.systems) {
            let field = item.map_or("systems".to_string(), |i| format!("systems[{i}]"));
            return Err(invalid(&field, message));
        }
        if let Some(cc) = &s.test.congestion {
            if cc.is_empty() || !cc.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(invalid(
                    "test.congestion",
                    format!("\"{cc}\" is not a congestion control name (e.g. cubic, bbr)"),
                ));
            }
        }
        Ok(s)
    }

    /// Rough wall time of one run (for progress messages).
    pub fn estimated_time(&self) -> Duration {
        if let Some(ha) = &self.ha {
            let per_test = self.test.duration.0 + self.test.omit.0 + Duration::from_secs(3);
            let drain = ha
                .drain
                .as_ref()
                .map_or(Duration::ZERO, |d| d.duration.0 * 2);
            return per_test * (ha.pairs as u32 * self.test.repeats)
                + ha.failover.duration.0
                + drain
                + Duration::from_secs(15);
        }
        let per_test = self.test.duration.0 + self.test.omit.0 + Duration::from_secs(1);
        let per_system = per_test * self.test.streams.len() as u32
            + self.test.latency_idle.0
            + Duration::from_secs(3);
        per_system * self.systems.len() as u32 * self.test.repeats + Duration::from_secs(10)
    }
}

// ---- deserialize_with helpers: each rule runs inside a visitor so that the
// parser attaches the field path and line of the offending value. ----

fn pos_rate(s: &str) -> Result<Rate, String> {
    match parse_rate(s) {
        Ok(0) => Err("must be greater than zero (leave `rate` out for no limit)".into()),
        Ok(r) => Ok(Rate(r)),
        Err(e) => Err(e.to_string()),
    }
}
fn span(s: &str) -> Result<Span, String> {
    if s.trim_start().starts_with('-') {
        return Err(format!("'{s}' must not be negative"));
    }
    parse_duration(s).map(Span).map_err(|e| e.to_string())
}
fn pos_span(s: &str) -> Result<Span, String> {
    match span(s)? {
        Span(d) if d.is_zero() => Err("must be greater than zero".into()),
        d => Ok(d),
    }
}
fn pos_size(s: &str) -> Result<Size, String> {
    match parse_size(s) {
        Ok(0) => Err("must be greater than zero".into()),
        Ok(v) => Ok(Size(v)),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses a percentage: `0.1%`, `0.1` (percent), in 0..100.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let num = t.strip_suffix('%').unwrap_or(t).trim();
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a percentage such as 0.1% or 0.1"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("'{s}' must not be negative"));
    }
    if v >= 100.0 {
        return Err(format!("'{s}' must be below 100%"));
    }
    Ok(v)
}

fn de_opt_pos_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Rate>, D::Error> {
    d.deserialize_any(Quantity {
        what: "a rate such as 350M or 1G",
        parse: pos_rate,
    })
    .map(Some)
}
fn de_opt_span<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Span>, D::Error> {
    de_span(d).map(Some)
}
fn de_opt_pos_span<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Span>, D::Error> {
    de_pos_span(d).map(Some)
}
/// A duration of a profile (scenario or sweep), zero allowed.
pub(crate) fn de_span<'de, D: Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
    d.deserialize_any(Quantity {
        what: "a duration such as 10ms or 2s",
        parse: span,
    })
}
/// A duration of a profile (scenario or sweep) above zero.
pub(crate) fn de_pos_span<'de, D: Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
    d.deserialize_any(Quantity {
        what: "a duration such as 10ms or 2s",
        parse: pos_span,
    })
}
fn de_opt_pos_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Size>, D::Error> {
    d.deserialize_any(Quantity {
        what: "a size such as 256K or 4M",
        parse: pos_size,
    })
    .map(Some)
}
fn de_opt_percent<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    d.deserialize_any(Quantity {
        what: "a percentage such as 0.1%",
        parse: parse_percent,
    })
    .map(Some)
}

fn count(s: &str, max: u32) -> Result<u32, String> {
    let v: i64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    if v < 1 {
        return Err(format!("{v} must be at least 1"));
    }
    if v > i64::from(max) {
        return Err(format!("{v} is above the maximum of {max}"));
    }
    Ok(v as u32)
}

fn de_repeats<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    d.deserialize_any(Quantity {
        what: "a number of repeats (1 or more)",
        parse: |s| count(s, MAX_REPEATS),
    })
}

/// Visits a sequence of unique items (checked while the sequence is read, so
/// errors carry the sequence's field path and line).
struct UniqueList<T> {
    what: &'static str,
    empty: &'static str,
    _t: std::marker::PhantomData<T>,
}

impl<'de, T: Deserialize<'de> + PartialEq + fmt::Debug> Visitor<'de> for UniqueList<T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out: Vec<T> = Vec::new();
        while let Some(item) = seq.next_element::<T>()? {
            if out.contains(&item) {
                return Err(de::Error::custom(format!("{item:?} is listed twice")));
            }
            out.push(item);
        }
        if out.is_empty() {
            return Err(de::Error::custom(self.empty));
        }
        Ok(out)
    }
}

/// One stream count inside `streams: [..]`.
#[derive(Debug, PartialEq)]
struct StreamCount(u32);

impl<'de> Deserialize<'de> for StreamCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Quantity {
            what: "a stream count (1 or more)",
            parse: |s| count(s, MAX_STREAMS),
        })
        .map(StreamCount)
    }
}

fn de_streams<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    let v = d.deserialize_seq(UniqueList::<StreamCount> {
        what: "a list of stream counts such as [1, 4]",
        empty: "list at least one stream count, e.g. [1, 4]",
        _t: std::marker::PhantomData,
    })?;
    Ok(v.into_iter().map(|s| s.0).collect())
}

fn de_systems<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<System>, D::Error> {
    d.deserialize_seq(UniqueList::<System> {
        what: "a list of systems such as [raw, ipsec, tunneld]",
        empty: "list at least one system: raw, ipsec, ipsec-kernel, wireguard-go, boringtun, \
                gotatun, wireguard-kernel, openvpn, tunneld, tunneld-tcp, tunneld-quic, \
                or {wireguard: {binary: PATH, name: NAME}}",
        _t: std::marker::PhantomData,
    })
}

pub use super::systems::spec::{check_rows, Flavour, System, UapiSpec, MAX_UAPI_ROWS};

#[cfg(test)]
#[path = "scenario_tests.rs"]
mod tests;
