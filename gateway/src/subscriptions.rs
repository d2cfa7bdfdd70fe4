//! The gateway's Redis pub/sub: one connection on a single Redis (below), one per shard on a
//! cluster ([`crate::shards`]).
//!
//! A single manager task owns the subscriptions and reconciles them with the registry: a node's
//! channel is subscribed exactly while this gateway holds a socket of that node. Sessions ask it
//! through [`Subscriptions`]; because only the manager issues SUBSCRIBE/UNSUBSCRIBE and it decides
//! from the registry's current state, a close racing a reconnect of the same node cannot leave
//! the channel unsubscribed. A reader task forwards each message to its socket's outbox. On a
//! single Redis, when the connection drops (or the liveness beat's probe finds it deaf), the
//! manager reconnects with backoff and subscribes every held node again; the cluster's manager
//! does the same per shard (see [`crate::shards`] for when it waits and when it does not).

use crate::metrics::{self, Counters};
use crate::state::GatewayState;
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use flotilla_shared::backoff::Backoff;
use flotilla_shared::channels::{node_channel, node_from_channel, ControlMessage};
use flotilla_shared::close_codes::Close;
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// Reconnect backoff: the ceiling doubles from 100 ms to 5 s; each delay is drawn from its
/// upper half, so gateways that lost the same Redis do not come back in lockstep and one that
/// accepts and drops at once is not hammered. It resets once a subscription held for 5 s.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Channels subscribed per burst when (re)subscribing everything.
const RESUBSCRIBE_CHUNK: usize = 1000;

/// A session's request: make the node's subscription match the registry.
pub(crate) struct Request {
    pub(crate) node: Uuid,
    pub(crate) done: Option<oneshot::Sender<()>>,
}

/// The receiving end, handed to [`run`].
pub(crate) type Requests = mpsc::UnboundedReceiver<Request>;

/// Handle sessions and the liveness beat use to talk to the manager.
pub(crate) struct Subscriptions {
    requests: mpsc::UnboundedSender<Request>,
    pub(crate) reconnect: Notify,
    pub(crate) up: AtomicBool,
    probe_channel: String,
    /// The channels the liveness beat probes: the one probe channel on a single Redis, one
    /// per shard connection on a cluster.
    pub(crate) probes: Mutex<Vec<String>>,
    /// Probe channels the liveness beat published to and nobody received.
    pub(crate) unheard: Mutex<Vec<String>>,
}

impl Subscriptions {
    pub(crate) fn new(gateway_id: &str) -> (Self, Requests) {
        let (tx, rx) = mpsc::unbounded_channel();
        let probe_channel = format!("flotilla:gateway:{gateway_id}:probe");
        let handle = Self {
            requests: tx,
            reconnect: Notify::new(),
            up: AtomicBool::new(false),
            probes: Mutex::new(vec![probe_channel.clone()]),
            unheard: Mutex::default(),
            probe_channel,
        };
        (handle, rx)
    }

    /// Subscribes the node's channel if it is held; resolves once Redis confirmed it, or at
    /// once when it cannot be subscribed now (the connection or the node's shard is down, or no
    /// slot map was read yet), in which case the next reconnect or resync subscribes it.
    pub(crate) async fn subscribe(&self, node: Uuid) {
        let (tx, rx) = oneshot::channel();
        if self
            .requests
            .send(Request {
                node,
                done: Some(tx),
            })
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Asks the manager to unsubscribe the node's channel if it is no longer held.
    pub(crate) fn sync(&self, node: Uuid) {
        let _ = self.requests.send(Request { node, done: None });
    }

    /// Whether the subscription connection is established.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Forces a reconnect of the connection whose probe on `channel` nobody received (on a
    /// single Redis, the one connection, and only a manager waiting on it hears it, so a probe
    /// that raced a reconnect leaves no stale request behind). A cluster's manager also reads
    /// the unheard probes every tick; probes are named per connection, so a report about an
    /// earlier connection matches none.
    pub(crate) fn probe_unheard(&self, channel: &str) {
        self.unheard.lock().unwrap().push(channel.to_owned());
        self.reconnect.notify_waiters();
    }

    /// The channel the single-Redis subscription's self-probe is published on.
    pub(crate) fn probe_channel(&self) -> &str {
        &self.probe_channel
    }

    /// The channels the liveness beat publishes its probes on.
    pub(crate) fn probe_channels(&self) -> Vec<String> {
        self.probes.lock().unwrap().clone()
    }
}

/// Runs the manager until `stop` is cancelled: sharded pub/sub on a Redis Cluster (see
/// [`crate::shards`]), the one connection below on a single Redis.
pub(crate) async fn run(state: GatewayState, requests: Requests, stop: CancellationToken) {
    if state.redis.is_cluster() {
        crate::shards::run(state, requests, stop).await
    } else {
        run_single(state, requests, stop).await
    }
}

async fn run_single(state: GatewayState, mut requests: Requests, stop: CancellationToken) {
    let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX).with_floor();
    loop {
        let opened = tokio::select! {
            _ = stop.cancelled() => return,
            opened = open(&state) => opened,
        };
        match opened {
            Ok((sink, stream, subscribed)) => {
                let since = Instant::now();
                if serve(&state, &mut requests, &stop, sink, stream, subscribed).await {
                    return;
                }
                backoff.reset_after(since.elapsed());
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe through Redis; retrying"),
        }
        // Also after a lost connection: a server that accepts and drops must not make this spin.
        if wait_backoff(&mut requests, &stop, backoff.next_delay()).await {
            return;
        }
    }
}

/// Opens the connection and subscribes the probe channel and every held node.
async fn open(
    state: &GatewayState,
) -> redis::RedisResult<(PubSubSink, PubSubStream, HashSet<Uuid>)> {
    let pubsub = state.redis.pubsub().await?;
    let (mut sink, stream) = pubsub.split();
    with_timeout(state, sink.subscribe(state.subscriptions.probe_channel())).await?;
    let nodes: Vec<Uuid> = state
        .registry
        .snapshot()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for chunk in nodes.chunks(RESUBSCRIBE_CHUNK) {
        apply(state, &sink, "SUBSCRIBE", chunk).await?;
    }
    Ok((sink, stream, nodes.into_iter().collect()))
}

/// Serves requests on an open connection until it is lost (false) or `stop` (true).
async fn serve(
    state: &GatewayState,
    requests: &mut Requests,
    stop: &CancellationToken,
    sink: PubSubSink,
    stream: PubSubStream,
    mut subscribed: HashSet<Uuid>,
) -> bool {
    state.subscriptions.up.store(true, Ordering::Relaxed);
    Counters::inc(&state.counters.pubsub_connects);
    tracing::info!(channels = subscribed.len(), "subscribed to Redis");
    let mut reader = tokio::spawn(read(state.clone(), stream));
    let stopped = loop {
        tokio::select! {
            _ = stop.cancelled() => break true,
            _ = &mut reader => {
                tracing::warn!("lost the Redis subscription connection; reconnecting");
                break false;
            }
            _ = state.subscriptions.reconnect.notified() => {
                state.subscriptions.unheard.lock().unwrap().clear();
                tracing::warn!("the Redis subscription stopped receiving; reconnecting");
                break false;
            }
            Some(first) = requests.recv() => {
                let mut batch = vec![first];
                while let Ok(more) = requests.try_recv() {
                    batch.push(more);
                }
                if let Err(e) = reconcile(state, &sink, &mut subscribed, batch).await {
                    tracing::warn!(error = %e, "subscription command failed; reconnecting");
                    break false;
                }
            }
        }
    };
    reader.abort();
    state.subscriptions.up.store(false, Ordering::Relaxed);
    stopped
}

/// Waits out `delay` while answering requests (they are subscribed on reconnect); true when
/// stopped.
async fn wait_backoff(requests: &mut Requests, stop: &CancellationToken, delay: Duration) -> bool {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return true,
            _ = &mut sleep => return false,
            Some(req) = requests.recv() => {
                if let Some(done) = req.done {
                    let _ = done.send(());
                }
            }
        }
    }
}

/// Makes the subscriptions of the requested nodes match the registry, then answers waiters.
async fn reconcile(
    state: &GatewayState,
    sink: &PubSubSink,
    subscribed: &mut HashSet<Uuid>,
    batch: Vec<Request>,
) -> redis::RedisResult<()> {
    let mut nodes: Vec<Uuid> = batch.iter().map(|r| r.node).collect();
    nodes.sort_unstable();
    nodes.dedup();
    let (mut add, mut remove) = (Vec::new(), Vec::new());
    for node in nodes {
        match (state.registry.contains(node), subscribed.contains(&node)) {
            (true, false) => add.push(node),
            (false, true) => remove.push(node),
            _ => {}
        }
    }
    apply(state, sink, "SUBSCRIBE", &add).await?;
    subscribed.extend(&add);
    apply(state, sink, "UNSUBSCRIBE", &remove).await?;
    for node in &remove {
        subscribed.remove(node);
    }
    for done in batch.into_iter().filter_map(|r| r.done) {
        let _ = done.send(());
    }
    Ok(())
}

/// Sends one single-channel command per node, pipelined, and waits for every reply.
///
/// One channel per command, because the client matches each reply to one request.
async fn apply(
    state: &GatewayState,
    sink: &PubSubSink,
    command: &str,
    nodes: &[Uuid],
) -> redis::RedisResult<()> {
    if nodes.is_empty() {
        return Ok(());
    }
    let calls = nodes.iter().map(|node| {
        let mut sink = sink.clone();
        let channel = node_channel(*node);
        async move {
            if command == "SUBSCRIBE" {
                sink.subscribe(channel).await
            } else {
                sink.unsubscribe(channel).await
            }
        }
    });
    let all = async {
        futures_util::future::join_all(calls)
            .await
            .into_iter()
            .collect()
    };
    // One span a batch, never one a frame: subscription changes come in coalesced batches.
    let span = tracing::info_span!("subscription_change", command, nodes = nodes.len());
    with_timeout(state, all).instrument(span).await
}

async fn with_timeout<T>(
    state: &GatewayState,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(state.redis.timeout(), fut).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::IoError,
            "redis subscription command timed out",
        ))),
    }
}

/// Forwards messages until the connection ends.
async fn read(state: GatewayState, mut stream: PubSubStream) {
    while let Some(msg) = stream.next().await {
        dispatch(&state, msg.get_channel_name(), msg.get_payload_bytes());
    }
}

/// Routes one message: agent frames to the node's outbox, control messages to their action.
pub(crate) fn dispatch(state: &GatewayState, channel: &str, payload: &[u8]) {
    let Some(node) = node_from_channel(channel) else {
        return; // the probe, or a channel this gateway does not know
    };
    let counters = &state.counters;
    match ControlMessage::parse(payload) {
        None => {
            let Ok(frame) = Utf8Bytes::try_from(Bytes::copy_from_slice(payload)) else {
                tracing::warn!(node_id = %node, "dropped a push that is not UTF-8");
                return;
            };
            if let Some(sent) = metrics::sent_at(payload) {
                let latency = chrono::Utc::now()
                    .timestamp_millis()
                    .saturating_sub(sent)
                    .max(0);
                counters.observe_latency(latency as u64);
            }
            let pushed = state.registry.with(node, |conn| conn.outbox.push(frame));
            match pushed {
                Some(crate::outbox::Pushed::Queued) => Counters::inc(&counters.pushes_received),
                Some(_) => Counters::inc(&counters.pushes_dropped),
                None => {}
            }
        }
        Some(ControlMessage::Revoke) => {
            state
                .registry
                .with(node, |conn| conn.outbox.close(Close::Revoked));
        }
        Some(ControlMessage::Supersede { conn: winner }) => {
            state.registry.with(node, |conn| {
                if conn.id.to_string() != winner {
                    conn.outbox.close(Close::Superseded);
                }
            });
        }
        Some(ControlMessage::Probe { .. }) => {}
    }
}
