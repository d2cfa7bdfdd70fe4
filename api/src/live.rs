//! Operator streams that follow one Redis channel (a node's log lines, a tap's events): each
//! open stream holds its own subscription, so every api instance serves every stream.

use crate::error::{ApiError, Result};
use crate::state::AppState;
use flotilla_shared::redis_conn::Redis;
use futures_util::{Stream, StreamExt};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Live streams one api serves at once; each holds a Redis connection.
pub const MAX_STREAMS: usize = 256;

/// The slots for live streams; cheap to clone.
#[derive(Clone)]
pub struct LiveStreams(Arc<Semaphore>);

impl Default for LiveStreams {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(MAX_STREAMS)))
    }
}

/// Payloads published on `channel` from now on, as long as the subscription lasts; the stream
/// ends when Redis drops it (the operator's client reconnects). 503 when every slot is taken or
/// Redis cannot be reached.
pub async fn follow(
    state: &AppState,
    channel: String,
) -> Result<impl Stream<Item = String> + Send + 'static> {
    let permit: OwnedSemaphorePermit = state
        .live
        .0
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Busy)?;
    let pubsub = subscribe(&state.redis, &channel).await?;
    Ok(pubsub.into_on_message().map(move |msg| {
        // The permit lives as long as the stream.
        let _ = &permit;
        msg.get_payload::<String>().unwrap_or_default()
    }))
}

async fn subscribe(redis: &Redis, channel: &str) -> Result<redis::aio::PubSub> {
    let attempt = async {
        let mut pubsub = redis.client().get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    match tokio::time::timeout(redis.timeout(), attempt).await {
        Ok(Ok(pubsub)) => Ok(pubsub),
        Ok(Err(e)) => Err(ApiError::Redis(e)),
        Err(_) => Err(ApiError::Redis(redis::RedisError::from((
            redis::ErrorKind::IoError,
            "timed out subscribing",
        )))),
    }
}
