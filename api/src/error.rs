//! The api's error type and its mapping to HTTP responses.
//!
//! Every error answers `{error, details?}`. Internal failures answer a generic message and
//! are logged with their cause; an unreachable database answers 503.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use flotilla_shared::auth::node::AuthError;
use flotilla_shared::limiter::OverLimit;
use flotilla_shared::protocol::ErrorBody;
use serde_json::Value;

/// Result alias for handlers.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed.
    #[error("{error}")]
    BadRequest {
        /// Summary.
        error: String,
        /// Specifics.
        details: Option<Value>,
    },
    /// 401 with this message.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 403: the caller's role is not enough.
    #[error("this action needs the {0} role")]
    Forbidden(&'static str),
    /// 403: a cookie-authenticated write that may have been forged by another site.
    #[error("{0}")]
    CrossSite(&'static str),
    /// 404: this kind of thing was not found.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 409: conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// 413: body larger than allowed.
    #[error("request body too large")]
    PayloadTooLarge,
    /// 422: well-formed but invalid.
    #[error("{error}")]
    Unprocessable {
        /// Summary.
        error: String,
        /// Specifics.
        details: Option<Value>,
    },
    /// 429 with `Retry-After` (seconds): this address is over a rate limit.
    #[error("too many requests, retry later")]
    RateLimited(u64),
    /// 503 with `Retry-After`: authentication is saturated.
    #[error("server busy, retry shortly")]
    Busy,
    /// A database failure; 503 when unreachable, 409 on unique violations, else 500.
    #[error("an error occurred with the database")]
    Database(#[from] sqlx::Error),
    /// Redis could not be reached or failed: 503 (what needs it is not done).
    #[error("redis unavailable")]
    Redis(redis::RedisError),
    /// Anything else: 500.
    #[error("an internal error occurred")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// 400 with details.
    pub fn bad_request(error: impl Into<String>, details: impl Into<Option<Value>>) -> Self {
        Self::BadRequest {
            error: error.into(),
            details: details.into(),
        }
    }

    /// 422 naming the offending field.
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Self::Unprocessable {
            error: "Validation failed".into(),
            details: Some(serde_json::json!({ "field": field, "reason": reason.into() })),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Invalid => Self::Unauthorized("Unauthorized"),
            AuthError::Busy => Self::Busy,
            AuthError::Database(e) => Self::Database(e),
        }
    }
}

impl From<OverLimit> for ApiError {
    fn from(over: OverLimit) -> Self {
        Self::RateLimited(over.retry_after_secs())
    }
}

/// `{error}` with `Retry-After: <secs>`.
fn retry_after(status: StatusCode, error: &str, secs: u64) -> Response {
    let body = ErrorBody {
        error: error.to_owned(),
        details: None,
    };
    let mut r = (status, axum::Json(body)).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// Human message for a unique-constraint violation, by constraint name.
fn conflict_message(constraint: &str) -> &'static str {
    match constraint {
        "environments_name_key" => "an environment with this name already exists",
        "pipelines_environment_name_key" => {
            "a pipeline with this name already exists in the environment"
        }
        "pipeline_versions_pkey" => "this pipeline version already exists",
        _ => "conflicts with an existing record",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, details) = match self {
            Self::BadRequest { error, details } => (StatusCode::BAD_REQUEST, error, details),
            Self::Unprocessable { error, details } => {
                (StatusCode::UNPROCESSABLE_ENTITY, error, details)
            }
            Self::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m.to_owned(), None),
            Self::CrossSite(m) => (StatusCode::FORBIDDEN, m.to_owned(), None),
            Self::Forbidden(_) | Self::NotFound(_) | Self::Conflict(_) | Self::PayloadTooLarge => {
                let status = match self {
                    Self::Forbidden(_) => StatusCode::FORBIDDEN,
                    Self::NotFound(_) => StatusCode::NOT_FOUND,
                    Self::Conflict(_) => StatusCode::CONFLICT,
                    _ => StatusCode::PAYLOAD_TOO_LARGE,
                };
                (status, self.to_string(), None)
            }
            Self::RateLimited(secs) => {
                return retry_after(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many requests, retry later",
                    secs,
                )
            }
            Self::Busy => {
                return retry_after(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server busy, retry shortly",
                    1,
                )
            }
            Self::Database(ref e) if flotilla_shared::db::is_unavailable(e) => {
                tracing::warn!(error = %e, "database unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database unavailable".to_owned(),
                    None,
                )
            }
            Self::Database(sqlx::Error::Database(ref db)) if db.is_unique_violation() => {
                let msg = conflict_message(db.constraint().unwrap_or_default());
                (StatusCode::CONFLICT, msg.to_owned(), None)
            }
            Self::Database(ref e) => {
                tracing::error!(error = %e, "database error");
                (StatusCode::INTERNAL_SERVER_ERROR, self.to_string(), None)
            }
            Self::Redis(ref e) => {
                tracing::warn!(error = %e, "redis unavailable");
                return retry_after(StatusCode::SERVICE_UNAVAILABLE, "redis unavailable", 1);
            }
            Self::Internal(ref e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, self.to_string(), None)
            }
        };
        (status, axum::Json(ErrorBody { error, details })).into_response()
    }
}
