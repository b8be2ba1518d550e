//! The lock-free path under concurrency: the replay window against the
//! sequential model, several threads sealing with one session, and a rekey
//! while they seal. Runs inside the two-peer harness of `device_tests`.

use super::*;
use crate::crypto::handshake::SessionKeys;
use crate::crypto::replay::{ReplayWindow, WINDOW};
use crate::fastpath::{Sealed, Tally};
use crate::peer::Session;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// A small deterministic generator (xorshift64*), so failures repeat.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn session() -> Session {
    let keys = SessionKeys {
        send: [7; 32],
        recv: [7; 32],
        local_index: 1,
        remote_index: 2,
        initiator: true,
    };
    Session::new(
        &keys,
        |k| crate::crypto::aead::new_aead(CipherKind::Aes256Gcm, k),
        Instant::now(),
    )
    .expect("session")
}

/// Counters as a reordering, duplicating, occasionally jumping path
/// delivers them.
fn arrivals(rng: &mut Rng, n: usize) -> Vec<u64> {
    let mut base = 0u64;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let r = rng.next();
        let c = match r % 16 {
            // A jump far ahead (the sender's other flows were faster).
            0 => {
                base += WINDOW + r % 500;
                base
            }
            // A duplicate or a late counter just behind the top.
            1..=3 => base.saturating_sub(r % 64),
            // A late counter anywhere in the window, or just outside it.
            4..=5 => base.saturating_sub(r % (WINDOW + 200)),
            _ => {
                base += 1 + r % 3;
                base
            }
        };
        out.push(c);
    }
    out
}

#[test]
fn replay_window_matches_the_sequential_model_on_one_thread() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let s = session();
    let mut model = ReplayWindow::new();
    let (mut accepted, mut refused) = (0, 0);
    for c in arrivals(&mut rng, 200_000) {
        let got = s.may_accept(c) && s.mark(c);
        assert_eq!(got, model.mark(c), "counter {c}");
        if got {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    // The sequence exercises both outcomes.
    assert!(
        accepted > 100_000 && refused > 5_000,
        "{accepted} {refused}"
    );
}

#[test]
fn replay_window_accepts_each_counter_at_most_once_across_threads() {
    const N: usize = 100_000;
    const THREADS: u64 = 4;
    let s = Arc::new(session());
    let seen: Arc<Vec<AtomicU8>> = Arc::new((0..N).map(|_| AtomicU8::new(0)).collect());
    // Every thread offers every counter, each in its own order with
    // bounded displacement, as frames spread over workers arrive.
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (s, seen) = (s.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x1234_5678 + t);
                let mut order: Vec<u64> = (0..N as u64).collect();
                for i in 0..N {
                    let j = (i + (rng.next() % 512) as usize).min(N - 1);
                    order.swap(i, j);
                }
                let mut mine = 0u64;
                for c in order {
                    if s.may_accept(c) && s.mark(c) {
                        seen[c as usize].fetch_add(1, Ordering::Relaxed);
                        mine += 1;
                    }
                }
                mine
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().expect("thread")).sum();
    let twice = seen
        .iter()
        .filter(|c| c.load(Ordering::Relaxed) > 1)
        .count();
    assert_eq!(twice, 0, "counters accepted more than once");
    // Displacement (512) is far inside the window: nearly every counter
    // is taken by some thread.
    assert!(total as usize > N * 9 / 10, "accepted {total} of {N}");
}

#[test]
fn reserve_never_passes_the_limit_and_never_wraps() {
    let s = session();
    assert_eq!(s.reserve(10), Some(0));
    assert_eq!(s.reserve(5), Some(10));
    assert_eq!(s.counters_used(), 15);
    assert_eq!(s.reserve(u64::MAX), None, "refused without moving");
    assert_eq!(s.counters_used(), 15);
}

/// One sealing worker: seals `packet` in batches of 64 with the published
/// snapshot until `stop`, pushing each batch's frames onto `wire`.
fn sealer(
    fast: Arc<arc_swap::ArcSwap<crate::fastpath::FastPath>>,
    now: Instant,
    packet: Vec<u8>,
    wire: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    after_stop: usize,
) -> usize {
    let mut tally = Tally::default();
    let mut sealed = 0;
    let mut extra = 0;
    let mut buf = vec![0u8; OVERHEAD + packet.len()];
    while extra < after_stop {
        if stop.load(Ordering::Acquire) {
            extra += 1;
        }
        let fp = fast.load();
        tally.expect(64);
        let mut batch = Vec::with_capacity(64);
        for _ in 0..64 {
            buf[HEADROOM..HEADROOM + packet.len()].copy_from_slice(&packet);
            match fp.encapsulate(&mut tally, &mut buf, packet.len(), now) {
                Sealed::Send { len, .. } => batch.push(buf[..len].to_vec()),
                other => panic!("not sealed: {other:?}"),
            }
        }
        tally.flush(fp.counters());
        sealed += batch.len();
        wire.lock().expect("wire").extend(batch);
    }
    sealed
}

fn index_and_counter(frame: &[u8]) -> (u32, u64) {
    let f = crate::wire::DataFrame::new_checked(frame).expect("data frame");
    (f.receiver_index(), f.counter())
}

/// Four threads seal with one session while the device rekeys twice under
/// them: no (index, counter) pair repeats, both sessions are used in each
/// round, and the peer opens every frame (no replay, tag or index drop).
#[test]
fn concurrent_sealing_across_rekeys_never_reuses_a_nonce() {
    let mut n = Net::new();
    // Path MTU probes and acks take counters from the same sessions at the
    // devices' ticks and reach the peer first, moving its window past the
    // sealers' frames this test delivers afterwards: not what it measures.
    for (dev, mut cfg) in [(&mut n.a, a_config()), (&mut n.b, b_config())] {
        cfg.pmtud.enabled = false;
        *dev = Device::new(&cfg);
    }
    n.established();
    let packet = ipv4(A_HOST, B_HOST, &[0x5a; 64]);
    let mut all = HashSet::new();
    let mut total = 0usize;
    for round in 0..2 {
        let wire = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let now = n.time().now;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (fast, packet, wire, stop) =
                    (n.a.fast_path(), packet.clone(), wire.clone(), stop.clone());
                std::thread::spawn(move || sealer(fast, now, packet, wire, stop, 20))
            })
            .collect();
        // Let the sealers run, then rekey under them: A initiates (its
        // session is past rekey_after_time) and installs the new session
        // when B answers.
        while wire.lock().expect("wire").len() < 4 * 64 * 10 {
            std::thread::yield_now();
        }
        let before = n.a.counters().handshakes;
        n.advance(Duration::from_secs(130));
        n.tick();
        n.flush();
        assert!(n.a.counters().handshakes > before, "round {round}: rekeyed");
        stop.store(true, Ordering::Release);
        let sealed: usize = threads.into_iter().map(|h| h.join().expect("sealer")).sum();
        let mut frames = std::mem::take(&mut *wire.lock().expect("wire"));
        assert_eq!(frames.len(), sealed);
        let mut indexes = HashSet::new();
        for f in &frames {
            let (idx, counter) = index_and_counter(f);
            indexes.insert(idx);
            assert!(all.insert((idx, counter)), "nonce reused: {idx} {counter}");
        }
        assert_eq!(indexes.len(), 2, "round {round}: old and new session used");
        // Delivered in counter order per session: on this oversubscribed
        // machine a sealer can be descheduled between reserving its run and
        // handing the frames over for longer than the window (8,128 frames)
        // lasts, which is the scheduler's reordering, not the code's.
        let old = index_and_counter(&frames[0]).0;
        frames.sort_by_key(|f| {
            let (idx, counter) = index_and_counter(f);
            (idx != old, counter)
        });
        let rx_before = n.b.counters().rx_packets;
        for f in frames {
            n.deliver(addr(B_ADDR), addr(A_ADDR), f);
        }
        let c = n.b.counters();
        assert_eq!(
            c.rx_packets - rx_before,
            sealed as u64,
            "round {round}: {c:?}"
        );
        assert_eq!(
            c.drop_replay + c.drop_bad_tag + c.drop_unknown_index,
            0,
            "{c:?}"
        );
        total += sealed;
        n.flush();
    }
    assert_eq!(n.a.counters().tx_packets, total as u64);
    assert_eq!(
        n.a.peer_status(n.time().now)[0].tx_bytes,
        (total * packet.len()) as u64
    );
}

/// A replayed frame is refused by the lock-free path whichever thread
/// opens it, and counted once per copy.
#[test]
fn replayed_frames_are_dropped_by_every_opener() {
    let mut n = Net::new();
    n.established();
    let p = ipv4(A_HOST, B_HOST, b"once");
    n.send(true, &p);
    let (to, from, frame) = n.wire.pop().expect("frame");
    n.deliver(to, from, frame.clone());
    let fast = n.b.fast_path();
    let opened: usize = (0..4)
        .map(|_| {
            let (fast, frame) = (fast.clone(), frame.clone());
            std::thread::spawn(move || {
                let fp = fast.load();
                let mut tally = Tally::default();
                let mut buf = frame.clone();
                let r = fp.decapsulate(&mut tally, &mut buf, frame.len(), from, Instant::now());
                tally.flush(fp.counters());
                usize::from(matches!(r, crate::fastpath::Opened::Inner(_)))
            })
        })
        .map(|h| h.join().expect("opener"))
        .sum();
    assert_eq!(opened, 0);
    assert_eq!(n.to_b, vec![p]);
    assert_eq!(n.b.counters().drop_replay, 4);
}

/// Opening a batch with the replay window marked once at its end: a frame
/// received twice in the batch and a frame settled in an earlier batch are
/// refused by position, only accepted frames count as received, and 4
/// threads settling the same 60 frames accept each exactly once.
#[test]
fn a_batch_settles_its_counters_once_and_refuses_repeats() {
    let mut n = Net::new();
    n.established();
    let mut frames = Vec::new();
    for i in 0..60u8 {
        n.send(true, &ipv4(A_HOST, B_HOST, &[i; 40]));
        let (_, from, frame) = n.wire.pop().expect("frame");
        frames.push((from, frame));
    }
    // The session's first frame goes through the device.
    let (from, first) = frames.remove(0);
    n.deliver(addr(B_ADDR), from, first.clone());
    let fast = n.b.fast_path();
    let fp = fast.load();
    let rx_before = n.b.counters().rx_packets;

    // One batch: frames 0..10, frame 3 again, and the first frame (settled
    // before, by the device).
    let mut batch: Vec<Vec<u8>> = frames[..10].iter().map(|(_, f)| f.clone()).collect();
    batch.push(frames[3].1.clone());
    batch.push(first);
    let mut tally = Tally::default();
    let mut opened = Vec::new();
    for buf in batch.iter_mut() {
        let len = buf.len();
        let r = fp.decapsulate_deferred(&mut tally, buf, len, from, Instant::now());
        opened.push(matches!(r, crate::fastpath::Opened::Inner(_)));
    }
    // The first frame was marked by the device: refused before it is
    // decrypted. The repeat of frame 3 is opened (nothing is marked before
    // the batch settles) and refused by `settle`, by its position.
    assert_eq!(opened, [vec![true; 11], vec![false]].concat());
    assert_eq!(tally.pending(), 11);
    let mut refused = Vec::new();
    fp.settle(&mut tally, |k| refused.push(k));
    assert_eq!(refused, vec![10]);
    assert_eq!(tally.pending(), 0);
    tally.flush(fp.counters());
    let c = n.b.counters();
    assert_eq!(c.rx_packets - rx_before, 10);
    assert_eq!(c.drop_replay, 2);

    // The other 49 frames, given to 4 threads at once: each counter is
    // accepted by exactly one of them.
    let rest: Vec<Vec<u8>> = frames[10..].iter().map(|(_, f)| f.clone()).collect();
    let accepted: usize = (0..4)
        .map(|_| {
            let (fast, rest) = (fast.clone(), rest.clone());
            std::thread::spawn(move || {
                let fp = fast.load();
                let mut tally = Tally::default();
                let mut ok = 0;
                for chunk in rest.chunks(7) {
                    for f in chunk {
                        let mut buf = f.clone();
                        let r = fp.decapsulate_deferred(
                            &mut tally,
                            &mut buf,
                            f.len(),
                            from,
                            Instant::now(),
                        );
                        assert!(matches!(
                            r,
                            crate::fastpath::Opened::Inner(_) | crate::fastpath::Opened::Done
                        ));
                    }
                    let mut refused = 0;
                    let pending = tally.pending();
                    fp.settle(&mut tally, |_| refused += 1);
                    ok += pending - refused;
                }
                tally.flush(fp.counters());
                ok
            })
        })
        .map(|h| h.join().expect("opener"))
        .sum();
    assert_eq!(accepted, 49);
    let c = n.b.counters();
    assert_eq!(c.rx_packets - rx_before, 10 + 49);
    assert_eq!(c.drop_replay, 2 + 3 * 49);
}

/// The timers read what the workers wrote: times before and after the
/// stats' origin come back as written, "unanswered since" keeps its first
/// time until something is heard, and "ack due" follows received data.
#[test]
fn peer_stats_keep_times_either_side_of_their_origin() {
    let stats = crate::peer::PeerStats::new();
    let t0 = Instant::now();
    let before = t0 - Duration::from_millis(1);
    let after = t0 + Duration::from_secs(3600);
    assert_eq!(stats.last_sent(), None);
    stats.sent(before, true);
    assert_eq!(stats.last_sent(), Some(before));
    assert_eq!(stats.unanswered_since(), Some(before));
    stats.sent(after, true);
    assert_eq!(stats.last_sent(), Some(after));
    assert_eq!(
        stats.unanswered_since(),
        Some(before),
        "the first one stays"
    );
    stats.sent(before, false);
    assert_eq!(stats.last_sent(), Some(after), "never moves back");
    stats.received(after, true);
    assert_eq!(stats.unanswered_since(), None);
    assert_eq!(stats.ack_due_since(), Some(after));
    assert_eq!(stats.last_received(), Some(after));
    stats.sent(after, false);
    assert_eq!(stats.ack_due_since(), None);
    stats.add_tx(5);
    stats.add_rx(7);
    assert_eq!((stats.tx_bytes(), stats.rx_bytes()), (5, 7));
}
