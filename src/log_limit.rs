//! A rate limit for log lines that something outside the process can repeat at will (one
//! per client connection, per failed accept): at most one line per interval gets through,
//! and it says how many were held back since the last one (`suppressed=N`), so that a
//! flood costs a few lines, never the disk, and nothing is silently lost from the count.
//!
//! Owns only the decision "may this line be written now, and how many were dropped before
//! it"; it does not format or write lines (the caller logs, with the count as a field), and
//! it is not a metric (every event is counted in `/metrics` by the caller, limited or not).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a line of one kind may be logged, unless a caller says otherwise.
pub const EVERY: Duration = Duration::from_secs(5);

/// One kind of log line's limit. Cheap: a mutex held for a comparison.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::new(EVERY)
    }
}

impl LogLimit {
    pub const fn new(every: Duration) -> LogLimit {
        LogLimit {
            every,
            state: Mutex::new(State {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` if a line may be logged now, `n` being how many were held back since the
    /// last one that was; `None` if this one is held back (and counted).
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if s.last
            .is_none_or(|t| now.saturating_duration_since(t) >= self.every)
        {
            s.last = Some(now);
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }

    /// Runs `log` with the suppressed count if a line may be logged now.
    pub fn log(&self, log: impl FnOnce(u64)) {
        if let Some(n) = self.check() {
            log(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_next_one_counts_what_was_held_back() {
        let l = LogLimit::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(l.check_at(t0), Some(0), "the first line goes through");
        for i in 1..=99 {
            assert_eq!(l.check_at(t0 + Duration::from_millis(i * 10)), None);
        }
        assert_eq!(l.check_at(t0 + Duration::from_secs(5)), Some(99));
        assert_eq!(l.check_at(t0 + Duration::from_secs(6)), None);
        assert_eq!(
            l.check_at(t0 + Duration::from_secs(11)),
            Some(1),
            "the count starts again after a line got through"
        );
        assert_eq!(l.check_at(t0 + Duration::from_secs(60)), Some(0));
    }

    #[test]
    fn log_runs_only_when_allowed() {
        let l = LogLimit::new(Duration::from_secs(3600));
        let mut seen = Vec::new();
        for _ in 0..3 {
            l.log(|n| seen.push(n));
        }
        assert_eq!(seen, vec![0]);
    }
}
