//! How frames cross the WAN. One batch-shaped interface, [`Transport`], so the
//! data path does not care which carrier runs:
//! - [`udp`]: frames as UDP datagrams with GSO/GRO (the default);
//! - [`tcp`]: length-prefixed frames over one TCP connection per peer, for
//!   paths that block UDP ([`framing`] is its codec);
//! - [`quic`]: frames as QUIC unreliable datagrams (RFC 9221) with each
//!   site's certificate pinned by SPKI hash;
//! - [`multi`]: the dispatcher that routes each send to the transport serving
//!   that peer and merges receive readiness into one pollable descriptor.
//!
//! Every transport carries the same AEAD frames (handshake, data,
//! keepalive); QUIC and TCP only carry them, so the protocol core is unchanged.
//! TCP and QUIC run their connections on background threads that queue
//! received frames in an [`inbox::Inbox`] whose eventfd wakes the poll loop.

pub mod admission;
pub mod framing;
pub(crate) mod inbox;
pub mod multi;
pub mod pmtu;
pub mod quic;
pub mod tcp;
pub mod udp;

pub use multi::MultiTransport;
pub use quic::QuicTransport;
pub use tcp::TcpTransport;
pub use udp::UdpTransport;

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most datagrams one receive call returns (quinn-udp's recvmmsg batch).
pub const MAX_RECV_BATCH: usize = quinn_udp::BATCH_SIZE;

/// One receive call's view of a datagram (or a GRO train of them).
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// Sender.
    pub from: SocketAddr,
    /// Bytes in the buffer.
    pub len: usize,
    /// Size of each datagram in the buffer (all but the last are this long).
    pub stride: usize,
    /// ECN codepoint of the outer IP header (`wire::ecn`; 0 = not ECT, and
    /// always 0 from transports that do not report it).
    pub ecn: u8,
}

impl Default for Received {
    fn default() -> Self {
        Received {
            from: SocketAddr::from(([0, 0, 0, 0], 0)),
            len: 0,
            stride: 1,
            ecn: 0,
        }
    }
}

/// A carrier of tunnel frames between gateways, batch-shaped at both ends.
pub trait Transport: AsRawFd + Send + Sync {
    /// Sends `contents`, which holds datagrams of `segment_size` bytes back to
    /// back (the last may be shorter), all to `to`, in as few calls as the
    /// platform allows.
    fn send(&self, to: SocketAddr, contents: &[u8], segment_size: usize) -> io::Result<()>;
    /// Receives up to `bufs.len()` buffers; `WouldBlock` when none is queued.
    fn recv(&self, bufs: &mut [IoSliceMut<'_>], out: &mut [Received]) -> io::Result<usize>;
    /// The local address frames are received on.
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// Datagrams one send may carry (1 without GSO).
    fn max_segments(&self) -> usize;
    /// Datagrams one received buffer may hold (1 without GRO).
    fn gro_segments(&self) -> usize;
    /// `Some(n)` when frames to some peers are limited in size (QUIC
    /// datagrams follow the path MTU): frames of up to `n` bytes always fit,
    /// larger ones only up to [`Transport::max_frame`]. `None` (UDP, TCP):
    /// no limit below the TUN MTU.
    fn frame_floor(&self) -> Option<usize> {
        None
    }
    /// The largest frame that can be sent to `to` now, if limited.
    fn max_frame(&self, _to: SocketAddr) -> Option<usize> {
        None
    }
    /// Re-reads what limits frames to `endpoints` (UDP: the kernel's path
    /// MTU to each, see [`pmtu`]); called about once a second.
    fn refresh_paths(&self, _endpoints: &[SocketAddr]) {}
    /// Counters of the stream/connection transports, and UDP's per-flow
    /// send counts.
    fn counters(&self) -> TransportCounters {
        TransportCounters::default()
    }
    /// True when the transport wants [`Transport::authenticated`] calls
    /// (TCP: accepted connections stay pending until then).
    fn tracks_authentication(&self) -> bool {
        false
    }
    /// The protocol core accepted a frame from `from` (it is now a peer's
    /// endpoint). Only called when [`Transport::tracks_authentication`].
    fn authenticated(&self, from: SocketAddr) {
        let _ = from;
    }
    /// Outer flows frames to a peer can be spread over (`dataplane.flows`
    /// UDP sockets); 1 for transports without flows (TCP, QUIC).
    fn flows(&self) -> usize {
        1
    }
    /// [`Transport::send`] on outer flow `flow` (`0..flows()`; larger
    /// values wrap) with ECN codepoint `ecn` in the outer IP header
    /// (`wire::ecn`). Transports without flows, or whose outer header is not
    /// ours to set (TCP, QUIC), ignore both.
    fn send_flow(
        &self,
        flow: usize,
        to: SocketAddr,
        contents: &[u8],
        segment_size: usize,
        ecn: u8,
    ) -> io::Result<()> {
        let _ = (flow, ecn);
        self.send(to, contents, segment_size)
    }
}

/// What the transports count (`tunneld status` → `transport`): TCP and
/// QUIC connection events, UDP datagrams per flow.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TransportCounters {
    /// TCP connections accepted from the network.
    pub tcp_accepted: u64,
    /// TCP connections we dialed successfully.
    pub tcp_dialed: u64,
    /// Accepted TCP connections closed at once: their source opened
    /// connections faster than `admission::ACCEPTS_PER_SEC`.
    pub tcp_refused: u64,
    /// Accepted TCP connections that authenticated (the protocol core
    /// accepted a frame from them).
    pub tcp_authenticated: u64,
    /// Pending (unauthenticated) TCP connections closed to make room for a
    /// newer one (budget or per-source limit).
    pub tcp_evicted: u64,
    /// Pending TCP connections closed at `admission::AUTH_DEADLINE`.
    pub tcp_auth_timeout: u64,
    /// Pending TCP connections open at the snapshot (a gauge).
    pub tcp_pending: u64,
    /// TCP connections closed for a zero or oversized length prefix.
    pub tcp_bad_length: u64,
    /// TCP connections that ended inside a frame (truncated frame).
    pub tcp_truncated: u64,
    /// QUIC connections established (dialed or accepted).
    pub quic_connections: u64,
    /// QUIC handshakes that failed (wrong certificate, timeout, refused).
    pub quic_handshake_failures: u64,
    /// QUIC datagrams the peer sent that we could not take (too big).
    pub quic_send_too_big: u64,
    /// Received frames dropped because the receive queue was full.
    pub rx_queue_full: u64,
    /// Sends dropped because a connection's send queue was full.
    pub tx_queue_full: u64,
    /// Sends for a peer address without a live connection.
    pub tx_no_connection: u64,
    /// UDP datagrams sent per flow (index = flow; empty with one flow).
    pub udp_flow_datagrams: Vec<u64>,
    /// Datagrams the kernel dropped at our UDP sockets (their receive
    /// buffer was full: raise `socket_buffer`, or the gateway is short of
    /// CPU), summed over flows (SO_MEMINFO).
    pub udp_rcvbuf_drops: u64,
    /// Bytes waiting in our UDP sockets' receive buffers at the snapshot
    /// (kernel accounting, headers included).
    pub udp_rx_queued_bytes: u64,
}

/// Atomic form of [`TransportCounters`], shared with background threads.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub tcp_accepted: AtomicU64,
    pub tcp_dialed: AtomicU64,
    pub tcp_refused: AtomicU64,
    pub tcp_authenticated: AtomicU64,
    pub tcp_evicted: AtomicU64,
    pub tcp_auth_timeout: AtomicU64,
    pub tcp_bad_length: AtomicU64,
    pub tcp_truncated: AtomicU64,
    pub quic_connections: AtomicU64,
    pub quic_handshake_failures: AtomicU64,
    pub quic_send_too_big: AtomicU64,
    pub rx_queue_full: AtomicU64,
    pub tx_queue_full: AtomicU64,
    pub tx_no_connection: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    pub(crate) fn snapshot(&self) -> TransportCounters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportCounters {
            tcp_accepted: g(&self.tcp_accepted),
            tcp_dialed: g(&self.tcp_dialed),
            tcp_refused: g(&self.tcp_refused),
            tcp_authenticated: g(&self.tcp_authenticated),
            tcp_evicted: g(&self.tcp_evicted),
            tcp_auth_timeout: g(&self.tcp_auth_timeout),
            tcp_bad_length: g(&self.tcp_bad_length),
            tcp_truncated: g(&self.tcp_truncated),
            quic_connections: g(&self.quic_connections),
            quic_handshake_failures: g(&self.quic_handshake_failures),
            quic_send_too_big: g(&self.quic_send_too_big),
            rx_queue_full: g(&self.rx_queue_full),
            tx_queue_full: g(&self.tx_queue_full),
            tx_no_connection: g(&self.tx_no_connection),
            ..TransportCounters::default()
        }
    }
}

/// A v4-mapped IPv6 address as plain IPv4; anything else unchanged.
pub(crate) fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}
