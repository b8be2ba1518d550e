//! How frames cross the WAN. One interface, [`Transport`], so the data path does
//! not care which carrier runs; `udp` is the default (and, for now, the only)
//! implementation.
//!
//! A dual-stack socket (`[::]:port`) reaches IPv4 peers through v4-mapped
//! addresses; this module maps and unmaps them so that the rest of the daemon
//! only ever sees plain IPv4 or IPv6 endpoints.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

/// A carrier of tunnel frames between gateways.
pub trait Transport: AsRawFd + Send {
    /// Sends one frame to `to`.
    fn send_to(&self, frame: &[u8], to: SocketAddr) -> io::Result<usize>;
    /// Receives one frame; `WouldBlock` when none is queued.
    fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
    /// The local address frames are received on.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Frames as UDP datagrams on one non-blocking socket.
#[derive(Debug)]
pub struct UdpTransport {
    sock: UdpSocket,
    v6: bool,
}

impl UdpTransport {
    /// Binds `listen` with `buffer` bytes of send and receive socket buffer.
    /// As root the buffer is forced past `net.core.{r,w}mem_max`.
    pub fn bind(listen: SocketAddr, buffer: usize) -> io::Result<UdpTransport> {
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
        Ok(UdpTransport {
            sock: sock.into(),
            v6: listen.is_ipv6(),
        })
    }
}

/// Sets SO_SNDBUF/SO_RCVBUF, using the *FORCE variants when permitted, and
/// logs what the kernel granted.
fn set_buffers(sock: &Socket, bytes: usize) {
    let val = bytes.min(i32::MAX as usize) as libc::c_int;
    for (force, plain, name) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "send"),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "receive"),
    ] {
        let set = |opt| {
            // SAFETY: valid socket fd, pointer to a live c_int and its size.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &val as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        if set(force) != 0 && set(plain) != 0 {
            log::warn!("cannot set the UDP {name} buffer to {bytes} bytes");
        }
    }
    log::debug!(
        "UDP socket buffers: send {:?}, receive {:?}",
        sock.send_buffer_size(),
        sock.recv_buffer_size()
    );
}

fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

impl Transport for UdpTransport {
    fn send_to(&self, frame: &[u8], to: SocketAddr) -> io::Result<usize> {
        let to = match (self.v6, to) {
            (true, SocketAddr::V4(v4)) => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            _ => to,
        };
        self.sock.send_to(frame, to)
    }

    fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (n, from) = self.sock.recv_from(buf)?;
        Ok((n, unmap(from)))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
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

    #[test]
    fn loopback_roundtrip_and_mapping() {
        let a = UdpTransport::bind("127.0.0.1:0".parse().expect("addr"), 1 << 20).expect("bind a");
        let b = UdpTransport::bind("[::]:0".parse().expect("addr"), 1 << 20).expect("bind b");
        let b_port = b.local_addr().expect("addr").port();
        let to: SocketAddr = format!("127.0.0.1:{b_port}").parse().expect("addr");
        a.send_to(b"hello", to).expect("send");
        let mut buf = [0u8; 64];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match b.recv_from(&mut buf) {
                Ok((n, from)) => {
                    assert_eq!(&buf[..n], b"hello");
                    assert!(from.is_ipv4(), "v4-mapped source is unmapped: {from}");
                    // And the dual-stack socket can answer a plain IPv4 endpoint.
                    b.send_to(b"back", from).expect("reply");
                    break;
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
}
