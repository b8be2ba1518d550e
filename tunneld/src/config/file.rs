//! The tunnel config file format as serde structs, and the single-field rules.
//!
//! These structs are what the YAML looks like (tunbench's lab builds them and
//! serializes them to generate configs). Single-field rules (name charset, MTU
//! range, socket address syntax, prefix syntax...) run inside `Deserialize`,
//! so serde_norway reports the line and column of a bad value; the same rule
//! functions run again in [`super::check`] for structs built in code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::fmt;

use serde::de::{self, Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::{CipherKind, TransportKind};
use crate::keys::{PublicKey, SpkiPin};
use crate::prefix::Prefix;
use crate::units::{self, Size, Span};
use crate::yaml::{check_kind, ProfileKind, Quantity, Text};

/// Default tunnel MTU: 1500 on the underlay minus 80 bytes of worst-case
/// overhead (IPv6 40 + UDP 8 + our header 16 + tag 16), as WireGuard does.
pub const DEFAULT_MTU: u16 = 1420;
/// MTU range: 576 is the IPv4 minimum reassembly size, 9000 a jumbo frame.
pub const MTU_RANGE: std::ops::RangeInclusive<u16> = 576..=9000;
/// IPv6 requires links of at least 1280 bytes (RFC 8200).
pub const IPV6_MIN_MTU: u16 = 1280;
/// Default UDP socket buffer: about 1 Gbit/s × 30 ms RTT (3.75 MB), rounded up.
pub const DEFAULT_SOCKET_BUFFER: u64 = 4 << 20;
/// Socket buffer bounds: below 64 KiB batching stalls; above 1 GiB is a typo.
pub const SOCKET_BUFFER_RANGE: std::ops::RangeInclusive<u64> = (64 << 10)..=(1 << 30);
/// Default rekey interval, as WireGuard's REKEY_AFTER_TIME.
pub const DEFAULT_REKEY_TIME: Duration = Duration::from_secs(120);
/// Shortest rekey interval (short values exist for tests).
pub const MIN_REKEY_TIME: Duration = Duration::from_secs(1);
/// Longest rekey interval: a day. Forward secrecy comes from rekeying, and
/// the session lifetime derived from it (1.5 × this) must stay a sane time.
pub const MAX_REKEY_TIME: Duration = Duration::from_secs(24 * 3600);
/// Default rekey volume: 64 GiB, far below the AES-GCM per-key limits.
pub const DEFAULT_REKEY_BYTES: u64 = 64 << 30;
/// Smallest rekey volume (for tests that force rekeying).
pub const MIN_REKEY_BYTES: u64 = 64 << 10;
/// Largest rekey volume: 1 TiB, about 2^30 full-size packets under one key,
/// well inside AES-GCM's per-key usage limits (RFC 8446 section 5.5
/// suggests rekeying TLS after 2^24.5 full records for a 2^-57 margin; our
/// default 64 GiB is about that; beyond 1 TiB the margin erodes quickly).
pub const MAX_REKEY_BYTES: u64 = 1 << 40;
/// Persistent keepalive bounds.
pub const KEEPALIVE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);
/// Default packets per batch: 64 segments carry one 64 KiB TCP super-packet
/// at a 1420-byte MTU, and keep one batch's buffers (~100 KiB) in L2 cache.
pub const DEFAULT_BATCH: u64 = 64;
/// Largest batch: the most segments a UDP GSO send may carry is 64 on older
/// kernels and 128 since 5.x; beyond that batching buys nothing.
pub const BATCH_RANGE: std::ops::RangeInclusive<u64> = 1..=128;
/// Default data-path workers: one loop for both directions. On the 2-core
/// lab hosts a second worker competes with the peer's, the WAN emulator's
/// and the applications' threads for the same two cores
/// (docs/measurements/2026-12-04-workers.md); on a gateway with cores to
/// spare, `auto` or a count spreads the tunnel over them.
pub const DEFAULT_WORKERS: u64 = 1;
/// Most workers: each is a thread with its own TUN queue and UDP socket,
/// so 64 (more cores than one NIC's queues usually reach) bounds the
/// descriptors and buffers (~8 MB per worker) a typo could cost.
pub const MAX_WORKERS: usize = 64;
/// Worker counts (see [`MAX_WORKERS`]).
pub const WORKERS_RANGE: std::ops::RangeInclusive<u64> = 1..=MAX_WORKERS as u64;
/// `workers: auto` in the file form (a count of 0 is never valid, so it
/// cannot be mistaken for one).
pub const WORKERS_AUTO: u64 = 0;
/// `workers: auto` takes one worker per CPU this process may run on, at
/// most this many (and no more than the outer NIC's RX queues,
/// [`crate::workers::decide`]): past 16 a single tunnel's flows rarely
/// spread evenly enough to use more.
pub const AUTO_WORKERS_MAX: usize = 16;
/// Default CoDel target and interval (RFC 8289's, for Internet RTTs; a
/// tunnel between nearby DCs can go lower).
pub const DEFAULT_CODEL_TARGET: Duration = Duration::from_millis(5);
/// See [`DEFAULT_CODEL_TARGET`].
pub const DEFAULT_CODEL_INTERVAL: Duration = Duration::from_millis(100);
/// CoDel times: below 100 µs is scheduler noise, above 10 s no queue at all.
pub const CODEL_TIME_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_micros(100)..=Duration::from_secs(10);
/// Default queue limit in packets: 8192 × 1420 bytes ≈ 11.6 MB, 10 ms at
/// 9 Gbit/s; buffers are allocated only as the queue first grows.
pub const DEFAULT_QUEUE_LIMIT: u64 = 8192;
/// Queue limit bounds: at least two TCP super-packets' segments.
pub const QUEUE_LIMIT_RANGE: std::ops::RangeInclusive<u64> = 256..=65_536;
/// Default UDP flows per peer: one socket, one outer 5-tuple, as before
/// flows existed.
pub const DEFAULT_FLOWS: u64 = 1;
/// UDP flows (sockets) per peer: 16 outer 5-tuples give RSS/ECMP enough
/// entropy to spread a tunnel over the queues of a NIC or the paths of a
/// WAN; more only costs descriptors and receive calls.
pub const FLOWS_RANGE: std::ops::RangeInclusive<u64> = 1..=16;
/// CPU numbers `dataplane.cpus` accepts (glibc's CPU_SETSIZE is 1024).
pub const MAX_CPU: u64 = 1023;
/// `health.interval` bounds: the data path runs timers every 50 ms, so a
/// shorter interval would not be honoured; above a minute it is no faster
/// than the default dead-peer detection.
pub const HEALTH_INTERVAL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(50)..=Duration::from_secs(60);
/// `health.dead_after` bounds: at least two timer ticks, at most an hour.
pub const HEALTH_DEAD_AFTER_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);
/// `pmtud.interval` bounds: re-validating a path more often than every 10 s
/// is probe traffic for nothing (black holes are also found from silence
/// within seconds); less often than hourly leaves a one-way black hole in
/// a busy bidirectional tunnel unnoticed too long.
pub const PMTUD_INTERVAL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(10)..=Duration::from_secs(3600);
/// `dead_after` must cover at least this many keepalive intervals, so one
/// lost keepalive never marks a live peer down.
pub const HEALTH_MIN_INTERVALS: u32 = 2;
/// Kernel routing table numbers `routes.table` refuses: 0 (unspecified),
/// 253 (default) and 255 (local) belong to the kernel.
pub const RESERVED_ROUTE_TABLES: [u32; 3] = [0, 253, 255];
/// The kernel's main routing table.
pub const MAIN_ROUTE_TABLE: u32 = 254;
/// Linux interface names are at most IFNAMSIZ - 1 = 15 bytes.
pub const MAX_IFNAME_LEN: usize = 15;
/// Peer names appear in metrics labels and logs; keep them short.
pub const MAX_PEER_NAME_LEN: usize = 32;

/// The `kind:` of a profile; tunneld reads only `tunnel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// A tunneld config.
    #[default]
    Tunnel,
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("tunnel")
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Text {
            what: "the profile kind `tunnel`",
            parse: |s| check_kind(s, ProfileKind::Tunnel).map(|()| Kind::Tunnel),
        })
    }
}

/// The whole file (`kind: tunnel`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelFile {
    /// Must be `tunnel`.
    pub kind: Kind,
    /// The TUN device.
    pub interface: InterfaceFile,
    /// UDP listen address.
    #[serde(deserialize_with = "de_socket_addr")]
    pub listen: SocketAddr,
    /// Private key file; relative to the config file's directory.
    pub private_key_file: PathBuf,
    /// AEAD for the data path.
    #[serde(default)]
    pub cipher: CipherKind,
    /// Required to allow `cipher: none`.
    #[serde(default)]
    pub insecure_lab_only: bool,
    /// Control socket path; default `/run/tunneld/<interface>.sock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<PathBuf>,
    /// SO_SNDBUF / SO_RCVBUF of the UDP socket.
    #[serde(
        default = "default_socket_buffer",
        deserialize_with = "de_socket_buffer"
    )]
    pub socket_buffer: Size,
    /// Clamp the TCP MSS of SYNs crossing the tunnel.
    #[serde(default = "default_true")]
    pub mss_clamp: bool,
    /// Rekey thresholds.
    #[serde(default)]
    pub rekey: RekeyFile,
    /// Data-path performance knobs.
    #[serde(default)]
    pub dataplane: DataplaneFile,
    /// The QUIC endpoint (required when a peer uses `transport: quic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic: Option<QuicFile>,
    /// Fast dead-peer detection (keepalive interval and dead time) for
    /// gateways whose routes follow the tunnel's health; absent: the
    /// defaults (peer presumed dead after 15 s without an answer to data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthFile>,
    /// How the peers' allowed prefixes are routed into the TUN device.
    #[serde(default, skip_serializing_if = "RoutesFile::is_default")]
    pub routes: RoutesFile,
    /// Path MTU probing towards UDP peers; absent: on, re-validated every 2 min.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pmtud: Option<PmtudFile>,
    /// The Prometheus `/metrics` HTTP endpoint; none without this section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsFile>,
    /// The remote gateways (none yet is allowed: peers can be added by a reload).
    #[serde(deserialize_with = "de_peers")]
    pub peers: Vec<PeerFile>,
}

/// `metrics:` — an HTTP listener serving `GET /metrics` in the Prometheus
/// text format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    /// Address to listen on; loopback by default, so only a scraper on
    /// this host reads the counters unless the operator opens it.
    #[serde(
        default = "default_metrics_listen",
        deserialize_with = "de_socket_addr"
    )]
    pub listen: SocketAddr,
}

/// Default `metrics.listen`: loopback only.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9820);

fn default_metrics_listen() -> SocketAddr {
    DEFAULT_METRICS_LISTEN
}

/// `interface:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceFile {
    /// Device name, 1..=15 of `[A-Za-z0-9_.-]`.
    #[serde(deserialize_with = "de_if_name")]
    pub name: String,
    /// Interface addresses with subnet length (host bits allowed), at least one.
    #[serde(deserialize_with = "de_if_addrs")]
    pub addresses: Vec<Prefix>,
    /// Tunnel MTU.
    #[serde(default = "default_mtu", deserialize_with = "de_mtu")]
    pub mtu: u16,
}

/// `dataplane:` — the knobs that tunbench sweeps. Defaults are tuned for a
/// gateway moving multi-Gbit/s of TCP on a few cores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneFile {
    /// TUN TSO/GRO (IFF_VNET_HDR) and UDP GSO/GRO, each probed at start with
    /// a logged fallback.
    #[serde(default = "default_true")]
    pub offload: bool,
    /// Packets moved per system call batch (recvmmsg, GSO segments, TUN
    /// super-packet segments): 1..=128.
    #[serde(default = "default_batch")]
    pub batch: u64,
    /// Data-path workers, 1..=64 or `auto` (one per usable CPU, capped by
    /// the outer NIC's RX queues and at most 16, decided by the daemon at
    /// start: [`crate::workers`]); each seals and opens with its own TUN
    /// queue and UDP socket. [`WORKERS_AUTO`] stands for `auto`.
    #[serde(
        default = "default_workers",
        deserialize_with = "de_workers",
        serialize_with = "ser_workers"
    )]
    pub workers: u64,
    /// The TUN → network queue: `fifo` (default) or `fq_codel`.
    #[serde(default)]
    pub queue: crate::config::QueueKind,
    /// CoDel target sojourn time (fq_codel), 100us..=10s, below
    /// `codel_interval`.
    #[serde(default = "default_codel_target", deserialize_with = "de_span")]
    pub codel_target: Span,
    /// CoDel interval (fq_codel): about the worst RTT of the inner flows.
    #[serde(default = "default_codel_interval", deserialize_with = "de_span")]
    pub codel_interval: Span,
    /// Most packets the fq_codel queue holds (256..=65536); past it the
    /// fattest flow loses packets.
    #[serde(default = "default_queue_limit")]
    pub queue_limit: u64,
    /// ECN (RFC 6040 normal mode): the outer header carries the inner
    /// packet's ECN field, a CE mark on the path reaches the inner packet,
    /// and fq_codel marks ECN-capable packets instead of dropping them.
    /// `false`: outer headers are not ECN-capable and the queue only drops.
    #[serde(default = "default_true")]
    pub ecn: bool,
    /// UDP flows per peer, 1..=16: flow 0 is the `listen` socket, the others
    /// are sockets on ephemeral ports of the same address; each inner flow
    /// (5-tuple) always leaves on the same one. Ignored for TCP/QUIC peers.
    #[serde(default = "default_flows")]
    pub flows: u64,
    /// CPUs the data-path workers are pinned to: `[c]` pins every worker
    /// to CPU `c`; a list of one CPU per worker pins each apart. Unset:
    /// not pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Vec<u64>>,
}

impl Default for DataplaneFile {
    fn default() -> Self {
        DataplaneFile {
            offload: true,
            batch: DEFAULT_BATCH,
            workers: DEFAULT_WORKERS,
            queue: crate::config::QueueKind::default(),
            codel_target: default_codel_target(),
            codel_interval: default_codel_interval(),
            queue_limit: DEFAULT_QUEUE_LIMIT,
            ecn: true,
            flows: DEFAULT_FLOWS,
            cpus: None,
        }
    }
}

/// `health:` — how fast a dead peer is noticed (docs/ha.md).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    /// Keepalive sent on every established session that has sent nothing
    /// for this long (50ms..=60s); replaces a longer `peers[].keepalive`.
    #[serde(deserialize_with = "de_span")]
    pub interval: Span,
    /// A peer from which nothing authenticated arrived for this long is down
    /// (its `on-session` routes are withdrawn and a handshake starts);
    /// 100ms..=1h, at least twice `interval`.
    #[serde(deserialize_with = "de_span")]
    pub dead_after: Span,
}

/// `pmtud:` — path MTU probing towards UDP peers (docs/protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PmtudFile {
    /// Probe the path to each UDP peer (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How often a validated path is confirmed (10s..=1h, default 2m).
    #[serde(default = "default_pmtud_interval", deserialize_with = "de_span")]
    pub interval: Span,
}

fn default_pmtud_interval() -> Span {
    Span(crate::pmtud::DEFAULT_INTERVAL)
}

/// Checks `pmtud.interval`.
pub(crate) fn check_pmtud_interval(interval: Duration) -> Result<(), String> {
    if PMTUD_INTERVAL_RANGE.contains(&interval) {
        return Ok(());
    }
    Err(format!(
        "{interval:?} is out of range {:?}..={:?}",
        PMTUD_INTERVAL_RANGE.start(),
        PMTUD_INTERVAL_RANGE.end()
    ))
}

/// When the peers' allowed prefixes are routed into the TUN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize)]
pub enum RouteInstall {
    /// At start, for every peer, until exit (a static gateway).
    #[default]
    #[serde(rename = "always")]
    Always,
    /// A peer's prefixes only while a session with it is established and
    /// alive: what a routing daemon reads to announce the remote site.
    #[serde(rename = "on-session")]
    OnSession,
    /// Never: the operator or a routing daemon routes into the device.
    #[serde(rename = "off")]
    Off,
}

impl RouteInstall {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteInstall::Always => "always",
            RouteInstall::OnSession => "on-session",
            RouteInstall::Off => "off",
        }
    }
}

/// `routes:` — how allowed prefixes reach the kernel's routing tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    /// `always` (default), `on-session` or `off`.
    #[serde(default)]
    pub install: RouteInstall,
    /// Kernel routing table: `main` (default) or a number (not 0, 253, 255).
    #[serde(
        default = "default_route_table",
        deserialize_with = "de_route_table",
        serialize_with = "ser_route_table"
    )]
    pub table: u32,
    /// Route metric (priority); absent: the kernel default 0. A route of
    /// another metric for the same prefix is left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

impl Default for RoutesFile {
    fn default() -> Self {
        RoutesFile {
            install: RouteInstall::Always,
            table: MAIN_ROUTE_TABLE,
            metric: None,
        }
    }
}

impl RoutesFile {
    /// True for the defaults (kept out of generated YAML).
    pub fn is_default(&self) -> bool {
        *self == RoutesFile::default()
    }
}

fn default_route_table() -> u32 {
    MAIN_ROUTE_TABLE
}

fn ser_route_table<S: serde::Serializer>(t: &u32, s: S) -> Result<S::Ok, S::Error> {
    if *t == MAIN_ROUTE_TABLE {
        s.serialize_str("main")
    } else {
        s.serialize_u32(*t)
    }
}

pub(crate) fn check_route_table(t: u64) -> Result<u32, String> {
    let t = u32::try_from(t).map_err(|_| format!("{t} is not a routing table number"))?;
    if RESERVED_ROUTE_TABLES.contains(&t) {
        return Err(format!(
            "table {t} is reserved by the kernel (0 unspecified, 253 default, 255 local); \
             use main or another number"
        ));
    }
    Ok(t)
}

/// Checks `health:`; an error names the field (`interval` or `dead_after`).
pub(crate) fn check_health(
    interval: Duration,
    dead_after: Duration,
) -> Result<(), (&'static str, String)> {
    let fmt_range =
        |r: &std::ops::RangeInclusive<Duration>| format!("{:?}..={:?}", r.start(), r.end());
    if !HEALTH_INTERVAL_RANGE.contains(&interval) {
        return Err((
            "interval",
            format!(
                "{interval:?} is out of range {}",
                fmt_range(&HEALTH_INTERVAL_RANGE)
            ),
        ));
    }
    if !HEALTH_DEAD_AFTER_RANGE.contains(&dead_after) {
        return Err((
            "dead_after",
            format!(
                "{dead_after:?} is out of range {}",
                fmt_range(&HEALTH_DEAD_AFTER_RANGE)
            ),
        ));
    }
    if dead_after < interval * HEALTH_MIN_INTERVALS {
        return Err((
            "dead_after",
            format!(
                "{dead_after:?} must be at least {HEALTH_MIN_INTERVALS} x health.interval \
                 ({interval:?}), or one lost keepalive marks a live peer down"
            ),
        ));
    }
    Ok(())
}

fn de_route_table<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = u32;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a routing table: main or a number")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
            check_route_table(v).map_err(E::custom)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
            let v = u64::try_from(v)
                .map_err(|_| E::custom(format!("{v} is not a routing table number")))?;
            self.visit_u64(v)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
            match v.trim() {
                "main" => Ok(MAIN_ROUTE_TABLE),
                t => match t.parse::<u64>() {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!(
                        "\"{v}\" is not a routing table (main or a number)"
                    ))),
                },
            }
        }
    }
    d.deserialize_any(V)
}

/// `quic:` — this daemon's QUIC endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicFile {
    /// Our certificate (PEM; `tunneld gencert` writes one); relative to the
    /// config file's directory.
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// UDP port of the QUIC endpoint; default the `listen` port (then no
    /// peer may use `transport: udp`, which needs that port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Close a QUIC connection silent for this long (1s..=10m).
    #[serde(default = "default_quic_idle", deserialize_with = "de_span")]
    pub idle_timeout: Span,
    /// QUIC keepalive interval; below `idle_timeout`.
    #[serde(default = "default_quic_keepalive", deserialize_with = "de_span")]
    pub keepalive: Span,
}

/// `peers[].quic:` — how to authenticate this peer's QUIC endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerQuicFile {
    /// SHA-256 of the peer certificate's SubjectPublicKeyInfo, base64 or
    /// hex (`tunneld gencert` prints it).
    pub spki_sha256: SpkiPin,
}

/// Default QUIC idle timeout.
pub const DEFAULT_QUIC_IDLE: Duration = Duration::from_secs(30);
/// Default QUIC keepalive.
pub const DEFAULT_QUIC_KEEPALIVE: Duration = Duration::from_secs(5);
/// QUIC idle timeout bounds.
pub const QUIC_IDLE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(600);

fn default_quic_idle() -> Span {
    Span(DEFAULT_QUIC_IDLE)
}
fn default_quic_keepalive() -> Span {
    Span(DEFAULT_QUIC_KEEPALIVE)
}

fn de_span<'de, D: Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
    d.deserialize_any(Quantity {
        what: "a duration such as 30s",
        parse: |s| Ok(Span(units::parse_duration(s).map_err(|e| e.to_string())?)),
    })
}

fn de_workers<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(Quantity {
        what: "a worker count (1..=64) or auto",
        parse: |s| match s.trim() {
            "auto" => Ok(WORKERS_AUTO),
            t => match t.parse::<u64>() {
                // 0 would read as `auto`: refused here, by name.
                Ok(0) => Err("0 workers: give 1..=64 or auto".into()),
                Ok(n) => Ok(n),
                Err(_) => Err(format!("`{t}` is not a worker count (1..=64) or auto")),
            },
        },
    })
}

fn ser_workers<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    if *v == WORKERS_AUTO {
        s.serialize_str("auto")
    } else {
        s.serialize_u64(*v)
    }
}

/// `rekey:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RekeyFile {
    /// Start a new handshake after this time.
    #[serde(default = "default_rekey_time", deserialize_with = "de_rekey_time")]
    pub after_time: Span,
    /// Start a new handshake after this many bytes sent with one key.
    #[serde(default = "default_rekey_bytes", deserialize_with = "de_rekey_bytes")]
    pub after_bytes: Size,
}

impl Default for RekeyFile {
    fn default() -> Self {
        RekeyFile {
            after_time: default_rekey_time(),
            after_bytes: default_rekey_bytes(),
        }
    }
}

/// One item of `peers:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerFile {
    /// Unique name, 1..=32 of `[A-Za-z0-9_.-]`.
    #[serde(deserialize_with = "de_peer_name")]
    pub name: String,
    /// The peer's static public key.
    pub public_key: PublicKey,
    /// Where to send the first handshake; absent = wait for the peer.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_endpoint"
    )]
    pub endpoint: Option<SocketAddr>,
    /// Inner prefixes routed to and accepted from this peer (at least one).
    #[serde(deserialize_with = "de_allowed")]
    pub allowed_prefixes: Vec<Prefix>,
    /// Persistent keepalive interval.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_keepalive"
    )]
    pub keepalive: Option<Span>,
    /// How frames reach this peer: `udp` (default), `quic` or `tcp`.
    #[serde(default, skip_serializing_if = "TransportKind::is_udp")]
    pub transport: TransportKind,
    /// QUIC authentication of this peer (with `transport: quic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic: Option<PeerQuicFile>,
    /// Hub policy: the names of the other peers this peer may reach through
    /// this gateway (packets from it to their prefixes). Absent: any peer
    /// (the kernel forwards between them); `[]`: none. Refused transit is
    /// dropped and counted (`drop_transit_denied`, per peer `transit_denied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transit: Option<Vec<String>>,
}

fn default_true() -> bool {
    true
}
fn default_batch() -> u64 {
    DEFAULT_BATCH
}
fn default_codel_target() -> Span {
    Span(DEFAULT_CODEL_TARGET)
}
fn default_codel_interval() -> Span {
    Span(DEFAULT_CODEL_INTERVAL)
}
fn default_queue_limit() -> u64 {
    DEFAULT_QUEUE_LIMIT
}
fn default_workers() -> u64 {
    DEFAULT_WORKERS
}
fn default_flows() -> u64 {
    DEFAULT_FLOWS
}
fn default_mtu() -> u16 {
    DEFAULT_MTU
}
fn default_socket_buffer() -> Size {
    Size(DEFAULT_SOCKET_BUFFER)
}
fn default_rekey_time() -> Span {
    Span(DEFAULT_REKEY_TIME)
}
fn default_rekey_bytes() -> Size {
    Size(DEFAULT_REKEY_BYTES)
}

// ---- single-field rules, shared by Deserialize and super::check ----

fn check_name(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() || name.len() > max {
        return Err(format!(
            "\"{name}\" must be 1 to {max} characters long (it has {})",
            name.chars().count()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "\"{name}\" contains {c:?}; use only letters, digits, '_', '.' and '-'"
        ));
    }
    Ok(())
}

pub(crate) fn check_if_name(name: &str) -> Result<(), String> {
    check_name(name, MAX_IFNAME_LEN)
}

pub(crate) fn check_peer_name(name: &str) -> Result<(), String> {
    check_name(name, MAX_PEER_NAME_LEN)
}

pub(crate) fn check_mtu(mtu: u64) -> Result<u16, String> {
    u16::try_from(mtu)
        .ok()
        .filter(|m| MTU_RANGE.contains(m))
        .ok_or_else(|| {
            format!(
                "{mtu} is out of range {}..={}",
                MTU_RANGE.start(),
                MTU_RANGE.end()
            )
        })
}

pub(crate) fn check_socket_buffer(s: Size) -> Result<(), String> {
    if SOCKET_BUFFER_RANGE.contains(&s.0) {
        Ok(())
    } else {
        Err(format!("{} bytes is out of range 64K..=1G", s.0))
    }
}

pub(crate) fn check_rekey_time(s: Span) -> Result<(), String> {
    if s.0 < MIN_REKEY_TIME {
        Err(format!("{:?} is below the minimum of 1s", s.0))
    } else if s.0 > MAX_REKEY_TIME {
        Err(format!("{:?} is above the maximum of 24h", s.0))
    } else {
        Ok(())
    }
}

pub(crate) fn check_rekey_bytes(s: Size) -> Result<(), String> {
    if s.0 < MIN_REKEY_BYTES {
        Err(format!("{} bytes is below the minimum of 64K", s.0))
    } else if s.0 > MAX_REKEY_BYTES {
        Err(format!("{} bytes is above the maximum of 1T", s.0))
    } else {
        Ok(())
    }
}

pub(crate) fn check_keepalive(s: Span) -> Result<(), String> {
    if KEEPALIVE_RANGE.contains(&s.0) {
        Ok(())
    } else {
        Err(format!("{:?} is out of range 1s..=1h", s.0))
    }
}

pub(crate) fn check_endpoint(a: SocketAddr) -> Result<(), String> {
    if a.port() == 0 {
        return Err(format!("{a} has port 0"));
    }
    if a.ip().is_unspecified() || a.ip().is_multicast() {
        return Err(format!("{a} is not a unicast address of the peer"));
    }
    Ok(())
}

fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!("invalid socket address \"{text}\" (expected IP:PORT, or [IPv6]:PORT)")
    })
}

// ---- deserialize_with helpers ----
//
// serde_norway attaches the line, column and field path of the YAML node
// being read when an error is raised *inside* a visitor. So each rule runs in
// a visitor method, never after `T::deserialize` has returned (that would
// blame the enclosing mapping instead of the value).

/// Visits a sequence and refuses an empty one.
struct NonEmpty<T> {
    what: &'static str,
    _t: std::marker::PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for NonEmpty<T> {
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a list of {}", self.what)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut v = Vec::new();
        while let Some(x) = seq.next_element()? {
            v.push(x);
        }
        if v.is_empty() {
            return Err(A::Error::custom(format!(
                "the list is empty; at least one {} is required",
                self.what
            )));
        }
        Ok(v)
    }
}

fn non_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
    what: &'static str,
) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(NonEmpty {
        what,
        _t: std::marker::PhantomData,
    })
}

fn de_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    d.deserialize_str(Text {
        what: "a socket address IP:PORT",
        parse: parse_socket_addr,
    })
}

fn de_endpoint<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    d.deserialize_str(Text {
        what: "a socket address IP:PORT",
        parse: |s| {
            let a = parse_socket_addr(s)?;
            check_endpoint(a)?;
            Ok(Some(a))
        },
    })
}

fn de_if_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_str(Text {
        what: "an interface name",
        parse: |s| check_if_name(s).map(|()| s.to_string()),
    })
}

fn de_peer_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_str(Text {
        what: "a peer name",
        parse: |s| check_peer_name(s).map(|()| s.to_string()),
    })
}

fn de_mtu<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = u16;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an MTU in bytes (576..=9000)")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u16, E> {
            check_mtu(v).map_err(E::custom)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u16, E> {
            check_mtu(u64::try_from(v).unwrap_or(0)).map_err(E::custom)
        }
    }
    d.deserialize_u64(V)
}

fn de_socket_buffer<'de, D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
    d.deserialize_any(Quantity {
        what: "a size such as 4M",
        parse: |s| {
            let v = Size(units::parse_size(s).map_err(|e| e.to_string())?);
            check_socket_buffer(v).map(|()| v)
        },
    })
}

fn de_rekey_time<'de, D: Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
    d.deserialize_any(Quantity {
        what: "a duration such as 120s",
        parse: |s| {
            let v = Span(units::parse_duration(s).map_err(|e| e.to_string())?);
            check_rekey_time(v).map(|()| v)
        },
    })
}

fn de_rekey_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
    d.deserialize_any(Quantity {
        what: "a size such as 64G",
        parse: |s| {
            let v = Size(units::parse_size(s).map_err(|e| e.to_string())?);
            check_rekey_bytes(v).map(|()| v)
        },
    })
}

fn de_keepalive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Span>, D::Error> {
    d.deserialize_any(Quantity {
        what: "a duration such as 25s",
        parse: |s| {
            let v = Span(units::parse_duration(s).map_err(|e| e.to_string())?);
            check_keepalive(v).map(|()| Some(v))
        },
    })
}

/// An interface address: host bits allowed.
struct IfAddr(Prefix);

impl<'de> Deserialize<'de> for IfAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Text {
            what: "an interface address such as 198.19.0.1/24",
            parse: |s| {
                Prefix::parse_interface_addr(s)
                    .map(IfAddr)
                    .map_err(|e| e.to_string())
            },
        })
    }
}

fn de_if_addrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Prefix>, D::Error> {
    let v: Vec<IfAddr> = non_empty(d, "interface address (e.g. 198.19.0.1/24)")?;
    Ok(v.into_iter().map(|a| a.0).collect())
}

fn de_allowed<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Prefix>, D::Error> {
    non_empty(d, "prefix (e.g. 198.18.2.0/24)")
}

fn de_peers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PeerFile>, D::Error> {
    Vec::deserialize(d)
}
