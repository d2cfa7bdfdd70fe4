//! Why a handshake was refused, and the HTTP answer for each reason.
//!
//! Every refusal happens before the upgrade, so the agent sees a plain HTTP status.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flotilla_shared::limiter::OverLimit;

/// A refused handshake.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// Missing, malformed, unknown or revoked token.
    #[error("Invalid node token")]
    Unauthorized,
    /// The gateway is draining; connect to another one.
    #[error("Gateway is draining")]
    Draining,
    /// Too many handshakes or bcrypt verifications are in flight.
    #[error("Gateway is busy")]
    Busy,
    /// The database could not be asked.
    #[error("Database unavailable")]
    Unavailable,
    /// The node connected too often within the reconnect window.
    #[error("Too many reconnects")]
    TooManyReconnects(OverLimit),
    /// The source address failed authentication too often; tokens that would need bcrypt (a
    /// node enrolled before digests, not seen since) are refused from it until the window ends.
    #[error("Too many failed authentications")]
    TooManyFailures(OverLimit),
}

impl Rejection {
    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::TooManyReconnects(_) | Self::TooManyFailures(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Draining | Self::Busy | Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Unauthorized => None,
            Self::Draining | Self::Busy => Some(1),
            Self::Unavailable => Some(5),
            Self::TooManyReconnects(over) | Self::TooManyFailures(over) => {
                Some(over.retry_after_secs())
            }
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.to_string() }));
        let mut response = (self.status(), body).into_response();
        if let Some(secs) = self.retry_after_secs() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, secs.into());
        }
        response
    }
}
