//! Packet capture for assertions about what crosses a wire: an AF_PACKET
//! (ETH_P_ALL) socket bound to one interface of a lab namespace, read on a
//! background thread, plus small parsers to pull UDP payloads out of the
//! captured Ethernet frames.

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use tunbench::topo::Lab;

/// Frames kept per capture; beyond it frames are counted but not stored
/// (bounds memory during bulk traffic).
const MAX_FRAMES: usize = 100_000;
/// Receive buffer: larger than any GSO/GRO super-frame a veth hands us.
const FRAME_BUF: usize = 256 * 1024;
/// How often the reader looks at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// A running capture; [`Capture::stop`] returns the frames.
pub struct Capture {
    stop: Arc<AtomicBool>,
    reader: JoinHandle<std::io::Result<Captured>>,
    what: String,
}

/// What a capture saw.
#[derive(Debug, Default)]
pub struct Captured {
    /// The stored frames (Ethernet header first), at most `MAX_FRAMES`.
    pub frames: Vec<Vec<u8>>,
    /// All frames seen, stored or not.
    pub total: usize,
}

impl Capture {
    /// Starts capturing every frame (both directions) on `ifname` in `ns`.
    pub fn start(lab: &Lab, ns: &str, ifname: &str) -> anyhow::Result<Capture> {
        let name = ifname.to_string();
        let fd = lab
            .run_in(ns, move || open_packet_socket(&name))?
            .with_context(|| format!("opening an AF_PACKET socket on {ifname} in {ns}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let reader = std::thread::Builder::new()
            .name(format!("capture-{ifname}"))
            .spawn(move || read_frames(&fd, &flag))
            .context("spawning the capture thread")?;
        Ok(Capture {
            stop,
            reader,
            what: format!("{ifname} in {ns}"),
        })
    }

    /// Stops the capture and returns what it saw. Give in-flight packets a
    /// moment (the caller's business) before calling this.
    pub fn stop(self) -> anyhow::Result<Captured> {
        self.stop.store(true, Ordering::Relaxed);
        self.reader
            .join()
            .map_err(|_| anyhow::anyhow!("capture thread on {} panicked", self.what))?
            .with_context(|| format!("capturing on {}", self.what))
    }
}

fn open_packet_socket(ifname: &str) -> std::io::Result<OwnedFd> {
    let cname = CString::new(ifname)?;
    // SAFETY: if_nametoindex reads a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error());
    }
    let proto_be = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(proto_be),
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor we own exclusively.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto_be;
    sll.sll_ifindex = i32::try_from(ifindex)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: binding our socket to a correctly sized sockaddr_ll.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: libc::suseconds_t::try_from(POLL.as_micros()).unwrap_or(50_000),
    };
    setsockopt(&fd, libc::SO_RCVTIMEO, &tv)?;
    // 8 MiB so bursts are not dropped while the reader copies frames.
    let rcvbuf: libc::c_int = 8 << 20;
    setsockopt(&fd, libc::SO_RCVBUF, &rcvbuf)?;
    Ok(fd)
}

fn setsockopt<T>(fd: &OwnedFd, opt: libc::c_int, val: &T) -> std::io::Result<()> {
    // SAFETY: `val` points to a live T of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn read_frames(fd: &OwnedFd, stop: &AtomicBool) -> std::io::Result<Captured> {
    let mut out = Captured::default();
    let mut buf = vec![0u8; FRAME_BUF];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: recv into our buffer with its true length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
        let n = usize::try_from(n).unwrap_or(0);
        out.total += 1;
        if out.frames.len() < MAX_FRAMES {
            out.frames.push(buf[..n].to_vec());
        }
    }
    Ok(out)
}

/// True if `needle` occurs anywhere in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The IP packet inside an Ethernet frame: (src, dst, protocol, payload).
pub fn ip_of_frame(frame: &[u8]) -> Option<(IpAddr, IpAddr, u8, &[u8])> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            if ip.first()? >> 4 != 4 || ihl < 20 || total < ihl {
                return None;
            }
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            // A GSO super-frame may be longer than `total`; keep what is there.
            let end = total.min(ip.len()).max(ihl);
            Some((
                Ipv4Addr::from(src).into(),
                Ipv4Addr::from(dst).into(),
                *ip.get(9)?,
                ip.get(ihl..end)?,
            ))
        }
        0x86DD => {
            if ip.first()? >> 4 != 6 {
                return None;
            }
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            let plen = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            let end = (40 + plen).min(ip.len());
            Some((
                Ipv6Addr::from(src).into(),
                Ipv6Addr::from(dst).into(),
                *ip.get(6)?,
                ip.get(40..end)?,
            ))
        }
        _ => None,
    }
}

/// UDP payloads of the captured frames that go from `src` to `dst` (IPv6
/// extension headers are not followed).
pub fn udp_payloads(frames: &[Vec<u8>], src: SocketAddr, dst: SocketAddr) -> Vec<Vec<u8>> {
    frames
        .iter()
        .filter_map(|f| {
            let (s, d, proto, l4) = ip_of_frame(f)?;
            if proto != 17 || s != src.ip() || d != dst.ip() {
                return None;
            }
            let sport = u16::from_be_bytes([*l4.first()?, *l4.get(1)?]);
            let dport = u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]);
            let len = usize::from(u16::from_be_bytes([*l4.get(4)?, *l4.get(5)?]));
            if sport != src.port() || dport != dst.port() || len < 8 {
                return None;
            }
            Some(l4.get(8..len.min(l4.len()))?.to_vec())
        })
        .collect()
}

/// UDP payload bytes of the captured frames from address `src` (any port)
/// to `dst`, per source port: which outer flows carried the traffic.
pub fn udp_bytes_by_source_port(
    frames: &[Vec<u8>],
    src: IpAddr,
    dst: SocketAddr,
) -> std::collections::BTreeMap<u16, usize> {
    let mut by_port = std::collections::BTreeMap::new();
    for f in frames {
        let Some((s, d, 17, l4)) = ip_of_frame(f) else {
            continue;
        };
        let (Some(sp), Some(dp)) = (l4.get(0..2), l4.get(2..4)) else {
            continue;
        };
        let sport = u16::from_be_bytes([sp[0], sp[1]]);
        let dport = u16::from_be_bytes([dp[0], dp[1]]);
        if s == src && d == dst.ip() && dport == dst.port() {
            *by_port.entry(sport).or_insert(0) += l4.len().saturating_sub(8);
        }
    }
    by_port
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_udp_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12] = 0x08; // IPv4
        let total = 20 + 8 + payload.len();
        let mut ip = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            17,
            0,
            0,
        ];
        ip.extend([198, 18, 0, 2, 198, 18, 0, 1]);
        let ulen = 8 + payload.len();
        ip.extend([0xCA, 0x6C, 0xCA, 0x6C, (ulen >> 8) as u8, ulen as u8, 0, 0]);
        ip.extend_from_slice(payload);
        f.extend(ip);
        f
    }

    #[test]
    fn extracts_udp_payloads_by_flow() {
        let frame = v4_udp_frame(b"hello");
        let src: SocketAddr = "198.18.0.2:51820".parse().expect("addr");
        let dst: SocketAddr = "198.18.0.1:51820".parse().expect("addr");
        assert_eq!(
            udp_payloads(std::slice::from_ref(&frame), src, dst),
            vec![b"hello".to_vec()]
        );
        assert!(udp_payloads(std::slice::from_ref(&frame), dst, src).is_empty());
        // Ethernet padding after the IP packet is not payload.
        let mut padded = frame.clone();
        padded.extend([0u8; 20]);
        assert_eq!(udp_payloads(&[padded], src, dst), vec![b"hello".to_vec()]);
        // Truncated frames are skipped, not a panic.
        for n in 0..frame.len() {
            let _ = udp_payloads(&[frame[..n].to_vec()], src, dst);
        }
    }

    #[test]
    fn counts_bytes_per_source_port() {
        let frame = v4_udp_frame(b"hello"); // 198.18.0.2:51820 -> 198.18.0.1:51820
        let mut other = frame.clone();
        other[14 + 20] = 0x9c; // source port 0x9c6c
        let dst: SocketAddr = "198.18.0.1:51820".parse().expect("addr");
        let src: IpAddr = "198.18.0.2".parse().expect("ip");
        let got = udp_bytes_by_source_port(&[frame.clone(), other, frame.clone()], src, dst);
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            vec![(0x9c6c, 5), (51820, 10)]
        );
        let wrong: SocketAddr = "198.18.0.1:1".parse().expect("addr");
        assert!(udp_bytes_by_source_port(&[frame], src, wrong).is_empty());
    }

    #[test]
    fn substring_search() {
        assert!(contains(b"xxCANARYyy", b"CANARY"));
        assert!(!contains(b"xxCANARyy", b"CANARY"));
        assert!(!contains(b"abc", b""));
    }
}
