//! cargo-fuzz target: see `tunneld::fuzzing::handshake`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tunneld::fuzzing::handshake(data));
