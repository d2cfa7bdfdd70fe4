//! The state every handler, session and background task shares.

use crate::metrics::Counters;
use crate::registry::Registry;
use crate::subscriptions::Subscriptions;
use crate::tally::Tally;
use flotilla_shared::auth::node::{AuthCounters, NodeAuthenticator};
use flotilla_shared::limiter::KeyedLimiter;
use flotilla_shared::redis_conn::Redis;
use flotilla_shared::settings::GatewaySettings;
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// Cheap handle on the gateway's shared state.
#[derive(Clone)]
pub struct GatewayState(pub(crate) Arc<Shared>);

/// What a [`GatewayState`] points to; its fields are internal.
pub struct Shared {
    /// This gateway's id (in presence entries and its liveness key).
    pub(crate) id: String,
    pub(crate) settings: GatewaySettings,
    pub(crate) redis: Redis,
    pub(crate) auth: NodeAuthenticator,
    pub(crate) registry: Registry,
    pub(crate) subscriptions: Subscriptions,
    pub(crate) counters: Counters,
    /// Caps handshakes being authenticated at once.
    pub(crate) handshakes: Semaphore,
    /// Connects per node (`None`: `gateway.reconnect_limit` is 0, no limit).
    pub(crate) reconnects: Option<KeyedLimiter<Uuid>>,
    /// Failed authentications per source address.
    pub(crate) auth_failures: KeyedLimiter<IpAddr>,
    /// Cancelled when the drain starts: handshakes get 503 from then on.
    pub(crate) draining: CancellationToken,
    /// Every socket session (axum detaches them; the drain waits for them here).
    pub(crate) sessions: TaskTracker,
    /// Set when a presence claim failed: the next liveness beat restores every held socket's.
    pub(crate) presence_stale: AtomicBool,
    /// Closed sockets (node, connection) whose presence Redis could not release yet.
    pub(crate) unreleased: Mutex<Vec<(Uuid, Uuid)>>,
    /// Subscription timeouts of connections opening, for their rate-limited warning.
    pub(crate) subscribe_timeouts: Tally,
}

impl Deref for GatewayState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl GatewayState {
    /// This gateway's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Push and close counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// bcrypt and digest-adoption counters of the handshake authentication.
    pub fn auth_counters(&self) -> &AuthCounters {
        self.auth.counters()
    }

    /// Sockets currently held.
    pub fn connection_count(&self) -> usize {
        self.registry.len()
    }

    /// Closed sockets whose presence is still to be released (Redis was unreachable).
    pub fn unreleased_count(&self) -> usize {
        self.unreleased.lock().unwrap().len()
    }

    /// Whether the gateway is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// The Redis handle.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }
}
