//! Fleet-page sessions, kept on the server: the browser's `HttpOnly` cookie holds a random
//! 256-bit session id, the database its SHA-256 with the operator token it was opened with and
//! when it expires. A session ends at sign-out, at expiry (`api.session_ttl_secs`) or when its
//! token is revoked, whatever the browser keeps; the cookie never holds the token itself.

use crate::operator_auth::Role;
use axum::http::request::Parts;
use flotilla_shared::tokens;
use rand::RngCore;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// Name of the session cookie.
pub const COOKIE: &str = "flotilla_session";

/// The server's handle on a session: the SHA-256 of its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    /// The key of a session id as the cookie carries it (64 hex characters); `None` for
    /// anything else, which no session can match.
    pub fn of(id: &str) -> Option<Self> {
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(tokens::sha256(&id.to_ascii_lowercase())))
    }
}

/// A session that stands: the operator token behind it and that token's role.
#[derive(Debug, Clone, Copy)]
pub struct Session {
    /// Its key.
    pub key: SessionKey,
    /// The operator token it was opened with.
    pub token_id: Uuid,
    /// That token's role.
    pub role: Role,
}

/// The session key in the request's cookie, if it carries a well-formed one.
pub fn from_cookie(parts: &Parts) -> Option<SessionKey> {
    parts
        .headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .find_map(|(_, value)| SessionKey::of(value))
}

/// Opens a session for the operator token `token_id`, valid for `ttl`; returns the id for the
/// cookie (shown to this browser only; the database keeps its digest).
pub async fn open(pool: &PgPool, token_id: Uuid, ttl: Duration) -> Result<String, sqlx::Error> {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let id = hex::encode(bytes);
    let key = SessionKey::of(&id).expect("64 hex characters");
    sqlx::query(
        "INSERT INTO operator_sessions (id_digest, token_id, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3))",
    )
    .bind(key.0.as_slice())
    .bind(token_id)
    .bind(ttl.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(id)
}

/// The session under `key` if it stands: not ended, not expired, its token not revoked.
pub async fn find(pool: &PgPool, key: SessionKey) -> Result<Option<Session>, sqlx::Error> {
    let row: Option<(Uuid, String)> = sqlx::query_as(
        "SELECT t.id, t.role FROM operator_sessions s
         JOIN operator_tokens t ON t.id = s.token_id
         WHERE s.id_digest = $1 AND s.expires_at > now() AND NOT t.revoked",
    )
    .bind(key.0.as_slice())
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(token_id, role)| {
        Some(Session {
            key,
            token_id,
            role: Role::parse(&role)?,
        })
    }))
}

/// Ends the session under `key`; true if there was one.
pub async fn end(pool: &PgPool, key: SessionKey) -> Result<bool, sqlx::Error> {
    let ended = sqlx::query("DELETE FROM operator_sessions WHERE id_digest = $1")
        .bind(key.0.as_slice())
        .execute(pool)
        .await?;
    Ok(ended.rows_affected() > 0)
}

/// Ends every session opened with the operator token `token_id` (at its revocation).
pub async fn end_all_of(db: impl sqlx::PgExecutor<'_>, token_id: Uuid) -> Result<u64, sqlx::Error> {
    let ended = sqlx::query("DELETE FROM operator_sessions WHERE token_id = $1")
        .bind(token_id)
        .execute(db)
        .await?;
    Ok(ended.rows_affected())
}

/// Deletes expired sessions (they already fail [`find`]); run by the sweep.
pub async fn purge_expired(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let purged = sqlx::query("DELETE FROM operator_sessions WHERE expires_at <= now()")
        .execute(pool)
        .await?;
    Ok(purged.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::SessionKey;

    #[test]
    fn only_64_hex_characters_make_a_key() {
        let id = "ab".repeat(32);
        assert!(SessionKey::of(&id).is_some());
        assert_eq!(SessionKey::of(&id), SessionKey::of(&id.to_uppercase()));
        for bad in ["", "abc", &"zz".repeat(32), &"ab".repeat(33)] {
            assert!(SessionKey::of(bad).is_none(), "{bad}");
        }
    }
}
