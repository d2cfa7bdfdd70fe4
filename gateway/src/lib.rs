//! The Flotilla gateway: holds agents' push connections and forwards each node's pushes from
//! Redis.
//!
//! An agent connects to `GET /api/agent/ws` (WebSocket, the older agents) or
//! `GET /api/agent/push` (Server-Sent Events, current agents) with its node token; both are
//! served by the same machinery, only the framing differs. The gateway subscribes the
//! node's channel `flotilla:node:{<id>}` (on its one pub/sub connection to a single Redis, or
//! with `SSUBSCRIBE` on the shard owning the channel on a Redis Cluster), records the
//! node's presence, and forwards every payload published there verbatim. Control messages on
//! the same channel close the socket instead (revoked, superseded by a newer socket on any
//! gateway). On shutdown it drains: 503 to new handshakes, paced closes with 1012.
//!
//! Routes: `GET /api/agent/ws` and `GET /api/agent/push` (the push channel), `GET /healthz`
//! (503 while draining, for load balancers), `GET /readyz` (503 also while the Redis
//! subscription is down), `GET /livez` (200 while the process serves, draining included, for
//! liveness probes that must not kill a drain), `GET /metrics` (Prometheus text).
//!
//! # Layout
//! - `handshake`: admitting a push connection of either transport (drain, handshake cap,
//!   auth, reconnect limit), and the WebSocket upgrade route.
//! - `auth`: the node token of a push connection, checked within the address's failure budget.
//! - `sse`: the SSE route (served by the gateway itself on a fresh connection, through the
//!   router on a kept-alive one) and its event framing.
//! - [`error`]: why a handshake is refused and the status for each reason.
//! - `session`: one task per connection (WebSocket or SSE): outbox → agent, keepalive, closes.
//! - `keepalive`: the ping / unsolicited pong / timeout schedule.
//! - `outbox`: a socket's bounded frame queue and pending close.
//! - `registry`: node id → the socket this gateway holds.
//! - `subscriptions`: the pub/sub connection on a single Redis, and message dispatch.
//! - `shards`: sharded pub/sub on a Redis Cluster: the manager and `shards::link` (one shard
//!   connection).
//! - `presence`: announcing and withdrawing sockets in Redis.
//! - `tally`: a repeated warning logged at most once per interval, with a count.
//! - [`liveness`]: the gateway's own liveness key, the subscription probe, presence restore
//!   and memory trims, every `gateway.heartbeat_interval_ms`.
//! - `memory`: handing freed heap pages back to the operating system after a burst.
//! - [`drain`]: paced closing on shutdown.
//! - [`metrics`]: the gateway's Prometheus registry (counters, closes by reason, push
//!   latency) behind `GET /metrics`.
//! - [`os`]: open-files limit and the return of freed memory.
//! - [`state`]: the shared state handle.

mod auth;
pub mod drain;
pub mod error;
mod handshake;
mod keepalive;
pub mod liveness;
mod memory;
pub mod metrics;
pub mod os;
mod outbox;
mod presence;
mod registry;
mod session;
mod shards;
mod sse;
pub mod state;
mod subscriptions;
mod tally;

pub use state::GatewayState;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use flotilla_shared::auth::node::NodeAuthenticator;
use flotilla_shared::http_server::{self, ServeOptions};
use flotilla_shared::limiter::KeyedLimiter;
use flotilla_shared::redis_conn::Redis;
use flotilla_shared::settings::Settings;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Idle time before TCP keepalive probes an agent's connection.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Time kept back from the grace period for the steps after the drain.
const SHUTDOWN_RESERVE: Duration = Duration::from_millis(500);

/// A gateway ready to serve.
pub struct Gateway {
    state: GatewayState,
    requests: subscriptions::Requests,
}

impl Gateway {
    /// Builds the gateway; connects to nothing yet, so it starts while Postgres or Redis is down.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = flotilla_shared::db::pool(&settings.database)
            .context("invalid setting `database.url`")?;
        let redis = Redis::new(&settings.redis).context("invalid setting `redis.url`")?;
        let auth = NodeAuthenticator::new(pool, &settings.auth);
        let gw = settings.gateway;
        if gw.liveness_ttl_ms <= gw.heartbeat_interval_ms {
            anyhow::bail!(
                "invalid setting `gateway.liveness_ttl_ms`: must be longer than gateway.heartbeat_interval_ms"
            );
        }
        let id = gw
            .id
            .clone()
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| format!("gw-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]));
        let (subscriptions, requests) = subscriptions::Subscriptions::new(&id);
        let counters = metrics::Counters::new(auth.counters().clone());
        let state = GatewayState(Arc::new(state::Shared {
            id,
            redis,
            auth,
            registry: registry::Registry::default(),
            subscriptions,
            counters,
            handshakes: Semaphore::new(gw.max_pending_handshakes.max(1)),
            // A limit of 0 turns the reconnect limit off.
            reconnects: (gw.reconnect_limit > 0).then(|| {
                KeyedLimiter::new(
                    gw.reconnect_limit,
                    Duration::from_secs(gw.reconnect_window_secs),
                )
            }),
            auth_failures: KeyedLimiter::new(gw.auth_failures_per_minute, Duration::from_secs(60)),
            draining: CancellationToken::new(),
            sessions: TaskTracker::new(),
            presence_stale: Default::default(),
            unreleased: Default::default(),
            subscribe_timeouts: tally::Tally::new(presence::SUBSCRIBE_TIMEOUT_LOG_EVERY),
            settings: gw,
        }));
        Ok(Self { state, requests })
    }

    /// The shared state (counters, connection count, id).
    pub fn state(&self) -> &GatewayState {
        &self.state
    }

    /// Serves on `listener` until `shutdown` is cancelled, then drains within the grace period.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let Self { state, requests } = self;
        let addr = listener.local_addr()?;
        tracing::info!(gateway_id = %state.id, "listening on {addr}");

        let background = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(subscriptions::run(
            state.clone(),
            requests,
            background.clone(),
        ));
        tasks.spawn(liveness::run(state.clone(), background.clone()));

        let http_stop = CancellationToken::new();
        let options = ServeOptions {
            header_read_timeout: Duration::from_millis(state.settings.header_read_timeout_ms),
            nodelay: true,
            // SSE agents never write: a vanished one is found by a failed write or by this.
            tcp_keepalive: Some(TCP_KEEPALIVE),
            raw: Some(sse::raw_route(&state)),
        };
        let mut server = tokio::spawn(http_server::serve(
            listener,
            router(state.clone()),
            options,
            http_stop.clone().cancelled_owned(),
        ));

        tokio::select! {
            result = &mut server => {
                background.cancel();
                result.context("server task")?;
                return Ok(());
            }
            _ = shutdown.cancelled() => {}
        }

        let grace = Duration::from_millis(state.settings.shutdown_grace_ms);
        let deadline = Instant::now() + grace;
        let drain_deadline = deadline.checked_sub(SHUTDOWN_RESERVE).unwrap_or(deadline);
        if tokio::time::timeout_at(drain_deadline, drain::run(&state))
            .await
            .is_err()
        {
            tracing::warn!(
                left = state.registry.len(),
                "drain did not finish within the grace period"
            );
        }
        http_stop.cancel();
        background.cancel();
        tasks.close();
        let _ = tokio::time::timeout_at(deadline, async {
            let _ = server.await;
            tasks.wait().await;
            liveness::retire(&state).await;
        })
        .await;
        tracing::info!("stopped");
        Ok(())
    }
}

fn router(state: GatewayState) -> Router {
    let routes = Router::new()
        .route("/api/agent/ws", get(handshake::upgrade))
        .route("/api/agent/push", get(sse::open))
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route("/livez", get(live))
        .route("/metrics", get(metrics));
    flotilla_shared::request_tracing::layer(routes).with_state(state)
}

/// 200 while serving, 503 while draining (so load balancers stop sending agents here).
async fn health(State(state): State<GatewayState>) -> StatusCode {
    if state.is_draining() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

/// 200 only while serving with a live Redis subscription: without it pushes would not arrive
/// (sockets stay up meanwhile; agents keep polling).
async fn ready(State(state): State<GatewayState>) -> StatusCode {
    if !state.is_draining() && state.subscriptions.is_up() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// 200 whenever the process answers: a draining gateway is alive (a liveness probe that
/// failed here would kill it mid-drain).
async fn live() -> StatusCode {
    StatusCode::OK
}

async fn metrics(State(state): State<GatewayState>) -> impl IntoResponse {
    let text = state.counters.render(state.registry.len());
    (
        [(CONTENT_TYPE, flotilla_shared::metrics::CONTENT_TYPE)],
        text,
    )
}
