//! Handing heap pages back to the operating system after bursts of connects and closes.
//!
//! A burst of handshakes frees its request heads, Redis replies and database rows between the
//! long-lived allocations of the sockets it opened. The allocator keeps those pages (glibc
//! until trimmed: about 9 MB at 10k sockets, a fifth of the gateway's memory; jemalloc until
//! its decay timer runs, which needs allocator activity an idle gateway does not have). Once a
//! burst has settled, the liveness beat asks the allocator to return them.

use crate::metrics::Counters;
use crate::state::GatewayState;
use std::time::Duration;
use tokio::time::Instant;

/// Fewer sockets than this opening or closing within one beat means the burst has settled.
const SETTLED_PER_BEAT: u64 = 100;
/// Under steady churn, trim at most this often anyway.
const STEADY_CHURN_PERIOD: Duration = Duration::from_secs(60);

/// Decides, beat by beat, when churn warrants a trim.
#[derive(Debug)]
pub(crate) struct Trimmer {
    after_churn: u64,
    churn_at_trim: u64,
    churn_at_beat: u64,
    trimmed_at: Instant,
}

impl Trimmer {
    /// Trims once `after_churn` sockets opened or closed since the last trim (0: never).
    pub(crate) fn new(after_churn: u64, now: Instant) -> Self {
        Self {
            after_churn,
            churn_at_trim: 0,
            churn_at_beat: 0,
            trimmed_at: now,
        }
    }

    /// Whether to trim now, given the sockets opened plus closed so far; a true answer counts
    /// as the trim.
    pub(crate) fn due(&mut self, churn: u64, now: Instant) -> bool {
        let this_beat = churn.saturating_sub(self.churn_at_beat);
        self.churn_at_beat = churn;
        let settled = this_beat < SETTLED_PER_BEAT
            || now.duration_since(self.trimmed_at) >= STEADY_CHURN_PERIOD;
        let due = self.after_churn > 0
            && churn.saturating_sub(self.churn_at_trim) >= self.after_churn
            && settled;
        if due {
            self.churn_at_trim = churn;
            self.trimmed_at = now;
        }
        due
    }

    /// Trims if due; the allocator's walk runs off the async workers.
    pub(crate) async fn tick(&mut self, state: &GatewayState) {
        let counters = &state.counters;
        let churn = Counters::get(&counters.connects) + Counters::get(&counters.disconnects);
        if !self.due(churn, Instant::now()) {
            return;
        }
        let started = std::time::Instant::now();
        if let Ok(released) = tokio::task::spawn_blocking(crate::os::release_free_memory).await {
            Counters::inc(&counters.memory_trims);
            tracing::debug!(released, took = ?started.elapsed(), "returned free heap pages");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_a_burst_has_settled() {
        let t0 = Instant::now();
        let beat = |n: u64| t0 + Duration::from_secs(3 * n);
        let mut trimmer = Trimmer::new(1000, t0);
        assert!(!trimmer.due(10, beat(1)), "too little churn");
        assert!(!trimmer.due(5000, beat(2)), "a burst is still going on");
        assert!(trimmer.due(5050, beat(3)), "the burst has settled");
        assert!(!trimmer.due(5060, beat(4)), "nothing new since the trim");
        assert!(!trimmer.due(5900, beat(5)), "not enough since the trim");
    }

    #[test]
    fn steady_churn_still_trims_now_and_then() {
        let t0 = Instant::now();
        let mut trimmer = Trimmer::new(1000, t0);
        // 500 sockets a beat never settles, but a minute on a trim is due anyway.
        let due: Vec<bool> = (1..=25)
            .map(|n| trimmer.due(500 * n, t0 + Duration::from_secs(3 * n)))
            .collect();
        assert_eq!(due.iter().filter(|d| **d).count(), 1, "{due:?}");
        assert!(due[19], "{due:?}");
    }

    #[test]
    fn zero_never_trims() {
        let t0 = Instant::now();
        let mut trimmer = Trimmer::new(0, t0);
        assert!(!trimmer.due(1_000_000, t0 + Duration::from_secs(600)));
    }
}
