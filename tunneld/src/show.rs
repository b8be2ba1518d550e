//! `tunneld show`: the human view of a [`Status`], in the shape operators
//! know from `wg show` — the interface, then each peer with its endpoint,
//! latest handshake and transfer; drop counters only when non-zero; and for
//! a peer without a session, why.

use crate::control::Status;
use crate::device::{clock_utc, no_session_reason, PeerStatus};
use crate::peer::Diagnosis;
use std::fmt::Write;
use std::time::Duration;

/// The text `tunneld show` prints for `s`, `now_unix` being the time now
/// (Unix seconds).
pub fn render(s: &Status, now_unix: u64) -> String {
    let mut o = String::new();
    let d = &s.dataplane;
    let _ = writeln!(o, "interface: {}", s.interface);
    let _ = writeln!(o, "  public key: {}", s.public_key);
    let _ = writeln!(o, "  listening on: {}", s.listen);
    let _ = writeln!(o, "  cipher: {}", s.cipher);
    let _ = writeln!(o, "  up: {}", span(s.uptime_secs as u64));
    let mut offloads = Vec::new();
    if d.tun_offload {
        offloads.push("tun tso/gro".to_string());
    }
    if d.udp_gso_segments > 1 {
        offloads.push(format!("udp gso x{}", d.udp_gso_segments));
    }
    if d.udp_gro_segments > 1 {
        offloads.push(format!("udp gro x{}", d.udp_gro_segments));
    }
    let _ = writeln!(
        o,
        "  data path: {} worker(s), batch {}, queue {}, {} udp flow(s); offloads: {}",
        d.workers,
        d.batch,
        d.queue,
        d.flows,
        if offloads.is_empty() {
            "none".to_string()
        } else {
            offloads.join(", ")
        }
    );
    if let Some(why) = &d.workers_auto {
        let _ = writeln!(o, "  workers auto: {} ({why})", d.workers);
    }
    let r = &s.reloads;
    if r.applied + r.refused > 0 {
        let _ = writeln!(
            o,
            "  reloads: {} applied, {} refused; last{}: {}",
            r.applied,
            r.refused,
            r.last_unix
                .map(|t| format!(" at {} UTC", clock_utc(t)))
                .unwrap_or_default(),
            r.last.as_deref().unwrap_or("-")
        );
    }
    let c = &s.counters;
    let drops: Vec<String> = [
        ("malformed", c.drop_malformed),
        ("bad tag", c.drop_bad_tag),
        ("replay", c.drop_replay),
        ("unknown index", c.drop_unknown_index),
        ("spoofed source", c.drop_spoofed_source),
        ("handshake invalid", c.drop_handshake_invalid),
        ("handshake rate limit", c.drop_handshake_ratelimit),
        ("handshake mac", c.drop_handshake_mac),
        ("cookie invalid", c.drop_cookie_invalid),
        ("no route", c.drop_no_route),
        ("no session", c.drop_no_session),
        ("queue codel", s.io.queue_codel_drops),
        ("queue overflow", s.io.queue_overflow_drops),
        ("udp receive buffer", s.transport.udp_rcvbuf_drops),
        ("send errors", s.io.send_errors),
        ("tun write errors", s.io.tun_write_errors),
        ("tun read errors", s.io.tun_read_errors),
    ]
    .iter()
    .filter(|(_, v)| *v > 0)
    .map(|(k, v)| format!("{k} {v}"))
    .collect();
    if !drops.is_empty() {
        let _ = writeln!(o, "  drops: {}", drops.join(", "));
    }
    if s.peers.is_empty() {
        let _ = writeln!(o, "\nno peers configured");
    }
    for p in &s.peers {
        peer(&mut o, p, now_unix);
    }
    o
}

fn peer(o: &mut String, p: &PeerStatus, now_unix: u64) {
    let _ = writeln!(o, "\npeer: {} ({})", p.name, p.transport);
    let _ = writeln!(o, "  public key: {}", p.public_key);
    let _ = writeln!(
        o,
        "  endpoint: {}",
        p.endpoint
            .as_deref()
            .unwrap_or("(none: waiting for the peer to connect)")
    );
    let _ = writeln!(o, "  allowed prefixes: {}", p.allowed_prefixes.join(", "));
    if let Some(ago) = p.last_handshake_secs_ago {
        let _ = writeln!(o, "  latest handshake: {} ago", span(ago as u64));
    }
    if p.rx_bytes + p.tx_bytes > 0 {
        let _ = writeln!(
            o,
            "  transfer: {} received, {} sent",
            bytes(p.rx_bytes),
            bytes(p.tx_bytes)
        );
    }
    if let Some(k) = p.keepalive_secs {
        let _ = writeln!(o, "  persistent keepalive: every {}", span(k));
    }
    path_mtu(o, p);
    if !p.session {
        let diag = Diagnosis {
            unanswered: p.initiations_unanswered,
            unanswered_since: p.unanswered_since_unix.map(Duration::from_secs),
            refusal: p.refusal.clone(),
            logged_at: None,
        };
        let why = if p.endpoint.is_none() && diag.unanswered == 0 && diag.refusal.is_none() {
            "the peer has not connected yet (no endpoint configured)".to_string()
        } else {
            no_session_reason(&diag)
        };
        let since = p
            .unanswered_since_unix
            .map(|t| format!(" ({} ago)", span(now_unix.saturating_sub(t))))
            .unwrap_or_default();
        let _ = writeln!(o, "  session: none: {why}{since}");
    }
}

/// The path MTU line: what probing validated, and what it costs inner
/// senders when the path is narrower than the tunnel.
fn path_mtu(o: &mut String, p: &PeerStatus) {
    let holes = match p.pmtu_black_holes {
        0 => String::new(),
        1 => ", 1 black hole found".into(),
        n => format!(", {n} black holes found"),
    };
    match (p.path_mtu, p.pmtud) {
        (Some(mtu), state) => {
            let limit = p
                .inner_mtu_limit
                .map(|l| format!("; inner packets over {l} bytes get ICMP too-big"))
                .unwrap_or_default();
            let _ = writeln!(o, "  path mtu: {mtu} (probing: {state}{holes}){limit}");
        }
        (None, "unsupported") => {
            let _ = writeln!(
                o,
                "  path mtu: not probed (the peer does not answer probes: an older tunneld?)"
            );
        }
        (None, _) => {}
    }
}

/// "1 hour, 2 minutes, 3 seconds", as `wg show` writes spans.
fn span(secs: u64) -> String {
    let parts = [
        (secs / 86_400, "day"),
        (secs / 3600 % 24, "hour"),
        (secs / 60 % 60, "minute"),
        (secs % 60, "second"),
    ];
    let v: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, u)| format!("{n} {u}{}", if *n == 1 { "" } else { "s" }))
        .collect();
    if v.is_empty() {
        "0 seconds".into()
    } else {
        v.join(", ")
    }
}

/// Bytes in binary units with two decimals, as `wg show` writes them.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A peer's status as a running daemon reports it.
    pub(crate) fn peer_status(name: &str) -> PeerStatus {
        PeerStatus {
            name: name.into(),
            transport: crate::config::TransportKind::Udp,
            endpoint: Some("198.18.0.2:51820".into()),
            session: true,
            up: true,
            downs: 0,
            transit_denied: 0,
            last_handshake_secs_ago: Some(64.2),
            tx_bytes: 3 * 1024 * 1024 + 512 * 1024,
            rx_bytes: 1_300_000_000,
            handshakes: 1,
            public_key: "PUB".into(),
            allowed_prefixes: vec!["198.18.2.0/24".into()],
            keepalive_secs: Some(10),
            initiations_unanswered: 0,
            unanswered_since_unix: None,
            refusal: None,
            pmtud: "complete",
            path_mtu: Some(1480),
            inner_mtu_limit: None,
            pmtu_probes: 2,
            pmtu_acks: 2,
            pmtu_black_holes: 0,
        }
    }

    #[test]
    fn peers_transfer_and_only_nonzero_drops() {
        let mut s = Status {
            interface: "tun-a".into(),
            listen: "0.0.0.0:51820".into(),
            uptime_secs: 3723.0,
            peers: vec![peer_status("dc-b")],
            ..Status::default()
        };
        s.counters.drop_replay = 4;
        s.dataplane.workers = 4;
        s.dataplane.workers_auto = Some("16 usable CPUs, eth0 has 4 RX queues".into());
        let text = render(&s, 1_700_000_000);
        for line in [
            "interface: tun-a\n",
            "  data path: 4 worker(s), batch 0",
            "  workers auto: 4 (16 usable CPUs, eth0 has 4 RX queues)\n",
            "  up: 1 hour, 2 minutes, 3 seconds\n",
            "  drops: replay 4\n",
            "peer: dc-b (udp)\n",
            "  latest handshake: 1 minute, 4 seconds ago\n",
            "  transfer: 1.21 GiB received, 3.50 MiB sent\n",
            "  persistent keepalive: every 10 seconds\n",
            "  path mtu: 1480 (probing: complete)\n",
        ] {
            assert!(text.contains(line), "{line:?} missing in\n{text}");
        }
        assert!(!text.contains("bad tag"), "{text}");
        assert!(!text.contains("session: none"), "{text}");
    }

    #[test]
    fn a_narrow_path_says_what_inner_senders_are_told() {
        let mut p = peer_status("dc-b");
        (p.path_mtu, p.inner_mtu_limit, p.pmtu_black_holes) = (Some(1396), Some(1336), 1);
        let mut old = peer_status("dc-c");
        (old.path_mtu, old.pmtud) = (None, "unsupported");
        let s = Status {
            peers: vec![p, old],
            ..Status::default()
        };
        let text = render(&s, 0);
        assert!(!text.contains("workers auto"), "a count: no reason\n{text}");
        for line in [
            "  path mtu: 1396 (probing: complete, 1 black hole found); inner packets over 1336 bytes get ICMP too-big\n",
            "  path mtu: not probed (the peer does not answer probes: an older tunneld?)\n",
        ] {
            assert!(text.contains(line), "{line:?} missing in\n{text}");
        }
    }

    #[test]
    fn a_peer_without_session_says_why() {
        let mut p = peer_status("dc-c");
        p.session = false;
        p.last_handshake_secs_ago = None;
        p.initiations_unanswered = 3;
        // 12:01:07 UTC.
        p.unanswered_since_unix = Some(1_700_000_000 - 1_700_000_000 % 86_400 + 43_267);
        let now = p.unanswered_since_unix.map_or(0, |t| t + 25);
        let s = Status {
            peers: vec![p.clone()],
            ..Status::default()
        };
        let text = render(&s, now);
        assert!(
            text.contains(
                "  session: none: 3 initiations unanswered since 12:01:07 UTC (the peer is down"
            ),
            "{text}"
        );
        assert!(text.contains("(25 seconds ago)"), "{text}");
        p.refusal = Some("its address 198.18.0.3:51820 sent an initiation with a public key this config does not list".into());
        let text = render(
            &Status {
                peers: vec![p.clone()],
                ..Status::default()
            },
            now,
        );
        assert!(
            text.contains("3 initiations unanswered since 12:01:07 UTC; its address"),
            "{text}"
        );
        let mut waiting = peer_status("spoke");
        waiting.session = false;
        waiting.endpoint = None;
        let text = render(
            &Status {
                peers: vec![waiting],
                ..Status::default()
            },
            now,
        );
        assert!(
            text.contains("session: none: the peer has not connected yet"),
            "{text}"
        );
    }
}
