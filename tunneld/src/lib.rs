//! tunneld: a userspace site-to-site IP tunnel over Linux TUN devices.
//!
//! Layers, from the wire up (protocol modules do no I/O; only `tun`,
//! `transport`, `dataplane` and `control` touch the operating system):
//! - [`units`]: sizes, rates and durations with units.
//! - [`config`]: the typed YAML config, validated into a checked form;
//!   [`yaml`]: the profile toolkit it shares with tunbench (errors with
//!   file, line and field; the field locator; value visitors; `kind:`).
//! - [`keys`], [`prefix`]: X25519 key text and IP prefixes.
//! - [`wire`]: zero-copy views over IP headers and our frame format.
//! - [`crypto`]: AEAD providers, the Noise IK handshake, replay window.
//! - [`peer`], [`device`]: per-peer sessions and the sans-IO protocol core;
//!   [`fastpath`]: its lock-free half, sealing and opening data frames
//!   with a published snapshot of the device;
//!   [`admission`]: which handshake messages get public-key work.
//! - [`tun`], [`transport`]: the two edges of the data path.
//! - [`dataplane`]: the loop that moves packets between them.
//! - [`routes`]: the peers' prefixes in the kernel's routing tables.
//! - [`control`]: metrics and status over a Unix socket; [`io_counters`]:
//!   the data path's I/O counters, declared once for status, metrics and docs.
//! - [`reload`]: applying a changed config to a running tunnel.
//! - [`metrics`], [`http`]: the Prometheus view and its `/metrics` listener.
//! - [`show`]: the human view (`tunneld show`).
//! - [`service`]: systemd readiness, reload and watchdog notifications.
//! - [`cli`]: error chains and file writing for the programs.
//! - `fuzzing`: fuzz target bodies (test suite and cargo-fuzz).
//! - [`lograte`]: rate limits for log lines that unauthenticated sources cause.

pub mod admission;
pub mod cli;
pub mod config;
pub mod control;
pub mod crypto;
pub mod dataplane;
pub mod device;
pub mod fastpath;
pub mod fq;
#[doc(hidden)]
pub mod fuzzing;
pub mod gro;
pub mod http;
pub mod io_counters;
pub mod keys;
pub mod lograte;
pub mod metrics;
pub mod peer;
pub mod pmtud;
pub mod prefix;
pub mod reload;
pub mod routes;
pub mod service;
pub mod show;
pub mod slab;
#[doc(hidden)]
pub mod testkit;
pub mod transport;
pub mod tso;
pub mod tun;
pub mod tuntest;
pub mod units;
pub mod wire;
pub mod workers;
pub mod yaml;

#[cfg(test)]
mod dataplane_inproc_tests;
#[cfg(test)]
mod fuzz_tests;
