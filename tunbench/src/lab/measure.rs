//! Measurements inside the lab: traffic-engine tests from host-a to host-b
//! (receiver-side throughput, latency probes), CPU time of tunnel processes
//! from /proc/PID/stat, and the link checks (ping RTT, UDP rate).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{self, LatencyParams, LatencySummary, Protocol, TestParams, TestSpec};
use crate::lab::scenario::Scenario;
use crate::topo::{DcPair, HOST_B_V4};

/// Port of the lab's engine server in host-b.
pub const ENGINE_PORT: u16 = engine::DEFAULT_PORT;

/// CPU seconds (user + system, all threads) a process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some((utime + stime) / hz)
}

/// Sum of [`cpu_seconds`] over `pids` (None if any is unreadable).
pub fn cpu_total(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

/// One engine test of one system.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestFigures {
    /// Parallel TCP streams.
    pub streams: u32,
    /// Receiver-side goodput over the measured window, bit/s.
    pub bits_per_second: f64,
    /// Bytes the receiver counted over the whole test (warm-up included).
    pub bytes_total: u64,
    /// TCP retransmissions reported by the sender.
    pub retransmits: Option<u64>,
    /// CPU seconds the tunnel processes used during the test.
    pub cpu_seconds: Option<f64>,
    /// CPU seconds per GB (10^9 bytes) carried.
    pub cpu_s_per_gb: Option<f64>,
    /// Latency on the idle path, before the load.
    pub latency_idle: Option<LatencySummary>,
    /// Latency under this load.
    pub latency_loaded: Option<LatencySummary>,
    /// Why the test failed or was incomplete.
    pub error: Option<String>,
    /// Receiver throughput over time in the measured window: (end of the
    /// interval in seconds from the window's start, bit/s).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intervals: Vec<[f64; 2]>,
}

impl TestFigures {
    /// No figures yet, for a test of `streams` streams.
    pub fn empty(streams: u32) -> TestFigures {
        TestFigures {
            streams,
            bits_per_second: 0.0,
            bytes_total: 0,
            retransmits: None,
            cpu_seconds: None,
            cpu_s_per_gb: None,
            latency_idle: None,
            latency_loaded: None,
            error: None,
            intervals: Vec::new(),
        }
    }

    /// The figures of a test that produced none, with why.
    pub fn failed(streams: u32, error: String) -> TestFigures {
        TestFigures {
            error: Some(error),
            ..TestFigures::empty(streams)
        }
    }
}

/// The engine test the scenario asks for with `streams` streams.
pub fn tcp_spec(s: &Scenario, streams: u32, latency: bool) -> TestSpec {
    let mut spec = TestSpec::new(HOST_B_V4.to_string(), ENGINE_PORT);
    spec.params = TestParams {
        protocol: Protocol::Tcp,
        parallel: streams,
        time: s.test.duration.0,
        omit: s.test.omit.0,
        interval: Duration::from_millis(500),
        window: s.test.window.map(|w| w.0),
        congestion: s.test.congestion.clone(),
        latency: (latency && !s.test.latency_idle.0.is_zero()).then(|| LatencyParams {
            idle: s.test.latency_idle.0,
            interval: s.test.latency_interval.0,
            ..Default::default()
        }),
        ..TestParams::default()
    };
    spec
}

/// Runs `spec` from host-a; CPU of `pids` is read around it.
pub fn run_test(dc: &DcPair, spec: &TestSpec, pids: &[u32]) -> TestFigures {
    let before = cpu_total(pids);
    let res = run_client_retrying(dc, spec);
    let after = cpu_total(pids);
    let res = match res {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    figures(spec.params.parallel, res, before, after, pids)
}

/// The figures of one engine test: its result (or why it produced none) and
/// the CPU seconds of `pids` read before and after it.
pub fn figures(
    streams: u32,
    res: Result<engine::TestResult, String>,
    before: Option<f64>,
    after: Option<f64>,
    pids: &[u32],
) -> TestFigures {
    let r = match res {
        Ok(r) => r,
        Err(e) => return TestFigures::failed(streams, e),
    };
    let mut f = TestFigures::empty(streams);
    if !r.complete {
        f.error = Some(r.error.clone().unwrap_or_else(|| "incomplete test".into()));
    }
    if let Some(d) = r.directions.first() {
        f.bits_per_second = d.bits_per_second;
        f.bytes_total = d.receiver_bytes_total.unwrap_or(d.bytes);
        f.retransmits = d.retransmits;
        f.intervals = d
            .intervals
            .iter()
            .filter(|i| !i.omitted)
            .map(|i| [i.end_s - d.window_start_s, i.bits_per_second])
            .collect();
    }
    if let Some(l) = r.latency {
        f.latency_idle = l.idle;
        f.latency_loaded = l.loaded;
    }
    if let (Some(b), Some(a), false) = (before, after, pids.is_empty()) {
        f.cpu_seconds = Some(a - b);
        if f.bytes_total > 0 {
            f.cpu_s_per_gb = Some((a - b) / (f.bytes_total as f64 / 1e9));
        }
    }
    f
}

/// How long a new test waits for the server to finish the previous one (it
/// tears a test down on its own threads after the client has its result).
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// Runs a client in host-a, retrying while the server still finishes the
/// previous test.
fn run_client_retrying(
    dc: &DcPair,
    spec: &TestSpec,
) -> crate::topo::Result<Result<engine::TestResult, engine::EngineError>> {
    let start = std::time::Instant::now();
    loop {
        let r = dc.lab.run_in(&dc.host_a, || engine::run_client(spec))?;
        match &r {
            Err(engine::EngineError::Rejected(m))
                if m.contains("busy") && start.elapsed() < BUSY_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            _ => return Ok(r),
        }
    }
}

/// Ping RTT across the raw path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PingFigures {
    /// Replies received.
    pub received: u32,
    /// Probes sent.
    pub sent: u32,
    /// Minimum RTT, ms.
    pub min_ms: f64,
    /// Average RTT, ms.
    pub avg_ms: f64,
    /// Maximum RTT, ms.
    pub max_ms: f64,
}

/// `ping -c COUNT -i 0.05` host-a → host-b, parsed.
pub fn ping(dc: &DcPair, count: u32) -> Result<PingFigures, String> {
    let c = count.to_string();
    let out = dc
        .lab
        .exec(
            &dc.host_a,
            "ping",
            &[
                "-n",
                "-q",
                "-c",
                &c,
                "-i",
                "0.05",
                "-W",
                "2",
                &HOST_B_V4.to_string(),
            ],
        )
        .map_err(|e| format!("ping: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_ping(&text, count).ok_or_else(|| format!("ping gave no RTT summary: {}", text.trim()))
}

/// Parses the summary of `ping -q`.
pub fn parse_ping(text: &str, sent: u32) -> Option<PingFigures> {
    let received = text
        .lines()
        .find(|l| l.contains("received"))?
        .split(',')
        .find(|p| p.contains("received"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let rtt = text.lines().find(|l| l.contains("min/avg/max"))?;
    let nums: Vec<f64> = rtt
        .split('=')
        .nth(1)?
        .split_whitespace()
        .next()?
        .split('/')
        .filter_map(|x| x.parse().ok())
        .collect();
    Some(PingFigures {
        received,
        sent,
        min_ms: *nums.first()?,
        avg_ms: *nums.get(1)?,
        max_ms: *nums.get(2)?,
    })
}

/// UDP payload per datagram of the rate check; 42 bytes of Ethernet, IPv4
/// and UDP headers make a 1442-byte frame.
pub const UDP_CHECK_LEN: u32 = 1400;
/// Above this rate the link is checked with TCP instead of UDP.
pub const UDP_CHECK_MAX_RATE: u64 = 800_000_000;
/// Frame bytes per datagram of the rate check.
pub const UDP_CHECK_FRAME: u32 = UDP_CHECK_LEN + 42;

/// The UDP rate check: offers 125% of `rate` (frame bytes) and returns the
/// engine result's (payload bit/s, loss %).
pub fn udp_rate_check(dc: &DcPair, rate: u64) -> Result<(f64, f64), String> {
    let offered = rate as f64 * 1.25 * f64::from(UDP_CHECK_LEN) / f64::from(UDP_CHECK_FRAME);
    // One sender thread paces up to ~1 Gbit/s comfortably.
    let streams = ((offered / 1e9).ceil() as u32).max(1);
    let mut spec = TestSpec::new(HOST_B_V4.to_string(), ENGINE_PORT);
    spec.params = TestParams {
        protocol: Protocol::Udp,
        parallel: streams,
        time: Duration::from_secs(2),
        omit: Duration::from_millis(500),
        interval: Duration::from_millis(500),
        length: UDP_CHECK_LEN,
        rate: (offered / f64::from(streams)) as u64,
        window: Some(8 << 20),
        ..TestParams::default()
    };
    let r = run_client_retrying(dc, &spec)
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let d = r
        .directions
        .first()
        .ok_or_else(|| format!("UDP check: no result ({:?})", r.error))?;
    let loss = d.udp.as_ref().map(|u| u.loss_percent).unwrap_or(0.0);
    Ok((d.bits_per_second, loss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summary() {
        let t = "PING 198.18.2.2 (198.18.2.2) 56(84) bytes of data.\n\n--- 198.18.2.2 ping statistics ---\n\
                 20 packets transmitted, 19 received, 5% packet loss, time 960ms\n\
                 rtt min/avg/max/mdev = 10.112/10.305/10.901/0.150 ms\n";
        let p = parse_ping(t, 20).expect("parses");
        assert_eq!(p.received, 19);
        assert_eq!((p.min_ms, p.avg_ms, p.max_ms), (10.112, 10.305, 10.901));
        assert!(parse_ping("garbage", 1).is_none());
    }

    #[test]
    fn own_cpu_time_is_readable() {
        let s = cpu_seconds(std::process::id()).expect("own /proc stat");
        assert!(s >= 0.0);
        assert!(cpu_seconds(u32::MAX).is_none());
    }
}
