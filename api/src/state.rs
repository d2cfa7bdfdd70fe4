//! Shared application state handed to every handler.

use crate::auth::operator::OperatorAuthenticator;
use crate::fleet_events::FleetEvents;
use crate::notify::Notifier;
use crate::polls::PollReads;
use flotilla_shared::auth::node::NodeAuthenticator;
use flotilla_shared::limiter::KeyedLimiter;
use flotilla_shared::redis_conn::Redis;
use flotilla_shared::settings::Settings;
use sqlx::PgPool;
use std::net::IpAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Cheap handles to everything a request needs.
#[derive(Clone)]
pub struct AppState {
    /// Postgres.
    pub pool: PgPool,
    /// Settings, read-only.
    pub settings: Arc<Settings>,
    /// Config polls' reads, coalesced.
    pub polls: PollReads,
    /// Node-token authentication (shared with the gateway's code).
    pub node_auth: NodeAuthenticator,
    /// Operator-token authentication.
    pub operator_auth: OperatorAuthenticator,
    /// Redis commands (presence reads, readiness).
    pub redis: Redis,
    /// Per-node notifications.
    pub notifier: Notifier,
    /// Per-address rate limits.
    pub limits: Limits,
    /// Internal hosts self-update URLs may name (`api.self_update_allowed_hosts`, parsed).
    pub self_update_hosts: crate::download_url::AllowList,
    /// Live events for the fleet page.
    pub fleet_events: FleetEvents,
    /// Slots for operators' live log and tap streams.
    pub live: crate::live::LiveStreams,
    /// The api's metrics registry.
    pub metrics: crate::metrics::ApiMetrics,
    /// Cancelled when the api shuts down (ends long-lived streams).
    pub shutdown: CancellationToken,
}

/// The api's per-address limiters.
#[derive(Clone)]
pub struct Limits {
    /// Enrollment attempts per address.
    pub enroll: KeyedLimiter<IpAddr>,
    /// Failed node authentications per address.
    pub auth_failures: KeyedLimiter<IpAddr>,
    /// Wrong operator tokens per address that cost a bcrypt run (sign-in guesses).
    pub operator_guesses: KeyedLimiter<IpAddr>,
}
