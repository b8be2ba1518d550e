//! cargo-fuzz target: see `tunneld::fuzzing::config_yaml` (a key file
//! `a.key` is written once to a temporary directory).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("tunneld-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        let _ = tunneld::keys::PrivateKey::from_bytes([3; 32]).save_file(&d.join("a.key"));
        d
    })
}

fuzz_target!(|data: &[u8]| tunneld::fuzzing::config_yaml(data, dir()));
