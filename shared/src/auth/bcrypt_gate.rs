//! The one cap on concurrent bcrypt work in a process: node tokens still hashed with bcrypt,
//! enrollment tokens and operator tokens all wait for the same few permits, so no mix of
//! requests can take more than `auth.max_concurrent_bcrypt` cores.

use super::tokens;
use crate::settings::AuthSettings;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// No permit came free within `auth.bcrypt_queue_timeout_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bcrypt is busy")]
pub struct Busy;

/// Permits for bcrypt work; cheap to clone (clones share the permits).
#[derive(Clone)]
pub struct BcryptGate {
    permits: Arc<Semaphore>,
    wait: Duration,
    runs: Arc<AtomicU64>,
}

impl BcryptGate {
    /// `auth.max_concurrent_bcrypt` permits, each waited for at most
    /// `auth.bcrypt_queue_timeout_ms`.
    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(settings.max_concurrent_bcrypt)),
            wait: Duration::from_millis(settings.bcrypt_queue_timeout_ms),
            runs: Arc::default(),
        }
    }

    /// bcrypt verifications run by [`verify`](Self::verify) so far.
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Runs `work` while holding a permit.
    pub async fn run<T>(&self, work: impl std::future::Future<Output = T>) -> Result<T, Busy> {
        let _permit = tokio::time::timeout(self.wait, self.permits.acquire())
            .await
            .map_err(|_| Busy)?
            .expect("semaphore never closes");
        Ok(work.await)
    }

    /// Verifies `secret` against a bcrypt `hash` under a permit.
    pub async fn verify(&self, secret: String, hash: String) -> Result<bool, Busy> {
        self.run(async {
            self.runs.fetch_add(1, Ordering::Relaxed);
            tokens::verify_secret(secret, hash).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(permits: usize, wait_ms: u64) -> AuthSettings {
        AuthSettings {
            bcrypt_cost: 4,
            cache_ttl_secs: 60,
            max_concurrent_bcrypt: permits,
            bcrypt_queue_timeout_ms: wait_ms,
        }
    }

    #[tokio::test]
    async fn a_full_gate_answers_busy_after_its_wait() {
        let gate = BcryptGate::new(&settings(1, 20));
        let (hold, release) = tokio::sync::oneshot::channel::<()>();
        let held = gate.clone();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let holder = tokio::spawn(async move {
            held.run(async {
                started_tx.send(()).unwrap();
                release.await.ok();
            })
            .await
        });
        started.await.unwrap();
        assert_eq!(gate.run(async {}).await, Err(Busy));
        hold.send(()).unwrap();
        holder.await.unwrap().unwrap();
        assert_eq!(gate.run(async { 7 }).await, Ok(7));
    }
}
