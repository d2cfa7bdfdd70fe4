//! The HTTP router: one module per resource, merged.

pub mod agent_config;
pub mod agent_samples;
pub mod enroll;
pub mod environments;
pub mod fleet;
pub mod health;
pub mod heartbeat;
pub mod page;
pub mod pipelines;
pub mod samples;
pub mod settings;
pub mod tokens;

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::time::Duration;
use tower_http::timeout::TimeoutLayer;

/// The whole api.
pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.api.max_body_bytes;
    // Requests taking longer than this (slow clients included) are answered 408.
    let request_timeout = Duration::from_millis(state.settings.api.request_timeout_ms);
    Router::new()
        .merge(health::router())
        .merge(enroll::router())
        .merge(agent_config::router())
        .merge(heartbeat::router())
        .merge(agent_samples::router())
        .merge(environments::router())
        .merge(pipelines::router())
        .merge(fleet::router())
        .merge(samples::router())
        .merge(settings::router())
        .merge(tokens::router())
        .merge(page::router())
        .merge(crate::openapi::router())
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(middleware::from_fn(run_to_completion))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .with_state(state)
}

/// Runs each request's handler in a task of its own and waits for it. A client that goes away,
/// or the request timeout, then drops only the wait: the handler still finishes, so no
/// transaction is abandoned halfway. (sqlx 0.8 does not roll back a `BEGIN` whose future is
/// dropped before it completes: that connection went back to the pool inside a transaction and
/// kept the locks of every statement later run on it.)
async fn run_to_completion(req: Request, next: Next) -> Response {
    match tokio::spawn(next.run(req)).await {
        Ok(response) => response,
        Err(e) => {
            ApiError::Internal(anyhow::anyhow!("request handler failed: {e}")).into_response()
        }
    }
}
