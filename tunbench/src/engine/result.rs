//! The result of a test as the client reports it (JSON schema `tunbench.result/1`,
//! documented in docs/tunbench-json.md), assembled from the sender and receiver
//! reports of both sides. Rates come from the receiver's buckets over the measured
//! window; the sender's figures are only used when the receiver's are missing
//! (a partial result), and then `measured_by` says so.

use crate::engine::latency::LatencyResult;
use crate::engine::proto::{ReceiverStreamReport, SenderStreamReport};
use crate::engine::spec::{Protocol, TestParams};
use crate::engine::stats::udp_window;
use serde::{Deserialize, Serialize};

/// Schema name and version of [`TestResult`] JSON.
pub const SCHEMA: &str = "tunbench.result/1";

/// Which way the bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    /// Client → server.
    ClientToServer,
    /// Server → client.
    ServerToClient,
}

/// Whose counters a figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeasuredBy {
    /// Bytes read by the receiving application (the normal case).
    Receiver,
    /// Bytes written by the sender: only in partial results without receiver data.
    Sender,
}

/// UDP figures over a range.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UdpResult {
    /// Datagrams received.
    pub packets: u64,
    /// Datagrams lost (sequence gaps).
    pub lost: u64,
    /// lost / (packets + lost), percent.
    pub loss_percent: f64,
    /// RFC 3550 jitter at the end of the range, ms.
    pub jitter_ms: f64,
    /// Datagrams that arrived late (out of order).
    pub reordered: u64,
}

/// One reporting interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntervalResult {
    /// Start, seconds since the test start (t0).
    pub start_s: f64,
    /// End, seconds since t0.
    pub end_s: f64,
    /// True for the warm-up interval (not part of any total).
    pub omitted: bool,
    /// Bytes in the interval.
    pub bytes: u64,
    /// bytes x 8 / duration.
    pub bits_per_second: f64,
    /// TCP retransmits in the interval (sender's TCP_INFO), if known.
    pub retransmits: Option<u64>,
    /// UDP figures.
    pub udp: Option<UdpResult>,
}

/// One stream's totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamResult {
    /// Stream index.
    pub id: u16,
    /// Bytes in the measured window.
    pub bytes: u64,
    /// Rate in the measured window.
    pub bits_per_second: f64,
    /// Bytes the sender wrote over the whole test.
    pub sender_bytes_total: Option<u64>,
    /// Bytes the receiver read over the whole test.
    pub receiver_bytes_total: Option<u64>,
    /// Retransmits in the measured window.
    pub retransmits: Option<u64>,
    /// Smoothed RTT at the end (sender's TCP_INFO), µs.
    pub rtt_us: Option<u32>,
    /// Congestion window at the end, segments.
    pub snd_cwnd: Option<u32>,
    /// MSS the sender used.
    pub snd_mss: Option<u32>,
    /// UDP figures over the window.
    pub udp: Option<UdpResult>,
    /// Why this stream ended early.
    pub error: Option<String>,
}

/// UDP totals over the whole test (sender's count against receiver's count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UdpTotals {
    /// Datagrams sent (whole test).
    pub sent_packets: Option<u64>,
    /// Datagrams received (whole test).
    pub received_packets: Option<u64>,
    /// sent - received, if both are known.
    pub lost_packets: Option<u64>,
    /// Target rate per stream, bit/s.
    pub target_bits_per_second: u64,
}

/// One direction of the load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectionResult {
    /// Which way.
    pub flow: Flow,
    /// Whose counters the window figures come from.
    pub measured_by: MeasuredBy,
    /// Window start, seconds since t0 (= the warm-up).
    pub window_start_s: f64,
    /// Length of the measured window actually covered, seconds.
    pub window_s: f64,
    /// Bytes in the measured window.
    pub bytes: u64,
    /// Goodput in the measured window.
    pub bits_per_second: f64,
    /// Sender's write rate over its own window: compare with the target (UDP) or
    /// with the receiver's rate.
    pub sender_bits_per_second: Option<f64>,
    /// Retransmits in the window, all streams.
    pub retransmits: Option<u64>,
    /// Bytes the senders wrote over the whole test.
    pub sender_bytes_total: Option<u64>,
    /// Bytes the receivers read over the whole test.
    pub receiver_bytes_total: Option<u64>,
    /// UDP figures over the window.
    pub udp: Option<UdpResult>,
    /// UDP whole-test counts.
    pub udp_totals: Option<UdpTotals>,
    /// Warm-up interval (if any) then the window's intervals.
    pub intervals: Vec<IntervalResult>,
    /// Per stream.
    pub streams: Vec<StreamResult>,
}

/// Everything a client run reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// False if the test ended early; the figures then cover what was measured.
    pub complete: bool,
    /// Why the test ended early.
    pub error: Option<String>,
    /// Server address used.
    pub server: String,
    /// The test parameters.
    pub params: TestParams,
    /// Test start (t0), seconds since the Unix epoch.
    pub start_unix_s: f64,
    /// One entry per direction (two with `--bidir`).
    pub directions: Vec<DirectionResult>,
    /// Latency probes, if requested.
    pub latency: Option<LatencyResult>,
}

fn rate(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 * 8.0 / secs
    } else {
        0.0
    }
}

fn udp_result(w: crate::engine::stats::UdpWindow) -> UdpResult {
    let total = w.packets + w.lost;
    UdpResult {
        packets: w.packets,
        lost: w.lost,
        loss_percent: if total > 0 {
            w.lost as f64 * 100.0 / total as f64
        } else {
            0.0
        },
        jitter_ms: w.jitter_ms,
        reordered: w.reordered,
    }
}

fn add_udp(a: &mut UdpResult, b: &UdpResult) {
    a.packets += b.packets;
    a.lost += b.lost;
    a.reordered += b.reordered;
    a.jitter_ms = a.jitter_ms.max(b.jitter_ms);
    let total = a.packets + a.lost;
    a.loss_percent = if total > 0 {
        a.lost as f64 * 100.0 / total as f64
    } else {
        0.0
    };
}

/// Retransmits between window boundaries `a` and `b` from a sample list.
fn retrans_between(samples: &[u64], a: usize, b: usize) -> Option<u64> {
    let x = samples.get(a)?;
    let y = samples.get(b).or(samples.last())?;
    Some(y.saturating_sub(*x))
}

/// Inputs for [`assemble_direction`].
#[derive(Debug)]
pub struct DirectionInput<'a> {
    /// Which way.
    pub flow: Flow,
    /// The test.
    pub params: &'a TestParams,
    /// Sender reports, if known.
    pub senders: Option<&'a [SenderStreamReport]>,
    /// Receiver reports, if known.
    pub receivers: Option<&'a [ReceiverStreamReport]>,
    /// For partial results: seconds since t0 at which measuring stopped.
    pub ended_s: Option<f64>,
}

/// Builds one direction's result from the reports.
pub fn assemble_direction(inp: &DirectionInput) -> Option<DirectionResult> {
    let p = inp.params;
    let omit = p.omit.as_secs_f64();
    let time = p.time.as_secs_f64();
    let ivl = p.interval.as_secs_f64();
    let n = p.window_intervals();
    let window_s = match inp.ended_s {
        Some(e) => (e - omit).clamp(0.0, time),
        None => time,
    };
    let udp = p.protocol == Protocol::Udp;
    let receivers = inp.receivers.filter(|r| !r.is_empty());
    let senders = inp.senders.filter(|s| !s.is_empty());
    let (measured_by, bucket_sets): (MeasuredBy, Vec<&[u64]>) = match (receivers, senders) {
        (Some(r), _) => (
            MeasuredBy::Receiver,
            r.iter().map(|s| s.buckets.as_slice()).collect(),
        ),
        (None, Some(s)) => (
            MeasuredBy::Sender,
            s.iter().map(|s| s.buckets.as_slice()).collect(),
        ),
        (None, None) => return None,
    };
    let get = |b: &[u64], i: usize| b.get(i).copied().unwrap_or(0);
    // Intervals inside the covered window.
    let mut last = 0usize;
    for i in 1..=n {
        if (i as f64 - 1.0) * ivl < window_s {
            last = i;
        }
    }
    let mut intervals = Vec::new();
    if p.omit > std::time::Duration::ZERO {
        let bytes: u64 = bucket_sets.iter().map(|b| get(b, 0)).sum();
        intervals.push(IntervalResult {
            start_s: 0.0,
            end_s: omit,
            omitted: true,
            bytes,
            bits_per_second: rate(bytes, omit),
            retransmits: None,
            udp: None,
        });
    }
    for i in 1..=last {
        let start = (i - 1) as f64 * ivl;
        let end = (i as f64 * ivl).min(window_s);
        let bytes: u64 = bucket_sets.iter().map(|b| get(b, i)).sum();
        let retransmits = if udp {
            None
        } else {
            senders.and_then(|s| {
                s.iter()
                    .map(|x| retrans_between(&x.retrans_samples, i - 1, i))
                    .sum()
            })
        };
        let udp_iv = match (udp, measured_by, receivers) {
            (true, MeasuredBy::Receiver, Some(r)) => {
                let mut acc = UdpResult::default();
                for s in r {
                    if let Some(b) = &s.udp {
                        add_udp(&mut acc, &udp_result(udp_window(b, i, i)));
                    }
                }
                Some(acc)
            }
            _ => None,
        };
        intervals.push(IntervalResult {
            start_s: omit + start,
            end_s: omit + end,
            omitted: false,
            bytes,
            bits_per_second: rate(bytes, end - start),
            retransmits,
            udp: udp_iv,
        });
    }
    let window_bytes = |b: &[u64]| (1..=last).map(|i| get(b, i)).sum::<u64>();
    // Per stream.
    let ids: Vec<u16> = match (receivers, senders) {
        (Some(r), _) => r.iter().map(|s| s.id).collect(),
        (None, Some(s)) => s.iter().map(|s| s.id).collect(),
        _ => Vec::new(),
    };
    let mut streams = Vec::new();
    let mut dir_udp = if udp && measured_by == MeasuredBy::Receiver {
        Some(UdpResult::default())
    } else {
        None
    };
    for id in ids {
        let rs = receivers.and_then(|r| r.iter().find(|s| s.id == id));
        let ss = senders.and_then(|s| s.iter().find(|s| s.id == id));
        let b = match (measured_by, rs, ss) {
            (MeasuredBy::Receiver, Some(r), _) => r.buckets.as_slice(),
            (_, _, Some(s)) => s.buckets.as_slice(),
            _ => &[],
        };
        let bytes = window_bytes(b);
        let su = match (measured_by, rs.and_then(|r| r.udp.as_ref())) {
            (MeasuredBy::Receiver, Some(ub)) if last > 0 => {
                Some(udp_result(udp_window(ub, 1, last)))
            }
            _ => None,
        };
        if let (Some(acc), Some(s)) = (dir_udp.as_mut(), su.as_ref()) {
            add_udp(acc, s);
        }
        streams.push(StreamResult {
            id,
            bytes,
            bits_per_second: rate(bytes, window_s),
            sender_bytes_total: ss.map(|s| s.bytes),
            receiver_bytes_total: rs.map(|r| r.bytes),
            retransmits: if udp {
                None
            } else {
                ss.and_then(|s| retrans_between(&s.retrans_samples, 0, last))
            },
            rtt_us: ss.and_then(|s| s.rtt_us),
            snd_cwnd: ss.and_then(|s| s.snd_cwnd),
            snd_mss: ss.and_then(|s| s.snd_mss),
            udp: su,
            error: rs
                .and_then(|r| r.error.clone())
                .or_else(|| ss.and_then(|s| s.error.clone())),
        });
    }
    let bytes: u64 = streams.iter().map(|s| s.bytes).sum();
    let sender_window: Option<u64> =
        senders.map(|s| s.iter().map(|x| window_bytes(&x.buckets)).sum());
    let retransmits = if udp {
        None
    } else {
        streams.iter().map(|s| s.retransmits).sum()
    };
    let udp_totals = if udp {
        let sent: Option<u64> = senders.map(|s| s.iter().map(|x| x.packets).sum());
        let recv: Option<u64> = receivers.map(|r| r.iter().map(|x| x.packets).sum());
        Some(UdpTotals {
            sent_packets: sent,
            received_packets: recv,
            lost_packets: match (sent, recv) {
                (Some(s), Some(r)) => Some(s.saturating_sub(r)),
                _ => None,
            },
            target_bits_per_second: p.rate,
        })
    } else {
        None
    };
    Some(DirectionResult {
        flow: inp.flow,
        measured_by,
        window_start_s: omit,
        window_s,
        bytes,
        bits_per_second: rate(bytes, window_s),
        sender_bits_per_second: sender_window.map(|b| rate(b, window_s)),
        retransmits,
        sender_bytes_total: senders.map(|s| s.iter().map(|x| x.bytes).sum()),
        receiver_bytes_total: receivers.map(|r| r.iter().map(|x| x.bytes).sum()),
        udp: dir_udp,
        udp_totals,
        intervals,
        streams,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn params() -> TestParams {
        TestParams {
            time: Duration::from_secs(2),
            omit: Duration::from_secs(1),
            interval: Duration::from_secs(1),
            ..Default::default()
        }
    }

    #[test]
    fn receiver_window_excludes_warmup_and_tail() {
        let p = params();
        // buckets: [omit, i1, i2, tail]
        let r = vec![
            ReceiverStreamReport {
                id: 0,
                bytes: 1111,
                buckets: vec![1000, 50, 60, 1],
                ..Default::default()
            },
            ReceiverStreamReport {
                id: 1,
                bytes: 3,
                buckets: vec![0, 1, 2, 0],
                ..Default::default()
            },
        ];
        let s = vec![
            SenderStreamReport {
                id: 0,
                bytes: 1111,
                buckets: vec![1000, 55, 56, 0],
                retrans_samples: vec![2, 3, 7, 9],
                ..Default::default()
            },
            SenderStreamReport {
                id: 1,
                bytes: 3,
                buckets: vec![0, 1, 2, 0],
                retrans_samples: vec![0, 0, 0],
                ..Default::default()
            },
        ];
        let d = assemble_direction(&DirectionInput {
            flow: Flow::ClientToServer,
            params: &p,
            senders: Some(&s),
            receivers: Some(&r),
            ended_s: None,
        })
        .expect("direction");
        assert_eq!(d.measured_by, MeasuredBy::Receiver);
        assert_eq!(d.bytes, 50 + 60 + 1 + 2);
        assert_eq!(d.bits_per_second, 113.0 * 8.0 / 2.0);
        assert_eq!(d.receiver_bytes_total, Some(1114));
        assert_eq!(d.intervals.len(), 3);
        assert!(d.intervals[0].omitted);
        assert_eq!(d.intervals[0].bytes, 1000);
        assert_eq!((d.intervals[1].start_s, d.intervals[1].end_s), (1.0, 2.0));
        assert_eq!(d.intervals[2].bytes, 62);
        assert_eq!(d.intervals[1].retransmits, Some(1));
        assert_eq!(d.intervals[2].retransmits, Some(4));
        assert_eq!(d.retransmits, Some(5));
        assert_eq!(d.streams[0].retransmits, Some(5));
    }

    #[test]
    fn partial_falls_back_to_sender_and_shortens_window() {
        let p = params();
        let s = vec![SenderStreamReport {
            id: 0,
            bytes: 500,
            buckets: vec![100, 400, 0, 0],
            ..Default::default()
        }];
        let d = assemble_direction(&DirectionInput {
            flow: Flow::ClientToServer,
            params: &p,
            senders: Some(&s),
            receivers: None,
            ended_s: Some(1.5),
        })
        .expect("direction");
        assert_eq!(d.measured_by, MeasuredBy::Sender);
        assert_eq!(d.window_s, 0.5);
        assert_eq!(d.bytes, 400);
        assert_eq!(d.intervals.len(), 2);
        assert_eq!(d.intervals[1].end_s, 1.5);
        assert!(assemble_direction(&DirectionInput {
            flow: Flow::ClientToServer,
            params: &p,
            senders: None,
            receivers: None,
            ended_s: None
        })
        .is_none());
    }
}
