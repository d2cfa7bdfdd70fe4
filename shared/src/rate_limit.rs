//! Per-source-address rate limits (enrollment attempts, failed authentications), used by the
//! api and the gateway.
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

/// The client's address: the socket peer, or the last `X-Forwarded-For` hop when the service
/// sits behind a balancer it trusts (the hop that balancer appended).
pub fn client_address(
    peer: Option<IpAddr>,
    forwarded_for: Option<&str>,
    trust_forwarded_for: bool,
) -> Option<IpAddr> {
    let forwarded = forwarded_for
        .filter(|_| trust_forwarded_for)
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok());
    forwarded.or(peer)
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

    #[test]
    fn forwarded_for_counts_only_when_trusted() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let hops = Some("203.0.113.5, 198.51.100.7");
        assert_eq!(client_address(Some(peer), hops, false), Some(peer));
        assert_eq!(
            client_address(Some(peer), hops, true),
            Some("198.51.100.7".parse().unwrap())
        );
        assert_eq!(client_address(Some(peer), Some("junk"), true), Some(peer));
        assert_eq!(client_address(None, None, true), None);
    }
}
