//! `workers: auto`: the decision's numbers and words, the sysfs count on a
//! fake tree (stacked devices, odd names, missing directories), the probe
//! with a fake kernel (unroutable endpoints, a hub without endpoints), the
//! netlink route messages, and two lookups on the real kernel's loopback.

use super::*;
use crate::config::{CpuList, Workers};
use crate::keys::tests::TempDir;
use crate::testkit;
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;

fn nic(name: &str, q: usize) -> Nic {
    Nic {
        name: name.into(),
        rx_queues: Ok(q),
    }
}

fn found(cpus: usize, nics: Vec<Nic>) -> Found {
    Found {
        usable_cpus: cpus,
        nics,
        ..Found::default()
    }
}

#[test]
fn auto_is_cpus_capped_by_the_nic_queues() {
    let d = decide(&found(16, vec![nic("eth0", 4)]));
    assert_eq!(d.workers, 4);
    assert_eq!(d.reason, "16 usable CPUs, eth0 has 4 RX queues");

    let d = decide(&found(2, vec![nic("eth0", 8)]));
    assert_eq!(d.workers, 2);
    assert_eq!(d.reason, "2 usable CPUs, eth0 has 8 RX queues");

    // Several devices: the most queues caps, listed most first.
    let d = decide(&found(16, vec![nic("eth1", 2), nic("eth0", 6)]));
    assert_eq!(d.workers, 6);
    assert_eq!(
        d.reason,
        "16 usable CPUs, eth0 has 6 RX queues, eth1 has 2 RX queues"
    );

    let d = decide(&found(1, vec![nic("eth0", 1)]));
    assert_eq!(
        (d.workers, d.reason.as_str()),
        (1, "1 usable CPU, eth0 has 1 RX queue")
    );
}

#[test]
fn without_a_nic_auto_is_cpus_capped_at_the_auto_maximum() {
    let mut f = found(8, vec![]);
    f.unplaced =
        vec!["no peer has a static endpoint and listen 0.0.0.0:51820 is a wildcard address".into()];
    let d = decide(&f);
    assert_eq!(d.workers, 8);
    assert_eq!(
        d.reason,
        "8 usable CPUs, no NIC cap: no peer has a static endpoint and listen \
         0.0.0.0:51820 is a wildcard address"
    );
    f.usable_cpus = 64;
    let d = decide(&f);
    assert_eq!(d.workers, AUTO_WORKERS_MAX);
    assert!(d.reason.ends_with(", auto runs at most 16"), "{}", d.reason);
    // A NIC with more queues than the maximum does not lift it.
    let d = decide(&found(96, vec![nic("eth0", 64)]));
    assert_eq!(d.workers, 16);
    assert_eq!(
        d.reason,
        "96 usable CPUs, eth0 has 64 RX queues, auto runs at most 16"
    );
    let d = decide(&Found::default());
    assert_eq!(d.workers, 1, "no CPU count read: at least one");
    assert_eq!(
        d.reason,
        "1 usable CPU, no NIC cap: no device found for the outer traffic"
    );
}

#[test]
fn a_nic_whose_queues_are_unknown_lifts_the_cap_and_says_why() {
    let bad = Nic {
        name: "eth1".into(),
        rx_queues: Err("/sys/class/net/eth1/queues: No such file or directory".into()),
    };
    let d = decide(&found(12, vec![nic("eth0", 2), bad]));
    assert_eq!(d.workers, 12);
    assert_eq!(
        d.reason,
        "12 usable CPUs, no NIC cap: eth1: /sys/class/net/eth1/queues: No such file or directory"
    );
    // Unplaced endpoints beside a counted device: the device caps.
    let mut f = found(8, vec![nic("eth0", 2)]);
    f.unplaced = vec!["peer c (198.19.9.9:51820): no route".into()];
    let d = decide(&f);
    assert_eq!(d.workers, 2);
    assert_eq!(
        d.reason,
        "8 usable CPUs, eth0 has 2 RX queues, 1 endpoint on no NIC"
    );
}

#[test]
fn pinned_cpus_cap_auto() {
    let mut f = found(16, vec![nic("eth0", 8)]);
    f.pinned_cpus = Some(3);
    let d = decide(&f);
    assert_eq!(d.workers, 3);
    assert_eq!(
        d.reason,
        "16 usable CPUs, dataplane.cpus lists 3, eth0 has 8 RX queues"
    );
    f.pinned_cpus = Some(1);
    assert_eq!(decide(&f).workers, 1, "[c]: every worker on one CPU");
}

#[test]
fn an_explicit_count_is_noted_only_past_the_nic_queues() {
    let f = found(16, vec![nic("eth0", 4)]);
    assert_eq!(note_explicit(4, &f), None);
    assert_eq!(
        note_explicit(8, &f).as_deref(),
        Some("dataplane.workers 8 is more than the NIC's RX queues (eth0 has 4 RX queues); kept")
    );
    assert_eq!(note_explicit(64, &found(2, vec![])), None, "no NIC known");
}

/// A fake `/sys/class/net`: each device with its RX and TX queues and the
/// devices below it.
fn sysfs(devs: &[(&[u8], usize, &[&str])]) -> TempDir {
    let dir = TempDir::new("sysnet");
    for (name, rx, lower) in devs {
        let d = dir.0.join(std::ffi::OsStr::from_bytes(name));
        for i in 0..*rx {
            std::fs::create_dir_all(d.join(format!("queues/rx-{i}"))).expect("rx");
            std::fs::create_dir_all(d.join(format!("queues/tx-{i}"))).expect("tx");
        }
        std::fs::create_dir_all(d.join("queues")).expect("queues");
        for l in *lower {
            std::os::unix::fs::symlink(format!("../{l}"), d.join(format!("lower_{l}")))
                .expect("lower link");
        }
    }
    dir
}

#[test]
fn rx_queues_are_counted_and_stacked_devices_use_those_below() {
    let sys = sysfs(&[
        (b"eth0", 4, &[]),
        (b"eth1", 2, &[]),
        (b"bond0", 1, &["eth0", "eth1"]),
        (b"bond0.100", 1, &["bond0"]),
        (b"br0", 1, &["gone"]),
        (b"none", 0, &[]),
        (b"e\xffth", 3, &[]),
        // A loop cannot come from the kernel; it must still end.
        (b"la", 2, &["lb"]),
        (b"lb", 5, &["la"]),
    ]);
    // A bond over the oddly named device (sysfs lists it byte for byte).
    std::fs::create_dir_all(sys.0.join("bond2/queues/rx-0")).expect("bond2");
    std::os::unix::fs::symlink(
        std::ffi::OsStr::from_bytes(b"../e\xffth"),
        sys.0
            .join(std::ffi::OsStr::from_bytes(b"bond2/lower_e\xffth")),
    )
    .expect("odd lower link");
    let q = |n: &[u8]| rx_queues(&sys.0, n, 0);
    assert_eq!(q(b"bond2"), Ok(3), "through the odd name");
    assert_eq!(q(b"eth0"), Ok(4));
    assert_eq!(q(b"bond0"), Ok(4), "the most of its slaves");
    assert_eq!(q(b"bond0.100"), Ok(4), "a VLAN on the bond");
    assert_eq!(q(b"br0"), Ok(1), "no countable lower device: its own");
    assert_eq!(q(b"e\xffth"), Ok(3), "an odd but possible name");
    assert!(matches!(q(b"la"), Ok(2 | 5)), "{:?}", q(b"la"));
    let e = q(b"none").expect_err("no rx-*");
    assert!(e.ends_with("none/queues: no rx-* queues listed"), "{e}");
    let e = q(b"eth9").expect_err("missing");
    assert!(e.contains("eth9/queues: No such file"), "{e}");
    for bad in [
        &b""[..],
        b".",
        b"..",
        b"../eth0",
        b"a/b",
        b"e\0th",
        b"sixteen-bytes-xx",
    ] {
        assert_eq!(
            q(bad),
            Err("not a usable device name".into()),
            "{}",
            printable(bad)
        );
    }
    // No sysfs at all.
    let e = rx_queues(Path::new("/nonexistent/sys/class/net"), b"eth0", 0).expect_err("no /sys");
    assert!(e.contains("No such file"), "{e}");
    assert_eq!(printable(b"e\xffth\n"), "e\\xffth\\n");
}

/// A kernel with fixed routes and addresses.
#[derive(Default)]
struct FakeKernel {
    routes: HashMap<IpAddr, Result<Routed, i32>>,
    owners: HashMap<IpAddr, (Vec<u8>, bool)>,
    asked: Vec<IpAddr>,
}

impl Lookup for FakeKernel {
    fn route(&mut self, dst: SocketAddr) -> Result<Routed, RouteError> {
        self.asked.push(dst.ip());
        match self.routes.get(&dst.ip()) {
            Some(Ok(r)) => Ok(r.clone()),
            Some(Err(errno)) => Err(RouteError::Kernel(io::Error::from_raw_os_error(*errno))),
            None => Err(RouteError::NoDevice),
        }
    }

    fn owner(&mut self, ip: IpAddr) -> io::Result<Option<(Vec<u8>, bool)>> {
        Ok(self.owners.get(&ip).cloned())
    }
}

/// Asserts `d` is `workers` for a reason starting with `prefix`.
fn assert_starts(d: &Decision, workers: usize, prefix: &str) {
    assert_eq!(d.workers, workers, "{}", d.reason);
    assert!(d.reason.starts_with(prefix), "{}", d.reason);
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// Gateway 1 with peers at `endpoints` (`None`: no static endpoint).
fn gateway(endpoints: &[Option<&str>]) -> Config {
    let mut cfg = testkit::config(1, 2, None, &["198.19.2.0/24"]);
    let proto = cfg.peers[0].clone();
    cfg.peers = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut p = proto.clone();
            p.name = format!("p{i}");
            p.endpoint = e.map(addr);
            p
        })
        .collect();
    cfg.dataplane.workers = Workers::Auto;
    cfg
}

#[test]
fn the_peers_routes_find_the_nic_and_unroutable_endpoints_are_counted() {
    let sys = sysfs(&[(b"eth0", 4, &[]), (b"eth1", 2, &[])]);
    let mut k = FakeKernel::default();
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    k.routes
        .insert(ip("198.18.0.2"), Ok(Routed::Device(b"eth1".to_vec())));
    k.routes
        .insert(ip("198.18.0.3"), Ok(Routed::Device(b"eth0".to_vec())));
    k.routes.insert(ip("198.19.9.9"), Err(libc::ENETUNREACH));
    let cfg = gateway(&[
        Some("198.18.0.2:51820"),
        Some("198.18.0.3:51820"),
        Some("198.19.9.9:51820"),
        Some("198.18.0.2:51821"), // the same host: one lookup
        None,
    ]);
    let f = probe_with(&cfg, 16, &sys.0, &mut k);
    assert_eq!(k.asked.len(), 3, "{:?}", k.asked);
    assert_eq!(f.nics, vec![nic("eth1", 2), nic("eth0", 4)]);
    assert_eq!(f.unplaced.len(), 1);
    assert!(
        f.unplaced[0].starts_with("peer p2 (198.19.9.9:51820): no route: Network is unreachable"),
        "{:?}",
        f.unplaced
    );
    let d = decide(&f);
    assert_eq!(d.workers, 4);
    assert_eq!(
        d.reason,
        "16 usable CPUs, eth0 has 4 RX queues, eth1 has 2 RX queues, 1 endpoint on no NIC"
    );

    // Every endpoint unroutable: no cap, and the words say why.
    let cfg = gateway(&[Some("198.19.9.9:51820")]);
    assert_starts(
        &decide(&probe_with(&cfg, 6, &sys.0, &mut k)),
        6,
        "6 usable CPUs, no NIC cap: peer p0 (198.19.9.9:51820): no route: Network is unreachable",
    );
}

#[test]
fn a_device_name_that_sysfs_does_not_list_is_no_cap_and_stays_one_line() {
    let sys = sysfs(&[(b"eth0", 4, &[])]);
    let mut k = FakeKernel::default();
    k.routes.insert(
        "198.18.0.2".parse().expect("ip"),
        Ok(Routed::Device(b"ev\nil\xfe".to_vec())),
    );
    let cfg = gateway(&[Some("198.18.0.2:51820")]);
    let d = decide(&probe_with(&cfg, 4, &sys.0, &mut k));
    assert_starts(&d, 4, "4 usable CPUs, no NIC cap: ev\\nil\\xfe: ");
    assert!(!d.reason.contains('\n'));
    // And with no /sys at all.
    k.routes.insert(
        "198.18.0.2".parse().expect("ip"),
        Ok(Routed::Device(b"eth0".to_vec())),
    );
    assert_starts(
        &decide(&probe_with(&cfg, 4, Path::new("/nonexistent"), &mut k)),
        4,
        "4 usable CPUs, no NIC cap: eth0: /nonexistent/eth0/queues:",
    );
}

#[test]
fn a_hub_without_endpoints_uses_the_listen_device_when_specific() {
    let sys = sysfs(&[(b"eth0", 2, &[])]);
    let mut k = FakeKernel::default();
    k.owners
        .insert("198.18.0.1".parse().expect("ip"), (b"eth0".to_vec(), false));
    k.owners
        .insert("127.0.0.1".parse().expect("ip"), (b"lo".to_vec(), true));
    let mut cfg = gateway(&[None, None]);
    let d = decide(&probe_with(&cfg, 8, &sys.0, &mut k));
    assert_eq!(
        (d.workers, d.reason.as_str()),
        (2, "8 usable CPUs, eth0 has 2 RX queues")
    );
    assert!(k.asked.is_empty(), "no route lookups without endpoints");

    cfg.listen = addr("0.0.0.0:51820");
    let d = decide(&probe_with(&cfg, 8, &sys.0, &mut k));
    assert_eq!(d.workers, 8);
    assert_eq!(
        d.reason,
        "8 usable CPUs, no NIC cap: no peer has a static endpoint and listen \
         0.0.0.0:51820 is a wildcard address"
    );
    cfg.listen = addr("127.0.0.1:51820");
    let d = decide(&probe_with(&cfg, 8, &sys.0, &mut k));
    assert_eq!(d.workers, 8);
    assert!(d.reason.ends_with("on a loopback device"), "{}", d.reason);
    cfg.listen = addr("198.18.7.7:51820");
    let d = decide(&probe_with(&cfg, 8, &sys.0, &mut k));
    assert!(
        d.reason.ends_with("no device has this address"),
        "{}",
        d.reason
    );

    // A pinned config counts its CPUs.
    cfg.listen = addr("198.18.0.1:51820");
    cfg.dataplane.cpus = Some(CpuList::new(&[0]));
    assert_eq!(decide(&probe_with(&cfg, 8, &sys.0, &mut k)).workers, 1);
}

/// An `RTM_NEWROUTE` answer of `seq`: route type `rtm_type`, output device
/// `oif` if any.
fn newroute(seq: u32, rtm_type: u8, oif: Option<u32>) -> Vec<u8> {
    let len = 16 + 12 + 8 + if oif.is_some() { 8 } else { 0 };
    let mut b = Vec::new();
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&libc::RTM_NEWROUTE.to_ne_bytes());
    b.extend_from_slice(&0u16.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&[libc::AF_INET as u8, 32, 0, 0, 254, 0, 0, rtm_type]);
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&8u16.to_ne_bytes());
    b.extend_from_slice(&libc::RTA_DST.to_ne_bytes());
    b.extend_from_slice(&[198, 18, 0, 2]);
    if let Some(i) = oif {
        b.extend_from_slice(&8u16.to_ne_bytes());
        b.extend_from_slice(&libc::RTA_OIF.to_ne_bytes());
        b.extend_from_slice(&i.to_ne_bytes());
    }
    b
}

fn nlerror(seq: u32, err: i32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&36u32.to_ne_bytes());
    b.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
    b.extend_from_slice(&0u16.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&err.to_ne_bytes());
    b.extend_from_slice(&[0; 16]); // the start of the request
    b
}

#[test]
fn route_messages_are_built_and_read_and_bad_ones_refused() {
    let req = route_request("198.18.0.2".parse().expect("ip"), None, 7);
    assert_eq!(req.len(), 36);
    assert_eq!(&req[0..4], &36u32.to_ne_bytes());
    assert_eq!(&req[4..6], &libc::RTM_GETROUTE.to_ne_bytes());
    assert_eq!(&req[8..12], &7u32.to_ne_bytes());
    assert_eq!(&req[16..18], &[libc::AF_INET as u8, 32]);
    assert_eq!(&req[32..36], &[198, 18, 0, 2]);
    let req6 = route_request("fe80::1".parse().expect("ip"), Some(3), 1);
    assert_eq!(req6.len(), 16 + 12 + 20 + 8);
    assert_eq!(&req6[16..18], &[libc::AF_INET6 as u8, 128]);
    assert_eq!(&req6[52..56], &3u32.to_ne_bytes());

    let unicast = libc::RTN_UNICAST;
    assert_eq!(
        parse_route_reply(&newroute(7, unicast, Some(5)), 7).expect("route"),
        Some(RouteAnswer {
            local: false,
            oif: Some(5)
        })
    );
    assert_eq!(
        parse_route_reply(&newroute(7, libc::RTN_LOCAL, Some(1)), 7).expect("local"),
        Some(RouteAnswer {
            local: true,
            oif: Some(1)
        })
    );
    // Another request's answer is skipped; this one follows it.
    let mut two = newroute(6, unicast, Some(9));
    two.extend(newroute(7, unicast, Some(5)));
    assert_eq!(
        parse_route_reply(&two, 7)
            .expect("second")
            .and_then(|a| a.oif),
        Some(5)
    );
    assert_eq!(
        parse_route_reply(&newroute(6, unicast, Some(9)), 7).expect("other"),
        None
    );
    match parse_route_reply(&nlerror(7, -libc::ENETUNREACH), 7) {
        Err(RouteError::Kernel(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENETUNREACH)),
        other => panic!("{other:?}"),
    }
    assert_eq!(parse_route_reply(&nlerror(7, 0), 7).expect("ack"), None);
    assert!(parse_route_reply(&[], 7).expect("empty").is_none());

    // Lengths that overrun the buffer or each other.
    let good = newroute(7, unicast, Some(5));
    for cut in [17, 30, good.len() - 1] {
        assert!(
            matches!(
                parse_route_reply(&good[..cut], 7),
                Err(RouteError::Malformed(_))
            ),
            "cut at {cut}"
        );
    }
    let mut short = good.clone();
    short[0..4].copy_from_slice(&8u32.to_ne_bytes());
    assert!(matches!(
        parse_route_reply(&short, 7),
        Err(RouteError::Malformed(_))
    ));
    let mut attr = good.clone();
    attr[28..30].copy_from_slice(&200u16.to_ne_bytes());
    assert!(matches!(
        parse_route_reply(&attr, 7),
        Err(RouteError::Malformed(_))
    ));
    let mut tiny = good;
    tiny[28..30].copy_from_slice(&2u16.to_ne_bytes());
    assert!(matches!(
        parse_route_reply(&tiny, 7),
        Err(RouteError::Malformed(_))
    ));
    // A route without a device reads as such.
    assert_eq!(
        parse_route_reply(&newroute(7, unicast, None), 7).expect("no oif"),
        Some(RouteAnswer {
            local: false,
            oif: None
        })
    );
}

#[test]
fn the_kernel_routes_loopback_locally_and_lo_owns_127_0_0_1() {
    let mut k = Kernel;
    assert_eq!(
        k.route(addr("127.0.0.1:51820"))
            .expect("route to 127.0.0.1"),
        Routed::Local
    );
    assert_eq!(
        k.owner("127.0.0.1".parse().expect("ip"))
            .expect("getifaddrs"),
        Some((b"lo".to_vec(), true))
    );
    // The documentation range is never ours.
    assert_eq!(
        k.owner("192.0.2.77".parse().expect("ip"))
            .expect("getifaddrs"),
        None
    );
}
