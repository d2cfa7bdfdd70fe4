//! Node-token authentication shared by the api and the gateway.
//!
//! token → lookup id → one indexed row read (concurrent reads share one query, see
//! [`crate::batched_reads`]) → bcrypt only when cold. The warm cache is keyed by the token's
//! SHA-256 and holds the bcrypt hash it was verified against; a hit counts only while the row
//! still carries that hash, so rotation and revocation (row deleted) take effect on the very
//! next request. Concurrent cold requests for one token share one bcrypt run, and with Redis
//! sharing enabled a token verified anywhere in the fleet is not bcrypt-verified again until
//! the shared entry expires.

use crate::batched_reads::{BatchedReads, Keyed};
use crate::channels::verified_token_key;
use crate::rate_limit::RateLimiter;
use crate::redis_conn::Redis;
use crate::settings::AuthSettings;
use crate::tokens::{self, NODE_PREFIX};
use moka::future::Cache;
use sqlx::PgPool;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
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
    /// Too many cold verifications are queued; try again shortly.
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
    /// after this long.
    #[error("too many failed authentications")]
    OverBudget(Duration),
}

/// Counters exposed as metrics and used by tests.
#[derive(Debug, Default)]
pub struct AuthCounters {
    /// bcrypt verifications performed by this process.
    pub bcrypt_verifications: AtomicU64,
    /// Requests answered from the local warm cache.
    pub warm_hits: AtomicU64,
    /// Requests accepted on another service's shared verification.
    pub shared_hits: AtomicU64,
}

/// Redis-backed record of verified tokens, shared across the fleet.
#[derive(Clone)]
pub struct SharedVerifications {
    redis: Redis,
    ttl_secs: u64,
}

impl SharedVerifications {
    /// Shares verifications through `redis`, each valid for `ttl_secs`.
    pub fn new(redis: Redis, ttl_secs: u64) -> Self {
        Self { redis, ttl_secs }
    }

    async fn is_verified(&self, key: &str, fingerprint: &str) -> bool {
        let got: redis::RedisResult<Option<String>> =
            self.redis.query(redis::cmd("GET").arg(key)).await;
        matches!(got, Ok(Some(v)) if v == fingerprint)
    }

    async fn mark_verified(&self, key: &str, fingerprint: &str) {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(fingerprint).arg("EX").arg(self.ttl_secs);
        if let Err(e) = self.redis.query::<()>(&cmd).await {
            tracing::debug!(error = %e, "could not share a token verification through Redis");
        }
    }
}

/// Authenticates node tokens; cheap to clone.
#[derive(Clone)]
pub struct NodeAuthenticator {
    reads: BatchedReads<NodeCredentials>,
    cache: Cache<[u8; 32], Arc<str>>,
    bcrypt_permits: Arc<Semaphore>,
    bcrypt_wait: Duration,
    counters: Arc<AuthCounters>,
    shared: Option<SharedVerifications>,
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
    /// The bcrypt hash of its token's secret.
    pub token_hash: String,
}

impl Keyed for NodeCredentials {
    fn key(&self) -> &str {
        &self.token_lookup
    }
}

/// Reads the [`NodeCredentials`] of every lookup id in the array `$1` that exists.
pub const CREDENTIALS_ANY: &str =
    "SELECT id, environment_id, token_lookup, token_hash FROM nodes WHERE token_lookup = ANY($1)";

/// The lookup id of a well-formed node token (the indexed `nodes.token_lookup`), so a caller
/// can read a node's credentials together with its own data in one query.
pub fn lookup_id(token: &str) -> Option<&str> {
    tokens::parse(NODE_PREFIX, token).map(|p| p.lookup)
}

impl NodeAuthenticator {
    /// Builds an authenticator over the nodes table.
    pub fn new(pool: PgPool, settings: &AuthSettings, shared: Option<SharedVerifications>) -> Self {
        Self {
            reads: BatchedReads::new(pool, CREDENTIALS_ANY),
            cache: Cache::builder()
                .max_capacity(settings.cache_capacity)
                .time_to_live(Duration::from_secs(settings.cache_ttl_secs))
                .build(),
            bcrypt_permits: Arc::new(Semaphore::new(settings.max_concurrent_bcrypt)),
            bcrypt_wait: Duration::from_millis(settings.bcrypt_queue_timeout_ms),
            counters: Arc::default(),
            shared,
        }
    }

    /// Counters of bcrypt runs and cache hits.
    pub fn counters(&self) -> &Arc<AuthCounters> {
        &self.counters
    }

    /// Authenticates a bearer token.
    pub async fn authenticate(&self, token: &str) -> Result<AuthedNode, AuthError> {
        let row = self.read(token).await?;
        // With cold verification allowed, `None` cannot come back; treat it as a failure anyway.
        self.verify(token, row.as_ref(), true)
            .await?
            .ok_or(AuthError::Invalid)
    }

    /// Authenticates a token sent from `ip`, which has a budget of failed authentications
    /// (`failures`); see [`verify_budgeted`](Self::verify_budgeted).
    pub async fn authenticate_budgeted(
        &self,
        token: &str,
        ip: Option<IpAddr>,
        failures: &RateLimiter,
    ) -> Result<AuthedNode, BudgetedError> {
        let row = self.read(token).await.map_err(BudgetedError::Auth)?;
        self.verify_budgeted(token, row.as_ref(), ip, failures)
            .await
    }

    /// Like [`verify`](Self::verify), on behalf of a source address with a budget of failed
    /// authentications: each failure counts against `ip`, and an address over its budget gets
    /// no bcrypt work, so a flood of wrong secrets costs no CPU while its warm (already
    /// verified) agents keep working.
    pub async fn verify_budgeted(
        &self,
        token: &str,
        row: Option<&NodeCredentials>,
        ip: Option<IpAddr>,
        failures: &RateLimiter,
    ) -> Result<AuthedNode, BudgetedError> {
        let allow_cold = !ip.is_some_and(|ip| failures.exhausted(ip));
        match self.verify(token, row, allow_cold).await {
            Ok(Some(node)) => Ok(node),
            Ok(None) => Err(BudgetedError::OverBudget(failures.retry_after())),
            Err(AuthError::Invalid) => {
                if let Some(ip) = ip {
                    let _ = failures.hit(ip);
                }
                Err(BudgetedError::Auth(AuthError::Invalid))
            }
            Err(e) => Err(BudgetedError::Auth(e)),
        }
    }

    /// For a token verified before (warm in this process): its lookup id and the bcrypt hash it
    /// was verified against. A caller may then act in one statement on the row carrying exactly
    /// that lookup id and hash, which proves the token as [`verify`](Self::verify) would;
    /// revocation (row gone) and rotation (hash changed) match no row.
    pub async fn warm_hash<'t>(&self, token: &'t str) -> Option<(&'t str, Arc<str>)> {
        let lookup = lookup_id(token)?;
        let hash = self.cache.get(&tokens::sha256(token)).await?;
        Some((lookup, hash))
    }

    /// The credentials stored under the token's lookup id (`None` for a malformed token too).
    async fn read(&self, token: &str) -> Result<Option<NodeCredentials>, AuthError> {
        let Some(lookup) = lookup_id(token) else {
            return Ok(None);
        };
        Ok(self.read_lookup(lookup).await?)
    }

    /// The credentials stored under a lookup id, read together with concurrent requests'.
    pub async fn read_lookup(&self, lookup: &str) -> Result<Option<NodeCredentials>, sqlx::Error> {
        self.reads.read(lookup).await
    }

    /// Checks `token` against `row`, the credentials stored under its lookup id (`None`: no
    /// such node), read by the caller: the same checks as [`authenticate`](Self::authenticate),
    /// minus the read. `Ok(None)`: the token is not warm and `allow_cold` is false.
    pub async fn verify(
        &self,
        token: &str,
        row: Option<&NodeCredentials>,
        allow_cold: bool,
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
        let key = tokens::sha256(token);

        if let Some(hash) = self.cache.get(&key).await {
            if *hash == *row.token_hash {
                self.counters.warm_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(node));
            }
            // The row's hash changed since (rotation): the entry is stale.
            self.cache.invalidate(&key).await;
        }
        if !allow_cold {
            return Ok(None);
        }

        let secret = parsed.secret.to_owned();
        let hash: Arc<str> = Arc::from(row.token_hash.as_str());
        let verified = self
            .cache
            .try_get_with(key, self.verify_cold(key, secret, hash.clone()))
            .await
            .map_err(|e| match &*e {
                AuthError::Busy => AuthError::Busy,
                _ => AuthError::Invalid,
            })?;
        if *verified == *hash {
            Ok(Some(node))
        } else {
            Err(AuthError::Invalid)
        }
    }

    /// The cold path: a shared verification from Redis, else bcrypt under the semaphore.
    async fn verify_cold(
        &self,
        key: [u8; 32],
        secret: String,
        hash: Arc<str>,
    ) -> Result<Arc<str>, AuthError> {
        let shared_key = verified_token_key(&key);
        let fingerprint = tokens::sha256_hex(hash.as_bytes());
        if let Some(shared) = &self.shared {
            if shared.is_verified(&shared_key, &fingerprint).await {
                self.counters.shared_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(hash);
            }
        }
        let _permit = tokio::time::timeout(self.bcrypt_wait, self.bcrypt_permits.acquire())
            .await
            .map_err(|_| AuthError::Busy)?
            .expect("semaphore never closes");
        self.counters
            .bcrypt_verifications
            .fetch_add(1, Ordering::Relaxed);
        if !tokens::verify_secret(secret, hash.to_string()).await {
            return Err(AuthError::Invalid);
        }
        if let Some(shared) = &self.shared {
            shared.mark_verified(&shared_key, &fingerprint).await;
        }
        Ok(hash)
    }
}
