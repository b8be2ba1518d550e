//! The tunneld YAML config: strict parsing (unknown fields are errors), the
//! checked [`Config`] the daemon runs from, and errors that name the file,
//! line, column and field path (`tunnel.yaml:12:7: peers[0].endpoint: ...`).
//!
//! Layers: [`file`] holds the file-format structs ([`TunnelFile`] and friends,
//! also used by tunbench to generate configs) with single-field rules checked
//! during deserialization; [`check`] applies the cross-field rules (unique
//! names and keys, no overlapping prefixes between peers, `cipher: none`
//! needs `insecure_lab_only`, IPv6 needs MTU >= 1280), loads the private key
//! and resolves paths; [`crate::yaml::locate`] finds lines for errors found
//! after parsing.
//! The format is documented field by field in docs/config.md.

mod file;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use file::{
    DataplaneFile, HealthFile, InterfaceFile, Kind, MetricsFile, PeerFile, PeerQuicFile, QuicFile,
    RekeyFile, RouteInstall, RoutesFile, TunnelFile, AUTO_WORKERS_MAX, BATCH_RANGE, DEFAULT_BATCH,
    DEFAULT_FLOWS, DEFAULT_METRICS_LISTEN, DEFAULT_MTU, DEFAULT_QUIC_IDLE, DEFAULT_QUIC_KEEPALIVE,
    DEFAULT_REKEY_BYTES, DEFAULT_REKEY_TIME, DEFAULT_SOCKET_BUFFER, DEFAULT_WORKERS, FLOWS_RANGE,
    IPV6_MIN_MTU, KEEPALIVE_RANGE, MAX_IFNAME_LEN, MAX_PEER_NAME_LEN, MAX_WORKERS, MIN_REKEY_BYTES,
    MIN_REKEY_TIME, MTU_RANGE, QUIC_IDLE_RANGE, SOCKET_BUFFER_RANGE, WORKERS_AUTO, WORKERS_RANGE,
};
pub use file::{
    HEALTH_DEAD_AFTER_RANGE, HEALTH_INTERVAL_RANGE, HEALTH_MIN_INTERVALS, MAIN_ROUTE_TABLE,
};

pub use crate::crypto::CipherKind;
use crate::keys::{KeyError, PrivateKey, PublicKey, SpkiPin};
use crate::prefix::Prefix;
use crate::yaml::{Loc, ProfileError};

/// The tunnel's own queue in the TUN → network direction (`dataplane.queue`).
#[derive(
    Clone, Copy, PartialEq, Eq, Debug, Default, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum QueueKind {
    /// Read a batch, send it: the kernel's TUN ring (`txqueuelen` packets,
    /// first in first out) is the only queue. The default: the most
    /// throughput per core (docs/performance.md).
    #[default]
    #[serde(rename = "fifo")]
    Fifo,
    /// Drain the TUN ring eagerly into per-flow queues served round robin,
    /// with CoDel on each (RFC 8290): a ping does not wait behind bulk data,
    /// at a cost in CPU per byte.
    #[serde(rename = "fq_codel")]
    FqCodel,
}

impl QueueKind {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::FqCodel => "fq_codel",
            QueueKind::Fifo => "fifo",
        }
    }
}

/// How frames reach a peer (see docs/transports.md).
#[derive(
    Clone, Copy, PartialEq, Eq, Debug, Default, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// UDP datagrams with GSO/GRO: the default and the fastest.
    #[default]
    Udp,
    /// QUIC unreliable datagrams (RFC 9221) with pinned certificates.
    Quic,
    /// Length-prefixed frames over TCP, for paths that block UDP.
    Tcp,
}

impl TransportKind {
    /// The config spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            TransportKind::Udp => "udp",
            TransportKind::Quic => "quic",
            TransportKind::Tcp => "tcp",
        }
    }

    /// True for the default (`udp`); used to keep generated YAML short.
    pub fn is_udp(&self) -> bool {
        *self == TransportKind::Udp
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The checked QUIC endpoint settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicConfig {
    /// UDP address of the endpoint (the listen IP, `quic.port`).
    pub listen: SocketAddr,
    /// Our certificate (PEM), resolved against the config's directory.
    pub cert_file: PathBuf,
    /// Its private key (PEM), resolved likewise.
    pub key_file: PathBuf,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// QUIC keepalive interval.
    pub keepalive: Duration,
}

/// The checked config the daemon runs from.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The TUN device.
    pub interface: InterfaceConfig,
    /// UDP listen address.
    pub listen: SocketAddr,
    /// Our static private key (loaded from `private_key_file`).
    pub private_key: PrivateKey,
    /// Our static public key, derived from `private_key`.
    pub public_key: PublicKey,
    /// Data-path AEAD.
    pub cipher: CipherKind,
    /// Whether lab-only insecure settings (cipher none) are allowed.
    pub insecure_lab_only: bool,
    /// Control socket path (absolute, or relative to the working directory
    /// only if the config's own directory was relative).
    pub control_socket: PathBuf,
    /// SO_SNDBUF / SO_RCVBUF in bytes.
    pub socket_buffer: usize,
    /// Clamp TCP MSS of SYNs to fit the tunnel MTU.
    pub mss_clamp: bool,
    /// Data-path knobs (offload, batch, workers, flows).
    pub dataplane: DataplaneConfig,
    /// Rekey after this time with one session key.
    pub rekey_after_time: Duration,
    /// Rekey after this many bytes with one session key.
    pub rekey_after_bytes: u64,
    /// The QUIC endpoint, when some peer uses `transport: quic`.
    pub quic: Option<QuicConfig>,
    /// Where `GET /metrics` is served over HTTP, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Remote gateways (none yet is allowed: a reload adds them).
    pub peers: Vec<PeerConfig>,
    /// Fast dead-peer detection; `None`: the default timers.
    pub health: Option<HealthConfig>,
    /// How allowed prefixes are routed into the TUN device.
    pub routes: RoutesConfig,
    /// Path MTU probing towards UDP peers.
    pub pmtud: PmtudConfig,
}

/// Checked `health:` (see [`file::HealthFile`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Keepalive interval on established sessions.
    pub interval: Duration,
    /// Nothing authenticated from a peer for this long: it is down.
    pub dead_after: Duration,
}

/// Checked `pmtud:` (see [`file::PmtudFile`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmtudConfig {
    /// Probe the path to each UDP peer.
    pub enabled: bool,
    /// Re-validation interval of a validated path.
    pub interval: Duration,
}

impl Default for PmtudConfig {
    fn default() -> Self {
        PmtudConfig {
            enabled: true,
            interval: crate::pmtud::DEFAULT_INTERVAL,
        }
    }
}

/// Checked `routes:` (every rule is a single-field one, so the file form is
/// the checked form).
pub type RoutesConfig = RoutesFile;

/// Checked data-path knobs (see [`file::DataplaneFile`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// TUN and UDP segmentation/receive offloads.
    pub offload: bool,
    /// Packets per system-call batch.
    pub batch: usize,
    /// Data-path threads: a count, or `auto`, which the daemon resolves at
    /// start ([`crate::workers`]).
    pub workers: Workers,
    /// UDP flows (sockets) per peer; TCP and QUIC peers ignore it.
    pub flows: usize,
    /// The TUN → network queue discipline.
    pub queue: QueueKind,
    /// CoDel target sojourn time (fq_codel).
    pub codel_target: Duration,
    /// CoDel interval (fq_codel).
    pub codel_interval: Duration,
    /// Most packets queued (fq_codel).
    pub queue_limit: usize,
    /// ECN propagation (RFC 6040) and CE marking by fq_codel.
    pub ecn: bool,
    /// CPUs the workers are pinned to; `None`: not pinned.
    pub cpus: Option<CpuList>,
}

/// `dataplane.workers`, checked: a count, or `auto`, which only the daemon
/// resolves at start (it depends on the host's CPUs and NIC queues, so
/// `check` and a reload compare `auto` as written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One per usable CPU, capped ([`crate::workers::decide`]).
    Auto,
    /// This many (1..=64), never capped.
    Count(usize),
}

impl Workers {
    /// The count, if one was given.
    pub fn count(self) -> Option<usize> {
        match self {
            Workers::Auto => None,
            Workers::Count(n) => Some(n),
        }
    }
}

impl std::fmt::Display for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Workers::Auto => f.write_str("auto"),
            Workers::Count(n) => write!(f, "{n}"),
        }
    }
}

/// `dataplane.cpus`, checked: one CPU for every worker, or one per worker
/// (a fixed array, so the knobs stay `Copy`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CpuList {
    cpus: [u16; file::MAX_WORKERS],
    len: u8,
}

impl CpuList {
    /// A list of 1..=64 CPUs (longer lists are cut; the config check
    /// refuses them first).
    pub fn new(list: &[u16]) -> CpuList {
        let mut cpus = [0u16; file::MAX_WORKERS];
        let len = list.len().min(cpus.len());
        cpus[..len].copy_from_slice(&list[..len]);
        CpuList {
            cpus,
            len: len as u8,
        }
    }

    /// The CPU worker `i` runs on.
    pub fn for_worker(&self, i: usize) -> u16 {
        if self.len <= 1 {
            self.cpus[0]
        } else {
            self.cpus[i.min(usize::from(self.len) - 1)]
        }
    }

    /// The CPUs listed.
    pub fn as_slice(&self) -> &[u16] {
        &self.cpus[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for CpuList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// The CPUs this process may run on (its affinity mask), at least 1.
pub fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Default for DataplaneConfig {
    /// The defaults a config file without `dataplane:` gets.
    fn default() -> Self {
        DataplaneConfig {
            offload: true,
            batch: file::DEFAULT_BATCH as usize,
            workers: Workers::Count(file::DEFAULT_WORKERS as usize),
            queue: QueueKind::default(),
            codel_target: file::DEFAULT_CODEL_TARGET,
            codel_interval: file::DEFAULT_CODEL_INTERVAL,
            queue_limit: file::DEFAULT_QUEUE_LIMIT as usize,
            ecn: true,
            flows: file::DEFAULT_FLOWS as usize,
            cpus: None,
        }
    }
}

/// The TUN device settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    /// Device name (1..=15 of `[A-Za-z0-9_.-]`).
    pub name: String,
    /// Interface addresses with subnet length (host bits kept).
    pub addresses: Vec<Prefix>,
    /// Tunnel MTU.
    pub mtu: u16,
}

/// One remote gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Unique name (logs, metrics labels).
    pub name: String,
    /// Its static public key (unique, not ours).
    pub public_key: PublicKey,
    /// Where to send handshakes; `None` = wait for the peer to connect.
    pub endpoint: Option<SocketAddr>,
    /// Inner prefixes routed to it and accepted from it (network prefixes).
    pub allowed_prefixes: Vec<Prefix>,
    /// Persistent keepalive interval.
    pub keepalive: Option<Duration>,
    /// How frames reach it.
    pub transport: TransportKind,
    /// Its QUIC certificate pin (SHA-256 of the SPKI), for `transport: quic`.
    pub quic_pin: Option<SpkiPin>,
    /// Positions (in `peers`) of the peers it may reach through us; `None`: any.
    pub transit: Option<Vec<usize>>,
}

/// Why a config could not be loaded. `Display` reads
/// `FILE:LINE:COLUMN: FIELD: MESSAGE` (line and column when known).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{}: cannot read config: {source}", path.display())]
    Io {
        /// The config file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Reported by the YAML parser (broken syntax, a wrong type, an
    /// unknown, missing or duplicate field, a value failing a single-field
    /// rule: the message starts with the field path), or a field breaking a
    /// rule checked after parsing (uniqueness, overlap, combinations of
    /// fields, or ranges of a struct built in code).
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The private key file could not be loaded (missing, bad mode, not a key).
    #[error("{}private_key_file: {source}", Loc(file, *line, *column))]
    Key {
        /// The config file name.
        file: String,
        /// 1-based line of `private_key_file`, when found.
        line: Option<usize>,
        /// 1-based column, when found.
        column: Option<usize>,
        /// The key error (it names the key file).
        #[source]
        source: KeyError,
    },
}

impl ConfigError {
    /// The 1-based line the error points at, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Profile(p) => p.line,
            ConfigError::Key { line, .. } => *line,
        }
    }
}

/// Reads, parses and checks a config file and loads its private key.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse_named(&text, base, &path.display().to_string())
}

/// The control socket: `control_socket` resolved against the config's
/// directory, or `/run/tunneld/<interface>.sock`.
fn socket_path(configured: Option<&Path>, interface: &str, base_dir: &Path) -> PathBuf {
    match configured {
        Some(p) => base_dir.join(p),
        None => PathBuf::from(format!("/run/tunneld/{interface}.sock")),
    }
}

/// The control socket a config file names, read leniently: only
/// `control_socket` and `interface.name` need to be there, so `tunneld
/// reload` can reach the daemon (which then says what is wrong) even when
/// the file fails its checks. `None` when the file is not YAML with those.
pub fn control_socket_of(path: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(path).ok()?;
    let doc: serde_norway::Value = serde_norway::from_str(&text).ok()?;
    let base = path.parent().unwrap_or(Path::new("."));
    let configured = doc.get("control_socket").and_then(|v| v.as_str());
    let name = doc.get("interface")?.get("name")?.as_str()?;
    Some(socket_path(configured.map(Path::new), name, base))
}

/// Parses and checks config text; relative paths resolve against `base_dir`.
/// Also loads the private key file.
pub fn parse_str(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    parse_named(text, base_dir, "<config>")
}

/// Parses config text only into the file-format structs (no cross-field
/// checks, no key loading); for tools that edit or generate configs.
pub fn parse_file_format(text: &str, file_name: &str) -> Result<TunnelFile, ConfigError> {
    serde_norway::from_str(text).map_err(|e| ProfileError::from_yaml(&e, file_name).into())
}

fn parse_named(text: &str, base_dir: &Path, file_name: &str) -> Result<Config, ConfigError> {
    let raw = parse_file_format(text, file_name)?;
    check(&raw, base_dir, file_name, Some(text))
}

/// Collects the context an error needs to find its line.
struct Ctx<'a> {
    file: &'a str,
    text: Option<&'a str>,
}

impl Ctx<'_> {
    fn invalid(&self, field: String, message: String) -> ConfigError {
        ProfileError::invalid(self.text, self.file, &field, message).into()
    }
}

/// Applies every rule to a file-format struct and builds the checked
/// [`Config`], loading the private key. `text` (the YAML it came from) is
/// used only to find line numbers for errors.
pub fn check(
    raw: &TunnelFile,
    base_dir: &Path,
    file_name: &str,
    text: Option<&str>,
) -> Result<Config, ConfigError> {
    let cx = Ctx {
        file: file_name,
        text,
    };
    let rule = |field: &str, r: Result<(), String>| r.map_err(|m| cx.invalid(field.into(), m));

    // Single-field rules again, for structs built in code.
    let iface = &raw.interface;
    rule("interface.name", file::check_if_name(&iface.name))?;
    if iface.addresses.is_empty() {
        return Err(cx.invalid(
            "interface.addresses".into(),
            "at least one interface address is required".into(),
        ));
    }
    let mtu =
        file::check_mtu(u64::from(iface.mtu)).map_err(|m| cx.invalid("interface.mtu".into(), m))?;
    if let Some(i) = iface.addresses.iter().position(|a| a.is_ipv6()) {
        if mtu < IPV6_MIN_MTU {
            return Err(cx.invalid(
                "interface.mtu".into(),
                format!(
                    "{mtu} is below {IPV6_MIN_MTU}, the IPv6 minimum, but \
                     interface.addresses[{i}] is IPv6 ({})",
                    iface.addresses[i]
                ),
            ));
        }
    }
    rule(
        "socket_buffer",
        file::check_socket_buffer(raw.socket_buffer),
    )?;
    rule(
        "rekey.after_time",
        file::check_rekey_time(raw.rekey.after_time),
    )?;
    rule(
        "rekey.after_bytes",
        file::check_rekey_bytes(raw.rekey.after_bytes),
    )?;
    if raw.cipher == CipherKind::None && !raw.insecure_lab_only {
        return Err(cx.invalid(
            "cipher".into(),
            "none sends traffic unencrypted and unauthenticated; it is refused \
             unless `insecure_lab_only: true` is also set"
                .into(),
        ));
    }

    for (i, p) in raw.peers.iter().enumerate() {
        let at = |f: &str| format!("peers[{i}].{f}");
        rule(&at("name"), file::check_peer_name(&p.name))?;
        if let Some(e) = p.endpoint {
            rule(&at("endpoint"), file::check_endpoint(e))?;
            if raw.listen.is_ipv4() && e.is_ipv6() {
                return Err(cx.invalid(
                    at("endpoint"),
                    format!(
                        "{e} is IPv6 but listen {} is an IPv4 socket; \
                         listen on [::]:{} to reach IPv6 peers",
                        raw.listen,
                        raw.listen.port()
                    ),
                ));
            }
        }
        if let Some(k) = p.keepalive {
            rule(&at("keepalive"), file::check_keepalive(k))?;
        }
        if p.allowed_prefixes.is_empty() {
            return Err(cx.invalid(
                at("allowed_prefixes"),
                "at least one allowed prefix is required".into(),
            ));
        }
        for (a, pre) in p.allowed_prefixes.iter().enumerate() {
            if pre.network() != pre.addr() {
                return Err(cx.invalid(
                    format!("peers[{i}].allowed_prefixes[{a}]"),
                    format!("{pre} has host bits set; did you mean {}?", pre.trunc()),
                ));
            }
            // The tunnel's outer packets to the peer would be routed into
            // the tunnel itself: a loop that carries nothing.
            if let Some(e) = p.endpoint.filter(|e| pre.contains(e.ip())) {
                return Err(cx.invalid(
                    at("endpoint"),
                    format!(
                        "{e} is inside the peer's own allowed_prefixes[{a}] {pre}: the \
                         tunnel's packets to it would be routed into the tunnel (a loop); \
                         the endpoint must be reachable outside the tunnel"
                    ),
                ));
            }
        }
        for (j, q) in raw.peers[..i].iter().enumerate() {
            if q.name == p.name {
                return Err(cx.invalid(
                    at("name"),
                    format!("duplicate peer name \"{}\" (also peers[{j}])", p.name),
                ));
            }
            if q.public_key == p.public_key {
                return Err(cx.invalid(
                    at("public_key"),
                    format!(
                        "same public key as peers[{j}] ({}); each peer needs its own key",
                        q.name
                    ),
                ));
            }
            for (a, pa) in p.allowed_prefixes.iter().enumerate() {
                if let Some((b, pb)) = q
                    .allowed_prefixes
                    .iter()
                    .enumerate()
                    .find(|(_, pb)| pb.overlaps(pa))
                {
                    return Err(cx.invalid(
                        format!("peers[{i}].allowed_prefixes[{a}]"),
                        format!(
                            "{pa} overlaps {pb} of peers[{j}] ({}) allowed_prefixes[{b}]; \
                             a destination must route to exactly one peer",
                            q.name
                        ),
                    ));
                }
            }
        }
    }

    let quic = check_transports(raw, base_dir, &cx)?;
    let transit = check_transit(raw, &cx)?;

    let key_path = base_dir.join(&raw.private_key_file);
    let private_key = PrivateKey::load_file(&key_path).map_err(|source| {
        let at = text.and_then(|t| crate::yaml::locate(t, "private_key_file"));
        ConfigError::Key {
            file: file_name.to_string(),
            line: at.map(|a| a.0),
            column: at.map(|a| a.1),
            source,
        }
    })?;
    let public_key = private_key.public();
    if let Some(i) = raw.peers.iter().position(|p| p.public_key == public_key) {
        return Err(cx.invalid(
            format!("peers[{i}].public_key"),
            "this is our own public key (derived from private_key_file); \
             the peer's public key is needed here"
                .into(),
        ));
    }

    let control_socket = socket_path(raw.control_socket.as_deref(), &iface.name, base_dir);
    let dp = &raw.dataplane;
    // `auto` is resolved by the daemon at start; a count is checked here.
    let workers = if dp.workers == file::WORKERS_AUTO {
        Workers::Auto
    } else {
        Workers::Count(dp.workers as usize)
    };
    let count = workers.count().map_or(1, |n| n as u64);
    for (field, v, range) in [
        ("dataplane.batch", dp.batch, file::BATCH_RANGE),
        ("dataplane.workers", count, file::WORKERS_RANGE),
        (
            "dataplane.queue_limit",
            dp.queue_limit,
            file::QUEUE_LIMIT_RANGE,
        ),
        ("dataplane.flows", dp.flows, file::FLOWS_RANGE),
    ] {
        if !range.contains(&v) {
            return Err(cx.invalid(
                field.into(),
                format!("{v} is out of range {}..={}", range.start(), range.end()),
            ));
        }
    }
    for (field, v) in [
        ("dataplane.codel_target", dp.codel_target.0),
        ("dataplane.codel_interval", dp.codel_interval.0),
    ] {
        if !file::CODEL_TIME_RANGE.contains(&v) {
            return Err(cx.invalid(field.into(), format!("{v:?} is out of range 100us..=10s")));
        }
    }
    if dp.codel_target.0 >= dp.codel_interval.0 {
        return Err(cx.invalid(
            "dataplane.codel_target".into(),
            format!(
                "{:?} must be below dataplane.codel_interval ({:?})",
                dp.codel_target.0, dp.codel_interval.0
            ),
        ));
    }
    let cpus = match dp.cpus.as_deref() {
        None => None,
        Some(list) => {
            let bad = |why: String| cx.invalid("dataplane.cpus".into(), why);
            // More CPUs than workers is what a config written for more
            // workers has (or the former `[tx, rx]` with one loop): the
            // first ones are used. Fewer would leave workers unplaced.
            // With `auto`, the list caps the count instead.
            let short = workers
                .count()
                .is_some_and(|n| list.len() > 1 && list.len() < n);
            if list.is_empty() || short {
                return Err(bad(format!(
                    "{} CPUs listed for {workers} worker(s): give one CPU for all \
                     ([c]) or one per worker",
                    list.len()
                )));
            }
            if list.len() > file::MAX_WORKERS {
                return Err(bad(format!(
                    "{} CPUs listed: at most {} (one per worker)",
                    list.len(),
                    file::MAX_WORKERS
                )));
            }
            if let Some(c) = list.iter().find(|c| **c > file::MAX_CPU) {
                return Err(bad(format!(
                    "CPU {c} is out of range 0..={}",
                    file::MAX_CPU
                )));
            }
            let cpus: Vec<u16> = list
                .iter()
                .take(workers.count().unwrap_or(file::MAX_WORKERS))
                .map(|c| *c as u16)
                .collect();
            Some(CpuList::new(&cpus))
        }
    };
    let dataplane = DataplaneConfig {
        offload: dp.offload,
        batch: dp.batch as usize,
        workers,
        queue: dp.queue,
        codel_target: dp.codel_target.0,
        codel_interval: dp.codel_interval.0,
        queue_limit: dp.queue_limit as usize,
        ecn: dp.ecn,
        flows: dp.flows as usize,
        cpus,
    };
    let health = match raw.health {
        Some(h) => {
            file::check_health(h.interval.0, h.dead_after.0)
                .map_err(|(f, m)| cx.invalid(format!("health.{f}"), m))?;
            Some(HealthConfig {
                interval: h.interval.0,
                dead_after: h.dead_after.0,
            })
        }
        None => None,
    };
    let pmtud = match raw.pmtud {
        Some(p) => {
            file::check_pmtud_interval(p.interval.0)
                .map_err(|m| cx.invalid("pmtud.interval".into(), m))?;
            PmtudConfig {
                enabled: p.enabled,
                interval: p.interval.0,
            }
        }
        None => PmtudConfig::default(),
    };
    file::check_route_table(u64::from(raw.routes.table))
        .map_err(|m| cx.invalid("routes.table".into(), m))?;
    let socket_buffer = usize::try_from(raw.socket_buffer.0)
        .map_err(|_| cx.invalid("socket_buffer".into(), "too large for this platform".into()))?;

    Ok(Config {
        interface: InterfaceConfig {
            name: iface.name.clone(),
            addresses: iface.addresses.clone(),
            mtu,
        },
        listen: raw.listen,
        private_key,
        public_key,
        cipher: raw.cipher,
        insecure_lab_only: raw.insecure_lab_only,
        control_socket,
        socket_buffer,
        mss_clamp: raw.mss_clamp,
        dataplane,
        rekey_after_time: raw.rekey.after_time.0,
        rekey_after_bytes: raw.rekey.after_bytes.0,
        quic,
        metrics_listen: raw.metrics.as_ref().map(|m| m.listen),
        peers: raw
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| PeerConfig {
                name: p.name.clone(),
                public_key: p.public_key,
                endpoint: p.endpoint,
                allowed_prefixes: p.allowed_prefixes.clone(),
                keepalive: p.keepalive.map(|k| k.0),
                transport: p.transport,
                quic_pin: p.quic.as_ref().map(|q| q.spki_sha256),
                transit: transit[i].clone(),
            })
            .collect(),
        health,
        routes: raw.routes,
        pmtud,
    })
}

/// Resolves `peers[].transit` names to positions: each must name another
/// configured peer, once.
fn check_transit(raw: &TunnelFile, cx: &Ctx<'_>) -> Result<Vec<Option<Vec<usize>>>, ConfigError> {
    let mut out = Vec::new();
    for (i, p) in raw.peers.iter().enumerate() {
        let Some(names) = &p.transit else {
            out.push(None);
            continue;
        };
        let mut to = Vec::new();
        for (k, name) in names.iter().enumerate() {
            let field = format!("peers[{i}].transit[{k}]");
            let Some(j) = raw.peers.iter().position(|q| &q.name == name) else {
                return Err(cx.invalid(field, format!("\"{name}\" is not the name of a peer")));
            };
            if j == i {
                return Err(cx.invalid(
                    field,
                    format!("\"{name}\" is this peer itself; list the other peers it may reach"),
                ));
            }
            if to.contains(&j) {
                return Err(cx.invalid(field, format!("\"{name}\" is listed twice")));
            }
            to.push(j);
        }
        out.push(Some(to));
    }
    Ok(out)
}

/// The rules tying `peers[].transport`, `peers[].quic` and `quic:` together;
/// returns the checked QUIC endpoint settings.
fn check_transports(
    raw: &TunnelFile,
    base_dir: &Path,
    cx: &Ctx<'_>,
) -> Result<Option<QuicConfig>, ConfigError> {
    for (i, p) in raw.peers.iter().enumerate() {
        match (p.transport, &p.quic) {
            (TransportKind::Quic, None) => {
                return Err(cx.invalid(
                    format!("peers[{i}].transport"),
                    "quic needs `quic: { spki_sha256: ... }` on this peer: the pin of its \
                     certificate, printed by `tunneld gencert` on the peer"
                        .into(),
                ))
            }
            (TransportKind::Quic, Some(_)) => {
                if raw.quic.is_none() {
                    return Err(cx.invalid(
                        format!("peers[{i}].transport"),
                        "quic needs the top-level `quic:` section with this daemon's \
                         cert_file and key_file (`tunneld gencert` makes them)"
                            .into(),
                    ));
                }
            }
            (kind, Some(_)) => {
                return Err(cx.invalid(
                    format!("peers[{i}].quic"),
                    format!(
                        "is only used with `transport: quic`, but this peer uses {kind}; \
                         remove it or set transport: quic"
                    ),
                ))
            }
            (_, None) => {}
        }
    }
    let Some(q) = &raw.quic else {
        return Ok(None);
    };
    if !raw.peers.iter().any(|p| p.transport == TransportKind::Quic) {
        return Err(cx.invalid(
            "quic".into(),
            "no peer uses `transport: quic`; remove this section".into(),
        ));
    }
    let port = q.port.unwrap_or(raw.listen.port());
    if port == raw.listen.port() {
        if let Some(i) = raw
            .peers
            .iter()
            .position(|p| p.transport == TransportKind::Udp)
        {
            let field = if q.port.is_some() {
                "quic.port"
            } else {
                "quic"
            }
            .to_string();
            return Err(cx.invalid(
                field,
                format!(
                    "peer {} uses udp, which needs UDP port {port} of `listen`, and the QUIC \
                     endpoint would use the same port; set quic.port to another port",
                    raw.peers[i].name
                ),
            ));
        }
    }
    if port == 0 {
        return Err(cx.invalid("quic.port".into(), "port 0 is not a listen port".into()));
    }
    if !QUIC_IDLE_RANGE.contains(&q.idle_timeout.0) {
        return Err(cx.invalid(
            "quic.idle_timeout".into(),
            format!("{:?} is out of range 1s..=10m", q.idle_timeout.0),
        ));
    }
    if q.keepalive.0.is_zero() || q.keepalive.0 >= q.idle_timeout.0 {
        return Err(cx.invalid(
            "quic.keepalive".into(),
            format!(
                "{:?} must be above zero and below quic.idle_timeout ({:?}), or idle \
                 connections close",
                q.keepalive.0, q.idle_timeout.0
            ),
        ));
    }
    Ok(Some(QuicConfig {
        listen: SocketAddr::new(raw.listen.ip(), port),
        cert_file: base_dir.join(&q.cert_file),
        key_file: base_dir.join(&q.key_file),
        idle_timeout: q.idle_timeout.0,
        keepalive: q.keepalive.0,
    }))
}

/// The starting config `tunneld init` writes: interface `name` with
/// `address`, listening on `listen`, its key in `key_file` beside it, no
/// peers yet, and a commented peer to fill in. Each argument is checked as
/// the config loader would.
pub fn starter_config(
    name: &str,
    address: &str,
    listen: &str,
    key_file: &str,
) -> Result<String, ConfigError> {
    let bad = |field: &str, message: String| -> ConfigError {
        ProfileError::invalid(None, "tunneld init", field, message).into()
    };
    file::check_if_name(name).map_err(|m| bad("name", m))?;
    let addr =
        Prefix::parse_interface_addr(address).map_err(|e| bad("--address", e.to_string()))?;
    let listen: SocketAddr = listen
        .parse()
        .map_err(|_| bad("--listen", format!("\"{listen}\" is not IP:PORT")))?;
    Ok(format!(
        "\
# tunneld config for tunnel {name}; every field is described in docs/config.md.
# Check it with `tunneld check --config THIS_FILE`; after editing a running
# tunnel's peers, `systemctl reload tunneld@{name}` applies them without
# dropping the other peers' sessions.
kind: tunnel

interface:
  name: {name}
  addresses: [\"{addr}\"]
  mtu: 1420                     # 1500 on the WAN minus 80 bytes of tunnel overhead

listen: \"{listen}\"           # UDP; open this port to the peer gateways
private_key_file: {key_file}    # beside this file, mode 0600

# metrics:                      # Prometheus: GET http://127.0.0.1:9820/metrics
#   listen: 127.0.0.1:9820

peers: []
# A peer, once its public key is known (`tunneld pubkey < KEY` on its side):
# peers:
#   - name: dc-b
#     public_key: \"BASE64 PUBLIC KEY OF THE PEER\"
#     endpoint: 203.0.113.2:51820   # omit on a hub: the spoke connects first
#     allowed_prefixes: [10.2.0.0/16]
#     keepalive: 25s
"
    ))
}

impl TunnelFile {
    /// The YAML text of this config (what tunbench writes to generate one).
    pub fn to_yaml(&self) -> Result<String, serde_norway::Error> {
        serde_norway::to_string(self)
    }
}
