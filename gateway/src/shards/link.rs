//! One subscription connection to a shard's master: opening it (RESP3, pushes), sending
//! subscription commands a slot at a time from a queue of its own, and reading its pushes.

use crate::state::GatewayState;
use crate::subscriptions::dispatch;
use flotilla_shared::channels::node_channel;
use flotilla_shared::redis_conn::at_node;
use flotilla_shared::slots::{slot, Addr};
use redis::{AsyncConnectionConfig, ConnectionInfo, ProtocolVersion, PushKind};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::Instrument;
use uuid::Uuid;

/// What a shard connection's reader reports to the manager.
pub(super) enum Event {
    /// The shard confirmed a subscription.
    Subscribed(Addr, u64, String),
    /// The shard dropped a subscription (our `SUNSUBSCRIBE`, or the slot moved away).
    Unsubscribed(Addr, u64, String),
    /// The connection ended.
    Lost(Addr, u64),
    /// A batch of subscription commands failed (its nodes, the command, why).
    Failed {
        addr: Addr,
        generation: u64,
        command: &'static str,
        nodes: Vec<Uuid>,
        error: redis::RedisError,
    },
}

/// A subscription change for the shard's writer: `SSUBSCRIBE` or `SUNSUBSCRIBE`, and nodes.
type Batch = (&'static str, Vec<Uuid>);

/// One subscription connection to a shard's master.
pub(super) struct Shard {
    pub(super) conn: redis::aio::MultiplexedConnection,
    /// Numbered per connection, so events of a replaced connection are ignored.
    pub(super) generation: u64,
    pub(super) probe: String,
    pub(super) opened: Instant,
    batches: mpsc::UnboundedSender<Batch>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Shard {
    /// Queues `command` for `nodes`: sent in the order queued, without holding the caller;
    /// confirmations arrive as pushes, a failure as [`Event::Failed`].
    pub(super) fn queue(&self, command: &'static str, nodes: Vec<Uuid>) {
        let _ = self.batches.send((command, nodes));
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// Opens a RESP3 connection to the shard master at `addr`, starts its reader and subscribes
/// its probe.
pub(super) async fn connect(
    state: &GatewayState,
    addr: &Addr,
    generation: u64,
    probe: String,
    events: mpsc::UnboundedSender<Event>,
) -> redis::RedisResult<Shard> {
    let (tx, rx) = mpsc::unbounded_channel();
    let timeout = state.redis.timeout();
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout)
        .set_push_sender(tx);
    let client = redis::Client::open(shard_info(state, addr)?)?;
    let mut conn = with_timeout(
        timeout,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await?;
    let reader = tokio::spawn(read(
        state.clone(),
        addr.clone(),
        generation,
        rx,
        events.clone(),
    ));
    let (batches, queued) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write(
        state.clone(),
        addr.clone(),
        generation,
        conn.clone(),
        queued,
        events,
    ));
    let shard = Shard {
        conn: conn.clone(),
        generation,
        probe,
        opened: Instant::now(),
        batches,
        reader,
        writer,
    };
    with_timeout(timeout, async {
        redis::cmd("SSUBSCRIBE")
            .arg(&shard.probe)
            .exec_async(&mut conn)
            .await
    })
    .await?;
    Ok(shard)
}

/// The connection settings of a shard master: the first seed's credentials and TLS, the
/// master's address, RESP3 (pushes).
fn shard_info(state: &GatewayState, addr: &str) -> redis::RedisResult<ConnectionInfo> {
    let seed = state
        .redis
        .seed_clients()
        .into_iter()
        .next()
        .expect("a cluster has seeds");
    let mut info = at_node(seed.get_connection_info(), addr)?;
    info.redis.protocol = ProtocolVersion::RESP3;
    Ok(info)
}

/// Sends the queued batches in order, one at a time, merging batches of one command queued
/// behind each other (so a node's subscribe and unsubscribe never swap); reports failures.
///
/// The manager only queues: were it to wait for the replies, a loaded shard would hold it,
/// and with it the confirmations that let sessions go on (on a 2-core host with 100,000
/// agents connecting, 50,000 of them queued up and subscriptions timed out).
async fn write(
    state: GatewayState,
    addr: Addr,
    generation: u64,
    conn: redis::aio::MultiplexedConnection,
    mut queued: mpsc::UnboundedReceiver<Batch>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut carried: Option<Batch> = None;
    loop {
        let (command, mut nodes) = match carried.take() {
            Some(batch) => batch,
            None => match queued.recv().await {
                Some(batch) => batch,
                None => return,
            },
        };
        while let Ok((next, more)) = queued.try_recv() {
            if next == command {
                nodes.extend(more);
            } else {
                carried = Some((next, more));
                break;
            }
        }
        // A node queued twice for one command (a resync behind a backlog) is sent once.
        nodes.sort_unstable();
        nodes.dedup();
        let span =
            tracing::info_span!("subscription_change", command, nodes = nodes.len(), shard = %addr);
        let sent = send_by_slot(&state, conn.clone(), command, &nodes)
            .instrument(span)
            .await;
        if let Err(error) = sent {
            let failed = Event::Failed {
                addr: addr.clone(),
                generation,
                command,
                nodes,
                error,
            };
            if events.send(failed).is_err() {
                return;
            }
        }
    }
}

/// Sends `command` for the nodes, one command per slot (a command may name channels of one
/// slot only), all at once, and waits for the replies.
async fn send_by_slot(
    state: &GatewayState,
    conn: redis::aio::MultiplexedConnection,
    command: &'static str,
    nodes: &[Uuid],
) -> redis::RedisResult<()> {
    let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
    for &node in nodes {
        let channel = node_channel(node);
        by_slot
            .entry(slot(channel.as_bytes()))
            .or_default()
            .push(channel);
    }
    let calls = by_slot.into_values().map(|channels| {
        let mut conn = conn.clone();
        async move {
            redis::cmd(command)
                .arg(&channels)
                .exec_async(&mut conn)
                .await
        }
    });
    let all = async {
        futures_util::future::join_all(calls)
            .await
            .into_iter()
            .collect::<redis::RedisResult<()>>()
    };
    with_timeout(state.redis.timeout(), all).await
}

pub(super) async fn with_timeout<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::IoError,
            "redis subscription command timed out",
        ))),
    }
}

/// Forwards a shard connection's messages to sockets and its subscription changes to the
/// manager, until the connection ends.
async fn read(
    state: GatewayState,
    addr: Addr,
    generation: u64,
    mut pushes: mpsc::UnboundedReceiver<redis::PushInfo>,
    events: mpsc::UnboundedSender<Event>,
) {
    while let Some(push) = pushes.recv().await {
        let channel = || match push.data.first() {
            Some(redis::Value::BulkString(b)) => String::from_utf8(b.clone()).ok(),
            _ => None,
        };
        match push.kind {
            PushKind::SMessage => {
                if let (
                    Some(redis::Value::BulkString(ch)),
                    Some(redis::Value::BulkString(payload)),
                ) = (push.data.first(), push.data.get(1))
                {
                    if let Ok(ch) = std::str::from_utf8(ch) {
                        dispatch(&state, ch, payload);
                    }
                }
            }
            PushKind::SSubscribe => {
                if let Some(ch) = channel() {
                    let _ = events.send(Event::Subscribed(addr.clone(), generation, ch));
                }
            }
            PushKind::SUnsubscribe => {
                if let Some(ch) = channel() {
                    let _ = events.send(Event::Unsubscribed(addr.clone(), generation, ch));
                }
            }
            PushKind::Disconnection => break,
            _ => {}
        }
    }
    let _ = events.send(Event::Lost(addr, generation));
}
