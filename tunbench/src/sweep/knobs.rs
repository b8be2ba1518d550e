//! The knobs a sweep varies, their values, and a cell (one combination of
//! knob values) with its stable key. Knob values are checked against the
//! same ranges tunneld and the engine enforce, inside the YAML visitor, so a
//! bad value is reported with its field path and line.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use tunneld::config::{CipherKind, QueueKind, TransportKind};
use tunneld::units::{format_size, parse_size};
use tunneld::yaml::Quantity;

/// One tunable setting. The order of the variants is the order of the knobs
/// in a cell key and in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Knob {
    /// tunneld AEAD (`cipher`).
    Cipher,
    /// tunneld `dataplane.offload` (TUN TSO/GRO, UDP GSO/GRO).
    Offload,
    /// tunneld `dataplane.batch` (packets per system-call batch).
    Batch,
    /// tunneld `dataplane.workers` (data-path threads, 1..=64).
    Workers,
    /// tunneld `dataplane.flows` (UDP sockets per peer, 1..=16).
    Flows,
    /// tunneld `dataplane.queue` (fq_codel or fifo).
    Queue,
    /// tunneld `interface.mtu`.
    Mtu,
    /// tunneld `mss_clamp` (rewrite the MSS of SYNs to fit the MTU).
    MssClamp,
    /// tunneld `socket_buffer` (its UDP socket's SO_SNDBUF/SO_RCVBUF).
    SocketBuffer,
    /// tunneld `peers[].transport` (udp, tcp, quic) of every peer.
    Transport,
    /// Engine TCP_MAXSEG of the test's TCP sockets, bytes.
    Mss,
    /// Engine socket buffer (TCP window) of the test's data sockets, bytes.
    Window,
    /// Engine parallel TCP streams.
    Streams,
}

/// Every knob, in key order.
pub const ALL: [Knob; 13] = [
    Knob::Cipher,
    Knob::Offload,
    Knob::Batch,
    Knob::Workers,
    Knob::Flows,
    Knob::Queue,
    Knob::Mtu,
    Knob::MssClamp,
    Knob::SocketBuffer,
    Knob::Transport,
    Knob::Mss,
    Knob::Window,
    Knob::Streams,
];

impl Knob {
    /// The profile spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Knob::Cipher => "cipher",
            Knob::Offload => "offload",
            Knob::Batch => "batch",
            Knob::Workers => "workers",
            Knob::Flows => "flows",
            Knob::Queue => "queue",
            Knob::Mtu => "mtu",
            Knob::MssClamp => "mss_clamp",
            Knob::SocketBuffer => "socket_buffer",
            Knob::Transport => "transport",
            Knob::Mss => "mss",
            Knob::Window => "window",
            Knob::Streams => "streams",
        }
    }

    /// True if changing it means restarting tunneld with a new config
    /// (false: the traffic engine applies it).
    pub fn is_tunneld(self) -> bool {
        !matches!(self, Knob::Mss | Knob::Window | Knob::Streams)
    }

    /// True if its values are byte sizes (shown as K/M).
    pub fn is_size(self) -> bool {
        matches!(self, Knob::SocketBuffer | Knob::Window)
    }
}

impl fmt::Display for Knob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A knob's value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// on/off knobs.
    Bool(bool),
    /// Counts and byte sizes.
    Num(u64),
    /// Names (cipher, transport).
    Text(String),
}

impl Value {
    /// The number, if it is one.
    pub fn num(&self) -> Option<u64> {
        match self {
            Value::Num(n) => Some(*n),
            _ => None,
        }
    }
    /// The flag, if it is one.
    pub fn flag(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Num(n) => write!(f, "{n}"),
            Value::Text(t) => f.write_str(t),
        }
    }
}

/// Formats a value for people (sizes as K/M).
pub fn show(knob: Knob, v: &Value) -> String {
    match (knob.is_size(), v) {
        (true, Value::Num(n)) => format_size(*n),
        _ => v.to_string(),
    }
}

/// One combination of knob values. Knobs not in the map keep the base
/// settings (the scenario's tunneld settings, tunneld's and the engine's
/// defaults).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cell {
    /// The knobs this cell sets.
    pub knobs: BTreeMap<Knob, Value>,
}

impl Cell {
    /// The stable key: `knob=value` pairs in knob order joined by `,`
    /// (values in plain numbers, so `4M` and `4096K` give the same key).
    pub fn key(&self) -> String {
        let parts: Vec<String> = self.knobs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if parts.is_empty() {
            "base".into()
        } else {
            parts.join(",")
        }
    }

    /// The value of `k`, if set.
    pub fn get(&self, k: Knob) -> Option<&Value> {
        self.knobs.get(&k)
    }

    /// A short label for people, e.g. `batch 16, window 4.0 MiB`.
    pub fn label(&self) -> String {
        if self.knobs.is_empty() {
            return "base settings".into();
        }
        self.knobs
            .iter()
            .map(|(k, v)| format!("{k} {}", show(*k, v)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// ---- values inside the profile: checked in the visitor (field + line) ----

fn bounded(s: &str, lo: u64, hi: u64, size: bool) -> Result<u64, String> {
    let v = if size {
        if s.trim_start().starts_with('-') {
            return Err(format!("'{s}' must not be negative"));
        }
        parse_size(s).map_err(|e| e.to_string())?
    } else {
        let n: i64 = s
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a whole number"))?;
        u64::try_from(n).map_err(|_| format!("'{s}' must not be negative"))?
    };
    if v < lo || v > hi {
        let (l, h) = if size {
            (format_size(lo), format_size(hi))
        } else {
            (lo.to_string(), hi.to_string())
        };
        return Err(format!("{s} is out of range {l}..={h}"));
    }
    Ok(v)
}

macro_rules! bounded_type {
    ($name:ident, $lo:expr, $hi:expr, $size:expr, $what:expr) => {
        #[doc = concat!("A checked ", $what, ".")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name(pub u64);
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(Quantity {
                    what: $what,
                    parse: |s| bounded(s, $lo, $hi, $size),
                })
                .map($name)
            }
        }
    };
}

bounded_type!(
    BatchV,
    *tunneld::config::BATCH_RANGE.start(),
    *tunneld::config::BATCH_RANGE.end(),
    false,
    "batch size (packets, 1..=128)"
);
bounded_type!(
    WorkersV,
    *tunneld::config::WORKERS_RANGE.start(),
    *tunneld::config::WORKERS_RANGE.end(),
    false,
    "worker count (1..=64)"
);
bounded_type!(
    FlowsV,
    *tunneld::config::FLOWS_RANGE.start(),
    *tunneld::config::FLOWS_RANGE.end(),
    false,
    "UDP flow count (1..=16)"
);
bounded_type!(
    MtuV,
    *tunneld::config::MTU_RANGE.start() as u64,
    *tunneld::config::MTU_RANGE.end() as u64,
    false,
    "tunnel MTU (576..=9000)"
);
bounded_type!(
    MssV,
    crate::engine::spec::MIN_MSS as u64,
    crate::engine::spec::MAX_MSS as u64,
    false,
    "TCP MSS in bytes"
);
bounded_type!(
    WindowV,
    crate::engine::spec::MIN_WINDOW,
    crate::engine::spec::MAX_WINDOW,
    true,
    "socket buffer size such as 256K or 4M"
);
bounded_type!(
    SockBufV,
    *tunneld::config::SOCKET_BUFFER_RANGE.start(),
    *tunneld::config::SOCKET_BUFFER_RANGE.end(),
    true,
    "UDP socket buffer size such as 4M (64K..=1G)"
);
bounded_type!(
    StreamsV,
    1,
    crate::lab::scenario::MAX_STREAMS as u64,
    false,
    "parallel stream count (1..=64)"
);

/// A tunneld cipher as a knob value.
pub fn cipher_value(c: CipherKind) -> Value {
    Value::Text(c.as_str().into())
}

/// The cipher a knob value names (values come from the checked profile).
pub fn cipher_of(v: &Value) -> Option<CipherKind> {
    match v {
        Value::Text(t) => match t.as_str() {
            "aes-256-gcm" => Some(CipherKind::Aes256Gcm),
            "chacha20-poly1305" => Some(CipherKind::ChaCha20Poly1305),
            "none" => Some(CipherKind::None),
            _ => None,
        },
        _ => None,
    }
}

/// A tunneld transport as a knob value.
pub fn transport_value(t: TransportKind) -> Value {
    Value::Text(t.as_str().into())
}

/// The transport a knob value names (values come from the checked profile).
pub fn transport_of(v: &Value) -> Option<TransportKind> {
    match v {
        Value::Text(t) => match t.as_str() {
            "udp" => Some(TransportKind::Udp),
            "tcp" => Some(TransportKind::Tcp),
            "quic" => Some(TransportKind::Quic),
            _ => None,
        },
        _ => None,
    }
}

/// A tunneld queue discipline as a knob value.
pub fn queue_value(q: QueueKind) -> Value {
    Value::Text(q.as_str().into())
}

/// The queue discipline a knob value names.
pub fn queue_of(v: &Value) -> Option<QueueKind> {
    match v {
        Value::Text(t) => match t.as_str() {
            "fq_codel" => Some(QueueKind::FqCodel),
            "fifo" => Some(QueueKind::Fifo),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_stable_and_ordered() {
        let mut c = Cell::default();
        c.knobs.insert(Knob::Window, Value::Num(4 << 20));
        c.knobs.insert(Knob::Batch, Value::Num(16));
        c.knobs.insert(Knob::Cipher, cipher_value(CipherKind::None));
        assert_eq!(c.key(), "cipher=none,batch=16,window=4194304");
        assert_eq!(Cell::default().key(), "base");
        let json = serde_json::to_string(&c).expect("json");
        let back: Cell = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.key(), c.key());
    }

    #[test]
    fn bounds() {
        assert_eq!(bounded("64", 1, 128, false), Ok(64));
        assert!(bounded("0", 1, 128, false).is_err());
        assert!(matches!(bounded("-3", 1, 128, false), Err(e) if e.contains("negative")));
        assert_eq!(bounded("4M", 1, 1 << 30, true), Ok(4 << 20));
        assert!(bounded("-4M", 1, 1 << 30, true).is_err());
        assert!(bounded("x", 1, 2, false).is_err());
    }

    #[test]
    fn transport_values_round_trip() {
        for t in [TransportKind::Udp, TransportKind::Tcp, TransportKind::Quic] {
            assert_eq!(transport_of(&transport_value(t)), Some(t));
        }
        assert_eq!(transport_of(&Value::Text("sctp".into())), None);
        assert_eq!(transport_of(&Value::Num(1)), None);
    }
}
