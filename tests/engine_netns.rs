//! The tunbench engine across two network namespaces joined by a veth pair:
//! a server in `b` (198.18.0.2), the client in `a` (198.18.0.1). Reported totals are
//! checked against the server's own count of bytes received. Needs root.
//!
//! Written against the `tunbench::topo::Lab` API (namespaces torn down on drop).

use std::time::Duration;
use tunbench::engine::{self, Direction, Flow, MeasuredBy, Protocol, Server, TestSpec};
use tunbench::topo::Lab;

fn have_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("engine_netns needs root (CI=true: a missing privilege is a failure)");
        }
        eprintln!("skipping engine_netns: needs root for network namespaces");
    }
    root
}

#[test]
fn engine_across_namespaces() {
    if !have_root() {
        return;
    }
    let mut lab = Lab::new("engine").expect("lab");
    let a = lab.add_ns("a").expect("namespace a");
    let b = lab.add_ns("b").expect("namespace b");
    lab.link(&a, "ve0", &b, "ve0").expect("veth pair");
    lab.ip(&a, &["addr", "add", "198.18.0.1/24", "dev", "ve0"]).expect("address a");
    lab.ip(&b, &["addr", "add", "198.18.0.2/24", "dev", "ve0"]).expect("address b");

    // Threads spawned from the setns()'d thread stay in namespace b.
    let server = lab
        .run_in(&b, || Server::bind("198.18.0.2:5301".parse().expect("addr")).map(|s| s.spawn()))
        .expect("run in b")
        .expect("server binds in b");

    let cases = [
        (Protocol::Tcp, Direction::Forward, 2u32),
        (Protocol::Tcp, Direction::Reverse, 1),
        (Protocol::Udp, Direction::Forward, 1),
    ];
    for (protocol, direction, parallel) in cases {
        let mut spec = TestSpec::new("198.18.0.2", 5301);
        spec.params.protocol = protocol;
        spec.params.direction = direction;
        spec.params.parallel = parallel;
        spec.params.time = Duration::from_secs(2);
        spec.params.omit = Duration::from_millis(500);
        if protocol == Protocol::Udp {
            spec.params.length = 1400;
            spec.params.rate = 100_000_000;
        }
        let what = format!("{protocol:?} {direction:?} x{parallel}");
        let r = lab
            .run_in(&a, move || engine::run_client(&spec))
            .expect("run in a")
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let rec = server.next_record(Duration::from_secs(30)).expect("server record");
        assert!(r.complete, "{what}: {:?}", r.error);
        assert!(rec.error.is_none(), "{what}: {:?}", rec.error);
        let d = &r.directions[0];
        assert_eq!(d.measured_by, MeasuredBy::Receiver);
        assert!(d.bytes > 0, "{what}");
        let iv: u64 = d.intervals.iter().filter(|i| !i.omitted).map(|i| i.bytes).sum();
        assert_eq!(iv, d.bytes, "{what}");
        match d.flow {
            Flow::ClientToServer => {
                assert_eq!(d.receiver_bytes_total, Some(rec.bytes_received()), "{what}");
                if protocol == Protocol::Tcp {
                    assert_eq!(d.sender_bytes_total, Some(rec.bytes_received()), "{what}");
                }
            }
            Flow::ServerToClient => {
                let sent: u64 = rec.sent.iter().map(|s| s.bytes).sum();
                assert_eq!(d.receiver_bytes_total, Some(sent), "{what}");
            }
        }
    }

    // Nobody at 198.18.0.3: a clear error within the connect timeout, not a hang.
    let mut spec = TestSpec::new("198.18.0.3", 5301);
    spec.connect_timeout = Duration::from_secs(2);
    let e = lab
        .run_in(&a, move || engine::run_client(&spec))
        .expect("run in a")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("cannot reach server 198.18.0.3:5301"), "{e}");
    drop(server);
}
