//! Sliding anti-replay window over 64-bit data counters, in the style of
//! RFC 6479: a ring of 64-bit blocks, so advancing the window clears whole
//! blocks instead of shifting a bitmap.
//!
//! Checking and marking are separate: the data path calls [`ReplayWindow::check`]
//! before decrypting (a cheap early drop) and [`ReplayWindow::mark`] only after
//! the tag verified, so forged frames can never move the window.

/// Number of 64-bit blocks in the ring. 128 blocks hold 8192 bits, of
/// which one block is kept as the slack that makes block-wise clearing work
/// (so the window is [`WINDOW`] = 8,128 counters):
/// enough for the reordering that several parallel UDP flows and a multi-Gbit/s
/// path produce (WireGuard uses the same size).
const BLOCKS: usize = 128;
const BLOCK_BITS: u64 = 64;
/// Counters this far or further behind the highest seen are rejected as too old.
pub const WINDOW: u64 = (BLOCKS as u64 - 1) * BLOCK_BITS;

/// Per-session receive window.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest counter accepted so far (meaningful once `any` is set).
    top: u64,
    any: bool,
    ring: [u64; BLOCKS],
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("top", &self.top)
            .finish()
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window: every counter is acceptable once.
    pub fn new() -> Self {
        ReplayWindow {
            top: 0,
            any: false,
            ring: [0; BLOCKS],
        }
    }

    fn slot(counter: u64) -> (usize, u64) {
        (
            ((counter / BLOCK_BITS) % BLOCKS as u64) as usize,
            1u64 << (counter % BLOCK_BITS),
        )
    }

    /// Would `counter` be accepted? Does not change the window.
    pub fn check(&self, counter: u64) -> bool {
        if !self.any || counter > self.top {
            return true;
        }
        if self.top - counter >= WINDOW {
            return false;
        }
        let (block, bit) = Self::slot(counter);
        self.ring[block] & bit == 0
    }

    /// Records `counter` as seen. Returns false (and changes nothing) when it is
    /// a replay or too old; call only for frames whose tag verified.
    pub fn mark(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        if !self.any {
            self.any = true;
            self.top = counter;
            self.ring = [0; BLOCKS];
        } else if counter > self.top {
            let cur = self.top / BLOCK_BITS;
            let new = counter / BLOCK_BITS;
            let steps = (new - cur).min(BLOCKS as u64);
            for i in 1..=steps {
                self.ring[((cur + i) % BLOCKS as u64) as usize] = 0;
            }
            self.top = counter;
        }
        let (block, bit) = Self::slot(counter);
        self.ring[block] |= bit;
        true
    }

    /// The highest counter accepted so far, if any.
    pub fn top(&self) -> Option<u64> {
        self.any.then_some(self.top)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_and_duplicates() {
        let mut w = ReplayWindow::new();
        for c in 0..10_000u64 {
            assert!(w.check(c));
            assert!(w.mark(c), "fresh {c}");
            assert!(!w.mark(c), "duplicate {c}");
        }
        assert_eq!(w.top(), Some(9_999));
    }

    #[test]
    fn first_counter_may_be_nonzero() {
        let mut w = ReplayWindow::new();
        assert!(w.mark(20_000));
        assert!(w.mark(19_000), "within the window behind the first");
        assert!(
            !w.mark(20_000 - WINDOW),
            "exactly one window behind is too old"
        );
    }

    #[test]
    fn reordering_within_window() {
        let mut w = ReplayWindow::new();
        assert!(w.mark(100));
        for c in (0..100).rev() {
            assert!(w.mark(c), "late {c}");
        }
        for c in 0..=100 {
            assert!(!w.check(c), "replay {c}");
        }
    }

    #[test]
    fn window_edges() {
        let mut w = ReplayWindow::new();
        assert!(w.mark(WINDOW + 10));
        assert!(w.check(11), "just inside");
        assert!(!w.check(10), "exactly WINDOW behind");
        assert!(!w.check(0));
        assert!(w.mark(11));
        assert!(!w.mark(11));
    }

    #[test]
    fn far_future_jump_clears_everything() {
        let mut w = ReplayWindow::new();
        for c in 0..64 * 3 {
            w.mark(c);
        }
        let far = 1_000_000u64;
        assert!(w.mark(far));
        // Old counters are now too old; counters just below `far` are fresh,
        // including ones whose ring slots were used before the jump.
        assert!(!w.check(5));
        for c in far - 200..far {
            assert!(w.check(c), "{c} must be fresh after the jump");
        }
        assert!(!w.check(far));
    }

    #[test]
    fn slots_are_recycled_when_sliding() {
        let mut w = ReplayWindow::new();
        // Mark every other counter over several laps of the ring.
        let laps = 5 * BLOCKS as u64 * BLOCK_BITS;
        for c in (0..laps).step_by(2) {
            assert!(w.mark(c));
        }
        // Odd counters inside the window are still fresh, even ones are replays.
        let top = w.top().expect("top");
        for c in (top - WINDOW + 1)..top {
            assert_eq!(w.check(c), c % 2 == 1, "counter {c}");
        }
    }

    #[test]
    fn wrap_near_u64_max() {
        let mut w = ReplayWindow::new();
        let hi = u64::MAX - 3;
        assert!(w.mark(hi));
        assert!(w.mark(u64::MAX));
        assert!(w.mark(hi + 1));
        assert!(!w.mark(hi));
        assert!(!w.mark(u64::MAX));
        assert!(!w.check(0), "counters never wrap around to zero");
    }

    #[test]
    fn check_does_not_mutate() {
        let w = ReplayWindow::new();
        assert!(w.check(7));
        assert!(w.check(7));
        assert_eq!(w.top(), None);
    }
}
