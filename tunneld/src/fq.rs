//! The tunnel's own queue: FQ-CoDel (RFC 8290 over RFC 8289) for the TUN →
//! network direction.
//!
//! Why a tunnel needs one: the TUN device hands every packet the kernel
//! routes into it to a ring of `txqueuelen` packets, and the kernel forgets
//! the packet there (it is orphaned, so TCP Small Queues no longer hold the
//! sender back). When the tunnel is the bottleneck (CPU, or a slower WAN
//! behind it), every TCP flow grows its window until that ring is full, and
//! a ping or an interactive flow waits behind megabytes of bulk data. A host
//! qdisc cannot help: the ring is after it.
//!
//! So the data path drains the ring eagerly into pooled buffers and queues
//! them here: one FIFO per inner flow (hashed 5-tuple; per-flow order is
//! kept), served by deficit round robin with new (sparse) flows first, and
//! CoDel on each flow's sojourn time, which drops from the head of a flow
//! whose queue stayed above `target` for an `interval`. The memory is
//! bounded: past `limit` packets the fattest flow loses packets from its
//! head. Nothing here allocates after construction.
//!
//! The queue holds slot numbers, not packets: the caller owns the buffers.
//! Time is a `u64` of nanoseconds from any fixed origin, so tests run on a
//! virtual clock.

use std::collections::VecDeque;

/// Flow queues (hash buckets); a power of two.
pub const FLOWS: usize = 1024;
/// Most packets dropped from the fattest flow in one overflow.
const OVERFLOW_BATCH: u32 = 64;
const NONE: u32 = u32::MAX;

/// The queue's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FqParams {
    /// CoDel target sojourn time, ns.
    pub target: u64,
    /// CoDel interval, ns (about the worst RTT of the flows carried).
    pub interval: u64,
    /// Bytes a flow may send per round.
    pub quantum: u32,
    /// Most packets queued over all flows.
    pub limit: usize,
    /// Largest packet; a flow with no more than this queued is never
    /// dropped by CoDel.
    pub mtu: u32,
    /// CoDel marks ECN-capable packets CE instead of dropping them
    /// (RFC 8290 section 5.1); overflow drops still drop.
    pub ecn: bool,
}

/// Drops, for status and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FqStats {
    /// Packets dropped by CoDel (standing queue).
    pub codel_drops: u64,
    /// Packets dropped because the queue held `limit` packets.
    pub overflow_drops: u64,
    /// ECN-capable packets CoDel marked CE instead of dropping.
    pub ecn_marks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    No,
    New,
    Old,
}

/// CoDel state of one flow (RFC 8289 names).
#[derive(Debug, Clone, Copy, Default)]
struct Codel {
    dropping: bool,
    count: u32,
    lastcount: u32,
    /// 0 = sojourn below target.
    first_above_time: u64,
    drop_next: u64,
}

#[derive(Debug, Clone, Copy)]
struct Flow {
    head: u32,
    tail: u32,
    packets: u32,
    bytes: u64,
    deficit: i64,
    listed: Listed,
    codel: Codel,
}

impl Default for Flow {
    fn default() -> Self {
        Flow {
            head: NONE,
            tail: NONE,
            packets: 0,
            bytes: 0,
            deficit: 0,
            listed: Listed::No,
            codel: Codel::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    next: u32,
    len: u32,
    enqueued: u64,
    /// ECN-capable (ECT(0), ECT(1) or already CE): CoDel may mark it.
    ect: bool,
}

/// What the queue needs to know of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Flow hash (the caller's keyed 5-tuple hash).
    pub hash: u64,
    /// Bytes.
    pub len: usize,
    /// ECN-capable transport (ECT(0), ECT(1) or CE).
    pub ect: bool,
}

/// FQ-CoDel over caller-owned slots `0..slots`.
#[derive(Debug)]
pub struct FqCodel {
    p: FqParams,
    flows: Vec<Flow>,
    slots: Vec<Slot>,
    new_flows: VecDeque<u16>,
    old_flows: VecDeque<u16>,
    packets: usize,
    stats: FqStats,
}

impl FqCodel {
    /// A queue for slot numbers below `slots`.
    pub fn new(p: FqParams, slots: usize) -> FqCodel {
        FqCodel {
            p,
            flows: vec![Flow::default(); FLOWS],
            slots: vec![Slot::default(); slots],
            new_flows: VecDeque::with_capacity(FLOWS),
            old_flows: VecDeque::with_capacity(FLOWS),
            packets: 0,
            stats: FqStats::default(),
        }
    }

    /// Packets queued.
    pub fn len(&self) -> usize {
        self.packets
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.packets == 0
    }

    /// Drop counters.
    pub fn stats(&self) -> FqStats {
        self.stats
    }

    /// Queues `slot` (`len` bytes, flow `hash`, ECN-capable when `ect`) at
    /// time `now`. Slots freed by an overflow are appended to `dropped`.
    pub fn enqueue(&mut self, slot: u32, pkt: Packet, now: u64, dropped: &mut Vec<u32>) {
        let Packet { hash, len, ect } = pkt;
        let f = (hash as usize) & (FLOWS - 1);
        let Some(s) = self.slots.get_mut(slot as usize) else {
            // A slot number the queue was not sized for is a caller bug;
            // hand it straight back rather than corrupt the lists.
            dropped.push(slot);
            return;
        };
        *s = Slot {
            next: NONE,
            len: len as u32,
            enqueued: now,
            ect,
        };
        let flow = &mut self.flows[f];
        if flow.tail == NONE {
            flow.head = slot;
        } else {
            self.slots[flow.tail as usize].next = slot;
        }
        flow.tail = slot;
        flow.packets += 1;
        flow.bytes += len as u64;
        self.packets += 1;
        if flow.listed == Listed::No {
            flow.listed = Listed::New;
            flow.deficit = i64::from(self.p.quantum);
            self.new_flows.push_back(f as u16);
        }
        if self.packets > self.p.limit {
            self.drop_from_fattest(dropped);
        }
    }

    /// The next slot to send at time `now`, if any, and whether CoDel
    /// marked it (the caller sets CE in the packet). Slots CoDel dropped on
    /// the way are appended to `dropped`.
    pub fn dequeue(&mut self, now: u64, dropped: &mut Vec<u32>) -> Option<(u32, bool)> {
        loop {
            let (list_new, f) = if let Some(&f) = self.new_flows.front() {
                (true, f as usize)
            } else if let Some(&f) = self.old_flows.front() {
                (false, f as usize)
            } else {
                return None;
            };
            if self.flows[f].deficit <= 0 {
                self.flows[f].deficit += i64::from(self.p.quantum);
                self.pop_list(list_new);
                self.flows[f].listed = Listed::Old;
                self.old_flows.push_back(f as u16);
                continue;
            }
            match self.codel_dequeue(f, now, dropped) {
                Some((slot, mark)) => {
                    self.flows[f].deficit -= i64::from(self.slots[slot as usize].len);
                    return Some((slot, mark));
                }
                None => {
                    self.pop_list(list_new);
                    // An emptied new flow goes to the old list once, so a
                    // flow cannot stay "new" by sending one packet per round.
                    if list_new && !self.old_flows.is_empty() {
                        self.flows[f].listed = Listed::Old;
                        self.old_flows.push_back(f as u16);
                    } else {
                        self.flows[f].listed = Listed::No;
                    }
                }
            }
        }
    }

    fn pop_list(&mut self, new: bool) {
        if new {
            self.new_flows.pop_front();
        } else {
            self.old_flows.pop_front();
        }
    }

    /// Unlinks the head of flow `f` and updates the counts.
    fn pop_head(&mut self, f: usize) -> Option<(u32, Slot)> {
        let flow = &mut self.flows[f];
        let slot = flow.head;
        if slot == NONE {
            return None;
        }
        let s = self.slots[slot as usize];
        flow.head = s.next;
        if flow.head == NONE {
            flow.tail = NONE;
        }
        flow.packets -= 1;
        flow.bytes -= u64::from(s.len);
        self.packets -= 1;
        Some((slot, s))
    }

    /// Removes the head of flow `f`: (slot, whether CoDel may drop it).
    fn take_head(&mut self, f: usize, now: u64) -> Option<(u32, bool)> {
        let Some((slot, s)) = self.pop_head(f) else {
            self.flows[f].codel.first_above_time = 0;
            return None;
        };
        let (target, interval, mtu) = (self.p.target, self.p.interval, self.p.mtu);
        let flow = &mut self.flows[f];
        let sojourn = now.saturating_sub(s.enqueued);
        let c = &mut flow.codel;
        let mut ok_to_drop = false;
        if sojourn < target || flow.bytes <= u64::from(mtu) {
            c.first_above_time = 0;
        } else if c.first_above_time == 0 {
            c.first_above_time = now + interval;
        } else if now >= c.first_above_time {
            ok_to_drop = true;
        }
        Some((slot, ok_to_drop))
    }

    fn control_law(&self, t: u64, count: u32) -> u64 {
        t + (self.p.interval as f64 / f64::from(count.max(1)).sqrt()) as u64
    }

    /// RFC 8289's dequeue for one flow.
    fn codel_dequeue(&mut self, f: usize, now: u64, dropped: &mut Vec<u32>) -> Option<(u32, bool)> {
        let Some((mut slot, mut ok)) = self.take_head(f, now) else {
            self.flows[f].codel.dropping = false;
            return None;
        };
        if self.flows[f].codel.dropping {
            if !ok {
                self.flows[f].codel.dropping = false;
            }
            while self.flows[f].codel.dropping && now >= self.flows[f].codel.drop_next {
                if self.markable(slot) {
                    // Linux's order: count and schedule, then mark and send.
                    let c = &mut self.flows[f].codel;
                    c.count += 1;
                    let (t, n) = (c.drop_next, c.count);
                    self.flows[f].codel.drop_next = self.control_law(t, n);
                    self.stats.ecn_marks += 1;
                    return Some((slot, true));
                }
                dropped.push(slot);
                self.stats.codel_drops += 1;
                self.flows[f].codel.count += 1;
                match self.take_head(f, now) {
                    None => {
                        self.flows[f].codel.dropping = false;
                        return None;
                    }
                    Some((s, o)) => {
                        slot = s;
                        ok = o;
                    }
                }
                if ok {
                    let c = self.flows[f].codel;
                    self.flows[f].codel.drop_next = self.control_law(c.drop_next, c.count);
                } else {
                    self.flows[f].codel.dropping = false;
                }
            }
        } else if ok {
            let marked = self.markable(slot);
            let next = if marked {
                self.stats.ecn_marks += 1;
                Some((slot, true))
            } else {
                dropped.push(slot);
                self.stats.codel_drops += 1;
                self.take_head(f, now)
            };
            let c = self.flows[f].codel;
            let delta = c.count.wrapping_sub(c.lastcount);
            let count = if delta > 1 && now.saturating_sub(c.drop_next) < 16 * self.p.interval {
                delta
            } else {
                1
            };
            let drop_next = self.control_law(now, count);
            let c = &mut self.flows[f].codel;
            c.dropping = true;
            c.count = count;
            c.lastcount = count;
            c.drop_next = drop_next;
            match next {
                Some((s, _)) => slot = s,
                None => return None,
            }
            return Some((slot, marked));
        }
        Some((slot, false))
    }

    /// Whether CoDel may mark `slot` instead of dropping it.
    fn markable(&self, slot: u32) -> bool {
        self.p.ecn && self.slots[slot as usize].ect
    }

    /// Head-drops up to half (at most [`OVERFLOW_BATCH`]) of the packets of
    /// the flow with the most bytes queued.
    fn drop_from_fattest(&mut self, dropped: &mut Vec<u32>) {
        let Some(f) = (0..FLOWS).max_by_key(|&f| self.flows[f].bytes) else {
            return;
        };
        let n = self.flows[f].packets.div_ceil(2).clamp(1, OVERFLOW_BATCH);
        for _ in 0..n {
            let Some((slot, _)) = self.pop_head(f) else {
                break;
            };
            self.stats.overflow_drops += 1;
            dropped.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn params() -> FqParams {
        FqParams {
            target: 5 * MS,
            interval: 100 * MS,
            quantum: 1500,
            limit: 1000,
            mtu: 1500,
            ecn: true,
        }
    }

    /// A packet that is not ECN-capable.
    fn pkt(hash: u64, len: usize) -> Packet {
        Packet {
            hash,
            len,
            ect: false,
        }
    }

    /// Drains everything at `now`: (slots in send order, slots dropped).
    fn drain(q: &mut FqCodel, now: u64) -> (Vec<u32>, Vec<u32>) {
        let mut out = Vec::new();
        let mut dropped = Vec::new();
        while let Some((s, mark)) = q.dequeue(now, &mut dropped) {
            assert!(!mark, "nothing here is ECN-capable");
            out.push(s);
        }
        (out, dropped)
    }

    #[test]
    fn one_flow_is_fifo() {
        let mut q = FqCodel::new(params(), 100);
        let mut d = Vec::new();
        for s in 0..50 {
            q.enqueue(s, pkt(7, 1400), 0, &mut d);
        }
        let (out, dropped) = drain(&mut q, MS);
        assert_eq!(out, (0..50).collect::<Vec<_>>());
        assert!(dropped.is_empty() && d.is_empty());
        assert!(q.is_empty());
    }

    #[test]
    fn order_within_each_flow_is_kept_while_flows_interleave() {
        let mut q = FqCodel::new(params(), 400);
        let mut d = Vec::new();
        // Three flows, interleaved arrival; slot s belongs to flow s % 3.
        for s in 0..300u32 {
            q.enqueue(s, pkt(u64::from(s % 3), 1000), 0, &mut d);
        }
        let (out, dropped) = drain(&mut q, MS);
        assert!(dropped.is_empty());
        assert_eq!(out.len(), 300);
        for flow in 0..3 {
            let mine: Vec<u32> = out.iter().copied().filter(|s| s % 3 == flow).collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "flow {flow} reordered"
            );
        }
        // Round robin: no flow gets more than two quanta ahead of another.
        let first_90: Vec<u32> = out[..90].to_vec();
        for flow in 0..3 {
            let n = first_90.iter().filter(|s| *s % 3 == flow).count();
            assert!(
                (20..=40).contains(&n),
                "flow {flow} got {n} of the first 90"
            );
        }
    }

    #[test]
    fn a_sparse_flow_goes_ahead_of_a_bulk_backlog() {
        let mut q = FqCodel::new(params(), 600);
        let mut d = Vec::new();
        for s in 0..500 {
            q.enqueue(s, pkt(1, 1400), 0, &mut d);
        }
        // Serve a few bulk packets so the bulk flow is on the old list.
        for _ in 0..3 {
            assert!(q.dequeue(MS, &mut d).is_some());
        }
        q.enqueue(555, pkt(2, 64), MS, &mut d);
        assert_eq!(
            q.dequeue(MS, &mut d),
            Some((555, false)),
            "the probe waits behind bulk"
        );
    }

    #[test]
    fn codel_drops_a_standing_queue_and_stops_once_it_is_gone() {
        let mut q = FqCodel::new(params(), 200);
        let mut dropped = Vec::new();
        let mut free: Vec<u32> = (0..200).rev().collect();
        let mut enq_time = [0u64; 200];
        // A standing queue of 50 packets, then one in and one out per ms:
        // without CoDel every packet would wait 50 ms forever.
        for _ in 0..50 {
            let s = free.pop().expect("slot");
            q.enqueue(s, pkt(9, 1400), 0, &mut dropped);
        }
        let mut sojourn_late = Vec::new();
        for ms in 1..=5_000u64 {
            let now = ms * MS;
            let s = free.pop().expect("slot");
            enq_time[s as usize] = now;
            q.enqueue(s, pkt(9, 1400), now, &mut dropped);
            if let Some((s, _)) = q.dequeue(now, &mut dropped) {
                if ms > 4_000 {
                    sojourn_late.push(now - enq_time[s as usize]);
                }
                free.push(s);
            }
            free.append(&mut dropped);
        }
        let st = q.stats();
        assert_eq!(st.overflow_drops, 0);
        // Each drop shortens the standing queue by one packet (1 ms): it
        // takes ~45 drops to get under the 5 ms target, and no more are
        // needed after that.
        assert!(
            (40..=60).contains(&st.codel_drops),
            "{} drops",
            st.codel_drops
        );
        assert!(
            sojourn_late.iter().all(|&d| d <= 6 * MS),
            "{sojourn_late:?}"
        );
        let settled = st.codel_drops;
        for ms in 5_001..=6_000u64 {
            let now = ms * MS;
            let s = free.pop().expect("slot");
            q.enqueue(s, pkt(9, 1400), now, &mut dropped);
            if let Some((s, _)) = q.dequeue(now, &mut dropped) {
                free.push(s);
            }
            free.append(&mut dropped);
        }
        assert_eq!(q.stats().codel_drops, settled, "dropped below target");
    }

    #[test]
    fn an_unresponsive_flow_is_bounded_by_the_limit() {
        let p = FqParams {
            limit: 300,
            ..params()
        };
        let mut q = FqCodel::new(p, 400);
        let mut dropped = Vec::new();
        let mut free: Vec<u32> = (0..400).rev().collect();
        // Two in, one out, every 100 µs for 2 s.
        for step in 0..20_000u64 {
            let now = step * 100_000;
            for _ in 0..2 {
                let s = free.pop().expect("the queue leaked slots");
                q.enqueue(s, pkt(5, 1400), now, &mut dropped);
                free.append(&mut dropped);
            }
            if let Some((s, _)) = q.dequeue(now, &mut dropped) {
                free.push(s);
            }
            free.append(&mut dropped);
            assert!(q.len() <= 300);
        }
        let st = q.stats();
        assert!(st.codel_drops > 0 && st.overflow_drops > 0, "{st:?}");
        assert_eq!(free.len() + q.len(), 400, "a slot went missing");
    }

    #[test]
    fn no_drop_below_target() {
        let mut q = FqCodel::new(params(), 100);
        let mut d = Vec::new();
        for s in 0..100 {
            q.enqueue(s, pkt(3, 1400), 0, &mut d);
        }
        // Served within 4 ms each: never above the 5 ms target.
        let (out, dropped) = drain(&mut q, 4 * MS);
        assert_eq!(out.len(), 100);
        assert!(dropped.is_empty());
    }

    #[test]
    fn overflow_drops_from_the_fattest_flow_only() {
        let p = FqParams {
            limit: 100,
            ..params()
        };
        let mut q = FqCodel::new(p, 200);
        let mut d = Vec::new();
        for s in 0..10 {
            q.enqueue(s, pkt(1, 100), 0, &mut d);
        }
        for s in 10..150 {
            q.enqueue(s, pkt(2, 1400), 0, &mut d);
        }
        assert!(q.len() <= 100);
        assert!(!d.is_empty());
        assert!(
            d.iter().all(|s| *s >= 10),
            "the light flow lost packets: {d:?}"
        );
        assert_eq!(q.stats().overflow_drops as usize, d.len());
        let (out, _) = drain(&mut q, 0);
        // Every slot is accounted for exactly once.
        let mut all: Vec<u32> = out.iter().chain(d.iter()).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..150).collect::<Vec<_>>());
    }

    /// One in and one out per ms over a standing queue of 50 packets of
    /// flow 9 (ECN-capable when `ect`): (slots delivered marked, dropped,
    /// stats).
    fn standing_queue(p: FqParams, ect: bool) -> (u64, u64, FqStats) {
        let mut q = FqCodel::new(p, 200);
        let mut dropped = Vec::new();
        let mut free: Vec<u32> = (0..200).rev().collect();
        let pk = Packet {
            hash: 9,
            len: 1400,
            ect,
        };
        for _ in 0..50 {
            let s = free.pop().expect("slot");
            q.enqueue(s, pk, 0, &mut dropped);
        }
        let (mut marked, mut lost) = (0, 0);
        for ms in 1..=2_000u64 {
            let now = ms * MS;
            let s = free.pop().expect("the queue leaked slots");
            q.enqueue(s, pk, now, &mut dropped);
            if let Some((s, mark)) = q.dequeue(now, &mut dropped) {
                marked += u64::from(mark);
                free.push(s);
            }
            lost += dropped.len() as u64;
            free.append(&mut dropped);
        }
        (marked, lost, q.stats())
    }

    #[test]
    fn codel_marks_ecn_capable_packets_instead_of_dropping() {
        let (marked, lost, st) = standing_queue(params(), true);
        assert_eq!(lost, 0, "an ECN-capable packet was dropped");
        assert_eq!(st.codel_drops, 0);
        assert_eq!(st.ecn_marks, marked);
        // Nothing drains a standing queue that only gets marks (the sender
        // is not reacting here), so CoDel keeps marking at a rising rate
        // (interval / sqrt(count)): more often than once per interval.
        assert!(marked > 20, "{marked} marks in 2 s");
        // The same queue without ECN is dropped, not marked.
        let (marked, lost, st) = standing_queue(params(), false);
        assert_eq!((marked, st.ecn_marks), (0, 0));
        assert!(lost > 0 && lost == st.codel_drops);
        // ecn: false drops ECN-capable packets too.
        let p = FqParams {
            ecn: false,
            ..params()
        };
        let (marked, lost, _) = standing_queue(p, true);
        assert_eq!(marked, 0);
        assert!(lost > 0);
    }

    #[test]
    fn a_bad_slot_number_is_handed_back() {
        let mut q = FqCodel::new(params(), 4);
        let mut d = Vec::new();
        q.enqueue(9, pkt(0, 100), 0, &mut d);
        assert_eq!(d, vec![9]);
        assert!(q.is_empty());
        assert_eq!(q.dequeue(0, &mut d), None);
    }
}
