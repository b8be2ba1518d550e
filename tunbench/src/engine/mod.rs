//! The traffic engine behind `tunbench server` and `tunbench client`: an iperf3-class
//! measurement of TCP and UDP throughput, UDP loss/jitter/reordering and latency
//! under load, with figures taken on the receiving side over a stated window after
//! a warm-up.
//!
//! ```no_run
//! use tunbench::engine::{run_client, Server, TestSpec};
//! let server = Server::bind("127.0.0.1:0".parse().unwrap()).unwrap().spawn();
//! let mut spec = TestSpec::new("127.0.0.1", server.local_addr().port());
//! spec.params.parallel = 2;
//! let result = run_client(&spec).unwrap();
//! println!("{}", serde_json::to_string(&result).unwrap());
//! ```
//!
//! Parallelism model:
//! 1. One control connection per test (JSON lines, [`proto`]); one test at a time per
//!    server, further clients are told the server is busy.
//! 2. One blocking OS thread per TCP stream, per UDP sender, and per UDP receive socket
//!    ([`streams`]); each owns its buffer and counts into lock-free buckets ([`stats`]).
//! 3. One session loop per side ([`session`]) owns time: window end, TCP_INFO samples,
//!    report exchange, abort.

pub mod auth;
pub mod client;
pub mod latency;
pub mod output;
pub mod proto;
pub mod result;
pub mod server;
pub mod session;
pub mod sock;
pub mod spec;
pub mod stats;
pub mod streams;

pub use client::run_client;
pub use latency::{LatencyResult, LatencySummary};
pub use result::{
    DirectionResult, Flow, IntervalResult, MeasuredBy, StreamResult, TestResult, SCHEMA,
};
pub use server::{Server, ServerCounters, ServerHandle, ServerOptions, ServerRecord};
pub use spec::{Direction, LatencyParams, Protocol, SpecError, TestParams, TestSpec, DEFAULT_PORT};

/// Why a test could not be run at all (a test that started and then failed returns
/// a partial [`TestResult`] instead).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// An impossible parameter.
    #[error("invalid test: {0}")]
    Spec(#[from] SpecError),
    /// The server could not be reached.
    #[error("cannot reach server {server}: {error}")]
    Connect {
        /// host:port as given.
        server: String,
        /// The socket error.
        error: std::io::Error,
    },
    /// The server answered with an error (busy, invalid parameters, ...).
    #[error("server refused the test: {0}")]
    Rejected(String),
    /// The control conversation broke before the test started.
    #[error("control protocol: {0}")]
    Protocol(#[from] proto::ProtoError),
    /// Setting up sockets for the test failed.
    #[error("test setup: {0}")]
    Setup(String),
    /// Binding the server's listener failed.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The socket error.
        error: std::io::Error,
    },
}
