//! The search against a simulated path on a virtual clock: a frame limit
//! (larger frames vanish, as in a black hole), random loss each way, a
//! round-trip time and outages.

use super::*;

/// The tunnel's need: 1420 + 32 = 1452-byte frames.
const TUN_MTU: usize = 1420;
const STEP: Duration = Duration::from_millis(50);

fn peer_v4() -> SocketAddr {
    "198.18.0.2:51820".parse().expect("addr")
}

/// A path: frames up to `mtu` bytes pass unless lost.
struct Path {
    now: Instant,
    mtu: usize,
    /// Loss per direction, per million.
    loss_ppm: u64,
    rtt: Duration,
    down: bool,
    rng: u64,
    acks: Vec<(Instant, u32)>,
    /// Probe frames sent at each time (for pacing checks).
    sent: Vec<Instant>,
}

impl Path {
    fn new(mtu: usize) -> Path {
        Path {
            now: Instant::now(),
            mtu,
            loss_ppm: 0,
            rtt: Duration::from_millis(20),
            down: false,
            rng: 0x2545_f491_4f6c_dd1d,
            acks: Vec::new(),
            sent: Vec::new(),
        }
    }

    fn lost(&mut self) -> bool {
        // xorshift64: a fixed seed, so every run sees the same losses.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % 1_000_000 < self.loss_ppm
    }

    /// One tick: acks that arrived, then the probes `p` sends.
    fn step(&mut self, p: &mut Pmtud, silent_since: Option<Instant>) {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = self.acks.drain(..).partition(|(at, _)| *at <= now);
        self.acks = later;
        for (_, id) in due {
            p.on_ack(now, id);
        }
        if let Some(probes) = p.poll(now, peer_v4(), silent_since) {
            for pr in probes {
                self.sent.push(now);
                let through = !self.down && pr.size <= self.mtu && !self.lost() && !self.lost();
                if through {
                    self.acks.push((now + self.rtt, pr.id));
                }
            }
        }
        self.now += STEP;
    }

    /// Runs `p` for `d`; `silent`: data goes out and nothing comes back
    /// (since the start of this run).
    fn run(&mut self, p: &mut Pmtud, d: Duration, silent: bool) {
        let end = self.now + d;
        let silent_since = silent.then_some(self.now);
        while self.now < end {
            self.step(p, silent_since);
        }
    }

    /// Runs until `p` is in `phase` (at most `max`); the time it took.
    fn until(&mut self, p: &mut Pmtud, phase: Phase, max: Duration, silent: bool) -> Duration {
        let start = self.now;
        let silent_since = silent.then_some(self.now);
        while p.phase() != phase {
            assert!(self.now - start < max, "not {phase:?} after {max:?}: {p:?}");
            self.step(p, silent_since);
        }
        self.now - start
    }

    /// Most probe frames sent within any one second.
    fn max_per_second(&self) -> usize {
        self.sent
            .iter()
            .map(|&t| {
                self.sent
                    .iter()
                    .filter(|&&u| u >= t && u < t + Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }
}

fn search() -> Pmtud {
    Pmtud::new(true, TUN_MTU, DEFAULT_INTERVAL)
}

#[test]
fn a_clear_path_is_confirmed_by_one_round() {
    let mut path = Path::new(1472);
    let mut p = search();
    assert_eq!(
        (p.phase(), p.limit(), p.path_mtu()),
        (Phase::Idle, None, None)
    );
    let took = path.until(&mut p, Phase::Complete, Duration::from_secs(1), false);
    // Sent at 0, the ack (20 ms) read at the 50 ms tick.
    assert_eq!(
        took,
        Duration::from_millis(100),
        "one round trip, two ticks"
    );
    assert_eq!(p.limit(), None, "the whole tunnel MTU fits");
    assert_eq!(p.path_mtu(), Some(1480));
    assert_eq!(p.stats().probes, 2, "a probe and its sentinel");
    // Validated: no probe until the re-validation interval.
    path.run(&mut p, DEFAULT_INTERVAL - Duration::from_secs(1), false);
    assert_eq!(p.stats().probes, 2);
    path.run(&mut p, Duration::from_secs(2), false);
    assert_eq!(p.stats().probes, 4, "re-validated once");
    assert_eq!(p.phase(), Phase::Complete);
    // A reload shortens the interval: it counts from that validation.
    p.set_interval(Duration::from_secs(10));
    path.run(&mut p, Duration::from_secs(9), false);
    assert_eq!(p.stats().probes, 4);
    path.run(&mut p, Duration::from_secs(2), false);
    assert_eq!(p.stats().probes, 6);
}

#[test]
fn a_black_hole_from_the_start_is_searched_down_to_the_path() {
    // A 1400-byte path MTU: frames up to 1372 bytes pass.
    let mut path = Path::new(1372);
    let mut p = search();
    path.until(&mut p, Phase::Base, Duration::from_secs(5), false);
    assert_eq!(p.stats().black_holes, 1);
    assert_eq!(p.limit(), Some(1252), "base: 1280 - 28");
    let took = path.until(&mut p, Phase::Complete, Duration::from_secs(20), false);
    let limit = p.limit().expect("limited");
    assert!(
        limit <= 1372 && limit + GRANULARITY >= 1372,
        "limit {limit}"
    );
    assert_eq!(limit, 1368);
    assert_eq!(p.path_mtu(), Some(1396));
    eprintln!(
        "converged to {limit} in {:.2} s after base, {} probe frames in all",
        took.as_secs_f64(),
        p.stats().probes
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(p.stats().probes, 30);
    assert!(path.max_per_second() <= 8, "{}", path.max_per_second());
}

#[test]
fn a_black_hole_that_appears_later_is_detected_by_silence() {
    let mut path = Path::new(1472);
    let mut p = search();
    path.until(&mut p, Phase::Complete, Duration::from_secs(1), false);
    path.run(&mut p, Duration::from_secs(10), false);
    // The path narrows; data goes out, nothing comes back.
    path.mtu = 1372;
    let t = path.now;
    path.until(&mut p, Phase::Base, Duration::from_secs(10), true);
    let detected = path.now - t;
    // 1 s of silence, then five failed rounds 250 ms apart.
    assert!(
        detected >= SUSPECT_AFTER && detected <= Duration::from_millis(2500),
        "{detected:?}"
    );
    path.until(&mut p, Phase::Complete, Duration::from_secs(10), true);
    let recovered = path.now - t;
    assert_eq!(p.limit(), Some(1368));
    eprintln!(
        "black hole detected after {:.2} s, path searched after {:.2} s",
        detected.as_secs_f64(),
        recovered.as_secs_f64()
    );
    assert!(recovered < Duration::from_secs(6), "{recovered:?}");
}

#[test]
fn without_silence_the_periodic_revalidation_finds_it() {
    let mut path = Path::new(1472);
    let mut p = search();
    path.until(&mut p, Phase::Complete, Duration::from_secs(1), false);
    path.mtu = 1372;
    let t = path.now;
    path.until(&mut p, Phase::Base, DEFAULT_INTERVAL * 2, false);
    let detected = path.now - t;
    assert!(
        detected >= DEFAULT_INTERVAL && detected <= DEFAULT_INTERVAL + Duration::from_secs(2),
        "{detected:?}"
    );
}

#[test]
fn the_limit_is_raised_after_the_path_widens() {
    let mut path = Path::new(1372);
    let mut p = search();
    path.until(&mut p, Phase::Complete, Duration::from_secs(20), false);
    assert_eq!(p.limit(), Some(1368));
    path.mtu = 1472;
    let t = path.now;
    while p.limit().is_some() {
        assert!(path.now - t < RAISE_AFTER + DEFAULT_INTERVAL, "{p:?}");
        path.run(&mut p, Duration::from_secs(1), false);
    }
    let raised = path.now - t;
    // The raise timer runs from the black hole (about 1 s before `t`);
    // the raise is tried at the first re-validation after it.
    assert!(raised <= RAISE_AFTER + DEFAULT_INTERVAL, "{raised:?}");
    assert_eq!(p.path_mtu(), Some(1480));
}

#[test]
fn a_path_that_stays_narrow_is_retried_only_at_the_raise_timer() {
    let mut path = Path::new(1372);
    let mut p = search();
    path.until(&mut p, Phase::Complete, Duration::from_secs(20), false);
    let before = p.stats().probes;
    path.run(&mut p, Duration::from_secs(3600), false);
    let per_hour = p.stats().probes - before;
    // Re-validations every 2 min (2 frames each) and a raise search every
    // 10 min (a failed top size and a short search).
    assert!(per_hour <= 200, "{per_hour} probe frames in an hour");
    assert_eq!(p.limit(), Some(1368), "never raised past the path");
    assert_eq!(p.stats().black_holes, 1);
}

#[test]
fn an_icmp_lowers_the_limit_at_once_and_is_confirmed() {
    let mut path = Path::new(1472);
    let mut p = search();
    path.until(&mut p, Phase::Complete, Duration::from_secs(1), false);
    // The kernel learnt a 1450-byte path MTU from an ICMP.
    path.mtu = 1422;
    p.set_ceiling(path.now, Some(1422));
    assert_eq!(p.limit(), Some(1422), "at once");
    assert_eq!(p.phase(), Phase::Confirming);
    path.until(&mut p, Phase::Complete, Duration::from_secs(2), false);
    assert_eq!(p.limit(), Some(1422));
    assert_eq!(p.stats().black_holes, 0);
    // A higher ceiling never raises the limit by itself: probes do.
    p.set_ceiling(path.now, Some(1472));
    assert_eq!(p.limit(), Some(1422));
    path.run(&mut p, Duration::from_secs(1), false);
    assert_eq!(p.limit(), Some(1422), "the path still drops more");
    path.mtu = 1472;
    path.run(&mut p, RAISE_AFTER + DEFAULT_INTERVAL, false);
    assert_eq!(p.limit(), None);
}

#[test]
fn a_forged_icmp_is_overruled_at_the_raise_timer_and_never_below_what_is_probed() {
    let mut path = Path::new(1472);
    let mut p = search();
    path.until(&mut p, Phase::Complete, Duration::from_secs(1), false);
    // An ICMP claims 600 bytes, the path is fine: the confirmation passes,
    // and the kernel's claim bounds us only while it holds it.
    p.set_ceiling(path.now, Some(572));
    assert_eq!(p.limit(), Some(572));
    path.until(&mut p, Phase::Complete, Duration::from_secs(2), false);
    assert_eq!(p.limit(), Some(572));
    // The kernel forgets the claim (10 min later): searched back up.
    p.set_ceiling(path.now, Some(1472));
    path.until(&mut p, Phase::Complete, Duration::from_secs(10), false);
    assert_eq!(p.limit(), None);
}

#[test]
fn random_loss_is_never_taken_for_a_black_hole() {
    // 5% loss each way, data always one-way (silence triggers as often as
    // allowed) for two hours.
    let mut path = Path::new(1472);
    path.loss_ppm = 50_000;
    let mut p = search();
    path.until(&mut p, Phase::Complete, Duration::from_secs(10), false);
    path.run(&mut p, Duration::from_secs(7200), true);
    let s = p.stats();
    assert_eq!(s.black_holes, 0, "{s:?}");
    assert_eq!(p.limit(), None);
    assert!(s.failed_rounds > 0, "loss failed some rounds: {s:?}");
    // One confirmation per 10 s of silence at most, a retry after each
    // failed round, and after the few rounds where both frames were lost.
    assert!(s.probes <= 2 * (7200 / 10 + s.failed_rounds + 20), "{s:?}");
    eprintln!("2 h at 5% loss: {s:?}");
}

#[test]
fn an_outage_is_not_a_black_hole() {
    let mut path = Path::new(1472);
    let mut p = search();
    path.until(&mut p, Phase::Complete, Duration::from_secs(1), false);
    path.down = true;
    path.run(&mut p, Duration::from_secs(60), true);
    assert_eq!(p.stats().black_holes, 0);
    assert_eq!(p.limit(), None);
    // Rounds back off while nothing answers.
    assert!(path.max_per_second() <= 8);
    path.down = false;
    path.run(&mut p, Duration::from_secs(20), true);
    assert_eq!(p.limit(), None);
}

#[test]
fn a_peer_that_does_not_answer_probes_is_left_alone() {
    // An older tunneld: no probe is ever acknowledged.
    let mut path = Path::new(1472);
    path.down = true;
    let mut p = search();
    let took = path.until(&mut p, Phase::Unsupported, Duration::from_secs(30), false);
    assert!(took <= Duration::from_secs(12), "{took:?}");
    assert_eq!(
        (p.limit(), p.path_mtu()),
        (None, None),
        "no limit, as before"
    );
    let before = p.stats().probes;
    path.run(&mut p, Duration::from_secs(3600), false);
    let per_hour = p.stats().probes - before;
    assert!(per_hour <= 30 * 10, "{per_hour}");
    assert_eq!(p.phase(), Phase::Unsupported);
    // Upgraded: the next retry finds it answering.
    path.down = false;
    path.run(&mut p, DEFAULT_INTERVAL + Duration::from_secs(20), false);
    assert_eq!(p.phase(), Phase::Complete);
}

#[test]
fn a_new_path_starts_over_and_a_small_tunnel_needs_no_probes() {
    let mut path = Path::new(1372);
    let mut p = search();
    path.until(&mut p, Phase::Complete, Duration::from_secs(20), false);
    assert_eq!(p.limit(), Some(1368));
    let v6: SocketAddr = "[fd00::2]:51820".parse().expect("addr");
    assert!(
        p.poll(path.now, v6, None).is_some(),
        "confirms on the new path"
    );
    assert_eq!(p.phase(), Phase::Confirming);
    assert_eq!(p.limit(), None, "optimistic until evidence");
    let mut small = Pmtud::new(true, 1200, DEFAULT_INTERVAL);
    assert_eq!(small.poll(path.now, peer_v4(), None), None);
    assert_eq!((small.phase(), small.limit()), (Phase::Complete, None));
    let mut off = Pmtud::new(false, 1420, DEFAULT_INTERVAL);
    assert_eq!(off.poll(path.now, peer_v4(), Some(path.now)), None);
    assert_eq!(
        (off.phase(), off.limit(), off.path_mtu()),
        (Phase::Disabled, None, None)
    );
}

#[test]
fn stray_acks_change_nothing() {
    let mut path = Path::new(1472);
    let mut p = search();
    let probes = p.poll(path.now, peer_v4(), None).expect("probes");
    assert!(!p.on_ack(path.now, 999), "unknown id");
    assert!(p.on_ack(path.now, probes[1].id));
    assert!(!p.on_ack(path.now, probes[1].id), "a duplicate");
    assert_eq!(p.stats().acks, 1);
    path.now += Duration::from_secs(5);
    assert!(!p.on_ack(path.now, 12345));
}

#[test]
fn control_messages_round_trip_and_refuse_garbage() {
    let mut buf = [0xffu8; 64];
    Control::Probe { id: 7, size: 1452 }.emit(&mut buf);
    assert!(Control::is_control(&buf));
    assert_eq!(
        Control::parse(&buf),
        Ok(Control::Probe { id: 7, size: 1452 })
    );
    assert!(
        buf[Control::LEN..].iter().all(|&b| b == 0),
        "padding zeroed"
    );
    Control::Ack {
        id: u32::MAX,
        size: 44,
    }
    .emit(&mut buf[..Control::LEN]);
    assert_eq!(
        Control::parse(&buf[..Control::LEN]),
        Ok(Control::Ack {
            id: u32::MAX,
            size: 44
        })
    );
    assert_eq!(Control::parse(&buf[..9]), Err(ControlError::Short));
    let mut bad = buf;
    bad[2] = 1;
    assert_eq!(Control::parse(&bad), Err(ControlError::Reserved));
    bad = buf;
    bad[0] = 0x0f;
    assert_eq!(Control::parse(&bad), Err(ControlError::Kind(0x0f)));
    assert!(!Control::is_control(&[0x45, 0]), "IPv4");
    assert!(!Control::is_control(&[0x60, 0]), "IPv6");
    assert!(!Control::is_control(&[]));
    assert_eq!(Control::MIN_FRAME, 42);
}
