//! `GET /metrics`: the api's registry ([`crate::metrics`]) in the Prometheus text format.
//!
//! Scraped from the api's own address; the shipped balancer does not route it.

use crate::state::AppState;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

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
    (
        [(CONTENT_TYPE, flotilla_shared::metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
}
