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

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 12th and 13th of them, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Receiver-side TCP throughput host-a → host-b in bit/s, and the bytes
/// carried in the whole test (warm-up included, for CPU cost per GB).
fn measure(dc: &DcPair, streams: u32, secs: u64) -> (f64, u64) {
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
        .map(|d| (d.bits_per_second, d.receiver_bytes_total.unwrap_or(d.bytes)))
        .unwrap_or((0.0, 0))
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
            "tunneld defaults (offload, batch 64, workers 1, flows 1, fifo)",
            Some(json!({"offload": true, "batch": 64, "workers": 1})),
        ),
        (
            "tunneld offload off",
            Some(json!({"offload": false, "batch": 64, "workers": 1})),
        ),
        (
            "tunneld batch 1",
            Some(json!({"offload": true, "batch": 1, "workers": 1})),
        ),
        (
            "tunneld workers 2",
            Some(json!({"offload": true, "batch": 64, "workers": 2})),
        ),
        (
            "tunneld queue fq_codel",
            Some(json!({"offload": true, "batch": 64, "workers": 1, "queue": "fq_codel"})),
        ),
        (
            "tunneld flows 4",
            Some(json!({"offload": true, "batch": 64, "workers": 1, "flows": 4})),
        ),
    ];
    type Row = (String, Vec<f64>, Vec<f64>, Vec<f64>);
    let mut results: Vec<Row> = rows
        .iter()
        .map(|(n, _)| (n.to_string(), vec![], vec![], vec![]))
        .collect();
    // Alternate the rows within each repetition so drift hits all alike.
    for rep in 0..reps {
        for (i, (name, knobs)) in rows.iter().enumerate() {
            let (one, many, cpu_per_gb) = match knobs {
                None => {
                    let dc = dc_pair("bench-raw", false).expect("dc_pair");
                    dc.route_lans_directly().expect("raw routes");
                    (measure(&dc, 1, secs).0, measure(&dc, streams, secs).0, 0.0)
                }
                Some(k) => {
                    let tl = tunnel("bench-tun", k.clone());
                    let pids: Vec<u32> = [&tl.a, &tl.b].iter().filter_map(|t| t.pid).collect();
                    let cpu0: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
                    let (one, b1) = measure(&tl.dc, 1, secs);
                    let cpu1: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
                    let (many, _) = measure(&tl.dc, streams, secs);
                    let st = tl.status(Side::A).expect("status");
                    let sb = tl.status(Side::B).expect("status");
                    eprintln!("  {name}: dataplane {}", st["dataplane"]);
                    eprintln!("    gw-a io {}\n    gw-b io {}", st["io"], sb["io"]);
                    // Both gateways' CPU for the 1-stream test, per GB carried.
                    (one, many, (cpu1 - cpu0) / (b1.max(1) as f64 / 1e9))
                }
            };
            eprintln!(
                "rep {rep} {name}: 1 stream {:.2} Gbit/s, {streams} streams {:.2} Gbit/s",
                one / 1e9,
                many / 1e9
            );
            results[i].1.push(one);
            results[i].2.push(many);
            results[i].3.push(cpu_per_gb);
        }
    }
    let raw1 = median(results[0].1.clone());
    let rawn = median(results[0].2.clone());
    println!(
        "\n| system | 1 stream | {streams} streams | % of raw (1 / {streams}) | CPU s per GB (both gateways) |"
    );
    println!("|---|---|---|---|---|");
    for (name, one, many, cpu) in &results {
        let (m1, mn, c) = (
            median(one.clone()),
            median(many.clone()),
            median(cpu.clone()),
        );
        println!(
            "| {name} | {:.0} Mbit/s | {:.0} Mbit/s | {:.0}% / {:.0}% | {} |",
            m1 / 1e6,
            mn / 1e6,
            100.0 * m1 / raw1,
            100.0 * mn / rawn,
            if c > 0.0 {
                format!("{c:.2}")
            } else {
                "kernel".into()
            }
        );
    }
}
