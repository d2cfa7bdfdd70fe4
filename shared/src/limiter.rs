//! One fixed-window rate limiter, keyed by anything: per source address (enrollment attempts,
//! failed authentications, operator-token guesses) in the api and the gateway, per node
//! (reconnects) in the gateway.
//!
//! A key's window starts at its first event and lasts `window`; within it `limit` events pass
//! and the rest are refused with the time left in the window (`Retry-After`, in whole seconds
//! rounded up, at least 1). Windows live in a bounded cache that forgets a key a window after
//! its last event, so a flood of keys cannot grow memory without limit.

use moka::sync::Cache;
use std::hash::Hash;
use std::time::Duration;
use tokio::time::Instant;

/// Keys tracked at once per limiter.
const TRACKED: u64 = 100_000;

/// A refused event: its key is over its budget until the window ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit {
    retry_after: Duration,
}

impl OverLimit {
    /// Time left in the key's window.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The `Retry-After` header value: the time left in whole seconds, rounded up (a client
    /// that waits that long finds a fresh window), and at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.retry_after.as_secs();
        let secs = if self.retry_after.subsec_nanos() > 0 {
            secs + 1
        } else {
            secs
        };
        secs.max(1)
    }
}

/// A key's current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

/// Counts events per key in fixed windows; cheap to clone (clones share the counts).
#[derive(Clone)]
pub struct KeyedLimiter<K> {
    windows: Cache<K, Window>,
    limit: u32,
    window: Duration,
}

impl<K: Hash + Eq + Send + Sync + 'static> KeyedLimiter<K> {
    /// Allows `limit` events per key per `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            windows: Cache::builder()
                .max_capacity(TRACKED)
                .time_to_live(window)
                .build(),
            limit,
            window,
        }
    }

    /// Counts one event for `key` now; see [`hit_at`](Self::hit_at).
    pub fn hit(&self, key: K) -> Result<(), OverLimit> {
        self.hit_at(key, Instant::now())
    }

    /// Counts one event for `key` at `now`; refused once the key is over its budget.
    pub fn hit_at(&self, key: K, now: Instant) -> Result<(), OverLimit> {
        let window = self
            .windows
            .entry(key)
            .and_upsert_with(|current| match current.map(|e| e.into_value()) {
                Some(w) if self.is_open(w, now) => Window {
                    count: w.count.saturating_add(1),
                    ..w
                },
                _ => Window {
                    start: now,
                    count: 1,
                },
            })
            .into_value();
        match window.count > self.limit {
            true => Err(self.refusal(window, now)),
            false => Ok(()),
        }
    }

    /// Whether `key` has used up its budget now, without counting; see
    /// [`over_limit_at`](Self::over_limit_at).
    pub fn over_limit(&self, key: &K) -> Option<OverLimit> {
        self.over_limit_at(key, Instant::now())
    }

    /// The refusal `key` would get at `now` if it is over its budget, without counting.
    pub fn over_limit_at(&self, key: &K, now: Instant) -> Option<OverLimit> {
        self.windows
            .get(key)
            .filter(|w| self.is_open(*w, now) && w.count >= self.limit)
            .map(|w| self.refusal(w, now))
    }

    fn is_open(&self, w: Window, now: Instant) -> bool {
        now.saturating_duration_since(w.start) < self.window
    }

    fn refusal(&self, w: Window, now: Instant) -> OverLimit {
        let elapsed = now.saturating_duration_since(w.start);
        OverLimit {
            retry_after: self.window.saturating_sub(elapsed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn budget_per_key() {
        let l = KeyedLimiter::new(3, MINUTE);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.hit_at(a, t0).is_ok());
        }
        assert_eq!(l.over_limit_at(&b, t0), None);
        let refused = l.hit_at(a, t0).unwrap_err();
        assert_eq!(refused.retry_after(), MINUTE);
        assert_eq!(refused.retry_after_secs(), 60);
        assert_eq!(l.over_limit_at(&a, t0), Some(refused));
        assert!(l.hit_at(b, t0).is_ok());
    }

    #[test]
    fn a_refusal_names_the_time_left_and_a_window_ends() {
        let l = KeyedLimiter::new(2, Duration::from_secs(10));
        let (node, other) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let t0 = Instant::now();
        assert!(l.hit_at(node, t0).is_ok());
        assert!(l.hit_at(node, t0).is_ok());
        let refused = l.hit_at(node, t0 + Duration::from_secs(4)).unwrap_err();
        assert_eq!(refused.retry_after(), Duration::from_secs(6));
        assert_eq!(refused.retry_after_secs(), 6);
        assert!(l.hit_at(other, t0).is_ok());
        // Rounded up, and never 0.
        let late = l
            .hit_at(node, t0 + Duration::from_millis(9_500))
            .unwrap_err();
        assert_eq!(late.retry_after_secs(), 1);
        let later = l.over_limit_at(&node, t0 + Duration::from_micros(9_999_999));
        assert_eq!(later.map(|r| r.retry_after_secs()), Some(1));
        // A new window starts at the next event after the old one ended.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(l.over_limit_at(&node, t1), None);
        assert!(l.hit_at(node, t1).is_ok());
        assert!(l.hit_at(node, t1).is_ok());
        assert!(l.hit_at(node, t1).is_err());
    }

    #[test]
    fn looking_does_not_count() {
        let l = KeyedLimiter::new(1, MINUTE);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(l.over_limit_at(&"a", t0), None);
        }
        assert!(l.hit_at("a", t0).is_ok());
        assert!(l.over_limit_at(&"a", t0).is_some());
    }
}
