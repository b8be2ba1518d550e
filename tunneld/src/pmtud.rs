//! Path MTU discovery by probing between the gateways (RFC 8899
//! "Datagram PLPMTUD"), one [`Pmtud`] per UDP peer, free of I/O: the
//! device asks it which probes to send ([`Pmtud::poll`]), tells it which
//! were acknowledged ([`Pmtud::on_ack`]) and what the kernel learned from
//! ICMP ([`Pmtud::set_ceiling`]), and reads the largest frame the path is
//! known to carry ([`Pmtud::limit`]). Time is the caller's, so every
//! behaviour below is tested with a virtual clock.
//!
//! Why: outer packets carry DF, so a path narrower than the tunnel loses
//! every full-size frame. When routers say so (ICMP "fragmentation needed"
//! / "packet too big") the kernel learns it ([`crate::transport::pmtu`]);
//! a *black hole* (a router or tunnel that drops such packets and sends no
//! ICMP, or a firewall that drops the ICMP) says nothing, and only probing
//! finds it.
//!
//! Probes are data-channel frames (sealed, authenticated, sent like data,
//! with DF) padded to the size under test, which the peer answers with a
//! small acknowledgement ([`Control`]). Every probe *round* sends two: the
//! size under test and a minimal *sentinel*. A round where the sentinel is
//! acknowledged and the large probe is not is evidence that the size does
//! not fit; a round where neither is acknowledged says nothing (loss, an
//! outage, or a peer that does not speak probes), so random loss and
//! outages are never taken for a black hole.
//!
//! States (RFC 8899 section 5.2, adapted):
//! - `Confirming`: sends probes of the current size (the start of each
//!   path is optimistic: the whole tunnel MTU, as before probing existed,
//!   so inner hosts are never told a smaller MTU without evidence). An ack
//!   validates it; [`BLACK_HOLE_ROUNDS`] failed rounds are a black hole:
//!   the limit drops to the base size and the search starts from there.
//!   Entered at start, after a path change, every `interval`, after an ICMP
//!   lowered the limit, and when data went out for [`SUSPECT_AFTER`] with
//!   no data coming back (keepalives do not count: a peer keeps sending
//!   them into a black hole's other side; at most every [`SUSPECT_EVERY`],
//!   so one-way traffic costs one round per 10 s).
//! - `Base`: confirms [`BASE_PMTU`]; failing that is `Error`.
//! - `Searching`: binary search between the largest size acknowledged and
//!   the smallest that failed ([`MAX_PROBES`] failed rounds each), the
//!   largest size first when raising; every acknowledged size raises the
//!   limit at once.
//! - `Complete`: no probes until the next re-validation (`interval`), a
//!   silence trigger, or a raise attempt ([`RAISE_AFTER`]) when the limit is
//!   below what the tunnel needs.
//! - `Unsupported`: the peer acknowledged nothing in [`UNSUPPORTED_AFTER`]
//!   rounds while probes went unanswered: an older tunneld (which counts
//!   our probes as malformed packets). No limit is applied, as before;
//!   retried every `interval`.
//! - `Error`: even the base size fails while the sentinel passes; the limit
//!   stays at the base size, retried every `interval`.
//!
//! Pacing: at most one round per [`ROUND_GAP`] (8 probe frames a second)
//! while confirming or searching, none in `Complete`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Outer IP packet size every path is assumed to carry before probing
/// says more (RFC 8899 BASE_PLPMTU): IPv6's minimum link MTU, which all
/// but broken IPv4 paths carry too.
pub const BASE_PMTU: usize = 1280;
/// Failed rounds before a size being searched counts as too big (RFC 8899
/// MAX_PROBES).
pub const MAX_PROBES: u32 = 3;
/// Failed rounds before a size that worked is declared a black hole: more
/// than [`MAX_PROBES`], because a false alarm makes every inner host
/// lower its MTU for minutes (5% loss each way fails a round 9% of the
/// time; five in a row, 6 in a million).
pub const BLACK_HOLE_ROUNDS: u32 = 5;
/// Least time between two probe rounds of one peer (pacing: at most 4
/// rounds, 8 probe frames, a second).
pub const ROUND_GAP: Duration = Duration::from_millis(250);
/// How long a round waits for acks before any RTT was measured.
const INITIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Bounds of the measured round timeout (4 × smoothed RTT + 50 ms): not so
/// short that a queue behind bulk data fails a round, not so long that a
/// black hole takes long to confirm.
const MIN_TIMEOUT: Duration = Duration::from_millis(150);
const MAX_TIMEOUT: Duration = Duration::from_secs(2);
/// The search stops when the sizes not yet known differ by this little
/// (bytes; a few bytes of MTU are not worth more probes).
pub const GRANULARITY: usize = 8;
/// Data sent with nothing heard back from the peer for this long makes
/// the current size suspect: confirm it.
pub const SUSPECT_AFTER: Duration = Duration::from_secs(1);
/// Least time between two such silence-triggered confirmations (a peer
/// that is sent one-way traffic is silent often; each costs one round).
pub const SUSPECT_EVERY: Duration = Duration::from_secs(10);
/// Rounds without any ack, from a peer that never acknowledged a probe,
/// before it is taken as not speaking probes.
pub const UNSUPPORTED_AFTER: u32 = 5;
/// How long a limit below the tunnel's need stands before a search tries
/// to raise it (RFC 8899 PMTU_RAISE_TIMER: a path that widened).
pub const RAISE_AFTER: Duration = Duration::from_secs(600);
/// Default re-validation interval of a validated path.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(120);
/// Longest back-off between rounds that got no answer at all.
const MAX_SILENT_GAP: Duration = Duration::from_secs(4);
/// Frame sizes are probed in multiples of this (bytes).
const ALIGN: usize = 4;

/// Bytes of outer IPv4 + UDP header.
const V4_OVERHEAD: usize = 20 + 8;
/// Bytes of outer IPv6 + UDP header.
const V6_OVERHEAD: usize = 40 + 8;

/// Outer IP + UDP header bytes towards `to`.
pub fn ip_udp_overhead(to: SocketAddr) -> usize {
    if to.is_ipv4() {
        V4_OVERHEAD
    } else {
        V6_OVERHEAD
    }
}

/// Where a peer's search stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Not probing (`pmtud: off`, a transport other than UDP, or a tunnel
    /// MTU that fits the base size).
    Disabled,
    /// No session yet.
    Idle,
    Confirming,
    Base,
    Searching,
    Complete,
    Unsupported,
    Error,
}

impl Phase {
    /// The name shown by `tunneld show`, the status JSON and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Disabled => "disabled",
            Phase::Idle => "idle",
            Phase::Confirming => "confirming",
            Phase::Base => "base",
            Phase::Searching => "searching",
            Phase::Complete => "complete",
            Phase::Unsupported => "unsupported",
            Phase::Error => "error",
        }
    }
}

/// One probe to send: pad a control frame to `size` bytes (UDP payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub id: u32,
    pub size: usize,
}

/// Counters of one peer's search.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PmtudStats {
    /// Probe frames sent (sentinels included).
    pub probes: u64,
    /// Probe frames acknowledged.
    pub acks: u64,
    /// Rounds in which the sentinel came back and the large probe did not.
    pub failed_rounds: u64,
    /// Black holes detected (a validated size stopped getting through).
    pub black_holes: u64,
}

/// A round in flight: a probe of `size` and a sentinel.
#[derive(Debug, Clone, Copy)]
struct Round {
    size: usize,
    probe: u32,
    sentinel: u32,
    sent_at: Instant,
    deadline: Instant,
    probe_acked: bool,
    sentinel_acked: bool,
}

/// Path MTU discovery towards one peer. All sizes are frame sizes (UDP
/// payload bytes); [`Pmtud::path_mtu`] converts to the outer IP size.
#[derive(Debug, Clone)]
pub struct Pmtud {
    enabled: bool,
    /// Largest frame the tunnel needs (TUN MTU + frame overhead).
    need: usize,
    /// Re-validation interval of a validated path.
    interval: Duration,
    /// Kernel-learned limit (interface MTU, lowered by ICMP).
    ceiling: Option<usize>,
    /// The path under test and its header overhead.
    path: Option<SocketAddr>,
    overhead: usize,
    phase: Phase,
    /// Frames up to this size are sent (PLPMTU).
    plpmtu: usize,
    /// Largest size acknowledged on this path since the last black hole.
    lo: usize,
    /// Smallest size known not to fit (exclusive bound), or `cap() + 1`.
    hi: usize,
    round: Option<Round>,
    /// When the next round may start; `None`: none planned.
    next_round: Option<Instant>,
    /// When a validated path is next confirmed (or a raise tried).
    revalidate_at: Option<Instant>,
    /// When the search last completed.
    completed_at: Option<Instant>,
    /// When a limit below the need may next be raised by a search.
    next_raise: Option<Instant>,
    /// Failed rounds at the size under test.
    failures: u32,
    /// Rounds in a row without any ack.
    silent_rounds: u32,
    ever_acked: bool,
    srtt: Option<Duration>,
    next_id: u32,
    last_suspect: Option<Instant>,
    stats: PmtudStats,
}

impl Pmtud {
    /// A search for a tunnel whose TUN MTU is `tun_mtu` (`enabled` false:
    /// never probes, never limits). Probing starts at the first
    /// [`Pmtud::poll`] with a path.
    pub fn new(enabled: bool, tun_mtu: usize, interval: Duration) -> Pmtud {
        let need = tun_mtu + crate::device::OVERHEAD;
        Pmtud {
            enabled,
            need,
            interval,
            ceiling: None,
            path: None,
            overhead: V4_OVERHEAD,
            phase: if enabled {
                Phase::Idle
            } else {
                Phase::Disabled
            },
            plpmtu: need,
            lo: 0,
            hi: need + 1,
            round: None,
            next_round: None,
            revalidate_at: None,
            completed_at: None,
            next_raise: None,
            failures: 0,
            silent_rounds: 0,
            ever_acked: false,
            srtt: None,
            next_id: 1,
            last_suspect: None,
            stats: PmtudStats::default(),
        }
    }

    /// A search that never probes (transports other than UDP).
    pub fn disabled() -> Pmtud {
        Pmtud::new(false, 1420, DEFAULT_INTERVAL)
    }

    /// A new re-validation interval (a reload): a validated path is next
    /// confirmed that long after it was validated.
    pub fn set_interval(&mut self, interval: Duration) {
        self.interval = interval;
        if self.phase == Phase::Complete {
            self.revalidate_at = self.completed_at.map(|at| at + interval);
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Counters so far.
    pub fn stats(&self) -> PmtudStats {
        self.stats
    }

    fn base(&self) -> usize {
        BASE_PMTU - self.overhead
    }

    /// The largest size worth probing: the tunnel's need, or less if the
    /// kernel knows the path (or the interface) to be narrower.
    fn cap(&self) -> usize {
        self.ceiling.map_or(self.need, |c| c.min(self.need))
    }

    fn active(&self) -> bool {
        !matches!(self.phase, Phase::Disabled | Phase::Idle)
    }

    /// The largest frame to send to the peer, when probing limits it below
    /// what the tunnel needs (`None`: no limit from probing).
    pub fn limit(&self) -> Option<usize> {
        (self.active() && self.phase != Phase::Unsupported && self.plpmtu < self.need)
            .then_some(self.plpmtu)
    }

    /// The validated outer path MTU (IP packet bytes), once probing runs.
    pub fn path_mtu(&self) -> Option<usize> {
        (self.active() && self.phase != Phase::Unsupported).then_some(self.plpmtu + self.overhead)
    }

    /// Probe timeout: 4 × smoothed RTT + 50 ms, bounded.
    fn timeout(&self) -> Duration {
        match self.srtt {
            None => INITIAL_TIMEOUT,
            Some(s) => (s * 4 + Duration::from_millis(50)).clamp(MIN_TIMEOUT, MAX_TIMEOUT),
        }
    }

    /// Starts over on `path` (first session, or the peer moved): the whole
    /// need (or what the kernel allows) is assumed and confirmed at once.
    fn restart(&mut self, now: Instant, path: SocketAddr) {
        self.path = Some(path);
        self.overhead = ip_udp_overhead(path);
        self.plpmtu = self.cap();
        self.lo = 0;
        self.hi = self.cap() + 1;
        self.round = None;
        self.failures = 0;
        self.silent_rounds = 0;
        self.srtt = None;
        self.revalidate_at = None;
        if self.need <= self.base() {
            // Anything the tunnel sends fits every path.
            self.phase = Phase::Complete;
            self.next_round = None;
            return;
        }
        self.phase = Phase::Confirming;
        self.next_round = Some(now);
    }

    /// The kernel's path limit towards the peer (`None`: unknown). A lower
    /// limit (an ICMP the kernel accepted) lowers ours at once and is
    /// confirmed by probes (RFC 8899 section 4.6: PTB only lowers, and is
    /// validated); probes never go above it.
    pub fn set_ceiling(&mut self, now: Instant, ceiling: Option<usize>) {
        if !self.enabled || ceiling == self.ceiling {
            return;
        }
        self.ceiling = ceiling;
        if !self.active() {
            return;
        }
        let cap = self.cap();
        self.hi = self.hi.min(cap + 1);
        self.lo = self.lo.min(cap);
        if self.plpmtu > cap {
            self.lower_to(now, cap);
            self.enter(now, Phase::Confirming);
        } else if self.plpmtu < cap && self.phase == Phase::Complete {
            // The kernel forgot a smaller MTU, or the interface grew.
            self.hi = cap + 1;
            self.enter(now, Phase::Searching);
        }
    }

    fn lower_to(&mut self, now: Instant, size: usize) {
        if size < self.plpmtu {
            self.plpmtu = size;
            self.next_raise = Some(now + RAISE_AFTER);
        }
    }

    /// Enters `phase`; its first round comes as soon as pacing allows.
    fn enter(&mut self, now: Instant, phase: Phase) {
        self.phase = phase;
        self.failures = 0;
        self.silent_rounds = 0;
        self.round = None;
        self.next_round = Some(self.next_round.map_or(now, |at| at.max(now)));
        if phase == Phase::Searching && self.next_size().is_none() {
            self.complete(now);
        }
    }

    fn complete(&mut self, now: Instant) {
        self.phase = Phase::Complete;
        self.round = None;
        self.next_round = None;
        self.completed_at = Some(now);
        self.revalidate_at = Some(now + self.interval);
    }

    /// The next size to search, if any is left.
    fn next_size(&self) -> Option<usize> {
        let cap = self.cap();
        let lo = self.lo.max(self.plpmtu);
        if self.hi <= lo + GRANULARITY || lo >= cap {
            return None;
        }
        if self.hi > cap {
            // Never tried the top: most paths carry it all.
            return Some(cap);
        }
        let mid = (lo + self.hi) / 2 / ALIGN * ALIGN;
        (mid > lo && mid < self.hi).then_some(mid)
    }

    /// The size a round of the current phase tests.
    fn size_under_test(&self) -> Option<usize> {
        match self.phase {
            Phase::Confirming => Some(self.plpmtu),
            Phase::Base => Some(self.base().min(self.cap())),
            Phase::Searching => self.next_size(),
            // Retries of a peer that answered nothing, or of an error.
            Phase::Unsupported => Some(self.cap()),
            Phase::Error => Some(self.base().min(self.cap())),
            Phase::Complete | Phase::Idle | Phase::Disabled => None,
        }
    }

    /// Runs the search at `now` towards `path` (the peer's endpoint, with a
    /// usable session); `silent_since`: when data started going out with
    /// no data from the peer since, if so. Returns the probes to send now
    /// (a probe and its sentinel), if a round starts.
    pub fn poll(
        &mut self,
        now: Instant,
        path: SocketAddr,
        silent_since: Option<Instant>,
    ) -> Option<[Probe; 2]> {
        if !self.enabled {
            return None;
        }
        if self.path != Some(path) {
            self.restart(now, path);
        }
        if let Some(r) = self.round {
            if r.probe_acked || now >= r.deadline {
                self.judge(now, r);
            }
        }
        self.timers(now, silent_since);
        if self.round.is_some() || self.next_round.is_none_or(|at| now < at) {
            return None;
        }
        let size = self.size_under_test()?;
        Some(self.start_round(now, size))
    }

    /// Re-validation, raise and silence triggers of a quiet phase.
    fn timers(&mut self, now: Instant, silent_since: Option<Instant>) {
        match self.phase {
            Phase::Complete => {
                let suspect = silent_since.is_some_and(|s| now.duration_since(s) >= SUSPECT_AFTER)
                    && self
                        .last_suspect
                        .is_none_or(|at| now.duration_since(at) >= SUSPECT_EVERY)
                    && self.plpmtu > self.base();
                if suspect {
                    self.last_suspect = Some(now);
                    self.enter(now, Phase::Confirming);
                } else if self.revalidate_at.is_some_and(|at| now >= at) {
                    let raise =
                        self.plpmtu < self.cap() && self.next_raise.is_none_or(|at| now >= at);
                    if raise {
                        self.next_raise = Some(now + RAISE_AFTER);
                        self.hi = self.cap() + 1;
                        self.enter(now, Phase::Searching);
                    } else {
                        self.enter(now, Phase::Confirming);
                    }
                }
            }
            Phase::Unsupported | Phase::Error
                if self.round.is_none() && self.next_round.is_none() =>
            {
                self.next_round = Some(now + self.interval);
            }
            _ => {}
        }
    }

    fn start_round(&mut self, now: Instant, size: usize) -> [Probe; 2] {
        let probe = self.new_id();
        let sentinel = self.new_id();
        self.round = Some(Round {
            size,
            probe,
            sentinel,
            sent_at: now,
            deadline: now + self.timeout(),
            probe_acked: false,
            sentinel_acked: false,
        });
        self.next_round = Some(now + ROUND_GAP);
        self.stats.probes += 2;
        [
            Probe { id: probe, size },
            Probe {
                id: sentinel,
                size: crate::pmtud::Control::MIN_FRAME,
            },
        ]
    }

    fn new_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// An acknowledgement of probe `id` arrived at `now`; false if it
    /// answers no probe of the round in flight (late or forged by the
    /// peer itself: acks are authenticated).
    pub fn on_ack(&mut self, now: Instant, id: u32) -> bool {
        let Some(r) = self.round.as_mut() else {
            return false;
        };
        let first = if id == r.probe && !r.probe_acked {
            r.probe_acked = true;
            true
        } else if id == r.sentinel && !r.sentinel_acked {
            r.sentinel_acked = true;
            true
        } else {
            false
        };
        if !first {
            return false;
        }
        self.stats.acks += 1;
        self.ever_acked = true;
        let sample = now.saturating_duration_since(r.sent_at);
        self.srtt = Some(match self.srtt {
            None => sample,
            Some(s) => (s * 7 + sample) / 8,
        });
        true
    }

    /// Decides a finished round.
    fn judge(&mut self, now: Instant, r: Round) {
        self.round = None;
        if r.probe_acked || r.sentinel_acked {
            self.silent_rounds = 0;
        }
        if r.probe_acked {
            self.success(now, r.size);
        } else if r.sentinel_acked {
            self.stats.failed_rounds += 1;
            self.failure(now, r.size);
        } else {
            self.silent_rounds += 1;
            if self.silent_rounds >= UNSUPPORTED_AFTER {
                self.silent_rounds = 0;
                if !self.ever_acked {
                    // An older peer: it counts our probes as malformed.
                    self.phase = Phase::Unsupported;
                    self.plpmtu = self.cap();
                    self.next_round = Some(now + self.interval);
                    return;
                }
                if matches!(self.phase, Phase::Confirming | Phase::Searching) {
                    // The peer stopped answering anything (an outage, or
                    // it is gone): nothing learnt; keep the size and ask
                    // again at the next trigger.
                    self.complete(now);
                    return;
                }
            }
            // Loss or an outage: nothing learned; back off.
            let gap = ROUND_GAP
                .saturating_mul(1 << self.silent_rounds.min(6))
                .min(MAX_SILENT_GAP);
            self.next_round = Some(r.sent_at + gap.max(ROUND_GAP));
        }
    }

    fn success(&mut self, now: Instant, size: usize) {
        self.failures = 0;
        self.lo = self.lo.max(size);
        match self.phase {
            Phase::Unsupported => {
                // The peer learnt to answer, and the top size fits.
                self.plpmtu = self.cap();
                self.complete(now);
            }
            Phase::Confirming | Phase::Base | Phase::Error | Phase::Searching => {
                // Every size acknowledged is usable at once; the search
                // goes on upward while there is room (none after a
                // confirmation of the top or of a size bounded by a
                // failure).
                self.plpmtu = self.plpmtu.max(size);
                self.enter(now, Phase::Searching);
            }
            Phase::Complete | Phase::Idle | Phase::Disabled => {}
        }
    }

    fn failure(&mut self, now: Instant, size: usize) {
        self.failures += 1;
        let enough = match self.phase {
            Phase::Confirming => BLACK_HOLE_ROUNDS,
            _ => MAX_PROBES,
        };
        if self.failures < enough {
            return;
        }
        self.failures = 0;
        match self.phase {
            Phase::Confirming => {
                // A size that got through (or was assumed to) no longer
                // does, while small frames do: a black hole.
                self.stats.black_holes += 1;
                self.hi = size;
                self.lo = 0;
                let base = self.base().min(self.cap());
                self.lower_to(now, base);
                self.enter(now, Phase::Base);
            }
            Phase::Base | Phase::Error => {
                self.phase = Phase::Error;
                self.next_round = Some(now + self.interval);
            }
            Phase::Searching => {
                self.hi = size;
                if self.next_size().is_none() {
                    self.complete(now);
                }
            }
            Phase::Unsupported => {
                // The peer answers, the top size does not get through.
                self.hi = size;
                let base = self.base().min(self.cap());
                self.lower_to(now, base);
                self.enter(now, Phase::Base);
            }
            _ => {}
        }
    }
}

/// A tunnel control message: the plaintext of a data frame whose first
/// byte has IP version nibble 0 (an inner packet is always IPv4 or IPv6),
/// so it shares the data channel's authentication, replay protection,
/// roaming and DF path. Layout (integers little-endian):
///
/// ```text
/// 0      kind: 0x01 probe, 0x02 probe ack
/// 1..4   reserved, zero
/// 4..8   id u32: the probe's, echoed by its ack
/// 8..10  size u16: the probe's frame size (UDP payload bytes) as sent;
///        in an ack, as received
/// 10..   padding (zeros) up to the probe size; none in an ack
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Probe { id: u32, size: u16 },
    Ack { id: u32, size: u16 },
}

/// Why a control message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("control message shorter than {} bytes", Control::LEN)]
    Short,
    #[error("unknown control message kind {0:#04x}")]
    Kind(u8),
    #[error("reserved bytes of a control message are not zero")]
    Reserved,
}

impl Control {
    /// Bytes of a control message without padding.
    pub const LEN: usize = 10;
    /// The smallest frame carrying one (a sentinel probe).
    pub const MIN_FRAME: usize = Control::LEN + crate::device::OVERHEAD;
    const PROBE: u8 = 0x01;
    const ACK: u8 = 0x02;

    /// True when a decrypted plaintext is a control message, not an inner
    /// packet.
    pub fn is_control(plain: &[u8]) -> bool {
        plain.first().is_some_and(|b| b >> 4 == 0)
    }

    /// Parses a decrypted plaintext (padding is ignored).
    pub fn parse(plain: &[u8]) -> Result<Control, ControlError> {
        let b = plain.get(..Control::LEN).ok_or(ControlError::Short)?;
        if b[1..4] != [0, 0, 0] {
            return Err(ControlError::Reserved);
        }
        let id = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let size = u16::from_le_bytes([b[8], b[9]]);
        match b[0] {
            Control::PROBE => Ok(Control::Probe { id, size }),
            Control::ACK => Ok(Control::Ack { id, size }),
            k => Err(ControlError::Kind(k)),
        }
    }

    /// Writes the message into `out[..LEN]` and zeroes the rest (padding).
    pub fn emit(&self, out: &mut [u8]) {
        out.fill(0);
        let (kind, id, size) = match *self {
            Control::Probe { id, size } => (Control::PROBE, id, size),
            Control::Ack { id, size } => (Control::ACK, id, size),
        };
        if out.len() < Control::LEN {
            return;
        }
        out[0] = kind;
        out[4..8].copy_from_slice(&id.to_le_bytes());
        out[8..10].copy_from_slice(&size.to_le_bytes());
    }
}

#[cfg(test)]
#[path = "pmtud_tests.rs"]
mod tests;
