//! Per-second budgets shared by every api instance, counted in Redis: a fixed one-second
//! window per key (a tap's event batches, a node's log batches).

use flotilla_shared::redis_conn::Redis;

/// Counts one event against `key`'s budget of `limit` a second; false once it is spent.
pub async fn admit(redis: &Redis, key: &str, limit: i64) -> redis::RedisResult<bool> {
    let window = format!("{key}:rate:{}", chrono::Utc::now().timestamp());
    let mut pipe = redis::pipe();
    pipe.cmd("INCR").arg(&window);
    pipe.cmd("EXPIRE").arg(&window).arg(2).ignore();
    let (n,): (i64,) = redis.query(&pipe).await?;
    Ok(n <= limit)
}
