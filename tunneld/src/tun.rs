//! The TUN device: open and name it (`IFF_TUN | IFF_NO_PI`, non-blocking),
//! bring it up with its MTU and addresses, and install routes for the peers'
//! allowed prefixes. The device is not persistent: when the file descriptor is
//! closed (clean exit or crash) the kernel removes it and every route through it.
//!
//! Addresses and routes are set with iproute2's `ip`, which every gateway has;
//! the one ioctl we need (TUNSETIFF) is the only `unsafe` here.

use crate::prefix::Prefix;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;

/// `_IOW('T', 202, int)` from linux/if_tun.h.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Why the device could not be created or configured.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// /dev/net/tun could not be opened (module missing, no CAP_NET_ADMIN).
    #[error("cannot open /dev/net/tun: {0} (tunneld needs root or CAP_NET_ADMIN)")]
    Open(io::Error),
    /// The kernel refused the interface (name in use by a non-TUN device, no permission).
    #[error("cannot create TUN interface {name}: {source}")]
    Create { name: String, source: io::Error },
    /// An `ip` command failed; carries its arguments and error output.
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    /// The `ip` program could not be run.
    #[error("cannot run `ip` (is iproute2 installed?): {0}")]
    NoIp(io::Error),
}

/// An open TUN interface.
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tun {
    /// Creates (or attaches to) the TUN interface `name`, non-blocking.
    pub fn create(name: &str) -> Result<Tun, TunError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TunError::Open)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI,
            _pad: [0; 22],
        };
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
            return Err(TunError::Create {
                name: name.to_string(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "bad interface name length"),
            });
        }
        req.name[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: the fd is open for the duration of the call and `req` is a
        // properly sized, initialised `struct ifreq` that outlives it.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
        if rc < 0 {
            return Err(TunError::Create {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tun {
            file,
            name: name.to_string(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the MTU, brings the link up, adds `addresses`, and routes each of
    /// `routes` through the device.
    pub fn configure(
        &self,
        mtu: u16,
        addresses: &[Prefix],
        routes: &[Prefix],
    ) -> Result<(), TunError> {
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
        for r in routes {
            let r = r.to_string();
            ip(&["route", "replace", &r, "dev", &self.name])?;
        }
        Ok(())
    }

    /// Reads one packet; `WouldBlock` when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut &self.file, buf)
    }

    /// Writes one packet.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut &self.file, buf)
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

fn ip(args: &[&str]) -> Result<(), TunError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(TunError::NoIp)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TunError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
