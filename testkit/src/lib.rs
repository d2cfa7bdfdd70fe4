//! Harness for Flotilla's integration tests: a fresh Postgres database per test, the local Redis
//! (or one the test starts), the real services started in-process on port 0 or as real
//! processes, and typed HTTP helpers.
//!
//! Environment: `FLOTILLA_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! names a database the harness can `CREATE DATABASE` from; `FLOTILLA_TEST_REDIS_URL`
//! (default `redis://127.0.0.1:6379`).
//!
//! # Layout
//! - [`db`]: a fresh, migrated Postgres database per test.
//! - [`api`]: the api started in-process on port 0, and typed requests to it.
//! - [`process`]: services started as real processes, to kill or signal.
//! - [`redis_server`]: a private `redis-server` a test can kill and restart.
//! - [`proxy`]: a TCP proxy a test can cut or make deaf, counting the bytes it carries.
//! - [`listen`]: watching node channels in Redis, as a gateway would.
//! - [`sse_client`]: a push-channel client that reads SSE exactly as a current agent does.
//! - [`slow_client`]: clients that stall mid-request, to check servers cut them off.
//! - [`webdriver`]: a minimal WebDriver client and headless Chromium.

pub mod api;
pub mod db;
pub mod listen;
pub mod process;
pub mod proxy;
pub mod redis_server;
pub mod slow_client;
pub mod sse_client;
pub mod webdriver;

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
    let pairs = [
        ("FLOTILLA__DATABASE__URL", database_url),
        ("FLOTILLA__DATABASE__MAX_CONNECTIONS", "10"),
        ("FLOTILLA__DATABASE__ACQUIRE_TIMEOUT_MS", "1000"),
        ("FLOTILLA__REDIS__URL", redis_url),
        ("FLOTILLA__REDIS__COMMAND_TIMEOUT_MS", "500"),
        ("FLOTILLA__API__LISTEN", "127.0.0.1:0"),
        ("FLOTILLA__API__BOOTSTRAP_ADMIN_TOKEN", api::ADMIN_TOKEN),
        ("FLOTILLA__API__HEALTH_SWEEP_INTERVAL_MS", "100"),
        ("FLOTILLA__API__SHUTDOWN_GRACE_MS", "1000"),
        ("FLOTILLA__GATEWAY__LISTEN", "127.0.0.1:0"),
        ("FLOTILLA__GATEWAY__PING_INTERVAL_MS", "300"),
        ("FLOTILLA__GATEWAY__PONG_TIMEOUT_MS", "1000"),
        ("FLOTILLA__GATEWAY__UNSOLICITED_PONG_INTERVAL_MS", "200"),
        ("FLOTILLA__GATEWAY__LIVENESS_TTL_MS", "2000"),
        ("FLOTILLA__GATEWAY__HEARTBEAT_INTERVAL_MS", "500"),
        ("FLOTILLA__GATEWAY__SHUTDOWN_GRACE_MS", "3000"),
        ("FLOTILLA__AUTH__BCRYPT_COST", "4"),
        ("FLOTILLA__LOG__LEVEL", "warn"),
    ];
    Settings::load_from(
        None,
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .expect("test settings are valid")
}

/// A small pipeline config the api accepts (one source, one sink), told apart by `marker`
/// (a trailing comment), so two markers make two versions with different checksums.
pub fn vector_config(marker: &str) -> String {
    format!(
        "sources:\n  in:\n    type: demo_logs\n    format: json\nsinks:\n  out:\n    type: blackhole\n    inputs: [in]\n# {marker}\n"
    )
}
