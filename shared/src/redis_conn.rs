//! A Redis command connection made on first use and reused.
//!
//! Services start while Redis is down; every call then fails fast with a timeout instead of
//! hanging a request, and the connection is retried on the next call.

use crate::settings::RedisSettings;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// A lazily connected, self-reconnecting Redis connection; cheap to clone.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    conn: Arc<OnceCell<ConnectionManager>>,
    timeout: Duration,
}

impl Redis {
    /// Parses the URL; no connection is made yet.
    pub fn new(settings: &RedisSettings) -> redis::RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(settings.url.expose())?,
            conn: Arc::default(),
            timeout: Duration::from_millis(settings.command_timeout_ms),
        })
    }

    /// The Redis client (for dedicated connections such as pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Timeout applied to each command.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The shared connection, connecting first if needed.
    pub async fn conn(&self) -> redis::RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            // Fail fast: callers treat Redis as optional and retry on their next call.
            .set_number_of_retries(0);
        let conn = self
            .conn
            .get_or_try_init(|| self.client.get_connection_manager_with_config(config))
            .await?;
        Ok(conn.clone())
    }

    /// Runs a command or pipeline with the timeout applied.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &(impl ConnectionLikeQuery + ?Sized),
    ) -> redis::RedisResult<T> {
        let attempt = async {
            let mut conn = self.conn().await?;
            cmd.run(&mut conn).await
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result.and_then(|v| redis::from_redis_value(&v)),
            Err(_) => Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "redis command timed out",
            ))),
        }
    }
}

/// A command or a pipeline.
pub trait ConnectionLikeQuery: Sync {
    /// Sends it and returns the raw reply.
    fn run<'a>(
        &'a self,
        conn: &'a mut ConnectionManager,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = redis::RedisResult<redis::Value>> + Send + 'a>,
    >;
}

impl ConnectionLikeQuery for redis::Cmd {
    fn run<'a>(
        &'a self,
        conn: &'a mut ConnectionManager,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = redis::RedisResult<redis::Value>> + Send + 'a>,
    > {
        Box::pin(self.query_async(conn))
    }
}

impl ConnectionLikeQuery for redis::Pipeline {
    fn run<'a>(
        &'a self,
        conn: &'a mut ConnectionManager,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = redis::RedisResult<redis::Value>> + Send + 'a>,
    > {
        Box::pin(self.query_async(conn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[tokio::test]
    async fn a_down_redis_fails_fast() {
        let redis = Redis::new(&RedisSettings {
            url: Secret::new("redis://127.0.0.1:1"),
            command_timeout_ms: 500,
        })
        .unwrap();
        // Bounded by the command timeout, however the connection attempt behaves.
        let started = tokio::time::Instant::now();
        for _ in 0..3 {
            assert!(redis.query::<String>(&redis::cmd("PING")).await.is_err());
        }
        assert!(started.elapsed() < std::time::Duration::from_millis(3 * 500 + 300));
    }
}
