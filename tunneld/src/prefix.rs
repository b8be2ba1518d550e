//! IP prefixes (`198.18.2.0/24`, `fd00:2::/64`): parsing, display, serde and
//! the containment / overlap tests used for routing and source checks.
//!
//! Two parsers: [`Prefix::from_str`] for routes and allowed prefixes refuses
//! host bits (a typo like `198.18.2.1/24` is almost always a mistake), while
//! [`Prefix::parse_interface_addr`] accepts them because an interface address
//! such as `198.19.0.1/24` is an address plus the length of its subnet.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Why a prefix could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("\"{0}\" is not an IP address or prefix (expected e.g. 198.18.2.0/24 or fd00:2::/64)")]
    BadAddress(String),
    /// The length after `/` is not a number or exceeds 32 (IPv4) / 128 (IPv6).
    #[error("bad prefix length in \"{text}\" (expected 0..={max})")]
    BadLength {
        /// The text given.
        text: String,
        /// The largest length for this address family.
        max: u8,
    },
    /// Bits beyond the prefix length are set where a network prefix was expected.
    #[error("{text} has host bits set; did you mean {suggestion}?")]
    HostBits {
        /// The text given.
        text: String,
        /// The same prefix with host bits cleared.
        suggestion: Prefix,
    },
}

/// An IP address with a prefix length. For network prefixes the host bits are
/// zero; interface addresses (see [`Prefix::parse_interface_addr`]) keep them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

fn max_len(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Clears the bits of `addr` beyond `len` (len is already range-checked).
fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl Prefix {
    /// A network prefix; refuses a length beyond the family's maximum and host bits.
    pub fn new(addr: IpAddr, len: u8) -> Result<Prefix, PrefixError> {
        let p = Prefix::new_interface(addr, len)?;
        if p.network() != addr {
            return Err(PrefixError::HostBits {
                text: p.to_string(),
                suggestion: p.trunc(),
            });
        }
        Ok(p)
    }

    /// An interface address with its subnet length (host bits allowed).
    pub fn new_interface(addr: IpAddr, len: u8) -> Result<Prefix, PrefixError> {
        if len > max_len(&addr) {
            return Err(PrefixError::BadLength {
                text: format!("{addr}/{len}"),
                max: max_len(&addr),
            });
        }
        Ok(Prefix { addr, len })
    }

    /// Parses an interface address such as `198.19.0.1/24` where host bits are
    /// the point. A bare address means /32 or /128.
    pub fn parse_interface_addr(text: &str) -> Result<Prefix, PrefixError> {
        let t = text.trim();
        let (a, l) = match t.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (t, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| PrefixError::BadAddress(text.to_string()))?;
        let max = max_len(&addr);
        let len = match l {
            None => max,
            Some(l) => {
                // Digits only: u8::from_str would accept a leading '+'.
                if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(PrefixError::BadLength {
                        text: text.to_string(),
                        max,
                    });
                }
                l.parse::<u8>().map_err(|_| PrefixError::BadLength {
                    text: text.to_string(),
                    max,
                })?
            }
        };
        if len > max {
            return Err(PrefixError::BadLength {
                text: text.to_string(),
                max,
            });
        }
        Ok(Prefix { addr, len })
    }

    /// The address as written (for interface addresses it keeps host bits).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    #[allow(clippy::len_without_is_empty)] // a /0 prefix is not "empty"
    pub fn len(&self) -> u8 {
        self.len
    }

    /// The network address: `addr` with host bits cleared.
    pub fn network(&self) -> IpAddr {
        mask(self.addr, self.len)
    }

    /// This prefix with host bits cleared (`198.19.0.1/24` → `198.19.0.0/24`).
    pub fn trunc(&self) -> Prefix {
        Prefix {
            addr: self.network(),
            len: self.len,
        }
    }

    /// Whether this is an IPv4 prefix.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether this is an IPv6 prefix.
    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// Whether `ip` lies inside the prefix. An IPv4 address never matches an
    /// IPv6 prefix and vice versa (IPv4-mapped IPv6 addresses are not folded).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.len) == self.network()
    }

    /// Whether the two prefixes share at least one address (same family and
    /// one contains the other's network address).
    pub fn overlaps(&self, other: &Prefix) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    /// Parses a network prefix; a bare address means /32 or /128; host bits
    /// are refused with a suggestion.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let p = Prefix::parse_interface_addr(s)?;
        if p.network() != p.addr {
            return Err(PrefixError::HostBits {
                text: s.trim().to_string(),
                suggestion: p.trunc(),
            });
        }
        Ok(p)
    }
}

impl serde::Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Prefix {
    /// Deserializes a network prefix (host bits refused) from a string.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Parsed inside the visitor so serde_norway reports the value's line.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Prefix;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an IP prefix such as 198.18.2.0/24")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Prefix, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().expect("valid prefix")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid ip")
    }

    #[test]
    fn parses_and_displays() {
        assert_eq!(p("198.18.2.0/24").to_string(), "198.18.2.0/24");
        assert_eq!(p("fd00:2::/64").to_string(), "fd00:2::/64");
        assert_eq!(p("198.18.2.7").len(), 32);
        assert_eq!(p("fd00::1").len(), 128);
        assert_eq!(p("0.0.0.0/0").len(), 0);
        assert_eq!(p(" ::/0 ").to_string(), "::/0");
    }

    #[test]
    fn rejects_bad_text() {
        for bad in [
            "",
            "/24",
            "198.18.2.0/",
            "198.18.2.0/33",
            "fd00::/129",
            "198.18.2.0/+4",
            "198.18.2.0/-1",
            "198.18.2.0/24/1",
            "198.18.2/24",
            "hello",
            "198.18.2.0/1000",
        ] {
            assert!(bad.parse::<Prefix>().is_err(), "{bad} accepted");
        }
        assert!(matches!(
            "198.18.2.0/33".parse::<Prefix>(),
            Err(PrefixError::BadLength { max: 32, .. })
        ));
    }

    #[test]
    fn host_bits_refused_with_suggestion() {
        let err = "198.18.2.1/24".parse::<Prefix>().expect_err("host bits");
        assert_eq!(
            err.to_string(),
            "198.18.2.1/24 has host bits set; did you mean 198.18.2.0/24?"
        );
        let err = "fd00:2::1/64".parse::<Prefix>().expect_err("host bits");
        assert!(
            err.to_string().contains("did you mean fd00:2::/64?"),
            "{err}"
        );
        assert!(Prefix::new(ip("10.0.0.1"), 8).is_err());
    }

    #[test]
    fn interface_addresses_keep_host_bits() {
        let a = Prefix::parse_interface_addr("198.19.0.1/24").expect("iface addr");
        assert_eq!(a.addr(), ip("198.19.0.1"));
        assert_eq!(a.network(), ip("198.19.0.0"));
        assert_eq!(a.trunc(), p("198.19.0.0/24"));
        assert_eq!(a.to_string(), "198.19.0.1/24");
        assert!(Prefix::parse_interface_addr("198.19.0.1/40").is_err());
    }

    #[test]
    fn contains_and_overlaps() {
        let lan = p("198.18.2.0/24");
        assert!(lan.contains(ip("198.18.2.0")));
        assert!(lan.contains(ip("198.18.2.255")));
        assert!(!lan.contains(ip("198.18.3.0")));
        assert!(!lan.contains(ip("::ffff:198.18.2.1")));
        assert!(p("0.0.0.0/0").contains(ip("1.2.3.4")));
        assert!(!p("0.0.0.0/0").contains(ip("::1")));
        assert!(!p("::/0").contains(ip("1.2.3.4")));
        assert!(p("fd00:2::/64").contains(ip("fd00:2::abcd")));
        assert!(!p("fd00:2::/64").contains(ip("fd00:3::1")));

        assert!(lan.overlaps(&p("198.18.2.128/25")));
        assert!(p("198.18.2.128/25").overlaps(&lan));
        assert!(lan.overlaps(&p("198.18.0.0/15")));
        assert!(!lan.overlaps(&p("198.18.3.0/24")));
        assert!(!p("0.0.0.0/0").overlaps(&p("::/0")));
        assert!(p("198.19.0.2/32").overlaps(&p("198.19.0.2/32")));
    }

    #[test]
    fn serde_as_string() {
        let y = serde_norway::to_string(&p("fd00:2::/64")).expect("ser");
        assert_eq!(
            serde_norway::from_str::<Prefix>(&y).expect("de"),
            p("fd00:2::/64")
        );
        let err = serde_norway::from_str::<Prefix>("198.18.2.1/24").expect_err("host bits");
        assert!(err.to_string().contains("did you mean"), "{err}");
    }
}
