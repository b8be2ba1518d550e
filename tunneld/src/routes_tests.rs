//! Route manager tests against a fake kernel: which routes exist after each
//! event, that a foreign route is put back exactly, that failures are
//! reported and retried, and the `ip route show` parsing helpers.

use super::*;
use crate::config::RouteInstall;

/// A routing table in memory: (prefix, table, metric) → route line.
#[derive(Default)]
struct Kernel {
    routes: BTreeMap<(String, u32, u32), String>,
    /// Fail the next `n` replace calls.
    fail_replace: usize,
    calls: Vec<String>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<Kernel>>);

impl Fake {
    fn k(&self) -> MutexGuard<'_, Kernel> {
        self.0.lock().expect("fake kernel lock")
    }
    fn lines(&self) -> Vec<String> {
        self.k().routes.values().cloned().collect()
    }
}

impl RouteBackend for Fake {
    fn existing(&mut self, p: Prefix, table: u32, metric: u32) -> Result<Vec<String>, RouteError> {
        Ok(self
            .k()
            .routes
            .get(&(p.to_string(), table, metric))
            .cloned()
            .into_iter()
            .collect())
    }
    fn replace(&mut self, p: Prefix, dev: &str, table: u32, metric: u32) -> Result<(), RouteError> {
        let mut k = self.k();
        k.calls.push(format!("replace {p} {table} {metric}"));
        if k.fail_replace > 0 {
            k.fail_replace -= 1;
            return Err(TunError::Ip {
                args: "route replace".into(),
                stderr: "RTNETLINK answers: Network is down".into(),
            }
            .into());
        }
        k.routes.insert(
            (p.to_string(), table, metric),
            format!("{p} dev {dev} scope link metric {metric}"),
        );
        Ok(())
    }
    fn delete(&mut self, p: Prefix, dev: &str, table: u32, metric: u32) -> Result<(), RouteError> {
        let mut k = self.k();
        k.calls.push(format!("delete {p} {table} {metric}"));
        let key = (p.to_string(), table, metric);
        if k.routes.get(&key).is_some_and(|l| through_dev(l, dev)) {
            k.routes.remove(&key);
        }
        Ok(())
    }
    fn restore(&mut self, v6: bool, line: &str, table: u32) -> Result<(), RouteError> {
        let toks = restorable_tokens(line);
        let p = toks.first().copied().unwrap_or_default().to_string();
        let metric = route_metric(line, v6);
        let mut k = self.k();
        k.calls.push(format!("restore {}", toks.join(" ")));
        k.routes.insert((p, table, metric), toks.join(" "));
        Ok(())
    }
}

fn p(s: &str) -> Prefix {
    s.parse().expect("prefix")
}

fn manager(install: RouteInstall, fake: &Fake) -> RouteManager {
    let settings = RoutesConfig {
        install,
        table: 100,
        metric: None,
    };
    let mut m = RouteManager::new("tun0", settings, Box::new(fake.clone()));
    m.set_peer("b", &[p("198.18.2.0/24"), p("fd00:2::/64")])
        .expect("set b");
    m.set_peer("c", &[p("198.18.3.0/24")]).expect("set c");
    m
}

fn ev(name: &str, up: bool) -> PeerEvent {
    PeerEvent {
        peer: 0,
        name: name.into(),
        up,
    }
}

#[test]
fn on_session_routes_follow_peer_events() {
    let fake = Fake::default();
    let mut m = manager(RouteInstall::OnSession, &fake);
    assert!(m.installed().is_empty(), "nothing before a session");
    m.apply(&ev("b", true)).expect("up");
    assert_eq!(
        fake.lines(),
        vec![
            "198.18.2.0/24 dev tun0 scope link metric 0".to_string(),
            "fd00:2::/64 dev tun0 scope link metric 1024".to_string(),
        ]
    );
    m.apply(&ev("c", true)).expect("up");
    assert_eq!(m.installed().len(), 3);
    // A repeated event changes nothing.
    let calls = fake.k().calls.len();
    m.apply(&ev("c", true)).expect("up again");
    assert_eq!(fake.k().calls.len(), calls);
    m.apply(&ev("b", false)).expect("down");
    assert_eq!(m.installed(), vec![p("198.18.3.0/24")]);
    assert_eq!(fake.lines().len(), 1);
    assert!(!m.is_up("b") && m.is_up("c"));
    m.withdraw_all().expect("exit");
    assert!(fake.lines().is_empty());
}

#[test]
fn always_installs_at_once_and_off_never() {
    let fake = Fake::default();
    let mut m = manager(RouteInstall::Always, &fake);
    assert_eq!(m.installed().len(), 3);
    m.apply(&ev("b", false)).expect("down is ignored");
    assert_eq!(m.installed().len(), 3);
    let fake = Fake::default();
    let mut m = manager(RouteInstall::Off, &fake);
    m.apply(&ev("b", true)).expect("up");
    assert!(m.installed().is_empty() && fake.lines().is_empty());
}

#[test]
fn a_foreign_route_is_restored_when_ours_goes() {
    let fake = Fake::default();
    let foreign = "198.18.2.0/24 via 198.18.0.9 dev eth1 proto static metric 0 linkdown";
    fake.k()
        .routes
        .insert(("198.18.2.0/24".into(), 100, 0), foreign.into());
    // A route of another metric is not ours to touch.
    fake.k().routes.insert(
        ("198.18.2.0/24".into(), 100, 50),
        "198.18.2.0/24 via 198.18.0.7 dev eth2 metric 50".into(),
    );
    let mut m = manager(RouteInstall::OnSession, &fake);
    m.apply(&ev("b", true)).expect("up");
    assert!(fake.lines()[0].contains("dev tun0"), "{:?}", fake.lines());
    m.apply(&ev("b", false)).expect("down");
    let restored = fake
        .k()
        .routes
        .get(&("198.18.2.0/24".into(), 100, 0))
        .cloned();
    assert_eq!(
        restored.as_deref(),
        Some("198.18.2.0/24 via 198.18.0.9 dev eth1 proto static metric 0"),
        "restored without the show-only flag"
    );
    assert_eq!(fake.lines().len(), 2);
    // Up and down again: remembered afresh, restored again.
    m.apply(&ev("b", true)).expect("up");
    m.withdraw_all().expect("exit");
    assert!(fake.lines()[0].contains("dev eth1"));
}

#[test]
fn reload_moves_and_removes_prefixes() {
    let fake = Fake::default();
    let mut m = manager(RouteInstall::OnSession, &fake);
    m.apply(&ev("b", true)).expect("up");
    m.set_peer("b", &[p("198.18.2.0/24"), p("198.18.20.0/24")])
        .expect("reload b");
    assert_eq!(
        m.installed(),
        vec![p("198.18.2.0/24"), p("198.18.20.0/24")],
        "fd00:2::/64 withdrawn, 198.18.20.0/24 added"
    );
    // c is down: its new prefixes wait for its session.
    m.set_peer("c", &[p("198.18.30.0/24")]).expect("reload c");
    assert_eq!(m.installed().len(), 2);
    m.remove_peer("b").expect("b removed");
    assert!(m.installed().is_empty());
    assert!(fake.lines().is_empty());
}

#[test]
fn a_failed_install_is_reported_and_retried_on_the_next_event() {
    let fake = Fake::default();
    let mut m = manager(RouteInstall::OnSession, &fake);
    fake.k().fail_replace = 1;
    let err = m.apply(&ev("b", true)).expect_err("first replace fails");
    assert!(err.to_string().contains("Network is down"), "{err}");
    // The other prefix of b still went in.
    assert_eq!(m.installed(), vec![p("fd00:2::/64")]);
    m.apply(&ev("b", true)).expect("retry");
    assert_eq!(m.installed().len(), 2);
}

#[test]
fn worker_applies_events_in_order_and_withdraws_at_stop() {
    let fake = Fake::default();
    let w = RouteWorker::start(manager(RouteInstall::OnSession, &fake)).expect("thread");
    let tx = w.sender().expect("sender");
    for up in [true, false, true] {
        tx.send(ev("b", up)).expect("send");
    }
    drop(tx);
    // `with` sees the state once the thread caught up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while fake.k().calls.len() < 6 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(w.with(|m| m.installed().len()), 2);
    w.stop().expect("stop");
    assert!(fake.lines().is_empty());
}

#[test]
fn show_line_helpers() {
    assert_eq!(route_metric("10.0.0.0/8 dev x", false), 0);
    assert_eq!(route_metric("fd00::/8 dev x pref medium", true), 1024);
    assert_eq!(route_metric("10.0.0.0/8 dev x metric 7", false), 7);
    assert_eq!(route_metric("10.0.0.0/8 dev x metric", false), 0);
    assert_eq!(
        restorable_tokens(
            "fd00::/64 via fe80::1 dev e0 proto ra metric 1024 expires 299sec pref medium"
        ),
        vec![
            "fd00::/64",
            "via",
            "fe80::1",
            "dev",
            "e0",
            "proto",
            "ra",
            "metric",
            "1024",
            "pref",
            "medium"
        ]
    );
    assert_eq!(
        restorable_tokens("10.0.0.0/8 table 100 nexthop via 1.1.1.1 dev a weight 1 dead linkdown"),
        vec![
            "10.0.0.0/8",
            "nexthop",
            "via",
            "1.1.1.1",
            "dev",
            "a",
            "weight",
            "1"
        ]
    );
    assert!(through_dev("10.0.0.0/8 dev tun0 scope link", "tun0"));
    assert!(!through_dev("10.0.0.0/8 dev tun01 scope link", "tun0"));
}
