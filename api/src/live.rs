//! Operator streams that follow one Redis channel (a node's log lines, a tap's events): each
//! open stream holds its own subscription, so every api instance serves every stream.
//!
//! The subscription is read into a bounded buffer: a viewer that stops reading has its stream
//! ended once [`BUFFER`] messages or [`BUFFER_BYTES`] wait for it, so a slow client never
//! grows the api's memory.

use crate::auth::Operator;
use crate::error::{ApiError, Result};
use crate::state::AppState;
use flotilla_shared::redis_conn::Redis;
use futures_util::{Stream, StreamExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// Live streams one api serves at once; each holds a Redis connection.
pub const MAX_STREAMS: usize = 256;
/// Messages that may wait for one viewer before its stream is ended.
pub const BUFFER: usize = 256;
/// Bytes that may wait for one viewer before its stream is ended.
pub const BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// The keepalive of an operator's live stream; it comes as often as the stream re-checks its
/// credential (`api.live_recheck_ms`).
pub fn keep_alive(state: &AppState) -> axum::response::sse::KeepAlive {
    axum::response::sse::KeepAlive::new()
        .interval(Duration::from_millis(state.settings.api.live_recheck_ms))
}

/// The slots for live streams; cheap to clone.
#[derive(Clone)]
pub struct LiveStreams(Arc<Semaphore>);

impl Default for LiveStreams {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(MAX_STREAMS)))
    }
}

/// Payloads published on `channel` from now on, for at most `max_age` (the client reconnects
/// and is authenticated again), while the subscription lasts, the viewer keeps up and the
/// viewer's credential (`op`) stands. 503 when every slot is taken or Redis cannot be reached.
pub async fn follow(
    state: &AppState,
    op: Operator,
    channel: String,
    max_age: Duration,
) -> Result<impl Stream<Item = String> + Send + 'static> {
    let permit = state
        .live
        .0
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Busy)?;
    let pubsub = subscribe(&state.redis, &channel).await?;
    let (tx, rx) = mpsc::channel::<String>(BUFFER);
    let waiting = Arc::new(AtomicUsize::new(0));
    let queued = waiting.clone();
    let shutdown = state.shutdown.clone();
    let lapsed = crate::revocation::lapsed(state.clone(), op);
    tokio::spawn(async move {
        let _permit = permit; // the slot is held as long as the subscription
        let mut messages = pubsub.into_on_message();
        let deadline = tokio::time::sleep(max_age);
        tokio::pin!(deadline, lapsed);
        loop {
            let payload = tokio::select! {
                _ = tx.closed() => break,
                _ = shutdown.cancelled() => break,
                _ = &mut deadline => break,
                _ = &mut lapsed => break,
                m = messages.next() => match m {
                    Some(m) => m.get_payload::<String>().unwrap_or_default(),
                    None => break,
                },
            };
            let size = payload.len();
            if queued.fetch_add(size, Ordering::Relaxed) + size > BUFFER_BYTES
                || tx.try_send(payload).is_err()
            {
                tracing::debug!(channel, "a live viewer fell behind; its stream ends");
                break;
            }
        }
    });
    Ok(futures_util::stream::unfold(
        (rx, waiting),
        |(mut rx, waiting)| async move {
            let payload = rx.recv().await?;
            waiting.fetch_sub(payload.len(), Ordering::Relaxed);
            Some((payload, (rx, waiting)))
        },
    ))
}

async fn subscribe(redis: &Redis, channel: &str) -> Result<redis::aio::PubSub> {
    let attempt = async {
        let mut pubsub = redis.pubsub().await?;
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
