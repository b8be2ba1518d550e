//! The fq_codel stage of a worker's TUN → network direction (step 3 of
//! the flow in [`super`], with `queue: fq_codel`): the TUN queue is
//! drained eagerly (at most [`MAX_DRAIN_READS`] reads a pass) into a
//! bounded pool, packets are queued per inner flow ([`crate::fq`]), and a
//! send batch is the next `batch` packets the queue releases, so a ping
//! never waits behind bulk data.

use super::stats::IoStats;
use super::tx::{read_tun, slot_size};
use super::{Shared, MAX_DRAIN_READS, MAX_FRAME};
use crate::config::DataplaneConfig;
use crate::device::{HEADROOM, OVERHEAD};
use crate::fq::{FqCodel, FqParams};
use crate::slab::{Slab, Slots};
use crate::tun::{TunIo, MAX_SPLIT};
use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The fq_codel stage of the TX direction: a pool of packet buffers and the
/// queue of their slot numbers. A read's packets move from the staging area
/// into the pool by swapping `Vec`s; a released packet is copied into the
/// TX slab, where the batch's frames are sealed back to back.
pub(super) struct TxQueue {
    pub(super) fq: FqCodel,
    /// Packet buffers by slot; grown up to `capacity` as the queue first
    /// fills, then reused.
    pool: Vec<Vec<u8>>,
    lens: Vec<usize>,
    /// Flow hash of the packet in each slot.
    hashes: Vec<u64>,
    free: Vec<u32>,
    capacity: usize,
    buf_size: usize,
    /// Where one read lands before its packets are queued.
    staging: Vec<Vec<u8>>,
    staging_sizes: Vec<usize>,
    dropped: Vec<u32>,
    /// Packets lost because no slot was free (not expected: see `new`).
    no_slot: u64,
    /// Secret key of the flow hash.
    key: u64,
    origin: Instant,
}

impl TxQueue {
    pub(super) fn new(k: &DataplaneConfig, mtu: usize) -> TxQueue {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let mtu = mtu.clamp(576, MAX_FRAME - OVERHEAD);
        // The queue holds at most `queue_limit` packets once a read's worth
        // is enqueued (overflow drops happen at enqueue), so one more read's
        // worth of slots is always free for the next read.
        let capacity = k.queue_limit + MAX_SPLIT;
        let params = FqParams {
            target: nanos(k.codel_target),
            interval: nanos(k.codel_interval),
            // One TCP super-packet's worth per round: a bulk flow's
            // segments leave together, in one GSO send.
            quantum: 64 * 1024,
            limit: k.queue_limit,
            mtu: mtu as u32,
            ecn: k.ecn,
        };
        TxQueue {
            fq: FqCodel::new(params, capacity),
            pool: Vec::new(),
            lens: vec![0; capacity],
            hashes: vec![0; capacity],
            free: Vec::with_capacity(capacity),
            capacity,
            buf_size: slot_size(mtu),
            staging: vec![vec![0u8; slot_size(mtu)]; MAX_SPLIT],
            staging_sizes: vec![0; MAX_SPLIT],
            dropped: Vec::with_capacity(capacity),
            no_slot: 0,
            key: {
                use std::hash::BuildHasher;
                std::collections::hash_map::RandomState::new().hash_one(0x0074_756e_6e65_6c64_u64)
            },
            origin: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn alloc(&mut self) -> Option<u32> {
        if let Some(s) = self.free.pop() {
            return Some(s);
        }
        if self.pool.len() < self.capacity {
            self.pool.push(vec![0u8; self.buf_size]);
            return Some((self.pool.len() - 1) as u32);
        }
        None
    }

    /// Reads the TUN ring until it is empty (at most [`MAX_DRAIN_READS`]
    /// reads) and queues every packet.
    pub(super) fn drain(
        &mut self,
        shared: &Shared<'_>,
        tun: &dyn TunIo,
        scratch: &mut [u8],
    ) -> io::Result<()> {
        for _ in 0..MAX_DRAIN_READS {
            let Some(k) = read_tun(
                shared,
                tun,
                scratch,
                &mut self.staging,
                &mut self.staging_sizes,
            )?
            else {
                break;
            };
            let now = self.now();
            for i in 0..k {
                let Some(slot) = self.alloc() else {
                    // Unreachable by the capacity argument in `new`; if it
                    // ever happens the packet is dropped and counted.
                    self.no_slot += 1;
                    continue;
                };
                let len = self.staging_sizes[i];
                std::mem::swap(&mut self.pool[slot as usize], &mut self.staging[i]);
                self.lens[slot as usize] = len;
                let packet = &self.pool[slot as usize][HEADROOM..HEADROOM + len];
                let hash = crate::wire::flow::flow_hash_keyed(packet, self.key);
                self.hashes[slot as usize] = hash;
                let pkt = crate::fq::Packet {
                    hash,
                    len,
                    ect: crate::wire::ecn::of(packet) != crate::wire::ecn::NOT_ECT,
                };
                self.fq.enqueue(slot, pkt, now, &mut self.dropped);
                self.free.append(&mut self.dropped);
            }
        }
        Ok(())
    }

    /// Copies up to `batch` packets from the queue into `bufs`' first
    /// slots and frees theirs; returns how many.
    /// Their flow hashes go to `hashes`, so the outer flow is not hashed
    /// again.
    pub(super) fn release(
        &mut self,
        bufs: &mut Slab,
        sizes: &mut [usize],
        hashes: &mut [u64],
        batch: usize,
    ) -> usize {
        let now = self.now();
        let want = batch.min(bufs.count());
        let mut n = 0;
        while n < want {
            let Some((slot, mark)) = self.fq.dequeue(now, &mut self.dropped) else {
                break;
            };
            let len = self.lens[slot as usize];
            if mark {
                // CoDel chose this ECN-capable packet: CE instead of a drop.
                let packet = &mut self.pool[slot as usize][HEADROOM..HEADROOM + len];
                crate::wire::ecn::set(packet, crate::wire::ecn::CE);
            }
            // Copied into the TX slab (only the packet; the headroom is
            // written by sealing), so the batch's full-size frames form
            // GSO trains there as without the queue.
            let end = HEADROOM + len;
            bufs.slot(n)[HEADROOM..end].copy_from_slice(&self.pool[slot as usize][HEADROOM..end]);
            sizes[n] = len;
            hashes[n] = self.hashes[slot as usize];
            self.free.push(slot);
            n += 1;
        }
        self.free.append(&mut self.dropped);
        n
    }

    pub(super) fn publish(&self, io: &IoStats) {
        let st = self.fq.stats();
        io.queue_codel_drops
            .store(st.codel_drops, Ordering::Relaxed);
        io.queue_overflow_drops
            .store(st.overflow_drops + self.no_slot, Ordering::Relaxed);
        io.queue_packets
            .store(self.fq.len() as u64, Ordering::Relaxed);
        io.queue_ecn_marks.store(st.ecn_marks, Ordering::Relaxed);
    }
}
