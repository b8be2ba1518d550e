//! cargo-fuzz target: an established pair of devices (fresh per input, so
//! a crash reproduces from its input alone) receives a sequence of frames:
//! records of a big-endian u16 length and that many bytes (a control byte,
//! then the frame; see `tunneld::fuzzing::DeviceTarget::receive`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut t = tunneld::fuzzing::DeviceTarget::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        t.receive(&rest[2..2 + n]);
        rest = &rest[2 + n..];
    }
});
