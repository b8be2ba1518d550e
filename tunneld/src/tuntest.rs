//! An in-memory TUN device for tests (wireguard-go's `tun/tuntest`): a
//! connected pair of Unix datagram sockets, one end a [`ChannelTun`] the
//! data path reads and writes through [`TunIo`] exactly as it does a real
//! device (the same `poll(2)` on its descriptor, the same offload split),
//! the other a [`TunPeer`] that plays the kernel: it injects packets (or
//! virtio-net super-packets) and collects what the data path writes.
//! Datagram boundaries are kept, so one send is one TUN read. Needs no
//! privilege.
//!
//! Readiness is a doorbell (a second socket pair) the peer rings after it
//! injects, so a test can queue a burst that the data path then finds all
//! at once, as a TUN ring fills while the reader is busy
//! ([`TunPeer::inject_quietly`], then [`TunPeer::ring`]).

use crate::tso::{VnetHdr, VNET_HDR_LEN};
use crate::tun::TunIo;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};
use tun_rs::GROTable;

/// Socket buffer of each end: several 64 KiB super-packets in flight, as a
/// TUN ring of a few hundred packets holds.
const SOCKET_BUFFER: usize = 4 << 20;

/// The data path's end.
#[derive(Debug)]
pub struct ChannelTun {
    sock: UnixDatagram,
    /// Readable while packets may be queued (what `poll` watches).
    bell: UnixDatagram,
    /// The peer's end of the doorbell, to ring it again ourselves.
    ring: UnixDatagram,
    offload: bool,
    uso: bool,
}

/// The "kernel" end.
#[derive(Debug)]
pub struct TunPeer {
    sock: UnixDatagram,
    ring: UnixDatagram,
    offload: bool,
}

/// A connected pair. With `offload`, every datagram in either direction
/// starts with a virtio-net header, as on a device opened with
/// IFF_VNET_HDR; `uso` is what [`TunIo::uso`] reports.
pub fn pair(offload: bool, uso: bool) -> io::Result<(ChannelTun, TunPeer)> {
    let (a, b) = UnixDatagram::pair()?;
    for s in [&a, &b] {
        let s = socket2::SockRef::from(s);
        // Best effort: the kernel caps it at wmem_max without privilege.
        let _ = s.set_send_buffer_size(SOCKET_BUFFER);
        let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    }
    a.set_nonblocking(true)?;
    let (bell, ring) = UnixDatagram::pair()?;
    bell.set_nonblocking(true)?;
    ring.set_nonblocking(true)?;
    Ok((
        ChannelTun {
            sock: a,
            bell,
            ring: ring.try_clone()?,
            offload,
            uso: offload && uso,
        },
        TunPeer {
            sock: b,
            ring,
            offload,
        },
    ))
}

impl AsRawFd for ChannelTun {
    fn as_raw_fd(&self) -> RawFd {
        self.bell.as_raw_fd()
    }
}

/// Rings a doorbell; a full one is rung already.
fn ring(bell: &UnixDatagram) {
    let _ = bell.send(&[1]);
}

impl TunIo for ChannelTun {
    fn offload(&self) -> bool {
        self.offload
    }

    fn uso(&self) -> bool {
        self.uso
    }

    fn read_raw(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.sock.recv(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Empty: silence the bell, then look once more, for a
                // packet queued before a ring we just swallowed.
                let mut b = [0u8; 64];
                while self.bell.recv(&mut b).is_ok() {}
                let n = self.sock.recv(buf)?;
                ring(&self.ring);
                Ok(n)
            }
            r => r,
        }
    }

    fn write_raw(&self, buf: &[u8]) -> io::Result<usize> {
        self.sock.send(buf)
    }

    /// One datagram per packet (no coalescing); with offload each starts
    /// with the zeroed virtio-net header in front of the packet.
    fn write_batch(
        &self,
        _: &mut GROTable,
        bufs: &mut [Vec<u8>],
        offset: usize,
    ) -> io::Result<usize> {
        let from = if self.offload {
            offset.checked_sub(VNET_HDR_LEN).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "offset below the vnet header")
            })?
        } else {
            offset
        };
        for b in bufs.iter_mut() {
            if let Some(h) = b.get_mut(from..offset) {
                h.fill(0);
            }
            self.sock.send(b.get(from..).unwrap_or_default())?;
        }
        Ok(bufs.len())
    }
}

impl TunPeer {
    /// Queues one packet for the data path to read (a plain packet: with
    /// offload, behind a header that asks for nothing).
    pub fn inject(&self, packet: &[u8]) -> io::Result<()> {
        self.inject_quietly(packet)?;
        self.ring();
        Ok(())
    }

    /// Queues one read of a device with offload: `hdr`, then `packet`.
    pub fn inject_offloaded(&self, hdr: VnetHdr, packet: &[u8]) -> io::Result<()> {
        self.inject_offloaded_quietly(hdr, packet)?;
        self.ring();
        Ok(())
    }

    /// [`TunPeer::inject`] without telling the data path (until
    /// [`TunPeer::ring`]).
    pub fn inject_quietly(&self, packet: &[u8]) -> io::Result<()> {
        if !self.offload {
            self.sock.send(packet)?;
            return Ok(());
        }
        self.inject_offloaded_quietly(VnetHdr::default(), packet)
    }

    /// [`TunPeer::inject_offloaded`] without telling the data path.
    pub fn inject_offloaded_quietly(&self, hdr: VnetHdr, packet: &[u8]) -> io::Result<()> {
        let mut d = vec![0u8; VNET_HDR_LEN];
        hdr.emit(&mut d);
        d.extend_from_slice(packet);
        self.sock.send(&d)?;
        Ok(())
    }

    /// Makes the data path's descriptor readable: what was injected
    /// quietly is read now.
    pub fn ring(&self) {
        ring(&self.ring);
    }

    /// The next write of the data path, waiting at most `timeout`: its
    /// virtio-net header (offload only) and packet.
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<(Option<VnetHdr>, Vec<u8>)>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; VNET_HDR_LEN + 65_536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.sock.set_read_timeout(Some(left))?;
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    if !self.offload {
                        return Ok(Some((None, buf)));
                    }
                    let hdr = VnetHdr::parse(&buf).ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "write without vnet header")
                    })?;
                    return Ok(Some((Some(hdr), buf.split_off(VNET_HDR_LEN))));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
}
