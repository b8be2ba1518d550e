//! Fixtures shared by the unit tests, the fuzz targets and the
//! micro-benchmarks: the config of one gateway of a test pair, and a
//! packet builder in smoltcp's `Repr` style ([`PacketRepr::emit`]) for
//! IPv4/IPv6 with TCP, UDP or ICMP echo and correct checksums. Not part of
//! the daemon.

use crate::config::{
    CipherKind, Config, DataplaneConfig, InterfaceConfig, PeerConfig, TransportKind,
};
use crate::keys::PrivateKey;
use crate::wire::{fold, pseudo_header_sum, sum_words};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The static key of gateway `seed` of a test pair.
pub fn key(seed: u8) -> PrivateKey {
    PrivateKey::from_bytes([seed; 32])
}

/// Gateway `me` (interface `tun{me}`, listening on 198.18.0.`me`:51820,
/// AES-256-GCM, offload on, batch 64, one worker and one flow) with one
/// peer, `peer{peer}`, at `endpoint`, routing `allowed`. Tests change the
/// fields they care about.
pub fn config(me: u8, peer: u8, endpoint: Option<SocketAddr>, allowed: &[&str]) -> Config {
    let private_key = key(me);
    Config {
        interface: InterfaceConfig {
            name: format!("tun{me}"),
            addresses: vec![],
            mtu: 1420,
        },
        listen: SocketAddr::from(([198, 18, 0, me], 51820)),
        public_key: private_key.public(),
        private_key,
        cipher: CipherKind::Aes256Gcm,
        insecure_lab_only: false,
        control_socket: PathBuf::from("/nonexistent"),
        socket_buffer: 1 << 20,
        mss_clamp: true,
        dataplane: DataplaneConfig {
            offload: true,
            batch: 64,
            workers: crate::config::Workers::Count(1),
            flows: 1,
            ..Default::default()
        },
        rekey_after_time: Duration::from_secs(120),
        rekey_after_bytes: 1 << 30,
        quic: None,
        metrics_listen: None,
        peers: vec![PeerConfig {
            name: format!("peer{peer}"),
            public_key: key(peer).public(),
            endpoint,
            allowed_prefixes: allowed
                .iter()
                .map(|p| p.parse().expect("test prefix"))
                .collect(),
            keepalive: None,
            transport: TransportKind::Udp,
            quic_pin: None,
            transit: None,
        }],
        health: None,
        routes: Default::default(),
        pmtud: Default::default(),
    }
}

/// The transport header of a [`PacketRepr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// A TCP segment; `options` bytes of TCP options (a multiple of 4)
    /// follow the fixed header: an MSS option first if `mss` is given,
    /// NOPs for the rest.
    Tcp {
        src_port: u16,
        dst_port: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        options: usize,
        mss: Option<u16>,
    },
    /// A UDP datagram.
    Udp { src_port: u16, dst_port: u16 },
    /// An ICMP (IPv4) or ICMPv6 echo request.
    Echo { id: u16, seq: u16 },
}

/// TCP flags for [`L4::Tcp`].
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// A packet to emit: addresses (both IPv4 or both IPv6), the ECN codepoint
/// and hop limit of the IP header, the transport header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketRepr {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ecn: u8,
    pub ttl: u8,
    /// IPv4 identification (ignored over IPv6).
    pub ident: u16,
    pub l4: L4,
}

impl PacketRepr {
    /// A packet from `src` to `dst` (addresses as text), not ECN-capable,
    /// TTL 64.
    pub fn new(src: &str, dst: &str, l4: L4) -> PacketRepr {
        PacketRepr {
            src: src.parse().expect("test address"),
            dst: dst.parse().expect("test address"),
            ecn: 0,
            ttl: 64,
            ident: 1,
            l4,
        }
    }

    /// A UDP datagram between ports 40000 and 5201.
    pub fn udp(src: &str, dst: &str) -> PacketRepr {
        PacketRepr::new(
            src,
            dst,
            L4::Udp {
                src_port: 40_000,
                dst_port: 5201,
            },
        )
    }

    /// A TCP segment (ACK set) between ports 40000 and 5201.
    pub fn tcp(src: &str, dst: &str, seq: u32) -> PacketRepr {
        PacketRepr::new(
            src,
            dst,
            L4::Tcp {
                src_port: 40_000,
                dst_port: 5201,
                seq,
                ack: 7,
                flags: tcp_flags::ACK,
                window: 502,
                options: 0,
                mss: None,
            },
        )
    }

    /// Length of the IP header.
    pub fn ip_header_len(&self) -> usize {
        if self.src.is_ipv4() {
            20
        } else {
            40
        }
    }

    /// Length of the transport header.
    pub fn l4_header_len(&self) -> usize {
        match self.l4 {
            L4::Tcp { options, .. } => 20 + options,
            L4::Udp { .. } | L4::Echo { .. } => 8,
        }
    }

    /// Both headers.
    pub fn header_len(&self) -> usize {
        self.ip_header_len() + self.l4_header_len()
    }

    /// The packet carrying `payload`, every length and checksum filled in.
    pub fn emit(&self, payload: &[u8]) -> Vec<u8> {
        let ip_len = self.ip_header_len();
        let l4_len = self.l4_header_len() + payload.len();
        let total = ip_len + l4_len;
        let mut p = vec![0u8; total];
        let proto = match (self.l4, self.src.is_ipv4()) {
            (L4::Tcp { .. }, _) => 6,
            (L4::Udp { .. }, _) => 17,
            (L4::Echo { .. }, true) => 1,
            (L4::Echo { .. }, false) => 58,
        };
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                p[0] = 0x45;
                p[1] = self.ecn & 3;
                p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                p[4..6].copy_from_slice(&self.ident.to_be_bytes());
                p[6] = 0x40; // DF
                p[8] = self.ttl;
                p[9] = proto;
                p[12..16].copy_from_slice(&s.octets());
                p[16..20].copy_from_slice(&d.octets());
                let c = !fold(sum_words(0, &p[..20]));
                p[10..12].copy_from_slice(&c.to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                p[0] = 0x60;
                p[1] = (self.ecn & 3) << 4;
                p[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                p[6] = proto;
                p[7] = self.ttl;
                p[8..24].copy_from_slice(&s.octets());
                p[24..40].copy_from_slice(&d.octets());
            }
            _ => panic!("test packet with mixed address families"),
        }
        let t = &mut p[ip_len..];
        let csum_at = match self.l4 {
            L4::Tcp {
                src_port,
                dst_port,
                seq,
                ack,
                flags,
                window,
                options,
                mss,
            } => {
                t[0..2].copy_from_slice(&src_port.to_be_bytes());
                t[2..4].copy_from_slice(&dst_port.to_be_bytes());
                t[4..8].copy_from_slice(&seq.to_be_bytes());
                t[8..12].copy_from_slice(&ack.to_be_bytes());
                t[12] = (((20 + options) / 4) as u8) << 4;
                t[13] = flags;
                t[14..16].copy_from_slice(&window.to_be_bytes());
                t[20..20 + options].fill(1); // NOP
                if let Some(m) = mss.filter(|_| options >= 4) {
                    t[20..22].copy_from_slice(&[2, 4]);
                    t[22..24].copy_from_slice(&m.to_be_bytes());
                }
                16
            }
            L4::Udp { src_port, dst_port } => {
                t[0..2].copy_from_slice(&src_port.to_be_bytes());
                t[2..4].copy_from_slice(&dst_port.to_be_bytes());
                t[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                6
            }
            L4::Echo { id, seq } => {
                t[0] = if self.src.is_ipv4() { 8 } else { 128 };
                t[4..6].copy_from_slice(&id.to_be_bytes());
                t[6..8].copy_from_slice(&seq.to_be_bytes());
                2
            }
        };
        let hl = self.l4_header_len();
        t[hl..].copy_from_slice(payload);
        // ICMPv4 has no pseudo-header.
        let pseudo = if proto == 1 {
            0
        } else {
            pseudo_header_sum(self.src, self.dst, proto, l4_len as u32)
        };
        let mut c = !fold(sum_words(pseudo, t));
        if proto == 17 && c == 0 {
            c = 0xffff;
        }
        t[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emitted_packets_verify() {
        for (src, dst) in [("198.18.1.2", "198.18.2.2"), ("fd00:1::2", "fd00:2::2")] {
            let syn = L4::Tcp {
                src_port: 1,
                dst_port: 2,
                seq: 3,
                ack: 0,
                flags: tcp_flags::SYN,
                window: 9,
                options: 8,
                mss: Some(1460),
            };
            for l4 in [
                PacketRepr::tcp(src, dst, 9).l4,
                PacketRepr::udp(src, dst).l4,
                L4::Echo { id: 1, seq: 2 },
                syn,
            ] {
                let r = PacketRepr::new(src, dst, l4);
                let p = r.emit(b"odd payload");
                let info = crate::wire::inner_ip_info(&p).expect("parses");
                assert_eq!(info.dst, r.dst);
                let hl = r.ip_header_len();
                if r.src.is_ipv4() {
                    assert_eq!(crate::wire::checksum(&p[..20]), 0);
                }
                let proto = if r.src.is_ipv4() { p[9] } else { p[6] };
                let pseudo = if proto == 1 {
                    0
                } else {
                    pseudo_header_sum(r.src, r.dst, proto, (p.len() - hl) as u32)
                };
                assert_eq!(!fold(sum_words(pseudo, &p[hl..])), 0, "{r:?}");
                if l4 == syn {
                    assert_eq!(p[hl + 20..hl + 28], [2, 4, 0x05, 0xb4, 1, 1, 1, 1]);
                }
            }
        }
    }
}
