//! The tunnel's protocol core, free of I/O: given packets from the TUN device,
//! datagrams from the transport and the passage of time, it decides what to
//! seal, open, send, drop and count. The dataplane owns the sockets and the
//! clock and calls in here (the quinn-proto / smoltcp way), so every path is
//! unit-testable with a virtual clock and no sockets.
//!
//! Buffers: an outbound packet is read into `buf[HEADROOM..]` so the frame
//! header is written in front of it and the tag behind it, sealing in place.
//! An inbound frame is opened in place and the inner packet handed back as a
//! range of the same buffer.

use crate::admission::{Admission, Admit};
use crate::config::{CipherKind, Config, HealthConfig, PeerConfig, PmtudConfig};
use crate::crypto::aead::{new_aead, TAG_LEN};
use crate::crypto::cookie::CookieChecker;
use crate::crypto::handshake::{self, Identity, INIT_NOISE_LEN, RESPONSE_NOISE_LEN};
use crate::fastpath::{
    FastCounters, FastPath, FastPeer, IndexEntry, Opened, Sealed, Tally, Unroutable,
};
use crate::keys::{PrivateKey, PublicKey};
use crate::peer::{Peer, Pending, Session, Slot};
use crate::pmtud::{Control, Pmtud};
use crate::wire::{self, MessageType};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes in front of an inner packet: the data frame header.
pub const HEADROOM: usize = wire::DATA_HEADER_LEN;
/// Bytes behind an inner packet: the AEAD tag.
pub const TAILROOM: usize = TAG_LEN;
/// Frame overhead added to every inner packet.
pub const OVERHEAD: usize = HEADROOM + TAILROOM;
const INIT_FRAME_LEN: usize = wire::HANDSHAKE_INIT_HEADER_LEN + INIT_NOISE_LEN + wire::MACS_LEN;
const RESPONSE_FRAME_LEN: usize =
    wire::HANDSHAKE_RESPONSE_HEADER_LEN + RESPONSE_NOISE_LEN + wire::MACS_LEN;
/// Unanswered initiations before the log explains a missing session: the
/// first one or two are often lost to a peer that is still starting.
const DIAG_LOG_AFTER: u32 = 3;
/// How often the log repeats that explanation for one peer: a dead peer
/// retries every 4 s and must not fill the journal.
const DIAG_LOG_EVERY: Duration = Duration::from_secs(60);
/// A session whose peer stays silent this long after we sent data is
/// presumed dead and a new handshake starts.
const DEAD_PEER_AFTER: Duration = Duration::from_secs(15);
/// Send a keepalive when we received data but have had nothing to send for
/// this long, so the peer's dead-peer detection stays quiet.
const PASSIVE_KEEPALIVE: Duration = Duration::from_secs(10);

/// The clock readings the caller supplies.
#[derive(Debug, Clone, Copy)]
pub struct Time {
    /// Monotonic time for all timers.
    pub now: Instant,
    /// Wall-clock time since the Unix epoch, for handshake timestamps only.
    pub unix: Duration,
}

/// A control datagram to send (handshakes, keepalives, flushed staged packets).
#[derive(Debug, Clone)]
pub struct Datagram {
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// Packet and drop counters, by reason.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Counters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames or inner packets that failed to parse.
    pub drop_malformed: u64,
    /// Data frames whose AEAD tag did not verify.
    pub drop_bad_tag: u64,
    /// Data frames whose counter was already seen or is too old.
    pub drop_replay: u64,
    /// Data frames or responses for an index we do not hold.
    pub drop_unknown_index: u64,
    /// Inner packets whose source is outside the sending peer's prefixes.
    pub drop_spoofed_source: u64,
    /// Handshake messages that failed to verify, came from an unknown key, or replayed a timestamp.
    pub drop_handshake_invalid: u64,
    /// Handshake messages dropped by the rate limits: over their source
    /// address's budget under load, or over the cookie reply budget.
    pub drop_handshake_ratelimit: u64,
    /// Handshake messages whose mac1 did not verify (random bytes, or meant
    /// for another key): dropped before any public-key work.
    pub drop_handshake_mac: u64,
    /// Cookie replies that did not authenticate or answered nothing we sent.
    pub drop_cookie_invalid: u64,
    /// Handshake messages answered with a cookie reply (under load, no valid
    /// mac2) instead of public-key work.
    pub cookie_replies_sent: u64,
    /// Cookie replies accepted from peers (we were asked to prove our address).
    pub cookie_replies_received: u64,
    /// Received handshake messages that were given public-key work (each a
    /// few X25519 operations): the cost a flood can impose.
    pub handshake_dh: u64,
    /// Data frames for an unknown index that would have triggered a
    /// handshake but came within 5 s of the last one so triggered.
    pub triggered_handshakes_suppressed: u64,
    /// Packets from the TUN device whose destination no peer covers.
    pub drop_no_route: u64,
    /// Staged packets pushed out while waiting for a handshake.
    pub drop_no_session: u64,
    /// Handshakes completed (as initiator or responder).
    pub handshakes: u64,
    /// Inner packets from a peer to another peer's prefixes that its
    /// `transit` list does not allow (hub policy).
    pub drop_transit_denied: u64,
    /// Path MTU probes sent (see [`crate::pmtud`]; sentinels included).
    pub pmtu_probes_sent: u64,
    /// Probes from peers answered with an ack.
    pub pmtu_probes_answered: u64,
    /// Acks that answered a probe of ours in flight.
    pub pmtu_acks_received: u64,
    /// Acks that answered nothing in flight (late, or duplicated).
    pub pmtu_acks_stray: u64,
}

/// A peer became reachable (`up`: a session is established and the peer is
/// heard from) or stopped being so. The dataplane hands these to the route
/// manager ([`crate::routes`]), which installs or withdraws the peer's
/// allowed prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEvent {
    /// The peer's position in the config's `peers` (`usize::MAX` for a
    /// peer a reload removed).
    pub peer: usize,
    /// Its configured name.
    pub name: String,
    /// True: now up; false: now down.
    pub up: bool,
}

/// A snapshot of one peer for `tunneld status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    pub name: String,
    /// `udp`, `quic` or `tcp`.
    pub transport: crate::config::TransportKind,
    pub endpoint: Option<String>,
    pub session: bool,
    /// Session established and the peer heard from recently enough (see
    /// `health:`): what `routes.install: on-session` follows.
    pub up: bool,
    /// Times the peer went down since start.
    pub downs: u64,
    /// Its packets to other peers refused by its `transit` list.
    pub transit_denied: u64,
    pub last_handshake_secs_ago: Option<f64>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub handshakes: u64,
    /// The peer's public key (base64).
    pub public_key: String,
    /// Its allowed prefixes, as configured.
    pub allowed_prefixes: Vec<String>,
    /// Persistent keepalive interval, if set.
    pub keepalive_secs: Option<u64>,
    /// Initiations sent since the last session was established.
    pub initiations_unanswered: u32,
    /// Wall-clock time (Unix seconds) of the first of them.
    pub unanswered_since_unix: Option<u64>,
    /// The last handshake failure seen with this peer, in words.
    pub refusal: Option<String>,
    /// Path MTU probing: `disabled`, `idle`, `confirming`, `base`,
    /// `searching`, `complete`, `unsupported` (the peer does not answer
    /// probes) or `error` (see [`crate::pmtud`]).
    pub pmtud: &'static str,
    /// The outer path MTU probing validated (IP packet bytes), if it runs.
    pub path_mtu: Option<usize>,
    /// The largest inner packet sent to the peer when probing limits it
    /// below the interface MTU (larger ones are answered with ICMP too-big).
    pub inner_mtu_limit: Option<usize>,
    /// Probe frames sent to the peer and acknowledged by it.
    pub pmtu_probes: u64,
    pub pmtu_acks: u64,
    /// Black holes found on the path (a size that worked stopped getting
    /// through while small frames did).
    pub pmtu_black_holes: u64,
}

/// What [`Device::reconfigure`] changed, by peer name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconfigured {
    /// Peers that are new (by public key).
    pub added: Vec<String>,
    /// Peers no longer in the config: their sessions are gone.
    pub removed: Vec<String>,
    /// Peers whose settings changed; their sessions are kept.
    pub changed: Vec<String>,
    /// Peers kept as they were.
    pub unchanged: Vec<String>,
}

/// Why a packet from the TUN device was not sent at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sealed in place: send `buf[..len]` to `to`.
    Send { to: SocketAddr, len: usize },
    /// Queued until a handshake completes, or dropped and counted.
    Held,
}

/// What the protocol core reads from a checked [`Config`]: its keys and
/// cipher, the peers, rekey limits, MSS clamping, liveness and path MTU
/// probing. The interface, sockets, routes, metrics and the control socket
/// are the daemon's and never reach the device.
#[derive(Clone)]
pub struct DeviceConfig {
    /// Our static key (read by [`Device::new`] only; a reload cannot
    /// change it).
    pub private_key: PrivateKey,
    pub public_key: PublicKey,
    /// The AEAD of data frames (read by [`Device::new`] only).
    pub cipher: CipherKind,
    pub peers: Vec<PeerConfig>,
    pub rekey_after_time: Duration,
    pub rekey_after_bytes: u64,
    /// The largest TCP MSS of IPv4 and IPv6 SYNs, when `mss_clamp` is on.
    pub mss: (Option<u16>, Option<u16>),
    /// The TUN device's MTU: what path MTU probing searches for.
    pub tun_mtu: u16,
    /// `dataplane.flows: 1`: a peer's frames all come from one socket.
    pub single_flow: bool,
    pub health: Option<HealthConfig>,
    pub pmtud: PmtudConfig,
}

impl From<&Config> for DeviceConfig {
    fn from(cfg: &Config) -> Self {
        DeviceConfig {
            private_key: cfg.private_key.clone(),
            public_key: cfg.public_key,
            cipher: cfg.cipher,
            peers: cfg.peers.clone(),
            rekey_after_time: cfg.rekey_after_time,
            rekey_after_bytes: cfg.rekey_after_bytes,
            mss: mss_limits(cfg),
            tun_mtu: cfg.interface.mtu,
            single_flow: cfg.dataplane.flows <= 1,
            health: cfg.health,
            pmtud: cfg.pmtud,
        }
    }
}

impl std::fmt::Debug for DeviceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key is never printed.
        f.debug_struct("DeviceConfig")
            .field("public_key", &self.public_key)
            .field("cipher", &self.cipher)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

/// The protocol state of one tunnel interface.
pub struct Device {
    identity: Identity,
    cipher: CipherKind,
    peers: Vec<Peer>,
    /// Each peer's transport name (same order as `peers`), for status.
    transports: Vec<crate::config::TransportKind>,
    /// Local session/handshake index → peer position.
    indexes: HashMap<u32, usize>,
    /// Allowed prefixes, longest first, with their peer.
    routes: Vec<(crate::prefix::Prefix, usize)>,
    mss_v4: Option<u16>,
    mss_v6: Option<u16>,
    rekey_after_time: Duration,
    reject_after_time: Duration,
    rekey_after_bytes: u64,
    /// `dataplane.flows: 1`: a peer's frames all come from one socket, so a
    /// port change is a NAT rebinding to follow at once (see [`moves_endpoint`]).
    single_flow: bool,
    counters: Counters,
    /// mac1/mac2 checks and cookie replies for messages addressed to us.
    checker: CookieChecker,
    admission: Admission,
    /// Log lines about refused handshakes (anyone can cause them).
    refused_log: crate::lograte::LogLimiter,
    dropped: Vec<u32>,
    /// Fast dead-peer detection, when configured.
    health: Option<HealthConfig>,
    /// Each peer's last reported state (same order as `peers`).
    up: Vec<bool>,
    /// Times each peer went down.
    downs: Vec<u64>,
    /// Up/down changes not yet taken by the dataplane.
    events: Vec<PeerEvent>,
    /// Each peer's `transit` list (peer positions); `None`: any.
    transit: Vec<Option<Vec<usize>>>,
    /// Packets each peer had refused by its `transit` list (on the slow
    /// path; the lock-free path counts in the peer's stats).
    transit_denied: Vec<u64>,
    /// Path MTU probing settings (`pmtud:`) and the TUN MTU it serves.
    pmtud: crate::config::PmtudConfig,
    tun_mtu: usize,
    /// The smallest frame limit probing set on any peer (frames up to it
    /// need no per-peer lookup).
    pmtu_floor: Option<usize>,
    /// The snapshot the data-path workers seal and open with.
    fast: Arc<ArcSwap<FastPath>>,
    /// Counters the lock-free path moves.
    fast_counters: Arc<FastCounters>,
    /// State the snapshot shows changed since it was last published.
    dirty: bool,
}

impl Device {
    /// Builds the device state from a checked config.
    pub fn new(cfg: impl Into<DeviceConfig>) -> Self {
        let cfg: DeviceConfig = cfg.into();
        let identity = Identity::new(*cfg.private_key.as_bytes(), *cfg.public_key.as_bytes());
        let peers: Vec<Peer> = cfg
            .peers
            .iter()
            .map(|p| {
                Peer::new(
                    p.name.clone(),
                    *p.public_key.as_bytes(),
                    p.endpoint,
                    p.allowed_prefixes.clone(),
                    keepalive_with_health(p.keepalive, cfg.health),
                )
            })
            .collect();
        let routes = routes_of(&peers);
        let (mss_v4, mss_v6) = cfg.mss;
        let reject_after_time = reject_after(cfg.rekey_after_time);
        let fast_counters = Arc::new(FastCounters::default());
        let empty = FastPath {
            routes: Vec::new(),
            peers: Vec::new(),
            indexes: HashMap::new(),
            mss_v4: None,
            mss_v6: None,
            reject_after: Duration::ZERO,
            single_flow: true,
            counters: fast_counters.clone(),
            probed_floor: None,
        };
        let mut dev = Device {
            checker: CookieChecker::new(identity.public()),
            identity,
            cipher: cfg.cipher,
            transports: cfg.peers.iter().map(|p| p.transport).collect(),
            peers,
            indexes: HashMap::new(),
            routes,
            mss_v4,
            mss_v6,
            rekey_after_time: cfg.rekey_after_time,
            reject_after_time,
            rekey_after_bytes: cfg.rekey_after_bytes,
            single_flow: cfg.single_flow,
            counters: Counters::default(),
            admission: Admission::new(),
            refused_log: crate::lograte::LogLimiter::new(),
            dropped: Vec::new(),
            health: cfg.health,
            up: vec![false; cfg.peers.len()],
            downs: vec![0; cfg.peers.len()],
            events: Vec::new(),
            transit: cfg.peers.iter().map(|p| p.transit.clone()).collect(),
            transit_denied: vec![0; cfg.peers.len()],
            pmtud: cfg.pmtud,
            tun_mtu: usize::from(cfg.tun_mtu),
            pmtu_floor: None,
            fast: Arc::new(ArcSwap::from_pointee(empty)),
            fast_counters,
            dirty: true,
        };
        dev.arm_pmtud();
        dev.publish();
        dev
    }

    /// The published snapshot for lock-free sealing and opening
    /// ([`crate::fastpath`]); the device replaces its contents after every
    /// change to sessions, endpoints or routes.
    pub fn fast_path(&self) -> Arc<ArcSwap<FastPath>> {
        self.fast.clone()
    }

    /// Publishes a new snapshot if anything it shows changed.
    fn publish_if_dirty(&mut self) {
        if self.dirty {
            self.publish();
        }
    }

    /// Publishes the snapshot of routes, endpoints and sessions.
    fn publish(&mut self) {
        let udp = crate::config::TransportKind::Udp;
        let peers = self
            .peers
            .iter()
            .zip(&self.transports)
            .zip(&self.transit)
            .map(|((p, t), transit)| FastPeer {
                endpoint: p.endpoint,
                current: p.current.clone(),
                allowed: p.allowed.clone(),
                transit: transit.clone(),
                udp: *t == udp,
                stats: p.stats.clone(),
                probed_max_frame: p.pmtu.limit(),
            })
            .collect();
        let mut indexes = HashMap::new();
        for (i, p) in self.peers.iter().enumerate() {
            for slot in [Slot::Current, Slot::Previous, Slot::Next] {
                if let Some(s) = p.session(slot) {
                    let entry = IndexEntry {
                        peer: i,
                        slot,
                        session: s.clone(),
                    };
                    indexes.insert(s.local_index, entry);
                }
            }
        }
        self.fast.store(Arc::new(FastPath {
            routes: self.routes.clone(),
            peers,
            indexes,
            mss_v4: self.mss_v4,
            mss_v6: self.mss_v6,
            reject_after: self.reject_after_time,
            single_flow: self.single_flow,
            counters: self.fast_counters.clone(),
            probed_floor: self.pmtu_floor,
        }));
        self.dirty = false;
    }

    /// Takes the peer up/down changes since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<PeerEvent> {
        std::mem::take(&mut self.events)
    }

    /// Whether peer `i` is up (as last reported by an event).
    pub fn peer_up(&self, i: usize) -> bool {
        self.up.get(i).copied().unwrap_or(false)
    }

    /// Whether peer `pi` is alive at `now`: a usable session, and (with
    /// `health:`) something authenticated from it within `dead_after`, or
    /// (without) no data of ours unanswered for [`DEAD_PEER_AFTER`].
    fn alive(&self, pi: usize, now: Instant) -> bool {
        let peer = &self.peers[pi];
        let usable = peer
            .current
            .as_ref()
            .is_some_and(|s| s.can_send(now, self.reject_after_time));
        if !usable {
            return false;
        }
        match self.health {
            Some(h) => [peer.stats.last_received(), peer.last_handshake]
                .into_iter()
                .flatten()
                .max()
                .is_some_and(|t| now.duration_since(t) < h.dead_after),
            None => peer
                .stats
                .unanswered_since()
                .is_none_or(|since| now.duration_since(since) < DEAD_PEER_AFTER),
        }
    }

    /// Compares each peer's liveness with what was last reported and
    /// queues an event for every change.
    fn update_liveness(&mut self, now: Instant) {
        for pi in 0..self.peers.len() {
            let alive = self.alive(pi, now);
            if alive == self.up[pi] {
                continue;
            }
            self.up[pi] = alive;
            let name = self.peers[pi].name.clone();
            if alive {
                log::info!("peer {name} is up");
            } else {
                self.downs[pi] += 1;
                log::warn!("peer {name} is down");
            }
            self.events.push(PeerEvent {
                peer: pi,
                name,
                up: alive,
            });
        }
    }

    /// The counters so far (the lock-free path's included).
    pub fn counters(&self) -> Counters {
        let mut c = self.counters.clone();
        self.fast_counters.add_to(&mut c);
        c
    }

    /// Per-peer status at `now`.
    pub fn peer_status(&self, now: Instant) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .zip(&self.transports)
            .enumerate()
            .map(|(i, (p, t))| PeerStatus {
                name: p.name.clone(),
                transport: *t,
                endpoint: p.endpoint.map(|e| e.to_string()),
                session: p
                    .current
                    .as_ref()
                    .is_some_and(|s| s.can_send(now, self.reject_after_time)),
                up: self.up[i],
                downs: self.downs[i],
                transit_denied: self.transit_denied[i] + p.stats.transit_denied(),
                last_handshake_secs_ago: p
                    .last_handshake
                    .map(|t| now.duration_since(t).as_secs_f64()),
                tx_bytes: p.stats.tx_bytes(),
                rx_bytes: p.stats.rx_bytes(),
                handshakes: p.handshakes,
                public_key: crate::keys::PublicKey::from_bytes(p.public).to_string(),
                allowed_prefixes: p.allowed.iter().map(|a| a.to_string()).collect(),
                keepalive_secs: p.keepalive.map(|k| k.as_secs()),
                initiations_unanswered: p.diag.unanswered,
                unanswered_since_unix: p.diag.unanswered_since.map(|d| d.as_secs()),
                refusal: p.diag.refusal.clone(),
                pmtud: p.pmtu.phase().as_str(),
                path_mtu: p.pmtu.path_mtu(),
                inner_mtu_limit: p.pmtu.limit().map(|f| f.saturating_sub(OVERHEAD)),
                pmtu_probes: p.pmtu.stats().probes,
                pmtu_acks: p.pmtu.stats().acks,
                pmtu_black_holes: p.pmtu.stats().black_holes,
            })
            .collect()
    }

    /// Applies a reloaded config: peers are matched by public key, so a
    /// peer whose key is unchanged keeps its sessions and counters while its
    /// name, endpoint, allowed prefixes and keepalive take the new values
    /// (a learned endpoint is kept unless the configured one changed). A
    /// removed peer's sessions and queued packets are dropped at once (its
    /// frames then count as unknown-index drops, its initiations as
    /// handshakes from an unknown key); a new peer starts without a session.
    /// Rekey limits and MSS clamping take effect for every packet from now
    /// on. The interface, listen address, private key and cipher are not
    /// read: the caller refuses changes to those.
    pub fn reconfigure(&mut self, cfg: impl Into<DeviceConfig>) -> Reconfigured {
        let cfg: DeviceConfig = cfg.into();
        // Liveness and counters of each peer, by public key, to carry over.
        let was: HashMap<[u8; 32], (String, bool, u64, u64)> = self
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    p.public,
                    (
                        p.name.clone(),
                        self.up[i],
                        self.downs[i],
                        self.transit_denied[i],
                    ),
                )
            })
            .collect();
        let mut old = std::mem::take(&mut self.peers);
        let mut done = Reconfigured::default();
        let mut peers = Vec::with_capacity(cfg.peers.len());
        for pc in &cfg.peers {
            let key = *pc.public_key.as_bytes();
            let peer = match old.iter().position(|p| p.public == key) {
                Some(i) => {
                    let mut p = old.swap_remove(i);
                    let same = p.name == pc.name
                        && p.configured_endpoint == pc.endpoint
                        && p.allowed == pc.allowed_prefixes
                        && p.keepalive == pc.keepalive;
                    if p.configured_endpoint != pc.endpoint {
                        p.endpoint = pc.endpoint.or(p.endpoint);
                        p.configured_endpoint = pc.endpoint;
                    }
                    p.name.clone_from(&pc.name);
                    p.allowed.clone_from(&pc.allowed_prefixes);
                    p.keepalive = keepalive_with_health(pc.keepalive, cfg.health);
                    if same {
                        done.unchanged.push(pc.name.clone());
                    } else {
                        done.changed.push(pc.name.clone());
                    }
                    p
                }
                None => {
                    done.added.push(pc.name.clone());
                    Peer::new(
                        pc.name.clone(),
                        key,
                        pc.endpoint,
                        pc.allowed_prefixes.clone(),
                        keepalive_with_health(pc.keepalive, cfg.health),
                    )
                }
            };
            peers.push(peer);
        }
        done.removed = old.iter().map(|p| p.name.clone()).collect();
        // Removed peers that were up go down (their routes are withdrawn).
        for p in &old {
            if was.get(&p.public).is_some_and(|w| w.1) {
                self.events.push(PeerEvent {
                    peer: usize::MAX,
                    name: p.name.clone(),
                    up: false,
                });
            }
        }
        self.peers = peers;
        self.health = cfg.health;
        self.transit = cfg.peers.iter().map(|p| p.transit.clone()).collect();
        self.up = Vec::with_capacity(self.peers.len());
        self.downs = Vec::with_capacity(self.peers.len());
        self.transit_denied = Vec::with_capacity(self.peers.len());
        for (i, p) in self.peers.iter().enumerate() {
            let (old_name, up, downs, denied) =
                was.get(&p.public)
                    .cloned()
                    .unwrap_or((p.name.clone(), false, 0, 0));
            if up && old_name != p.name {
                // Renamed while up: its routes move to the new name.
                self.events.push(PeerEvent {
                    peer: usize::MAX,
                    name: old_name,
                    up: false,
                });
                self.events.push(PeerEvent {
                    peer: i,
                    name: p.name.clone(),
                    up: true,
                });
            }
            self.up.push(up);
            self.downs.push(downs);
            self.transit_denied.push(denied);
        }
        self.transports = cfg.peers.iter().map(|p| p.transport).collect();
        // Positions moved: index the surviving sessions and handshakes again.
        self.indexes = self
            .peers
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.local_indexes().map(move |x| (x, i)))
            .collect();
        self.routes = routes_of(&self.peers);
        (self.mss_v4, self.mss_v6) = cfg.mss;
        self.rekey_after_time = cfg.rekey_after_time;
        self.reject_after_time = reject_after(cfg.rekey_after_time);
        self.rekey_after_bytes = cfg.rekey_after_bytes;
        self.pmtud = cfg.pmtud;
        self.arm_pmtud();
        self.publish();
        done
    }

    /// True when `addr` is some peer's current endpoint: configured, or
    /// learnt from a frame that authenticated (handshake or data), so the
    /// transport may stop treating a connection from `addr` as pending.
    pub fn is_peer_endpoint(&self, addr: SocketAddr) -> bool {
        self.peers.iter().any(|p| p.endpoint == Some(addr))
    }

    /// The current endpoints of the peers on the UDP transport (whose path
    /// MTU the data path watches).
    pub fn udp_endpoints(&self) -> Vec<SocketAddr> {
        let udp = crate::config::TransportKind::Udp;
        self.peers
            .iter()
            .zip(&self.transports)
            .filter(|(_, t)| **t == udp)
            .filter_map(|(p, _)| p.endpoint)
            .collect()
    }

    /// Where an inner packet would be sent (its peer's current endpoint),
    /// without sealing it; `None` for unroutable or malformed packets.
    pub fn endpoint_for(&self, packet: &[u8]) -> Option<SocketAddr> {
        let dst = wire::inner_ip_info(packet).ok()?.dst;
        self.peers[self.route(dst)?].endpoint
    }

    fn route(&self, dst: IpAddr) -> Option<usize> {
        self.routes
            .iter()
            .find(|(p, _)| p.contains(dst))
            .map(|(_, i)| *i)
    }

    fn new_index(&mut self, peer: usize) -> u32 {
        loop {
            let mut b = [0u8; 4];
            // getrandom failing means the OS has no entropy source at all; a
            // counter-derived index still works (indexes need uniqueness, not secrecy).
            if getrandom::getrandom(&mut b).is_err() {
                b = (self.indexes.len() as u32 + 1).to_le_bytes();
            }
            let idx = u32::from_le_bytes(b);
            if idx != 0 && !self.indexes.contains_key(&idx) {
                self.indexes.insert(idx, peer);
                return idx;
            }
        }
    }

    fn forget_dropped(&mut self) {
        self.dirty |= !self.dropped.is_empty();
        for idx in self.dropped.drain(..) {
            self.indexes.remove(&idx);
        }
    }

    fn make_session(&self, keys: &handshake::SessionKeys, now: Instant) -> Option<Arc<Session>> {
        let cipher = self.cipher;
        Session::new(keys, |k| new_aead(cipher, k), now)
            .ok()
            .map(Arc::new)
    }

    /// Handles one packet read from the TUN device into `buf[HEADROOM..HEADROOM + len]`
    /// (`buf` must have `TAILROOM` more bytes behind it): the lock-free
    /// path's [`FastPath::encapsulate`], then, for what it cannot decide,
    /// [`Device::encapsulate_slow`].
    pub fn encapsulate(
        &mut self,
        buf: &mut [u8],
        len: usize,
        t: &Time,
        out: &mut Vec<Datagram>,
    ) -> Outcome {
        self.publish_if_dirty();
        let sealed = {
            let fast = self.fast.load();
            let mut tally = Tally::default();
            let r = fast.encapsulate(&mut tally, buf, len, t.now);
            tally.flush(&self.fast_counters);
            r
        };
        match sealed {
            Sealed::Send { to, len } => Outcome::Send { to, len },
            Sealed::Dropped => Outcome::Held,
            Sealed::Slow => {
                let o = self.encapsulate_slow(buf, len, t, out);
                self.publish_if_dirty();
                o
            }
        }
    }

    /// [`Device::encapsulate`] under the device's authority: seals with
    /// the current session if there is one (the workers' snapshot may be a
    /// batch behind), else stages the packet and starts a handshake.
    fn encapsulate_slow(
        &mut self,
        buf: &mut [u8],
        len: usize,
        t: &Time,
        out: &mut Vec<Datagram>,
    ) -> Outcome {
        // The snapshot was published at the last change: its routes and
        // MSS limits are the device's own.
        let classified = self.fast.load().classify(buf, len);
        let pi = match classified {
            Ok(pi) => pi,
            Err(Unroutable::Malformed) => {
                self.counters.drop_malformed += 1;
                return Outcome::Held;
            }
            Err(Unroutable::NoRoute) => {
                self.counters.drop_no_route += 1;
                return Outcome::Held;
            }
        };
        let now = t.now;
        let reject = self.reject_after_time;
        let peer = &mut self.peers[pi];
        let sealed = match (
            peer.endpoint,
            peer.current.as_ref().filter(|s| s.can_send(now, reject)),
        ) {
            (Some(to), Some(session)) => {
                seal_frame(session, MessageType::Data, &mut buf[..OVERHEAD + len])
                    .map(|total| (to, session.clone(), total))
            }
            _ => None,
        };
        let Some((to, session, total)) = sealed else {
            if !peer.stage(&buf[HEADROOM..HEADROOM + len]) {
                self.counters.drop_no_session += 1;
            }
            self.maybe_initiate(pi, t, out);
            return Outcome::Held;
        };
        session.add_sent_bytes(len as u64);
        peer.stats.add_tx(len as u64);
        peer.sent(now, true);
        self.counters.tx_packets += 1;
        self.counters.tx_bytes += len as u64;
        Outcome::Send { to, len: total }
    }

    /// Handles one datagram received from `from` in `buf[..len]`. Returns the
    /// range of `buf` holding an inner packet to write to the TUN device.
    /// Data frames go through the lock-free [`FastPath::decapsulate`]
    /// first; what it cannot decide, and every handshake message, through
    /// [`Device::decapsulate_slow`].
    pub fn decapsulate(
        &mut self,
        buf: &mut [u8],
        len: usize,
        from: SocketAddr,
        t: &Time,
        out: &mut Vec<Datagram>,
    ) -> Option<Range<usize>> {
        self.publish_if_dirty();
        let opened = {
            let fast = self.fast.load();
            let mut tally = Tally::default();
            let r = fast.decapsulate(&mut tally, buf, len, from, t.now);
            tally.flush(&self.fast_counters);
            r
        };
        match opened {
            Opened::Inner(r) => Some(r),
            Opened::Done => None,
            Opened::Control {
                peer,
                range,
                frame_len,
            } => {
                self.on_control(peer, &buf[range], frame_len, t, out);
                None
            }
            Opened::Slow => {
                let r = self.decapsulate_slow(buf, len, from, t, out);
                self.publish_if_dirty();
                r
            }
        }
    }

    /// [`Device::decapsulate`] under the device's authority.
    fn decapsulate_slow(
        &mut self,
        buf: &mut [u8],
        len: usize,
        from: SocketAddr,
        t: &Time,
        out: &mut Vec<Datagram>,
    ) -> Option<Range<usize>> {
        let frame = buf.get_mut(..len)?;
        match wire::message_type(frame) {
            Ok(MessageType::HandshakeInit) => {
                self.on_initiation(frame, from, t, out);
                None
            }
            Ok(MessageType::HandshakeResponse) => {
                self.on_response(frame, from, t, out);
                None
            }
            Ok(MessageType::Data) | Ok(MessageType::Keepalive) => self.on_data(frame, from, t, out),
            Ok(MessageType::CookieReply) => {
                self.on_cookie_reply(frame, t);
                None
            }
            Err(_) => {
                self.counters.drop_malformed += 1;
                None
            }
        }
    }

    /// Decides whether a handshake message (`msg`, whose sender's index is
    /// `sender_index`) from `from` gets public-key work: false when it was
    /// answered with a cookie reply or dropped (and counted).
    fn admit(
        &mut self,
        msg: &[u8],
        sender_index: u32,
        from: SocketAddr,
        now: Instant,
        out: &mut Vec<Datagram>,
    ) -> bool {
        let checker = &mut self.checker;
        match self
            .admission
            .admit(from.ip(), now, || checker.mac2_ok(msg, from, now))
        {
            Admit::Process => {
                self.counters.handshake_dh += 1;
                true
            }
            Admit::SendCookie => {
                let mut data = [0u8; wire::COOKIE_REPLY_LEN];
                if let Some(n) = self.checker.reply(msg, sender_index, from, now, &mut data) {
                    self.counters.cookie_replies_sent += 1;
                    out.push(Datagram {
                        to: from,
                        data: data[..n].to_vec(),
                    });
                }
                false
            }
            Admit::RateLimited => {
                self.counters.drop_handshake_ratelimit += 1;
                false
            }
        }
    }

    fn on_cookie_reply(&mut self, frame: &[u8], t: &Time) {
        let Ok(msg) = wire::CookieReply::new_checked(frame) else {
            self.counters.drop_malformed += 1;
            return;
        };
        let Some(&pi) = self.indexes.get(&msg.receiver_index()) else {
            self.counters.drop_unknown_index += 1;
            return;
        };
        let peer = &mut self.peers[pi];
        match peer.jar.consume(frame, t.now) {
            Ok(()) => {
                self.counters.cookie_replies_received += 1;
                log::debug!(
                    "peer {} is under load: its cookie goes into our next handshake",
                    peer.name
                );
            }
            Err(e) => {
                log::debug!("cookie reply for peer {} refused: {e}", peer.name);
                self.counters.drop_cookie_invalid += 1;
            }
        }
    }

    fn on_initiation(&mut self, frame: &[u8], from: SocketAddr, t: &Time, out: &mut Vec<Datagram>) {
        let Ok(msg) = wire::HandshakeInit::new_checked(frame) else {
            self.counters.drop_malformed += 1;
            return;
        };
        if !self.checker.mac1_ok(frame) {
            self.counters.drop_handshake_mac += 1;
            return;
        }
        if !self.admit(frame, msg.sender_index(), from, t.now, out) {
            return;
        }
        let received =
            match handshake::read_initiation(&self.identity, msg.noise(), msg.sender_index()) {
                Ok(r) => r,
                Err(e) => {
                    log::debug!("initiation from {from} refused: {e}");
                    self.counters.drop_handshake_invalid += 1;
                    return;
                }
            };
        let Some(pi) = self
            .peers
            .iter()
            .position(|p| p.public == received.peer_public)
        else {
            if let Some(n) = self.refused_log.allow_at(t.now) {
                log::info!(
                    "initiation from {from} with an unknown static key: dropped{}",
                    crate::lograte::suppressed_note(n)
                );
            }
            self.counters.drop_handshake_invalid += 1;
            self.note_unknown_key(from);
            return;
        };
        if received.timestamp <= self.peers[pi].last_timestamp {
            // A replay needs no key: anyone who saw the initiation can send it.
            if let Some(n) = self.refused_log.allow_at(t.now) {
                log::info!(
                    "replayed initiation for peer {} from {from}: dropped{}",
                    self.peers[pi].name,
                    crate::lograte::suppressed_note(n)
                );
            }
            self.counters.drop_handshake_invalid += 1;
            return;
        }
        // Both gateways initiated at once (typical at start-up): the one with
        // the greater public key keeps its own fresh initiation and ignores the
        // other's; the other answers and abandons its own, so both converge on
        // one session with one initiator. A stale initiation of ours (the peer
        // was unreachable) never blocks the peer's.
        if let Some(p) = &self.peers[pi].pending {
            let fresh = t.now.duration_since(p.sent_at) < crate::peer::HANDSHAKE_RETRY_BASE;
            if fresh && self.identity.public() > &self.peers[pi].public {
                log::debug!(
                    "simultaneous initiation with peer {}: ours goes first",
                    self.peers[pi].name
                );
                return;
            }
        }
        if let Some(p) = self.peers[pi].pending.take() {
            self.indexes.remove(&p.initiation.local_index());
            self.peers[pi].next_attempt = None;
        }
        let timestamp = received.timestamp;
        let local = self.new_index(pi);
        let mut frame_out = vec![0u8; RESPONSE_FRAME_LEN];
        if wire::HandshakeResponse::emit_header(&mut frame_out, local, received.remote_index)
            .is_err()
        {
            // Unreachable: the buffer is sized for the whole frame.
            self.indexes.remove(&local);
            return;
        }
        let noise_end = RESPONSE_FRAME_LEN - wire::MACS_LEN;
        let noise = wire::HANDSHAKE_RESPONSE_HEADER_LEN..noise_end;
        let (keys, n) = match received.respond(local, &mut frame_out[noise]) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("writing handshake response failed: {e}");
                self.indexes.remove(&local);
                return;
            }
        };
        frame_out.truncate(wire::HANDSHAKE_RESPONSE_HEADER_LEN + n + wire::MACS_LEN);
        let Some(session) = self.make_session(&keys, t.now) else {
            self.indexes.remove(&local);
            return;
        };
        let peer = &mut self.peers[pi];
        peer.jar.stamp(&mut frame_out, t.now);
        peer.last_timestamp = timestamp;
        peer.endpoint = Some(from);
        peer.install_next(session, &mut self.dropped);
        self.dirty = true;
        log::debug!("answered initiation from peer {} at {from}", peer.name);
        out.push(Datagram {
            to: from,
            data: frame_out,
        });
        self.forget_dropped();
    }

    fn on_response(&mut self, frame: &[u8], from: SocketAddr, t: &Time, out: &mut Vec<Datagram>) {
        let Ok(msg) = wire::HandshakeResponse::new_checked(frame) else {
            self.counters.drop_malformed += 1;
            return;
        };
        if !self.checker.mac1_ok(frame) {
            self.counters.drop_handshake_mac += 1;
            return;
        }
        let idx = msg.receiver_index();
        let Some(&pi) = self.indexes.get(&idx) else {
            self.counters.drop_unknown_index += 1;
            return;
        };
        if self.peers[pi]
            .pending
            .as_ref()
            .map(|p| p.initiation.local_index())
            != Some(idx)
        {
            self.counters.drop_unknown_index += 1;
            return;
        }
        if !self.admit(frame, msg.sender_index(), from, t.now, out) {
            return;
        }
        // The pending initiation stays until a response authenticates: a
        // forged one (anyone who saw our initiation knows its index) is
        // counted and forgotten, and the genuine one still completes.
        let Some(pending) = self.peers[pi].pending.as_mut() else {
            return;
        };
        let keys = match pending.initiation.finish(msg.noise(), msg.sender_index()) {
            Ok(k) => k,
            Err(e) => {
                log::debug!("response from {from} refused: {e}");
                self.counters.drop_handshake_invalid += 1;
                self.peers[pi].diag.refusal = Some(format!(
                    "a response from {from} failed to verify: the peer does not hold \
                     our public key, ours for it is wrong, or it was forged"
                ));
                return;
            }
        };
        self.peers[pi].pending = None;
        let Some(session) = self.make_session(&keys, t.now) else {
            self.indexes.remove(&idx);
            return;
        };
        let peer = &mut self.peers[pi];
        peer.endpoint = Some(from);
        peer.install_current(session, &mut self.dropped);
        self.dirty = true;
        peer.last_handshake = Some(t.now);
        peer.next_attempt = None;
        peer.handshakes += 1;
        peer.diag.established();
        self.counters.handshakes += 1;
        log::info!(
            "session established with peer {} at {from} (initiator)",
            peer.name
        );
        self.forget_dropped();
        self.flush_staged(pi, t, out);
    }

    /// Sends what waited for a session, or a keepalive so the responder can
    /// confirm the new session at once.
    fn flush_staged(&mut self, pi: usize, t: &Time, out: &mut Vec<Datagram>) {
        let peer = &mut self.peers[pi];
        let (Some(to), Some(session)) = (peer.endpoint, peer.current.as_ref()) else {
            return;
        };
        let data_sent = !peer.staged.is_empty();
        if !data_sent {
            let mut data = vec![0u8; OVERHEAD];
            if seal_frame(session, MessageType::Keepalive, &mut data).is_some() {
                out.push(Datagram { to, data });
            }
        }
        while let Some(p) = peer.staged.pop_front() {
            let mut data = vec![0u8; OVERHEAD + p.len()];
            data[HEADROOM..HEADROOM + p.len()].copy_from_slice(&p);
            if seal_frame(session, MessageType::Data, &mut data).is_none() {
                // The session is exhausted: the rest stays staged for the next one.
                peer.staged.push_front(p);
                break;
            }
            session.add_sent_bytes(p.len() as u64);
            peer.stats.add_tx(p.len() as u64);
            self.counters.tx_packets += 1;
            self.counters.tx_bytes += p.len() as u64;
            out.push(Datagram { to, data });
        }
        peer.sent(t.now, data_sent);
    }

    fn on_data(
        &mut self,
        frame: &mut [u8],
        from: SocketAddr,
        t: &Time,
        out: &mut Vec<Datagram>,
    ) -> Option<Range<usize>> {
        let len = frame.len();
        let Some((idx, counter, is_keepalive)) = crate::fastpath::data_header(frame) else {
            self.counters.drop_malformed += 1;
            return None;
        };
        let Some(&pi) = self.indexes.get(&idx) else {
            self.counters.drop_unknown_index += 1;
            // A peer that lost its state (restart) keeps sending with old
            // indexes; answering with a handshake recovers at once.
            // (With several flows the peer's data may come from another
            // port of its address.)
            let at = |same: fn(SocketAddr, SocketAddr) -> bool| {
                self.peers
                    .iter()
                    .position(|p| p.endpoint.is_some_and(|e| same(e, from)))
            };
            // Anyone can send such frames from the peer's address, so at
            // most one per TRIGGERED_HANDSHAKE_EVERY per peer.
            if let Some(pi) = at(|e, f| e == f).or_else(|| at(|e, f| e.ip() == f.ip())) {
                let peer = &self.peers[pi];
                if peer.pending.is_none() && peer.endpoint.is_some() {
                    if self.peers[pi].may_trigger(t.now) {
                        self.maybe_initiate(pi, t, out);
                    } else {
                        self.counters.triggered_handshakes_suppressed += 1;
                    }
                }
            }
            return None;
        };
        let reject = self.reject_after_time;
        let udp = self.transports[pi] == crate::config::TransportKind::Udp;
        let single_flow = self.single_flow;
        let peer = &mut self.peers[pi];
        let Some(slot) = peer.slot_of(idx) else {
            // The index belongs to a handshake in flight, not a session.
            self.counters.drop_unknown_index += 1;
            return None;
        };
        let session = peer.session(slot)?;
        if t.now.duration_since(session.created) >= reject {
            self.counters.drop_unknown_index += 1;
            return None;
        }
        if !session.may_accept(counter) {
            self.counters.drop_replay += 1;
            return None;
        }
        let (header, body) = frame.split_at_mut(HEADROOM);
        let Ok(plain_len) = session.recv.open_in_place(counter, header, body) else {
            self.counters.drop_bad_tag += 1;
            return None;
        };
        if !session.mark(counter) {
            self.counters.drop_replay += 1;
            return None;
        }
        let control = !is_keepalive && Control::is_control(&frame[HEADROOM..HEADROOM + plain_len]);
        peer.received(t.now, !is_keepalive && plain_len > 0 && !control);
        if peer.endpoint != Some(from)
            && moves_endpoint(peer.endpoint, from, udp && !single_flow, is_keepalive)
        {
            match peer.endpoint {
                Some(old) if old.ip() == from.ip() => {
                    log::debug!(
                        "peer {} now at port {} ({old} before)",
                        peer.name,
                        from.port()
                    );
                }
                _ => log::info!("peer {} moved to {from}", peer.name),
            }
            peer.endpoint = Some(from);
            self.dirty = true;
        }
        if slot == Slot::Next {
            peer.confirm_next(&mut self.dropped);
            self.dirty = true;
            peer.last_handshake = Some(t.now);
            peer.handshakes += 1;
            peer.diag.established();
            self.counters.handshakes += 1;
            log::info!(
                "session established with peer {} at {from} (responder)",
                peer.name
            );
            self.forget_dropped();
            self.flush_staged_data_only(pi, t, out);
        }
        if is_keepalive || plain_len == 0 {
            return None;
        }
        let inner = &frame[HEADROOM..HEADROOM + plain_len];
        if control {
            self.on_control(pi, inner, len, t, out);
            return None;
        }
        let info = match wire::inner_ip_info(inner) {
            Ok(i) => i,
            Err(_) => {
                self.counters.drop_malformed += 1;
                return None;
            }
        };
        if !self.peers[pi].allows(info.src) {
            self.counters.drop_spoofed_source += 1;
            return None;
        }
        if let Some(to) = &self.transit[pi] {
            if self
                .route(info.dst)
                .is_some_and(|j| j != pi && !to.contains(&j))
            {
                self.counters.drop_transit_denied += 1;
                self.transit_denied[pi] += 1;
                return None;
            }
        }
        let peer = &mut self.peers[pi];
        let n = info.total_len;
        peer.stats.add_rx(n as u64);
        self.counters.rx_packets += 1;
        self.counters.rx_bytes += n as u64;
        Some(HEADROOM..HEADROOM + n)
    }

    fn flush_staged_data_only(&mut self, pi: usize, t: &Time, out: &mut Vec<Datagram>) {
        if !self.peers[pi].staged.is_empty() {
            self.flush_staged(pi, t, out);
        }
    }

    /// Starts a handshake with peer `pi` unless one is in flight or backoff
    /// says to wait.
    fn maybe_initiate(&mut self, pi: usize, t: &Time, out: &mut Vec<Datagram>) {
        let peer = &self.peers[pi];
        if peer.pending.is_some() || peer.endpoint.is_none() {
            return;
        }
        if peer.next_attempt.is_some_and(|at| t.now < at) {
            return;
        }
        self.initiate(pi, 0, t, out);
    }

    fn initiate(&mut self, pi: usize, attempt: u32, t: &Time, out: &mut Vec<Datagram>) {
        let Some(to) = self.peers[pi].endpoint else {
            return;
        };
        if let Some(old) = self.peers[pi].pending.take() {
            self.indexes.remove(&old.initiation.local_index());
        }
        let local = self.new_index(pi);
        let ts = handshake::timestamp(t.unix.as_secs(), t.unix.subsec_nanos());
        let mut data = vec![0u8; INIT_FRAME_LEN];
        if wire::HandshakeInit::emit_header(&mut data, local).is_err() {
            // Unreachable: the buffer is sized for the whole frame.
            self.indexes.remove(&local);
            return;
        }
        let public = self.peers[pi].public;
        let noise_end = INIT_FRAME_LEN - wire::MACS_LEN;
        let header = wire::HANDSHAKE_INIT_HEADER_LEN;
        match handshake::start_initiation(
            &self.identity,
            &public,
            local,
            ts,
            &mut data[header..noise_end],
        ) {
            Ok((initiation, n)) => {
                data.truncate(header + n + wire::MACS_LEN);
                let peer = &mut self.peers[pi];
                peer.jar.stamp(&mut data, t.now);
                peer.pending = Some(Pending {
                    initiation,
                    sent_at: t.now,
                    attempt,
                });
                peer.diag.initiated(t.unix);
                peer.next_attempt = Some(t.now + Peer::retry_delay(attempt));
                log::debug!(
                    "initiating handshake with peer {} at {to} (attempt {})",
                    peer.name,
                    attempt + 1
                );
                out.push(Datagram { to, data });
            }
            Err(e) => {
                log::warn!("cannot start handshake: {e}");
                self.indexes.remove(&local);
            }
        }
    }

    /// Remembers, for the peer whose address sent it, that an initiation
    /// came with a static key we do not know: the usual sign of a key
    /// mismatch between the two configs.
    fn note_unknown_key(&mut self, from: SocketAddr) {
        let at = self
            .peers
            .iter()
            .position(|p| p.endpoint == Some(from))
            .or_else(|| {
                self.peers
                    .iter()
                    .position(|p| p.endpoint.is_some_and(|e| e.ip() == from.ip()))
            });
        if let Some(pi) = at {
            self.peers[pi].diag.refusal = Some(format!(
                "its address {from} sent an initiation with a public key this \
                 config does not list (peers[].public_key differs from the \
                 peer's key)"
            ));
        }
    }

    /// Says at info level, at most every [`DIAG_LOG_EVERY`], why a peer
    /// still has no session after a few initiations.
    fn log_diagnosis(&mut self, pi: usize, now: Instant) {
        let peer = &mut self.peers[pi];
        let d = &peer.diag;
        let recent = d.logged_at.is_some_and(|at| now < at + DIAG_LOG_EVERY);
        if d.unanswered < DIAG_LOG_AFTER || recent {
            return;
        }
        log::info!("peer {}: {}", peer.name, no_session_reason(d));
        peer.diag.logged_at = Some(now);
    }

    /// Runs timers: handshake retries, rekeys, keepalives, session expiry,
    /// and peer liveness (queues [`PeerEvent`]s; see [`Device::take_events`]).
    /// Call at least every 100 ms (every 50 ms with `health:`).
    pub fn tick(&mut self, t: &Time, out: &mut Vec<Datagram>) {
        self.tick_timers(t, out);
        self.tick_pmtud(t, out);
        self.update_liveness(t.now);
        self.publish_if_dirty();
    }

    fn tick_timers(&mut self, t: &Time, out: &mut Vec<Datagram>) {
        let now = t.now;
        for pi in 0..self.peers.len() {
            self.log_diagnosis(pi, now);
            let reject = self.reject_after_time;
            self.peers[pi].expire(now, reject, &mut self.dropped);
            self.forget_dropped();
            let peer = &self.peers[pi];
            if let Some(p) = &peer.pending {
                if now.duration_since(p.sent_at) >= Peer::retry_delay(p.attempt) {
                    let attempt = p.attempt.saturating_add(1);
                    self.initiate(pi, attempt, t, out);
                }
                continue;
            }
            let usable = peer.current.as_ref().filter(|s| s.can_send(now, reject));
            let need = match usable {
                // Gateways keep their tunnels up: no session and a known endpoint.
                None => peer.endpoint.is_some(),
                Some(s) => {
                    let age = now.duration_since(s.created);
                    // The initiator rekeys on time; the responder a little later,
                    // so both sides do not race to initiate.
                    let due = if s.initiator {
                        self.rekey_after_time
                    } else {
                        self.rekey_after_time
                            .saturating_add(self.rekey_after_time / 10)
                    };
                    let silent = peer
                        .stats
                        .unanswered_since()
                        .is_some_and(|since| now.duration_since(since) >= DEAD_PEER_AFTER)
                        || self.health.is_some_and(|h| {
                            [peer.stats.last_received(), peer.last_handshake]
                                .into_iter()
                                .flatten()
                                .max()
                                .is_none_or(|at| now.duration_since(at) >= h.dead_after)
                        });
                    age >= due || s.sent_bytes() >= self.rekey_after_bytes || silent
                }
            };
            if need {
                self.maybe_initiate(pi, t, out);
                continue;
            }
            // Keepalives on an established session.
            let peer = &mut self.peers[pi];
            let want = match peer.keepalive {
                Some(k) => peer
                    .stats
                    .last_sent()
                    .is_none_or(|s| now.duration_since(s) >= k),
                None => peer
                    .stats
                    .ack_due_since()
                    .is_some_and(|since| now.duration_since(since) >= PASSIVE_KEEPALIVE),
            };
            if let (true, Some(to), Some(session)) = (want, peer.endpoint, peer.current.as_ref()) {
                let mut data = vec![0u8; OVERHEAD];
                if seal_frame(session, MessageType::Keepalive, &mut data).is_some() {
                    peer.sent(now, false);
                    out.push(Datagram { to, data });
                }
            }
        }
    }
}

impl Device {
    /// Sets up path MTU probing ([`crate::pmtud`]) for the peers that
    /// should have it (UDP transport, `pmtud.enabled`) and do not, and
    /// turns it off for the others; a running search is kept, with the
    /// configured interval.
    fn arm_pmtud(&mut self) {
        let udp = crate::config::TransportKind::Udp;
        for (p, t) in self.peers.iter_mut().zip(&self.transports) {
            let want = self.pmtud.enabled && *t == udp;
            let has = p.pmtu.phase() != crate::pmtud::Phase::Disabled;
            if want != has {
                p.pmtu = Pmtud::new(want, self.tun_mtu, self.pmtud.interval);
            } else if want {
                p.pmtu.set_interval(self.pmtud.interval);
            }
        }
        self.update_pmtu_floor();
    }

    /// Recomputes the smallest probed limit and marks the snapshot for
    /// publishing when any peer's limit differs from the published one.
    fn update_pmtu_floor(&mut self) {
        self.pmtu_floor = self.peers.iter().filter_map(|p| p.pmtu.limit()).min();
        let fast = self.fast.load();
        if fast.probed_floor != self.pmtu_floor
            || fast.peers.len() != self.peers.len()
            || self
                .peers
                .iter()
                .zip(&fast.peers)
                .any(|(p, f)| p.pmtu.limit() != f.probed_max_frame)
        {
            self.dirty = true;
        }
    }

    /// Path MTU probing: sends the probe rounds each peer's search asks
    /// for, on its current session, to its endpoint (the path data takes).
    fn tick_pmtud(&mut self, t: &Time, out: &mut Vec<Datagram>) {
        let reject = self.reject_after_time;
        for peer in &mut self.peers {
            let (Some(to), Some(session)) = (
                peer.endpoint,
                peer.current.as_mut().filter(|s| s.can_send(t.now, reject)),
            ) else {
                continue;
            };
            let (was, holes) = (peer.pmtu.phase(), peer.pmtu.stats().black_holes);
            let probes = peer
                .pmtu
                .poll(t.now, to, peer.stats.data_unanswered_since());
            log_pmtud_change(&peer.name, &peer.pmtu, was, holes);
            let Some(probes) = probes else {
                continue;
            };
            for p in probes {
                let (Ok(size), true) = (u16::try_from(p.size), p.size >= Control::MIN_FRAME) else {
                    continue;
                };
                let mut data = vec![0u8; p.size];
                Control::Probe { id: p.id, size }.emit(&mut data[HEADROOM..p.size - TAILROOM]);
                if seal_frame(session, MessageType::Data, &mut data).is_none() {
                    // The session's counters are spent: the next one probes.
                    break;
                }
                self.counters.pmtu_probes_sent += 1;
                out.push(Datagram { to, data });
            }
            peer.sent(t.now, false);
        }
        self.update_pmtu_floor();
    }

    /// An authenticated control message (`plain`, from a frame of
    /// `frame_len` bytes) from peer `pi`: a probe is answered with an ack
    /// on the current session, an ack goes to the peer's search.
    pub(crate) fn on_control(
        &mut self,
        pi: usize,
        plain: &[u8],
        frame_len: usize,
        t: &Time,
        out: &mut Vec<Datagram>,
    ) {
        let reject = self.reject_after_time;
        let peer = &mut self.peers[pi];
        match Control::parse(plain) {
            Ok(Control::Probe { id, size }) if usize::from(size) == frame_len => {
                let (Some(to), Some(session)) = (
                    peer.endpoint,
                    peer.current.as_ref().filter(|s| s.can_send(t.now, reject)),
                ) else {
                    return;
                };
                let mut data = vec![0u8; Control::MIN_FRAME];
                Control::Ack { id, size }.emit(&mut data[HEADROOM..HEADROOM + Control::LEN]);
                if seal_frame(session, MessageType::Data, &mut data).is_none() {
                    return;
                }
                peer.sent(t.now, false);
                self.counters.pmtu_probes_answered += 1;
                out.push(Datagram { to, data });
            }
            Ok(Control::Ack { id, .. }) => {
                if peer.pmtu.on_ack(t.now, id) {
                    self.counters.pmtu_acks_received += 1;
                } else {
                    self.counters.pmtu_acks_stray += 1;
                }
                // An ack may settle a search: the workers' limit follows.
                self.update_pmtu_floor();
                self.publish_if_dirty();
            }
            // A probe whose stated size is not the frame's, an unknown
            // kind, non-zero reserved bytes: authenticated, yet not ours
            // to understand.
            Ok(Control::Probe { .. }) | Err(_) => self.counters.drop_malformed += 1,
        }
    }

    /// Hands each UDP peer's search the kernel's frame limit towards its
    /// endpoint (`limit_to`: the learnt path MTU, see
    /// [`crate::transport::pmtu`]); an ICMP the kernel accepted thus lowers
    /// the probed limit at once, and probes confirm it.
    pub fn set_path_ceilings(
        &mut self,
        now: Instant,
        limit_to: impl Fn(SocketAddr) -> Option<usize>,
    ) {
        for p in &mut self.peers {
            if let Some(to) = p.endpoint {
                p.pmtu.set_ceiling(now, limit_to(to));
            }
        }
        self.update_pmtu_floor();
        self.publish_if_dirty();
    }
}

/// Says in the log what path MTU probing found when its phase changed:
/// a black hole at warn level (inner senders are about to be told a
/// smaller MTU), a completed search at info level.
fn log_pmtud_change(name: &str, p: &Pmtud, was: crate::pmtud::Phase, holes: u64) {
    use crate::pmtud::Phase;
    let now = p.phase();
    if now == was {
        return;
    }
    let mtu = p.path_mtu().map_or("-".into(), |m| m.to_string());
    if p.stats().black_holes > holes {
        log::warn!(
            "peer {name}: path MTU black hole: large probes vanish while small ones are answered; \
             inner packets limited to {} bytes while the path is searched",
            p.limit().map_or(0, |l| l.saturating_sub(OVERHEAD))
        );
    } else if now == Phase::Complete {
        match p.limit() {
            Some(l) => log::info!(
                "peer {name}: path MTU {mtu} validated by probes; inner packets over {} bytes \
                 are answered with ICMP too-big",
                l.saturating_sub(OVERHEAD)
            ),
            None => log::debug!("peer {name}: path MTU {mtu} validated by probes"),
        }
    } else if now == Phase::Unsupported {
        log::info!("peer {name}: does not answer path MTU probes (an older tunneld?); not probing");
    } else {
        log::debug!(
            "peer {name}: path MTU probing {} -> {}",
            was.as_str(),
            now.as_str()
        );
    }
}

/// A peer's keepalive interval with `health:`: the shorter of its own
/// persistent keepalive and `health.interval`, so both sides of every
/// session hear from each other at least that often.
fn keepalive_with_health(own: Option<Duration>, health: Option<HealthConfig>) -> Option<Duration> {
    match (own, health) {
        (Some(k), Some(h)) => Some(k.min(h.interval)),
        (None, Some(h)) => Some(h.interval),
        (k, None) => k,
    }
}

/// Why a peer has no session, in an operator's words: the last refusal
/// seen, or how many initiations went unanswered since when (UTC).
pub fn no_session_reason(d: &crate::peer::Diagnosis) -> String {
    let unanswered = match d.unanswered_since {
        Some(since) if d.unanswered > 0 => Some(format!(
            "{} initiation{} unanswered since {} UTC",
            d.unanswered,
            if d.unanswered == 1 { "" } else { "s" },
            clock_utc(since.as_secs())
        )),
        _ => None,
    };
    match (unanswered, &d.refusal) {
        (Some(u), Some(r)) => format!("{u}; {r}"),
        (None, Some(r)) => r.clone(),
        (Some(u), None) => {
            format!("{u} (the peer is down, a firewall drops UDP, or the keys do not match)")
        }
        (None, None) => "no handshake yet".into(),
    }
}

/// `HH:MM:SS` of a Unix time, UTC.
pub fn clock_utc(unix_secs: u64) -> String {
    let s = unix_secs % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Allowed prefixes, longest first, with the position of their peer.
fn routes_of(peers: &[Peer]) -> Vec<(crate::prefix::Prefix, usize)> {
    let mut routes: Vec<_> = peers
        .iter()
        .enumerate()
        .flat_map(|(i, p)| p.allowed.iter().map(move |pr| (*pr, i)))
        .collect();
    routes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    routes
}

/// The largest TCP MSS of IPv4 and IPv6 SYNs when `mss_clamp` is on.
fn mss_limits(cfg: &Config) -> (Option<u16>, Option<u16>) {
    let mtu = cfg.interface.mtu;
    if cfg.mss_clamp {
        (Some(mtu.saturating_sub(40)), Some(mtu.saturating_sub(60)))
    } else {
        (None, None)
    }
}

/// Sessions stay usable for half a rekey period past the rekey point, long
/// enough for the new handshake and its retries to finish.
fn reject_after(rekey_after_time: Duration) -> Duration {
    rekey_after_time.saturating_add(rekey_after_time / 2)
}

/// Whether an authenticated data or keepalive frame from `from` moves a
/// peer's endpoint (currently `current`). `udp` is false for the transports
/// that follow every frame, and for UDP with `dataplane.flows: 1`, where a
/// peer's frames all leave one socket, so any authenticated frame from a
/// new address or port (a roaming peer, a NAT that rebound its port) moves
/// the endpoint at once, as WireGuard does.
///
/// A UDP peer with `dataplane.flows` > 1 sends data from several source
/// ports of one address, and its flow 0 (the `listen` socket) is where it
/// wants replies; following every data frame would make the endpoint flap
/// between its flows. So for UDP peers a data frame moves the endpoint only
/// to a new address (the peer roamed); a port-only change is taken from a
/// keepalive, which tunneld always sends on flow 0 like its handshakes
/// (those set the endpoint in `on_initiation` / `on_response`), so a NAT
/// that rebinds the peer's port is followed within a keepalive or
/// dead-peer interval. TCP and QUIC peers follow every frame: their
/// `from` names the connection, and a redial comes from a new port.
pub(crate) fn moves_endpoint(
    current: Option<SocketAddr>,
    from: SocketAddr,
    udp: bool,
    keepalive: bool,
) -> bool {
    match current {
        None => true,
        Some(e) if e == from => false,
        Some(e) => !udp || keepalive || e.ip() != from.ip(),
    }
}

/// Writes the data header for `ty` into `buf[..HEADROOM]` and seals
/// `buf[HEADROOM..]` (inner packet followed by room for the tag) in place
/// with the session's next counter. Returns the frame length, or `None`
/// when the session has no counter left.
fn seal_frame(session: &Session, ty: MessageType, buf: &mut [u8]) -> Option<usize> {
    let counter = session.next_counter()?;
    Some(crate::fastpath::seal(session, counter, ty, buf))
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
