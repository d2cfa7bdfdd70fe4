//! The gateway's metrics, exposed at `GET /metrics` in the Prometheus text format and read by
//! tests.
//!
//! Each gateway has its own registry (tests run several in one process). Counting is one
//! relaxed atomic add, as cheap as before the registry; labels are bounded: never a node id.

use flotilla_shared::auth::node::AuthCounters;
use flotilla_shared::close_codes::Close;
use flotilla_shared::metrics::AuthCollector;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::ops::Deref;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Upper bounds (seconds) of the push latency histogram buckets.
const LATENCY_BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// A registered counter; tests read it as the atomic it is.
#[derive(Debug, Clone, Default)]
pub struct Count(Counter);

impl Count {
    /// Adds one (a relaxed atomic add).
    pub(crate) fn inc(&self) {
        self.0.inc();
    }
}

impl Deref for Count {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        self.0.inner()
    }
}

/// The `reason` label of the closes counter.
type ReasonLabel = [(&'static str, &'static str); 1];

/// The gateway's metrics; counters are monotonic.
#[derive(Debug)]
pub struct Counters {
    registry: Registry,
    /// Sockets open now; set from the registry at each scrape.
    connections: Gauge,
    /// Sockets opened.
    pub connects: Count,
    /// Sockets ended, for any reason.
    pub disconnects: Count,
    /// Times freed heap pages were handed back to the operating system.
    pub memory_trims: Count,
    /// Handshakes answered with an error status (401, 429, 503).
    pub handshakes_rejected: Count,
    /// Frames from Redis queued for a socket this gateway holds.
    pub pushes_received: Count,
    /// Frames written to a socket.
    pub pushes_delivered: Count,
    /// Frames dropped because the socket was closing or too slow.
    pub pushes_dropped: Count,
    /// Times the Redis subscription connection was (re)established.
    pub pubsub_connects: Count,
    /// Connections whose node channel subscription was not confirmed in time as they opened.
    pub subscribe_timeouts: Count,
    /// Sockets the gateway closed, by [`Close`] (indexed in [`Close::ALL`] order).
    closes: [Count; Close::ALL.len()],
    /// Push latency (publish → gateway).
    latency: Histogram,
}

impl Counters {
    /// Registers every series; `auth` are the handshake authenticator's counters.
    pub(crate) fn new(auth: Arc<AuthCounters>) -> Self {
        let mut registry = Registry::default();
        let connections = Gauge::default();
        registry.register(
            "flotilla_gateway_connections",
            "Push connections open now",
            connections.clone(),
        );
        let count = |registry: &mut Registry, name: &str, help: &str| {
            let c = Count::default();
            registry.register(name, help, c.0.clone());
            c
        };
        let connects = count(
            &mut registry,
            "flotilla_gateway_connects",
            "Push connections opened",
        );
        let disconnects = count(
            &mut registry,
            "flotilla_gateway_disconnects",
            "Push connections ended, for any reason",
        );
        let memory_trims = count(
            &mut registry,
            "flotilla_gateway_memory_trims",
            "Times freed heap was handed back to the operating system after a burst",
        );
        let handshakes_rejected = count(
            &mut registry,
            "flotilla_gateway_handshakes_rejected",
            "Handshakes answered with an error status (401, 429, 503)",
        );
        let pushes_received = count(
            &mut registry,
            "flotilla_gateway_pushes_received",
            "Frames from Redis queued for a connection this gateway holds",
        );
        let pushes_delivered = count(
            &mut registry,
            "flotilla_gateway_pushes_delivered",
            "Frames written to a connection",
        );
        let pushes_dropped = count(
            &mut registry,
            "flotilla_gateway_pushes_dropped",
            "Frames dropped because the connection was closing or too slow",
        );
        let pubsub_connects = count(
            &mut registry,
            "flotilla_gateway_pubsub_connects",
            "Times the Redis subscription connection was (re)established",
        );
        let subscribe_timeouts = count(
            &mut registry,
            "flotilla_gateway_subscribe_timeouts",
            "Connections whose node channel subscription was not confirmed in time as they opened",
        );
        let family = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "flotilla_gateway_closes",
            "Connections the gateway closed, by reason",
            family.clone(),
        );
        // Handles on the family's series, made once: counting a close is then one atomic add,
        // and every reason shows from the start.
        let closes = Close::ALL.map(|close| {
            Count(
                family
                    .get_or_create(&[("reason", close.metric_label())])
                    .clone(),
            )
        });
        let latency = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "flotilla_gateway_push_latency_seconds",
            "Push latency from publish (the frame's sentAt) to the gateway",
            latency.clone(),
        );
        registry.register_collector(Box::new(AuthCollector::new("flotilla_gateway", auth)));
        Self {
            registry,
            connections,
            connects,
            disconnects,
            memory_trims,
            handshakes_rejected,
            pushes_received,
            pushes_delivered,
            pushes_dropped,
            pubsub_connects,
            subscribe_timeouts,
            closes,
            latency,
        }
    }

    /// Adds one to a counter.
    pub(crate) fn inc(counter: &Count) {
        counter.inc();
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The counter of sockets closed with `close`.
    pub fn closed(&self, close: Close) -> &Count {
        let i = Close::ALL.iter().position(|c| *c == close).unwrap_or(0);
        &self.closes[i]
    }

    /// Records a push's latency from its `sentAt` to now.
    pub(crate) fn observe_latency(&self, latency_ms: u64) {
        self.latency.observe(latency_ms as f64 / 1000.0);
    }

    /// The Prometheus text exposition; `connections` is the current socket count.
    pub(crate) fn render(&self, connections: usize) -> String {
        self.connections
            .set(i64::try_from(connections).unwrap_or(i64::MAX));
        flotilla_shared::metrics::encode(&self.registry)
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
    fn histogram_is_cumulative_and_closes_share_their_label() {
        let auth = Arc::new(AuthCounters::default());
        let c = Counters::new(auth.clone());
        c.observe_latency(0);
        c.observe_latency(3);
        c.observe_latency(5000);
        c.closed(Close::Policy).inc();
        c.closed(Close::TooLarge).inc();
        auth.bcrypt_verifications
            .store(2, std::sync::atomic::Ordering::Relaxed);
        let text = c.render(7);
        for line in [
            "flotilla_gateway_connections 7\n",
            "flotilla_gateway_bcrypt_verifications_total 2\n",
            "flotilla_gateway_closes_total{reason=\"protocol\"} 2\n",
            "flotilla_gateway_closes_total{reason=\"draining\"} 0\n",
            "flotilla_gateway_push_latency_seconds_bucket{le=\"0.001\"} 1\n",
            "flotilla_gateway_push_latency_seconds_bucket{le=\"0.005\"} 2\n",
            "flotilla_gateway_push_latency_seconds_bucket{le=\"+Inf\"} 3\n",
            "flotilla_gateway_push_latency_seconds_count 3\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
