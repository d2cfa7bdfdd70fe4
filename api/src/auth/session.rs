//! Fleet-page sessions, kept on the server: the browser's `HttpOnly` cookie holds a random
//! 256-bit session id, the database its SHA-256 with the operator token it was opened with and
//! when it expires. A session ends at sign-out, at expiry (`api.session_ttl_secs`) or when its
//! token is revoked, whatever the browser keeps; the cookie never holds the token itself.
//!
//! Here too: reading the cookie (with the `cookie` crate), the cookie a sign-in sets and a
//! sign-out clears, and the [`Operator`] a request with the cookie stands for.

use super::operator::{Operator, Role};
use crate::error::ApiError;
use crate::state::AppState;
use axum::http::header::COOKIE as COOKIE_HEADER;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use cookie::{Cookie, SameSite};
use flotilla_shared::auth::tokens;
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
pub fn from_cookie(headers: &HeaderMap) -> Option<SessionKey> {
    headers
        .get_all(COOKIE_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .filter(|c| c.name() == COOKIE)
        .find_map(|c| SessionKey::of(c.value()))
}

/// The `Set-Cookie` value that hands the browser its session id for `ttl`: `HttpOnly`,
/// `SameSite=Strict`, and `Secure` when the request came over HTTPS (through a balancer).
pub fn set_cookie(id: &str, ttl: Duration, request: &HeaderMap) -> HeaderValue {
    let max_age = cookie::time::Duration::seconds(ttl.as_secs().try_into().unwrap_or(i64::MAX));
    let cookie = Cookie::build((COOKIE, id))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .max_age(max_age)
        .secure(is_https(request))
        .build();
    HeaderValue::from_str(&cookie.to_string()).expect("a session cookie is ASCII")
}

/// The `Set-Cookie` value that makes the browser drop its session cookie.
pub fn clear_cookie(request: &HeaderMap) -> HeaderValue {
    set_cookie("", Duration::ZERO, request)
}

fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// The operator a request with the session cookie stands for; 401 without a standing
/// session, 403 for a write that may be forged ([`crate::same_origin`]).
pub async fn operator(parts: &Parts, state: &AppState) -> Result<Operator, ApiError> {
    let key = from_cookie(&parts.headers).ok_or(ApiError::Unauthorized("Unauthorized"))?;
    // One indexed read of a 256-bit id's digest, never a slow hash: never rate-limited.
    let session = find(&state.pool, key)
        .await?
        .ok_or(ApiError::Unauthorized("Unauthorized"))?;
    crate::same_origin::check_cookie_write(&parts.method, &parts.headers)?;
    Ok(Operator {
        token_id: session.token_id,
        role: session.role,
        session: Some(key),
    })
}

/// Opens a session for the operator token `token_id`, valid for `ttl`; returns the id for the
/// cookie (shown to this browser only; the database keeps its digest).
pub async fn open(pool: &PgPool, token_id: Uuid, ttl: Duration) -> Result<String, sqlx::Error> {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let id = hex::encode(bytes);
    let key = SessionKey::of(&id).expect("64 hex characters");
    sqlx::query!(
        "INSERT INTO operator_sessions (id_digest, token_id, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3))",
        key.0.as_slice(),
        token_id,
        ttl.as_secs_f64()
    )
    .execute(pool)
    .await?;
    Ok(id)
}

/// The session under `key` if it stands: not ended, not expired, its token not revoked.
pub async fn find(pool: &PgPool, key: SessionKey) -> Result<Option<Session>, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT t.id, t.role FROM operator_sessions s
         JOIN operator_tokens t ON t.id = s.token_id
         WHERE s.id_digest = $1 AND s.expires_at > now() AND NOT t.revoked",
        key.0.as_slice()
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|row| {
        Some(Session {
            key,
            token_id: row.id,
            role: Role::parse(&row.role)?,
        })
    }))
}

/// Ends the session under `key`; true if there was one.
pub async fn end(pool: &PgPool, key: SessionKey) -> Result<bool, sqlx::Error> {
    let ended = sqlx::query!(
        "DELETE FROM operator_sessions WHERE id_digest = $1",
        key.0.as_slice()
    )
    .execute(pool)
    .await?;
    Ok(ended.rows_affected() > 0)
}

/// Ends every session opened with the operator token `token_id` (at its revocation).
pub async fn end_all_of(db: impl sqlx::PgExecutor<'_>, token_id: Uuid) -> Result<u64, sqlx::Error> {
    let ended = sqlx::query!(
        "DELETE FROM operator_sessions WHERE token_id = $1",
        token_id
    )
    .execute(db)
    .await?;
    Ok(ended.rows_affected())
}

/// Deletes expired sessions (they already fail [`find`]); run by the sweep.
pub async fn purge_expired(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let purged = sqlx::query!("DELETE FROM operator_sessions WHERE expires_at <= now()")
        .execute(pool)
        .await?;
    Ok(purged.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_64_hex_characters_make_a_key() {
        let id = "ab".repeat(32);
        assert!(SessionKey::of(&id).is_some());
        assert_eq!(SessionKey::of(&id), SessionKey::of(&id.to_uppercase()));
        for bad in ["", "abc", &"zz".repeat(32), &"ab".repeat(33)] {
            assert!(SessionKey::of(bad).is_none(), "{bad}");
        }
    }

    fn cookies(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(COOKIE_HEADER, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let id = "ab".repeat(32);
        let key = SessionKey::of(&id);
        let with = |v: &str| from_cookie(&cookies(&[v]));
        assert_eq!(with(&format!("{COOKIE}={id}")), key);
        assert_eq!(with(&format!("theme=dark; {COOKIE}={id}; lang=en")), key);
        assert_eq!(
            from_cookie(&cookies(&["theme=dark", &format!("{COOKIE}={id}")])),
            key
        );
        // A malformed one is skipped for a well-formed one of the same name.
        assert_eq!(with(&format!("{COOKIE}=junk; {COOKIE}={id}")), key);
        assert_eq!(with(&format!("other_{COOKIE}={id}")), None);
        assert_eq!(with(&format!("{COOKIE}=abc")), None);
        assert_eq!(from_cookie(&HeaderMap::new()), None);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_behind_https() {
        let plain = HeaderMap::new();
        let set = set_cookie("abc", Duration::from_secs(3600), &plain);
        let set = set.to_str().unwrap();
        assert!(set.starts_with(&format!("{COOKIE}=abc;")), "{set}");
        for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=3600"] {
            assert!(set.contains(part), "{set} lacks {part}");
        }
        assert!(!set.contains("Secure"), "{set}");
        let mut https = HeaderMap::new();
        https.insert("x-forwarded-proto", "HTTPS".parse().unwrap());
        let cleared = clear_cookie(&https);
        let cleared = cleared.to_str().unwrap();
        assert!(cleared.starts_with(&format!("{COOKIE}=;")), "{cleared}");
        assert!(
            cleared.contains("Max-Age=0") && cleared.contains("Secure"),
            "{cleared}"
        );
    }
}
