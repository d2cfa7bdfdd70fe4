//! Counters, exposed at `GET /metrics` in the Prometheus text format and read by tests.
//!
//! Labels are bounded: never a node id.

use flotilla_shared::auth::node::AuthCounters;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (ms) of the push latency histogram buckets.
const LATENCY_BUCKETS_MS: [u64; 10] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000];

/// The gateway's counters; all monotonic except where noted.
#[derive(Debug, Default)]
pub struct Counters {
    /// Sockets opened.
    pub connects: AtomicU64,
    /// Sockets ended, for any reason.
    pub disconnects: AtomicU64,
    /// Times freed heap pages were handed back to the operating system.
    pub memory_trims: AtomicU64,
    /// Handshakes answered with an error status (401, 429, 503).
    pub handshakes_rejected: AtomicU64,
    /// Frames from Redis queued for a socket this gateway holds.
    pub pushes_received: AtomicU64,
    /// Frames written to a socket.
    pub pushes_delivered: AtomicU64,
    /// Frames dropped because the socket was closing or too slow.
    pub pushes_dropped: AtomicU64,
    /// Sockets closed because a newer one of the node opened.
    pub closed_superseded: AtomicU64,
    /// Sockets closed because their node was revoked.
    pub closed_revoked: AtomicU64,
    /// Sockets closed because their agent read too slowly.
    pub closed_slow: AtomicU64,
    /// Sockets closed for a missing pong.
    pub closed_keepalive: AtomicU64,
    /// Sockets closed by a drain.
    pub closed_draining: AtomicU64,
    /// Sockets closed for a protocol violation or an oversized message.
    pub closed_protocol: AtomicU64,
    /// Times the Redis subscription connection was (re)established.
    pub pubsub_connects: AtomicU64,
    /// Push latency (publish → gateway) histogram: per bucket counts, then +Inf.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    latency_sum_ms: AtomicU64,
}

impl Counters {
    /// Adds one to a counter.
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Records a push's latency from its `sentAt` to now.
    pub(crate) fn observe_latency(&self, latency_ms: u64) {
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| latency_ms <= *b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ms.fetch_add(latency_ms, Ordering::Relaxed);
    }

    /// The Prometheus text exposition; `connections` is the current socket count.
    pub(crate) fn render(&self, connections: usize, auth: &AuthCounters) -> String {
        let mut out = String::new();
        let mut line = |name: &str, kind: &str, value: u64| {
            let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {value}");
        };
        line("flotilla_gateway_connections", "gauge", connections as u64);
        for (name, c) in [
            ("flotilla_gateway_connects_total", &self.connects),
            ("flotilla_gateway_disconnects_total", &self.disconnects),
            ("flotilla_gateway_memory_trims_total", &self.memory_trims),
            (
                "flotilla_gateway_handshakes_rejected_total",
                &self.handshakes_rejected,
            ),
            (
                "flotilla_gateway_pushes_received_total",
                &self.pushes_received,
            ),
            (
                "flotilla_gateway_pushes_delivered_total",
                &self.pushes_delivered,
            ),
            (
                "flotilla_gateway_pushes_dropped_total",
                &self.pushes_dropped,
            ),
            (
                "flotilla_gateway_pubsub_connects_total",
                &self.pubsub_connects,
            ),
            (
                "flotilla_gateway_bcrypt_verifications_total",
                &auth.bcrypt_verifications,
            ),
            (
                "flotilla_gateway_token_digests_adopted_total",
                &auth.digests_adopted,
            ),
        ] {
            line(name, "counter", Self::get(c));
        }
        let _ = writeln!(out, "# TYPE flotilla_gateway_closes_total counter");
        for (reason, c) in [
            ("superseded", &self.closed_superseded),
            ("revoked", &self.closed_revoked),
            ("slow_consumer", &self.closed_slow),
            ("keepalive_timeout", &self.closed_keepalive),
            ("draining", &self.closed_draining),
            ("protocol", &self.closed_protocol),
        ] {
            let _ = writeln!(
                out,
                "flotilla_gateway_closes_total{{reason=\"{reason}\"}} {}",
                Self::get(c)
            );
        }
        let name = "flotilla_gateway_push_latency_seconds";
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bucket) in self.latency_buckets.iter().enumerate() {
            cumulative += Self::get(bucket);
            match LATENCY_BUCKETS_MS.get(i) {
                Some(ms) => {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{le=\"{}\"}} {cumulative}",
                        *ms as f64 / 1000.0
                    );
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let _ = writeln!(
            out,
            "{name}_sum {}",
            Self::get(&self.latency_sum_ms) as f64 / 1000.0
        );
        let _ = writeln!(out, "{name}_count {cumulative}");
        out
    }
}

/// The `sentAt` (epoch ms) of a frame, found without parsing the whole JSON.
pub(crate) fn sent_at(frame: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"sentAt\":";
    let start = frame.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits: &[u8] = &frame[start..];
    let digits = digits.trim_ascii_start();
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_at_is_found_anywhere() {
        assert_eq!(
            sent_at(br#"{"type":"x","id":"a","sentAt":1700000000123}"#),
            Some(1_700_000_000_123)
        );
        assert_eq!(sent_at(br#"{"sentAt": 5,"type":"x"}"#), Some(5));
        assert_eq!(sent_at(br#"{"type":"x"}"#), None);
    }

    #[test]
    fn histogram_is_cumulative() {
        let c = Counters::default();
        c.observe_latency(0);
        c.observe_latency(3);
        c.observe_latency(5000);
        let auth = AuthCounters::default();
        auth.bcrypt_verifications.store(2, Ordering::Relaxed);
        let text = c.render(7, &auth);
        assert!(text.contains("flotilla_gateway_connections 7"), "{text}");
        assert!(
            text.contains("flotilla_gateway_bcrypt_verifications_total 2"),
            "{text}"
        );
        assert!(
            text.contains("flotilla_gateway_push_latency_seconds_bucket{le=\"0.001\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("flotilla_gateway_push_latency_seconds_bucket{le=\"0.005\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("flotilla_gateway_push_latency_seconds_bucket{le=\"+Inf\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("flotilla_gateway_push_latency_seconds_count 3"),
            "{text}"
        );
    }
}
