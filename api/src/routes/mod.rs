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

use crate::state::AppState;
use axum::extract::DefaultBodyLimit;
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
        .fallback(|| async { crate::error::ApiError::NotFound("route") })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .with_state(state)
}
