//! Socket set-up for data and control sockets: window (SO_SNDBUF/SO_RCVBUF), MSS
//! (TCP_MAXSEG), congestion control, device binding, and the TCP_INFO read-out.
//! The only module with `unsafe` (one getsockopt).

use crate::engine::spec::TestParams;
use socket2::{Domain, Protocol as SockProto, SockAddr, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Where client sockets come from.
#[derive(Debug, Clone, Default)]
pub struct LocalBind {
    /// Source address.
    pub addr: Option<IpAddr>,
    /// SO_BINDTODEVICE.
    pub dev: Option<String>,
}

fn apply_bind(s: &Socket, bind: &LocalBind, peer: &SocketAddr) -> io::Result<()> {
    if let Some(dev) = &bind.dev {
        s.bind_device(Some(dev.as_bytes()))
            .map_err(|e| io::Error::new(e.kind(), format!("bind to device {dev}: {e}")))?;
    }
    if let Some(ip) = bind.addr {
        if ip.is_ipv4() != peer.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--bind {ip} and server {peer} are different address families"),
            ));
        }
        s.bind(&SockAddr::from(SocketAddr::new(ip, 0)))
            .map_err(|e| io::Error::new(e.kind(), format!("bind to {ip}: {e}")))?;
    }
    Ok(())
}

/// Applies the window (both buffers) to any socket.
pub fn set_window(s: &Socket, window: Option<u64>) -> io::Result<()> {
    if let Some(w) = window {
        let w = usize::try_from(w).unwrap_or(usize::MAX);
        s.set_send_buffer_size(w)
            .and_then(|_| s.set_recv_buffer_size(w))
            .map_err(|e| io::Error::new(e.kind(), format!("set window {w}: {e}")))?;
    }
    Ok(())
}

/// Applies TCP options of a test to a TCP data socket.
pub fn apply_tcp(s: &Socket, p: &TestParams) -> io::Result<()> {
    set_window(s, p.window)?;
    if let Some(mss) = p.mss {
        s.set_tcp_mss(mss)
            .map_err(|e| io::Error::new(e.kind(), format!("set MSS {mss}: {e}")))?;
    }
    if let Some(cc) = &p.congestion {
        s.set_tcp_congestion(cc.as_bytes()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "congestion control '{cc}' not available ({e}); is the tcp_{cc} module loaded?"
                ),
            )
        })?;
    }
    if p.no_delay {
        s.set_tcp_nodelay(true)?;
    }
    Ok(())
}

/// Checks that the congestion control can be set here (the server checks on hello).
pub fn check_congestion(cc: &str) -> io::Result<()> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(SockProto::TCP))?;
    s.set_tcp_congestion(cc.as_bytes()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("congestion control '{cc}' not available: {e}"),
        )
    })
}

/// Connects a TCP socket with options set before the SYN (so MSS and window count).
pub fn connect_tcp(
    peer: SocketAddr,
    bind: &LocalBind,
    params: Option<&TestParams>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let s = Socket::new(
        Domain::for_address(peer),
        Type::STREAM,
        Some(SockProto::TCP),
    )?;
    apply_bind(&s, bind, &peer)?;
    if let Some(p) = params {
        apply_tcp(&s, p)?;
    }
    s.connect_timeout(&SockAddr::from(peer), timeout)
        .map_err(|e| io::Error::new(e.kind(), format!("connect to {peer}: {e}")))?;
    Ok(s.into())
}

/// A UDP socket bound for talking to `peer` (and connected to it if `connect`).
pub fn udp_socket(
    peer: SocketAddr,
    bind: &LocalBind,
    window: Option<u64>,
    connect: bool,
) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(peer), Type::DGRAM, Some(SockProto::UDP))?;
    apply_bind(&s, bind, &peer)?;
    set_window(&s, window)?;
    if connect {
        s.connect(&SockAddr::from(peer))
            .map_err(|e| io::Error::new(e.kind(), format!("UDP connect to {peer}: {e}")))?;
    }
    Ok(s.into())
}

/// A UDP socket bound to `ip` on an ephemeral port (server side).
pub fn udp_bound(ip: IpAddr, window: Option<u64>) -> io::Result<UdpSocket> {
    let addr = SocketAddr::new(ip, 0);
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(SockProto::UDP))?;
    set_window(&s, window)?;
    s.bind(&SockAddr::from(addr))?;
    Ok(s.into())
}

/// The TCP_INFO fields we report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// Total retransmitted segments.
    pub total_retrans: u32,
    /// Smoothed RTT, µs.
    pub rtt_us: u32,
    /// Congestion window, segments.
    pub snd_cwnd: u32,
    /// Send MSS.
    pub snd_mss: u32,
}

/// Reads TCP_INFO of a connected socket.
pub fn tcp_info(s: &TcpStream) -> Option<TcpInfo> {
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the fd is a live socket owned by `s`; the pointer and length describe
    // `info`, which outlives the call; the kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    Some(TcpInfo {
        total_retrans: info.tcpi_total_retrans,
        rtt_us: info.tcpi_rtt,
        snd_cwnd: info.tcpi_snd_cwnd,
        snd_mss: info.tcpi_snd_mss,
    })
}

/// Resolves `host:port` to the first address.
pub fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, port)
        .to_socket_addrs()
        .map_err(|e| io::Error::new(e.kind(), format!("resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address")))
}

/// Caps the rate the kernel sends `s` at (SO_MAX_PACING_RATE, bytes/s;
/// TCP paces itself with it since Linux 4.13, no fq qdisc needed).
pub fn set_max_pacing_rate(s: &TcpStream, bytes_per_sec: u64) -> io::Result<()> {
    // The kernel takes a u32 (saturating: u32::MAX means unlimited) on
    // every version; a u64 only on newer ones.
    let v: u32 = u32::try_from(bytes_per_sec).unwrap_or(u32::MAX).max(1);
    // SAFETY: valid socket fd, pointer to a live u32 and its size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MAX_PACING_RATE,
            &v as *const u32 as *const libc::c_void,
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn tcp_options_apply_and_info_reads() {
        let l = TcpListener::bind("127.0.0.1:0").expect("listen");
        let p = TestParams {
            window: Some(256 * 1024),
            mss: Some(1000),
            ..Default::default()
        };
        let c = connect_tcp(
            l.local_addr().expect("addr"),
            &LocalBind::default(),
            Some(&p),
            Duration::from_secs(2),
        )
        .expect("connects");
        let info = tcp_info(&c).expect("tcp_info");
        assert!(info.snd_mss <= 1000 && info.snd_mss > 0, "{info:?}");
    }

    #[test]
    fn unknown_congestion_is_a_clear_error() {
        let e = check_congestion("nosuchcc")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("nosuchcc"), "{e}");
        assert!(check_congestion("cubic").is_ok());
    }

    #[test]
    fn mixed_family_bind_is_refused() {
        let bind = LocalBind {
            addr: Some("::1".parse().expect("ip")),
            dev: None,
        };
        let e = connect_tcp(
            "127.0.0.1:9".parse().expect("addr"),
            &bind,
            None,
            Duration::from_secs(1),
        );
        assert!(e
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("address families"));
    }
}
