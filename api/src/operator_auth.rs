//! Operator tokens: roles, verification with a warm cache, and the bootstrap admin token.

use crate::error::ApiError;
use flotilla_shared::settings::AuthSettings;
use flotilla_shared::tokens;
use moka::future::Cache;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
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

    fn parse(s: &str) -> Option<Self> {
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

/// Verifies operator tokens; a warm hit re-reads the row (so revocation is immediate) but
/// runs no bcrypt.
#[derive(Clone)]
pub struct OperatorAuthenticator {
    pool: PgPool,
    cache: Cache<[u8; 32], (Uuid, Arc<str>)>,
}

impl OperatorAuthenticator {
    /// Builds the authenticator.
    pub fn new(pool: PgPool, settings: &AuthSettings) -> Self {
        Self {
            pool,
            cache: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(settings.cache_ttl_secs))
                .build(),
        }
    }

    /// Returns the token's id and role, or 401.
    pub async fn authenticate(&self, token: &str) -> Result<(Uuid, Role), ApiError> {
        if token.is_empty() || token.len() > 512 {
            return Err(ApiError::Unauthorized("Unauthorized"));
        }
        let key = tokens::sha256(token);
        if let Some((id, hash)) = self.cache.get(&key).await {
            let row: Option<TokenRow> = sqlx::query_as(
                "SELECT id, role, token_hash FROM operator_tokens WHERE id = $1 AND NOT revoked",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = row.filter(|r| *r.token_hash == *hash) {
                return Ok((row.id, role_of(&row)?));
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
        for row in rows {
            if tokens::verify_secret(secret.clone(), row.token_hash.clone()).await {
                self.cache
                    .insert(key, (row.id, Arc::from(row.token_hash.as_str())))
                    .await;
                return Ok((row.id, role_of(&row)?));
            }
        }
        Err(ApiError::Unauthorized("Unauthorized"))
    }
}

fn role_of(row: &TokenRow) -> Result<Role, ApiError> {
    Role::parse(&row.role).ok_or_else(|| anyhow::anyhow!("unknown role in database").into())
}

/// Issues a new operator token; returns `(id, token)` (the token is shown once).
pub async fn create_token(
    pool: &PgPool,
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
        .execute(pool)
        .await?;
    Ok((id, issued.token))
}

/// Makes the configured bootstrap token the (single) bootstrap admin token.
pub async fn ensure_bootstrap(pool: &PgPool, token: &str, cost: u32) -> anyhow::Result<()> {
    let (lookup, secret) = tokens::operator_parts(token);
    let existing: Option<(String, String)> =
        sqlx::query_as("SELECT token_lookup, token_hash FROM operator_tokens WHERE bootstrap")
            .fetch_optional(pool)
            .await?;
    if let Some((stored_lookup, hash)) = existing {
        if stored_lookup == lookup && tokens::verify_secret(secret.clone(), hash).await {
            return Ok(());
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
    Ok(())
}
