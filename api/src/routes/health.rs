//! `/healthz` (the process is up) and `/readyz` (Postgres and Redis answer).

use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// Health routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, body = Object))
)]
async fn healthz() -> Json<Value> {
    Json(json!({ "ok": true }))
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses((status = 200, body = Object), (status = 503, description = "Postgres or Redis unreachable", body = Object))
)]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let timeout = state.redis.timeout();
    // A runtime statement: it reads no table, so a compile-time check has nothing to check.
    // `health_and_readiness` covers it.
    let database = matches!(
        tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&state.pool)).await,
        Ok(Ok(_))
    );
    let redis = state
        .redis
        .query::<String>(&redis::cmd("PING"))
        .await
        .is_ok();
    let status = if database && redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = if database && redis {
        json!({ "ok": true })
    } else {
        json!({ "error": "not ready", "details": { "database": database, "redis": redis } })
    };
    (status, Json(body))
}
