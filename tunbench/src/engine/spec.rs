//! What a test is: the parameters both ends agree on ([`TestParams`], sent over the
//! control channel) and where to run it ([`TestSpec`]), with the validation that
//! turns impossible values into a clear [`SpecError`] before any socket is opened.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::time::Duration;

/// Default control port (TCP). Data connections use the same port.
pub const DEFAULT_PORT: u16 = 5301;
/// Default TCP write size: large enough that syscalls are not the bottleneck (as iperf3).
pub const DEFAULT_TCP_WRITE: u32 = 128 * 1024;
/// Default UDP datagram payload: fits a 1500-byte MTU with IPv4/IPv6 + UDP headers.
pub const DEFAULT_UDP_SIZE: u32 = 1400;
/// Default UDP rate per stream (bit/s), as iperf3's default.
pub const DEFAULT_UDP_RATE: u64 = 1_000_000;
/// Largest number of parallel streams: beyond this the 2-core lab machine measures itself.
pub const MAX_PARALLEL: u32 = 128;
/// Smallest socket buffer accepted: the kernel's own floor is about 2 KiB (doubled 1152).
pub const MIN_WINDOW: u64 = 2048;
/// Largest socket buffer accepted (SO_SNDBUF takes an int; 1 GiB is far above any BDP here).
pub const MAX_WINDOW: u64 = 1 << 30;
/// Linux refuses TCP_MAXSEG below 88 (TCP_MIN_MSS); 536 is the IPv4 default minimum.
pub const MIN_MSS: u32 = 88;
/// Largest MSS: a 65535-byte IPv4 packet minus 40 bytes of headers.
pub const MAX_MSS: u32 = 65495;
/// Largest write / datagram: 16 MiB for TCP; UDP is further capped by [`MAX_UDP_SIZE`].
pub const MAX_WRITE: u32 = 16 << 20;
/// Largest UDP payload over IPv4.
pub const MAX_UDP_SIZE: u32 = 65507;
/// Smallest UDP datagram: our 24-byte header plus a few bytes.
pub const MIN_UDP_SIZE: u32 = 32;
/// Longest test: one day. Longer runs belong to a sweep that repeats tests.
pub const MAX_TIME: Duration = Duration::from_secs(24 * 3600);
/// Shortest test and shortest reporting interval.
pub const MIN_TIME: Duration = Duration::from_millis(100);

/// Transport of the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP streams: as fast as the path allows.
    #[default]
    Tcp,
    /// UDP datagrams paced at a fixed rate.
    Udp,
}

/// Which way the load flows. "Forward" is client to server (iperf3's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client sends, server receives.
    #[default]
    Forward,
    /// Server sends, client receives (`--reverse`).
    Reverse,
    /// Both at once (`--bidir`), `parallel` streams each way.
    Bidir,
}

impl Direction {
    /// Does the client send in this mode?
    pub fn client_sends(self) -> bool {
        matches!(self, Direction::Forward | Direction::Bidir)
    }
    /// Does the client receive in this mode?
    pub fn client_receives(self) -> bool {
        matches!(self, Direction::Reverse | Direction::Bidir)
    }
}

/// Latency probes: UDP request/response, idle before the load and during it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyParams {
    /// How long to probe the idle path before the load starts.
    #[serde(with = "secs")]
    pub idle: Duration,
    /// Gap between probes.
    #[serde(with = "secs")]
    pub interval: Duration,
    /// Probe payload size in bytes.
    pub size: u32,
}

impl Default for LatencyParams {
    fn default() -> Self {
        LatencyParams {
            idle: Duration::from_secs(2),
            interval: Duration::from_millis(10),
            size: 64,
        }
    }
}

/// The parameters both ends of a test agree on; sent in the client's `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestParams {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Streams per direction.
    pub parallel: u32,
    /// Measured time (after the warm-up).
    #[serde(with = "secs")]
    pub time: Duration,
    /// Warm-up that is sent but not counted.
    #[serde(with = "secs")]
    pub omit: Duration,
    /// Reporting interval.
    #[serde(with = "secs")]
    pub interval: Duration,
    /// Direction of the load.
    pub direction: Direction,
    /// SO_SNDBUF / SO_RCVBUF on data sockets, bytes.
    pub window: Option<u64>,
    /// TCP_MAXSEG on data sockets.
    pub mss: Option<u32>,
    /// TCP write size or UDP datagram payload size, bytes.
    pub length: u32,
    /// TCP congestion control algorithm (e.g. `cubic`, `bbr`).
    pub congestion: Option<String>,
    /// UDP target rate per stream, bit/s (UDP payload, as iperf3 counts it).
    pub rate: u64,
    /// TCP_NODELAY on TCP data sockets.
    pub no_delay: bool,
    /// Latency probes, if requested.
    pub latency: Option<LatencyParams>,
}

impl Default for TestParams {
    fn default() -> Self {
        TestParams {
            protocol: Protocol::Tcp,
            parallel: 1,
            time: Duration::from_secs(10),
            omit: Duration::ZERO,
            interval: Duration::from_secs(1),
            direction: Direction::Forward,
            window: None,
            mss: None,
            length: DEFAULT_TCP_WRITE,
            congestion: None,
            rate: DEFAULT_UDP_RATE,
            no_delay: false,
            latency: None,
        }
    }
}

/// A test and where to run it: the Rust API's input to [`crate::engine::run_client`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestSpec {
    /// Server host name or address.
    pub server: String,
    /// Server control port.
    pub port: u16,
    /// Give up connecting after this long.
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
    /// Local address for the client's sockets.
    pub bind: Option<IpAddr>,
    /// Local device for the client's sockets (SO_BINDTODEVICE).
    pub bind_dev: Option<String>,
    /// The test itself.
    pub params: TestParams,
    /// Shared key, for servers that require authentication (never
    /// serialized).
    #[serde(skip)]
    pub auth_key: Option<crate::engine::auth::AuthKey>,
}

impl TestSpec {
    /// A TCP test with defaults against `server`.
    pub fn new(server: impl Into<String>, port: u16) -> Self {
        TestSpec {
            server: server.into(),
            port,
            connect_timeout: Duration::from_secs(5),
            bind: None,
            bind_dev: None,
            params: TestParams::default(),
            auth_key: None,
        }
    }
}

/// An impossible or unsupported test parameter. The message names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A value lies outside the range the engine can honour.
    #[error("{what} {value} is out of range: {expected}")]
    OutOfRange {
        /// The option, e.g. `--window`.
        what: &'static str,
        /// The offending value as given.
        value: String,
        /// What would be accepted.
        expected: String,
    },
    /// Two options contradict each other or an option does not apply.
    #[error("{0}")]
    Conflict(String),
}

fn range<T: PartialOrd>(
    what: &'static str,
    v: T,
    lo: T,
    hi: T,
    show: impl Fn(&T) -> String,
) -> Result<(), SpecError> {
    if v < lo || v > hi {
        return Err(SpecError::OutOfRange {
            what,
            value: show(&v),
            expected: format!("between {} and {}", show(&lo), show(&hi)),
        });
    }
    Ok(())
}

impl TestParams {
    /// Checks every value; the server calls this too on what it receives.
    pub fn validate(&self) -> Result<(), SpecError> {
        let num = |v: &u64| v.to_string();
        let dur = |d: &Duration| format!("{d:?}");
        range(
            "--parallel",
            self.parallel as u64,
            1,
            MAX_PARALLEL as u64,
            num,
        )?;
        range("--time", self.time, MIN_TIME, MAX_TIME, dur)?;
        range("--omit", self.omit, Duration::ZERO, MAX_TIME, dur)?;
        range("--interval", self.interval, MIN_TIME, MAX_TIME, dur)?;
        if let Some(w) = self.window {
            range("--window", w, MIN_WINDOW, MAX_WINDOW, num)?;
        }
        if let Some(m) = self.mss {
            range("--mss", m as u64, MIN_MSS as u64, MAX_MSS as u64, num)?;
            if self.protocol == Protocol::Udp {
                return Err(SpecError::Conflict("--mss applies to TCP only".into()));
            }
        }
        match self.protocol {
            Protocol::Tcp => range("--write-size", self.length as u64, 1, MAX_WRITE as u64, num)?,
            Protocol::Udp => {
                range(
                    "--size",
                    self.length as u64,
                    MIN_UDP_SIZE as u64,
                    MAX_UDP_SIZE as u64,
                    num,
                )?;
                // 1 kbit/s .. 400 Gbit/s: below, a 10 s test sends nothing useful;
                // above, no host NIC of this era.
                range("--rate", self.rate, 1000, 400_000_000_000, num)?;
            }
        }
        if let Some(cc) = &self.congestion {
            let ok = !cc.is_empty()
                && cc.len() < 16
                && cc.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(SpecError::Conflict(format!(
                    "--congestion '{cc}' is not a congestion control name (e.g. cubic, bbr)"
                )));
            }
            if self.protocol == Protocol::Udp {
                return Err(SpecError::Conflict(
                    "--congestion applies to TCP only".into(),
                ));
            }
        }
        if let Some(l) = &self.latency {
            range(
                "--latency-interval",
                l.interval,
                Duration::from_millis(1),
                Duration::from_secs(10),
                dur,
            )?;
            range(
                "--latency-idle",
                l.idle,
                Duration::ZERO,
                Duration::from_secs(3600),
                dur,
            )?;
            range("latency probe size", l.size as u64, 32, 1400, num)?;
        }
        Ok(())
    }

    /// Number of reporting intervals in the measured window (the last may be short).
    pub fn window_intervals(&self) -> usize {
        let n = self
            .time
            .as_nanos()
            .div_ceil(self.interval.as_nanos().max(1));
        n as usize
    }
}

impl TestSpec {
    /// Checks the target and the test parameters.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.port == 0 {
            return Err(SpecError::Conflict("--port 0 is not a server port".into()));
        }
        if self.connect_timeout.is_zero() {
            return Err(SpecError::Conflict(
                "--connect-timeout must be above 0".into(),
            ));
        }
        self.params.validate()
    }
}

/// Serde helper: a `Duration` as a floating-point number of seconds.
pub mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes seconds as f64.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    /// Reads non-negative finite seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(p: &TestParams) -> String {
        p.validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(TestParams::default().validate(), Ok(()));
        assert_eq!(TestSpec::new("127.0.0.1", 5301).validate(), Ok(()));
    }

    #[test]
    fn rejects_impossible_values_with_a_message() {
        let p = TestParams {
            window: Some(0),
            ..Default::default()
        };
        assert!(err(&p).contains("--window 0"), "{}", err(&p));
        let p = TestParams {
            mss: Some(10),
            ..Default::default()
        };
        assert!(err(&p).contains("--mss 10"), "{}", err(&p));
        let p = TestParams {
            time: Duration::ZERO,
            ..Default::default()
        };
        assert!(err(&p).contains("--time"), "{}", err(&p));
        let p = TestParams {
            parallel: 0,
            ..Default::default()
        };
        assert!(err(&p).contains("--parallel"), "{}", err(&p));
        let p = TestParams {
            length: 0,
            ..Default::default()
        };
        assert!(err(&p).contains("--write-size"), "{}", err(&p));
        let p = TestParams {
            protocol: Protocol::Udp,
            length: 70000,
            ..Default::default()
        };
        assert!(err(&p).contains("--size"), "{}", err(&p));
        let p = TestParams {
            protocol: Protocol::Udp,
            length: 1400,
            rate: 0,
            ..Default::default()
        };
        assert!(err(&p).contains("--rate"), "{}", err(&p));
        let p = TestParams {
            congestion: Some("bbr; rm".into()),
            ..Default::default()
        };
        assert!(err(&p).contains("congestion"), "{}", err(&p));
        let p = TestParams {
            protocol: Protocol::Udp,
            length: 1400,
            mss: Some(1000),
            ..Default::default()
        };
        assert!(err(&p).contains("TCP only"), "{}", err(&p));
    }

    #[test]
    fn accepts_edges() {
        let p = TestParams {
            window: Some(MIN_WINDOW),
            mss: Some(MIN_MSS),
            ..Default::default()
        };
        assert_eq!(p.validate(), Ok(()));
        let p = TestParams {
            mss: Some(MIN_MSS - 1),
            ..Default::default()
        };
        assert!(p.validate().is_err());
    }

    #[test]
    fn interval_count() {
        let p = TestParams {
            time: Duration::from_millis(2500),
            ..Default::default()
        };
        assert_eq!(p.window_intervals(), 3);
        let p = TestParams {
            time: Duration::from_secs(2),
            ..Default::default()
        };
        assert_eq!(p.window_intervals(), 2);
    }

    #[test]
    fn params_roundtrip_json() {
        let p = TestParams {
            latency: Some(LatencyParams::default()),
            congestion: Some("bbr".into()),
            ..Default::default()
        };
        let s = serde_json::to_string(&p).expect("serializes");
        let back: TestParams = serde_json::from_str(&s).expect("parses");
        assert_eq!(back, p);
    }
}
