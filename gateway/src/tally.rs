//! A warning that can repeat once per node under load (thousands of lines in a connect
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

impl Tally {
    /// A tally that logs at most once per `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::default(),
        }
    }

    /// Counts one occurrence. Returns the occurrences to report when a line is due: the first
    /// at once, later ones at most once per interval (the metric beside it has the total).
    pub(crate) fn note(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap();
        s.count += 1;
        if s.logged_at.is_some_and(|t| t.elapsed() < self.interval) {
            return None;
        }
        s.logged_at = Some(Instant::now());
        Some(std::mem::take(&mut s.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_occurrence_logs_and_later_ones_wait_for_the_interval() {
        let tally = Tally::new(Duration::from_secs(3600));
        assert_eq!(tally.note(), Some(1));
        assert_eq!(tally.note(), None);
        assert_eq!(tally.note(), None);
    }

    #[test]
    fn a_due_line_reports_everything_since_the_last() {
        let tally = Tally::new(Duration::ZERO);
        assert_eq!(tally.note(), Some(1));
        assert_eq!(tally.note(), Some(1));
        // Held back by a long interval, then released: the count covers all of them.
        let tally = Tally {
            interval: Duration::from_secs(3600),
            state: Mutex::new(Unlogged {
                count: 4,
                logged_at: Some(Instant::now() - Duration::from_secs(7200)),
            }),
        };
        assert_eq!(tally.note(), Some(5));
        assert_eq!(tally.note(), None);
    }
}
