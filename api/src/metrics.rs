//! The api's metrics: one registry per api (tests run several in one process), behind
//! `GET /metrics`.
//!
//! Labels are bounded: a route is its template (`/api/nodes/{id}`), never the raw path, and
//! unmatched requests share one label; no node or pipeline ids.

use crate::fleet_events::FleetEvents;
use crate::notify::NotifyCounters;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use flotilla_shared::auth::node::AuthCounters;
use flotilla_shared::metrics::AuthCollector;
use flotilla_shared::request_tracing;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Upper bounds (seconds) of the request latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Labels of a request count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

/// Labels of a request duration.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

type Durations = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The api's registry and its per-request series; cheap to clone.
#[derive(Clone)]
pub struct ApiMetrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Durations,
}

/// What the api's registry reads from the rest of its state.
pub struct Sources {
    /// The Postgres pool (size and idle connections, read at each scrape).
    pub pool: PgPool,
    /// The fleet page's event fan-out (subscribers, read at each scrape).
    pub fleet_events: FleetEvents,
    /// Notifications published and failed.
    pub notify: Arc<NotifyCounters>,
    /// Node-token authentication counters.
    pub auth: Arc<AuthCounters>,
    /// Keys per coalesced round of config-poll reads.
    pub poll_round_sizes: Histogram,
}

impl ApiMetrics {
    /// Registers every series of the api.
    pub fn new(sources: Sources) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "flotilla_api_http_requests",
            "HTTP requests answered, by method, route template and status",
            requests.clone(),
        );
        let durations: Durations = Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
        registry.register(
            "flotilla_api_http_request_duration_seconds",
            "Time to answer an HTTP request (to its response head), by method and route template",
            durations.clone(),
        );
        registry.register(
            "flotilla_api_config_poll_round_keys",
            "Config polls answered by one coalesced database read",
            sources.poll_round_sizes,
        );
        registry.register(
            "flotilla_api_notifications_published",
            "Agent notifications handed to Redis, by frame type (control: gateway messages)",
            sources.notify.published_by_type.clone(),
        );
        registry.register_collector(Box::new(AuthCollector::new("flotilla_api", sources.auth)));
        registry.register_collector(Box::new(StateCollector {
            pool: sources.pool,
            fleet_events: sources.fleet_events,
            notify: sources.notify,
        }));
        Self(Arc::new(Inner {
            registry,
            requests,
            durations,
        }))
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        flotilla_shared::metrics::encode(&self.0.registry)
    }

    /// Counts and times `request`; a middleware inside the router, where the route template
    /// is known.
    pub async fn record(
        State(metrics): State<ApiMetrics>,
        request: Request,
        next: Next,
    ) -> Response {
        let method = request_tracing::method(request.method());
        let route = request_tracing::route(&request).to_owned();
        let started = Instant::now();
        let response = next.run(request).await;
        let elapsed = started.elapsed().as_secs_f64();
        metrics
            .0
            .requests
            .get_or_create(&RequestLabels {
                method,
                route: route.clone(),
                status: response.status().as_u16(),
            })
            .inc();
        metrics
            .0
            .durations
            .get_or_create(&RouteLabels { method, route })
            .observe(elapsed);
        response
    }
}

/// Gauges and counters read from the state at each scrape.
struct StateCollector {
    pool: PgPool,
    fleet_events: FleetEvents,
    notify: Arc<NotifyCounters>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCollector").finish_non_exhaustive()
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let size = self.pool.size() as i64;
        let idle = self.pool.num_idle() as i64;
        for (name, help, value) in [
            (
                "flotilla_api_db_pool_connections",
                "Postgres connections the pool holds (in use and idle)",
                size,
            ),
            (
                "flotilla_api_db_pool_idle_connections",
                "Postgres connections idle in the pool",
                idle,
            ),
            (
                "flotilla_api_db_pool_max_connections",
                "The pool's connection limit",
                i64::from(self.pool.options().get_max_connections()),
            ),
            (
                "flotilla_api_fleet_event_subscribers",
                "Fleet-page live streams subscribed to fleet events",
                self.fleet_events.subscribers() as i64,
            ),
        ] {
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        let failed = ConstCounter::new(self.notify.failed.load(Ordering::Relaxed));
        let metric = encoder.encode_descriptor(
            "flotilla_api_notifications_failed",
            "Agent notifications lost to a Redis failure (agents catch up by polling)",
            None,
            failed.metric_type(),
        )?;
        failed.encode(metric)
    }
}
