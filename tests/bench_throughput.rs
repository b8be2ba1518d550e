//! Throughput of tunneld beside the raw routed path, and the effect of each
//! data-path knob, measured in one run on the standard lab topology (no WAN
//! emulation: the veth path's own ceiling). A benchmark, not a test: it is
//! `#[ignore]`d and run by hand (root):
//!
//! ```sh
//! cargo build --release --workspace
//! cargo test --release -p e2e --test bench_throughput -- --ignored --nocapture
//! ```
//!
//! Environment: `BENCH_TIME` seconds per measurement (default 5), `BENCH_REPS`
//! repetitions (default 3; medians are printed), `BENCH_STREAMS` for the
//! multi-stream row (default 4).

use e2e::{require_root, Side, TunnelLab};
use serde_json::{json, Value};
use std::time::Duration;
use tunbench::engine::{self, Server, TestSpec};
use tunbench::topo::{self, dc_pair, DcPair};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Receiver-side TCP throughput host-a → host-b in bit/s.
fn measure(dc: &DcPair, streams: u32, secs: u64) -> f64 {
    let lab = &dc.lab;
    let server = lab
        .run_in(&dc.host_b, || {
            Server::bind((topo::HOST_B_V4, 5301).into()).map(|s| s.spawn())
        })
        .expect("run_in host-b")
        .expect("server binds");
    let mut spec = TestSpec::new(topo::HOST_B_V4.to_string(), 5301);
    spec.params.parallel = streams;
    spec.params.time = Duration::from_secs(secs);
    spec.params.omit = Duration::from_secs(1);
    let r = lab
        .run_in(&dc.host_a, move || engine::run_client(&spec))
        .expect("run_in host-a")
        .expect("client run");
    drop(server);
    r.directions
        .first()
        .map(|d| d.bits_per_second)
        .unwrap_or(0.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn tunnel(tag: &str, knobs: Value) -> TunnelLab {
    let tl = TunnelLab::start(tag, false, move |_, cfg: &mut Value| {
        cfg["dataplane"] = knobs.clone();
    })
    .expect("tunnel pair");
    e2e::wait_ping(
        tl.lab(),
        &tl.dc.host_a,
        &topo::HOST_B_V4.to_string(),
        Duration::from_secs(15),
    )
    .expect("tunnel up");
    tl
}

#[test]
#[ignore = "benchmark: run by hand with --ignored --nocapture"]
fn tunnel_vs_raw() {
    if !require_root() {
        return;
    }
    let secs = env_u64("BENCH_TIME", 5);
    let reps = env_u64("BENCH_REPS", 3);
    let streams = env_u64("BENCH_STREAMS", 4) as u32;
    let rows: Vec<(&str, Option<Value>)> = vec![
        ("raw veth (ceiling)", None),
        (
            "tunneld (offload, batch 64, workers 2)",
            Some(json!({"offload": true, "batch": 64, "workers": 2})),
        ),
        (
            "tunneld offload off",
            Some(json!({"offload": false, "batch": 64, "workers": 2})),
        ),
        (
            "tunneld batch 1",
            Some(json!({"offload": true, "batch": 1, "workers": 2})),
        ),
        (
            "tunneld workers 1",
            Some(json!({"offload": true, "batch": 64, "workers": 1})),
        ),
    ];
    let mut results: Vec<(String, Vec<f64>, Vec<f64>)> = rows
        .iter()
        .map(|(n, _)| (n.to_string(), vec![], vec![]))
        .collect();
    // Alternate the rows within each repetition so drift hits all alike.
    for rep in 0..reps {
        for (i, (name, knobs)) in rows.iter().enumerate() {
            let (one, many) = match knobs {
                None => {
                    let dc = dc_pair("bench-raw", false).expect("dc_pair");
                    dc.route_lans_directly().expect("raw routes");
                    (measure(&dc, 1, secs), measure(&dc, streams, secs))
                }
                Some(k) => {
                    let tl = tunnel("bench-tun", k.clone());
                    let r = (measure(&tl.dc, 1, secs), measure(&tl.dc, streams, secs));
                    let st = tl.status(Side::A).expect("status");
                    eprintln!("  {name}: dataplane {}", st["dataplane"]);
                    r
                }
            };
            eprintln!(
                "rep {rep} {name}: 1 stream {:.2} Gbit/s, {streams} streams {:.2} Gbit/s",
                one / 1e9,
                many / 1e9
            );
            results[i].1.push(one);
            results[i].2.push(many);
        }
    }
    let raw1 = median(results[0].1.clone());
    let rawn = median(results[0].2.clone());
    println!("\n| system | 1 stream | {streams} streams | % of raw (1 / {streams}) |");
    println!("|---|---|---|---|");
    for (name, one, many) in &results {
        let (m1, mn) = (median(one.clone()), median(many.clone()));
        println!(
            "| {name} | {:.0} Mbit/s | {:.0} Mbit/s | {:.0}% / {:.0}% |",
            m1 / 1e6,
            mn / 1e6,
            100.0 * m1 / raw1,
            100.0 * mn / rawn
        );
    }
}
