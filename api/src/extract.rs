//! Request extractors: JSON bodies with uniform errors, the authenticated node, the operator
//! (by bearer token or session cookie).

use crate::error::ApiError;
use crate::operator_auth::Role;
use crate::sessions::{self, SessionKey};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use flotilla_shared::node_auth::{self, AuthError, AuthedNode, BudgetedError, NodeCredentials};
use flotilla_shared::rate_limit::client_address;
use flotilla_shared::tokens;
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

/// The bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
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
        let bearer = NodeBearer::from_request_parts(parts, state).await?;
        Ok(NodeCaller(bearer.check(state).await?))
    }
}

/// A node's bearer token, not yet checked, and where the request came from: for routes that
/// read the node's credentials together with their own data
/// ([`authenticate`](Self::authenticate)).
pub struct NodeBearer {
    token: String,
    ip: Option<IpAddr>,
}

impl FromRequestParts<AppState> for NodeBearer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized("Unauthorized"))?;
        Ok(NodeBearer {
            token: token.to_owned(),
            ip: client_ip(parts, state),
        })
    }
}

impl NodeBearer {
    /// For a well-formed token: its lookup id and the digest a valid token's row carries, so
    /// a statement on the row matching both proves the token as a full check would.
    pub fn lookup_and_digest(&self) -> Option<(&str, [u8; 32])> {
        let lookup = node_auth::lookup_id(&self.token)?;
        Some((lookup, tokens::node_digest(&self.token)))
    }

    /// Authenticates the token against its stored credentials.
    pub async fn check(&self, state: &AppState) -> Result<AuthedNode, ApiError> {
        let auth = &state.node_auth;
        let (node, ()) = self
            .authenticate(state, |lookup| async move {
                let row = auth.read_lookup(&lookup).await?;
                Ok(row.map(|r| (r, ())))
            })
            .await?;
        Ok(node)
    }

    /// Authenticates the token against the credentials `read` returns for its lookup id, with
    /// whatever else `read` fetched in the same query (`None`: no such node). The data never
    /// leaves here unless the token is valid.
    pub async fn authenticate<T, F, Fut>(
        &self,
        state: &AppState,
        read: F,
    ) -> Result<(AuthedNode, T), ApiError>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<Option<(NodeCredentials, T)>, sqlx::Error>>,
    {
        // A malformed token reads nothing and fails (and counts) in the check.
        let row = match node_auth::lookup_id(&self.token) {
            Some(lookup) => read(lookup.to_owned())
                .await
                .map_err(|e| ApiError::from(AuthError::Database(e)))?,
            None => None,
        };
        let (credentials, data) = row.unzip();
        let node = state
            .node_auth
            .verify_budgeted(
                &self.token,
                credentials.as_ref(),
                self.ip,
                &state.limits.auth_failures,
            )
            .await
            .map_err(|e| match e {
                BudgetedError::OverBudget(wait) => ApiError::RateLimited(wait.as_secs()),
                BudgetedError::Auth(e) => e.into(),
            })?;
        // A verified node was read with its data.
        let data = data.ok_or(ApiError::Unauthorized("Unauthorized"))?;
        Ok((node, data))
    }
}

/// The client's address: the socket peer, or the last `X-Forwarded-For` hop when
/// `api.trust_forwarded_for` is set (behind our own balancer).
pub fn client_ip(parts: &Parts, state: &AppState) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let forwarded = parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    client_address(peer, forwarded, state.settings.api.trust_forwarded_for)
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

/// The operator calling an operator endpoint: by bearer token, or by the fleet page's session
/// cookie (then a write must also be same-origin JSON, see [`crate::same_origin`]).
#[derive(Debug, Clone, Copy)]
pub struct Operator {
    /// The operator token's id.
    pub token_id: Uuid,
    /// Its role.
    pub role: Role,
    /// The session it came through, if it came through the cookie.
    pub session: Option<SessionKey>,
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

    /// Whether the credential it came with still stands (token not revoked; session not
    /// ended or expired); for live streams, which outlast the request that authenticated.
    pub async fn still_stands(&self, state: &AppState) -> Result<bool, sqlx::Error> {
        match self.session {
            Some(key) => Ok(sessions::find(&state.pool, key).await?.is_some()),
            None => state.operator_auth.is_active(self.token_id).await,
        }
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(token) = bearer(parts) {
            let ip = client_ip(parts, state);
            let guesses = &state.limits.operator_guesses;
            let (token_id, role) = state.operator_auth.authenticate(token, ip, guesses).await?;
            return Ok(Operator {
                token_id,
                role,
                session: None,
            });
        }
        let key = sessions::from_cookie(parts).ok_or(ApiError::Unauthorized("Unauthorized"))?;
        // One indexed read of a 256-bit id's digest, never a slow hash: never rate-limited.
        let session = sessions::find(&state.pool, key)
            .await?
            .ok_or(ApiError::Unauthorized("Unauthorized"))?;
        crate::same_origin::check_cookie_write(&parts.method, &parts.headers)?;
        Ok(Operator {
            token_id: session.token_id,
            role: session.role,
            session: Some(key),
        })
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
