//! The data path's I/O counters, declared once: each with its status field
//! name, the Prometheus family and label it is served under, and what it
//! means. From that one list come the atomics the workers bump
//! ([`IoStats`]), the snapshot in `tunneld status` ([`IoCounters`], the
//! `io` object), the Prometheus families ([`FAMILIES`], rendered by
//! `metrics`) and the table in docs/tunneld.md ([`docs_table`]; a test
//! checks the file holds exactly that table).
//!
//! Adding a counter: one entry in the `io_counters!` list below (and, for
//! a new family, one in [`FAMILIES`]), then `TUNNELD_BLESS_DOCS=1 cargo
//! test -p tunneld --lib io_counters` rewrites the docs table.

use std::sync::atomic::{AtomicU64, Ordering};

/// Whether a family's samples only grow or go up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only grows (OpenMetrics adds `_total` to the name).
    Counter,
    /// A level at the snapshot.
    Gauge,
}

/// A Prometheus family some I/O counters are served under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    /// Family name, without `_total`.
    pub name: &'static str,
    /// Its `# HELP` text.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// The label that tells its samples apart (`op`, `reason`), if several.
    pub label: Option<&'static str>,
}

/// System-call failures, by operation.
pub const IO_ERRORS: Family = Family {
    name: "tunneld_io_errors",
    help: "Data-path I/O errors, by operation.",
    kind: MetricKind::Counter,
    label: Some("op"),
};
/// Inner packets answered with ICMP too-big.
pub const PATH_TOO_BIG: Family = Family {
    name: "tunneld_path_too_big",
    help: "Inner packets too big for the path to their peer, answered with ICMP too-big.",
    kind: MetricKind::Counter,
    label: None,
};
/// fq_codel drops, by reason.
pub const QUEUE_DROPS: Family = Family {
    name: "tunneld_queue_drops",
    help: "Inner packets dropped by the fq_codel queue, by reason.",
    kind: MetricKind::Counter,
    label: Some("reason"),
};
/// ECN events.
pub const ECN: Family = Family {
    name: "tunneld_ecn",
    help: "ECN events: CE marks by the fq_codel queue (queue_ce), CE marks from the path \
           carried into inner packets (path_ce), outer CE on inner packets that are not \
           ECN-capable, dropped (path_ce_not_ect_dropped).",
    kind: MetricKind::Counter,
    label: Some("event"),
};
/// The fq_codel queue's length.
pub const QUEUE_PACKETS: Family = Family {
    name: "tunneld_queue_packets",
    help: "Packets in the fq_codel queue.",
    kind: MetricKind::Gauge,
    label: None,
};
/// Sends whose frames were copied into one buffer first.
pub const SEND_COPIES: Family = Family {
    name: "tunneld_udp_send_copies",
    help: "UDP sends whose frames did not lie back to back where they were sealed, \
           copied into one buffer first.",
    kind: MetricKind::Counter,
    label: None,
};
/// System calls, by operation.
pub const IO_CALLS: Family = Family {
    name: "tunneld_io_calls",
    help: "Data-path system calls by operation.",
    kind: MetricKind::Counter,
    label: Some("op"),
};
/// Packets moved by those calls.
pub const IO_PACKETS: Family = Family {
    name: "tunneld_io_packets",
    help: "Packets moved by those calls (packets / calls = batching achieved).",
    kind: MetricKind::Counter,
    label: Some("op"),
};

/// Every family, in the order they are served.
pub const FAMILIES: [Family; 8] = [
    IO_ERRORS,
    PATH_TOO_BIG,
    QUEUE_DROPS,
    ECN,
    QUEUE_PACKETS,
    IO_CALLS,
    IO_PACKETS,
    SEND_COPIES,
];

/// One I/O counter as declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// Field name in the status `io` object.
    pub field: &'static str,
    /// Family it is served under.
    pub family: Family,
    /// Its value of the family's label, if the family has one.
    pub label: Option<&'static str>,
    /// What it counts (the docs table's text).
    pub meaning: &'static str,
}

macro_rules! io_counters {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident: $family:ident $([$label:literal])?,
    )+) => {
        /// The data path's I/O counters, bumped by its workers (relaxed
        /// atomics: each is read on its own, once per status snapshot).
        #[derive(Debug, Default)]
        pub struct IoStats {
            $($(#[doc = $doc])+ pub $field: AtomicU64,)+
        }

        /// A snapshot of [`IoStats`]: the `io` object of `tunneld status`.
        #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
        pub struct IoCounters {
            $($(#[doc = $doc])+ pub $field: u64,)+
        }

        impl IoStats {
            /// The counters now.
            pub fn snapshot(&self) -> IoCounters {
                IoCounters {
                    $($field: self.$field.load(Ordering::Relaxed),)+
                }
            }
        }

        impl IoCounters {
            /// Every counter with its declaration, in declaration order.
            pub fn values(&self) -> Vec<(&'static Counter, u64)> {
                COUNTERS.iter().zip([$(self.$field),+]).collect()
            }
        }

        /// Every I/O counter, in declaration order.
        pub const COUNTERS: &[Counter] = &[$(Counter {
            field: stringify!($field),
            family: $family,
            label: io_counters!(@label $($label)?),
            meaning: concat!($($doc),+),
        },)+];
    };
    (@label $label:literal) => { Some($label) };
    (@label) => { None };
}

io_counters! {
    /// Transport sends that failed (socket buffer full, no route to the
    /// peer).
    send_errors: IO_ERRORS["send"],
    /// Transport receives that failed (e.g. an ICMP port unreachable
    /// surfacing).
    recv_errors: IO_ERRORS["recv"],
    /// Packets the TUN device refused.
    tun_write_errors: IO_ERRORS["tun_write"],
    /// TUN reads that failed, or returned a super-packet that could not be
    /// split (its packets are lost). tunneld sets the device's
    /// `gso_max_segs` to 128 so the kernel never hands it more segments
    /// than it splits; a warning at start says when that could not be set.
    tun_read_errors: IO_ERRORS["tun_read"],
    /// Inner packets whose frame would not fit the path to their peer (for
    /// UDP the kernel's path MTU or what path MTU probing validated,
    /// whichever is smaller; the datagram limit for QUIC): not sent,
    /// answered with an ICMP "fragmentation needed" / "packet too big" into
    /// the TUN device so the sender adapts.
    path_too_big: PATH_TOO_BIG,
    /// TUN reads.
    tun_reads: IO_CALLS["tun_read"],
    /// Inner packets those reads yielded (more packets than reads: TSO
    /// super-packets were split).
    tun_read_packets: IO_PACKETS["tun_read"],
    /// Batched TUN writes.
    tun_writes: IO_CALLS["tun_write"],
    /// Inner packets those writes carried (coalesced per TCP flow when
    /// offload is on).
    tun_write_packets: IO_PACKETS["tun_write"],
    /// UDP send calls.
    udp_sends: IO_CALLS["udp_send"],
    /// Frames those sends carried (more frames than calls: GSO).
    udp_send_frames: IO_PACKETS["udp_send"],
    /// Of those sends, the ones whose frames were copied into one buffer
    /// first. Full-size frames sealed in consecutive slots, and any single
    /// frame, leave from where they were sealed; a run of smaller frames
    /// (hosts with a smaller MSS, bursts of ACKs) or one with another
    /// peer's frames between its own is copied.
    udp_send_copies: SEND_COPIES,
    /// UDP receive buffers.
    udp_recv_buffers: IO_CALLS["udp_recv"],
    /// Frames those buffers held (more frames than buffers: GRO).
    udp_recv_frames: IO_PACKETS["udp_recv"],
    /// Inner packets the fq_codel queue dropped because of a standing
    /// queue (CoDel).
    queue_codel_drops: QUEUE_DROPS["codel"],
    /// Inner packets the fq_codel queue dropped because it held
    /// `queue_limit` packets.
    queue_overflow_drops: QUEUE_DROPS["overflow"],
    /// Packets waiting in the fq_codel queue at the snapshot.
    queue_packets: QUEUE_PACKETS,
    /// ECN-capable packets the fq_codel queue marked CE instead of
    /// dropping.
    queue_ecn_marks: ECN["queue_ce"],
    /// Inner packets marked CE because the path marked their frame's outer
    /// header CE (RFC 6040).
    ecn_path_ce: ECN["path_ce"],
    /// Frames marked CE on the path whose inner packet is not ECN-capable:
    /// dropped after every protocol check passed (so they are in
    /// `rx_packets` too).
    ecn_not_ect_drops: ECN["path_ce_not_ect_dropped"],
}

/// The Prometheus sample name of `c`, as `status --prometheus` prints it
/// (`tunneld_io_errors_total{op="send"}`; the `interface` label omitted).
pub fn sample_name(c: &Counter) -> String {
    let suffix = match c.family.kind {
        MetricKind::Counter => "_total",
        MetricKind::Gauge => "",
    };
    match (c.family.label, c.label) {
        (Some(key), Some(value)) => format!("{}{suffix}{{{key}=\"{value}\"}}", c.family.name),
        _ => format!("{}{suffix}", c.family.name),
    }
}

/// The Markdown table of the I/O counters in docs/tunneld.md.
pub fn docs_table() -> String {
    let mut out = String::from("| status field | Prometheus | meaning |\n|---|---|---|\n");
    for c in COUNTERS {
        out.push_str(&format!(
            "| `io.{}` | `{}` | {} |\n",
            c.field,
            sample_name(c),
            c.meaning.trim()
        ));
    }
    out
}

/// The markers around the generated table in docs/tunneld.md.
pub const DOCS_BEGIN: &str =
    "<!-- io counters: generated from tunneld/src/io_counters.rs, do not edit -->\n";
/// See [`DOCS_BEGIN`].
pub const DOCS_END: &str = "<!-- end of io counters -->\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reads_every_counter_and_families_cover_them() {
        let io = IoStats::default();
        io.send_errors.fetch_add(3, Ordering::Relaxed);
        io.ecn_not_ect_drops.fetch_add(5, Ordering::Relaxed);
        let snap = io.snapshot();
        assert_eq!((snap.send_errors, snap.ecn_not_ect_drops), (3, 5));
        let values = snap.values();
        assert_eq!(values.len(), COUNTERS.len());
        let json = serde_json::to_value(&snap).expect("json");
        for (c, v) in values {
            assert_eq!(json[c.field].as_u64(), Some(v), "{}", c.field);
            assert!(FAMILIES.contains(&c.family), "{}", c.field);
            assert_eq!(c.family.label.is_some(), c.label.is_some(), "{}", c.field);
        }
        // No two counters share a sample.
        let mut names: Vec<String> = COUNTERS.iter().map(sample_name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), COUNTERS.len());
        assert_eq!(
            sample_name(&COUNTERS[0]),
            "tunneld_io_errors_total{op=\"send\"}"
        );
    }

    /// docs/tunneld.md holds exactly the generated table;
    /// `TUNNELD_BLESS_DOCS=1` rewrites it.
    #[test]
    fn docs_table_matches_the_declarations() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/tunneld.md");
        let text = std::fs::read_to_string(path).expect("docs/tunneld.md");
        let begin = text
            .find(DOCS_BEGIN)
            .expect("begin marker in docs/tunneld.md")
            + DOCS_BEGIN.len();
        let end = text[begin..].find(DOCS_END).expect("end marker") + begin;
        let want = docs_table();
        if text[begin..end] != want && std::env::var_os("TUNNELD_BLESS_DOCS").is_some() {
            let new = format!("{}{want}{}", &text[..begin], &text[end..]);
            std::fs::write(path, new).expect("rewrite docs/tunneld.md");
            return;
        }
        assert_eq!(
            text[begin..end],
            want,
            "docs/tunneld.md's io counter table is stale: run \
             TUNNELD_BLESS_DOCS=1 cargo test -p tunneld --lib io_counters"
        );
    }
}
