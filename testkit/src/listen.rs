//! Watching node channels in Redis, as a gateway would.

use futures_util::StreamExt;
use serde_json::Value;
use std::time::Duration;
use tokio::sync::mpsc;

/// Messages published to some nodes' channels, as `(node id, payload)`.
pub struct Listener {
    rx: mpsc::UnboundedReceiver<(String, String)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Subscribes to the channels of `nodes` on `redis_url`.
pub async fn node_channels(redis_url: &str, nodes: &[&str]) -> Listener {
    let client = redis::Client::open(redis_url).unwrap();
    let mut pubsub = crate::within("redis pubsub", client.get_async_pubsub())
        .await
        .expect("redis pubsub");
    for node in nodes {
        let id = uuid::Uuid::parse_str(node).expect("node id");
        let channel = flotilla_shared::channels::node_channel(id);
        crate::within("subscribe", pubsub.subscribe(channel))
            .await
            .expect("subscribe");
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut stream = pubsub.into_on_message();
        while let Some(msg) = stream.next().await {
            let channel = msg.get_channel_name().to_owned();
            let node = flotilla_shared::channels::node_from_channel(&channel)
                .map(|u| u.to_string())
                .unwrap_or(channel);
            let payload: String = msg.get_payload().unwrap_or_default();
            if tx.send((node, payload)).is_err() {
                return;
            }
        }
    });
    Listener { rx, task }
}

impl Listener {
    /// The next message, or panic after a few seconds.
    pub async fn next(&mut self) -> (String, Value) {
        let (node, payload) = crate::within("a node notification", self.rx.recv())
            .await
            .expect("listener alive");
        let value = serde_json::from_str(&payload).unwrap_or(Value::String(payload));
        (node, value)
    }

    /// Collects `n` messages.
    pub async fn take(&mut self, n: usize) -> Vec<(String, Value)> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// Asserts nothing more arrives within `quiet`.
    pub async fn assert_quiet(&mut self, quiet: Duration) {
        if let Ok(Some(m)) = tokio::time::timeout(quiet, self.rx.recv()).await {
            panic!("unexpected notification: {m:?}");
        }
    }
}
