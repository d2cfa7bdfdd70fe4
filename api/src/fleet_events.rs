//! Live fleet events for the fleet page: presence changes (published by gateways) and node
//! updates (heartbeats, operator changes), relayed from one Redis subscription per api
//! process to every open server-sent-events stream.

use flotilla_shared::backoff::Backoff;
use flotilla_shared::channels::FLEET_EVENTS;
use flotilla_shared::redis_conn::Redis;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Events buffered per slow page before it is told to resync.
const BUFFER: usize = 1024;
/// Resubscribe backoff: the ceiling doubles from 100 ms to 5 s; each delay is drawn from its
/// upper half, so apis that lost the same Redis do not come back in lockstep and one that
/// accepts and drops at once is not hammered (each reconnect resyncs every page). It resets
/// once a subscription held for 5 s.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Fan-out of fleet events to the page's streams; cheap to clone.
#[derive(Clone)]
pub struct FleetEvents {
    tx: broadcast::Sender<Arc<str>>,
    subscribed: Arc<AtomicBool>,
    revocations: Arc<watch::Sender<u64>>,
}

impl Default for FleetEvents {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(BUFFER).0,
            subscribed: Arc::default(),
            revocations: Arc::new(watch::channel(0).0),
        }
    }
}

/// The message (on the fleet events channel, never relayed to pages) that tells every api an
/// operator credential stopped standing somewhere, so its live streams re-check theirs.
const CREDENTIALS_REVOKED: &str = r#"{"kind":"credentials-revoked"}"#;

/// The event that tells a page to reload the whole fleet.
pub const RESYNC: &str = r#"{"kind":"resync"}"#;

impl FleetEvents {
    /// Live streams subscribed now.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Whether the Redis subscription is currently up.
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst)
    }

    /// Changes whenever an operator credential may have stopped standing (a revocation here or
    /// on another api, or a lost subscription that may have missed one).
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.revocations.subscribe()
    }

    fn note_revocation(&self) {
        self.revocations.send_modify(|n| *n += 1);
    }

    /// Tells this api's live streams at once, and every other api through Redis, that an
    /// operator credential stopped standing. Without Redis, other apis' streams notice at
    /// their next re-check (`api.live_recheck_ms`).
    pub async fn credentials_revoked(&self, redis: &Redis) {
        self.note_revocation();
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(FLEET_EVENTS).arg(CREDENTIALS_REVOKED);
        if let Err(e) = redis.query::<()>(&cmd).await {
            tracing::warn!(error = %e, "could not announce a revocation to other apis");
        }
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.tx.subscribe()
    }

    /// Relays `flotilla:fleet-events` until shutdown, resubscribing with backoff when Redis
    /// drops; each reconnect also tells pages to resync, since events may have been missed.
    pub async fn relay(self, redis: Redis, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX).with_floor();
        loop {
            let attempt = async {
                let mut pubsub = redis.pubsub().await?;
                pubsub.subscribe(FLEET_EVENTS).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = tokio::time::timeout(redis.timeout(), attempt) => r,
            };
            match pubsub {
                Ok(Ok(pubsub)) => {
                    let since = Instant::now();
                    self.subscribed.store(true, Ordering::SeqCst);
                    let _ = self.tx.send(Arc::from(RESYNC));
                    // A revocation may have been missed while unsubscribed.
                    self.note_revocation();
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            msg = messages.next() => match msg {
                                Some(msg) => {
                                    let payload: String = msg.get_payload().unwrap_or_default();
                                    if payload == CREDENTIALS_REVOKED {
                                        self.note_revocation();
                                    } else {
                                        let _ = self.tx.send(Arc::from(payload));
                                    }
                                }
                                None => break,
                            },
                        }
                    }
                    self.subscribed.store(false, Ordering::SeqCst);
                    backoff.reset_after(since.elapsed());
                    tracing::warn!("fleet events subscription lost; resubscribing");
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "fleet events subscription failed"),
                Err(_) => tracing::debug!("fleet events subscription timed out"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
}

/// Nodes changed at once above which one `resync` event replaces a per-node event each: a
/// page re-reads its current page once instead of receiving thousands of events.
pub const MAX_NODE_EVENTS: usize = 1000;

/// Announces that many nodes' rows changed (a bulk action), in one pipeline, without
/// waiting; past [`MAX_NODE_EVENTS`] nodes, one `resync` event instead.
pub fn nodes_changed(redis: &Redis, node_ids: &[Uuid], kind: &'static str) {
    if node_ids.is_empty() {
        return;
    }
    let payloads: Vec<String> = if node_ids.len() > MAX_NODE_EVENTS {
        vec![RESYNC.to_owned()]
    } else {
        node_ids
            .iter()
            .map(|id| serde_json::json!({ "nodeId": id, "kind": kind }).to_string())
            .collect()
    };
    let redis = redis.clone();
    tokio::spawn(async move {
        let mut pipe = redis::pipe();
        for p in &payloads {
            pipe.cmd("PUBLISH").arg(FLEET_EVENTS).arg(p).ignore();
        }
        if let Err(e) = redis.query::<()>(&pipe).await {
            tracing::debug!(error = %e, "could not publish fleet events");
        }
    });
}

/// Announces that a node's row changed (labels, maintenance, a heartbeat that changed what
/// the fleet shows…), without waiting.
pub fn node_changed(redis: &Redis, node_id: Uuid, kind: &'static str) {
    let redis = redis.clone();
    tokio::spawn(async move {
        let payload = serde_json::json!({ "nodeId": node_id, "kind": kind }).to_string();
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(FLEET_EVENTS).arg(payload);
        if let Err(e) = redis.query::<()>(&cmd).await {
            tracing::debug!(error = %e, "could not publish a fleet event");
        }
    });
}
