//! Operators: roles, operator-token verification with a warm cache, issuing tokens, and the
//! [`Operator`] extractor (by bearer token, or by the fleet page's session cookie).

use super::session;
use crate::error::ApiError;
use crate::extract::client_ip;
use crate::state::AppState;
use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use flotilla_shared::auth::bcrypt_gate::BcryptGate;
use flotilla_shared::auth::{bearer, tokens};
use flotilla_shared::limiter::KeyedLimiter;
use flotilla_shared::settings::AuthSettings;
use moka::future::Cache;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Operator roles, ordered: each includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Also manages pipelines and samples.
    Editor,
    /// Also manages environments, nodes, actions, settings and tokens.
    Admin,
}

impl Role {
    /// Lower-case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Editor => "editor",
            Self::Admin => "admin",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "editor" => Some(Self::Editor),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

struct TokenRow {
    id: Uuid,
    role: String,
    token_hash: String,
}

/// A verified token as the cache keeps it: its row and the hash it was verified against.
#[derive(Clone)]
struct Verified {
    id: Uuid,
    hash: Arc<str>,
}

/// Why a cold check (one that needs bcrypt) failed; cheap to share between the concurrent
/// checks of one token that it answered.
#[derive(Debug, Clone, Copy)]
enum ColdFailure {
    Invalid,
    Busy,
}

/// Verifies operator tokens; a warm hit re-reads the row (so revocation is immediate) but
/// runs no bcrypt. A cold check runs bcrypt under the process's [`BcryptGate`], once for all
/// concurrent checks of the same token, and only for an address within its failure budget.
#[derive(Clone)]
pub struct OperatorAuthenticator {
    pool: PgPool,
    cache: Cache<[u8; 32], Verified>,
    bcrypt: BcryptGate,
}

impl OperatorAuthenticator {
    /// Builds the authenticator; its bcrypt work waits at `bcrypt`.
    pub fn new(pool: PgPool, settings: &AuthSettings, bcrypt: BcryptGate) -> Self {
        Self {
            pool,
            cache: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(settings.cache_ttl_secs))
                .build(),
            bcrypt,
        }
    }

    /// Returns the token's id and role, or 401. Only a check that costs bcrypt can be refused
    /// for the address's budget (`guesses`), and only a wrong guess that cost bcrypt counts
    /// against it: a token verified within `auth.cache_ttl_secs` (warm), an unknown lookup id or
    /// a malformed token costs no slow hash, so strangers cannot spend an operator's budget
    /// for free and lock out even a cold token.
    pub async fn authenticate(
        &self,
        token: &str,
        ip: Option<IpAddr>,
        guesses: &KeyedLimiter<IpAddr>,
    ) -> Result<(Uuid, Role), ApiError> {
        if token.is_empty() || token.len() > 512 {
            return Err(ApiError::Unauthorized("Unauthorized"));
        }
        let key = tokens::sha256(token);
        if let Some(verified) = self.cache.get(&key).await {
            if let Some(found) = self.still_valid(&verified).await? {
                return Ok(found);
            }
            self.cache.invalidate(&key).await;
        }
        let (lookup, secret) = tokens::operator_parts(token);
        let rows: Vec<TokenRow> = sqlx::query_as!(
            TokenRow,
            "SELECT id, role, token_hash FROM operator_tokens WHERE token_lookup = $1 AND NOT revoked",
            lookup
        )
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Err(ApiError::Unauthorized("Unauthorized"));
        }
        if let Some(over) = ip.and_then(|ip| guesses.over_limit(&ip)) {
            return Err(over.into());
        }
        // Concurrent checks of one token share this bcrypt run and its answer.
        let verified = self
            .cache
            .try_get_with(key, self.verify_cold(secret, &rows))
            .await
            .map_err(|failure| match *failure {
                ColdFailure::Invalid => {
                    if let Some(ip) = ip {
                        let _ = guesses.hit(ip);
                    }
                    ApiError::Unauthorized("Unauthorized")
                }
                ColdFailure::Busy => ApiError::Busy,
            })?;
        let row = rows
            .iter()
            .find(|r| r.id == verified.id)
            .ok_or(ApiError::Unauthorized("Unauthorized"))?;
        Ok((row.id, role_of(row)?))
    }

    /// The row a cached verification vouches for, if it still stands.
    async fn still_valid(&self, verified: &Verified) -> Result<Option<(Uuid, Role)>, ApiError> {
        let row: Option<TokenRow> = sqlx::query_as!(
            TokenRow,
            "SELECT id, role, token_hash FROM operator_tokens WHERE id = $1 AND NOT revoked",
            verified.id
        )
        .fetch_optional(&self.pool)
        .await?;
        match row.filter(|r| *r.token_hash == *verified.hash) {
            Some(row) => Ok(Some((row.id, role_of(&row)?))),
            None => Ok(None),
        }
    }

    async fn verify_cold(
        &self,
        secret: String,
        rows: &[TokenRow],
    ) -> Result<Verified, ColdFailure> {
        for row in rows {
            let matches = self
                .bcrypt
                .verify(secret.clone(), row.token_hash.clone())
                .await
                .map_err(|_| ColdFailure::Busy)?;
            if matches {
                return Ok(Verified {
                    id: row.id,
                    hash: Arc::from(row.token_hash.as_str()),
                });
            }
        }
        Err(ColdFailure::Invalid)
    }

    /// Whether the token `id` is still valid (not revoked).
    pub async fn is_active(&self, id: Uuid) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM operator_tokens WHERE id = $1 AND NOT revoked) AS "exists!""#,
            id
        )
        .fetch_one(&self.pool)
        .await
    }
}

fn role_of(row: &TokenRow) -> Result<Role, ApiError> {
    Role::parse(&row.role).ok_or_else(|| anyhow::anyhow!("unknown role in database").into())
}

/// Issues a new operator token; returns `(id, token)` (the token is shown once).
pub async fn create_token(
    db: impl sqlx::PgExecutor<'_>,
    name: &str,
    role: Role,
    cost: u32,
) -> Result<(Uuid, String), ApiError> {
    let issued = tokens::issue(tokens::OPERATOR_PREFIX);
    let hash = tokens::hash_secret(issued.secret.clone(), cost)
        .await
        .map_err(anyhow::Error::from)?;
    let id = Uuid::new_v4();
    sqlx::query!(
        "INSERT INTO operator_tokens (id, name, role, token_lookup, token_hash) VALUES ($1, $2, $3, $4, $5)",
        id,
        name,
        role.as_str(),
        issued.lookup,
        hash
    )
    .execute(db)
    .await?;
    Ok((id, issued.token))
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
    pub session: Option<session::SessionKey>,
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
            Some(key) => Ok(session::find(&state.pool, key).await?.is_some()),
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
        let Some(token) = bearer(&parts.headers) else {
            return session::operator(parts, state).await;
        };
        let ip = client_ip(parts, state);
        let guesses = &state.limits.operator_guesses;
        let (token_id, role) = state.operator_auth.authenticate(token, ip, guesses).await?;
        Ok(Operator {
            token_id,
            role,
            session: None,
        })
    }
}

impl OptionalFromRequestParts<AppState> for Operator {
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
