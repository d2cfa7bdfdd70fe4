//! The Flotilla api: the agent HTTP API, the operator API, the fleet page and per-node
//! notifications to Redis.
//!
//! # Layout
//! - [`state`]: [`AppState`], the cheap handles every handler gets.
//! - [`error`]: [`ApiError`](error::ApiError), the one error type of this service, and its HTTP mapping.
//! - [`extract`]: request shapes: JSON bodies and queries with uniform errors, client address,
//!   path ids.
//! - [`auth`]: who is calling: the node extractors, operator roles and tokens, the bootstrap
//!   admin token, fleet-page sessions and their cookie.
//! - [`same_origin`]: the forgery check on what a browser sends with the session cookie.
//! - [`revocation`]: live operator streams end when their token or session stops standing.
//! - [`notify`]: publishing agent frames to the nodes' Redis channels.
//! - [`fleet_events`]: relaying presence and node changes to the fleet page's live stream.
//! - [`restarts`]: restarts delivered so every agent generation can act on them.
//! - [`node_logs`]: pipeline log lines per node, in bounded Redis rings.
//! - [`taps`]: live taps, relayed through Redis and never stored.
//! - [`live`]: operator streams that follow one Redis channel.
//! - [`shared_budget`]: per-second budgets shared by every api instance, counted in Redis (per
//!   tap, per node's logs); the per-address limits are [`flotilla_shared::limiter`]s.
//! - [`audit`]: the audit trail of operator changes, written with the change it records.
//! - [`polls`]: config polls' reads, coalesced with concurrent polls', and what a poll hands
//!   out (pipelines, the pending action).
//! - [`paging`]: page sizes and opaque cursors for operator listings.
//! - [`selector`]: node-selector rules and the nodes a pipeline change reaches.
//! - [`vector_config`]: pipeline configs checked against Vector's top-level shape, with the line.
//! - [`download_url`]: where a self-update may send agents (https, no internal hosts).
//! - [`sweep`]: the background task that marks silent nodes UNREACHABLE and expires samples.
//! - [`metrics`]: the api's Prometheus registry: requests by route template, pool use,
//!   coalesced reads, notifications, fleet-event subscribers.
//! - [`routes`]: one module per resource, merged into one router.
//! - [`openapi`]: the OpenAPI document, generated from the handlers' annotations.

pub mod audit;
pub mod auth;
pub mod download_url;
pub mod error;
pub mod extract;
pub mod fleet_events;
pub mod live;
pub mod metrics;
pub mod node_logs;
pub mod notify;
pub mod openapi;
pub mod paging;
pub mod polls;
pub mod restarts;
pub mod revocation;
pub mod routes;
pub mod same_origin;
pub mod selector;
pub mod shared_budget;
pub mod state;
pub mod sweep;
pub mod taps;
pub mod vector_config;

pub use state::AppState;

use anyhow::Context;
use auth::bootstrap;
use flotilla_shared::auth::bcrypt_gate::BcryptGate;
use flotilla_shared::auth::node::NodeAuthenticator;
use flotilla_shared::http_server::{self, ServeOptions};
use flotilla_shared::limiter::KeyedLimiter;
use flotilla_shared::redis_conn::Redis;
use flotilla_shared::settings::Settings;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A built api, ready to serve.
pub struct Api {
    state: AppState,
}

impl Api {
    /// Connects to Postgres, runs the migrations and installs the bootstrap admin token.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let pool = flotilla_shared::db::pool(&settings.database).context("database.url")?;
        flotilla_shared::db::MIGRATOR
            .run(&pool)
            .await
            .context("running database migrations")?;
        sqlx::query!(
            "INSERT INTO settings (id, poll_interval_ms) VALUES (true, $1) ON CONFLICT DO NOTHING",
            settings.api.default_poll_interval_ms as i32
        )
        .execute(&pool)
        .await?;
        let bootstrap_changed = match &settings.api.bootstrap_admin_token {
            Some(token) => {
                bootstrap::ensure_bootstrap(&pool, token.expose(), settings.auth.bcrypt_cost)
                    .await?
            }
            None => {
                let removed = bootstrap::remove_bootstrap(&pool).await?;
                if let Some(token) =
                    bootstrap::ensure_first_admin(&pool, settings.auth.bcrypt_cost).await?
                {
                    // Printed, never logged: the one time anyone sees it.
                    println!("{}{}", bootstrap::FIRST_ADMIN_BANNER, token.expose());
                }
                removed
            }
        };
        if let (Some(name), Some(token)) = (
            &settings.api.bootstrap_environment,
            &settings.api.bootstrap_enrollment_token,
        ) {
            routes::environments::ensure_bootstrap(
                &pool,
                name,
                token.expose(),
                settings.auth.bcrypt_cost,
            )
            .await
            .context("api.bootstrap_environment")?;
        }
        let self_update_hosts =
            download_url::AllowList::parse(&settings.api.self_update_allowed_hosts)
                .map_err(anyhow::Error::msg)
                .context("api.self_update_allowed_hosts")?;
        let redis = Redis::new(&settings.redis).context("redis.url")?;
        // One cap on bcrypt work for node, operator and enrollment tokens alike.
        let bcrypt = BcryptGate::new(&settings.auth);
        let polls = polls::poll_reads(pool.clone());
        let node_auth = NodeAuthenticator::with_gate(pool.clone(), bcrypt.clone());
        let notifier = notify::Notifier::new(redis.clone());
        let fleet_events = fleet_events::FleetEvents::default();
        let metrics = metrics::ApiMetrics::new(metrics::Sources {
            pool: pool.clone(),
            fleet_events: fleet_events.clone(),
            notify: notifier.counters().clone(),
            auth: node_auth.counters().clone(),
            poll_round_sizes: polls.round_sizes(),
        });
        let state = AppState {
            polls,
            node_auth,
            operator_auth: auth::operator::OperatorAuthenticator::new(
                pool.clone(),
                &settings.auth,
                bcrypt,
            ),
            notifier,
            fleet_events,
            metrics,
            live: live::LiveStreams::default(),
            self_update_hosts,
            limits: state::Limits {
                enroll: KeyedLimiter::new(settings.api.enroll_per_minute, Duration::from_secs(60)),
                auth_failures: KeyedLimiter::new(
                    settings.api.auth_failures_per_minute,
                    Duration::from_secs(60),
                ),
                operator_guesses: KeyedLimiter::new(
                    settings.api.auth_failures_per_minute,
                    Duration::from_secs(60),
                ),
            },
            shutdown: CancellationToken::new(),
            redis,
            pool,
            settings: Arc::new(settings),
        };
        if bootstrap_changed {
            // Other apis' live streams of the old bootstrap token end now, not at a re-check.
            let state = state.clone();
            tokio::spawn(async move {
                state.fleet_events.credentials_revoked(&state.redis).await;
            });
        }
        Ok(Self { state })
    }

    /// The state handlers see (tests read counters through it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` is cancelled, then drains in-flight requests.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "api listening on {addr}");
        let sweeper = tokio::spawn(sweep::run(self.state.clone(), shutdown.clone()));
        let relay = tokio::spawn(
            self.state
                .fleet_events
                .clone()
                .relay(self.state.redis.clone(), shutdown.clone()),
        );
        let streams = self.state.shutdown.clone();
        let grace = Duration::from_millis(self.state.settings.api.shutdown_grace_ms);
        let header_read_timeout =
            Duration::from_millis(self.state.settings.api.header_read_timeout_ms);
        let app = routes::router(self.state);
        let signal = shutdown.clone();
        let options = ServeOptions {
            header_read_timeout,
            nodelay: false,
            tcp_keepalive: None,
            raw: None,
        };
        let server = tokio::spawn(http_server::serve(listener, app, options, async move {
            signal.cancelled().await
        }));
        shutdown.cancelled().await;
        // Long-lived streams (the fleet page's events) end now so the drain can finish.
        streams.cancel();
        match tokio::time::timeout(grace, server).await {
            Ok(joined) => joined?,
            Err(_) => tracing::warn!("in-flight requests did not finish within the grace period"),
        }
        sweeper.await?;
        relay.await?;
        Ok(())
    }
}

/// `flotilla-api ensure-environment`: creates the environment named by
/// `api.bootstrap_environment` with the enrollment token `api.bootstrap_enrollment_token`
/// (or gives an existing one that token), and, with `api.bootstrap_pipeline_file`, creates and
/// deploys that pipeline there once; then returns. The compose file's demo profile runs it
/// once, so a plain `docker compose up` publishes no enrollment token.
pub async fn ensure_environment(settings: &Settings) -> anyhow::Result<()> {
    let (Some(name), Some(token)) = (
        &settings.api.bootstrap_environment,
        &settings.api.bootstrap_enrollment_token,
    ) else {
        anyhow::bail!(
            "ensure-environment needs api.bootstrap_environment and \
             api.bootstrap_enrollment_token (FLOTILLA__API__BOOTSTRAP_ENVIRONMENT, \
             FLOTILLA__API__BOOTSTRAP_ENROLLMENT_TOKEN)"
        );
    };
    let pool = flotilla_shared::db::pool(&settings.database).context("database.url")?;
    flotilla_shared::db::MIGRATOR
        .run(&pool)
        .await
        .context("running database migrations")?;
    routes::environments::ensure_bootstrap(&pool, name, token.expose(), settings.auth.bcrypt_cost)
        .await
        .context("api.bootstrap_enrollment_token")?;
    if let Some(file) = &settings.api.bootstrap_pipeline_file {
        let context = || format!("api.bootstrap_pipeline_file {}", file.display());
        let yaml = std::fs::read_to_string(file).with_context(context)?;
        let pipeline = file
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| !s.is_empty())
            .with_context(context)?;
        let created = routes::pipelines::ensure_bootstrap(&pool, name, pipeline, &yaml)
            .await
            .with_context(context)?;
        tracing::info!(pipeline, environment = %name, created, "bootstrap pipeline ready");
    }
    pool.close().await;
    Ok(())
}
