//! cargo-fuzz target: see `tunneld::fuzzing::wire`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tunneld::fuzzing::wire(data));
