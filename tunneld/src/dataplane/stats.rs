//! The data path's I/O counters (step 5 of the flow in [`super`]: the
//! lead worker copies them into each status snapshot): every worker adds
//! to the same atomics, relaxed, once per batch.

use crate::control::IoCounters;
use std::sync::atomic::{AtomicU64, Ordering};

/// I/O errors counted by both workers.
#[derive(Debug, Default)]
pub(super) struct IoStats {
    pub(super) send_errors: AtomicU64,
    pub(super) recv_errors: AtomicU64,
    pub(super) tun_write_errors: AtomicU64,
    pub(super) tun_read_errors: AtomicU64,
    pub(super) path_too_big: AtomicU64,
    pub(super) tun_reads: AtomicU64,
    pub(super) tun_read_packets: AtomicU64,
    pub(super) tun_writes: AtomicU64,
    pub(super) tun_write_packets: AtomicU64,
    pub(super) udp_sends: AtomicU64,
    pub(super) udp_send_frames: AtomicU64,
    pub(super) udp_recv_buffers: AtomicU64,
    pub(super) udp_recv_frames: AtomicU64,
    pub(super) queue_codel_drops: AtomicU64,
    pub(super) queue_overflow_drops: AtomicU64,
    pub(super) queue_packets: AtomicU64,
    pub(super) queue_ecn_marks: AtomicU64,
    pub(super) ecn_path_ce: AtomicU64,
    pub(super) ecn_not_ect_drops: AtomicU64,
}

impl IoStats {
    pub(super) fn snapshot(&self) -> IoCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        IoCounters {
            send_errors: get(&self.send_errors),
            recv_errors: get(&self.recv_errors),
            tun_write_errors: get(&self.tun_write_errors),
            tun_read_errors: get(&self.tun_read_errors),
            path_too_big: get(&self.path_too_big),
            tun_reads: get(&self.tun_reads),
            tun_read_packets: get(&self.tun_read_packets),
            tun_writes: get(&self.tun_writes),
            tun_write_packets: get(&self.tun_write_packets),
            udp_sends: get(&self.udp_sends),
            udp_send_frames: get(&self.udp_send_frames),
            udp_recv_buffers: get(&self.udp_recv_buffers),
            udp_recv_frames: get(&self.udp_recv_frames),
            queue_codel_drops: get(&self.queue_codel_drops),
            queue_overflow_drops: get(&self.queue_overflow_drops),
            queue_packets: get(&self.queue_packets),
            queue_ecn_marks: get(&self.queue_ecn_marks),
            ecn_path_ce: get(&self.ecn_path_ce),
            ecn_not_ect_drops: get(&self.ecn_not_ect_drops),
        }
    }
}

pub(super) fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}
