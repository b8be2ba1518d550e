//! The I/O half of the userspace WAN emulator: two AF_PACKET sockets (one per
//! wan-side veth, PACKET_VNET_HDR so GSO super-frames and partial checksums
//! pass through intact, outgoing frames ignored, promiscuous), and one
//! blocking thread per direction:
//!
//! 1. wait (ppoll, ns timeout) until the rx socket is readable or the next
//!    frame in the delay line is due;
//! 2. recvmmsg a batch (non-blocking), decide each frame with
//!    [`Link::admit`], copy kept frames into pooled buffers on the delay line;
//! 3. sendmmsg every frame whose time has come on the other socket.
//!
//! Counters per direction come back from [`run`] when the stop flag is set.
//!
//! Fault injection for tests: `mtu` drops (silently, as a black hole does)
//! IP packets longer than it, GSO super-frames judged by their segments,
//! while `mtu_on` is set (from the start, or from a signal on); an
//! `outage` flag, while set, drops every frame arriving (frames already on
//! the delay line still leave, as if in flight).

use std::collections::VecDeque;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::model::{DelayLine, Drop, Link, LinkParams};

/// Frames per recvmmsg/sendmmsg call: amortises syscalls; 64 × 64 KiB of
/// receive buffers per direction is a bounded 4 MiB.
const BATCH: usize = 64;
/// A GSO super-frame is at most 64 KiB plus headers and the vnet header.
const BUF_LEN: usize = 65536 + 256;
/// Size of `struct virtio_net_hdr` in front of every frame.
const VNET_HDR_LEN: usize = 10;
/// Socket buffers: absorb bursts while a thread is busy with the other side.
const SOCK_BUF: libc::c_int = 32 << 20;
/// How often an idle thread looks at the stop flag.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// Pooled frame buffers kept for reuse, at most (the rest are freed).
const POOL_MAX: usize = 8192;
/// `PACKET_IGNORE_OUTGOING` (Linux 4.20), not in every libc release.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// What the emulator is asked to do.
#[derive(Debug, Clone)]
pub struct EmuArgs {
    /// The wan-side veth towards gw-a.
    pub if_a: String,
    /// The wan-side veth towards gw-b.
    pub if_b: String,
    /// Link behaviour, the same in both directions.
    pub params: LinkParams,
    /// RNG seed (direction b→a uses seed + 1).
    pub seed: u64,
    /// Longest IP packet carried, bytes; longer ones vanish (a path MTU
    /// black hole). `None`: no limit.
    pub mtu: Option<u64>,
    /// Non-zero while the link is down (every arriving frame dropped).
    pub outage: Arc<AtomicUsize>,
    /// Non-zero while `mtu` applies (it can be turned on mid-run).
    pub mtu_on: Arc<AtomicUsize>,
}

/// Counters of one direction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DirStats {
    /// Frames received.
    pub frames: u64,
    /// Bytes received (frames as the kernel handed them over).
    pub bytes: u64,
    /// Bytes on the emulated wire (GSO super-frames counted as their segments).
    pub wire_bytes: u64,
    /// Frames that were GSO super-frames.
    pub gso_frames: u64,
    /// Frames dropped by random loss.
    pub lost: u64,
    /// Frames dropped because the rate-limit queue was full.
    pub queue_drops: u64,
    /// Frames the transmit side refused.
    pub tx_errors: u64,
    /// Frames larger than the receive buffer (dropped).
    pub truncated: u64,
    /// Frames sent on.
    pub delivered: u64,
    /// Most frames waiting in the delay line at once.
    pub max_backlog: u64,
    /// IP packets dropped for exceeding `mtu`.
    #[serde(default)]
    pub mtu_drops: u64,
    /// Frames dropped while the link was down.
    #[serde(default)]
    pub outage_drops: u64,
}

/// Counters of both directions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EmuStats {
    /// gw-a → gw-b.
    pub a_to_b: DirStats,
    /// gw-b → gw-a.
    pub b_to_a: DirStats,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: fd is an open socket; the option value is a c_int on our stack
    // and its exact size is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// Opens the AF_PACKET socket of one interface (see the module docs).
fn open_port(ifname: &str) -> io::Result<OwnedFd> {
    let name = CString::new(ifname)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
    // SAFETY: name is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface {ifname}: {}", io::Error::last_os_error()),
        ));
    }
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = cvt(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(proto),
        )
    })?;
    // SAFETY: raw is a freshly created descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    setsockopt_int(&fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1)?;
    // Best effort: older kernels lack it; we then also see our own frames
    // on the other socket's interface... which is bound elsewhere, so only
    // a little extra filtering work is lost.
    let _ = setsockopt_int(&fd, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1);
    if setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, SOCK_BUF).is_err() {
        setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, SOCK_BUF)?;
    }
    if setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, SOCK_BUF).is_err() {
        setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF, SOCK_BUF)?;
    }
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a valid sockaddr_ll and its size is passed.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    let mreq = libc::packet_mreq {
        mr_ifindex: ifindex as i32,
        mr_type: libc::PACKET_MR_PROMISC as u16,
        mr_alen: 0,
        mr_address: [0; 8],
    };
    // SAFETY: mreq is a valid packet_mreq and its size is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            (&mreq as *const libc::packet_mreq).cast(),
            std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// Cost and shape of one received frame (vnet header + Ethernet frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    /// Bytes on the emulated wire.
    pub wire_bytes: u64,
    /// Packets it stands for.
    pub segments: u32,
    /// IP traffic (subject to random loss); ARP and others are not.
    pub lossy: bool,
    /// A GSO super-frame.
    pub gso: bool,
    /// Length of the (largest) IP packet it carries: the frame less its
    /// Ethernet header, or one segment of a super-frame.
    pub ip_len: u64,
}

/// Reads the vnet header and Ethernet type of `data` (vnet header first).
/// `None` for a runt that cannot be an Ethernet frame.
pub fn frame_info(data: &[u8]) -> Option<FrameInfo> {
    let frame = data.get(VNET_HDR_LEN..)?;
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let lossy = matches!(ethertype, 0x0800 | 0x86DD | 0x8100);
    let flen = frame.len() as u64;
    let l2 = if ethertype == 0x8100 { 18 } else { 14 };
    let gso_type = data[1] & 0x7f;
    let hdr_len = u64::from(u16::from_ne_bytes([data[2], data[3]]));
    let gso_size = u64::from(u16::from_ne_bytes([data[4], data[5]]));
    if gso_type == 0 || gso_size == 0 {
        return Some(FrameInfo {
            wire_bytes: flen,
            segments: 1,
            lossy,
            gso: false,
            ip_len: flen.saturating_sub(l2),
        });
    }
    // hdr_len is a hint some paths leave at 0: assume Ethernet + IPv4 + TCP.
    let hdr = if hdr_len == 0 || hdr_len >= flen {
        54
    } else {
        hdr_len
    };
    let payload = flen.saturating_sub(hdr);
    let segs = payload.div_ceil(gso_size).max(1);
    Some(FrameInfo {
        wire_bytes: flen + (segs - 1) * hdr,
        segments: u32::try_from(segs).unwrap_or(u32::MAX),
        lossy,
        gso: true,
        ip_len: (hdr + gso_size.min(payload)).saturating_sub(l2),
    })
}

/// One direction's loop; returns its counters when `stop` is set.
fn pump(
    rx: &OwnedFd,
    tx: &OwnedFd,
    mut link: Link,
    start: Instant,
    stop: &AtomicBool,
    (mtu, outage, mtu_on): (Option<u64>, &AtomicUsize, &AtomicUsize),
) -> io::Result<DirStats> {
    // Wake-ups at the requested nanosecond, not 50 µs later.
    // SAFETY: prctl with PR_SET_TIMERSLACK takes a plain integer.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let mut st = DirStats::default();
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; BUF_LEN]).collect();
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain old data; zero is a valid initial value.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    let mut line: DelayLine<Vec<u8>> = DelayLine::new();
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut out: VecDeque<Vec<u8>> = VecDeque::with_capacity(BATCH);
    let now_ns = || start.elapsed().as_nanos() as u64;

    while !stop.load(Ordering::Relaxed) {
        // 1. Wait for input or the next due frame.
        let wait = match line.next_due() {
            Some(due) => Duration::from_nanos(due.saturating_sub(now_ns())),
            None => IDLE_WAIT,
        }
        .min(IDLE_WAIT);
        if !wait.is_zero() {
            let mut pfd = libc::pollfd {
                fd: rx.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ts = libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            };
            // SAFETY: one valid pollfd, a valid timespec, no signal mask.
            let r = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
        // 2. Receive a batch.
        for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_flags = 0;
            m.msg_len = 0;
        }
        // SAFETY: msgs holds BATCH headers, each pointing at one iovec over a
        // live buffer of BUF_LEN bytes; MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recvmmsg(
                rx.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                return Err(e);
            }
        }
        let t = now_ns();
        for i in 0..n.max(0) as usize {
            let len = (msgs[i].msg_len as usize).min(BUF_LEN);
            st.frames += 1;
            st.bytes += len.saturating_sub(VNET_HDR_LEN) as u64;
            if msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                st.truncated += 1;
                continue;
            }
            let data = &bufs[i][..len];
            let Some(info) = frame_info(data) else {
                st.truncated += 1;
                continue;
            };
            st.wire_bytes += info.wire_bytes;
            st.gso_frames += u64::from(info.gso);
            if outage.load(Ordering::Relaxed) != 0 {
                st.outage_drops += 1;
                continue;
            }
            if info.lossy
                && mtu.is_some_and(|m| info.ip_len > m)
                && mtu_on.load(Ordering::Relaxed) != 0
            {
                st.mtu_drops += 1;
                continue;
            }
            match link.admit(t, info.wire_bytes, info.segments, info.lossy) {
                Err(Drop::Loss) => st.lost += 1,
                Err(Drop::Queue) => st.queue_drops += 1,
                Ok(due) => {
                    let mut b = pool.pop().unwrap_or_default();
                    b.clear();
                    b.extend_from_slice(data);
                    line.push(due, b);
                }
            }
        }
        st.max_backlog = st.max_backlog.max(line.len() as u64);
        // 3. Send what is due, in batches.
        loop {
            let t = now_ns();
            while out.len() < BATCH {
                match line.pop_due(t) {
                    Some(b) => out.push_back(b),
                    None => break,
                }
            }
            if out.is_empty() {
                break;
            }
            send_batch(tx, &mut out, &mut st, &mut pool)?;
        }
    }
    Ok(st)
}

/// Sends every frame in `out` (one sendmmsg per try); refused frames are
/// counted and dropped. Buffers go back to `pool`.
fn send_batch(
    tx: &OwnedFd,
    out: &mut VecDeque<Vec<u8>>,
    st: &mut DirStats,
    pool: &mut Vec<Vec<u8>>,
) -> io::Result<()> {
    while !out.is_empty() {
        let mut iovs: Vec<libc::iovec> = out
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: mmsghdr is plain old data; zero is a valid initial value.
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: each header points at one iovec over a live buffer in `out`,
        // which is not touched until the call returns.
        let n = unsafe {
            libc::sendmmsg(
                tx.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                0,
            )
        };
        let sent = if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => 0,
                // ENOBUFS, EMSGSIZE, ...: drop the first frame and go on.
                _ if e.raw_os_error() != Some(libc::EBADF) => {
                    st.tx_errors += 1;
                    if let Some(b) = out.pop_front() {
                        recycle(pool, b);
                    }
                    0
                }
                _ => return Err(e),
            }
        } else {
            n as usize
        };
        for _ in 0..sent {
            if let Some(b) = out.pop_front() {
                recycle(pool, b);
            }
        }
        st.delivered += sent as u64;
    }
    Ok(())
}

fn recycle(pool: &mut Vec<Vec<u8>>, b: Vec<u8>) {
    if pool.len() < POOL_MAX {
        pool.push(b);
    }
}

/// Opens both ports, calls `ready` once they are open, and moves frames
/// until `stop` is set; returns both directions' counters.
pub fn run(args: &EmuArgs, stop: Arc<AtomicBool>, ready: impl FnOnce()) -> io::Result<EmuStats> {
    let a = open_port(&args.if_a)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", args.if_a)))?;
    let b = open_port(&args.if_b)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", args.if_b)))?;
    ready();
    let start = Instant::now();
    let ab = Link::new(args.params.clone(), args.seed);
    let ba = Link::new(args.params.clone(), args.seed.wrapping_add(1));
    std::thread::scope(|s| {
        let t1 = s.spawn(|| {
            let r = pump(
                &a,
                &b,
                ab,
                start,
                &stop,
                (args.mtu, &args.outage, &args.mtu_on),
            );
            stop.store(true, Ordering::Relaxed);
            r
        });
        let t2 = s.spawn(|| {
            let r = pump(
                &b,
                &a,
                ba,
                start,
                &stop,
                (args.mtu, &args.outage, &args.mtu_on),
            );
            stop.store(true, Ordering::Relaxed);
            r
        });
        let join = |t: std::thread::ScopedJoinHandle<'_, io::Result<DirStats>>| {
            t.join()
                .unwrap_or_else(|_| Err(io::Error::other("emulator thread panicked")))
        };
        let a_to_b = join(t1)?;
        let b_to_a = join(t2)?;
        Ok(EmuStats { a_to_b, b_to_a })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(vnet: [u8; 10], ethertype: u16, len: usize) -> Vec<u8> {
        let mut v = vnet.to_vec();
        let mut f = vec![0u8; len];
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        v.extend(f);
        v
    }

    #[test]
    fn plain_and_arp_frames() {
        let i = frame_info(&frame([0; 10], 0x0800, 1514)).expect("frame");
        assert_eq!(
            (i.wire_bytes, i.segments, i.lossy, i.gso, i.ip_len),
            (1514, 1, true, false, 1500)
        );
        let i = frame_info(&frame([0; 10], 0x0806, 60)).expect("frame");
        assert!(!i.lossy);
        assert!(frame_info(&[0u8; 15]).is_none());
        assert!(frame_info(&[0u8; 3]).is_none());
    }

    #[test]
    fn gso_frames_count_their_segments() {
        // TCPv4 GSO, 66-byte headers, 1448-byte segments, 10 segments.
        let mut v = [0u8; 10];
        v[1] = 1;
        v[2..4].copy_from_slice(&66u16.to_ne_bytes());
        v[4..6].copy_from_slice(&1448u16.to_ne_bytes());
        let i = frame_info(&frame(v, 0x0800, 66 + 14480)).expect("frame");
        assert!(i.gso);
        assert_eq!(i.segments, 10);
        assert_eq!(i.wire_bytes, 10 * (66 + 1448));
        // Each segment is a 1500-byte IP packet (52 bytes of IP + TCP headers).
        assert_eq!(i.ip_len, 66 + 1448 - 14);
    }
}
