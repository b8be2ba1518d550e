//! The userspace WAN emulator (`tunbench wan-emu`, run inside the lab's wan
//! namespace where the kernel has no netem): it takes the place of the
//! bridge, moving frames between the two wan-side veths through AF_PACKET
//! sockets, one blocking thread per direction, each applying a rate limit
//! (token bucket), random loss, a delay line, and optional jitter/reorder.
//!
//! - [`model`]: the pure parts (RNG, token bucket, delay line, per-frame
//!   decision), unit-tested with virtual time.
//! - [`afpacket`]: sockets, batching (recvmmsg/sendmmsg), GSO pass-through
//!   with PACKET_VNET_HDR, threads and counters.

pub mod afpacket;
pub mod model;

pub use afpacket::{run, DirStats, EmuArgs, EmuStats};
pub use model::{DelayLine, Drop, Link, LinkParams, Rng, TokenBucket};
