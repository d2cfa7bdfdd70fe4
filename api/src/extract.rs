//! Request-shape extractors: JSON bodies and query strings with uniform errors, the client's
//! address, path ids. Who the caller is lives in [`crate::auth`].

use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use flotilla_shared::client_address::client_address;
use serde::de::DeserializeOwned;
use std::net::{IpAddr, SocketAddr};
use uuid::Uuid;

/// A JSON body; malformed JSON or wrong fields answer 400 `{error, details}`, whatever the
/// content type (legacy agents are not strict about it).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        parse_json(&read_body(req, state).await?).map(Json)
    }
}

/// The request body within the size limit: 413 over it, 400 when it cannot be read.
async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::bad_request("Could not read the request body", None)
        }
    })
}

/// A JSON body read (within the size limit) but not parsed yet, for handlers that must
/// authenticate before they answer anything about the body.
#[derive(Debug, Clone)]
pub struct JsonBody(Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        read_body(req, state).await.map(JsonBody)
    }
}

impl JsonBody {
    /// Parses it, with the same 400 errors as [`Json`].
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        parse_json(&self.0)
    }
}

/// Whether a JSON text holds a `\u0000` escape (a NUL character, which Postgres text and
/// jsonb cannot store) rather than, say, an escaped backslash followed by "u0000".
fn has_nul_escape(bytes: &[u8]) -> bool {
    bytes.windows(6).enumerate().any(|(i, w)| {
        w[0] == b'\\'
            && w[1] == b'u'
            && w[2..].iter().all(|b| *b == b'0')
            && bytes[..i].iter().rev().take_while(|b| **b == b'\\').count() % 2 == 0
    })
}

/// Parses a JSON body, naming the offending path in the 400 error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if has_nul_escape(bytes) {
        return Err(ApiError::bad_request(
            "Invalid request body",
            serde_json::json!({ "reason": "strings must not contain NUL (\\u0000)" }),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ApiError::bad_request(
            "Invalid request body",
            serde_json::json!({ "path": path, "reason": e.inner().to_string() }),
        )
    })
}

/// A JSON body that may be absent (an empty body means the defaults).
#[derive(Debug, Clone, Copy, Default)]
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        parse_json(&bytes).map(OptionalJson)
    }
}

/// The client's address: the socket peer, or the last `X-Forwarded-For` hop when
/// `api.trust_forwarded_for` is set (behind our own balancer).
pub fn client_ip(parts: &Parts, state: &AppState) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    client_address(peer, &parts.headers, state.settings.api.trust_forwarded_for)
}

/// The client's address (see [`client_ip`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(parts, state)))
    }
}

/// Parses a path id; a malformed id is simply not found.
pub fn id_of(raw: &str, what: &'static str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound(what))
}

/// A query string; a malformed one answers 400 `{error, details}` like every other error.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(q)| Query(q))
            .map_err(|e| {
                ApiError::bad_request(
                    "Invalid query string",
                    serde_json::json!({ "reason": e.body_text() }),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::has_nul_escape;

    #[test]
    fn nul_escapes_are_found_and_escaped_backslashes_are_not() {
        assert!(has_nul_escape(br#"{"name":"a\u0000b"}"#));
        assert!(has_nul_escape(br#"{"name":"\\\u0000"}"#));
        assert!(!has_nul_escape(br#"{"name":"\\u0000"}"#));
        assert!(!has_nul_escape(br#"{"name":"\u0001"}"#));
        assert!(!has_nul_escape(b"{}"));
    }
}
