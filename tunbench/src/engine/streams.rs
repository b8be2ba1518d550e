//! The data path: one blocking OS thread per stream (or per UDP receive socket).
//! Each thread owns a buffer allocated once, counts bytes into its lock-free
//! [`Buckets`], and reports its final statistics as an [`Event`] when it ends.
//!
//! Threads stop on their own (TCP EOF, send error) or when the session raises a flag:
//! `stop_send` (the receiver's window closed), `stop_recv` (UDP drain done) or
//! `abort`. Socket timeouts (500 ms TCP, 100 ms UDP) bound how long a flag goes unseen.

use crate::engine::proto::{Msg, ProtoError, ReceiverStreamReport, Role, SenderStreamReport};
use crate::engine::stats::{Buckets, TestClock, UdpHeader, UdpRecv};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a blocked TCP read or write waits before re-checking the flags.
const TCP_POLL: Duration = Duration::from_millis(500);
/// How long a UDP receive waits before re-checking the flags.
const UDP_POLL: Duration = Duration::from_millis(100);
/// Receive buffer for TCP: 256 KiB reads keep syscalls rare at tens of Gbit/s.
const TCP_READ_BUF: usize = 256 * 1024;
/// Datagrams sent back to back at most before re-reading the clock.
const UDP_BURST: u64 = 64;

/// Something that happened, sent to the session's single event queue.
#[derive(Debug)]
pub enum Event {
    /// A control message (or the reason reading one failed).
    Ctrl(Result<Msg, ProtoError>),
    /// A new data connection for the current test (server side).
    Data {
        /// Stream index.
        stream: u16,
        /// Direction of this connection.
        role: Role,
        /// The socket.
        sock: TcpStream,
    },
    /// A sender thread finished.
    SenderDone(SenderStreamReport),
    /// A receiver finished (one event per stream).
    ReceiverDone(ReceiverStreamReport),
}

/// Flags shared by the session and its stream threads.
#[derive(Debug, Default)]
pub struct Flags {
    /// Senders stop.
    pub stop_send: AtomicBool,
    /// UDP receivers stop (after the drain).
    pub stop_recv: AtomicBool,
    /// Everything stops now.
    pub abort: AtomicBool,
}

impl Flags {
    fn sending(&self) -> bool {
        !self.stop_send.load(Ordering::Relaxed) && !self.abort.load(Ordering::Relaxed)
    }
}

fn retry(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Writes `len`-byte chunks until told to stop; then half-closes.
pub fn tcp_sender(
    id: u16,
    mut sock: TcpStream,
    len: usize,
    clock: TestClock,
    flags: Arc<Flags>,
    tx: Sender<Event>,
) {
    let buf = vec![0x5au8; len];
    let buckets = Buckets::new(clock.n_buckets());
    let mut bytes = 0u64;
    let mut error = None;
    let _ = sock.set_write_timeout(Some(TCP_POLL));
    while flags.sending() {
        match sock.write(&buf) {
            Ok(n) => {
                bytes += n as u64;
                buckets.add(clock.bucket_now(), n as u64);
            }
            Err(e) if retry(e.kind()) => continue,
            Err(e) => {
                error = Some(format!("stream {id}: send: {e}"));
                break;
            }
        }
    }
    let _ = sock.shutdown(std::net::Shutdown::Write);
    let report = SenderStreamReport {
        id,
        bytes,
        buckets: buckets.snapshot(),
        error,
        ..Default::default()
    };
    let _ = tx.send(Event::SenderDone(report));
}

/// Reads until EOF (or abort), counting bytes per bucket.
pub fn tcp_receiver(
    id: u16,
    mut sock: TcpStream,
    clock: TestClock,
    flags: Arc<Flags>,
    tx: Sender<Event>,
) {
    let mut buf = vec![0u8; TCP_READ_BUF];
    let buckets = Buckets::new(clock.n_buckets());
    let mut bytes = 0u64;
    let mut error = None;
    let _ = sock.set_read_timeout(Some(TCP_POLL));
    loop {
        match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                bytes += n as u64;
                buckets.add(clock.bucket_now(), n as u64);
            }
            Err(e) if retry(e.kind()) => {
                if flags.abort.load(Ordering::Relaxed) {
                    error = Some(format!("stream {id}: aborted"));
                    break;
                }
            }
            Err(e) => {
                error = Some(format!("stream {id}: receive: {e}"));
                break;
            }
        }
    }
    let report = ReceiverStreamReport {
        id,
        bytes,
        buckets: buckets.snapshot(),
        error,
        ..Default::default()
    };
    let _ = tx.send(Event::ReceiverDone(report));
}

/// Where a UDP sender sends: its own connected socket, or a shared one to an address.
#[derive(Debug, Clone)]
pub struct UdpTx {
    /// The socket.
    pub sock: Arc<UdpSocket>,
    /// Destination when the socket is shared and unconnected.
    pub dest: Option<SocketAddr>,
}

impl UdpTx {
    fn send(&self, buf: &[u8]) -> std::io::Result<usize> {
        match self.dest {
            Some(d) => self.sock.send_to(buf, d),
            None => self.sock.send(buf),
        }
    }
}

/// Parameters of a paced UDP sender.
#[derive(Debug, Clone, Copy)]
pub struct UdpPace {
    /// Datagram payload length.
    pub len: usize,
    /// Target payload rate, bit/s.
    pub rate: u64,
    /// Test id for the header.
    pub test_id: u32,
}

/// Sends datagrams at `pace.rate` until told to stop. Pacing is by schedule: datagram
/// k is due at k x (len x 8 / rate); a late sender catches up in bursts.
pub fn udp_sender(
    id: u16,
    tx_sock: UdpTx,
    pace: UdpPace,
    clock: TestClock,
    flags: Arc<Flags>,
    tx: Sender<Event>,
) {
    let mut buf = vec![0x5au8; pace.len];
    let buckets = Buckets::new(clock.n_buckets());
    let gap_ns = pace.len as f64 * 8.0 * 1e9 / pace.rate.max(1) as f64;
    let (mut seq, mut bytes, mut refused) = (0u64, 0u64, 0u32);
    let mut error = None;
    let start = Instant::now();
    'outer: while flags.sending() {
        let el = start.elapsed().as_nanos() as f64;
        let due = (el / gap_ns) as u64 + 1;
        if seq >= due {
            let wait = seq as f64 * gap_ns - el;
            if wait > 200_000.0 {
                std::thread::sleep(Duration::from_nanos((wait - 100_000.0) as u64));
            } else if wait > 20_000.0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        for _ in 0..(due - seq).min(UDP_BURST) {
            let now = Instant::now();
            let ns = clock.elapsed_ns(now);
            let h = UdpHeader {
                seq,
                send_ns: ns,
                test_id: pace.test_id,
                stream: id,
                flags: 0,
            };
            h.encode(&mut buf);
            match tx_sock.send(&buf) {
                Ok(n) => {
                    seq += 1;
                    bytes += n as u64;
                    buckets.add(clock.bucket_at(ns), n as u64);
                }
                // Socket buffer full (ENOBUFS / EAGAIN): the schedule catches up later.
                Err(e) if retry(e.kind()) || e.raw_os_error() == Some(libc::ENOBUFS) => {
                    std::thread::yield_now();
                    break;
                }
                // ICMP port unreachable from an earlier datagram: tolerate a few.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused && refused < 100 => {
                    refused += 1;
                    break;
                }
                Err(e) => {
                    error = Some(format!("stream {id}: send: {e}"));
                    break 'outer;
                }
            }
        }
    }
    let report = SenderStreamReport {
        id,
        bytes,
        packets: seq,
        buckets: buckets.snapshot(),
        error,
        ..Default::default()
    };
    let _ = tx.send(Event::SenderDone(report));
}

/// Receives the datagrams of `n_streams` streams on one socket until `stop_recv`.
/// Datagrams of other tests, hellos, probes and runts, and with `from` set
/// any datagram from another address, are counted and ignored.
pub fn udp_receiver(
    sock: Arc<UdpSocket>,
    from: Option<std::net::IpAddr>,
    n_streams: usize,
    test_id: u32,
    clock: TestClock,
    flags: Arc<Flags>,
    tx: Sender<Event>,
) {
    let mut buf = vec![0u8; 65536];
    let buckets: Vec<Buckets> = (0..n_streams)
        .map(|_| Buckets::new(clock.n_buckets()))
        .collect();
    let mut stats: Vec<UdpRecv> = (0..n_streams)
        .map(|_| UdpRecv::new(clock.n_buckets()))
        .collect();
    let mut bytes = vec![0u64; n_streams];
    let mut packets = vec![0u64; n_streams];
    let mut error = None;
    let mut foreign = 0u64;
    let _ = sock.set_read_timeout(Some(UDP_POLL));
    while !flags.stop_recv.load(Ordering::Relaxed) && !flags.abort.load(Ordering::Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((n, src)) => {
                if from.is_some_and(|ip| crate::engine::server::unmap_ip(src.ip()) != ip) {
                    foreign += 1;
                    continue;
                }
                let ns = clock.elapsed_ns(Instant::now());
                let h = match UdpHeader::decode(&buf[..n]) {
                    Some(h)
                        if h.test_id == test_id
                            && h.flags == 0
                            && (h.stream as usize) < n_streams =>
                    {
                        h
                    }
                    _ => {
                        foreign += 1;
                        continue;
                    }
                };
                let s = h.stream as usize;
                let b = clock.bucket_at(ns);
                stats[s].on_packet(b, h.seq, h.send_ns, ns);
                buckets[s].add(b, n as u64);
                bytes[s] += n as u64;
                packets[s] += 1;
            }
            Err(e) if retry(e.kind()) || e.kind() == ErrorKind::ConnectionRefused => continue,
            Err(e) => {
                error = Some(format!("UDP receive: {e}"));
                break;
            }
        }
    }
    if foreign > 0 {
        log::info!("ignored {foreign} datagrams that did not belong to test {test_id:08x}");
    }
    for s in 0..n_streams {
        let report = ReceiverStreamReport {
            id: s as u16,
            bytes: bytes[s],
            buckets: buckets[s].snapshot(),
            udp: Some(stats[s].finish()),
            packets: packets[s],
            error: error.clone(),
        };
        let _ = tx.send(Event::ReceiverDone(report));
    }
}
