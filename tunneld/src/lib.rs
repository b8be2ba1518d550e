//! tunneld: a userspace site-to-site IP tunnel over Linux TUN devices.
//!
//! Layers, from the wire up (protocol modules do no I/O; only `tun`,
//! `transport`, `dataplane` and `control` touch the operating system):
//! - [`units`]: sizes, rates and durations with units.
//! - [`config`]: the typed YAML config, validated into a checked form.
//! - [`keys`], [`prefix`]: X25519 key text and IP prefixes.
//! - [`wire`]: zero-copy views over IP headers and our frame format.
//! - [`crypto`]: AEAD providers, the Noise IK handshake, replay window.
//! - [`peer`], [`device`]: per-peer sessions and the sans-IO protocol core.
//! - [`tun`], [`transport`]: the two edges of the data path.
//! - [`dataplane`]: the loop that moves packets between them.
//! - [`routes`]: the peers' prefixes in the kernel's routing tables.
//! - [`control`]: metrics and status over a Unix socket.

pub mod config;
pub mod control;
pub mod crypto;
pub mod dataplane;
pub mod device;
pub mod fq;
pub mod gro;
pub mod keys;
pub mod peer;
pub mod prefix;
pub mod routes;
pub mod transport;
pub mod tun;
pub mod units;
pub mod wire;
