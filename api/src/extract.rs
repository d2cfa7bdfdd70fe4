//! Request extractors: JSON bodies with uniform errors, the authenticated node, the operator.

use crate::error::ApiError;
use crate::operator_auth::Role;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use flotilla_shared::node_auth::AuthedNode;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// A JSON body; malformed JSON or wrong fields answer 400 `{error, details}`, whatever the
/// content type (legacy agents are not strict about it).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::bad_request("Could not read the request body", None)
            }
        })?;
        parse_json(&bytes).map(Json)
    }
}

/// Parses a JSON body, naming the offending path in the 400 error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
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
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::bad_request("Could not read the request body", None))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        parse_json(&bytes).map(OptionalJson)
    }
}

/// The bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Name of the fleet page's HttpOnly session cookie (it holds the operator token, hex-encoded).
pub const SESSION_COOKIE: &str = "flotilla_session";

/// The operator token kept in the session cookie, if any.
pub fn session_token(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .and_then(|(_, value)| hex::decode(value).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

/// The node calling an agent endpoint.
#[derive(Debug, Clone, Copy)]
pub struct NodeCaller(pub AuthedNode);

impl FromRequestParts<AppState> for NodeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized("Unauthorized"))?;
        Ok(NodeCaller(state.node_auth.authenticate(token).await?))
    }
}

/// The operator calling an operator endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Operator {
    /// The operator token's id.
    pub token_id: Uuid,
    /// Its role.
    pub role: Role,
}

impl Operator {
    /// Fails with 403 unless the operator has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::Forbidden(role.as_str()))
        }
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = match bearer(parts) {
            Some(t) => t.to_owned(),
            None => session_token(parts).ok_or(ApiError::Unauthorized("Unauthorized"))?,
        };
        let (token_id, role) = state.operator_auth.authenticate(&token).await?;
        Ok(Operator { token_id, role })
    }
}

/// Parses a path id; a malformed id is simply not found.
pub fn id_of(raw: &str, what: &'static str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound(what))
}

impl axum::extract::OptionalFromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    /// `None` when there is no valid operator token; other failures (database down) stand.
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Self::Rejection> {
        match <Operator as FromRequestParts<AppState>>::from_request_parts(parts, state).await {
            Ok(op) => Ok(Some(op)),
            Err(ApiError::Unauthorized(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
