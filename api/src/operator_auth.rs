//! Operator tokens: roles, verification with a warm cache, and the bootstrap admin token.

use crate::error::ApiError;
use flotilla_shared::bcrypt_gate::BcryptGate;
use flotilla_shared::rate_limit::RateLimiter;
use flotilla_shared::secret::Secret;
use flotilla_shared::settings::AuthSettings;
use flotilla_shared::tokens;
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

#[derive(sqlx::FromRow)]
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
        guesses: &RateLimiter,
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
        let rows: Vec<TokenRow> = sqlx::query_as(
            "SELECT id, role, token_hash FROM operator_tokens WHERE token_lookup = $1 AND NOT revoked",
        )
        .bind(&lookup)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Err(ApiError::Unauthorized("Unauthorized"));
        }
        if ip.is_some_and(|ip| guesses.exhausted(ip)) {
            return Err(ApiError::RateLimited(guesses.retry_after().as_secs()));
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
        let row: Option<TokenRow> = sqlx::query_as(
            "SELECT id, role, token_hash FROM operator_tokens WHERE id = $1 AND NOT revoked",
        )
        .bind(verified.id)
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
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM operator_tokens WHERE id = $1 AND NOT revoked)",
        )
        .bind(id)
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
    sqlx::query("INSERT INTO operator_tokens (id, name, role, token_lookup, token_hash) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(name)
        .bind(role.as_str())
        .bind(&issued.lookup)
        .bind(&hash)
        .execute(db)
        .await?;
    Ok((id, issued.token))
}

/// What precedes the generated first admin token on the api's standard output.
pub const FIRST_ADMIN_BANNER: &str =
    "First admin token (shown once; sign in with it, then create your own): ";

/// With no bootstrap token configured: issues an admin token if no usable one exists (a
/// first start), and returns it to be shown once. Concurrent first starts of several apis
/// issue one token between them.
pub async fn ensure_first_admin(pool: &PgPool, cost: u32) -> anyhow::Result<Option<Secret>> {
    let mut tx = pool.begin().await?;
    // Serialises first starts; released at commit.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('flotilla:first-admin'))")
        .execute(&mut *tx)
        .await?;
    let any_admin: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM operator_tokens WHERE role = 'admin' AND NOT revoked)",
    )
    .fetch_one(&mut *tx)
    .await?;
    if any_admin {
        return Ok(None);
    }
    let issued = tokens::issue(tokens::OPERATOR_PREFIX);
    let hash = tokens::hash_secret(issued.secret.clone(), cost).await?;
    sqlx::query(
        "INSERT INTO operator_tokens (id, name, role, token_lookup, token_hash)
         VALUES ($1, 'first admin', 'admin', $2, $3)",
    )
    .bind(Uuid::new_v4())
    .bind(&issued.lookup)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!("first admin token issued and printed to standard output");
    Ok(Some(Secret::new(issued.token)))
}

/// Makes the configured bootstrap token the (single) bootstrap admin token.
/// Returns whether a different bootstrap token was replaced.
pub async fn ensure_bootstrap(pool: &PgPool, token: &str, cost: u32) -> anyhow::Result<bool> {
    let (lookup, secret) = tokens::operator_parts(token);
    let existing: Option<(String, String)> =
        sqlx::query_as("SELECT token_lookup, token_hash FROM operator_tokens WHERE bootstrap")
            .fetch_optional(pool)
            .await?;
    let replaced = existing.is_some();
    if let Some((stored_lookup, hash)) = existing {
        if stored_lookup == lookup && tokens::verify_secret(secret.clone(), hash).await {
            return Ok(false);
        }
    }
    let hash = tokens::hash_secret(secret, cost).await?;
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM operator_tokens WHERE bootstrap")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO operator_tokens (id, name, role, token_lookup, token_hash, bootstrap)
         VALUES ($1, 'bootstrap admin', 'admin', $2, $3, true)",
    )
    .bind(Uuid::new_v4())
    .bind(&lookup)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!("bootstrap admin token installed");
    Ok(replaced)
}

/// With no bootstrap token configured, none may stand: removes the one a previous
/// configuration installed (a release that shipped a well-known default installed one), and
/// its sessions with it. Returns whether there was one.
pub async fn remove_bootstrap(pool: &PgPool) -> anyhow::Result<bool> {
    let removed = sqlx::query("DELETE FROM operator_tokens WHERE bootstrap")
        .execute(pool)
        .await?
        .rows_affected();
    if removed > 0 {
        tracing::warn!("api.bootstrap_admin_token is unset: the bootstrap admin token it installed before is removed");
    }
    Ok(removed > 0)
}
