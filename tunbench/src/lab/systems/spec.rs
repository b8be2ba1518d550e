//! The entries of a scenario's `systems:` list: a built-in row by name
//! (`raw`, `gotatun`, `wireguard-kernel`...) or any WireGuard
//! implementation that speaks the cross-platform UAPI control socket, named
//! by its binary:
//!
//! ```yaml
//! systems:
//!   - raw
//!   - wireguard: {binary: /opt/wg/wireguard-go, name: wireguard-go-2025}
//!   - wireguard: {binary: /usr/local/bin/neptun-cli, name: neptun, flavour: boringtun}
//! ```
//!
//! The rules that need no file system (names, counts, spelling) are checked
//! when the profile is parsed ([`check_rows`]); whether the binary exists and
//! is executable is checked when the row starts (a profile may name a binary
//! that only some hosts have: there the row says "not installed").

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, IntoDeserializer, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tunneld::units::Span;

use crate::lab::scenario::SystemKind;

/// Most `wireguard:` rows in one scenario: each gets a one-hex-digit
/// interface-name suffix (the lab prefix leaves 4 of IFNAMSIZ's 15 bytes).
pub const MAX_UAPI_ROWS: usize = 16;
/// Longest row name: it is a column of the terminal table and a file-name
/// part of the logs.
pub const MAX_NAME_LEN: usize = 32;
/// How long an implementation may take to create its UAPI socket unless the
/// row says otherwise: the slowest seen (wireguard-go building its TUN and
/// socket) needs well under a second; 10 s leaves room on a loaded host.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `start_timeout` a row may set: longer only delays the error.
pub const MAX_START_TIMEOUT: Duration = Duration::from_secs(120);

/// One row of the comparison.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum System {
    /// A built-in row, by name.
    Builtin(SystemKind),
    /// A WireGuard implementation named by its binary.
    Wireguard(UapiSpec),
}

/// How a userspace WireGuard implementation is started: its foreground and
/// privilege flags and environment differ; all create
/// `/var/run/wireguard/IFNAME.sock` and are configured with `wg set`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    /// Told from the binary's file name, else from its `--version` line.
    #[default]
    Auto,
    /// wireguard-go (any age): `-f IFNAME` (and `WG_PROCESS_FOREGROUND=1`,
    /// which versions before the flag read).
    Go,
    /// boringtun-cli and forks with its command line (NepTUN):
    /// `--foreground --disable-drop-privileges IFNAME`, `WG_SUDO=1`.
    Boringtun,
    /// GotaTun: `-f --disable-drop-privileges IFNAME` (without the flag it
    /// dies looking up a login session), `WG_SUDO=1`.
    Gotatun,
}

impl Flavour {
    /// The profile spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Flavour::Auto => "auto",
            Flavour::Go => "go",
            Flavour::Boringtun => "boringtun",
            Flavour::Gotatun => "gotatun",
        }
    }

    /// Tells the flavour from a file name or a `--version` line (first
    /// match of the known program names, case-insensitive).
    pub fn detect(text: &str) -> Option<Flavour> {
        let t = text.to_ascii_lowercase();
        if t.contains("wireguard-go") {
            Some(Flavour::Go)
        } else if t.contains("gotatun") {
            Some(Flavour::Gotatun)
        } else if t.contains("boringtun") || t.contains("neptun") {
            Some(Flavour::Boringtun)
        } else {
            None
        }
    }
}

/// `wireguard: {...}`: an implementation that speaks the UAPI socket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UapiSpec {
    /// The program: an absolute path, or a bare name looked up in PATH.
    pub binary: PathBuf,
    /// The row name (unique among the rows).
    pub name: String,
    /// How to start it; `auto` tells from the name or `--version`.
    #[serde(default)]
    pub flavour: Flavour,
    /// Extra arguments, placed before the interface name (e.g. a threads flag).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment (e.g. `GOMAXPROCS: "2"` for wireguard-go).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// How long it may take to create its UAPI socket (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout: Option<Span>,
}

impl UapiSpec {
    /// The start-up timeout.
    pub fn start_timeout(&self) -> Duration {
        self.start_timeout.map_or(DEFAULT_START_TIMEOUT, |s| s.0)
    }

    /// Finds the binary and checks that it can be run: `Ok(path)`, or
    /// `Err((missing, why))` where `missing` says the file is absent (the
    /// row is "not installed") rather than unusable.
    pub fn locate(&self) -> Result<PathBuf, (bool, String)> {
        use std::os::unix::fs::PermissionsExt;
        let shown = self.binary.display();
        let path = if self.binary.components().count() == 1 && !self.binary.is_absolute() {
            super::which(&self.binary.to_string_lossy())
                .ok_or_else(|| (true, format!("{shown} is not in PATH")))?
        } else {
            self.binary.clone()
        };
        let meta = std::fs::metadata(&path).map_err(|e| {
            let missing = e.kind() == std::io::ErrorKind::NotFound;
            (missing, format!("{}: {e}", path.display()))
        })?;
        if !meta.is_file() {
            return Err((false, format!("{} is not a file", path.display())));
        }
        let mode = meta.permissions().mode();
        if mode & 0o111 == 0 {
            return Err((
                false,
                format!(
                    "{} is not executable (mode {:o})",
                    path.display(),
                    mode & 0o7777
                ),
            ));
        }
        Ok(path)
    }

    /// The flavour to start `path` with: the profile's, else told from the
    /// file name, else from `version` (the program's `--version` line).
    pub fn resolve_flavour(&self, path: &Path, version: Option<&str>) -> Result<Flavour, String> {
        if self.flavour != Flavour::Auto {
            return Ok(self.flavour);
        }
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default();
        Flavour::detect(&file)
            .or_else(|| version.and_then(Flavour::detect))
            .ok_or_else(|| {
                format!(
                    "cannot tell how to start {} (neither its name nor {} names a known \
                     implementation): set `flavour:` to go, boringtun or gotatun",
                    path.display(),
                    version.map_or("a `--version` line".to_string(), |v| {
                        format!("its `--version` line {v:?}")
                    })
                )
            })
    }
}

impl System {
    /// The row name.
    pub fn as_str(&self) -> &str {
        match self {
            System::Builtin(k) => k.as_str(),
            System::Wireguard(w) => &w.name,
        }
    }

    /// The built-in kind, if it is one.
    pub fn kind(&self) -> Option<SystemKind> {
        match self {
            System::Builtin(k) => Some(*k),
            System::Wireguard(_) => None,
        }
    }

    /// The tunneld transport of a tunneld row; `None` for the other systems.
    pub fn tunneld_transport(&self) -> Option<tunneld::config::TransportKind> {
        self.kind().and_then(SystemKind::tunneld_transport)
    }
}

impl From<SystemKind> for System {
    fn from(k: SystemKind) -> System {
        System::Builtin(k)
    }
}

impl PartialEq<SystemKind> for System {
    fn eq(&self, other: &SystemKind) -> bool {
        self.kind() == Some(*other)
    }
}

impl fmt::Debug for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            System::Builtin(k) => write!(f, "{k:?}"),
            System::Wireguard(w) => write!(f, "{w:?}"),
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for System {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            System::Builtin(k) => k.serialize(s),
            System::Wireguard(w) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("wireguard", w)?;
                m.end()
            }
        }
    }
}

/// Serializes a row as its name (the `system` field of report rows).
pub fn serialize_name<S: Serializer>(sys: &System, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(sys.as_str())
}

impl<'de> Deserialize<'de> for System {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = System;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a system name or {wireguard: {binary: PATH, name: NAME}}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<System, E> {
                SystemKind::deserialize(v.into_deserializer()).map(System::Builtin)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<System, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::custom(
                        "an empty map is no system; write {wireguard: {binary: PATH, name: NAME}}",
                    ));
                };
                if key != "wireguard" {
                    return Err(de::Error::custom(format!(
                        "unknown system `{key}:`; the only system with settings is \
                         `wireguard: {{binary: PATH, name: NAME}}`"
                    )));
                }
                let spec: UapiSpec = map.next_value()?;
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "`{extra}:` beside `wireguard:`: one system per list item"
                    )));
                }
                Ok(System::Wireguard(spec))
            }
        }
        d.deserialize_any(V)
    }
}

/// The rules across rows: unique names (a `wireguard:` row may not take a
/// built-in row's name either), name spelling, how many binary rows, the
/// binary and environment spelling and the start-up timeout. The error
/// names the offending item's index in the list, when there is one.
pub fn check_rows(rows: &[System]) -> Result<(), (Option<usize>, String)> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        if let Some(first) = seen.insert(r.as_str(), i) {
            return Err((
                Some(i),
                format!(
                "rows {} and {} are both named \"{}\"; give each `wireguard:` row its own `name:`",
                first + 1,
                i + 1,
                r.as_str()
            ),
            ));
        }
    }
    let specs: Vec<(usize, &UapiSpec)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            System::Wireguard(w) => Some((i, w)),
            System::Builtin(_) => None,
        })
        .collect();
    if specs.len() > MAX_UAPI_ROWS {
        return Err((
            None,
            format!("{} `wireguard:` rows; at most {MAX_UAPI_ROWS}", specs.len()),
        ));
    }
    for (i, w) in specs {
        check_spec(w).map_err(|e| (Some(i), e))?;
    }
    Ok(())
}

/// The rules of one `wireguard:` row.
fn check_spec(w: &UapiSpec) -> Result<(), String> {
    let name = &w.name;
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "wireguard row name \"{name}\": use 1 to {MAX_NAME_LEN} letters, digits, `-`, `_` or `.`"
        ));
    }
    let bin = w.binary.to_string_lossy();
    if bin.trim().is_empty() {
        return Err(format!("wireguard row \"{name}\": `binary:` is empty"));
    }
    if bin.contains('/') && !w.binary.is_absolute() {
        return Err(format!(
            "wireguard row \"{name}\": binary {bin} is relative; give an absolute path \
             (or a bare name looked up in PATH)"
        ));
    }
    if let Some(k) = w
        .env
        .keys()
        .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
    {
        return Err(format!(
            "wireguard row \"{name}\": environment name \"{k}\" is not a variable name"
        ));
    }
    if w.args.iter().any(|a| a.contains('\0')) {
        return Err(format!(
            "wireguard row \"{name}\": an argument holds a NUL byte"
        ));
    }
    let t = w.start_timeout();
    if t.is_zero() || t > MAX_START_TIMEOUT {
        return Err(format!(
            "wireguard row \"{name}\": start_timeout {t:?} is out of range (0, {MAX_START_TIMEOUT:?}]"
        ));
    }
    Ok(())
}
