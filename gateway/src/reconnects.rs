//! Per-node connect rate limit, so a crash-looping agent or two agents sharing one token
//! cannot turn into a reconnect storm.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// Allows `limit` connects per node in each fixed window.
#[derive(Debug)]
pub(crate) struct ReconnectLimiter {
    limit: u32,
    window: Duration,
    windows: Mutex<HashMap<Uuid, (Instant, u32)>>,
}

impl ReconnectLimiter {
    /// `limit` connects per `window`; a limit of 0 disables the check.
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            windows: Mutex::default(),
        }
    }

    /// Counts a connect; `Err(retry_after)` when the node is over its limit.
    pub(crate) fn check(&self, node: Uuid, now: Instant) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let mut windows = self.windows.lock().unwrap();
        let (start, count) = windows.entry(node).or_insert((now, 0));
        if now.duration_since(*start) >= self.window {
            (*start, *count) = (now, 0);
        }
        if *count >= self.limit {
            return Err(self.window.saturating_sub(now.duration_since(*start)));
        }
        *count += 1;
        Ok(())
    }

    /// Forgets windows that have ended.
    pub(crate) fn prune(&self, now: Instant) {
        let window = self.window;
        self.windows
            .lock()
            .unwrap()
            .retain(|_, (start, _)| now.duration_since(*start) < window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_window_and_resets() {
        let limiter = ReconnectLimiter::new(2, Duration::from_secs(10));
        let (node, other) = (Uuid::new_v4(), Uuid::new_v4());
        let t0 = Instant::now();
        assert!(limiter.check(node, t0).is_ok());
        assert!(limiter.check(node, t0).is_ok());
        assert_eq!(
            limiter.check(node, t0 + Duration::from_secs(4)),
            Err(Duration::from_secs(6))
        );
        assert!(limiter.check(other, t0).is_ok());
        assert!(limiter.check(node, t0 + Duration::from_secs(10)).is_ok());
        limiter.prune(t0 + Duration::from_secs(15));
        assert_eq!(limiter.windows.lock().unwrap().len(), 1);
    }
}
