//! The data path's I/O counters (step 5 of the flow in [`super`]: the
//! lead worker copies them into each status snapshot): every worker adds
//! to the same atomics, relaxed, once per batch. The list itself, with
//! each counter's status field, Prometheus family and meaning, is declared
//! once in [`crate::io_counters`].

use std::sync::atomic::{AtomicU64, Ordering};

pub(super) use crate::io_counters::IoStats;

pub(super) fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}
