//! Harness for Flotilla's integration tests: a fresh Postgres database per test, the local Redis
//! (or one the test starts), the real services started in-process on port 0 or as real
//! processes, and typed HTTP helpers. It is the only harness: the crates' test binaries, the
//! end-to-end tests and the benchmarks all build on it.
//!
//! Environment: `FLOTILLA_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! names a database the harness can `CREATE DATABASE` from; `FLOTILLA_TEST_REDIS_URL`
//! (default `redis://127.0.0.1:6379`).
//!
//! # Layout
//! - this file: [`within`] and [`eventually`] (every wait has a limit), [`settings`] (test
//!   settings through `Settings::load_with`), [`vector_config`].
//! - [`api`]: the api in-process, typed requests to it, the bootstrap admin token.
//! - [`gateway`]: a gateway in-process, and connecting to its push channel.
//! - [`db`]: a fresh database per test, migrated.
//! - [`listen`]: a Redis subscriber on nodes' channels, as a gateway would be.
//! - [`process`]: a service as a real process: its `listening on` address, signals, exit.
//! - [`proxy`]: a TCP proxy to cut, heal, re-route or deafen, with byte counts.
//! - [`redis_cluster`]: a private six-node Redis Cluster a test can fail over and reshard.
//! - [`redis_server`]: a private Redis a test can kill and restart.
//! - [`seed`]: many nodes written straight into the database, as enrolled.
//! - [`slow_client`]: a client that sends part of a request and stalls.
//! - [`sse_client`]: a push-channel client over SSE, reading as current agents read.
//! - [`ws_client`]: a push-channel client over WebSocket.
//! - [`webdriver`]: a minimal WebDriver client for Chromium.

pub mod api;
pub mod db;
pub mod gateway;
pub mod listen;
pub mod process;
pub mod proxy;
pub mod redis_cluster;
pub mod redis_server;
pub mod seed;
pub mod slow_client;
pub mod sse_client;
pub mod webdriver;
pub mod ws_client;

use flotilla_shared::settings::Settings;
use std::time::Duration;

/// Upper bound for any single network await in a test.
pub const STEP: Duration = Duration::from_secs(10);

/// Awaits `fut` or panics after [`STEP`], naming what was awaited.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Polls `check` every 10 ms until it returns `Some`, or panics after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{what}: not true within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The Redis URL tests use.
pub fn redis_url() -> String {
    std::env::var("FLOTILLA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Settings for a test: the given database, the given Redis, cost-4 bcrypt, short intervals.
pub fn settings(database_url: &str, redis_url: &str) -> Settings {
    settings_with(database_url, redis_url, &[])
}

/// [`settings`] with `overrides` (dotted keys, `("gateway.pong_timeout_ms", "200")`) applied
/// after the test defaults, through [`Settings::load_with`].
pub fn settings_with(database_url: &str, redis_url: &str, overrides: &[(&str, &str)]) -> Settings {
    let defaults = [
        ("database.url", database_url),
        ("database.max_connections", "10"),
        ("database.acquire_timeout_ms", "1000"),
        ("redis.url", redis_url),
        ("redis.command_timeout_ms", "500"),
        ("api.listen", "127.0.0.1:0"),
        ("api.bootstrap_admin_token", api::ADMIN_TOKEN),
        ("api.health_sweep_interval_ms", "100"),
        ("api.shutdown_grace_ms", "1000"),
        ("gateway.listen", "127.0.0.1:0"),
        ("gateway.ping_interval_ms", "300"),
        ("gateway.pong_timeout_ms", "1000"),
        ("gateway.unsolicited_pong_interval_ms", "200"),
        ("gateway.liveness_ttl_ms", "2000"),
        ("gateway.heartbeat_interval_ms", "500"),
        ("gateway.shutdown_grace_ms", "3000"),
        ("auth.bcrypt_cost", "4"),
        ("log.level", "warn"),
    ];
    let all: Vec<_> = defaults.iter().chain(overrides).copied().collect();
    Settings::load_with(&all).unwrap_or_else(|e| panic!("test settings: {e}"))
}

/// A small pipeline config the api accepts (one source, one sink), told apart by `marker`
/// (a trailing comment), so two markers make two versions with different checksums.
pub fn vector_config(marker: &str) -> String {
    format!(
        "sources:\n  in:\n    type: demo_logs\n    format: json\nsinks:\n  out:\n    type: blackhole\n    inputs: [in]\n# {marker}\n"
    )
}
