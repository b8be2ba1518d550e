//! The TUN device: create it (via tun-rs, with IFF_VNET_HDR TSO/GRO offload
//! when asked and available), bring it up with its MTU and addresses, and
//! install routes for the peers' allowed prefixes. The device is not
//! persistent: when the last descriptor closes (clean exit or crash) the kernel
//! removes it and every route through it.
//!
//! The data path sees a TUN handle only through [`TunIo`], which [`Tun`]
//! implements and [`crate::tuntest::ChannelTun`] implements in memory, so the
//! real loops run in unit tests without root.
//!
//! With offload on, one read returns a TCP super-packet of up to 64 KiB that
//! [`crate::tso`] splits into MTU-sized packets (checksums filled in, in the
//! same pass as the copy), each placed at an offset in its own buffer so the
//! frame header can be written in front of it. On the way back the data
//! path coalesces TCP flows itself ([`crate::gro`]) and writes each buffer,
//! virtio-net header first, with [`TunIo::write_raw`]. Addresses and routes are set with iproute2's `ip`,
//! which every gateway has.

use crate::prefix::Prefix;
use crate::slab::Slots;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::process::Command;
use tun_rs::{DeviceBuilder, GROTable, SyncDevice};

/// Bytes the vnet header takes in front of a packet written with offload;
/// write offsets must be at least this.
pub use crate::tso::VNET_HDR_LEN;
/// Scratch space for one raw read: vnet header plus the largest super-packet.
pub const READ_SCRATCH: usize = VNET_HDR_LEN + 65_535;
/// Most packets one super-packet splits into. 64 KiB at an MSS of 536 is
/// 123 segments, but TCP builds super-packets of any MSS down to 48 bytes
/// (1,365 segments), so the device's `gso_max_segs` is set to this at
/// creation: the kernel then never hands us more (TCP sizes its
/// super-packets to it, forwarded GRO packets are segmented in software
/// before the device), and the split never runs out of buffers (should
/// one come, it is dropped and counted: [`crate::tso::SplitError::TooManySegments`]).
pub const MAX_SPLIT: usize = 128;

/// Why the device could not be created or configured.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// The kernel refused the interface (no /dev/net/tun, no CAP_NET_ADMIN,
    /// name in use by a non-TUN device).
    #[error("cannot create TUN interface {name}: {source} (tunneld needs root or CAP_NET_ADMIN)")]
    Create { name: String, source: io::Error },
    /// An `ip` command failed; carries its arguments and error output.
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    /// The `ip` program could not be run.
    #[error("cannot run `ip` (is iproute2 installed?): {0}")]
    NoIp(io::Error),
}

/// What the data path needs from one TUN handle (one queue of the device):
/// batched reads with the offload split, batched and raw writes, and a
/// descriptor that `poll(2)` reports readable when a read would not block
/// (`AsRawFd`). Modelled on wireguard-go's `tun.Device`.
pub trait TunIo: AsRawFd + Send + Sync {
    /// Whether reads return super-packets and writes take a virtio-net
    /// header (TSO/GRO).
    fn offload(&self) -> bool;
    /// Whether writes also take UDP super-packets (USO).
    fn uso(&self) -> bool;
    /// One read of what the device returns: with offload, a virtio-net
    /// header and a packet. `WouldBlock` when nothing is queued.
    fn read_raw(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one buffer as it is: with offload on, a virtio-net header and
    /// a packet (see [`crate::gro`]).
    fn write_raw(&self, buf: &[u8]) -> io::Result<usize>;
    /// Writes packets held at `bufs[i][offset..]` (each Vec ends where its
    /// packet ends), coalescing where the device can (the data path uses it
    /// without offload and for its ICMP answers). `offset` must be at least
    /// [`VNET_HDR_LEN`].
    fn write_batch(
        &self,
        gro: &mut GROTable,
        bufs: &mut [Vec<u8>],
        offset: usize,
    ) -> io::Result<usize>;

    /// Reads what is queued: one packet, or one super-packet split into
    /// several ([`crate::tso::split`]). Packet `i` lands at
    /// `bufs.slot(i)[offset..offset + sizes[i]]`. `WouldBlock` when nothing is
    /// queued; `InvalidData` (a [`crate::tso::SplitError`]) for a read that
    /// cannot be split, which is then lost.
    fn read_batch(
        &self,
        scratch: &mut [u8],
        bufs: &mut dyn Slots,
        sizes: &mut [usize],
        offset: usize,
    ) -> io::Result<usize> {
        if self.offload() {
            let n = self.read_raw(scratch)?;
            return Ok(crate::tso::split(&scratch[..n], bufs, sizes, offset)?);
        }
        let Some(size) = sizes.first_mut().filter(|_| bufs.count() > 0) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no buffer"));
        };
        let buf = bufs.slot(0);
        let Some(buf) = buf.get_mut(offset..) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "offset past buffer",
            ));
        };
        *size = self.read_raw(buf)?;
        Ok(1)
    }
}

/// An open TUN interface.
pub struct Tun {
    dev: SyncDevice,
    name: String,
    offload: bool,
}

impl std::fmt::Debug for Tun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tun")
            .field("name", &self.name)
            .field("offload", &self.offload)
            .finish()
    }
}

impl Tun {
    /// Creates the TUN interface `name`, non-blocking; with `offload`, asks
    /// for TSO/GRO and falls back (logged) when the kernel refuses.
    pub fn create(name: &str, offload: bool) -> Result<Tun, TunError> {
        let mut queues = Tun::create_queues(name, offload, 1)?;
        queues.pop().ok_or_else(|| TunError::Create {
            name: name.to_string(),
            source: io::Error::other("no queue"),
        })
    }

    /// Creates the TUN interface `name` with `queues` queues (one per
    /// data-path worker). With more than one the device is IFF_MULTI_QUEUE:
    /// the kernel picks the queue a packet is read from by its flow hash,
    /// so one inner flow is always read by one worker (and keeps its
    /// order), and any queue may be written.
    pub fn create_queues(name: &str, offload: bool, queues: usize) -> Result<Vec<Tun>, TunError> {
        let err = |source| TunError::Create {
            name: name.to_string(),
            source,
        };
        let multi = queues > 1;
        let dev = DeviceBuilder::new()
            .name(name)
            .offload(offload)
            .multi_queue(multi)
            .build_sync()
            .map_err(err)?;
        dev.set_nonblocking(true).map_err(err)?;
        let active = offload && dev.tcp_gso();
        if offload && !active {
            log::warn!("TUN offload (IFF_VNET_HDR TSO) unavailable: one packet per read");
        }
        if active {
            // See MAX_SPLIT: without this, a TCP flow with a small MSS (any
            // below ~512) makes super-packets we cannot split.
            let segs = MAX_SPLIT.to_string();
            if let Err(e) = ip(&["link", "set", "dev", name, "gso_max_segs", &segs]) {
                log::warn!(
                    "cannot limit {name}'s gso_max_segs to {segs} ({e}): super-packets of \
                     more segments will be dropped (counted as io.tun_read_errors)"
                );
            }
        }
        let mut devs = Vec::with_capacity(queues);
        for _ in 1..queues {
            let q = dev.try_clone().map_err(err)?;
            q.set_nonblocking(true).map_err(err)?;
            devs.push(q);
        }
        devs.insert(0, dev);
        if multi {
            log::info!("TUN {name}: {queues} queues (IFF_MULTI_QUEUE)");
        }
        Ok(devs
            .into_iter()
            .map(|dev| Tun {
                dev,
                name: name.to_string(),
                offload: active,
            })
            .collect())
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the MTU, brings the link up and adds `addresses`. Routes through
    /// the device are the route manager's ([`crate::routes`]).
    pub fn configure(&self, mtu: u16, addresses: &[Prefix]) -> Result<(), TunError> {
        let mtu = mtu.to_string();
        ip(&["link", "set", "dev", &self.name, "mtu", &mtu, "up"])?;
        for a in addresses {
            let a = a.to_string();
            if a.contains(':') {
                ip(&["-6", "addr", "replace", &a, "dev", &self.name, "nodad"])?;
            } else {
                ip(&["addr", "replace", &a, "dev", &self.name])?;
            }
        }
        Ok(())
    }
}

impl TunIo for Tun {
    fn offload(&self) -> bool {
        self.offload
    }

    fn uso(&self) -> bool {
        self.offload && self.dev.udp_gso()
    }

    fn read_raw(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.dev.recv(buf)
    }

    fn write_raw(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: a valid descriptor and a live buffer of `buf.len()` bytes.
        let n = unsafe { libc::write(self.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn write_batch(
        &self,
        gro: &mut GROTable,
        bufs: &mut [Vec<u8>],
        offset: usize,
    ) -> io::Result<usize> {
        self.dev.send_multiple(gro, bufs, offset)
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }
}

fn ip(args: &[&str]) -> Result<(), TunError> {
    run_ip(args).map(|_| ())
}

/// Runs `ip ARGS`; returns its standard output, or an error with the
/// arguments and what `ip` printed on standard error.
pub(crate) fn run_ip(args: &[&str]) -> Result<String, TunError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(TunError::NoIp)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(TunError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
