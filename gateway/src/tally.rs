//! A warning that can repeat once per connection under load (thousands of lines in a connect
//! burst), logged at most once per interval with how often it happened since the last line.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts one warning's occurrences and says when a line is due.
#[derive(Debug)]
pub(crate) struct Tally {
    interval: Duration,
    state: Mutex<Unlogged>,
}

#[derive(Debug, Default)]
struct Unlogged {
    count: u64,
    logged_at: Option<Instant>,
}

impl Unlogged {
    /// Takes the count when no line was logged within `interval` of `now`.
    fn take_if_due(&mut self, now: Instant, interval: Duration) -> Option<u64> {
        if self
            .logged_at
            .is_some_and(|t| now.saturating_duration_since(t) < interval)
        {
            return None;
        }
        self.logged_at = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

impl Tally {
    /// A tally that logs at most once per `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::default(),
        }
    }

    /// Counts one occurrence at `now`. Returns the occurrences to report when a line is due:
    /// the first at once, later ones at most once per interval.
    pub(crate) fn note(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap();
        s.count += 1;
        s.take_if_due(now, self.interval)
    }

    /// Returns the occurrences held back, once a line is due: called periodically, so the
    /// last ones of a burst are reported within an interval, not with the next occurrence.
    pub(crate) fn flush(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap();
        if s.count == 0 {
            return None;
        }
        s.take_if_due(now, self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(10);

    #[test]
    fn occurrences_held_back_are_reported_with_the_next_due_line() {
        let tally = Tally::new(INTERVAL);
        let t0 = Instant::now();
        assert_eq!(tally.note(t0), Some(1));
        assert_eq!(tally.note(t0 + Duration::from_secs(1)), None);
        assert_eq!(tally.note(t0 + Duration::from_secs(9)), None);
        assert_eq!(tally.note(t0 + INTERVAL), Some(3));
        assert_eq!(tally.note(t0 + INTERVAL), None);
    }

    #[test]
    fn a_flush_reports_a_bursts_last_occurrences_once_due() {
        let tally = Tally::new(INTERVAL);
        let t0 = Instant::now();
        assert_eq!(tally.flush(t0), None, "nothing to report");
        assert_eq!(tally.note(t0), Some(1));
        assert_eq!(tally.note(t0 + Duration::from_secs(1)), None);
        assert_eq!(tally.note(t0 + Duration::from_secs(2)), None);
        assert_eq!(
            tally.flush(t0 + Duration::from_secs(5)),
            None,
            "not due yet"
        );
        assert_eq!(tally.flush(t0 + INTERVAL), Some(2));
        assert_eq!(tally.flush(t0 + INTERVAL * 3), None, "reported already");
        // After a quiet spell the next occurrence is reported at once.
        assert_eq!(tally.note(t0 + INTERVAL * 3), Some(1));
    }
}
