//! How many data-path workers `dataplane.workers: auto` runs, decided at
//! daemon start: one per usable CPU, capped by the receive queues of the
//! NIC(s) the tunnel's outer traffic crosses (more workers than RX queues
//! only adds threads contending for what the NIC steers to fewer CPUs), by
//! the CPUs `dataplane.cpus` lists, by the TUN device's queue limit and by
//! [`AUTO_WORKERS_MAX`].
//!
//! [`decide`] is the decision: a pure function of what was found
//! ([`Found`]) giving a count and the reason operators read in the log and
//! in `tunneld status`. [`probe`] finds it, thinly: the kernel's route to
//! each peer's static endpoint (one `RTM_GETROUTE` netlink query each, so
//! policy routing and a source address on another device do not mislead
//! it), or the device owning `listen`'s address on a hub without static
//! endpoints, and each device's `rx-*` queues in sysfs (for a bond, VLAN or
//! bridge, those of the devices below it). Whatever cannot be found (no
//! route, no sysfs, an odd device name) leaves that device uncounted with
//! its reason, never an error.

use crate::config::{usable_cpus, Config, AUTO_WORKERS_MAX};
use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// Most queues a TUN device may have: the kernel's `MAX_TAP_QUEUES`
/// (drivers/net/tun.c); one worker owns one queue.
pub const MAX_TUN_QUEUES: usize = 256;
/// Where the kernel lists network devices (the namespace's, when sysfs was
/// mounted in it, as `ip netns exec` does).
pub const SYS_CLASS_NET: &str = "/sys/class/net";
/// Deepest stack of devices followed through `lower_*` links (a VLAN on a
/// bond on NICs is 2): the kernel's `MAX_NEST_DEV`.
const MAX_NESTING: usize = 8;
/// Longest device name the kernel gives (`IFNAMSIZ` less the NUL).
const MAX_IFNAME: usize = 15;
/// How long one route query may take: the kernel answers at once, so this
/// only bounds a start that would otherwise hang on a broken netlink.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(1);

/// One device the outer traffic crosses, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// Its name, printable (bytes outside printable ASCII escaped).
    pub name: String,
    /// Its receive queues (the most of the devices below it, for a stacked
    /// device), or why they could not be counted.
    pub rx_queues: Result<usize, String>,
}

/// What [`decide`] decides from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Found {
    /// CPUs this process may run on (its affinity mask, or a cgroup quota).
    pub usable_cpus: usize,
    /// How many CPUs `dataplane.cpus` lists, if the workers are pinned.
    pub pinned_cpus: Option<usize>,
    /// The distinct devices the outer traffic leaves by.
    pub nics: Vec<Nic>,
    /// Endpoints (or the listen address) whose device was not found, each
    /// with why.
    pub unplaced: Vec<String>,
}

/// How many workers, and why, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub workers: usize,
    /// E.g. `16 usable CPUs, eth0 has 4 RX queues`.
    pub reason: String,
}

/// The worker count `auto` stands for, given what was found: one per
/// usable CPU, at most the CPUs pinned to, the most RX queues of the
/// devices found (no NIC cap when one of them could not be counted, or
/// none was found), [`MAX_TUN_QUEUES`] and [`AUTO_WORKERS_MAX`]; at least 1.
pub fn decide(f: &Found) -> Decision {
    let cpus = f.usable_cpus.max(1);
    let mut n = cpus;
    let mut why = vec![format!("{cpus} usable CPU{}", plural(cpus))];
    if let Some(p) = f.pinned_cpus {
        n = n.min(p.max(1));
        why.push(format!("dataplane.cpus lists {p}"));
    }
    match nic_cap(f) {
        Ok((cap, text)) => {
            n = n.min(cap);
            why.push(text);
        }
        Err(text) => why.push(format!("no NIC cap: {text}")),
    }
    let cap = AUTO_WORKERS_MAX.min(MAX_TUN_QUEUES);
    if n > cap {
        n = cap;
        why.push(format!("auto runs at most {cap}"));
    }
    Decision {
        workers: n.max(1),
        reason: why.join(", "),
    }
}

/// For an explicit `dataplane.workers`, which is never capped: a note when
/// it is more than the NIC's RX queues (the operator may know better).
pub fn note_explicit(workers: usize, f: &Found) -> Option<String> {
    let (cap, text) = nic_cap(f).ok()?;
    (workers > cap).then(|| {
        format!("dataplane.workers {workers} is more than the NIC's RX queues ({text}); kept")
    })
}

/// The most RX queues over the devices found and the words for it, or why
/// there is no NIC cap.
fn nic_cap(f: &Found) -> Result<(usize, String), String> {
    let mut counted = Vec::with_capacity(f.nics.len());
    for nic in &f.nics {
        match &nic.rx_queues {
            Ok(q) => counted.push((*q, nic.name.as_str())),
            // Its queues may be the most: no cap rather than a wrong one.
            Err(e) => return Err(format!("{}: {e}", nic.name)),
        }
    }
    // Most queues first, then by name, so the words do not depend on the
    // order the peers are listed in.
    counted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let Some(&(most, _)) = counted.first() else {
        return Err(if f.unplaced.is_empty() {
            "no device found for the outer traffic".into()
        } else {
            f.unplaced.join("; ")
        });
    };
    let mut text = counted
        .iter()
        .map(|(q, name)| format!("{name} has {q} RX queue{}", plural(*q)))
        .collect::<Vec<_>>()
        .join(", ");
    if !f.unplaced.is_empty() {
        text.push_str(&format!(
            ", {} endpoint{} on no NIC",
            f.unplaced.len(),
            plural(f.unplaced.len())
        ));
    }
    Ok((most, text))
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Finds what [`decide`] needs for `cfg` on this host: usable CPUs, the
/// devices routing the peers' static endpoints (or owning `listen`'s
/// address when no peer has one), and their RX queues under
/// [`SYS_CLASS_NET`]. What cannot be found is logged and left out.
pub fn probe(cfg: &Config) -> Found {
    probe_with(cfg, usable_cpus(), Path::new(SYS_CLASS_NET), &mut Kernel)
}

/// Where [`probe_with`] finds devices: the kernel, or a fake in tests.
pub trait Lookup {
    /// The device the kernel routes `dst` through.
    fn route(&mut self, dst: SocketAddr) -> Result<Routed, RouteError>;
    /// The device owning local address `ip`, if any (and whether it is a
    /// loopback device).
    fn owner(&mut self, ip: IpAddr) -> io::Result<Option<(Vec<u8>, bool)>>;
}

/// [`probe`] with its inputs given: usable CPUs, the sysfs directory that
/// lists devices, and where routes and addresses are looked up.
pub fn probe_with(cfg: &Config, cpus: usize, sys: &Path, look: &mut dyn Lookup) -> Found {
    let mut found = Found {
        usable_cpus: cpus,
        pinned_cpus: cfg.dataplane.cpus.map(|c| c.as_slice().len()),
        ..Found::default()
    };
    let mut devices: Vec<Vec<u8>> = Vec::new();
    let mut seen: Vec<IpAddr> = Vec::new();
    for p in &cfg.peers {
        let Some(ep) = p.endpoint else { continue };
        if seen.contains(&ep.ip()) {
            continue;
        }
        seen.push(ep.ip());
        let what = format!("peer {} ({ep})", p.name);
        match look.route(ep) {
            Ok(Routed::Device(name)) => devices.push(name),
            Ok(Routed::Local) => found
                .unplaced
                .push(format!("{what}: the endpoint is this host's")),
            Err(e) => {
                log::info!("workers: finding the NIC of {what}: {e}");
                found.unplaced.push(format!("{what}: {e}"));
            }
        }
    }
    if seen.is_empty() {
        let ip = cfg.listen.ip();
        if ip.is_unspecified() {
            found.unplaced.push(format!(
                "no peer has a static endpoint and listen {} is a wildcard address",
                cfg.listen
            ));
        } else {
            let what = format!("listen {}", cfg.listen);
            match look.owner(ip) {
                Ok(Some((_, true))) => found.unplaced.push(format!("{what}: on a loopback device")),
                Ok(Some((name, false))) => devices.push(name),
                Ok(None) => found
                    .unplaced
                    .push(format!("{what}: no device has this address")),
                Err(e) => {
                    log::info!("workers: finding the NIC of {what}: listing addresses: {e}");
                    found.unplaced.push(format!("{what}: {e}"));
                }
            }
        }
    }
    let mut names: Vec<Vec<u8>> = Vec::new();
    for d in devices {
        if !names.contains(&d) {
            names.push(d);
        }
    }
    for name in names {
        let rx_queues = rx_queues(sys, &name, 0);
        if let Err(e) = &rx_queues {
            log::info!("workers: RX queues of {}: {e}", printable(&name));
        }
        found.nics.push(Nic {
            name: printable(&name),
            rx_queues,
        });
    }
    found
}

/// A device name as bytes, printable: `eth0` as is, anything outside
/// printable ASCII escaped (`\xff`), so a log line stays one line.
pub fn printable(name: &[u8]) -> String {
    name.escape_ascii().to_string()
}

/// Whether `name` can be a kernel device name and a path component: 1..=15
/// bytes, no `/`, no NUL, not `.` or `..` (the kernel refuses all of those,
/// so a name with one did not come from it).
fn plain_device_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME
        && !name.contains(&b'/')
        && !name.contains(&0)
        && name != b"."
        && name != b".."
}

/// The RX queues of device `name` under `sys` (`<sys>/<name>/queues/rx-*`);
/// for a device stacked on others (`<sys>/<name>/lower_*`: bond, VLAN,
/// bridge, macvlan), the most over those below it, where they can be
/// counted.
pub fn rx_queues(sys: &Path, name: &[u8], depth: usize) -> Result<usize, String> {
    use std::os::unix::ffi::OsStrExt;
    if !plain_device_name(name) {
        return Err("not a usable device name".into());
    }
    let dir = sys.join(std::ffi::OsStr::from_bytes(name));
    if depth < MAX_NESTING {
        let lower = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .as_bytes()
                    .strip_prefix(b"lower_")
                    .map(<[u8]>::to_vec)
            })
            .filter_map(|l| rx_queues(sys, &l, depth + 1).ok())
            .max();
        if let Some(q) = lower {
            return Ok(q);
        }
    }
    // Named printably: the name may hold any byte but `/` and NUL.
    let shown = format!("{}/{}/queues", sys.display(), printable(name));
    let list = std::fs::read_dir(dir.join("queues")).map_err(|e| format!("{shown}: {e}"))?;
    let n = list
        .flatten()
        .filter(|e| e.file_name().as_bytes().starts_with(b"rx-"))
        .count();
    if n == 0 {
        return Err(format!("{shown}: no rx-* queues listed"));
    }
    Ok(n)
}

/// Where the kernel routes a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// Out of this device (its name, as the kernel gives it).
    Device(Vec<u8>),
    /// To this host (a local address): no NIC is crossed.
    Local,
}

/// Why a route was not found.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The kernel has no route (ENETUNREACH, EHOSTUNREACH, ...).
    #[error("no route: {0}")]
    Kernel(io::Error),
    /// The netlink socket failed.
    #[error("route lookup: {0}")]
    Io(io::Error),
    /// The kernel's answer did not parse.
    #[error("route lookup: malformed answer ({0})")]
    Malformed(&'static str),
    /// A route without an output device (a blackhole, say).
    #[error("the route names no device")]
    NoDevice,
}

/// The route query for `dst` (an `RTM_GETROUTE` request; `oif` pins the
/// device, as an IPv6 link-local endpoint's scope does).
pub fn route_request(dst: IpAddr, oif: Option<u32>, seq: u32) -> Vec<u8> {
    let (family, addr) = match dst {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    // nlmsghdr 16 + rtmsg 12 + RTA_DST (4 + 4|16, 4-aligned) + RTA_OIF 8.
    let len = 16 + 12 + 4 + addr.len() + if oif.is_some() { 8 } else { 0 };
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&libc::RTM_GETROUTE.to_ne_bytes());
    b.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    b.extend_from_slice(&[family, (addr.len() * 8) as u8, 0, 0, 0, 0, 0, 0]);
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&((4 + addr.len()) as u16).to_ne_bytes());
    b.extend_from_slice(&libc::RTA_DST.to_ne_bytes());
    b.extend_from_slice(&addr);
    if let Some(i) = oif {
        b.extend_from_slice(&8u16.to_ne_bytes());
        b.extend_from_slice(&libc::RTA_OIF.to_ne_bytes());
        b.extend_from_slice(&i.to_ne_bytes());
    }
    b
}

/// What the kernel's answer to [`route_request`] `seq` says: the output
/// device's index, or that the destination is local; a netlink error is
/// [`RouteError::Kernel`]. Messages for other sequence numbers are skipped.
pub fn parse_route_reply(buf: &[u8], seq: u32) -> Result<Option<RouteAnswer>, RouteError> {
    let u16_at = |b: &[u8], i: usize| b.get(i..i + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]));
    let u32_at = |b: &[u8], i: usize| {
        b.get(i..i + 4)
            .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
    };
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32_at(buf, at).ok_or(RouteError::Malformed("header"))? as usize;
        let kind = u16_at(buf, at + 4).ok_or(RouteError::Malformed("header"))?;
        let this_seq = u32_at(buf, at + 8).ok_or(RouteError::Malformed("header"))?;
        if len < 16 || at + len > buf.len() {
            return Err(RouteError::Malformed("message length"));
        }
        let msg = &buf[at..at + len];
        at += (len + 3) & !3;
        if this_seq != seq {
            continue;
        }
        if kind == libc::NLMSG_ERROR as u16 {
            let err = u32_at(msg, 16).ok_or(RouteError::Malformed("error message"))? as i32;
            if err == 0 {
                continue; // an acknowledgement
            }
            return Err(RouteError::Kernel(io::Error::from_raw_os_error(
                err.saturating_neg(),
            )));
        }
        if kind != libc::RTM_NEWROUTE {
            continue;
        }
        let rtm_type = *msg.get(16 + 7).ok_or(RouteError::Malformed("route"))?;
        let mut oif = None;
        let mut a = 16 + 12;
        while a + 4 <= msg.len() {
            let alen = usize::from(u16_at(msg, a).ok_or(RouteError::Malformed("attribute"))?);
            let akind = u16_at(msg, a + 2).ok_or(RouteError::Malformed("attribute"))?;
            if alen < 4 || a + alen > msg.len() {
                return Err(RouteError::Malformed("attribute length"));
            }
            if akind == libc::RTA_OIF && alen == 8 {
                oif = u32_at(msg, a + 4);
            }
            a += (alen + 3) & !3;
        }
        return Ok(Some(RouteAnswer {
            local: rtm_type == libc::RTN_LOCAL,
            oif,
        }));
    }
    Ok(None)
}

/// The parts of an `RTM_NEWROUTE` answer [`probe`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteAnswer {
    /// The destination is one of this host's addresses.
    pub local: bool,
    /// The output device's index.
    pub oif: Option<u32>,
}

/// The kernel: routes over netlink, addresses from `getifaddrs`.
struct Kernel;

impl Lookup for Kernel {
    fn route(&mut self, dst: SocketAddr) -> Result<Routed, RouteError> {
        let scope = match dst {
            SocketAddr::V6(a) if a.scope_id() != 0 => Some(a.scope_id()),
            _ => None,
        };
        let answer = route_query(dst.ip(), scope)?;
        if answer.local {
            return Ok(Routed::Local);
        }
        let oif = answer.oif.ok_or(RouteError::NoDevice)?;
        let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
        // SAFETY: `name` has the IF_NAMESIZE bytes if_indextoname writes.
        let p = unsafe { libc::if_indextoname(oif, name.as_mut_ptr()) };
        if p.is_null() {
            return Err(RouteError::Io(io::Error::last_os_error()));
        }
        // SAFETY: if_indextoname wrote a NUL-terminated name into `name`.
        let name = unsafe { CStr::from_ptr(name.as_ptr()) };
        Ok(Routed::Device(name.to_bytes().to_vec()))
    }

    fn owner(&mut self, ip: IpAddr) -> io::Result<Option<(Vec<u8>, bool)>> {
        address_owner(ip)
    }
}

/// One `RTM_GETROUTE` for `dst` on a fresh netlink socket.
fn route_query(dst: IpAddr, oif: Option<u32>) -> Result<RouteAnswer, RouteError> {
    let io = RouteError::Io;
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: ROUTE_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: `tv` is a timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io(io::Error::last_os_error()));
    }
    let seq = 1;
    let req = route_request(dst, oif, seq);
    // SAFETY: zeroed sockaddr_nl is the kernel's address (pid 0, no groups).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `req` and `kernel` are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io(io::Error::last_os_error()));
    }
    let mut buf = vec![0u8; 8192];
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io(io::Error::last_os_error()));
        }
        if n == 0 {
            return Err(RouteError::Malformed("netlink socket closed"));
        }
        if let Some(a) = parse_route_reply(&buf[..n as usize], seq)? {
            return Ok(a);
        }
    }
}

/// The device holding local address `ip` (its name, and whether it is a
/// loopback device), from `getifaddrs`.
fn address_owner(ip: IpAddr) -> io::Result<Option<(Vec<u8>, bool)>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = None;
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr of the family it names.
        let addr = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let a = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                    IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes())
                }
                libc::AF_INET6 => {
                    let a = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                    IpAddr::from(a.sin6_addr.s6_addr)
                }
                _ => continue,
            }
        };
        if addr == ip {
            // SAFETY: ifa_name is a NUL-terminated string.
            let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
            let loopback = ifa.ifa_flags & libc::IFF_LOOPBACK as libc::c_uint != 0;
            found = Some((name.to_bytes().to_vec(), loopback));
            break;
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

#[cfg(test)]
#[path = "workers_tests.rs"]
mod tests;
