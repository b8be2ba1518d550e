//! Run-unique names: the lab prefix `tb<pid>x<seq>`, namespace names
//! `tb<pid>x<seq>-<short>`, interface names that must fit `IFNAMSIZ`, and
//! parsing namespace names back to find leftovers of crashed runs.

use super::error::{Result, TopoError};

/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
pub const IFNAME_MAX: usize = 15;
/// Longest short namespace name a caller may pass to `Lab::add_ns`. Namespace
/// names are files in `/run/netns` (no `IFNAMSIZ` limit), but short names keep
/// `ip netns list` readable.
pub const NS_SHORT_MAX: usize = 32;
/// Every name this module generates starts with this.
pub const PREFIX_HEAD: &str = "tb";

/// The lab prefix for process `pid` and per-process lab number `seq`.
pub fn lab_prefix(pid: u32, seq: u64) -> String {
    format!("{PREFIX_HEAD}{pid}x{seq}")
}

/// The full namespace name for `short` in the lab with `prefix`.
pub fn ns_name(prefix: &str, short: &str) -> Result<String> {
    check_short_ns(short)?;
    Ok(format!("{prefix}-{short}"))
}

/// An interface name made of the lab prefix and `suffix`, checked against
/// the 15-character kernel limit.
pub fn prefixed_ifname(prefix: &str, suffix: &str) -> Result<String> {
    let name = format!("{prefix}{suffix}");
    check_ifname(&name)?;
    Ok(name)
}

/// The parts of a namespace name in our scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedNs {
    /// PID of the process that created it.
    pub pid: u32,
    /// Lab number within that process.
    pub seq: u64,
    /// The caller's short name (`host-a`, ...).
    pub short: String,
}

/// Parses `tb<pid>x<seq>-<short>`; `None` for anything else (those names
/// belong to someone else and are never touched). Numbers must be canonical
/// decimal (no sign, no leading zeros) so that only names we could have
/// generated match.
pub fn parse_ns_name(name: &str) -> Option<OwnedNs> {
    let rest = name.strip_prefix(PREFIX_HEAD)?;
    let (pid, rest) = rest.split_once('x')?;
    let (seq, short) = rest.split_once('-')?;
    let pid: u32 = parse_canonical(pid)?;
    let seq: u64 = parse_canonical(seq)?;
    if pid == 0 || check_short_ns(short).is_err() {
        return None;
    }
    Some(OwnedNs {
        pid,
        seq,
        short: short.to_string(),
    })
}

fn parse_canonical<T: std::str::FromStr + ToString>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: T = s.parse().ok()?;
    (v.to_string() == s).then_some(v)
}

fn is_safe_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

/// Checks a caller-supplied short namespace name.
pub fn check_short_ns(short: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(TopoError::InvalidName {
            name: short.to_string(),
            reason: reason.to_string(),
        })
    };
    if short.is_empty() {
        return bad("empty");
    }
    if short.len() > NS_SHORT_MAX {
        return bad("longer than 32 characters");
    }
    if short.starts_with('.') || !short.chars().all(is_safe_char) {
        return bad("only ASCII letters, digits, '-', '_' and '.' (not leading) are allowed");
    }
    Ok(())
}

/// Checks an interface name: 1..=15 characters, no '/', ':' or whitespace.
pub fn check_ifname(name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(TopoError::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return bad("empty interface name");
    }
    if name.len() > IFNAME_MAX {
        return bad("interface names are limited to 15 characters");
    }
    if name == "." || name == ".." || !name.chars().all(is_safe_char) {
        return bad("only ASCII letters, digits, '-', '_' and '.' are allowed in interface names");
    }
    Ok(())
}

/// Turns a free-form lab tag into something safe for a directory name.
pub fn sanitize_tag(tag: &str) -> String {
    let s: String = tag
        .chars()
        .take(40)
        .map(|c| if is_safe_char(c) && c != '.' { c } else { '_' })
        .collect();
    if s.is_empty() {
        "lab".to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_ns_name_round_trip() {
        let p = lab_prefix(4242, 7);
        assert_eq!(p, "tb4242x7");
        let ns = ns_name(&p, "host-a").expect("valid");
        assert_eq!(ns, "tb4242x7-host-a");
        let parsed = parse_ns_name(&ns).expect("ours");
        assert_eq!(
            parsed,
            OwnedNs {
                pid: 4242,
                seq: 7,
                short: "host-a".into()
            }
        );
    }

    #[test]
    fn worst_case_generated_ifnames_fit() {
        // Linux pid_max is at most 2^22 = 4194304 (7 digits).
        let p = lab_prefix(4_194_304, 999);
        assert!(prefixed_ifname(&p, "br").is_ok(), "{p}br must fit");
        assert!(prefixed_ifname(&p, "a").is_ok());
        // And the check really rejects what does not fit.
        let p = lab_prefix(4_194_304, 99_999);
        assert!(prefixed_ifname(&p, "br").is_err());
    }

    #[test]
    fn parse_rejects_foreign_and_malformed_names() {
        for name in [
            "",
            "foo",
            "tb",
            "tb-a",
            "tbx1-a",
            "tb12x-a",
            "tb12x3",
            "tb12x3-",
            "tb012x3-a",
            "tb12x03-a",
            "tb+12x3-a",
            "tb0x3-a",
            "tb99999999999x3-a",
            "tb12y3-a",
            "TB12x3-a",
            "tb12x3-a/b",
            "tb12x3-.hidden",
            "xtb12x3-a",
        ] {
            assert_eq!(parse_ns_name(name), None, "{name:?} must not parse");
        }
        assert_eq!(parse_ns_name("tb1x0-wan").map(|o| o.pid), Some(1));
        assert_eq!(
            parse_ns_name("tb77x3-host-b").map(|o| o.short),
            Some("host-b".to_string())
        );
    }

    #[test]
    fn ifname_limits() {
        assert!(check_ifname("ve0").is_ok());
        assert!(check_ifname("abcdefghijklmno").is_ok());
        assert!(check_ifname("abcdefghijklmnop").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("a b").is_err());
        assert!(check_ifname("..").is_err());
    }

    #[test]
    fn short_ns_names() {
        assert!(check_short_ns("gw-a").is_ok());
        assert!(check_short_ns("").is_err());
        assert!(check_short_ns("../etc").is_err());
        assert!(check_short_ns(&"x".repeat(33)).is_err());
    }

    #[test]
    fn tags_are_sanitized() {
        assert_eq!(sanitize_tag("engine"), "engine");
        assert_eq!(sanitize_tag("a/b c.d"), "a_b_c_d");
        assert_eq!(sanitize_tag(""), "lab");
        assert_eq!(sanitize_tag(&"y".repeat(100)).len(), 40);
    }
}
