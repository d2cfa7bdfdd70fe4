//! Per-node notifications: the api half of the push channel.
//!
//! Each change publishes the agent's exact frame to `flotilla:node:{<id>}` for every affected
//! node: in one pipeline on one Redis, with `SPUBLISH` to each node's shard on a cluster. A failed publish never fails the operator's request: agents catch
//! up on their next poll, so the failure is logged and counted only.

use flotilla_shared::channels::{node_channel, ControlMessage};
use flotilla_shared::frames::{PushFrame, PushMessage};
use flotilla_shared::redis_conn::Redis;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use uuid::Uuid;

/// Counters of published and failed notifications.
#[derive(Debug, Default)]
pub struct NotifyCounters {
    /// Messages handed to Redis.
    pub published: AtomicU64,
    /// Messages lost to a Redis failure.
    pub failed: AtomicU64,
    /// Messages handed to Redis, by frame type (`control` for gateway messages).
    pub published_by_type: Family<[(&'static str, &'static str); 1], Counter>,
}

impl NotifyCounters {
    fn published(&self, kind: &'static str, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
        self.published_by_type
            .get_or_create(&[("type", kind)])
            .inc_by(n);
    }
}

/// Publishes notifications; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    redis: Redis,
    counters: Arc<NotifyCounters>,
}

impl Notifier {
    /// Publishes through `redis`.
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            counters: Arc::default(),
        }
    }

    /// Counters (for metrics and tests).
    pub fn counters(&self) -> &Arc<NotifyCounters> {
        &self.counters
    }

    /// Sends one message to each node (each frame gets its own id); returns how many were sent.
    pub async fn push(&self, nodes: &[Uuid], message: PushMessage) -> usize {
        let kind = message.kind();
        let payloads = nodes
            .iter()
            .map(|&n| (n, PushFrame::new(message.clone()).to_json()));
        self.publish(kind, payloads.collect()).await
    }

    /// Sends `messages` to one node; true when a gateway holding its push channel received
    /// every one (Redis counts the subscribers each publish reached).
    pub async fn deliver(&self, node: Uuid, messages: Vec<PushMessage>) -> bool {
        if messages.is_empty() {
            return true;
        }
        let mut pipe = redis::pipe();
        for m in &messages {
            pipe.cmd(self.redis.node_publish())
                .arg(node_channel(node))
                .arg(PushFrame::new(m.clone()).to_json());
        }
        let n = messages.len() as u64;
        match self.redis.query::<Vec<i64>>(&pipe).await {
            Ok(reached) => {
                for m in &messages {
                    self.counters.published(m.kind(), 1);
                }
                reached.iter().all(|&r| r > 0)
            }
            Err(e) => {
                self.counters.failed.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(error = %e, count = n, "could not publish notifications");
                false
            }
        }
    }

    /// Sends a gateway control message to one node's channel.
    pub async fn control(&self, node: Uuid, message: &ControlMessage) -> usize {
        self.publish("control", vec![(node, message.to_payload())])
            .await
    }

    async fn publish(&self, kind: &'static str, payloads: Vec<(Uuid, String)>) -> usize {
        if payloads.is_empty() {
            return 0;
        }
        let publish = self.redis.node_publish();
        let cmds = payloads
            .iter()
            .map(|(node, payload)| {
                let mut cmd = redis::cmd(publish);
                cmd.arg(node_channel(*node)).arg(payload);
                cmd
            })
            .collect();
        let n = payloads.len() as u64;
        let (failed, error) = self.redis.fan_out(cmds).await;
        let failed = failed as u64;
        if n > failed {
            self.counters.published(kind, n - failed);
        }
        if let Some(e) = error {
            self.counters.failed.fetch_add(failed, Ordering::Relaxed);
            tracing::warn!(error = %e, count = failed, "could not publish notifications; agents will catch up by polling");
        }
        (n - failed) as usize
    }
}
