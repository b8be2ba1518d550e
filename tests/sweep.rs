//! End-to-end `tunbench sweep` in the lab: the 4-cell CI profile (two short
//! repeats per cell on a link-limited 200 Mbit/s path) is killed by PID
//! after its 2nd cell line, resumed with `--resume` (exactly 4 distinct
//! cells, none twice), tuned into a tunneld profile in human units that
//! `tunneld check` accepts, and rendered as Markdown and HTML: the report
//! states the streams, duration and repeats that really ran and the CPU
//! model, and shows the reference appliance in both formats; the HTML is
//! loaded in headless Chromium (no console errors, screenshot not a single
//! colour, every chart an SVG with its title in the loaded DOM).
//! Malformed profiles (a unitless rate among them) are refused with the
//! field named, and negative tuner limits are refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{bin, require_root, TempDir};
use serde_json::Value;

fn ci_profile() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/sweep-ci.yaml")
}

fn cell_keys(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.ends_with('}'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["key"].as_str().map(str::to_string))
        .collect()
}

fn our_namespaces(pid: u32) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("tb{pid}x")))
        .map(str::to_string)
        .collect()
}

fn sweep_cmd(out: &Path) -> Command {
    let mut c = Command::new(bin("tunbench"));
    c.arg("sweep")
        .arg("--profile")
        .arg(ci_profile())
        .arg("--out")
        .arg(out)
        .arg("--tunneld")
        .arg(bin("tunneld"));
    c
}

#[test]
fn sweep_resume_tune_and_report() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new("sweep").expect("temp dir");
    let out = dir.path().join("out");
    let cells = out.join("cells.jsonl");

    // 1. Start, wait for the 2nd cell line, kill by PID (SIGTERM: the lab
    //    tears its namespaces down on the way out).
    let mut child = sweep_cmd(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tunbench sweep");
    let pid = child.id();
    let start = Instant::now();
    while cell_keys(&cells).len() < 2 {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("sweep exited early ({st}) with {:?}", cell_keys(&cells));
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no 2nd cell within 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: kill(2) on the PID of our own child, which has not been reaped.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill failed");
    let st = child.wait().expect("wait for the killed sweep");
    assert!(!st.success(), "killed sweep reported success");
    let partial = cell_keys(&cells);
    assert!((2..4).contains(&partial.len()), "after kill: {partial:?}");
    assert!(
        our_namespaces(pid).is_empty(),
        "left: {:?}",
        our_namespaces(pid)
    );

    // 2. Without --resume the folder is refused; with it the sweep completes.
    let refused = sweep_cmd(&out).output().expect("rerun without --resume");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));
    let child = sweep_cmd(&out)
        .arg("--resume")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("resume");
    let pid2 = child.id();
    let done = child.wait_with_output().expect("resumed sweep");
    assert!(
        done.status.success(),
        "resumed sweep failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(our_namespaces(pid2).is_empty());
    let keys = cell_keys(&cells);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for k in &keys {
        *counts.entry(k).or_default() += 1;
    }
    assert_eq!(keys.len(), 4, "cells: {keys:?}");
    assert_eq!(counts.len(), 4, "distinct cells: {counts:?}");
    assert!(keys.starts_with(&partial), "resume rewrote earlier cells");
    for line in std::fs::read_to_string(&cells).expect("cells").lines() {
        let v: Value = serde_json::from_str(line).expect("JSON line");
        assert!(
            v["bits_per_second"].as_f64().unwrap_or(0.0) > 50e6,
            "{line}"
        );
        assert!(v["p99_loaded_ms"].as_f64().is_some(), "{line}");
        assert!(v["cpu_s_per_gb"].as_f64().is_some(), "{line}");
    }

    // 3. Tune: a lax limit picks a cell; `tunneld check` accepts the profile
    //    as written, in human units.
    let tuned = dir.path().join("tuned.yaml");
    let t = Command::new(bin("tunbench"))
        .args([
            "tune",
            "--max-p99-ms",
            "1000",
            "--max-cores",
            "8",
            "--results",
        ])
        .arg(&cells)
        .arg("--out")
        .arg(&tuned)
        .output()
        .expect("tune");
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    let text = std::fs::read_to_string(&tuned).expect("tuned.yaml");
    // The profile names gw-a.key next to it; give tunneld's check one.
    e2e::write_key(&dir.path().join("gw-a.key"), &e2e::genkey().expect("key")).expect("key file");
    tunneld::config::parse_str(&text, dir.path())
        .unwrap_or_else(|e| panic!("tunneld rejects the tuned profile: {e}\n{text}"));
    let check = Command::new(bin("tunneld"))
        .arg("check")
        .arg("--config")
        .arg(&tuned)
        .output()
        .expect("tunneld check");
    assert!(
        check.status.success(),
        "tunneld check: {}\n{text}",
        String::from_utf8_lossy(&check.stderr)
    );
    for human in [
        "socket_buffer: 4M",
        "after_time: 120s",
        "after_bytes: 64G",
        "  # batch: ",
        "  # workers: ",
    ] {
        assert!(text.contains(human), "tuned.yaml lacks {human:?}:\n{text}");
    }
    assert!(
        !text.contains("000ms") && !text.contains("4194304") && !text.contains("68719476736"),
        "machine units in tuned.yaml:\n{text}"
    );
    let negative = Command::new(bin("tunbench"))
        .args([
            "tune",
            "--max-p99-ms",
            "10",
            "--max-cores",
            "-1",
            "--results",
        ])
        .arg(&cells)
        .output()
        .expect("tune");
    assert!(!negative.status.success());
    assert!(
        String::from_utf8_lossy(&negative.stderr).contains("positive"),
        "{}",
        String::from_utf8_lossy(&negative.stderr)
    );
    let strict = Command::new(bin("tunbench"))
        .args([
            "tune",
            "--max-p99-ms",
            "0.001",
            "--max-cores",
            "8",
            "--results",
        ])
        .arg(&cells)
        .arg("--out")
        .arg(dir.path().join("none.yaml"))
        .output()
        .expect("tune");
    assert!(!strict.status.success());
    assert!(String::from_utf8_lossy(&strict.stderr).contains("no cell meets"));

    // 4. Reports.
    for fmt in ["md", "html"] {
        let r = Command::new(bin("tunbench"))
            .arg("report")
            .arg(&out)
            .args(["--format", fmt])
            .output()
            .expect("report");
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    let cpu_model = tunbench::sweep::runner::cpu_model().expect("CPU model in /proc/cpuinfo");
    for s in [
        "## Conditions as run",
        // What ran (profiles/sweep-ci.yaml), not a scenario's description.
        "2 stream(s); 1s measured after 300ms of warm-up per repeat; 2 repeat(s) per cell",
        cpu_model.as_str(),
        "checked before the first cell: RTT min",
        "**Run-to-run spread**: ",
        "## Chosen setting",
        "## Against `batch`",
        "## Capacity planning",
        "gateway pairs (N + spare)",
        "vendor-appliance (reference)",
        "vendor-appliance units (N + spare)",
    ] {
        assert!(md.contains(s), "report.md lacks {s}:\n{md}");
    }
    assert!(
        md.contains("any setting carries this link") || md.contains("limited the fastest cells"),
        "a 200 Mbit/s link with every cell near it, and no word of the link:\n{md}"
    );
    let html = std::fs::read_to_string(out.join("report.html")).expect("report.html");
    assert!(
        html.contains("vendor-appliance"),
        "no reference in the HTML"
    );
    let dom = check_in_chromium(&out.join("report.html"), dir.path());
    if let Some(dom) = dom {
        let titles = svg_titles(&dom);
        // systems, over time, CDF, 3 per knob × 2 knobs, plan.
        assert_eq!(
            titles.len(),
            10,
            "SVG titles in the loaded page: {titles:?}"
        );
        for t in [
            "Systems: throughput and CPU cost",
            "Throughput and RTT over time (chosen setting)",
            "RTT under load: distribution (CDF)",
            "Throughput vs batch",
            "CPU cost vs workers",
        ] {
            assert!(
                titles.iter().any(|x| x == t),
                "no chart {t:?} in {titles:?}"
            );
        }
        assert!(
            titles
                .iter()
                .any(|x| x.starts_with("Plan: gateway pairs (N+1)")),
            "{titles:?}"
        );
    }
}

/// The `<title>` of every `<svg>` in a serialized DOM (an SVG without a
/// title yields an empty string, which the caller's count catches).
fn svg_titles(dom: &str) -> Vec<String> {
    dom.split("<svg")
        .skip(1)
        .map(|rest| {
            let body = rest.split_once('>').map_or("", |x| x.1);
            body.strip_prefix("<title>")
                .and_then(|t| t.split_once("</title>"))
                .map(|(t, _)| t.replace("&amp;", "&"))
                .unwrap_or_default()
        })
        .collect()
}

/// Finds the chromium binary (None: not installed).
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Screenshots `url` in headless Chromium; returns (PNG bytes, stderr log).
fn screenshot(chromium: &str, url: &str, tmp: &Path, name: &str) -> (Vec<u8>, String) {
    let shot = tmp.join(format!("{name}.png"));
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,2000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            tmp.join(format!("{name}-profile")).display()
        ))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(url)
        .output()
        .expect("run chromium");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "chromium failed: {log}");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    (png, log)
}

/// Loads the page in headless Chromium: no console errors, and the
/// screenshot is not one colour. Without a PNG decoder, "one colour" is
/// judged against a blank page of the same size rendered the same way: it
/// compresses to a small fraction of a page with text, tables and charts.
/// Returns the DOM as Chromium loaded it (`--dump-dom`), None where
/// Chromium is missing outside CI.
fn check_in_chromium(html: &Path, tmp: &Path) -> Option<String> {
    let Some(chromium) = chromium() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true and chromium is not installed (Debian package `chromium`)");
        }
        eprintln!("SKIPPED HTML check: chromium not installed");
        return None;
    };
    let url = format!(
        "file://{}",
        html.canonicalize().expect("html path").display()
    );
    let (png, log) = screenshot(chromium, &url, tmp, "report");
    let console: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught") || l.contains("ERR_"))
        .collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    let blank = tmp.join("blank.html");
    std::fs::write(&blank, "<!DOCTYPE html><html><body></body></html>").expect("blank page");
    let (blank_png, _) = screenshot(
        chromium,
        &format!("file://{}", blank.display()),
        tmp,
        "blank",
    );
    assert!(
        png.len() > 5 * blank_png.len(),
        "screenshot looks blank: {} bytes vs {} for an empty page",
        png.len(),
        blank_png.len()
    );
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!(
            "--user-data-dir={}",
            tmp.join("dom-profile").display()
        ))
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("run chromium --dump-dom");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium --dump-dom failed: {log}");
    let console: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught") || l.contains("ERR_"))
        .collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn malformed_profiles_name_the_field() {
    let dir = TempDir::new("sweep-bad").expect("temp dir");
    let base = std::fs::read_to_string(ci_profile()).expect("ci profile");
    let cases = [
        (base.replace("workers: [1, 2]", "flux: [1, 2]"), "flux"),
        (
            base.replace("  batch: [8, 64]\n  workers: [1, 2]\n", "  {}\n"),
            "empty grid",
        ),
        (
            base.replace("duration: 1s", "duration: -1s"),
            "test.duration",
        ),
        (
            base.replace("workers: [1, 2]", "transport: [udp, sctp]"),
            "grid.transport",
        ),
        (
            base.replace("rate: 200M", "rate: 200"),
            "wan.rate: `200` has no unit and would mean 200 bit/s: did you mean 200M?",
        ),
        (
            base.replace("rate: 200M", "rate: 25MBps"),
            "is bytes per second; rates here are bits per second: write 200M",
        ),
        (
            base.replace("rate: 350M}", "rate: 350}"),
            "reference.rate: `350` has no unit",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&p, text).expect("write");
        let out = Command::new(bin("tunbench"))
            .arg("sweep")
            .arg("--profile")
            .arg(&p)
            .arg("--out")
            .arg(dir.path().join(format!("o{i}")))
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted case {i}");
        assert!(err.contains(want), "case {i}: wanted {want:?} in {err}");
        assert!(
            err.contains(&format!("bad{i}.yaml:")),
            "case {i}: no file:line: {err}"
        );
    }
}
