//! One fixed-window rate limiter, keyed by anything: per source address (enrollment attempts,
//! failed authentications, operator-token guesses) in the api and the gateway, per node
//! (reconnects) in the gateway.
//!
//! A key's window starts at its first event and lasts `window`; within it `limit` events pass
//! and the rest are refused with the time left in the window (`Retry-After`, in whole seconds
//! rounded up, at least 1). Windows live in plain hash maps (a gateway keeps one per node it
//! holds, so an entry must stay small: ~50 bytes here against ~300 in a general cache),
//! sharded to keep locks short. A shard drops ended windows whenever it has doubled since it
//! last did, and holds at most its share of `TRACKED` keys, evicting an arbitrary one beyond
//! that, so a flood of keys cannot grow memory without limit.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Keys tracked at once per limiter.
const TRACKED: usize = 100_000;
/// Shards per limiter.
const SHARDS: usize = 16;
/// Size below which a shard does not bother dropping ended windows.
const MIN_PRUNE: usize = 64;

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

/// One shard's windows, and the size at which it next drops ended ones.
struct Shard<K> {
    windows: HashMap<K, Window>,
    prune_at: usize,
}

/// Counts events per key in fixed windows; cheap to clone (clones share the counts).
#[derive(Clone)]
pub struct KeyedLimiter<K> {
    shards: Arc<[Mutex<Shard<K>>]>,
    hasher: RandomState,
    limit: u32,
    window: Duration,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// Allows `limit` events per key per `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    windows: HashMap::new(),
                    prune_at: MIN_PRUNE,
                })
            })
            .collect();
        Self {
            shards,
            hasher: RandomState::new(),
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
        let mut shard = self.shard(&key);
        let window = match shard.windows.entry(key) {
            Entry::Occupied(mut e) => {
                let w = e.get_mut();
                if self.is_open(*w, now) {
                    w.count = w.count.saturating_add(1);
                } else {
                    *w = Window {
                        start: now,
                        count: 1,
                    };
                }
                *w
            }
            Entry::Vacant(e) => {
                let key = e.into_key();
                self.make_room(&mut shard, now);
                let w = Window {
                    start: now,
                    count: 1,
                };
                shard.windows.insert(key, w);
                w
            }
        };
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
        let w = *self.shard(key).windows.get(key)?;
        (self.is_open(w, now) && w.count >= self.limit).then(|| self.refusal(w, now))
    }

    /// Keys with a window held now, ended ones not yet dropped included.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap().windows.len())
            .sum()
    }

    fn shard(&self, key: &K) -> std::sync::MutexGuard<'_, Shard<K>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i].lock().unwrap()
    }

    /// Before a new key goes in: drops ended windows once the shard has doubled since it last
    /// did, and evicts an arbitrary key if it is still full.
    fn make_room(&self, shard: &mut Shard<K>, now: Instant) {
        if shard.windows.len() >= shard.prune_at {
            shard.windows.retain(|_, w| self.is_open(*w, now));
            shard.prune_at = (shard.windows.len() * 2).max(MIN_PRUNE);
        }
        if shard.windows.len() >= TRACKED / SHARDS {
            if let Some(k) = shard.windows.keys().next().cloned() {
                shard.windows.remove(&k);
            }
        }
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

    #[test]
    fn ended_windows_are_dropped_and_the_keys_held_stay_bounded() {
        let l = KeyedLimiter::new(1, Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            assert!(l.hit_at(i, t0).is_ok());
        }
        assert_eq!(l.tracked(), 10_000);
        // A second later every window has ended: new keys make the old ones go.
        let t1 = t0 + Duration::from_secs(1);
        for i in 10_000..18_000u32 {
            assert!(l.hit_at(i, t1).is_ok());
        }
        assert!(l.tracked() < 10_000, "{} held", l.tracked());
        // A flood of keys within one window stops at the bound.
        for i in 0..(TRACKED as u32 + 20_000) {
            let _ = l.hit_at(i + 20_000, t1);
        }
        assert!(l.tracked() <= TRACKED, "{} held", l.tracked());
    }
}
