//! The HTTP router: one module per resource, merged.
//!
//! # Layout
//! - [`enroll`], [`agent_config`], [`heartbeat`], [`agent_samples`], [`logs`]: the agent API
//!   (enrollment, the config poll, reports, sample results, pipeline log lines).
//! - [`pipelines`], [`pipeline_versions`]: pipelines, their versions and diffs, deploys.
//! - [`fleet`]: nodes, filters and paging, summary, bulk actions, labels, maintenance.
//! - [`environments`], [`tokens`], [`settings`]: administration (admin).
//! - [`samples`], [`taps`]: event samples and live taps on a node.
//! - [`audit`]: the audit trail.
//! - [`session`], [`page`]: console sign-in and the console itself.
//! - [`health`], [`metrics`]: `/healthz`, `/readyz` and `/metrics`.

pub mod agent_config;
pub mod agent_samples;
pub mod audit;
pub mod enroll;
pub mod environments;
pub mod fleet;
pub mod health;
pub mod heartbeat;
pub mod logs;
pub mod metrics;
pub mod page;
pub mod pipeline_versions;
pub mod pipelines;
pub mod samples;
pub mod session;
pub mod settings;
pub mod taps;
pub mod tokens;

use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::X_CONTENT_TYPE_OPTIONS;
use axum::http::HeaderValue;
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
    let routes = Router::new()
        .merge(health::router())
        .merge(metrics::router())
        .merge(enroll::router())
        .merge(agent_config::router())
        .merge(heartbeat::router())
        .merge(agent_samples::router())
        .merge(environments::router())
        .merge(pipelines::router())
        .merge(pipeline_versions::router())
        .merge(fleet::router())
        .merge(samples::router())
        .merge(logs::router())
        .merge(taps::router())
        .merge(settings::router())
        .merge(tokens::router())
        .merge(page::router())
        .merge(session::router())
        .merge(audit::router())
        .merge(crate::openapi::router())
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(middleware::from_fn_with_state(
            body_limit,
            run_to_completion,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        // Outside the timeout, so 408s are counted too.
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::ApiMetrics::record,
        ))
        // Outermost but for the request span, so timeouts and body-limit answers carry it too.
        .layer(middleware::map_response(nosniff));
    flotilla_shared::request_tracing::layer(routes).with_state(state)
}

/// Browsers take every response for the type it declares, never sniffing JSON or text into
/// script or HTML.
async fn nosniff(mut response: Response) -> Response {
    response
        .headers_mut()
        .entry(X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    response
}

/// Reads the request's body, then runs its handler in a task of its own and waits for it. A
/// client that goes away, or the request timeout, then drops only the wait: the handler still
/// finishes, so no transaction is abandoned halfway. (sqlx 0.8 does not roll back a `BEGIN`
/// whose future is dropped before it completes: that connection went back to the pool inside a
/// transaction and kept the locks of every statement later run on it.) The body is read first,
/// within the wait, so a client that stalls its body holds no task beyond the timeout.
async fn run_to_completion(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(body) => body,
        Err(e) if is_too_large(&e) => return ApiError::PayloadTooLarge.into_response(),
        Err(_) => {
            return ApiError::bad_request("Could not read the request body", None).into_response()
        }
    };
    let req = Request::from_parts(parts, Body::from(body));
    match tokio::spawn(next.run(req)).await {
        Ok(response) => response,
        Err(e) => {
            ApiError::Internal(anyhow::anyhow!("request handler failed: {e}")).into_response()
        }
    }
}

/// Whether reading a body failed because it exceeded the limit.
fn is_too_large(e: &axum::Error) -> bool {
    std::error::Error::source(e).is_some_and(|e| e.is::<http_body_util::LengthLimitError>())
}
