//! The network → TUN direction of a worker (step 4 of the flow in
//! [`super`]):
//! 1. receive: one `recvmmsg` returns up to [`MAX_RECV_BATCH`] buffers, each
//!    a GRO train of frames (at most [`RX_PASS_FRAMES`] frames' worth per
//!    pass, so the worker turns back to its TX side within a fraction of a
//!    millisecond);
//! 2. open: every frame is opened in place with the device's published
//!    snapshot, without its lock; the lock is taken once per batch only for
//!    what the snapshot cannot decide (handshakes, a session's first frame,
//!    unknown indexes, a roaming peer); the batch's counters are then
//!    marked in each session's replay window under one lock per session,
//!    and replays dropped, before anything is written;
//! 3. write: each inner packet is copied once, straight into its TCP flow's
//!    super-packet or a buffer of its own ([`crate::gro`], with offload on),
//!    and each buffer is one TUN write.

use super::stats::add;
use super::{
    time_now, would_block, Shared, MAX_FRAME, RX_PASS_FRAMES, TUN_WRITE_BATCH, TUN_WRITE_CAPACITY,
    TUN_WRITE_OFFSET,
};
use crate::device::{Datagram, Device};
use crate::fastpath::{Opened, Tally};
use crate::transport::{Received, MAX_RECV_BATCH};
use crate::tun::TunIo;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

/// Buffers of the network → TUN direction.
pub(super) struct RxState {
    bufs: Vec<Vec<u8>>,
    got: Vec<Received>,
    /// Inner packets found in `bufs`: (buffer, range).
    inner: Vec<(usize, Range<usize>)>,
    out: Vec<Vec<u8>>,
    gro: tun_rs::GROTable,
    /// TCP coalescing for TUN writes with offload on.
    coalescer: crate::gro::Coalescer,
    control: Vec<Datagram>,
    /// Senders of this pass that are peers' endpoints (only filled when the
    /// transport tracks authentication).
    authenticated: Vec<SocketAddr>,
    /// Receive buffers offered per pass (see [`RX_PASS_FRAMES`]).
    per_pass: usize,
    /// The batch's accounting on the lock-free path.
    tally: Tally,
    /// For each frame waiting in `tally` to be settled, its position in
    /// `inner` (`None`: dropped already, for ECN).
    settle_at: Vec<Option<usize>>,
}

impl RxState {
    pub(super) fn new(shared: &Shared<'_>, tun: &dyn TunIo) -> RxState {
        let gro_segments = shared.transport.gro_segments();
        // A GRO train holds up to `gro_segments` frames of one flow.
        let slot = if gro_segments > 1 {
            65_536
        } else {
            MAX_FRAME + 64
        };
        RxState {
            bufs: vec![vec![0u8; slot]; MAX_RECV_BATCH],
            got: vec![Received::default(); MAX_RECV_BATCH],
            inner: Vec::with_capacity(MAX_RECV_BATCH * 64),
            // Write buffers for tun-rs, used only without offload (with it
            // the coalescer owns its buffers).
            out: (0..if tun.offload() { 0 } else { TUN_WRITE_BATCH })
                .map(|_| Vec::with_capacity(TUN_WRITE_CAPACITY))
                .collect(),
            gro: tun_rs::GROTable::default(),
            coalescer: crate::gro::Coalescer::with_udp(tun.uso()),
            control: Vec::new(),
            authenticated: Vec::new(),
            per_pass: (RX_PASS_FRAMES / gro_segments.max(1)).clamp(1, MAX_RECV_BATCH),
            tally: Tally::default(),
            settle_at: Vec::with_capacity(MAX_RECV_BATCH * 64),
        }
    }

    /// Receives a batch, opens it, writes the inner packets to the TUN
    /// device.
    pub(super) fn run(&mut self, shared: &Shared<'_>, tun: &dyn TunIo) {
        let Some(n) = self.receive(shared) else {
            return;
        };
        self.open(shared, n);
        self.write(shared, tun);
    }

    /// Step 1: one `recvmmsg` (or the transport's equivalent) into the
    /// buffers; `None` when nothing was there or the receive failed.
    fn receive(&mut self, shared: &Shared<'_>) -> Option<usize> {
        let n = {
            let mut slices: [IoSliceMut<'_>; MAX_RECV_BATCH] =
                std::array::from_fn(|_| IoSliceMut::new(&mut []));
            for (s, b) in slices.iter_mut().zip(self.bufs.iter_mut()) {
                *s = IoSliceMut::new(b);
            }
            match shared
                .transport
                .recv(&mut slices[..self.per_pass], &mut self.got)
            {
                Ok(n) => n,
                Err(e) if would_block(&e) => return None,
                Err(e) => {
                    // ICMP errors surface here (e.g. port unreachable while
                    // the peer restarts); they are not fatal.
                    shared.io.recv_errors.fetch_add(1, Ordering::Relaxed);
                    log::debug!("receive failed: {e}");
                    return None;
                }
            }
        };
        add(&shared.io.udp_recv_buffers, n);
        add(
            &shared.io.udp_recv_frames,
            self.got[..n]
                .iter()
                .map(|r| r.len.div_ceil(r.stride.max(1)))
                .sum(),
        );
        Some(n)
    }

    /// Step 2: opens every frame of the `n` buffers in place, lock-free
    /// where the snapshot decides (see [`crate::fastpath`]), and notes the
    /// inner packets in `inner`.
    fn open(&mut self, shared: &Shared<'_>, n: usize) {
        let t = time_now();
        self.inner.clear();
        {
            // Data frames are opened without the device lock; the lock is
            // taken (once per batch, and kept to its end) only for what the
            // snapshot cannot decide: handshakes, a session's first frame,
            // unknown indexes, a roaming peer.
            let fp = shared.fast.load();
            let mut dev: Option<MutexGuard<'_, Device>> = None;
            for (b, r) in self.got[..n].iter().enumerate() {
                let cap = self.bufs[b].len();
                let buf = &mut self.bufs[b][..r.len.min(cap)];
                let mut off = 0;
                while off < buf.len() {
                    let end = (off + r.stride).min(buf.len());
                    let frame = &mut buf[off..end];
                    let len = frame.len();
                    // A fast-path data frame's counter is marked at the
                    // end of the batch (`settle`), one window lock per
                    // session; its packet is dropped there if refused.
                    let pending = self.tally.pending();
                    let opened =
                        match fp.decapsulate_deferred(&mut self.tally, frame, len, r.from, t.now) {
                            Opened::Inner(range) => Some(range),
                            Opened::Done => None,
                            Opened::Control {
                                peer,
                                range,
                                frame_len,
                            } => {
                                dev.get_or_insert_with(|| shared.lock()).on_control(
                                    peer,
                                    &frame[range],
                                    frame_len,
                                    &t,
                                    &mut self.control,
                                );
                                None
                            }
                            Opened::Slow => dev.get_or_insert_with(|| shared.lock()).decapsulate(
                                frame,
                                len,
                                r.from,
                                &t,
                                &mut self.control,
                            ),
                        };
                    if let Some(range) = opened {
                        // RFC 6040: a CE mark the path put on the outer
                        // header reaches the inner packet (or drops it when
                        // the inner flow cannot take ECN).
                        let keep = !shared.knobs.ecn
                            || match crate::wire::ecn::decapsulate(r.ecn, &mut frame[range.clone()])
                            {
                                Some(changed) => {
                                    if changed && r.ecn == crate::wire::ecn::CE {
                                        add(&shared.io.ecn_path_ce, 1);
                                    }
                                    true
                                }
                                None => {
                                    add(&shared.io.ecn_not_ect_drops, 1);
                                    false
                                }
                            };
                        if self.tally.pending() > pending {
                            self.settle_at.push(keep.then_some(self.inner.len()));
                        }
                        if keep {
                            self.inner.push((b, off + range.start..off + range.end));
                        }
                    }
                    off = end;
                }
                // Tell a transport that holds unauthenticated connections
                // (TCP) which senders the device now knows as peers (the
                // device itself once it handled something this batch: the
                // snapshot may not show that change yet).
                if shared.track_auth
                    && !self.authenticated.contains(&r.from)
                    && dev.as_ref().map_or_else(
                        || fp.is_peer_endpoint(r.from),
                        |d| d.is_peer_endpoint(r.from),
                    )
                {
                    self.authenticated.push(r.from);
                }
            }
            // Before anything is delivered: mark the batch's counters;
            // a refused frame's packet (a replay, or taken by another
            // worker first) is emptied and left out of the write.
            let (settle_at, inner) = (&self.settle_at, &mut self.inner);
            let mut refused = false;
            fp.settle(&mut self.tally, |k| {
                if let Some(&Some(i)) = settle_at.get(k) {
                    inner[i].1 = 0..0;
                    refused = true;
                }
            });
            if refused {
                self.inner.retain(|(_, r)| !r.is_empty());
            }
            self.settle_at.clear();
            self.tally.flush(fp.counters());
        }
        shared.send_control(&mut self.control);
        for from in self.authenticated.drain(..) {
            shared.transport.authenticated(from);
        }
    }

    /// Step 3: writes the inner packets to the TUN device, coalesced with
    /// offload ([`crate::gro`]) or in batches of single packets.
    fn write(&mut self, shared: &Shared<'_>, tun: &dyn TunIo) {
        if tun.offload() {
            // Each inner packet is copied once, into its super-packet or
            // its own buffer ([`crate::gro`]), and each buffer is one write.
            for (b, range) in &self.inner {
                self.coalescer.push(&self.bufs[*b][range.clone()]);
            }
            let writes = self.coalescer.finish();
            add(&shared.io.tun_writes, writes.len());
            add(&shared.io.tun_write_packets, self.inner.len());
            for buf in writes {
                if let Err(e) = tun.write_raw(buf) {
                    shared.io.tun_write_errors.fetch_add(1, Ordering::Relaxed);
                    log::debug!("TUN write failed: {e}");
                }
            }
            return;
        }
        for chunk in self.inner.chunks(TUN_WRITE_BATCH) {
            for ((b, range), out) in chunk.iter().zip(self.out.iter_mut()) {
                out.clear();
                out.resize(TUN_WRITE_OFFSET, 0);
                out.extend_from_slice(&self.bufs[*b][range.clone()]);
            }
            add(&shared.io.tun_writes, 1);
            add(&shared.io.tun_write_packets, chunk.len());
            if let Err(e) = tun.write_batch(
                &mut self.gro,
                &mut self.out[..chunk.len()],
                TUN_WRITE_OFFSET,
            ) {
                shared.io.tun_write_errors.fetch_add(1, Ordering::Relaxed);
                log::debug!("TUN write failed: {e}");
            }
        }
    }
}
