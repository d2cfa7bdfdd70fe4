//! Node-token authentication shared by the api and the gateway.
//!
//! token → lookup id → one indexed row read (concurrent reads share one query, see
//! [`crate::batched_reads`]) → the token's SHA-256 compared in constant time with the stored
//! digest ([`tokens::node_digest`]). Nothing is cached: every check reads the row, so
//! revocation (row deleted) takes effect on the very next request in every process, and a check
//! costs the same microseconds in the api and every gateway, cold or warm, after any restart.
//!
//! A node enrolled before digests were stored still carries a bcrypt hash. Its token is
//! bcrypt-verified once, under the bcrypt concurrency cap and only for an address within its
//! failure budget, and the digest replaces the hash in the same step.

use super::bcrypt_gate::BcryptGate;
use super::tokens::{self, NODE_PREFIX};
use crate::batched_reads::{BatchedReads, Keyed};
use crate::limiter::{KeyedLimiter, OverLimit};
use crate::settings::AuthSettings;
use sqlx::PgPool;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use uuid::Uuid;

/// An authenticated node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthedNode {
    /// The node.
    pub node_id: Uuid,
    /// Its environment, as the database says now.
    pub environment_id: Uuid,
}

/// Why authentication failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Malformed, unknown, revoked or wrong token.
    #[error("invalid node token")]
    Invalid,
    /// Too many bcrypt verifications (of tokens still hashed with bcrypt) are queued; try again
    /// shortly.
    #[error("authentication is busy")]
    Busy,
    /// Postgres could not be asked.
    #[error("database unavailable")]
    Database(#[from] sqlx::Error),
}

/// Why a budgeted authentication failed.
#[derive(Debug, thiserror::Error)]
pub enum BudgetedError {
    /// The token is not valid, or it could not be checked.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The source address is over its failure budget and the token would need bcrypt; retry
    /// when its window ends.
    #[error("too many failed authentications")]
    OverBudget(OverLimit),
}

/// Counters exposed as metrics and used by tests.
#[derive(Debug, Default)]
pub struct AuthCounters {
    /// bcrypt verifications of node tokens (only those enrolled before digests were stored).
    pub bcrypt_verifications: AtomicU64,
    /// bcrypt hashes replaced by the token's digest after a successful verification.
    pub digests_adopted: AtomicU64,
}

/// Authenticates node tokens; cheap to clone.
#[derive(Clone)]
pub struct NodeAuthenticator {
    pool: PgPool,
    reads: BatchedReads<NodeCredentials>,
    bcrypt: BcryptGate,
    counters: Arc<AuthCounters>,
}

/// A node's credentials as stored: what a token is checked against.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NodeCredentials {
    /// The node.
    pub id: Uuid,
    /// Its environment.
    pub environment_id: Uuid,
    /// The lookup id it was read under.
    pub token_lookup: String,
    /// The SHA-256 of its token ([`tokens::node_digest`]).
    pub token_digest: Option<Vec<u8>>,
    /// The bcrypt hash of its token's secret, for a node enrolled before digests were stored
    /// and not verified since (exactly one of the two is set).
    pub token_hash: Option<String>,
}

impl Keyed for NodeCredentials {
    fn key(&self) -> &str {
        &self.token_lookup
    }
}

/// Reads the [`NodeCredentials`] of every lookup id in the array `$1` that exists. Run by
/// [`BatchedReads`] at run time, so not checked at compile time; the gateway's batched-read
/// tests and every node authentication cover it.
pub const CREDENTIALS_ANY: &str =
    "SELECT id, environment_id, token_lookup, token_digest, token_hash
FROM nodes WHERE token_lookup = ANY($1)";

/// The lookup id of a well-formed node token (the indexed `nodes.token_lookup`), so a caller
/// can read a node's credentials together with its own data in one query.
pub fn lookup_id(token: &str) -> Option<&str> {
    tokens::parse(NODE_PREFIX, token).map(|p| p.lookup)
}

impl NodeAuthenticator {
    /// Builds an authenticator over the nodes table, with a bcrypt gate of its own.
    pub fn new(pool: PgPool, settings: &AuthSettings) -> Self {
        Self::with_gate(pool, BcryptGate::new(settings))
    }

    /// Builds an authenticator whose bcrypt work waits at `gate` (shared with the process's
    /// other bcrypt checks).
    pub fn with_gate(pool: PgPool, gate: BcryptGate) -> Self {
        Self {
            reads: BatchedReads::new(pool.clone(), CREDENTIALS_ANY),
            pool,
            bcrypt: gate,
            counters: Arc::default(),
        }
    }

    /// The bcrypt gate its checks wait at.
    pub fn bcrypt_gate(&self) -> &BcryptGate {
        &self.bcrypt
    }

    /// Counters of bcrypt runs and replaced hashes.
    pub fn counters(&self) -> &Arc<AuthCounters> {
        &self.counters
    }

    /// Authenticates a token sent from `ip`, which has a budget of failed authentications
    /// (`failures`); see [`verify_budgeted`](Self::verify_budgeted).
    pub async fn authenticate_budgeted(
        &self,
        token: &str,
        ip: Option<IpAddr>,
        failures: &KeyedLimiter<IpAddr>,
    ) -> Result<AuthedNode, BudgetedError> {
        let row = match lookup_id(token) {
            Some(lookup) => self.read_lookup(lookup).await.map_err(AuthError::from)?,
            None => None,
        };
        self.verify_budgeted(token, row.as_ref(), ip, failures)
            .await
    }

    /// Like [`verify`](Self::verify), on behalf of a source address with a budget of failed
    /// authentications: each failure counts against `ip`, and an address over its budget gets
    /// no bcrypt work (a token still hashed with bcrypt gets [`BudgetedError::OverBudget`]),
    /// so a flood of wrong secrets costs no CPU. Digest checks are never refused.
    pub async fn verify_budgeted(
        &self,
        token: &str,
        row: Option<&NodeCredentials>,
        ip: Option<IpAddr>,
        failures: &KeyedLimiter<IpAddr>,
    ) -> Result<AuthedNode, BudgetedError> {
        let over = ip.and_then(|ip| failures.over_limit(&ip));
        match self.verify(token, row, over.is_none()).await {
            Ok(Some(node)) => Ok(node),
            // bcrypt is refused only to an address over its budget.
            Ok(None) => Err(match over {
                Some(over) => BudgetedError::OverBudget(over),
                None => BudgetedError::Auth(AuthError::Invalid),
            }),
            Err(AuthError::Invalid) => {
                if let Some(ip) = ip {
                    let _ = failures.hit(ip);
                }
                Err(BudgetedError::Auth(AuthError::Invalid))
            }
            Err(e) => Err(BudgetedError::Auth(e)),
        }
    }

    /// The credentials stored under a lookup id, read together with concurrent requests'.
    pub async fn read_lookup(&self, lookup: &str) -> Result<Option<NodeCredentials>, sqlx::Error> {
        self.reads.read(lookup).await
    }

    /// Checks `token` against `row`, the credentials stored under its lookup id (`None`: no
    /// such node), read by the caller. `Ok(None)`: the row still holds a bcrypt hash and
    /// `allow_bcrypt` is false.
    pub async fn verify(
        &self,
        token: &str,
        row: Option<&NodeCredentials>,
        allow_bcrypt: bool,
    ) -> Result<Option<AuthedNode>, AuthError> {
        let parsed = tokens::parse(NODE_PREFIX, token).ok_or(AuthError::Invalid)?;
        // A row read under another lookup id never vouches for this token.
        let row = row
            .filter(|r| r.token_lookup == parsed.lookup)
            .ok_or(AuthError::Invalid)?;
        let node = AuthedNode {
            node_id: row.id,
            environment_id: row.environment_id,
        };
        if let Some(digest) = &row.token_digest {
            return match tokens::node_digest_matches(token, digest) {
                true => Ok(Some(node)),
                false => Err(AuthError::Invalid),
            };
        }
        if !allow_bcrypt {
            return Ok(None);
        }
        self.adopt_digest(token, parsed.secret, row).await?;
        Ok(Some(node))
    }

    /// For a row that held a bcrypt hash when it was read: verifies the secret against it
    /// (under the bcrypt cap) and stores the token's digest in its place.
    async fn adopt_digest(
        &self,
        token: &str,
        secret: &str,
        row: &NodeCredentials,
    ) -> Result<(), AuthError> {
        let adopt = self.adopt_digest_holding_permit(token, secret, row);
        self.bcrypt.run(adopt).await.map_err(|_| AuthError::Busy)?
    }

    async fn adopt_digest_holding_permit(
        &self,
        token: &str,
        secret: &str,
        row: &NodeCredentials,
    ) -> Result<(), AuthError> {
        // A concurrent check of the same token (a poll, a heartbeat and a handshake arrive
        // together after an upgrade) may have stored the digest while this one waited.
        let fresh = self
            .read_lookup(&row.token_lookup)
            .await?
            .filter(|fresh| fresh.id == row.id)
            .ok_or(AuthError::Invalid)?;
        let hash = match (&fresh.token_digest, fresh.token_hash) {
            (Some(digest), _) => {
                return match tokens::node_digest_matches(token, digest) {
                    true => Ok(()),
                    false => Err(AuthError::Invalid),
                };
            }
            (None, Some(hash)) => hash,
            (None, None) => return Err(AuthError::Invalid),
        };
        self.counters
            .bcrypt_verifications
            .fetch_add(1, Ordering::Relaxed);
        if !tokens::verify_secret(secret.to_owned(), hash.clone()).await {
            return Err(AuthError::Invalid);
        }
        // Only over the hash just verified: a revocation meanwhile deleted the row and a
        // concurrent check wrote the same digest.
        let digest = tokens::node_digest(token);
        let replaced = sqlx::query!(
            "UPDATE nodes SET token_digest = $3, token_hash = NULL WHERE id = $1 AND token_hash = $2",
            row.id,
            hash,
            digest.as_slice()
        )
        .execute(&self.pool)
        .await?;
        self.counters
            .digests_adopted
            .fetch_add(replaced.rows_affected(), Ordering::Relaxed);
        Ok(())
    }
}
