//! Measurement primitives, free of I/O: the test clock that maps a moment to an
//! interval bucket, lock-free per-stream byte buckets, and the UDP receive
//! statistics (loss, RFC 3550 jitter, reordering) computed from sequence numbers.
//!
//! Buckets: index 0 is the warm-up (`--omit`), 1..=n the reporting intervals of the
//! measured window, n+1 the tail (bytes that arrive after the window closed). Only
//! 1..=n count towards reported rates; the tail exists so totals still add up.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Maps time since the test start (`t0`) to a bucket. Copied into every stream thread.
#[derive(Debug, Clone, Copy)]
pub struct TestClock {
    t0: Instant,
    omit_ns: u64,
    time_ns: u64,
    interval_ns: u64,
    n_window: usize,
}

impl TestClock {
    /// A clock starting at `t0` with the given warm-up, measured time and interval.
    pub fn new(t0: Instant, omit: Duration, time: Duration, interval: Duration) -> Self {
        let interval_ns = (interval.as_nanos() as u64).max(1);
        let time_ns = time.as_nanos() as u64;
        TestClock {
            t0,
            omit_ns: omit.as_nanos() as u64,
            time_ns,
            interval_ns,
            n_window: time_ns.div_ceil(interval_ns) as usize,
        }
    }

    /// The start instant.
    pub fn t0(&self) -> Instant {
        self.t0
    }

    /// Nanoseconds since t0 (0 if `now` is earlier).
    pub fn elapsed_ns(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.t0).as_nanos() as u64
    }

    /// Number of intervals in the measured window.
    pub fn n_window(&self) -> usize {
        self.n_window
    }

    /// Total number of buckets (warm-up + window + tail).
    pub fn n_buckets(&self) -> usize {
        self.n_window + 2
    }

    /// The bucket for a moment `ns` nanoseconds after t0.
    pub fn bucket_at(&self, ns: u64) -> usize {
        if ns < self.omit_ns {
            return 0;
        }
        let w = ns - self.omit_ns;
        if w >= self.time_ns {
            return self.n_window + 1;
        }
        1 + (w / self.interval_ns) as usize
    }

    /// The bucket for now.
    #[inline]
    pub fn bucket_now(&self) -> usize {
        self.bucket_at(self.elapsed_ns(Instant::now()))
    }

    /// Start and end of window interval `i` (1-based), in seconds since the window start.
    pub fn interval_bounds(&self, i: usize) -> (f64, f64) {
        let start = (i as u64 - 1) * self.interval_ns;
        let end = (i as u64 * self.interval_ns).min(self.time_ns);
        (start as f64 / 1e9, end as f64 / 1e9)
    }

    /// When the measured window closes.
    pub fn window_end(&self) -> Instant {
        self.t0 + Duration::from_nanos(self.omit_ns + self.time_ns)
    }

    /// When the measured window opens.
    pub fn window_start(&self) -> Instant {
        self.t0 + Duration::from_nanos(self.omit_ns)
    }

    /// Boundary `k` of the window (k = 0 is its start, k = n its end).
    pub fn boundary(&self, k: usize) -> Instant {
        let off = (k as u64 * self.interval_ns).min(self.time_ns);
        self.t0 + Duration::from_nanos(self.omit_ns + off)
    }
}

/// Per-stream byte counters, one atomic per bucket: the hot path is one relaxed add.
#[derive(Debug)]
pub struct Buckets {
    counts: Box<[AtomicU64]>,
}

impl Buckets {
    /// `n` zeroed buckets.
    pub fn new(n: usize) -> Self {
        Buckets {
            counts: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Adds `bytes` to bucket `idx` (ignored if out of range).
    #[inline]
    pub fn add(&self, idx: usize, bytes: u64) {
        if let Some(c) = self.counts.get(idx) {
            c.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

/// Our UDP payload header (big-endian), 24 bytes, followed by filler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpHeader {
    /// Per-stream sequence number, from 0.
    pub seq: u64,
    /// Sender's clock, ns since its t0 (only differences matter: jitter).
    pub send_ns: u64,
    /// Binds the datagram to one test (from the cookie).
    pub test_id: u32,
    /// Stream index within the test.
    pub stream: u16,
    /// [`UdpHeader::HELLO`] or 0 for data; [`UdpHeader::PROBE`] for latency probes.
    pub flags: u16,
}

impl UdpHeader {
    /// Encoded length.
    pub const LEN: usize = 24;
    /// Flag: address announcement from a UDP receiver (reverse mode), not data.
    pub const HELLO: u16 = 1;
    /// Flag: latency probe (echoed back unchanged).
    pub const PROBE: u16 = 2;

    /// The datagram a UDP receiver sends to announce its address (reverse
    /// mode) for test `test_id`.
    pub fn hello(test_id: u32) -> [u8; UdpHeader::LEN] {
        let mut b = [0u8; UdpHeader::LEN];
        UdpHeader {
            seq: 0,
            send_ns: 0,
            test_id,
            stream: 0,
            flags: UdpHeader::HELLO,
        }
        .encode(&mut b);
        b
    }

    /// Writes the header at the start of `buf` (which must hold [`Self::LEN`] bytes).
    pub fn encode(&self, buf: &mut [u8]) -> bool {
        let Some(h) = buf.get_mut(..Self::LEN) else {
            return false;
        };
        h[0..8].copy_from_slice(&self.seq.to_be_bytes());
        h[8..16].copy_from_slice(&self.send_ns.to_be_bytes());
        h[16..20].copy_from_slice(&self.test_id.to_be_bytes());
        h[20..22].copy_from_slice(&self.stream.to_be_bytes());
        h[22..24].copy_from_slice(&self.flags.to_be_bytes());
        true
    }

    /// Reads a header; `None` if the datagram is too short.
    pub fn decode(buf: &[u8]) -> Option<UdpHeader> {
        let h = buf.get(..Self::LEN)?;
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i..i + 8]);
            u64::from_be_bytes(b)
        };
        Some(UdpHeader {
            seq: u64_at(0),
            send_ns: u64_at(8),
            test_id: u32::from_be_bytes([h[16], h[17], h[18], h[19]]),
            stream: u16::from_be_bytes([h[20], h[21]]),
            flags: u16::from_be_bytes([h[22], h[23]]),
        })
    }
}

/// UDP receive statistics of one bucket, as shipped in a receiver report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UdpBucket {
    /// Datagrams received in this bucket.
    pub packets: u64,
    /// Datagrams that arrived after a higher sequence number (late).
    pub reordered: u64,
    /// Highest sequence seen + 1, at the end of this bucket.
    pub expected_end: u64,
    /// RFC 3550 interarrival jitter at the end of this bucket, ns.
    pub jitter_ns: f64,
}

/// Loss, jitter and reordering of one UDP stream, fed one datagram at a time.
#[derive(Debug, Clone)]
pub struct UdpRecv {
    expected: u64,
    jitter_ns: f64,
    last_transit: Option<i64>,
    buckets: Vec<UdpBucket>,
    touched: Vec<bool>,
}

/// Window totals computed from [`UdpBucket`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UdpWindow {
    /// Datagrams received.
    pub packets: u64,
    /// Datagrams missing (sequence gaps not filled), never negative.
    pub lost: u64,
    /// Late datagrams.
    pub reordered: u64,
    /// Jitter at the end of the range, ms.
    pub jitter_ms: f64,
}

impl UdpRecv {
    /// State for `n_buckets` buckets.
    pub fn new(n_buckets: usize) -> Self {
        UdpRecv {
            expected: 0,
            jitter_ns: 0.0,
            last_transit: None,
            buckets: vec![UdpBucket::default(); n_buckets],
            touched: vec![false; n_buckets],
        }
    }

    /// One datagram with sequence `seq`, sent at `send_ns` (sender clock) and
    /// received at `recv_ns` (receiver clock), landing in `bucket`.
    pub fn on_packet(&mut self, bucket: usize, seq: u64, send_ns: u64, recv_ns: u64) {
        let Some(b) = self.buckets.get_mut(bucket) else {
            return;
        };
        b.packets += 1;
        if seq < self.expected {
            b.reordered += 1;
        } else {
            self.expected = seq.saturating_add(1);
        }
        // RFC 3550 6.4.1: D = (Rj - Ri) - (Sj - Si); J += (|D| - J) / 16.
        // Clocks are not synchronised: the constant offset cancels in D.
        let transit = recv_ns as i64 - send_ns as i64;
        if let Some(last) = self.last_transit {
            let d = (transit - last).unsigned_abs() as f64;
            self.jitter_ns += (d - self.jitter_ns) / 16.0;
        }
        self.last_transit = Some(transit);
        b.expected_end = self.expected;
        b.jitter_ns = self.jitter_ns;
        self.touched[bucket] = true;
    }

    /// The per-bucket record, with empty buckets carrying the previous state forward.
    pub fn finish(&self) -> Vec<UdpBucket> {
        let mut out = self.buckets.clone();
        let mut prev = UdpBucket::default();
        for (b, touched) in out.iter_mut().zip(&self.touched) {
            if !touched {
                b.expected_end = prev.expected_end;
                b.jitter_ns = prev.jitter_ns;
            }
            prev = *b;
        }
        out
    }
}

/// Totals over buckets `first..=last` (1-based window buckets; `first >= 1`).
pub fn udp_window(buckets: &[UdpBucket], first: usize, last: usize) -> UdpWindow {
    if first == 0 || last < first || last >= buckets.len() {
        return UdpWindow::default();
    }
    let range = &buckets[first..=last];
    let packets: u64 = range.iter().map(|b| b.packets).sum();
    let reordered: u64 = range.iter().map(|b| b.reordered).sum();
    let sent = buckets[last]
        .expected_end
        .saturating_sub(buckets[first - 1].expected_end);
    UdpWindow {
        packets,
        lost: sent.saturating_sub(packets),
        reordered,
        jitter_ms: buckets[last].jitter_ns / 1e6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> TestClock {
        TestClock::new(
            Instant::now(),
            Duration::from_secs(2),
            Duration::from_millis(2500),
            Duration::from_secs(1),
        )
    }

    #[test]
    fn buckets_cover_omit_window_and_tail() {
        let c = clock();
        assert_eq!(c.n_window(), 3);
        assert_eq!(c.n_buckets(), 5);
        let s = 1_000_000_000u64;
        assert_eq!(c.bucket_at(0), 0);
        assert_eq!(c.bucket_at(2 * s - 1), 0);
        assert_eq!(c.bucket_at(2 * s), 1);
        assert_eq!(c.bucket_at(3 * s - 1), 1);
        assert_eq!(c.bucket_at(3 * s), 2);
        assert_eq!(c.bucket_at(4 * s), 3);
        assert_eq!(c.bucket_at(4 * s + s / 2 - 1), 3);
        assert_eq!(c.bucket_at(4 * s + s / 2), 4);
        assert_eq!(c.bucket_at(100 * s), 4);
        assert_eq!(c.interval_bounds(1), (0.0, 1.0));
        assert_eq!(c.interval_bounds(3), (2.0, 2.5));
    }

    #[test]
    fn zero_omit_has_empty_warmup_bucket() {
        let c = TestClock::new(
            Instant::now(),
            Duration::ZERO,
            Duration::from_secs(2),
            Duration::from_secs(1),
        );
        assert_eq!(c.bucket_at(0), 1);
        assert_eq!(c.bucket_at(1_999_999_999), 2);
        assert_eq!(c.bucket_at(2_000_000_000), 3);
    }

    #[test]
    fn bucket_counters_add_up() {
        let b = Buckets::new(3);
        b.add(0, 5);
        b.add(2, 7);
        b.add(2, 1);
        b.add(9, 100); // out of range: ignored, not a panic
        assert_eq!(b.snapshot(), vec![5, 0, 8]);
    }

    #[test]
    fn header_roundtrip_and_short_input() {
        let h = UdpHeader {
            seq: 1 << 40,
            send_ns: 77,
            test_id: 0xdead_beef,
            stream: 3,
            flags: 0,
        };
        let mut buf = [0u8; 40];
        assert!(h.encode(&mut buf));
        assert_eq!(UdpHeader::decode(&buf), Some(h));
        assert_eq!(UdpHeader::decode(&buf[..23]), None);
        assert!(!h.encode(&mut [0u8; 10]));
    }

    #[test]
    fn loss_and_reorder_from_fixed_sequence() {
        // Bucket 1: 0 1 2 4 3 (3 late) ; bucket 2: 5 8 9 (6, 7 lost) ; bucket 3: nothing.
        let mut u = UdpRecv::new(5);
        for s in [0, 1, 2, 4, 3] {
            u.on_packet(1, s, 0, 0);
        }
        for s in [5, 8, 9] {
            u.on_packet(2, s, 0, 0);
        }
        let b = u.finish();
        assert_eq!(b[1].packets, 5);
        assert_eq!(b[1].reordered, 1);
        assert_eq!(b[1].expected_end, 5);
        assert_eq!(b[3].expected_end, 10, "empty bucket carries state");
        let w1 = udp_window(&b, 1, 1);
        assert_eq!((w1.packets, w1.lost, w1.reordered), (5, 0, 1));
        let w2 = udp_window(&b, 2, 2);
        assert_eq!((w2.packets, w2.lost), (3, 2));
        let all = udp_window(&b, 1, 3);
        assert_eq!((all.packets, all.lost, all.reordered), (8, 2, 1));
        assert_eq!(udp_window(&b, 0, 3), UdpWindow::default());
        assert_eq!(udp_window(&b, 2, 9), UdpWindow::default());
    }

    #[test]
    fn omitted_packets_do_not_count_as_window_loss() {
        let mut u = UdpRecv::new(4);
        for s in 0..10 {
            u.on_packet(0, s, 0, 0); // warm-up
        }
        for s in 10..20 {
            u.on_packet(1, s, 0, 0);
        }
        let w = udp_window(&u.finish(), 1, 2);
        assert_eq!((w.packets, w.lost), (10, 0));
    }

    #[test]
    fn jitter_follows_rfc3550() {
        let mut u = UdpRecv::new(3);
        // Transit times 1000, 1100, 1000 ns: |D| = 100 twice.
        u.on_packet(1, 0, 0, 1000);
        u.on_packet(1, 1, 10_000, 11_100);
        let j1 = 100.0 / 16.0;
        u.on_packet(1, 2, 20_000, 21_000);
        let j2 = j1 + (100.0 - j1) / 16.0;
        let b = u.finish();
        assert!((b[1].jitter_ns - j2).abs() < 1e-9, "{}", b[1].jitter_ns);
        // Constant transit: jitter decays towards 0, never negative.
        let mut c = UdpRecv::new(2);
        for s in 0..100 {
            c.on_packet(1, s, s * 1000, s * 1000 + 5_000_000);
        }
        assert_eq!(c.finish()[1].jitter_ns, 0.0);
    }
}
