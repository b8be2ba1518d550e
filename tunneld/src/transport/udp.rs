//! Frames as UDP datagrams (the default transport).
//!
//! UDP batching comes from quinn-udp, quinn's own I/O layer: `sendmsg` with
//! UDP_SEGMENT (GSO) sends many equal-sized datagrams in one call, and
//! `recvmmsg` with UDP_GRO receives many datagrams, coalesced per flow, in one
//! call. Both are probed when the socket is made, with a logged fallback to
//! one datagram per call; what is active shows in `tunneld status`.
//!
//! A dual-stack socket (`[::]:port`) reaches IPv4 peers through v4-mapped
//! addresses; this module maps and unmaps them so that the rest of the daemon
//! only ever sees plain IPv4 or IPv6 endpoints.

use super::{unmap, Received, Transport, MAX_RECV_BATCH};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

/// Frames as UDP datagrams on one non-blocking socket.
#[derive(Debug)]
pub struct UdpTransport {
    sock: UdpSocket,
    state: UdpSocketState,
    v6: bool,
    max_segments: usize,
    gro_segments: usize,
}

impl UdpTransport {
    /// Binds `listen` with `buffer` bytes of send and receive socket buffer
    /// (forced past `net.core.{r,w}mem_max` when permitted). With `offload`,
    /// GSO and GRO are used where the kernel has them; `batch` caps GSO
    /// segments per send.
    pub fn bind(
        listen: SocketAddr,
        buffer: usize,
        offload: bool,
        batch: usize,
    ) -> io::Result<UdpTransport> {
        let domain = Domain::for_address(listen);
        let sock = Socket::new(
            domain,
            Type::DGRAM.nonblocking().cloexec(),
            Some(Protocol::UDP),
        )?;
        if listen.is_ipv6() {
            sock.set_only_v6(false)?;
        }
        set_buffers(&sock, buffer);
        sock.bind(&listen.into())?;
        let sock: UdpSocket = sock.into();
        let state = UdpSocketState::new((&sock).into())?;
        let (max_segments, gro_segments) = if offload {
            (
                state.max_gso_segments().min(batch.max(1)),
                state.gro_segments(),
            )
        } else {
            disable_gro(&sock);
            (1, 1)
        };
        if offload && state.max_gso_segments() <= 1 {
            log::warn!("UDP GSO unavailable on this kernel: one datagram per send");
        }
        if offload && state.gro_segments() <= 1 {
            log::warn!("UDP GRO unavailable on this kernel: one datagram per receive buffer");
        }
        Ok(UdpTransport {
            sock,
            state,
            v6: listen.is_ipv6(),
            max_segments,
            gro_segments,
        })
    }
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
        let destination = match (self.v6, to) {
            (true, SocketAddr::V4(v4)) => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            _ => to,
        };
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size: (contents.len() > segment_size).then_some(segment_size),
            src_ip: None,
        };
        self.state.try_send((&self.sock).into(), &transmit)
    }

    fn recv(&self, bufs: &mut [IoSliceMut<'_>], out: &mut [Received]) -> io::Result<usize> {
        let mut meta = [RecvMeta::default(); MAX_RECV_BATCH];
        let n = bufs.len().min(out.len()).min(MAX_RECV_BATCH);
        let got = self
            .state
            .recv((&self.sock).into(), &mut bufs[..n], &mut meta[..n])?;
        for (o, m) in out.iter_mut().zip(&meta[..got]) {
            *o = Received {
                from: unmap(m.addr),
                len: m.len,
                stride: m.stride.max(1),
            };
        }
        Ok(got)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    fn max_segments(&self) -> usize {
        self.max_segments
    }

    fn gro_segments(&self) -> usize {
        self.gro_segments
    }
}

impl AsRawFd for UdpTransport {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
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
}
