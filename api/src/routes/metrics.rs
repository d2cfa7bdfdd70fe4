//! `GET /metrics`: the api's counters in the Prometheus text format.
//!
//! Scraped from the api's own address; the shipped balancer does not route it.

use crate::state::AppState;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// Metrics route.
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String))
)]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let auth = state.node_auth.counters();
    let mut out = String::new();
    for (name, counter) in [
        (
            "flotilla_api_bcrypt_verifications_total",
            &auth.bcrypt_verifications,
        ),
        (
            "flotilla_api_token_digests_adopted_total",
            &auth.digests_adopted,
        ),
    ] {
        let value = counter.load(Ordering::Relaxed);
        let _ = writeln!(out, "# TYPE {name} counter\n{name} {value}");
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
