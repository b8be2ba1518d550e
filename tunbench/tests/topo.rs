//! Root tests of `tunbench::topo`: real namespaces, veths, pings, processes.
//! Without root they print a skip reason, except with CI=true where missing
//! privileges fail the test.

use std::net::UdpSocket;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use tunbench::topo::{self, dc_pair, Lab, TopoError};

/// Tests that create labs hold this for reading; the stale-cleanup test holds
/// it for writing so no concurrent `Lab::new` removes its fake leftover first.
static LABS: RwLock<()> = RwLock::new(());

fn privileged() -> Option<RwLockReadGuard<'static, ()>> {
    if let Err(e) = topo::check_privileges() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but cannot run namespace tests: {e}");
        }
        eprintln!("skipping: {e}");
        return None;
    }
    Some(LABS.read().unwrap_or_else(|e| e.into_inner()))
}

fn ns_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

fn pings(lab: &Lab, ns: &str, dst: &str) -> bool {
    // A few tries: the first one may wait for neighbour resolution.
    (0..3).any(|_| {
        lab.exec(ns, "ping", &["-c1", "-W1", "-n", dst])
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

fn wait_for_log(lab: &Lab, pid: u32, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.log(pid).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in log: {}",
            lab.log(pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check_dc_pair(with_wan: bool) {
    let Some(_g) = privileged() else { return };
    let dc = dc_pair("topo-test", with_wan).expect("dc_pair builds");
    let names = dc.namespaces();
    assert_eq!(names.len(), if with_wan { 5 } else { 4 });
    assert_eq!(dc.wan.is_some(), with_wan);
    for n in &names {
        assert!(n.starts_with(dc.lab.prefix()), "{n} carries the prefix");
        assert!(ns_exists(n), "{n} exists");
    }
    let lab = &dc.lab;
    // Underlay works, both families, and LAN-local hops work.
    assert!(pings(lab, &dc.gw_a, "198.18.0.2"), "underlay v4");
    assert!(pings(lab, &dc.gw_a, "fd00::2"), "underlay v6");
    assert!(pings(lab, &dc.host_a, "198.18.1.1"), "LAN A v4");
    assert!(pings(lab, &dc.host_b, "fd00:2::1"), "LAN B v6");
    // No LAN↔LAN path until something provides one.
    assert!(
        !pings(lab, &dc.host_a, "198.18.2.2"),
        "LANs must not be routed yet"
    );
    let routes = lab.ip(&dc.gw_a, &["route", "show"]).expect("routes");
    assert!(
        !routes.contains("198.18.2.0/24"),
        "no LAN B route: {routes}"
    );

    dc.route_lans_directly().expect("raw routes");
    dc.route_lans_directly().expect("idempotent");
    assert!(pings(lab, &dc.host_a, "198.18.2.2"), "host-a → host-b v4");
    assert!(pings(lab, &dc.host_a, "fd00:2::2"), "host-a → host-b v6");
    assert!(pings(lab, &dc.host_b, "198.18.1.2"), "host-b → host-a v4");
    if let Some((pa, pb, br)) = dc.wan_ifaces() {
        let wan = dc.wan.as_deref().expect("wan ns");
        let links = lab
            .ip(wan, &["-o", "link", "show", "master", &br])
            .expect("bridge ports");
        assert!(links.contains(&pa) && links.contains(&pb), "{links}");
    }
    let dir = lab.dir().to_path_buf();
    drop(dc);
    for n in &names {
        assert!(!ns_exists(n), "{n} must be gone after drop");
    }
    if std::env::var_os(topo::KEEP_LOGS_ENV).is_none() {
        assert!(!dir.exists(), "{} removed", dir.display());
    }
}

#[test]
fn dc_pair_with_wan_routes_and_cleans_up() {
    check_dc_pair(true);
}

#[test]
fn dc_pair_without_wan_routes_and_cleans_up() {
    check_dc_pair(false);
}

#[test]
fn panic_inside_run_in_still_cleans_up() {
    let Some(_g) = privileged() else { return };
    let mut seen: Vec<String> = Vec::new();
    let mut pid = 0;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::new("panic").expect("lab");
        let a = lab.add_ns("a").expect("ns");
        seen.push(a.clone());
        let mut cmd = Command::new("sleep");
        cmd.arg("60");
        pid = lab.spawn(&a, cmd).expect("spawn");
        lab.run_in(&a, || panic!("boom inside the namespace"))
            .expect("unreachable");
    }));
    let err = result.expect_err("the panic propagates");
    let msg = err
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .unwrap_or_default();
    assert_eq!(msg, "boom inside the namespace");
    assert_eq!(seen.len(), 1);
    assert!(!ns_exists(&seen[0]), "namespace removed during unwind");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "sleep {pid} killed and reaped"
    );
}

#[test]
fn cleanup_stale_removes_only_dead_owners() {
    if privileged().is_none() {
        return;
    }
    let _w = LABS.write().unwrap_or_else(|e| e.into_inner());
    // A PID that is certainly dead: a child we started and reaped.
    let mut child = Command::new("true").spawn().expect("true");
    let dead = child.id();
    child.wait().expect("reap");
    let mut live = Command::new("sleep").arg("60").spawn().expect("sleep");
    let stale = format!("tb{dead}x1-stale");
    let alive = format!("tb{}x1-alive", live.id());
    let foreign = format!("tb{dead}y1-foreign");
    for n in [&stale, &alive, &foreign] {
        let st = Command::new("ip")
            .args(["netns", "add", n])
            .status()
            .expect("ip");
        assert!(st.success(), "ip netns add {n}");
    }
    // A process left running inside the stale namespace.
    let mut inside = Command::new("ip")
        .args(["netns", "exec", &stale, "sleep", "60"])
        .spawn()
        .expect("sleep in stale ns");
    std::thread::sleep(Duration::from_millis(200));

    let removed = topo::cleanup_stale().expect("cleanup_stale");
    let stale_gone = !ns_exists(&stale);
    let alive_kept = ns_exists(&alive);
    let foreign_kept = ns_exists(&foreign);
    let inside_status = inside.wait().expect("reap");
    for n in [&alive, &foreign] {
        let _ = Command::new("ip").args(["netns", "del", n]).status();
    }
    let _ = live.kill();
    let _ = live.wait();
    if ns_exists(&stale) {
        let _ = Command::new("ip").args(["netns", "del", &stale]).status();
    }

    assert!(removed.contains(&stale), "{removed:?} lists {stale}");
    assert!(stale_gone, "{stale} deleted");
    assert!(alive_kept, "{alive} (live owner) kept");
    assert!(foreign_kept, "{foreign} (not our scheme) kept");
    assert!(!removed.contains(&alive) && !removed.contains(&foreign));
    assert_eq!(
        inside_status.signal(),
        Some(libc::SIGKILL),
        "process inside killed"
    );
}

#[test]
fn spawn_log_stop_and_escalation() {
    let Some(_g) = privileged() else { return };
    let lab = Lab::new("spawn").expect("lab");
    let a = lab.add_ns("a").expect("ns");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo hello-$GREETING; ip -o link show; exec sleep 60"])
        .env("GREETING", "ns");
    let pid = lab.spawn(&a, cmd).expect("spawn");
    wait_for_log(&lab, pid, "hello-ns");
    wait_for_log(&lab, pid, "lo:");
    let log = lab.log(pid);
    assert!(
        !log.contains("eth0"),
        "runs inside the namespace, not the host: {log}"
    );
    assert_eq!(lab.try_wait(pid).expect("known"), None);
    let st = lab.stop(pid).expect("stop");
    assert_eq!(st.signal(), Some(libc::SIGTERM));
    assert!(matches!(lab.stop(pid), Err(TopoError::UnknownProcess(p)) if p == pid));
    assert!(lab.log(pid).contains("hello-ns"), "log survives stop");

    // A process that ignores SIGTERM gets SIGKILL after the grace period.
    let mut stubborn = Command::new("sh");
    stubborn.args(["-c", "trap '' TERM; echo ready; while :; do sleep 1; done"]);
    let pid = lab.spawn(&a, stubborn).expect("spawn");
    wait_for_log(&lab, pid, "ready");
    let st = lab.stop(pid).expect("stop");
    assert_eq!(st.signal(), Some(libc::SIGKILL));

    // Exited processes are reported, not signalled.
    let mut quick = Command::new("sh");
    quick.args(["-c", "exit 3"]);
    let pid = lab.spawn(&a, quick).expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.try_wait(pid).expect("known").is_none() {
        assert!(Instant::now() < deadline, "sh -c 'exit 3' did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(lab.stop(pid).expect("stop").code(), Some(3));
}

#[test]
fn run_in_sockets_live_in_the_namespace() {
    let Some(_g) = privileged() else { return };
    let lab = Lab::new("run-in").expect("lab");
    let a = lab.add_ns("a").expect("ns a");
    let b = lab.add_ns("b").expect("ns b");
    lab.link(&a, "ve0", &b, "ve0").expect("veth");
    lab.ip(&a, &["addr", "add", "198.18.0.1/24", "dev", "ve0"])
        .expect("addr a");
    lab.ip(&b, &["addr", "add", "198.18.0.2/24", "dev", "ve0"])
        .expect("addr b");

    // The host namespace does not have the address; the namespace does.
    assert!(
        UdpSocket::bind("198.18.0.1:0").is_err(),
        "host must not own 198.18.0.1"
    );
    let sa = lab
        .run_in(&a, || UdpSocket::bind("198.18.0.1:0"))
        .expect("run_in")
        .expect("bind in ns a");
    let sb = lab
        .run_in(&b, || UdpSocket::bind("198.18.0.2:0"))
        .expect("run_in")
        .expect("bind in ns b");
    // Sockets keep their namespace after leaving the thread.
    sb.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    sa.send_to(b"over-the-veth", sb.local_addr().expect("addr"))
        .expect("send");
    let mut buf = [0u8; 64];
    let (n, from) = sb.recv_from(&mut buf).expect("datagram crosses the veth");
    assert_eq!(&buf[..n], b"over-the-veth");
    assert_eq!(from, sa.local_addr().expect("addr"));
    // Borrowing closures work (scoped thread).
    let local = String::from("borrowed");
    let len = lab.run_in(&a, || local.len()).expect("run_in");
    assert_eq!(len, 8);
}

#[test]
fn sysctl_applies_inside_one_namespace_only() {
    let Some(_g) = privileged() else { return };
    let lab = Lab::new("sysctl").expect("lab");
    let a = lab.add_ns("a").expect("ns a");
    let b = lab.add_ns("b").expect("ns b");
    let read = |ns: &str| {
        let out = lab
            .exec(ns, "cat", &["/proc/sys/net/ipv4/ip_forward"])
            .expect("cat");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(read(&a), "0");
    lab.sysctl(&a, "net.ipv4.ip_forward", "1").expect("sysctl");
    assert_eq!(read(&a), "1");
    assert_eq!(read(&b), "0", "other namespace untouched");
    assert!(lab.sysctl(&a, "../../etc/passwd", "x").is_err());
    assert!(lab.sysctl(&a, "net.ipv4.no_such_knob", "1").is_err());
}

#[test]
fn errors_are_specific() {
    let Some(_g) = privileged() else { return };
    let lab = Lab::new("errors").expect("lab");
    let a = lab.add_ns("a").expect("ns");
    let err = lab
        .ip(&a, &["addr", "add", "not-an-address", "dev", "lo"])
        .expect_err("bad address");
    let text = err.to_string();
    assert!(text.contains("addr add not-an-address dev lo"), "{text}");
    match &err {
        TopoError::Ip { stderr, .. } => assert!(!stderr.is_empty(), "stderr captured"),
        other => panic!("expected Ip error, got {other:?}"),
    }
    assert!(matches!(
        lab.add_ns("a"),
        Err(TopoError::DuplicateNamespace(_))
    ));
    assert!(matches!(
        lab.ip("not-ours", &["link"]),
        Err(TopoError::UnknownNamespace(_))
    ));
    assert!(matches!(
        lab.link(&a, "much-too-long-name0", &a, "x"),
        Err(TopoError::InvalidName { .. })
    ));
    assert!(matches!(lab.stop(1), Err(TopoError::UnknownProcess(1))));
    assert!(lab.log(1).contains("no process 1"));
    // Generated names fit and carry the prefix.
    let br = lab.ifname("br").expect("fits");
    assert!(br.starts_with(lab.prefix()) && br.len() <= topo::IFNAME_MAX);
}

/// Child half of `sigterm_tears_down_live_labs`: only acts when re-executed
/// with TOPO_SIGNAL_CHILD=1.
#[test]
fn signal_child() {
    if std::env::var_os("TOPO_SIGNAL_CHILD").is_none() {
        return;
    }
    topo::install_signal_cleanup().expect("install");
    topo::install_signal_cleanup().expect("idempotent");
    let lab = Lab::new("signal").expect("lab");
    let a = lab.add_ns("a").expect("ns");
    let mut cmd = Command::new("sleep");
    cmd.arg("60");
    let pid = lab.spawn(&a, cmd).expect("spawn");
    println!("READY {a} {pid} {}", lab.dir().display());
    std::thread::sleep(Duration::from_secs(60));
    panic!("no signal arrived");
}

#[test]
fn sigterm_tears_down_live_labs() {
    let Some(_g) = privileged() else { return };
    use std::io::BufRead;
    let exe = std::env::current_exe().expect("exe");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "signal_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("TOPO_SIGNAL_CHILD", "1")
        .env_remove(topo::KEEP_LOGS_ENV)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("re-exec the test binary");
    let stdout = child.stdout.take().expect("stdout");
    let ready = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        // libtest prints "test signal_child ... " before our line.
        .find_map(|l| l.find("READY ").map(|i| l[i..].to_string()));
    let Some(ready) = ready else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("child never got ready");
    };
    let parts: Vec<&str> = ready.split_whitespace().collect();
    let (ns, pid, dir) = (
        parts[1].to_string(),
        parts[2].to_string(),
        parts[3].to_string(),
    );
    assert!(ns_exists(&ns));
    // SAFETY: kill(2) on our own child's PID.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let st = child.wait().expect("wait");
    assert_eq!(
        st.code(),
        Some(128 + libc::SIGTERM),
        "exit code after SIGTERM"
    );
    assert!(!ns_exists(&ns), "{ns} removed by the signal handler");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "spawned {pid} killed"
    );
    assert!(!Path::new(&dir).exists(), "{dir} removed");
}
