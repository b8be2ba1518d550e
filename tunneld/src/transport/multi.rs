//! The dispatcher the daemon uses when some peer is not on plain UDP: it
//! holds one transport per kind in use, routes each send to the transport
//! serving that peer address (TCP and QUIC know their connections and dial
//! targets; everything else goes to UDP), and merges receive readiness into
//! one epoll descriptor, so the data path still polls a single fd.

use super::{Received, TcpTransport, Transport, TransportCounters, UdpTransport};
use crate::transport::QuicTransport;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Several transports behind one [`Transport`].
pub struct MultiTransport {
    udp: Option<UdpTransport>,
    tcp: Option<TcpTransport>,
    quic: Option<QuicTransport>,
    epoll: OwnedFd,
    /// Which transport receives first next time (round robin, for fairness).
    turn: AtomicUsize,
}

impl std::fmt::Debug for MultiTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiTransport")
            .field("udp", &self.udp.is_some())
            .field("tcp", &self.tcp.is_some())
            .field("quic", &self.quic.is_some())
            .finish()
    }
}

impl MultiTransport {
    /// Combines the given transports (at least one).
    pub fn new(
        udp: Option<UdpTransport>,
        tcp: Option<TcpTransport>,
        quic: Option<QuicTransport>,
    ) -> io::Result<MultiTransport> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let fds: Vec<RawFd> = [
            udp.as_ref().map(|t| t.as_raw_fd()),
            tcp.as_ref().map(|t| t.as_raw_fd()),
            quic.as_ref().map(|t| t.as_raw_fd()),
        ]
        .into_iter()
        .flatten()
        .collect();
        if fds.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no transport to combine",
            ));
        }
        for f in fds {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: f as u64,
            };
            // SAFETY: valid epoll and target fds, pointer to a live event.
            if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, f, &mut ev) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(MultiTransport {
            udp,
            tcp,
            quic,
            epoll,
            turn: AtomicUsize::new(0),
        })
    }

    fn recv_from(
        &self,
        which: usize,
        bufs: &mut [IoSliceMut<'_>],
        out: &mut [Received],
    ) -> Option<io::Result<usize>> {
        match which {
            0 => self.udp.as_ref().map(|t| t.recv(bufs, out)),
            1 => self.tcp.as_ref().map(|t| t.recv(bufs, out)),
            _ => self.quic.as_ref().map(|t| t.recv(bufs, out)),
        }
    }
}

impl Transport for MultiTransport {
    fn send(&self, to: SocketAddr, contents: &[u8], segment_size: usize) -> io::Result<()> {
        self.send_flow(0, to, contents, segment_size, 0)
    }

    fn send_flow(
        &self,
        flow: usize,
        to: SocketAddr,
        contents: &[u8],
        segment_size: usize,
        ecn: u8,
    ) -> io::Result<()> {
        if let Some(r) = self
            .tcp
            .as_ref()
            .and_then(|t| t.try_send(to, contents, segment_size))
        {
            return r;
        }
        if let Some(r) = self
            .quic
            .as_ref()
            .and_then(|t| t.try_send(to, contents, segment_size))
        {
            return r;
        }
        match &self.udp {
            Some(u) => u.send_flow(flow, to, contents, segment_size, ecn),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("no connection to {to}"),
            )),
        }
    }

    fn recv(&self, bufs: &mut [IoSliceMut<'_>], out: &mut [Received]) -> io::Result<usize> {
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for k in 0..3 {
            match self.recv_from((start + k) % 3, bufs, out) {
                None => {}
                Some(Ok(n)) if n > 0 => return Ok(n),
                Some(Ok(_)) => {}
                Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Some(Err(e)) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::ErrorKind::WouldBlock.into()))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        match (&self.udp, &self.tcp, &self.quic) {
            (Some(u), _, _) => u.local_addr(),
            (_, Some(t), _) => t.local_addr(),
            (_, _, Some(q)) => q.local_addr(),
            _ => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn max_segments(&self) -> usize {
        self.udp.as_ref().map_or(64, |u| u.max_segments())
    }

    fn gro_segments(&self) -> usize {
        self.udp.as_ref().map_or(1, |u| u.gro_segments())
    }

    fn flows(&self) -> usize {
        self.udp.as_ref().map_or(1, |u| u.flows())
    }

    fn frame_floor(&self) -> Option<usize> {
        let q = self.quic.as_ref().and_then(|q| q.frame_floor());
        let u = self.udp.as_ref().and_then(|u| u.frame_floor());
        match (q, u) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn max_frame(&self, to: SocketAddr) -> Option<usize> {
        self.quic
            .as_ref()
            .and_then(|q| q.max_frame(to))
            .or_else(|| self.udp.as_ref().and_then(|u| u.max_frame(to)))
    }

    fn refresh_paths(&self, endpoints: &[SocketAddr]) {
        if let Some(u) = &self.udp {
            u.refresh_paths(endpoints);
        }
    }

    fn tracks_authentication(&self) -> bool {
        self.tcp.is_some()
    }

    fn authenticated(&self, from: SocketAddr) {
        if let Some(t) = &self.tcp {
            t.mark_authenticated(from);
        }
    }

    fn counters(&self) -> TransportCounters {
        let mut c = self.tcp.as_ref().map(|t| t.counters()).unwrap_or_default();
        if let Some(q) = &self.quic {
            let qc = q.counters();
            c.quic_connections = qc.quic_connections;
            c.quic_handshake_failures = qc.quic_handshake_failures;
            c.quic_send_too_big = qc.quic_send_too_big;
            c.rx_queue_full += qc.rx_queue_full;
            c.tx_queue_full += qc.tx_queue_full;
            c.tx_no_connection += qc.tx_no_connection;
        }
        if let Some(u) = &self.udp {
            let uc = u.counters();
            c.udp_flow_datagrams = uc.udp_flow_datagrams;
            c.udp_rcvbuf_drops = uc.udp_rcvbuf_drops;
            c.udp_rx_queued_bytes = uc.udp_rx_queued_bytes;
        }
        c
    }
}

impl AsRawFd for MultiTransport {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn readable(fd: RawFd, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call.
        unsafe { libc::poll(&mut p, 1, ms) == 1 }
    }

    /// Receives until `want` frames arrived; returns (from, bytes).
    fn recv_n(t: &dyn Transport, want: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut storage = vec![[0u8; 2048]; 4];
        while got.len() < want {
            assert!(Instant::now() < deadline, "got only {got:?}");
            if !readable(t.as_raw_fd(), 100) {
                continue;
            }
            let mut bufs: Vec<IoSliceMut> =
                storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let mut out = [Received::default(); 4];
            if let Ok(n) = t.recv(&mut bufs, &mut out) {
                for (i, r) in out[..n].iter().enumerate() {
                    got.push((r.from, storage[i][..r.len].to_vec()));
                }
            }
        }
        got
    }

    #[test]
    fn sends_go_to_the_serving_transport_and_receives_merge() {
        let any = |s: &str| -> SocketAddr { s.parse().expect("addr") };
        // The far side: a plain UDP socket and a TCP transport.
        let far_udp = UdpTransport::bind(any("127.0.0.1:0"), 1 << 20, false, 1).expect("udp");
        let far_tcp = TcpTransport::start(any("127.0.0.1:0"), vec![], 1 << 20).expect("tcp");
        let far_tcp_addr = far_tcp.local_addr().expect("addr");
        let near = MultiTransport::new(
            Some(UdpTransport::bind(any("127.0.0.1:0"), 1 << 20, false, 1).expect("udp")),
            Some(
                TcpTransport::start(any("127.0.0.1:0"), vec![far_tcp_addr], 1 << 20).expect("tcp"),
            ),
            None,
        )
        .expect("multi");
        let near_udp = near.local_addr().expect("udp addr");
        assert!(!readable(near.as_raw_fd(), 0), "nothing queued yet");
        // To the TCP dial target: over TCP (after the dial completes).
        let deadline = Instant::now() + Duration::from_secs(5);
        while far_tcp.counters().tcp_accepted == 0 {
            assert!(Instant::now() < deadline, "never dialed");
            std::thread::sleep(Duration::from_millis(10));
        }
        near.send(far_tcp_addr, b"via tcp", 7).expect("send");
        let (tcp_from, d) = recv_n(&far_tcp, 1).remove(0);
        assert_eq!(d, b"via tcp");
        // Anything else: over UDP.
        let far_udp_addr = far_udp.local_addr().expect("addr");
        near.send(far_udp_addr, b"via udp", 7).expect("send");
        let (from, d) = recv_n(&far_udp, 1).remove(0);
        assert_eq!((from, d.as_slice()), (near_udp, &b"via udp"[..]));
        // Both reach the one descriptor the data path polls.
        far_udp.send(near_udp, b"u", 1).expect("udp back");
        far_tcp.send(tcp_from, b"t", 1).expect("tcp back");
        let mut got: Vec<Vec<u8>> = recv_n(&near, 2).into_iter().map(|g| g.1).collect();
        got.sort();
        assert_eq!(got, vec![b"t".to_vec(), b"u".to_vec()]);
    }
}
