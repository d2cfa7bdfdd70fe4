//! The first operator credentials: the bootstrap admin token a deployment configures
//! (`api.bootstrap_admin_token`), or, without one, an admin token issued at the first start and
//! shown once.

use flotilla_shared::auth::tokens;
use flotilla_shared::secret::Secret;
use sqlx::PgPool;
use uuid::Uuid;

/// What precedes the generated first admin token on the api's standard output.
pub const FIRST_ADMIN_BANNER: &str =
    "First admin token (shown once; sign in with it, then create your own): ";

/// With no bootstrap token configured: issues an admin token if no usable one exists (a
/// first start), and returns it to be shown once. Concurrent first starts of several apis
/// issue one token between them.
pub async fn ensure_first_admin(pool: &PgPool, cost: u32) -> anyhow::Result<Option<Secret>> {
    let mut tx = pool.begin().await?;
    // Serialises first starts; released at commit.
    sqlx::query!("SELECT pg_advisory_xact_lock(hashtext('flotilla:first-admin'))")
        .execute(&mut *tx)
        .await?;
    let any_admin = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM operator_tokens WHERE role = 'admin' AND NOT revoked) AS "exists!""#
    )
    .fetch_one(&mut *tx)
    .await?;
    if any_admin {
        return Ok(None);
    }
    let issued = tokens::issue(tokens::OPERATOR_PREFIX);
    let hash = tokens::hash_secret(issued.secret.clone(), cost).await?;
    sqlx::query!(
        "INSERT INTO operator_tokens (id, name, role, token_lookup, token_hash)
         VALUES ($1, 'first admin', 'admin', $2, $3)",
        Uuid::new_v4(),
        issued.lookup,
        hash
    )
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
    let existing =
        sqlx::query!("SELECT token_lookup, token_hash FROM operator_tokens WHERE bootstrap")
            .fetch_optional(pool)
            .await?;
    let replaced = existing.is_some();
    if let Some(stored) = existing {
        if stored.token_lookup == lookup
            && tokens::verify_secret(secret.clone(), stored.token_hash).await
        {
            return Ok(false);
        }
    }
    let hash = tokens::hash_secret(secret, cost).await?;
    let mut tx = pool.begin().await?;
    sqlx::query!("DELETE FROM operator_tokens WHERE bootstrap")
        .execute(&mut *tx)
        .await?;
    sqlx::query!(
        "INSERT INTO operator_tokens (id, name, role, token_lookup, token_hash, bootstrap)
         VALUES ($1, 'bootstrap admin', 'admin', $2, $3, true)",
        Uuid::new_v4(),
        lookup,
        hash
    )
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
    let removed = sqlx::query!("DELETE FROM operator_tokens WHERE bootstrap")
        .execute(pool)
        .await?
        .rows_affected();
    if removed > 0 {
        tracing::warn!("api.bootstrap_admin_token is unset: the bootstrap admin token it installed before is removed");
    }
    Ok(removed > 0)
}
