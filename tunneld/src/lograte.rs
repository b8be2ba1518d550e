//! Rate limits for log lines that anyone on the network can cause (refused
//! QUIC certificates, handshakes from unknown keys, unauthenticated
//! connections): a flood of such events must not become a flood of log
//! lines filling the disk or drowning the journal. The events themselves
//! are counted elsewhere; this only bounds the lines.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines one limiter lets through per [`WINDOW`]: enough to see what is
/// happening (the first few sources), few enough that a flood of a
/// million events writes a handful of lines a minute.
pub const LINES_PER_WINDOW: u32 = 5;
/// The window the line budget applies to.
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct State {
    window_start: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

/// One kind of log line, limited to [`LINES_PER_WINDOW`] per [`WINDOW`].
#[derive(Debug)]
pub struct LogLimiter {
    state: Mutex<State>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LogLimiter {
    /// A limiter with a full budget (usable in a `static`).
    pub const fn new() -> Self {
        LogLimiter {
            state: Mutex::new(State {
                window_start: None,
                lines: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be written at `now`: `Some(n)` with the number of
    /// lines suppressed since the last one written (to say so in the line),
    /// `None` to skip it.
    pub fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.window_start
            .is_none_or(|w| now.saturating_duration_since(w) >= WINDOW)
        {
            s.window_start = Some(now);
            s.lines = 0;
        }
        if s.lines < LINES_PER_WINDOW {
            s.lines += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }

    /// [`Self::allow_at`] now.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }
}

/// Text to append to a rate-limited line: empty, or how many similar
/// lines were left out before it.
pub fn suppressed_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} similar lines suppressed)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_writes_a_few_lines_per_window_and_says_what_it_left_out() {
        let l = LogLimiter::new();
        let t0 = Instant::now();
        let mut written = Vec::new();
        // 1,000 events per second for 3 minutes.
        for i in 0..180_000u64 {
            if let Some(n) = l.allow_at(t0 + Duration::from_millis(i)) {
                written.push(n);
            }
        }
        assert_eq!(written.len(), 3 * LINES_PER_WINDOW as usize);
        // The first line of each later window reports the gap.
        assert_eq!(written[0], 0);
        assert_eq!(written[5], 60_000 - 5);
        assert_eq!(written[10], 60_000 - 5);
        assert_eq!(suppressed_note(0), "");
        assert_eq!(suppressed_note(3), " (3 similar lines suppressed)");
    }
}
