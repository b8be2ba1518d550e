//! Latency probes: UDP ping-pong (one probe outstanding at a time) between the
//! client and a per-test echo socket on the server, recorded in an hdrhistogram.
//! Run once on the idle path before the load and again during the measured window.

use crate::engine::stats::UdpHeader;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::io::ErrorKind;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A probe without an answer after this long is lost.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest RTT the histogram holds (60 s, in ns); larger values are clamped.
const MAX_RTT_NS: u64 = 60_000_000_000;
/// Width of one slot of the RTT timeline: the sweep's throughput interval,
/// so both series line up in a chart.
pub const TIMELINE_SLOT: Duration = Duration::from_millis(500);
/// Most timeline slots kept (an hour of 500 ms slots): bounded memory for
/// any test length; later probes still count in the histogram.
const MAX_SLOTS: usize = 7200;
/// Quantiles of the distribution kept for a CDF chart: the body in 10%
/// steps and the tail in more detail.
const CDF_QUANTILES: [f64; 16] = [
    0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0,
];

/// RTTs of one timeline slot.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySlot {
    /// Start of the slot, seconds from the start of the phase.
    pub t_s: f64,
    /// Mean RTT of the probes answered in it, microseconds.
    pub mean_us: f64,
    /// Largest RTT in it, microseconds.
    pub max_us: f64,
    /// Probes answered in it.
    pub samples: u64,
}

/// Percentiles of one probe phase, microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Probes answered.
    pub samples: u64,
    /// Probes without an answer within 1 s.
    pub lost: u64,
    /// Minimum RTT.
    pub min_us: f64,
    /// Mean RTT.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Maximum RTT.
    pub max_us: f64,
    /// The distribution as (quantile, RTT µs) pairs, for a CDF.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cdf: Vec<[f64; 2]>,
    /// RTT over time, one entry per 500 ms slot with answered probes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<LatencySlot>,
}

/// Idle and loaded latency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyResult {
    /// Probe kind, `udp-ping-pong`.
    pub method: String,
    /// Before the load started.
    pub idle: Option<LatencySummary>,
    /// During the measured window of the load.
    pub loaded: Option<LatencySummary>,
}

/// Recorded RTTs of one phase.
#[derive(Debug)]
pub struct Phase {
    hist: Option<Histogram<u64>>,
    lost: u64,
    /// (sum ns, max ns, count) per [`TIMELINE_SLOT`].
    slots: Vec<(u64, u64, u64)>,
}

impl Phase {
    /// An empty phase.
    pub fn new() -> Self {
        Phase {
            // 3 significant digits over 1 ns..60 s: fixed, bounded memory.
            hist: Histogram::new_with_bounds(1, MAX_RTT_NS, 3).ok(),
            lost: 0,
            slots: Vec::new(),
        }
    }

    /// Records one RTT of a probe sent `at` after the phase started (also
    /// on the timeline).
    pub fn record_at(&mut self, at: Duration, rtt: Duration) {
        self.record(rtt);
        let i = (at.as_nanos() / TIMELINE_SLOT.as_nanos()) as usize;
        if i < MAX_SLOTS {
            if self.slots.len() <= i {
                self.slots.resize(i + 1, (0, 0, 0));
            }
            let ns = (rtt.as_nanos() as u64).clamp(1, MAX_RTT_NS);
            let s = &mut self.slots[i];
            *s = (s.0.saturating_add(ns), s.1.max(ns), s.2 + 1);
        }
    }

    /// Records one RTT.
    pub fn record(&mut self, rtt: Duration) {
        let ns = (rtt.as_nanos() as u64).clamp(1, MAX_RTT_NS);
        if let Some(h) = self.hist.as_mut() {
            let _ = h.record(ns);
        }
    }

    /// Records a lost probe.
    pub fn record_lost(&mut self) {
        self.lost += 1;
    }

    /// Percentiles, or `None` if nothing was probed.
    pub fn summary(&self) -> Option<LatencySummary> {
        let h = self.hist.as_ref()?;
        if h.is_empty() && self.lost == 0 {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        let empty = h.is_empty();
        let q = |p: f64| {
            if empty {
                0.0
            } else {
                us(h.value_at_quantile(p))
            }
        };
        Some(LatencySummary {
            samples: h.len(),
            lost: self.lost,
            min_us: if empty { 0.0 } else { us(h.min()) },
            mean_us: if empty { 0.0 } else { h.mean() / 1000.0 },
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if empty { 0.0 } else { us(h.max()) },
            cdf: if empty {
                Vec::new()
            } else {
                CDF_QUANTILES.iter().map(|&p| [p, q(p)]).collect()
            },
            timeline: self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.2 > 0)
                .map(|(i, s)| LatencySlot {
                    t_s: i as f64 * TIMELINE_SLOT.as_secs_f64(),
                    mean_us: s.0 as f64 / s.2 as f64 / 1000.0,
                    max_us: us(s.1),
                    samples: s.2,
                })
                .collect(),
        })
    }
}

impl Default for Phase {
    fn default() -> Self {
        Self::new()
    }
}

/// Echoes probes of test `test_id` until `stop`.
/// Only probes from `peer` (the control connection's address) are
/// answered: the echo must not reflect traffic at anyone else.
pub fn echo_loop(sock: UdpSocket, peer: std::net::IpAddr, test_id: u32, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 2048];
    let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
    while !stop.load(Ordering::Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let ok = crate::engine::server::unmap_ip(from.ip()) == peer
                    && matches!(UdpHeader::decode(&buf[..n]), Some(h) if h.test_id == test_id && h.flags == UdpHeader::PROBE);
                if ok {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Sends probes every `interval` on a connected socket until `end` (or `stop`).
/// Only probes sent inside `[count_from, end)` are recorded.
pub fn probe(
    sock: &UdpSocket,
    test_id: u32,
    size: usize,
    interval: Duration,
    count_from: Instant,
    end: Instant,
    stop: &AtomicBool,
) -> Phase {
    let mut phase = Phase::new();
    let mut out = vec![0u8; size.max(UdpHeader::LEN)];
    let mut inb = [0u8; 2048];
    let base = Instant::now();
    let mut seq = 0u64;
    let mut next = Instant::now();
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        seq += 1;
        let sent_at = Instant::now();
        let h = UdpHeader {
            seq,
            send_ns: sent_at.duration_since(base).as_nanos() as u64,
            test_id,
            stream: 0,
            flags: UdpHeader::PROBE,
        };
        h.encode(&mut out);
        let counted = sent_at >= count_from;
        if sock.send(&out).is_err() {
            if counted {
                phase.record_lost();
            }
        } else {
            let give_up = sent_at + PROBE_TIMEOUT;
            loop {
                let left = give_up.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    if counted {
                        phase.record_lost();
                    }
                    break;
                }
                let _ = sock.set_read_timeout(Some(left));
                match sock.recv(&mut inb) {
                    Ok(n) => {
                        let now = Instant::now();
                        if matches!(UdpHeader::decode(&inb[..n]), Some(r) if r.seq == seq && r.test_id == test_id)
                        {
                            if counted {
                                phase.record_at(sent_at - count_from, now - sent_at);
                            }
                            break;
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::Interrupted) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => {
                        if counted {
                            phase.record_lost();
                        }
                        std::thread::sleep(Duration::from_millis(10));
                        break;
                    }
                }
            }
        }
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    phase
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_known_samples() {
        let mut p = Phase::new();
        for us in 1..=1000u64 {
            p.record(Duration::from_micros(us));
        }
        p.record_lost();
        let s = p.summary().expect("has samples");
        assert_eq!(s.samples, 1000);
        assert_eq!(s.lost, 1);
        assert!((s.min_us - 1.0).abs() < 0.01, "{s:?}");
        assert!((s.p50_us - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() < 1.0, "{s:?}");
        assert!(Phase::new().summary().is_none());
        assert_eq!(s.cdf.first(), Some(&[0.0, s.min_us]));
        assert_eq!(s.cdf.last(), Some(&[1.0, s.max_us]));
        assert!(s.cdf.windows(2).all(|w| w[0][1] <= w[1][1]), "{:?}", s.cdf);
        assert!(s.timeline.is_empty());
    }

    #[test]
    fn timeline_slots_hold_mean_and_max() {
        let mut p = Phase::new();
        p.record_at(Duration::from_millis(100), Duration::from_micros(1000));
        p.record_at(Duration::from_millis(400), Duration::from_micros(3000));
        p.record_at(Duration::from_millis(1200), Duration::from_micros(500));
        // Beyond the bounded timeline: counted in the histogram only.
        p.record_at(Duration::from_secs(10_000), Duration::from_micros(700));
        let s = p.summary().expect("samples");
        assert_eq!(s.samples, 4);
        assert_eq!(s.timeline.len(), 2, "{:?}", s.timeline);
        assert_eq!(s.timeline[0].t_s, 0.0);
        assert!((s.timeline[0].mean_us - 2000.0).abs() < 1e-6);
        assert!((s.timeline[0].max_us - 3000.0).abs() < 1e-6);
        assert_eq!((s.timeline[1].t_s, s.timeline[1].samples), (1.0, 1));
    }

    #[test]
    fn probes_over_loopback_echo() {
        let echo = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = echo.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let t = std::thread::spawn(move || {
            echo_loop(echo, std::net::Ipv4Addr::LOCALHOST.into(), 42, s2)
        });
        let c = UdpSocket::bind("127.0.0.1:0").expect("bind");
        c.connect(addr).expect("connect");
        let now = Instant::now();
        let never = AtomicBool::new(false);
        let p = probe(
            &c,
            42,
            64,
            Duration::from_millis(5),
            now,
            now + Duration::from_millis(200),
            &never,
        );
        // Wrong test id: the echo ignores it, so every probe is lost.
        let q = probe(
            &c,
            43,
            64,
            Duration::from_millis(100),
            now,
            Instant::now() + Duration::from_millis(50),
            &never,
        );
        stop.store(true, Ordering::Relaxed);
        let _ = t.join();
        let s = p.summary().expect("samples");
        assert!(s.samples >= 5, "{s:?}");
        assert_eq!(s.lost, 0);
        assert!(s.min_us > 0.0 && s.min_us <= s.p50_us && s.p50_us <= s.max_us);
        let sq = q.summary().expect("lost counted");
        assert_eq!((sq.samples, sq.lost), (0, 1));
    }
}
