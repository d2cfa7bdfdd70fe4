//! Exponential backoff with full jitter, for every reconnect loop.
//!
//! The ceiling grows from `initial` by `factor` with every failure, up to `max`; each delay is
//! drawn uniformly from `[0, ceiling]` ("full jitter"), so processes that lost the same server
//! at the same moment do not come back in lockstep. A success calls [`Backoff::reset`]; a
//! connection that may be accepted and dropped at once calls [`Backoff::reset_after`] instead,
//! and draws from `[ceiling/2, ceiling]` ([`Backoff::with_floor`]) so it never spins.

use rand::Rng;
use std::time::Duration;

/// Backoff settings and how many consecutive failures so far.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    factor: u32,
    attempt: u32,
    floored: bool,
}

impl Backoff {
    /// A backoff whose ceiling doubles from `initial` up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            factor: 2,
            attempt: 0,
            floored: false,
        }
    }

    /// The same backoff with the ceiling multiplied by `factor` (at least 1) per failure.
    pub fn with_factor(mut self, factor: u32) -> Self {
        self.factor = factor.max(1);
        self
    }

    /// The same backoff drawing each delay from `[ceiling/2, ceiling]` ("equal jitter"): never
    /// less than half the ceiling, for loops that must not reconnect in a burst.
    pub fn with_floor(mut self) -> Self {
        self.floored = true;
        self
    }

    /// The ceiling for the current attempt: `min(max, initial * factor^attempt)`.
    pub fn ceiling(&self) -> Duration {
        self.factor
            .checked_pow(self.attempt)
            .map_or(self.max, |growth| self.initial.saturating_mul(growth))
            .min(self.max)
    }

    /// Draws the next delay in `[0, ceiling]` (`[ceiling/2, ceiling]` with a floor) and counts
    /// a failure.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::thread_rng())
    }

    /// Like [`Backoff::next_delay`] with a given random source.
    pub fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let floor = if self.floored {
            ceiling / 2
        } else {
            Duration::ZERO
        };
        uniform(rng, floor, ceiling)
    }

    /// A long delay in `[max/2, max]`, counted as a failure: for when retrying soon is known
    /// to be pointless (another agent holds the node's socket).
    pub fn next_long_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        uniform(&mut rand::thread_rng(), self.max / 2, self.max)
    }

    /// Failures counted since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Forgets past failures: the next delay is drawn below `initial` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Resets only when a connection `lasted` at least the longest delay: one a server accepts
    /// and drops at once keeps the backoff growing.
    pub fn reset_after(&mut self, lasted: Duration) {
        if lasted >= self.max {
            self.reset();
        }
    }
}

/// A duration drawn uniformly from `[low, high]`, at nanosecond resolution.
fn uniform(rng: &mut impl Rng, low: Duration, high: Duration) -> Duration {
    let span = u64::try_from(high.saturating_sub(low).as_nanos()).unwrap_or(u64::MAX);
    low + Duration::from_nanos(rng.gen_range(0..=span))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::HashSet;

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    fn ceilings(mut b: Backoff, n: usize) -> Vec<Duration> {
        let mut rng = StdRng::seed_from_u64(7);
        (0..n)
            .map(|_| {
                let ceiling = b.ceiling();
                b.next_delay_with(&mut rng);
                ceiling
            })
            .collect()
    }

    #[test]
    fn the_ceiling_grows_by_the_factor_up_to_the_maximum() {
        let secs: Vec<u64> = ceilings(Backoff::new(S, 30 * S), 8)
            .iter()
            .map(Duration::as_secs)
            .collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        let millis: Vec<u128> = ceilings(Backoff::new(100 * MS, 5 * S), 8)
            .iter()
            .map(Duration::as_millis)
            .collect();
        assert_eq!(millis, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        let tripled: Vec<u64> = ceilings(Backoff::new(S, 60 * S).with_factor(3), 6)
            .iter()
            .map(Duration::as_secs)
            .collect();
        assert_eq!(tripled, [1, 3, 9, 27, 60, 60]);
    }

    #[test]
    fn delays_stay_within_the_ceiling() {
        let mut rng = StdRng::seed_from_u64(42);
        let mut b = Backoff::new(S, 30 * S);
        for attempt in 0..40 {
            let ceiling = b.ceiling();
            assert!(ceiling <= 30 * S);
            let d = b.next_delay_with(&mut rng);
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
        }
        // A maximum below the initial delay is raised to it.
        let mut b = Backoff::new(S, MS);
        assert_eq!(b.ceiling(), S);
        assert!(b.next_delay() <= S);
    }

    #[test]
    fn full_jitter_spreads_delays_over_the_whole_range() {
        let mut rng = StdRng::seed_from_u64(42);
        let mut b = Backoff::new(S, 30 * S);
        for _ in 0..10 {
            b.next_delay_with(&mut rng);
        }
        let draws: Vec<Duration> = (0..500).map(|_| b.next_delay_with(&mut rng)).collect();
        assert!(draws.iter().any(|d| *d < 5 * S), "some short delays");
        assert!(draws.iter().any(|d| *d > 25 * S), "some long delays");
        let distinct: HashSet<_> = draws.iter().map(Duration::as_millis).collect();
        assert!(distinct.len() > 400, "delays differ");
    }

    #[test]
    fn reset_starts_over_and_huge_attempts_do_not_overflow() {
        let mut b = Backoff::new(S, 30 * S);
        for _ in 0..1000 {
            b.next_delay();
        }
        assert_eq!(b.attempts(), 1000);
        assert_eq!(b.ceiling(), 30 * S);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.ceiling(), S);
        assert!(b.next_delay() <= S);
    }

    #[test]
    fn long_delays_are_between_half_the_maximum_and_the_maximum() {
        let mut b = Backoff::new(S, 30 * S);
        for _ in 0..50 {
            let d = b.next_long_delay();
            assert!(d >= 15 * S && d <= 30 * S, "{d:?}");
        }
        assert_eq!(b.attempts(), 50);
    }

    #[test]
    fn a_floor_keeps_each_delay_within_the_upper_half_of_the_ceiling() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut b = Backoff::new(100 * MS, 5 * S).with_floor();
        for _ in 0..200 {
            let ceiling = b.ceiling();
            let delay = b.next_delay_with(&mut rng);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} of {ceiling:?}"
            );
        }
    }

    #[test]
    fn only_a_connection_that_lasted_resets_the_backoff() {
        let mut b = Backoff::new(100 * MS, 5 * S);
        for _ in 0..4 {
            b.next_delay();
        }
        b.reset_after(10 * MS);
        assert_eq!(
            b.attempts(),
            4,
            "accepted and dropped at once: still failing"
        );
        b.reset_after(5 * S);
        assert_eq!(b.attempts(), 0);
    }
}
