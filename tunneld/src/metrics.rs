//! The Prometheus view of a [`Status`] snapshot: every counter and gauge
//! `tunneld status --prometheus` and `GET /metrics` serve, encoded by the
//! Prometheus project's own client (`prometheus-client`) in the OpenMetrics
//! text format, each sample labelled with the tunnel's interface.
//!
//! Counters are named here without their `_total` suffix: the encoder adds
//! it, as OpenMetrics requires.

use crate::control::Status;
use crate::io_counters::{MetricKind, FAMILIES};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::sync::atomic::AtomicU64;

/// The HTTP `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;
type CounterFamily = Family<Labels, Counter<u64, AtomicU64>>;
type GaugeFamily = Family<Labels, Gauge<u64, AtomicU64>>;

/// Builds one registry per snapshot (scrapes are seconds apart; the data
/// path never touches it).
struct Builder(Registry);

impl Builder {
    fn counter(&mut self, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, u64)>) {
        let f = CounterFamily::default();
        for (labels, v) in rows {
            f.get_or_create(&labels).inc_by(v);
        }
        self.0.register(name, help.trim_end_matches('.'), f);
    }

    fn gauge(&mut self, name: &str, help: &str, rows: impl IntoIterator<Item = (Labels, u64)>) {
        let f = GaugeFamily::default();
        for (labels, v) in rows {
            f.get_or_create(&labels).set(v);
        }
        self.0.register(name, help.trim_end_matches('.'), f);
    }
}

/// Rows labelled `label="<name>"`.
fn by<'a>(
    label: &'static str,
    rows: &'a [(&str, u64)],
) -> impl Iterator<Item = (Labels, u64)> + 'a {
    rows.iter()
        .map(move |(name, v)| (vec![(label, (*name).to_string())], *v))
}

/// One unlabelled row.
fn one(v: u64) -> [(Labels, u64); 1] {
    [(Vec::new(), v)]
}

/// The OpenMetrics text of `s`.
pub fn render(s: &Status) -> String {
    let mut b = Builder(Registry::with_labels(
        [(Cow::Borrowed("interface"), Cow::Owned(s.interface.clone()))].into_iter(),
    ));
    let c = &s.counters;
    b.counter(
        "tunneld_rx_packets",
        "Inner packets delivered to the TUN device.",
        one(c.rx_packets),
    );
    b.counter(
        "tunneld_rx_bytes",
        "Inner bytes delivered to the TUN device.",
        one(c.rx_bytes),
    );
    b.counter(
        "tunneld_tx_packets",
        "Inner packets sealed and sent.",
        one(c.tx_packets),
    );
    b.counter(
        "tunneld_tx_bytes",
        "Inner bytes sealed and sent.",
        one(c.tx_bytes),
    );
    b.counter(
        "tunneld_handshakes",
        "Handshakes completed.",
        one(c.handshakes),
    );
    b.counter(
        "tunneld_handshake_dh",
        "Received handshake messages given public-key work (the cost a flood can impose).",
        one(c.handshake_dh),
    );
    b.counter(
        "tunneld_cookie_replies_sent",
        "Handshake messages answered with a cookie reply under load instead of public-key work.",
        one(c.cookie_replies_sent),
    );
    b.counter(
        "tunneld_cookie_replies_received",
        "Cookie replies accepted from peers under load.",
        one(c.cookie_replies_received),
    );
    b.counter(
        "tunneld_triggered_handshakes_suppressed",
        "Data frames for unknown indexes that did not trigger a handshake (one per 5 s per peer).",
        one(c.triggered_handshakes_suppressed),
    );
    b.counter(
        "tunneld_pmtu_probes",
        "Path MTU probe frames: sent, answered (the peer's, with an ack), acked (ours, answered in time), stray acks.",
        by(
            "event",
            &[
                ("sent", c.pmtu_probes_sent),
                ("answered", c.pmtu_probes_answered),
                ("acked", c.pmtu_acks_received),
                ("stray_ack", c.pmtu_acks_stray),
            ],
        ),
    );
    b.counter(
        "tunneld_drops",
        "Packets dropped, by reason.",
        by(
            "reason",
            &[
                ("malformed", c.drop_malformed),
                ("bad_tag", c.drop_bad_tag),
                ("replay", c.drop_replay),
                ("unknown_index", c.drop_unknown_index),
                ("spoofed_source", c.drop_spoofed_source),
                ("handshake_invalid", c.drop_handshake_invalid),
                ("handshake_ratelimit", c.drop_handshake_ratelimit),
                ("handshake_mac", c.drop_handshake_mac),
                ("cookie_invalid", c.drop_cookie_invalid),
                ("no_route", c.drop_no_route),
                ("no_session", c.drop_no_session),
                ("transit_denied", c.drop_transit_denied),
            ],
        ),
    );
    let io = s.io.values();
    for fam in FAMILIES {
        let rows = io.iter().filter(|(c, _)| c.family == fam).map(|(c, v)| {
            let labels = match (fam.label, c.label) {
                (Some(key), Some(value)) => vec![(key, value.to_string())],
                _ => Vec::new(),
            };
            (labels, *v)
        });
        match fam.kind {
            MetricKind::Counter => b.counter(fam.name, fam.help, rows),
            MetricKind::Gauge => b.gauge(fam.name, fam.help, rows),
        }
    }
    let d = &s.dataplane;
    b.gauge(
        "tunneld_offload",
        "Offloads in use (1 = on; udp_gso/udp_gro: segments per call).",
        by(
            "kind",
            &[
                ("tun", u64::from(d.tun_offload)),
                ("udp_gso", d.udp_gso_segments as u64),
                ("udp_gro", d.udp_gro_segments as u64),
            ],
        ),
    );
    b.gauge(
        "tunneld_udp_flows",
        "UDP flows (sockets) frames are spread over.",
        one(d.flows as u64),
    );
    let t = &s.transport;
    b.counter(
        "tunneld_udp_rcvbuf_drops",
        "Datagrams the kernel dropped at the UDP sockets: receive buffer full.",
        one(t.udp_rcvbuf_drops),
    );
    b.gauge(
        "tunneld_udp_rx_queued_bytes",
        "Bytes waiting in the UDP sockets' receive buffers.",
        one(t.udp_rx_queued_bytes),
    );
    if !t.udp_flow_datagrams.is_empty() {
        b.counter(
            "tunneld_udp_flow_datagrams",
            "UDP datagrams sent, per flow.",
            t.udp_flow_datagrams
                .iter()
                .enumerate()
                .map(|(flow, v)| (vec![("flow", flow.to_string())], *v)),
        );
    }
    let peer = |name: &str| vec![("peer", name.to_string())];
    b.gauge(
        "tunneld_peer_session",
        "Whether a usable session exists with the peer.",
        s.peers
            .iter()
            .map(|p| (peer(&p.name), u64::from(p.session))),
    );
    b.gauge(
        "tunneld_peer_up",
        "Whether the peer is up (session established and heard from within health.dead_after); what routes.install on-session follows.",
        s.peers.iter().map(|p| (peer(&p.name), u64::from(p.up))),
    );
    b.counter(
        "tunneld_peer_downs",
        "Times the peer went down.",
        s.peers.iter().map(|p| (peer(&p.name), p.downs)),
    );
    b.counter(
        "tunneld_peer_transit_denied",
        "Packets from the peer to other peers refused by its transit list.",
        s.peers.iter().map(|p| (peer(&p.name), p.transit_denied)),
    );
    b.gauge(
        "tunneld_peer_path_mtu",
        "Outer path MTU to the peer validated by path MTU probing (bytes; peers being probed only).",
        s.peers
            .iter()
            .filter_map(|p| p.path_mtu.map(|m| (peer(&p.name), m as u64))),
    );
    b.counter(
        "tunneld_peer_pmtu_black_holes",
        "Path MTU black holes found towards the peer (a size that worked stopped getting through while small frames did).",
        s.peers
            .iter()
            .map(|p| (peer(&p.name), p.pmtu_black_holes)),
    );
    b.counter(
        "tunneld_peer_bytes",
        "Inner bytes per peer and direction.",
        s.peers.iter().flat_map(|p| {
            [("tx", p.tx_bytes), ("rx", p.rx_bytes)].map(|(dir, v)| {
                let mut l = peer(&p.name);
                l.push(("direction", dir.to_string()));
                (l, v)
            })
        }),
    );
    b.counter(
        "tunneld_peer_handshakes",
        "Handshakes completed per peer.",
        s.peers.iter().map(|p| (peer(&p.name), p.handshakes)),
    );
    b.gauge(
        "tunneld_peer_initiations_unanswered",
        "Initiations sent to the peer since its last session was established.",
        s.peers
            .iter()
            .map(|p| (peer(&p.name), u64::from(p.initiations_unanswered))),
    );
    b.gauge(
        "tunneld_peer_last_handshake_seconds",
        "Seconds since the peer's last handshake (absent: none yet).",
        s.peers
            .iter()
            .filter_map(|p| p.last_handshake_secs_ago.map(|a| (peer(&p.name), a as u64))),
    );
    b.gauge(
        "tunneld_peer_transport",
        "The peer's transport (value 1).",
        s.peers.iter().map(|p| {
            let mut l = peer(&p.name);
            l.push(("transport", p.transport.to_string()));
            (l, 1)
        }),
    );
    b.counter(
        "tunneld_transport_events",
        "TCP/QUIC transport events, by kind (drops included).",
        by(
            "event",
            &[
                ("tcp_accepted", t.tcp_accepted),
                ("tcp_dialed", t.tcp_dialed),
                ("tcp_refused", t.tcp_refused),
                ("tcp_authenticated", t.tcp_authenticated),
                ("tcp_evicted", t.tcp_evicted),
                ("tcp_auth_timeout", t.tcp_auth_timeout),
                ("tcp_bad_length", t.tcp_bad_length),
                ("tcp_truncated", t.tcp_truncated),
                ("quic_connections", t.quic_connections),
                ("quic_handshake_failures", t.quic_handshake_failures),
                ("quic_send_too_big", t.quic_send_too_big),
                ("rx_queue_full", t.rx_queue_full),
                ("tx_queue_full", t.tx_queue_full),
                ("tx_no_connection", t.tx_no_connection),
            ],
        ),
    );
    b.gauge(
        "tunneld_transport_tcp_pending",
        "Accepted TCP connections not yet authenticated.",
        one(t.tcp_pending),
    );
    b.counter(
        "tunneld_reloads",
        "Config reloads, by result.",
        by(
            "result",
            &[
                ("applied", s.reloads.applied),
                ("refused", s.reloads.refused),
            ],
        ),
    );
    b.gauge(
        "tunneld_uptime_seconds",
        "Seconds since the daemon started.",
        one(s.uptime_secs as u64),
    );
    let mut out = String::new();
    // Writing into a String cannot fail; an empty answer would show a
    // scrape error rather than wrong numbers.
    if encode(&mut out, &b.0).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_drops_and_peers_in_openmetrics_text() {
        let mut s = Status {
            interface: "t0".into(),
            ..Status::default()
        };
        s.dataplane.flows = 1;
        let one = render(&s);
        assert!(
            one.contains("tunneld_udp_flows{interface=\"t0\"} 1\n"),
            "{one}"
        );
        assert!(!one.contains("tunneld_udp_flow_datagrams_total{"), "{one}");
        assert!(one.ends_with("# EOF\n"), "{one}");
        s.dataplane.flows = 3;
        s.transport.udp_flow_datagrams = vec![7, 0, 42];
        s.transport.udp_rcvbuf_drops = 5;
        s.io.ecn_path_ce = 9;
        s.io.ecn_not_ect_drops = 2;
        s.io.queue_ecn_marks = 4;
        s.io.send_errors = 6;
        s.io.path_too_big = 8;
        s.io.queue_packets = 3;
        s.io.udp_send_frames = 640;
        s.counters.drop_replay = 11;
        s.counters.rx_bytes = 123_456;
        s.reloads.applied = 2;
        s.counters.pmtu_probes_sent = 6;
        s.peers = vec![crate::device::PeerStatus {
            path_mtu: Some(1396),
            pmtu_black_holes: 1,
            ..crate::show::tests::peer_status("dc-b")
        }];
        let m = render(&s);
        for line in [
            "# TYPE tunneld_rx_bytes counter\n",
            "# HELP tunneld_rx_bytes Inner bytes delivered to the TUN device.\n",
            "tunneld_rx_bytes_total{interface=\"t0\"} 123456\n",
            "tunneld_udp_flows{interface=\"t0\"} 3\n",
            "tunneld_udp_flow_datagrams_total{interface=\"t0\",flow=\"2\"} 42\n",
            "tunneld_udp_flow_datagrams_total{interface=\"t0\",flow=\"1\"} 0\n",
            "tunneld_udp_rcvbuf_drops_total{interface=\"t0\"} 5\n",
            "tunneld_udp_rx_queued_bytes{interface=\"t0\"} 0\n",
            "tunneld_ecn_total{interface=\"t0\",event=\"path_ce\"} 9\n",
            "tunneld_ecn_total{interface=\"t0\",event=\"path_ce_not_ect_dropped\"} 2\n",
            "tunneld_ecn_total{interface=\"t0\",event=\"queue_ce\"} 4\n",
            "# HELP tunneld_io_errors Data-path I/O errors, by operation.\n",
            "tunneld_io_errors_total{interface=\"t0\",op=\"send\"} 6\n",
            "tunneld_io_errors_total{interface=\"t0\",op=\"tun_read\"} 0\n",
            "tunneld_path_too_big_total{interface=\"t0\"} 8\n",
            "# TYPE tunneld_queue_packets gauge\n",
            "tunneld_queue_packets{interface=\"t0\"} 3\n",
            "tunneld_io_packets_total{interface=\"t0\",op=\"udp_send\"} 640\n",
            "tunneld_io_calls_total{interface=\"t0\",op=\"udp_recv\"} 0\n",
            "tunneld_drops_total{interface=\"t0\",reason=\"replay\"} 11\n",
            "tunneld_reloads_total{interface=\"t0\",result=\"applied\"} 2\n",
            "tunneld_pmtu_probes_total{interface=\"t0\",event=\"sent\"} 6\n",
            "tunneld_peer_path_mtu{interface=\"t0\",peer=\"dc-b\"} 1396\n",
            "tunneld_peer_pmtu_black_holes_total{interface=\"t0\",peer=\"dc-b\"} 1\n",
        ] {
            assert!(m.contains(line), "{line} missing in {m}");
        }
    }
}
