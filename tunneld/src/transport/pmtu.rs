//! Path MTU towards UDP peers.
//!
//! Outer UDP packets always carry DF: quinn-udp sets `IP_PMTUDISC_PROBE`,
//! so the kernel neither fragments them nor refuses them by a learned path
//! MTU, and a packet larger than the path is lost. The kernel still learns
//! the path MTU (from ICMP "fragmentation needed" / "packet too big", and
//! the outgoing interface's MTU), per destination, in its route cache. This
//! module reads it for each peer endpoint about once a second (a connected
//! throwaway socket's `IP_MTU` / `IPV6_MTU`), and the data path answers an
//! inner packet whose frame would not fit with an ICMP too-big into the
//! TUN device, as it does for QUIC (so the inner sender lowers its own
//! path MTU and TCP resends smaller segments) instead of losing it
//! silently.
//!
//! Why not let outer packets fragment, as WireGuard does: fragments are
//! dropped by many firewalls and NAT gateways, and one lost fragment loses
//! the whole frame, so the tunnel degrades in ways its users cannot see.
//! With DF kept, a path narrower than the tunnel MTU is reported to the
//! senders, who adapt, and is visible in the log.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

/// IPv4 header + UDP header.
const V4_OVERHEAD: usize = 20 + 8;
/// IPv6 header + UDP header.
const V6_OVERHEAD: usize = 40 + 8;
/// The smallest path MTU taken from the kernel: IPv4's minimum (RFC 791
/// says every host takes 576-byte datagrams); a smaller value is noise.
const MIN_PATH_MTU: usize = 576;

/// The kernel's path MTU towards `to` (route MTU, lowered by what ICMP
/// taught it).
pub fn route_mtu(to: SocketAddr) -> io::Result<usize> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    sock.connect(&to.into())?;
    let (level, opt) = if to.is_ipv4() {
        (libc::IPPROTO_IP, libc::IP_MTU)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    };
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: an open socket for the duration of the call; the pointers
    // describe a live c_int and its length.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    usize::try_from(val).map_err(|_| io::Error::other("negative MTU"))
}

/// The largest frame (UDP payload) a path MTU carries to `to`.
pub fn max_frame_for(to: SocketAddr, mtu: usize) -> usize {
    let overhead = if to.is_ipv4() {
        V4_OVERHEAD
    } else {
        V6_OVERHEAD
    };
    mtu.max(MIN_PATH_MTU) - overhead
}

/// Learned frame limits per peer endpoint.
#[derive(Debug, Default)]
pub struct PathMtus {
    limits: Mutex<HashMap<SocketAddr, usize>>,
}

impl PathMtus {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, usize>> {
        self.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the path MTU to each of `endpoints` (and forgets others).
    pub fn refresh(&self, endpoints: &[SocketAddr]) {
        let mut learned = HashMap::with_capacity(endpoints.len());
        for &to in endpoints {
            match route_mtu(to) {
                Ok(mtu) => {
                    learned.insert(to, max_frame_for(to, mtu));
                }
                Err(e) => log::debug!("path MTU to {to}: {e}"),
            }
        }
        self.update(learned);
    }

    /// Installs learned limits, logging the ones that changed.
    pub fn update(&self, learned: HashMap<SocketAddr, usize>) {
        let mut limits = self.lock();
        for (to, max) in &learned {
            if limits.get(to) != Some(max) {
                log::info!(
                    "path to {to} carries frames of up to {max} bytes (inner packets up to {}); \
                     larger inner packets are answered with ICMP too-big",
                    max.saturating_sub(crate::device::OVERHEAD)
                );
            }
        }
        *limits = learned;
    }

    /// The largest frame the path to `to` carries, if learned.
    pub fn max_frame(&self, to: SocketAddr) -> Option<usize> {
        self.lock().get(&to).copied()
    }

    /// The smallest limit of all paths (frames up to it fit everywhere).
    pub fn floor(&self) -> Option<usize> {
        self.lock().values().copied().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_limits_follow_the_path_mtu() {
        let v4: SocketAddr = "198.18.0.2:51820".parse().expect("addr");
        let v6: SocketAddr = "[fd00::2]:51820".parse().expect("addr");
        assert_eq!(max_frame_for(v4, 1500), 1472);
        assert_eq!(max_frame_for(v4, 1450), 1422);
        assert_eq!(max_frame_for(v6, 1500), 1452);
        assert_eq!(max_frame_for(v4, 100), 576 - 28, "noise is floored");
        let p = PathMtus::default();
        assert_eq!((p.max_frame(v4), p.floor()), (None, None));
        p.update(HashMap::from([(v4, 1422), (v6, 1452)]));
        assert_eq!((p.max_frame(v4), p.floor()), (Some(1422), Some(1422)));
        p.update(HashMap::from([(v6, 1452)]));
        assert_eq!((p.max_frame(v4), p.floor()), (None, Some(1452)));
    }

    #[test]
    fn loopback_has_a_route_mtu() {
        let mtu = route_mtu("127.0.0.1:9".parse().expect("addr")).expect("route MTU");
        assert!(mtu >= 1500, "{mtu}");
    }
}
