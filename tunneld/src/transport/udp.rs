//! Frames as UDP datagrams (the default transport).
//!
//! UDP batching comes from quinn-udp, quinn's own I/O layer: `sendmsg` with
//! UDP_SEGMENT (GSO) sends many equal-sized datagrams in one call, and
//! `recvmmsg` with UDP_GRO receives many datagrams, coalesced per flow, in one
//! call. Both are probed when the socket is made, with a logged fallback to
//! one datagram per call; what is active shows in `tunneld status`.
//!
//! With `dataplane.flows` above 1 the transport holds several sockets
//! ("flows"): flow 0 on `listen`, the others on ephemeral ports of the same
//! address. The data path picks a flow per inner 5-tuple
//! ([`crate::wire::flow_index`]), so the outer 5-tuples differ between
//! inner flows (RSS on the receiving NIC, ECMP in the WAN can spread them)
//! while each inner flow stays on one socket and in order. Frames are sent
//! to the peer's one endpoint (its flow 0); replies and frames from peers
//! that learned another of our ports arrive on any flow, so all are
//! received from, fairly.
//!
//! Some drivers (no UDP checksum offload) and kernels refuse GSO only at
//! send time (EIO, EINVAL): the transport then logs it once, resends that
//! train one datagram per call and sends every later one that way.
//!
//! A dual-stack socket (`[::]:port`) reaches IPv4 peers through v4-mapped
//! addresses; this module maps and unmaps them so that the rest of the daemon
//! only ever sees plain IPv4 or IPv6 endpoints.

use super::{unmap, Received, Transport, TransportCounters, MAX_RECV_BATCH};
use quinn_udp::{EcnCodepoint, RecvMeta, Transmit, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Most flows (sockets) one transport holds: the config's limit
/// (`dataplane.flows`), and the width of the ready mask.
pub const MAX_FLOWS: usize = 16;

/// One outer flow: a socket and what quinn-udp probed for it.
#[derive(Debug)]
struct Flow {
    sock: UdpSocket,
    state: UdpSocketState,
    /// Datagrams sent on this flow.
    sent: AtomicU64,
}

/// Frames as UDP datagrams on one or more non-blocking sockets ("flows").
///
/// Flow 0 is bound to `listen`; flows 1.. to the same address with an
/// ephemeral port, so each has its own outer 5-tuple for RSS and ECMP. All
/// of them are received from: with more than one flow, an epoll descriptor
/// merges their readiness so the data path still polls one fd.
#[derive(Debug)]
pub struct UdpTransport {
    flows: Vec<Flow>,
    /// Readiness of all flows (only with more than one).
    epoll: Option<OwnedFd>,
    /// Where the next receive starts (round robin, so no flow starves).
    turn: AtomicUsize,
    v6: bool,
    max_segments: usize,
    gro_segments: usize,
    /// Sends may carry several datagrams (UDP_SEGMENT); cleared when the
    /// kernel refuses segmentation at send time.
    gso_ok: AtomicBool,
    /// Path MTU per peer endpoint, as the kernel learned it.
    paths: super::pmtu::PathMtus,
}

impl UdpTransport {
    /// Binds `listen` with `buffer` bytes of send and receive socket buffer
    /// (forced past `net.core.{r,w}mem_max` when permitted). With `offload`,
    /// GSO and GRO are used where the kernel has them; `batch` caps GSO
    /// segments per send. One flow; see [`UdpTransport::bind_flows`].
    pub fn bind(
        listen: SocketAddr,
        buffer: usize,
        offload: bool,
        batch: usize,
    ) -> io::Result<UdpTransport> {
        UdpTransport::bind_flows(listen, buffer, offload, batch, 1)
    }

    /// Like [`UdpTransport::bind`] with `flows` sockets (1..=[`MAX_FLOWS`]):
    /// flow 0 on `listen`, the others on ephemeral ports of `listen`'s
    /// address, all with the same options.
    pub fn bind_flows(
        listen: SocketAddr,
        buffer: usize,
        offload: bool,
        batch: usize,
        flows: usize,
    ) -> io::Result<UdpTransport> {
        UdpTransport::bind_shared(listen, buffer, offload, batch, flows, None)
    }

    /// One transport per data-path worker, `workers` in all: the first as
    /// [`UdpTransport::bind_flows`], each of the others on the very same
    /// addresses (flow 0 on `listen`, flow i on the first one's flow i),
    /// every socket with SO_REUSEPORT. The kernel then hashes each outer
    /// 4-tuple to one socket of a port's group, so one peer flow is always
    /// received by one worker (its frames stay in order) and a peer's
    /// several flows (`dataplane.flows`) spread over the workers. Every
    /// worker sends from the same ports, so peers see no difference.
    pub fn bind_workers(
        listen: SocketAddr,
        buffer: usize,
        offload: bool,
        batch: usize,
        flows: usize,
        workers: usize,
    ) -> io::Result<Vec<UdpTransport>> {
        if workers <= 1 {
            return Ok(vec![UdpTransport::bind_flows(
                listen, buffer, offload, batch, flows,
            )?]);
        }
        let first = UdpTransport::bind_shared(listen, buffer, offload, batch, flows, Some(&[]))?;
        let addrs = first.flow_addrs()?;
        let mut all = vec![first];
        for _ in 1..workers {
            all.push(UdpTransport::bind_shared(
                listen,
                buffer,
                offload,
                batch,
                flows,
                Some(&addrs),
            )?);
        }
        Ok(all)
    }

    /// [`UdpTransport::bind_flows`]; with `reuse`, every socket has
    /// SO_REUSEPORT and flow i binds `reuse[i]` where given.
    fn bind_shared(
        listen: SocketAddr,
        buffer: usize,
        offload: bool,
        batch: usize,
        flows: usize,
        reuse: Option<&[SocketAddr]>,
    ) -> io::Result<UdpTransport> {
        if !(1..=MAX_FLOWS).contains(&flows) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{flows} UDP flows: 1..={MAX_FLOWS} are supported"),
            ));
        }
        let mut socks = Vec::with_capacity(flows);
        for i in 0..flows {
            let addr = match reuse.and_then(|r| r.get(i)) {
                Some(a) => *a,
                None if i == 0 => listen,
                None => SocketAddr::new(listen.ip(), 0),
            };
            let sock = bind_one(addr, buffer, reuse.is_some())?;
            let state = UdpSocketState::new((&sock).into())?;
            if !offload {
                disable_gro(&sock);
            }
            socks.push(Flow {
                sock,
                state,
                sent: AtomicU64::new(0),
            });
        }
        // Every socket is on the same kernel: flow 0's probe speaks for all.
        let probe = &socks[0].state;
        let (max_segments, gro_segments) = if offload {
            (
                probe.max_gso_segments().min(batch.max(1)),
                probe.gro_segments(),
            )
        } else {
            (1, 1)
        };
        if offload && probe.max_gso_segments() <= 1 {
            log::warn!("UDP GSO unavailable on this kernel: one datagram per send");
        }
        if offload && probe.gro_segments() <= 1 {
            log::warn!("UDP GRO unavailable on this kernel: one datagram per receive buffer");
        }
        let epoll = if flows > 1 {
            Some(merge_readiness(&socks)?)
        } else {
            None
        };
        if flows > 1 {
            let ports: Vec<String> = socks
                .iter()
                .filter_map(|f| f.sock.local_addr().ok())
                .map(|a| a.port().to_string())
                .collect();
            log::info!("UDP flows: {flows} sockets, ports {}", ports.join(", "));
        }
        Ok(UdpTransport {
            flows: socks,
            epoll,
            turn: AtomicUsize::new(0),
            v6: listen.is_ipv6(),
            max_segments,
            gro_segments,
            gso_ok: AtomicBool::new(max_segments > 1),
            paths: super::pmtu::PathMtus::default(),
        })
    }

    /// The local address of each flow (flow 0 first).
    pub fn flow_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.flows.iter().map(|f| f.sock.local_addr()).collect()
    }

    /// Receives from flow `i` into `bufs`.
    fn recv_flow(
        &self,
        i: usize,
        bufs: &mut [IoSliceMut<'_>],
        out: &mut [Received],
    ) -> io::Result<usize> {
        let f = &self.flows[i];
        let mut meta = [RecvMeta::default(); MAX_RECV_BATCH];
        let n = bufs.len().min(out.len()).min(MAX_RECV_BATCH);
        let got = f
            .state
            .recv((&f.sock).into(), &mut bufs[..n], &mut meta[..n])?;
        for (o, m) in out.iter_mut().zip(&meta[..got]) {
            *o = Received {
                from: unmap(m.addr),
                len: m.len,
                stride: m.stride.max(1),
                ecn: m.ecn.map_or(0, |e| e as u8),
            };
        }
        Ok(got)
    }

    /// `to` as this transport's sockets address it (v4-mapped on a
    /// dual-stack socket).
    fn destination(&self, to: SocketAddr) -> SocketAddr {
        match (self.v6, to) {
            (true, SocketAddr::V4(v4)) => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            _ => to,
        }
    }

    /// Asks epoll which flows are readable (without waiting).
    fn poll_ready(&self, epoll: &OwnedFd) -> io::Result<u32> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_FLOWS];
        // SAFETY: valid epoll fd; the pointer and count describe a live array.
        let n = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                MAX_FLOWS as libc::c_int,
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut mask = 0u32;
        for e in &events[..n as usize] {
            if let Some(bit) = 1u32.checked_shl(e.u64 as u32) {
                mask |= bit;
            }
        }
        Ok(mask)
    }
}

/// A non-blocking UDP socket bound to `addr`, with `buffer` bytes of socket
/// buffer (dual-stack when `addr` is IPv6).
fn bind_one(addr: SocketAddr, buffer: usize, reuse_port: bool) -> io::Result<UdpSocket> {
    let domain = Domain::for_address(addr);
    let sock = Socket::new(
        domain,
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        sock.set_only_v6(false)?;
    }
    set_buffers(&sock, buffer);
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// An epoll descriptor reporting each flow's readability (event data: the
/// flow index), level-triggered.
fn merge_readiness(flows: &[Flow]) -> io::Result<OwnedFd> {
    // SAFETY: epoll_create1 takes no pointers; the result is checked.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
    for (i, f) in flows.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        let target = f.sock.as_raw_fd();
        // SAFETY: valid epoll and target fds, pointer to a live event.
        if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, target, &mut ev) } != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(epoll)
}

/// quinn-udp turns UDP_GRO on opportunistically; `offload: false` turns it off.
fn disable_gro(sock: &UdpSocket) {
    const UDP_GRO: libc::c_int = 104;
    if let Err(e) = setsockopt_int(sock.as_raw_fd(), libc::SOL_UDP, UDP_GRO, 0) {
        log::debug!("UDP_GRO off: {e}");
    }
}

/// `setsockopt` for an `int`-valued option.
fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is an open socket for the duration of the call, and the
    // pointer and length describe a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &val as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets SO_SNDBUF/SO_RCVBUF, using the *FORCE variants when permitted, and
/// logs what the kernel granted.
pub(crate) fn set_buffers(sock: &Socket, bytes: usize) {
    let val = bytes.min(i32::MAX as usize) as libc::c_int;
    let fd = sock.as_raw_fd();
    for (force, plain, name) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "send"),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "receive"),
    ] {
        if setsockopt_int(fd, libc::SOL_SOCKET, force, val).is_err()
            && setsockopt_int(fd, libc::SOL_SOCKET, plain, val).is_err()
        {
            log::warn!("cannot set the UDP {name} buffer to {bytes} bytes");
        }
    }
    log::debug!(
        "UDP socket buffers: send {:?}, receive {:?}",
        sock.send_buffer_size(),
        sock.recv_buffer_size()
    );
}

impl Transport for UdpTransport {
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
        let f = &self.flows[flow % self.flows.len()];
        let mut transmit = Transmit {
            destination: self.destination(to),
            ecn: EcnCodepoint::from_bits(ecn),
            contents,
            segment_size: None,
            src_ip: None,
        };
        let seg = segment_size.max(1);
        if contents.len() > seg && self.gso_ok.load(Ordering::Relaxed) {
            transmit.segment_size = Some(seg);
            match f.state.try_send((&f.sock).into(), &transmit) {
                Ok(()) => {
                    f.sent
                        .fetch_add(contents.len().div_ceil(seg) as u64, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                    if self.gso_ok.swap(false, Ordering::Relaxed) {
                        log::warn!(
                            "UDP GSO refused at send time ({e}): one datagram per send from now on"
                        );
                    }
                    transmit.segment_size = None;
                }
                Err(e) => return Err(e),
            }
        }
        // One datagram per call; the first error ends the train (the rest
        // would meet the same full buffer or unreachable peer).
        for datagram in contents.chunks(seg) {
            transmit.contents = datagram;
            f.state.try_send((&f.sock).into(), &transmit)?;
            f.sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn recv(&self, bufs: &mut [IoSliceMut<'_>], out: &mut [Received]) -> io::Result<usize> {
        let Some(epoll) = &self.epoll else {
            return self.recv_flow(0, bufs, out);
        };
        // One epoll_wait says which flows hold data, so an empty flow costs
        // no receive call; the round-robin start keeps a busy flow from
        // starving the others.
        let ready = self.poll_ready(epoll)?;
        let n = self.flows.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % n;
        for k in 0..n {
            let i = (start + k) % n;
            if ready & (1 << i) == 0 {
                continue;
            }
            match self.recv_flow(i, bufs, out) {
                Ok(0) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Data, or an error (e.g. ICMP port unreachable) that is
                // this flow's news: report it; the others wait a turn.
                r => return r,
            }
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.flows[0].sock.local_addr()
    }

    fn max_segments(&self) -> usize {
        if self.gso_ok.load(Ordering::Relaxed) {
            self.max_segments
        } else {
            1
        }
    }

    fn gro_segments(&self) -> usize {
        self.gro_segments
    }

    fn frame_floor(&self) -> Option<usize> {
        self.paths.floor()
    }

    fn max_frame(&self, to: SocketAddr) -> Option<usize> {
        self.paths.max_frame(to)
    }

    fn refresh_paths(&self, endpoints: &[SocketAddr]) {
        self.paths.refresh(endpoints);
    }

    fn flows(&self) -> usize {
        self.flows.len()
    }

    fn counters(&self) -> TransportCounters {
        let (mut drops, mut queued) = (0, 0);
        for m in self.flows.iter().filter_map(|f| meminfo(&f.sock)) {
            drops += u64::from(m[libc::SK_MEMINFO_DROPS as usize]);
            queued += u64::from(m[libc::SK_MEMINFO_RMEM_ALLOC as usize]);
        }
        TransportCounters {
            udp_flow_datagrams: if self.flows.len() > 1 {
                self.flows
                    .iter()
                    .map(|f| f.sent.load(Ordering::Relaxed))
                    .collect()
            } else {
                Vec::new()
            },
            udp_rcvbuf_drops: drops,
            udp_rx_queued_bytes: queued,
            ..TransportCounters::default()
        }
    }
}

/// `SO_MEMINFO` (asm-generic/socket.h; not in the libc crate).
const SO_MEMINFO: libc::c_int = 55;

/// The socket's memory counters (`SK_MEMINFO_*` indexes), or `None` when
/// the kernel does not say.
fn meminfo(sock: &UdpSocket) -> Option<[u32; 9]> {
    let mut m = [0u32; 9];
    let mut len = std::mem::size_of_val(&m) as libc::socklen_t;
    // SAFETY: a valid socket; the kernel writes at most `len` bytes into
    // `m` and reports how many it wrote.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            m.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize >= std::mem::size_of_val(&m)).then_some(m)
}

impl AsRawFd for UdpTransport {
    fn as_raw_fd(&self) -> RawFd {
        match &self.epoll {
            Some(e) => e.as_raw_fd(),
            None => self.flows[0].sock.as_raw_fd(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn recv_all(t: &UdpTransport, want: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut got = Vec::new();
        let mut storage = vec![vec![0u8; 65536]; 4];
        let deadline = Instant::now() + Duration::from_secs(2);
        while got.len() < want && Instant::now() < deadline {
            let mut bufs: Vec<IoSliceMut> =
                storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let mut out = [Received::default(); 4];
            match t.recv(&mut bufs, &mut out) {
                Ok(n) => {
                    for (i, r) in out[..n].iter().enumerate() {
                        for seg in storage[i][..r.len].chunks(r.stride) {
                            got.push((r.from, seg.to_vec()));
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
        got
    }

    #[test]
    fn ecn_travels_in_the_outer_header_and_full_buffers_are_counted() {
        let a = UdpTransport::bind("127.0.0.1:0".parse().expect("addr"), 64 << 10, true, 64)
            .expect("bind a");
        let b = UdpTransport::bind("127.0.0.1:0".parse().expect("addr"), 64 << 10, true, 64)
            .expect("bind b");
        let to = b.local_addr().expect("addr");
        for ecn in [0b00, 0b10, 0b01, 0b11] {
            a.send_flow(0, to, &[ecn; 100], 100, ecn).expect("send");
            let mut storage = vec![0u8; 65536];
            let mut out = [Received::default(); 1];
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                let mut bufs = [IoSliceMut::new(&mut storage)];
                match b.recv(&mut bufs, &mut out) {
                    Ok(1) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        assert!(Instant::now() < deadline, "datagram lost");
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => panic!("recv: {e}"),
                }
            }
            assert_eq!(out[0].ecn, ecn, "outer ECN codepoint");
        }
        let c = b.counters();
        assert_eq!((c.udp_rcvbuf_drops, c.udp_rx_queued_bytes), (0, 0));
        // Nobody reads b: its small receive buffer fills and the kernel
        // drops the rest, which the counters show.
        for _ in 0..2_000 {
            let _ = a.send_flow(0, to, &[7u8; 1200], 1200, 0);
        }
        let c = b.counters();
        assert!(c.udp_rcvbuf_drops > 0, "{c:?}");
        assert!(c.udp_rx_queued_bytes > 0, "{c:?}");
    }

    #[test]
    fn batched_send_arrives_as_separate_datagrams() {
        for offload in [true, false] {
            let a = UdpTransport::bind("127.0.0.1:0".parse().expect("addr"), 1 << 20, offload, 64)
                .expect("bind a");
            let b = UdpTransport::bind("[::]:0".parse().expect("addr"), 1 << 20, offload, 64)
                .expect("bind b");
            let port = b.local_addr().expect("addr").port();
            let to: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
            // Five 100-byte datagrams and a short last one, in one call where GSO exists.
            let mut contents = Vec::new();
            for i in 0..5u8 {
                contents.extend_from_slice(&[i; 100]);
            }
            contents.extend_from_slice(&[9u8; 30]);
            let seg = if a.max_segments() > 1 {
                100
            } else {
                contents.len()
            };
            if seg == 100 {
                a.send(to, &contents, 100).expect("send");
            } else {
                for chunk in contents.chunks(100) {
                    a.send(to, chunk, chunk.len()).expect("send");
                }
            }
            let got = recv_all(&b, 6);
            assert_eq!(got.len(), 6, "offload {offload}: {got:?}");
            for (i, (from, d)) in got.iter().enumerate() {
                assert!(from.is_ipv4(), "v4-mapped source unmapped: {from}");
                let expect = if i < 5 {
                    vec![i as u8; 100]
                } else {
                    vec![9u8; 30]
                };
                assert_eq!(d, &expect, "datagram {i}");
            }
            // The dual-stack socket answers a plain IPv4 endpoint.
            b.send(got[0].0, b"back", 4).expect("reply");
            assert_eq!(recv_all(&a, 1)[0].1, b"back");
        }
    }

    #[test]
    fn a_train_the_kernel_refuses_is_sent_frame_by_frame_from_then_on() {
        let any = |s: &str| -> SocketAddr { s.parse().expect("addr") };
        let a = UdpTransport::bind(any("127.0.0.1:0"), 4 << 20, true, 64).expect("bind a");
        if a.max_segments() <= 1 {
            eprintln!("no UDP GSO on this kernel: nothing to refuse");
            return;
        }
        let b = UdpTransport::bind(any("127.0.0.1:0"), 4 << 20, true, 64).expect("bind b");
        let to = b.local_addr().expect("addr");
        // 130 segments is past the kernel's UDP_MAX_SEGMENTS (64; 128 in
        // newer kernels): EINVAL, as a NIC without checksum offload
        // answers EIO. Every frame still arrives, and later trains go one
        // datagram per call.
        for round in 0..2 {
            let mut contents = Vec::new();
            for i in 0..129u8 {
                contents.extend_from_slice(&[i; 100]);
            }
            contents.extend_from_slice(&[0xEE; 40]);
            a.send_flow(0, to, &contents, 100, 0).expect("send");
            let got: Vec<Vec<u8>> = recv_all(&b, 130).into_iter().map(|(_, d)| d).collect();
            let want: Vec<Vec<u8>> = contents.chunks(100).map(<[u8]>::to_vec).collect();
            assert_eq!(got, want, "round {round}");
            assert_eq!(a.max_segments(), 1, "GSO off after EINVAL");
            assert_eq!(a.flows[0].sent.load(Ordering::Relaxed), 130 * (round + 1));
        }
    }

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call.
        unsafe { libc::poll(&mut p, 1, 1000) == 1 }
    }

    #[test]
    fn flows_are_distinct_sockets_sent_from_and_received_on() {
        let any = |s: &str| -> SocketAddr { s.parse().expect("addr") };
        for offload in [true, false] {
            let t = UdpTransport::bind_flows(any("127.0.0.1:0"), 1 << 20, offload, 64, 4)
                .expect("bind 4 flows");
            assert_eq!(t.flows(), 4);
            let addrs = t.flow_addrs().expect("addrs");
            assert_eq!(addrs[0], t.local_addr().expect("addr"), "flow 0 is listen");
            let mut ports: Vec<u16> = addrs.iter().map(|a| a.port()).collect();
            ports.sort_unstable();
            ports.dedup();
            assert_eq!(ports.len(), 4, "distinct ports: {addrs:?}");
            assert!(addrs.iter().all(|a| a.ip() == addrs[0].ip()), "{addrs:?}");

            // Frames arriving on any flow come out of the one descriptor.
            let far = UdpTransport::bind(any("127.0.0.1:0"), 1 << 20, offload, 64).expect("far");
            assert!(!readable_now(t.as_raw_fd()));
            for (i, a) in addrs.iter().enumerate() {
                far.send(*a, &[i as u8; 10], 10).expect("send to flow");
            }
            assert!(readable(t.as_raw_fd()), "epoll reports queued frames");
            let mut got: Vec<u8> = recv_all(&t, 4).iter().map(|(_, d)| d[0]).collect();
            got.sort_unstable();
            assert_eq!(got, vec![0, 1, 2, 3], "offload {offload}");

            // Each flow sends from its own port and counts what it sent.
            for flow in 0..6 {
                t.send_flow(flow, far.local_addr().expect("far"), b"x", 1, 0)
                    .expect("send_flow");
            }
            let mut from: Vec<u16> = recv_all(&far, 6).iter().map(|(f, _)| f.port()).collect();
            from.sort_unstable();
            let mut want: Vec<u16> = (0..6).map(|f| addrs[f % 4].port()).collect();
            want.sort_unstable();
            assert_eq!(from, want, "flow k leaves from socket k (wrapping)");
            assert_eq!(t.counters().udp_flow_datagrams, vec![2, 2, 1, 1]);
        }
    }

    fn readable_now(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn a_busy_flow_does_not_starve_the_others() {
        let any = |s: &str| -> SocketAddr { s.parse().expect("addr") };
        let t = UdpTransport::bind_flows(any("127.0.0.1:0"), 4 << 20, false, 1, 3).expect("bind");
        let addrs = t.flow_addrs().expect("addrs");
        let far = UdpTransport::bind(any("127.0.0.1:0"), 4 << 20, false, 1).expect("far");
        // Flow 0 holds far more than one receive call takes; flow 2 one frame.
        for _ in 0..200 {
            far.send(addrs[0], b"busy", 4).expect("send");
        }
        far.send(addrs[2], b"quiet", 5).expect("send");
        assert!(readable(t.as_raw_fd()));
        let mut storage = vec![vec![0u8; 2048]; 4];
        let mut seen_quiet_after = None;
        for call in 0..6 {
            let mut bufs: Vec<IoSliceMut> =
                storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let mut out = [Received::default(); 4];
            let n = t.recv(&mut bufs, &mut out).expect("data queued");
            if out[..n].iter().any(|r| r.len == 5) {
                seen_quiet_after = Some(call);
                break;
            }
        }
        // Round robin over 3 flows: flow 2 gets a turn within 3 calls
        // (4 buffers per call would need 50 calls to drain flow 0 first).
        assert!(
            matches!(seen_quiet_after, Some(c) if c < 3),
            "{seen_quiet_after:?}"
        );
    }

    #[test]
    fn flow_count_is_checked() {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        for bad in [0, MAX_FLOWS + 1] {
            let e = UdpTransport::bind_flows(any, 1 << 20, false, 1, bad).expect_err("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
        // The default single flow is the listen socket itself, no epoll.
        let one = UdpTransport::bind(any, 1 << 20, false, 1).expect("one");
        assert_eq!(one.flows(), 1);
        assert!(one.counters().udp_flow_datagrams.is_empty());
    }
}
