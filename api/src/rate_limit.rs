//! Per-source-address rate limits: enrollment attempts and failed authentications.
//!
//! Fixed windows kept in a bounded cache, so a flood of addresses cannot grow memory without
//! limit. Over its budget, an address gets 429 with `Retry-After`.

use moka::sync::Cache;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Addresses tracked at once per limiter.
const TRACKED: u64 = 100_000;

/// Counts events per address within a fixed window.
#[derive(Clone)]
pub struct RateLimiter {
    counts: Cache<IpAddr, Arc<AtomicU32>>,
    limit: u32,
    window: Duration,
}

impl RateLimiter {
    /// Allows `limit` events per address per `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            counts: Cache::builder()
                .max_capacity(TRACKED)
                .time_to_live(window)
                .build(),
            limit,
            window,
        }
    }

    /// Counts one event; `Err(retry_after)` once the address is over its budget.
    pub fn hit(&self, ip: IpAddr) -> Result<(), Duration> {
        let count = self.counts.get_with(ip, Arc::default);
        if count.fetch_add(1, Ordering::Relaxed) >= self.limit {
            Err(self.window)
        } else {
            Ok(())
        }
    }

    /// Whether the address has used up its budget (without counting).
    pub fn exhausted(&self, ip: IpAddr) -> bool {
        self.counts
            .get(&ip)
            .is_some_and(|c| c.load(Ordering::Relaxed) >= self.limit)
    }

    /// How long an exhausted address should wait.
    pub fn retry_after(&self) -> Duration {
        self.window
    }
}

/// The api's limiters.
#[derive(Clone)]
pub struct Limits {
    /// Enrollment attempts per address.
    pub enroll: RateLimiter,
    /// Failed node or operator authentications per address.
    pub auth_failures: RateLimiter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_per_address() {
        let l = RateLimiter::new(3, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.hit(a).is_ok());
        }
        assert!(!l.exhausted(b));
        assert_eq!(l.hit(a), Err(Duration::from_secs(60)));
        assert!(l.exhausted(a));
        assert!(l.hit(b).is_ok());
    }
}
