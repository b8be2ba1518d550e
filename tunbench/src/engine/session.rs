//! One side of a running test, the same code on client and server: after `start`,
//! it closes the receiver's measured window (and tells the peer's senders to stop),
//! samples TCP_INFO at each interval boundary, drains UDP, exchanges the final
//! sender/receiver reports, and turns a dead peer or a timeout into an abort with
//! whatever was measured so far.
//!
//! Order of reports: receivers report as soon as they are done. TCP senders report
//! after the peer's receiver report (all data delivered, so retransmit counts are
//! final); UDP senders report at once (the peer's drain waits for it).

use crate::engine::proto::{self, Msg, ReceiverStreamReport, SenderStreamReport};
use crate::engine::sock;
use crate::engine::spec::{Protocol, TestParams};
use crate::engine::stats::TestClock;
use crate::engine::streams::{Event, Flags};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long UDP receivers keep reading after the peer's senders reported.
const UDP_DRAIN: Duration = Duration::from_millis(300);
/// How long after the window the whole exchange may take (TCP buffers draining on a
/// slow path, reports crossing a long RTT).
const FINISH_LIMIT: Duration = Duration::from_secs(60);
/// How long stream threads get to report after an abort.
const ABORT_COLLECT: Duration = Duration::from_secs(3);

/// What one side runs.
pub struct Session<'a> {
    /// The test.
    pub params: &'a TestParams,
    /// The clock (t0 = start).
    pub clock: TestClock,
    /// Control connection, write half.
    pub ctrl: TcpStream,
    /// The event queue (control messages, stream completions).
    pub events: &'a Receiver<Event>,
    /// Shared stop/abort flags of the stream threads.
    pub flags: Arc<Flags>,
    /// Number of local sender streams (threads already running).
    pub local_senders: usize,
    /// Number of local receiver streams.
    pub local_receivers: usize,
    /// TCP sender sockets (clones), by stream id, for TCP_INFO.
    pub tcp_senders: Vec<(u16, TcpStream)>,
    /// All TCP data sockets (clones), shut down on abort.
    pub data_socks: Vec<TcpStream>,
    /// Does the peer send / receive?
    pub peer_sends: bool,
    /// See `peer_sends`.
    pub peer_receives: bool,
}

/// What one side ends up with.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Local sender reports.
    pub senders: Vec<SenderStreamReport>,
    /// Local receiver reports.
    pub receivers: Vec<ReceiverStreamReport>,
    /// The peer's sender reports.
    pub peer_senders: Option<Vec<SenderStreamReport>>,
    /// The peer's receiver reports.
    pub peer_receivers: Option<Vec<ReceiverStreamReport>>,
    /// Why the test ended early, if it did.
    pub error: Option<String>,
    /// Nanoseconds since t0 when the session ended.
    pub ended_ns: u64,
}

impl Session<'_> {
    fn send(&mut self, m: &Msg) -> Result<(), String> {
        proto::write_msg(&mut self.ctrl, m).map_err(|e| format!("control connection: {e}"))
    }

    fn sample_retrans(&self, samples: &mut [Vec<u64>]) {
        for ((_, s), v) in self.tcp_senders.iter().zip(samples.iter_mut()) {
            v.push(
                sock::tcp_info(s)
                    .map(|i| i.total_retrans as u64)
                    .unwrap_or(0),
            );
        }
    }

    /// Runs until both sides have exchanged everything, or aborts.
    pub fn run(mut self) -> Outcome {
        let mut out = Outcome::default();
        let udp = self.params.protocol == Protocol::Udp;
        let window_end = self.clock.window_end();
        let deadline = window_end + FINISH_LIMIT;
        let n_bound = self.clock.n_window();
        let mut next_bound = 0usize;
        let mut samples: Vec<Vec<u64>> = vec![Vec::new(); self.tcp_senders.len()];
        let mut stop_sent = self.local_receivers == 0;
        let mut sender_report_sent = self.local_senders == 0;
        let mut receiver_report_sent = self.local_receivers == 0;
        let mut drain_at: Option<Instant> = None;
        let mut pending_senders: Vec<SenderStreamReport> = Vec::new();

        let error = loop {
            let now = Instant::now();
            // Interval boundaries: TCP_INFO samples (sender side).
            while !self.tcp_senders.is_empty()
                && next_bound <= n_bound
                && now >= self.clock.boundary(next_bound)
            {
                self.sample_retrans(&mut samples);
                next_bound += 1;
            }
            if !stop_sent && now >= window_end {
                if let Err(e) = self.send(&Msg::StopSending) {
                    break Some(e);
                }
                stop_sent = true;
            }
            if let Some(t) = drain_at {
                if now >= t {
                    self.flags.stop_recv.store(true, Ordering::Relaxed);
                }
            }
            // Sender report: when all local senders are done and (TCP) the peer has
            // reported what it received.
            if !sender_report_sent
                && pending_senders.len() == self.local_senders
                && (udp || out.peer_receivers.is_some())
            {
                self.sample_retrans(&mut samples);
                for r in pending_senders.iter_mut() {
                    if let Some(i) = self.tcp_senders.iter().position(|(id, _)| *id == r.id) {
                        r.retrans_samples = samples[i].clone();
                        if let Some(info) = sock::tcp_info(&self.tcp_senders[i].1) {
                            r.rtt_us = Some(info.rtt_us);
                            r.snd_cwnd = Some(info.snd_cwnd);
                            r.snd_mss = Some(info.snd_mss);
                        }
                    }
                }
                pending_senders.sort_by_key(|r| r.id);
                out.senders = pending_senders.clone();
                let msg = Msg::SenderReport {
                    streams: out.senders.clone(),
                };
                if let Err(e) = self.send(&msg) {
                    break Some(e);
                }
                sender_report_sent = true;
            }
            if !receiver_report_sent && out.receivers.len() == self.local_receivers {
                out.receivers.sort_by_key(|r| r.id);
                let msg = Msg::ReceiverReport {
                    streams: out.receivers.clone(),
                };
                if let Err(e) = self.send(&msg) {
                    break Some(e);
                }
                receiver_report_sent = true;
            }
            let peer_done = (!self.peer_sends || out.peer_senders.is_some())
                && (!self.peer_receives || out.peer_receivers.is_some());
            if sender_report_sent && receiver_report_sent && peer_done {
                break None;
            }
            if now >= deadline {
                break Some(format!(
                    "test did not finish within {}s after the measured window",
                    FINISH_LIMIT.as_secs()
                ));
            }
            // Sleep until the next thing that is due.
            let mut wake = deadline;
            if !stop_sent {
                wake = wake.min(window_end);
            }
            if !self.tcp_senders.is_empty() && next_bound <= n_bound {
                wake = wake.min(self.clock.boundary(next_bound));
            }
            if let Some(t) = drain_at {
                if !self.flags.stop_recv.load(Ordering::Relaxed) {
                    wake = wake.min(t);
                }
            }
            let ev = match self
                .events
                .recv_timeout(wake.saturating_duration_since(now))
            {
                Ok(ev) => ev,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    break Some("internal: event queue closed".into())
                }
            };
            match ev {
                Event::SenderDone(r) => pending_senders.push(r),
                Event::ReceiverDone(r) => out.receivers.push(r),
                Event::Data { .. } => {} // late or extra data connection: dropped
                Event::Ctrl(Ok(Msg::StopSending)) => {
                    self.flags.stop_send.store(true, Ordering::Relaxed)
                }
                Event::Ctrl(Ok(Msg::SenderReport { streams })) => {
                    out.peer_senders = Some(streams);
                    if udp && drain_at.is_none() {
                        drain_at = Some(Instant::now() + UDP_DRAIN);
                    }
                }
                Event::Ctrl(Ok(Msg::ReceiverReport { streams })) => {
                    out.peer_receivers = Some(streams)
                }
                Event::Ctrl(Ok(Msg::Error { message })) => {
                    break Some(format!("peer reported: {message}"))
                }
                Event::Ctrl(Ok(other)) => {
                    let e = format!("protocol error: unexpected {other:?} during the test");
                    let _ = self.send(&Msg::Error { message: e.clone() });
                    break Some(e);
                }
                Event::Ctrl(Err(e)) => break Some(e.to_string()),
            }
        };
        if let Some(e) = &error {
            self.abort(e, &mut out, pending_senders);
        }
        out.error = error;
        out.ended_ns = self.clock.elapsed_ns(Instant::now());
        out
    }

    fn abort(&mut self, why: &str, out: &mut Outcome, mut pending: Vec<SenderStreamReport>) {
        log::warn!("test aborted: {why}");
        let _ = proto::write_msg(
            &mut self.ctrl,
            &Msg::Error {
                message: why.to_string(),
            },
        );
        self.flags.abort.store(true, Ordering::Relaxed);
        self.flags.stop_send.store(true, Ordering::Relaxed);
        self.flags.stop_recv.store(true, Ordering::Relaxed);
        for s in &self.data_socks {
            let _ = s.shutdown(Shutdown::Both);
        }
        let until = Instant::now() + ABORT_COLLECT;
        let have_senders = out.senders.len().max(pending.len());
        let mut need =
            (self.local_senders - have_senders) + (self.local_receivers - out.receivers.len());
        while need > 0 {
            match self
                .events
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                Ok(Event::SenderDone(r)) => {
                    pending.push(r);
                    need -= 1;
                }
                Ok(Event::ReceiverDone(r)) => {
                    out.receivers.push(r);
                    need -= 1;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if out.senders.is_empty() {
            pending.sort_by_key(|r| r.id);
            out.senders = pending;
        }
        out.receivers.sort_by_key(|r| r.id);
        out.receivers.truncate(self.local_receivers);
    }
}
