//! Verified flows for failover measurements: N TCP streams from one lab
//! namespace to another, each carrying its own deterministic byte stream
//! whose SHA-256 both ends compute, with the receiver counting delivered
//! bytes per stream in fine time bins. A flow that crossed a dying gateway
//! shows its stall as a run of empty bins; the aggregate of the other flows
//! cannot hide it (which an aggregate interval report would).

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ring::digest;
use serde::{Deserialize, Serialize};

use crate::engine::sock::tcp_info;
use crate::topo::Lab;

/// Write size of each sender.
const CHUNK: usize = 64 * 1024;
/// How long a read or write may block: beyond any failover the lab expects
/// (seconds), short enough that a dead path fails the run.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Most streams: each is two threads; more measure the scheduler.
pub const MAX_STREAMS: usize = 64;
/// Finest bin: below 10 ms the scheduler's own jitter on a loaded 2-core
/// host shows up as gaps.
pub const MIN_BIN: Duration = Duration::from_millis(10);

/// What to send.
#[derive(Debug, Clone, Copy)]
pub struct FlowSpec {
    /// Parallel TCP streams (1..=[`MAX_STREAMS`]).
    pub streams: usize,
    /// How long each sender sends.
    pub duration: Duration,
    /// Width of the receiver's time bins (at least [`MIN_BIN`]).
    pub bin: Duration,
    /// Seed of the byte streams (stream `i` uses `seed + i`).
    pub seed: u64,
    /// Pacing rate of each stream, bit/s (SO_MAX_PACING_RATE); `None`: as
    /// fast as the path allows. Paced flows below the path's capacity see
    /// no congestion loss, so a retransmission shows a packet the failover
    /// or drain itself lost.
    pub rate: Option<u64>,
}

/// One stream's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamFigures {
    /// Bytes written by the sender.
    pub sent: u64,
    /// Bytes read by the receiver before EOF.
    pub received: u64,
    /// Both digests matched and the byte counts too.
    pub intact: bool,
    /// TCP retransmissions of the sender (TCP_INFO).
    pub retransmits: Option<u32>,
    /// Bytes delivered in each bin since the common start.
    pub bins: Vec<u64>,
    /// Why the stream failed, if it did.
    pub error: Option<String>,
}

impl StreamFigures {
    /// Longest run of empty bins between this stream's first and last
    /// delivery, as time.
    pub fn longest_gap(&self, bin: Duration) -> Duration {
        let first = self.bins.iter().position(|b| *b > 0);
        let last = self.bins.iter().rposition(|b| *b > 0);
        let (Some(first), Some(last)) = (first, last) else {
            return Duration::ZERO;
        };
        let mut longest = 0u32;
        let mut run = 0u32;
        for b in &self.bins[first..=last] {
            if *b == 0 {
                run += 1;
                longest = longest.max(run);
            } else {
                run = 0;
            }
        }
        bin * longest
    }

    /// The first bin at or after `from` with data, as time since the start.
    pub fn resumed_at(&self, bin: Duration, from: Duration) -> Option<Duration> {
        let i0 = (from.as_nanos() / bin.as_nanos().max(1)) as usize;
        self.bins
            .iter()
            .enumerate()
            .skip(i0)
            .find(|(_, b)| **b > 0)
            .map(|(i, _)| bin * i as u32)
    }
}

/// Every stream's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flows {
    /// Bin width, seconds.
    pub bin_s: f64,
    /// Per stream.
    pub streams: Vec<StreamFigures>,
}

impl Flows {
    /// The bin width.
    pub fn bin(&self) -> Duration {
        Duration::from_secs_f64(self.bin_s)
    }

    /// Every stream arrived whole and unaltered.
    pub fn intact(&self) -> bool {
        !self.streams.is_empty() && self.streams.iter().all(|s| s.intact)
    }

    /// The longest stall of any stream.
    pub fn longest_gap(&self) -> Duration {
        let bin = self.bin();
        self.streams
            .iter()
            .map(|s| s.longest_gap(bin))
            .max()
            .unwrap_or_default()
    }

    /// Sum of the senders' retransmissions.
    pub fn retransmits(&self) -> u64 {
        self.streams
            .iter()
            .filter_map(|s| s.retransmits)
            .map(u64::from)
            .sum()
    }

    /// Bytes received in total.
    pub fn received(&self) -> u64 {
        self.streams.iter().map(|s| s.received).sum()
    }

    /// How long after `event` the last stream that stalled in `[event,
    /// until)` delivered again: for each stream the end of its longest run
    /// of empty bins starting in that window, if at least `min_stall` long
    /// (shorter runs are pacing and scheduling, not a dead path), the
    /// latest of them minus `event`; zero if no stream stalled. `None` if a
    /// stall never ended.
    pub fn recovered_after(
        &self,
        event: Duration,
        until: Duration,
        min_stall: Duration,
    ) -> Option<Duration> {
        let min_bins = (min_stall.as_nanos() / self.bin().as_nanos().max(1)) as usize;
        let bin = self.bin();
        let (i0, i1) = (
            (event.as_nanos() / bin.as_nanos().max(1)) as usize,
            (until.as_nanos() / bin.as_nanos().max(1)) as usize,
        );
        let mut latest = event;
        for s in &self.streams {
            let (mut best, mut best_end) = (0usize, None);
            let mut i = i0;
            while i < i1.min(s.bins.len()) {
                if s.bins[i] > 0 {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < s.bins.len() && s.bins[i] == 0 {
                    i += 1;
                }
                if i == s.bins.len() {
                    // The stream never delivered again.
                    return None;
                }
                if i - start > best && i - start >= min_bins.max(1) {
                    best = i - start;
                    best_end = Some(i);
                }
            }
            if let Some(end) = best_end {
                latest = latest.max(bin * end as u32);
            }
        }
        Some(latest - event)
    }

    /// Time (since the start) by which every stream delivered data again
    /// after `event`; `None` if some stream never did.
    pub fn all_resumed_after(&self, event: Duration) -> Option<Duration> {
        let bin = self.bin();
        self.streams
            .iter()
            .map(|s| s.resumed_at(bin, event))
            .try_fold(Duration::ZERO, |acc, r| r.map(|t| acc.max(t)))
    }

    /// A one-line summary of what failed, for error messages.
    pub fn failures(&self) -> String {
        self.streams
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.intact)
            .map(|(i, s)| {
                format!(
                    "stream {i}: sent {} received {} {}",
                    s.sent,
                    s.received,
                    s.error.as_deref().unwrap_or("digest mismatch")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Why the flows could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// A bad spec.
    #[error("flows: {0}")]
    Spec(String),
    /// Entering a namespace failed.
    #[error(transparent)]
    Topo(#[from] crate::topo::TopoError),
    /// Binding or connecting failed.
    #[error("flows: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> FlowError {
    let context = context.into();
    move |source| FlowError::Io { context, source }
}

/// The byte stream of one flow: a 64 KiB pseudo-random block (xorshift64*
/// from the seed) with each chunk's index in its first 8 bytes, so no two
/// chunks of a flow are alike and a lost, repeated or swapped chunk changes
/// the digest.
struct Stream {
    block: Vec<u8>,
    index: u64,
}

impl Stream {
    fn new(seed: u64) -> Stream {
        let mut x = seed | 1;
        let mut block = vec![0u8; CHUNK];
        for c in block.chunks_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
        Stream { block, index: 0 }
    }

    fn next_chunk(&mut self) -> &[u8] {
        self.block[..8].copy_from_slice(&self.index.to_le_bytes());
        self.index += 1;
        &self.block
    }
}

/// Flows under way (see [`start_flows`]); [`RunningFlows::wait`] collects
/// them. Holds no borrow of the lab, so the caller may drive it meanwhile.
pub struct RunningFlows {
    /// The common start: bins count from here.
    pub start: Instant,
    bin: Duration,
    senders: Vec<std::thread::JoinHandle<Sent>>,
    receivers: Vec<std::thread::JoinHandle<Received>>,
}

/// Starts the flows from `src_ns` to listeners on `dst` in `dst_ns` and
/// returns at once.
pub fn start_flows(
    lab: &Lab,
    src_ns: &str,
    dst_ns: &str,
    dst: IpAddr,
    spec: FlowSpec,
) -> Result<RunningFlows, FlowError> {
    if !(1..=MAX_STREAMS).contains(&spec.streams) {
        return Err(FlowError::Spec(format!(
            "{} streams (1..={MAX_STREAMS})",
            spec.streams
        )));
    }
    if spec.bin < MIN_BIN || spec.duration.is_zero() {
        return Err(FlowError::Spec(format!(
            "bin {:?} (at least {MIN_BIN:?}) and duration {:?} (above zero)",
            spec.bin, spec.duration
        )));
    }
    let mut listeners = Vec::new();
    for _ in 0..spec.streams {
        let l = lab
            .run_in(dst_ns, move || TcpListener::bind(SocketAddr::new(dst, 0)))?
            .map_err(io_err(format!("binding on {dst} in {dst_ns}")))?;
        listeners.push(l);
    }
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()
        .map_err(io_err("listener address"))?;
    let start = Instant::now();
    let bins = (spec.duration.as_nanos() / spec.bin.as_nanos()) as usize + 16;
    let mut receivers = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let bin = spec.bin;
        receivers.push(
            std::thread::Builder::new()
                .name(format!("flow-rx-{i}"))
                .spawn(move || receive(l, start, bin, bins))
                .map_err(io_err("spawning a receiver"))?,
        );
    }
    let mut senders = Vec::new();
    for (i, addr) in addrs.into_iter().enumerate() {
        let conn = lab
            .run_in(src_ns, move || {
                TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            })?
            .map_err(io_err(format!("connecting {src_ns} → {addr}")));
        let seed = spec.seed.wrapping_add(i as u64);
        let until = start + spec.duration;
        let conn = match (conn, spec.rate) {
            (Ok(c), Some(rate)) => pace(&c, rate)
                .map(|()| c)
                .map_err(io_err("SO_MAX_PACING_RATE")),
            (c, _) => c,
        };
        senders.push(
            std::thread::Builder::new()
                .name(format!("flow-tx-{i}"))
                .spawn(move || {
                    conn.map_err(|e| e.to_string())
                        .and_then(|c| send(c, seed, until))
                })
                .map_err(io_err("spawning a sender"))?,
        );
    }
    Ok(RunningFlows {
        start,
        bin: spec.bin,
        senders,
        receivers,
    })
}

impl RunningFlows {
    /// Waits for every stream to end and returns the figures.
    pub fn wait(self) -> Flows {
        let mut streams = Vec::new();
        for (tx, rx) in self.senders.into_iter().zip(self.receivers) {
            let sent = tx
                .join()
                .unwrap_or_else(|_| Err("sender thread panicked".into()));
            let got = rx
                .join()
                .unwrap_or_else(|_| Err(("receiver thread panicked".into(), Vec::new())));
            let mut f = StreamFigures {
                sent: 0,
                received: 0,
                intact: false,
                retransmits: None,
                bins: Vec::new(),
                error: None,
            };
            let sent_digest = match sent {
                Ok((n, d, retr)) => {
                    f.sent = n;
                    f.retransmits = retr;
                    Some(d)
                }
                Err(e) => {
                    f.error = Some(format!("sender: {e}"));
                    None
                }
            };
            match got {
                Ok((n, d, bins)) => {
                    f.received = n;
                    f.bins = bins;
                    f.intact = sent_digest.as_ref() == Some(&d) && f.sent == n;
                }
                Err((e, bins)) => {
                    f.bins = bins;
                    f.error.get_or_insert(format!("receiver: {e}"));
                }
            }
            streams.push(f);
        }
        Flows {
            bin_s: self.bin.as_secs_f64(),
            streams,
        }
    }
}

/// [`start_flows`], then `during` (with the common start instant) on this
/// thread, then [`RunningFlows::wait`].
pub fn run_flows<R>(
    lab: &Lab,
    src_ns: &str,
    dst_ns: &str,
    dst: IpAddr,
    spec: FlowSpec,
    during: impl FnOnce(Instant) -> R,
) -> Result<(Flows, R), FlowError> {
    let running = start_flows(lab, src_ns, dst_ns, dst, spec)?;
    let r = during(running.start);
    Ok((running.wait(), r))
}

/// Caps the socket's sending rate at `bits_per_sec` (TCP's own pacing).
fn pace(s: &TcpStream, bits_per_sec: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // The 32-bit option form is accepted by every kernel with TCP pacing
    // (4.13+): up to 4 GB/s per stream.
    let bytes: u32 = u32::try_from(bits_per_sec / 8).unwrap_or(u32::MAX);
    // SAFETY: a live socket descriptor; the pointer and length describe
    // `bytes`, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MAX_PACING_RATE,
            (&bytes as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

type Sent = Result<(u64, Vec<u8>, Option<u32>), String>;

fn send(mut s: TcpStream, seed: u64, until: Instant) -> Sent {
    s.set_write_timeout(Some(STALL_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut stream = Stream::new(seed);
    let mut hash = digest::Context::new(&digest::SHA256);
    let mut sent = 0u64;
    while Instant::now() < until {
        let c = stream.next_chunk();
        hash.update(c);
        s.write_all(c)
            .map_err(|e| format!("after {sent} bytes: {e}"))?;
        sent += c.len() as u64;
    }
    let retr = tcp_info(&s).map(|i| i.total_retrans);
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    // Wait for the receiver's EOF so the last retransmissions are counted.
    let mut b = [0u8; 1];
    let _ = s.set_read_timeout(Some(STALL_TIMEOUT));
    let _ = s.read(&mut b);
    let retr = tcp_info(&s).map(|i| i.total_retrans).or(retr);
    Ok((sent, hash.finish().as_ref().to_vec(), retr))
}

type Received = Result<(u64, Vec<u8>, Vec<u64>), (String, Vec<u64>)>;

fn receive(l: TcpListener, start: Instant, bin: Duration, bins: usize) -> Received {
    let mut local = vec![0u64; bins];
    let fail = |e: String| Err((e, Vec::new()));
    if let Err(e) = l.set_nonblocking(true) {
        return fail(e.to_string());
    }
    let deadline = Instant::now() + STALL_TIMEOUT;
    let mut s = loop {
        match l.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return fail(format!("no connection within {STALL_TIMEOUT:?}"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return fail(format!("accept: {e}")),
        }
    };
    if let Err(e) = s
        .set_nonblocking(false)
        .and_then(|()| s.set_read_timeout(Some(STALL_TIMEOUT)))
    {
        return fail(e.to_string());
    }
    let mut hash = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut received = 0u64;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                return Err((format!("after {received} bytes: {e}"), local));
            }
        };
        let i = (start.elapsed().as_nanos() / bin.as_nanos()) as usize;
        if i >= local.len() {
            local.resize(i + 1, 0);
        }
        local[i] += n as u64;
        hash.update(&buf[..n]);
        received += n as u64;
    }
    let _ = s.shutdown(Shutdown::Write);
    Ok((received, hash.finish().as_ref().to_vec(), local))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(bins: &[u64]) -> StreamFigures {
        StreamFigures {
            sent: 1,
            received: 1,
            intact: true,
            retransmits: Some(0),
            bins: bins.to_vec(),
            error: None,
        }
    }

    #[test]
    fn gaps_count_only_between_first_and_last_delivery() {
        let bin = Duration::from_millis(10);
        assert_eq!(
            figures(&[0, 0, 5, 0, 0, 0, 7, 0, 3, 0, 0]).longest_gap(bin),
            bin * 3
        );
        assert_eq!(figures(&[0, 0, 0]).longest_gap(bin), Duration::ZERO);
        assert_eq!(figures(&[1, 1]).longest_gap(bin), Duration::ZERO);
        let f = figures(&[4, 0, 0, 0, 9, 9]);
        assert_eq!(f.resumed_at(bin, bin), Some(bin * 4));
        assert_eq!(f.resumed_at(bin, bin * 6), None);
        let flows = Flows {
            bin_s: 0.01,
            streams: vec![f, figures(&[1, 0, 2, 0, 0, 0, 0, 0, 1])],
        };
        assert_eq!(flows.longest_gap(), bin * 5);
        assert_eq!(flows.all_resumed_after(bin), Some(bin * 4));
        // Stream 0 stalls at bins 1..=3 (ends at 4), stream 1 at 3..=7 (ends at 8).
        assert_eq!(flows.recovered_after(bin, bin * 6, bin), Some(bin * 7));
        assert_eq!(flows.recovered_after(bin * 5, bin * 6, bin), Some(bin * 3));
        // Only stream 1's 5-bin stall is long enough.
        assert_eq!(flows.recovered_after(bin, bin * 6, bin * 4), Some(bin * 7));
        assert_eq!(
            flows.recovered_after(bin, bin * 2, bin * 4),
            Some(Duration::ZERO)
        );
        assert!(flows.intact());
        let stuck = Flows {
            bin_s: 0.01,
            streams: vec![figures(&[1, 0, 0])],
        };
        assert_eq!(stuck.recovered_after(Duration::ZERO, bin * 3, bin), None);
    }

    #[test]
    fn chunks_differ_and_depend_on_the_seed() {
        let mut a = Stream::new(1);
        let c0 = a.next_chunk().to_vec();
        let c1 = a.next_chunk().to_vec();
        assert_ne!(c0, c1);
        assert_ne!(c0, Stream::new(2).next_chunk().to_vec());
        assert_eq!(c0, Stream::new(1).next_chunk().to_vec());
    }
}
