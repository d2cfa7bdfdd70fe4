//! Exponential backoff with full jitter.
//!
//! The ceiling doubles from `base` to `max` with every failure; each delay is drawn uniformly
//! from `[0, ceiling]` ("full jitter"), so a fleet that lost its gateway at the same moment
//! does not reconnect in lockstep.

use rand::Rng;
use std::time::Duration;

/// Backoff state: how many consecutive failures so far.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff from `base` up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The ceiling for the current attempt: `min(max, base * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Draws the next delay in `[0, ceiling]` and counts a failure.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::thread_rng())
    }

    /// Like [`Backoff::next_delay`] with a given random source.
    pub fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.gen_range(0..=nanos))
    }

    /// A long delay in `[max/2, max]`, counted as a failure: for when reconnecting soon is
    /// known to be pointless (another agent holds the node's socket).
    pub fn next_long_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let half = self.max / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::thread_rng().gen_range(0..=nanos))
    }

    /// Failures counted so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Forgets past failures.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn ceiling_doubles_from_one_second_to_thirty() {
        let mut b = Backoff::new(S, 30 * S);
        let mut rng = StdRng::seed_from_u64(7);
        let mut ceilings = vec![];
        for _ in 0..8 {
            ceilings.push(b.ceiling().as_secs());
            b.next_delay_with(&mut rng);
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn delays_stay_within_bounds_and_are_jittered() {
        let mut rng = StdRng::seed_from_u64(42);
        for attempt in 0..40 {
            let mut b = Backoff::new(S, 30 * S);
            for _ in 0..attempt {
                b.next_delay_with(&mut rng);
            }
            let ceiling = b.ceiling();
            assert!(ceiling <= 30 * S);
            let d = b.next_delay_with(&mut rng);
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
        }
        // Full jitter: many draws at the 30 s ceiling spread over the whole range.
        let mut b = Backoff::new(S, 30 * S);
        for _ in 0..10 {
            b.next_delay_with(&mut rng);
        }
        let draws: Vec<Duration> = (0..500).map(|_| b.next_delay_with(&mut rng)).collect();
        assert!(draws.iter().any(|d| *d < 5 * S), "some short delays");
        assert!(draws.iter().any(|d| *d > 25 * S), "some long delays");
        let distinct: std::collections::HashSet<_> = draws.iter().map(|d| d.as_millis()).collect();
        assert!(distinct.len() > 400, "delays differ");
    }

    #[test]
    fn reset_starts_over_and_huge_attempts_do_not_overflow() {
        let mut b = Backoff::new(S, 30 * S);
        for _ in 0..1000 {
            b.next_delay();
        }
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
}
