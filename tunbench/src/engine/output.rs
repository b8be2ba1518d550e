//! Human-readable rendering of a [`TestResult`]: an iperf3-like interval table per
//! direction, totals that say what they cover, and the latency percentiles.

use crate::engine::latency::LatencySummary;
use crate::engine::result::{DirectionResult, Flow, MeasuredBy, TestResult};
use crate::engine::spec::{Direction, Protocol};
use std::fmt::Write;
use tunneld::units::{format_rate, format_size};

fn flow_tag(f: Flow) -> &'static str {
    match f {
        Flow::ClientToServer => "C->S",
        Flow::ServerToClient => "S->C",
    }
}

/// The whole report as text.
pub fn render(r: &TestResult) -> String {
    let p = &r.params;
    let mut o = String::new();
    let proto = match p.protocol {
        Protocol::Tcp => "TCP".to_string(),
        Protocol::Udp => format!(
            "UDP {} B datagrams at {} per stream",
            p.length,
            format_rate(p.rate as f64)
        ),
    };
    let dir = match p.direction {
        Direction::Forward => "client -> server",
        Direction::Reverse => "server -> client (reverse)",
        Direction::Bidir => "both ways (bidir)",
    };
    let _ = writeln!(
        o,
        "tunbench to {}: {proto}, {} stream(s), {dir}, {:.1} s measured after {:.1} s warm-up",
        r.server,
        p.parallel,
        p.time.as_secs_f64(),
        p.omit.as_secs_f64()
    );
    for d in &r.directions {
        render_direction(&mut o, d, p.protocol);
    }
    if let Some(l) = &r.latency {
        let _ = writeln!(o, "\nLatency ({}), RTT in µs:", l.method);
        let _ = writeln!(
            o,
            "  {:<7} {:>7} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "", "samples", "lost", "min", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, s) in [("idle", &l.idle), ("loaded", &l.loaded)] {
            match s {
                Some(s) => latency_row(&mut o, name, s),
                None => {
                    let _ = writeln!(o, "  {name:<7} (no probes)");
                }
            }
        }
    }
    if !r.complete {
        let _ = writeln!(
            o,
            "\nPARTIAL RESULT: {}",
            r.error.as_deref().unwrap_or("test ended early")
        );
    }
    o
}

fn latency_row(o: &mut String, name: &str, s: &LatencySummary) {
    let _ = writeln!(
        o,
        "  {name:<7} {:>7} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        s.samples, s.lost, s.min_us, s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us
    );
}

fn render_direction(o: &mut String, d: &DirectionResult, proto: Protocol) {
    let tag = flow_tag(d.flow);
    let _ = writeln!(o);
    match proto {
        Protocol::Tcp => {
            let _ = writeln!(
                o,
                "[{tag}] {:>15}  {:>11}  {:>15}  {:>6}",
                "interval (s)", "transfer", "bitrate", "retr"
            );
        }
        Protocol::Udp => {
            let _ = writeln!(
                o,
                "[{tag}] {:>15}  {:>11}  {:>15}  {:>9}  {:>14}  {:>7}",
                "interval (s)", "transfer", "bitrate", "jitter ms", "lost/total", "reord"
            );
        }
    }
    for iv in &d.intervals {
        let span = format!("{:.2}-{:.2}", iv.start_s, iv.end_s);
        let mark = if iv.omitted {
            "  (warm-up, omitted)"
        } else {
            ""
        };
        match (&iv.udp, proto) {
            (Some(u), _) => {
                let _ = writeln!(
                    o,
                    "[{tag}] {span:>15}  {:>11}  {:>15}  {:>9.3}  {:>14}  {:>7}{mark}",
                    format_size(iv.bytes),
                    format_rate(iv.bits_per_second),
                    u.jitter_ms,
                    format!("{}/{}", u.lost, u.lost + u.packets),
                    u.reordered
                );
            }
            _ => {
                let retr = iv
                    .retransmits
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    o,
                    "[{tag}] {span:>15}  {:>11}  {:>15}  {retr:>6}{mark}",
                    format_size(iv.bytes),
                    format_rate(iv.bits_per_second)
                );
            }
        }
    }
    let by = match d.measured_by {
        MeasuredBy::Receiver => "receiver",
        MeasuredBy::Sender => "SENDER (receiver data missing)",
    };
    let span = format!(
        "{:.2}-{:.2}",
        d.window_start_s,
        d.window_start_s + d.window_s
    );
    let _ = write!(
        o,
        "[{tag}] {span:>15}  {:>11}  {:>15}",
        format_size(d.bytes),
        format_rate(d.bits_per_second)
    );
    if let Some(u) = &d.udp {
        let _ = write!(
            o,
            "  {:>9.3}  {:>14}  {:>7}  ({:.3}% lost)",
            u.jitter_ms,
            format!("{}/{}", u.lost, u.lost + u.packets),
            u.reordered,
            u.loss_percent
        );
    } else if let Some(r) = d.retransmits {
        let _ = write!(o, "  {r:>6}");
    }
    let _ = writeln!(o, "  total, measured by {by}");
    if let Some(s) = d.sender_bits_per_second {
        let _ = writeln!(o, "[{tag}] sender wrote {} over the window", format_rate(s));
    }
    if let Some(t) = &d.udp_totals {
        if let (Some(s), Some(r)) = (t.sent_packets, t.received_packets) {
            let _ = writeln!(
                o,
                "[{tag}] whole test: {s} datagrams sent, {r} received, {} lost",
                s.saturating_sub(r)
            );
        }
    }
    if d.streams.len() > 1 || d.streams.iter().any(|s| s.error.is_some()) {
        for s in &d.streams {
            let _ = write!(
                o,
                "[{tag}]   stream {:>3}  {:>11}  {:>15}",
                s.id,
                format_size(s.bytes),
                format_rate(s.bits_per_second)
            );
            if let Some(r) = s.retransmits {
                let _ = write!(o, "  retr {r}");
            }
            if let Some(rtt) = s.rtt_us {
                let _ = write!(o, "  rtt {rtt} µs");
            }
            if let Some(e) = &s.error {
                let _ = write!(o, "  error: {e}");
            }
            let _ = writeln!(o);
        }
    }
}
