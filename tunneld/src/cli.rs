//! Small pieces the command-line programs share: how an error chain is
//! printed, and writing a new file without clobbering an old one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// An error and its causes on one line, `outer: cause: root`, each cause
/// once: many errors already put their source in their own message, and
/// printing the chain naively repeats it ("reading k: No such file: No
/// such file").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Writes a new file with `mode`; refuses to overwrite an existing one.
pub fn write_new(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("config k.yaml: {source}")]
        Repeats {
            #[source]
            source: std::io::Error,
        },
        #[error("loading the key")]
        Adds(#[source] std::io::Error),
    }

    #[test]
    fn each_cause_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(Outer::Repeats { source: io() }).context("starting tun-a");
        assert_eq!(
            error_chain(e.as_ref()),
            "starting tun-a: config k.yaml: no such file"
        );
        let e = Outer::Adds(io());
        assert_eq!(error_chain(&e), "loading the key: no such file");
    }
}
