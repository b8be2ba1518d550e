//! The pure half of the userspace WAN emulator: a seeded RNG, the rate
//! limiter (a token bucket in GCRA form), the delay line and the per-frame
//! decision of a link direction. No I/O and no clock: callers pass `now` in
//! nanoseconds, so all of it is unit-tested with virtual time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// SplitMix64: small, fast, seedable; ample for drawing loss and jitter.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p` (0..=1).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.next_f64() < p
    }
}

/// A token bucket in its GCRA form ("theoretical arrival time"): frames
/// leave at `rate` after a burst of `burst` bytes, wait in a queue of at
/// most `queue_ns` of link time, and are dropped (tail drop) beyond it.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Bits per second.
    rate: u64,
    /// Burst tolerance in ns of link time (burst bytes at `rate`).
    burst_ns: u64,
    /// Longest wait before departure, ns.
    queue_ns: u64,
    /// When the link would have sent everything admitted so far.
    tat_ns: u64,
}

impl TokenBucket {
    /// `rate` bit/s (> 0), `burst` bytes, queue limit in ns.
    pub fn new(rate: u64, burst: u64, queue_ns: u64) -> TokenBucket {
        let rate = rate.max(1);
        TokenBucket {
            rate,
            burst_ns: Self::ns_for(rate, burst),
            queue_ns,
            tat_ns: 0,
        }
    }

    /// Link time of `bytes` at `rate`, ns.
    fn ns_for(rate: u64, bytes: u64) -> u64 {
        ((u128::from(bytes) * 8 * 1_000_000_000) / u128::from(rate)).min(u128::from(u64::MAX))
            as u64
    }

    /// Admits a frame of `bytes` arriving at `now_ns`: its departure time, or
    /// `None` if the queue is full (the frame is dropped and costs nothing).
    pub fn admit(&mut self, now_ns: u64, bytes: u64) -> Option<u64> {
        let tat = self.tat_ns.max(now_ns);
        let cost = Self::ns_for(self.rate, bytes);
        // The frame may leave once the bucket, after taking it, holds no more
        // than `burst` of debt (a frame larger than the burst goes alone).
        let depart = (tat + cost)
            .saturating_sub(self.burst_ns.max(cost))
            .max(now_ns);
        if depart - now_ns > self.queue_ns {
            return None;
        }
        self.tat_ns = tat + cost;
        Some(depart)
    }
}

/// One waiting frame; ordered by (due, seq) only.
#[derive(Debug)]
struct Entry<T> {
    due: u64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

/// Frames waiting for their delivery time, released in time order (ties in
/// arrival order).
#[derive(Debug)]
pub struct DelayLine<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    seq: u64,
}

impl<T> Default for DelayLine<T> {
    fn default() -> Self {
        DelayLine {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<T> DelayLine<T> {
    /// An empty line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `item` for delivery at `due_ns`.
    pub fn push(&mut self, due_ns: u64, item: T) {
        let seq = self.seq;
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            due: due_ns,
            seq,
            item,
        }));
    }

    /// The earliest delivery time, if anything waits.
    pub fn next_due(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(e)| e.due)
    }

    /// Takes the next item whose time has come.
    pub fn pop_due(&mut self, now_ns: u64) -> Option<T> {
        if self.next_due()? <= now_ns {
            self.heap.pop().map(|Reverse(e)| e.item)
        } else {
            None
        }
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True if nothing waits.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// The behaviour of one direction of the link.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkParams {
    /// Rate limit, bit/s; `None` = unlimited.
    pub rate: Option<u64>,
    /// Burst of the rate limiter, bytes.
    pub burst: u64,
    /// Queue in front of the rate limit, ns of link time.
    pub queue_ns: u64,
    /// One-way delay, ns.
    pub delay_ns: u64,
    /// Uniform jitter ± this, ns.
    pub jitter_ns: u64,
    /// Loss probability per packet, 0..1.
    pub loss: f64,
    /// Probability that a packet skips the delay (is reordered), 0..1.
    pub reorder: f64,
}

/// Why a frame was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Random loss.
    Loss,
    /// The queue in front of the rate limit was full.
    Queue,
}

/// One direction: rate limit, then loss, then delay (+ jitter / reorder).
#[derive(Debug, Clone)]
pub struct Link {
    params: LinkParams,
    bucket: Option<TokenBucket>,
    rng: Rng,
    /// Latest delivery time handed out (keeps order when jitter is on).
    last_due: u64,
}

impl Link {
    /// A link direction with its own seeded RNG.
    pub fn new(params: LinkParams, seed: u64) -> Link {
        let bucket = params
            .rate
            .map(|r| TokenBucket::new(r, params.burst, params.queue_ns));
        Link {
            params,
            bucket,
            rng: Rng::new(seed),
            last_due: 0,
        }
    }

    /// Decides the fate of a frame that arrived at `now_ns`: `wire_bytes` is
    /// what it costs on the link, `segments` how many packets it stands for
    /// (more than one for a GSO super-frame), `lossy` false for frames that
    /// are never dropped at random (ARP).
    pub fn admit(
        &mut self,
        now_ns: u64,
        wire_bytes: u64,
        segments: u32,
        lossy: bool,
    ) -> Result<u64, Drop> {
        let depart = match self.bucket.as_mut() {
            Some(b) => b.admit(now_ns, wire_bytes).ok_or(Drop::Queue)?,
            None => now_ns,
        };
        if lossy && self.params.loss > 0.0 {
            // A super-frame is lost if any of its segments would be: the byte
            // loss rate then matches the per-packet one.
            let keep = (1.0 - self.params.loss).powi(segments.max(1) as i32);
            if self.rng.chance(1.0 - keep) {
                return Err(Drop::Loss);
            }
        }
        if self.params.reorder > 0.0 && self.rng.chance(self.params.reorder) {
            return Ok(depart);
        }
        let mut due = depart + self.params.delay_ns;
        if self.params.jitter_ns > 0 {
            let j = self.params.jitter_ns as f64;
            let off = (self.rng.next_f64() * 2.0 - 1.0) * j;
            due = (due as f64 + off).max(depart as f64) as u64;
            if self.params.reorder <= 0.0 {
                // Jitter without reordering: never overtake the previous frame.
                due = due.max(self.last_due);
            }
        }
        self.last_due = self.last_due.max(due);
        Ok(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn bucket_paces_at_rate() {
        // 8 Mbit/s: 1000 bytes take 1 ms of link time.
        let mut b = TokenBucket::new(8_000_000, 0, 100 * MS);
        let departs: Vec<u64> = (0..10).map(|_| b.admit(0, 1000).expect("queued")).collect();
        for (i, d) in departs.iter().enumerate() {
            assert_eq!(*d, i as u64 * MS, "frame {i}");
        }
        // After an idle gap the link is free again at once.
        assert_eq!(b.admit(50 * MS, 1000), Some(50 * MS));
    }

    #[test]
    fn bucket_burst_and_queue_limit() {
        // 3000 bytes of burst: three 1000-byte frames leave at once.
        let mut b = TokenBucket::new(8_000_000, 3000, 5 * MS);
        for _ in 0..3 {
            assert_eq!(b.admit(0, 1000), Some(0));
        }
        assert_eq!(b.admit(0, 1000), Some(MS));
        // Queue of 5 ms: frames waiting longer are dropped and cost nothing.
        let admitted = (0..20).filter_map(|_| b.admit(0, 1000)).count();
        assert_eq!(admitted, 4, "2..=5 ms departures fit the queue");
        assert_eq!(b.admit(0, 1000), None);
        // Long-run rate: over 1 s at most rate × 1 s (+ burst) is admitted.
        let mut b = TokenBucket::new(8_000_000, 3000, 5 * MS);
        let mut sent = 0u64;
        let mut t = 0;
        while t < 1000 * MS {
            if b.admit(t, 1500).is_some() {
                sent += 1500;
            }
            t += MS / 4; // offered: 48 Mbit/s
        }
        let rate = sent * 8;
        assert!((7_900_000..=8_100_000).contains(&rate), "{rate}");
    }

    #[test]
    fn delay_line_orders_by_time_then_arrival() {
        let mut d = DelayLine::new();
        d.push(30, "c");
        d.push(10, "a");
        d.push(20, "b1");
        d.push(20, "b2");
        assert_eq!(d.next_due(), Some(10));
        assert_eq!(d.pop_due(9), None);
        let mut out = Vec::new();
        while let Some(x) = d.pop_due(25) {
            out.push(x);
        }
        assert_eq!(out, vec!["a", "b1", "b2"]);
        assert_eq!(d.len(), 1);
        assert_eq!(d.pop_due(30), Some("c"));
        assert!(d.is_empty());
    }

    #[test]
    fn loss_rate_matches_with_seeded_rng() {
        let params = LinkParams {
            loss: 0.01,
            ..Default::default()
        };
        let n = 200_000;
        for seed in [1, 42, 7_777] {
            let mut l = Link::new(params.clone(), seed);
            let lost = (0..n)
                .filter(|_| l.admit(0, 1500, 1, true) == Err(Drop::Loss))
                .count();
            // Binomial sd = sqrt(n p (1-p)) ≈ 44.5; allow 5 sd.
            assert!((1780..=2220).contains(&lost), "seed {seed}: {lost}");
        }
        // Not lossy (ARP): never dropped.
        let mut l = Link::new(params, 3);
        assert!((0..10_000).all(|_| l.admit(0, 60, 1, false).is_ok()));
    }

    #[test]
    fn super_frames_lose_like_their_segments() {
        let params = LinkParams {
            loss: 0.01,
            ..Default::default()
        };
        let mut l = Link::new(params, 9);
        let n = 50_000;
        let lost = (0..n)
            .filter(|_| l.admit(0, 45 * 1514, 45, true).is_err())
            .count();
        // 1 - 0.99^45 ≈ 36.4 %.
        let share = lost as f64 / n as f64;
        assert!((0.35..0.38).contains(&share), "{share}");
    }

    #[test]
    fn delay_and_jitter_keep_order_without_reorder() {
        let params = LinkParams {
            delay_ns: 10 * MS,
            jitter_ns: 2 * MS,
            ..Default::default()
        };
        let mut l = Link::new(params, 5);
        let mut last = 0;
        for i in 0..10_000u64 {
            let now = i * 10_000;
            let due = l.admit(now, 100, 1, true).expect("no loss");
            assert!(due >= last, "frame {i} overtook");
            assert!(
                due >= now + 8 * MS && due <= now + 12 * MS + 2 * MS,
                "{due}"
            );
            last = due;
        }
    }

    #[test]
    fn reorder_lets_some_frames_skip_the_delay() {
        let params = LinkParams {
            delay_ns: 10 * MS,
            reorder: 0.25,
            ..Default::default()
        };
        let mut l = Link::new(params, 11);
        let n = 10_000;
        let early = (0..n).filter(|_| l.admit(0, 100, 1, true) == Ok(0)).count();
        assert!((2300..=2700).contains(&early), "{early}");
    }
}
