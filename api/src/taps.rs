//! Live taps: an operator watches one node's component. A tap lives in Redis only (a hash
//! with the tap's node and component, expiring with the tap), its events travel on the tap's
//! channel to every viewer on any api, and nothing of it reaches Postgres.
//!
//! A tap ends when an operator stops it, when the agent reports it stopped, when its last
//! viewer leaves, when no viewer came within [`FIRST_VIEWER`], or after [`LIFETIME`]. Ending is
//! idempotent: whoever deletes the hash tells the agent (`tap_stop`) and the viewers.

use crate::state::AppState;
use flotilla_shared::channels::{tap_channel, tap_key, tap_viewers_key};
use flotilla_shared::frames::PushMessage;
use flotilla_shared::redis_conn::Redis;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

/// How long a tap runs at most (the agent stops by itself after the same time).
pub const LIFETIME: Duration = Duration::from_secs(300);
/// How long a tap's record outlives it, so its end (by the watchdog, or the agent's own
/// report at the same moment) still finds it; also the viewers' margin.
pub const GRACE: Duration = Duration::from_secs(60);
/// A tap that no viewer opened within this time ends.
pub const FIRST_VIEWER: Duration = Duration::from_secs(30);
/// Event batches a tap accepts per second; more get 429.
pub const MAX_BATCHES_PER_SEC: i64 = 20;

/// A running tap, as kept in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    /// The node tapped.
    pub node_id: Uuid,
    /// The pipeline.
    pub pipeline_id: Uuid,
    /// The component.
    pub component_id: String,
}

/// What a tap's viewers receive on its channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum TapMessage {
    /// A batch of events.
    Events {
        /// The events, as the agent sent them.
        events: Vec<serde_json::Value>,
    },
    /// The tap ended.
    Stopped {
        /// Why.
        reason: String,
    },
}

/// Starts a tap: stores it, then tells the node. Its first viewer must come within
/// [`FIRST_VIEWER`]; a background task ends it then (if none came) and at [`LIFETIME`].
pub async fn start(state: &AppState, tap: &Tap) -> crate::error::Result<Uuid> {
    let id = Uuid::new_v4();
    let mut pipe = redis::pipe();
    pipe.cmd("HSET")
        .arg(tap_key(id))
        .arg("node")
        .arg(tap.node_id.to_string())
        .arg("pipeline")
        .arg(tap.pipeline_id.to_string())
        .arg("component")
        .arg(&tap.component_id)
        .ignore();
    pipe.cmd("PEXPIRE")
        .arg(tap_key(id))
        .arg((LIFETIME + GRACE).as_millis() as u64)
        .ignore();
    state
        .redis
        .query::<()>(&pipe)
        .await
        .map_err(crate::error::ApiError::Redis)?;
    state
        .notifier
        .push(
            &[tap.node_id],
            PushMessage::TapStart {
                request_id: id.to_string(),
                pipeline_id: tap.pipeline_id.to_string(),
                component_id: tap.component_id.clone(),
            },
        )
        .await;
    let watchdog = state.clone();
    tokio::spawn(async move {
        let shutdown = watchdog.shutdown.clone();
        let run = async {
            tokio::time::sleep(FIRST_VIEWER).await;
            if viewers(&watchdog.redis, id).await.unwrap_or(0) == 0 {
                let _ = end(&watchdog, id, "no viewer").await;
                return;
            }
            tokio::time::sleep(LIFETIME.saturating_sub(FIRST_VIEWER)).await;
            let _ = end(&watchdog, id, "expired").await;
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = run => {}
        }
    });
    Ok(id)
}

/// The tap `id`, if it is running.
pub async fn get(redis: &Redis, id: Uuid) -> redis::RedisResult<Option<Tap>> {
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(tap_key(id))
        .arg("node")
        .arg("pipeline")
        .arg("component");
    let (node, pipeline, component): (Option<String>, Option<String>, Option<String>) =
        redis.query(&cmd).await?;
    Ok(match (node, pipeline, component) {
        (Some(node), Some(pipeline), Some(component_id)) => {
            match (Uuid::parse_str(&node), Uuid::parse_str(&pipeline)) {
                (Ok(node_id), Ok(pipeline_id)) => Some(Tap {
                    node_id,
                    pipeline_id,
                    component_id,
                }),
                _ => None,
            }
        }
        _ => None,
    })
}

async fn viewers(redis: &Redis, id: Uuid) -> redis::RedisResult<i64> {
    let mut cmd = redis::cmd("GET");
    cmd.arg(tap_viewers_key(id));
    Ok(redis.query::<Option<i64>>(&cmd).await?.unwrap_or(0))
}

/// Counts a viewer in.
pub async fn viewer_joined(redis: &Redis, id: Uuid) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.cmd("INCR").arg(tap_viewers_key(id)).ignore();
    pipe.cmd("PEXPIRE")
        .arg(tap_viewers_key(id))
        .arg((LIFETIME + GRACE).as_millis() as u64)
        .ignore();
    redis.query(&pipe).await
}

/// Counts a viewer out; the last one out ends the tap.
pub async fn viewer_left(state: &AppState, id: Uuid) {
    // The count expires with the tap even when this DECR is what created it.
    let mut pipe = redis::pipe();
    pipe.cmd("DECR").arg(tap_viewers_key(id));
    pipe.cmd("PEXPIRE")
        .arg(tap_viewers_key(id))
        .arg((LIFETIME + GRACE).as_millis() as u64)
        .ignore();
    match state.redis.query::<(i64,)>(&pipe).await {
        Ok((n,)) if n <= 0 => {
            if let Err(e) = end(state, id, "last viewer left").await {
                tracing::warn!(error = %e, tap = %id, "could not end a tap; it ends with its lifetime");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "could not count a tap viewer out"),
    }
}

/// Takes one event batch of the tap against its rate; false when over it.
pub async fn admit_batch(redis: &Redis, id: Uuid) -> redis::RedisResult<bool> {
    crate::shared_budget::admit(redis, &tap_key(id), MAX_BATCHES_PER_SEC).await
}

/// Sends a message to the tap's viewers.
pub async fn publish(redis: &Redis, id: Uuid, message: &TapMessage) -> redis::RedisResult<()> {
    let mut cmd = redis::cmd("PUBLISH");
    cmd.arg(tap_channel(id))
        .arg(serde_json::to_string(message).expect("tap messages serialise"));
    redis.query(&cmd).await
}

/// Ends the tap if it still runs: the agent gets `tap_stop`, viewers get `stopped`. An error
/// means Redis could not be asked; the tap then ends with its record's lifetime.
pub async fn end(state: &AppState, id: Uuid, reason: &str) -> redis::RedisResult<()> {
    if let Some(tap) = remove(state, id, reason).await? {
        stop_on_node(state, tap.node_id, id).await;
    }
    Ok(())
}

/// Ends a tap the agent reports stopped (no `tap_stop` is sent back).
pub async fn stopped_by_agent(state: &AppState, id: Uuid, reason: &str) -> redis::RedisResult<()> {
    remove(state, id, reason).await.map(drop)
}

/// Deletes the tap's record and tells its viewers why; the tap, if this call ended it (ending
/// is idempotent: only the one whose delete removed the record goes on).
async fn remove(state: &AppState, id: Uuid, reason: &str) -> redis::RedisResult<Option<Tap>> {
    let Some(tap) = get(&state.redis, id).await? else {
        return Ok(None);
    };
    let mut cmd = redis::cmd("DEL");
    cmd.arg(tap_key(id));
    if state.redis.query::<i64>(&cmd).await? == 0 {
        return Ok(None); // someone else ended it
    }
    let stopped = TapMessage::Stopped {
        reason: reason.to_owned(),
    };
    if let Err(e) = publish(&state.redis, id, &stopped).await {
        tracing::debug!(error = %e, "could not tell tap viewers it stopped");
    }
    tracing::info!(tap = %id, node_id = %tap.node_id, reason, "tap ended");
    Ok(Some(tap))
}

/// Tells a node to stop tapping `request_id` (also for a tap this server no longer knows).
pub async fn stop_on_node(state: &AppState, node: Uuid, request_id: impl ToString) {
    state
        .notifier
        .push(
            &[node],
            PushMessage::TapStop {
                request_id: request_id.to_string(),
            },
        )
        .await;
}
