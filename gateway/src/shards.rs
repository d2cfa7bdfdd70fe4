//! Sharded pub/sub on a Redis Cluster: node channels through `SSUBSCRIBE`, one subscription
//! connection per shard this gateway needs.
//!
//! A sharded message travels only within the shard that owns its channel's slot, so the
//! gateway subscribes each node's channel on that shard's master. The manager keeps where each
//! held node is subscribed (its placement) and the cluster's slot map. It batches
//! `SSUBSCRIBE`/`SUNSUBSCRIBE` by slot (one command names channels of one slot only) and sends
//! a shard's batches together.
//!
//! The shard connections speak RESP3, so subscription replies, messages and the server's own
//! `sunsubscribe` (sent when a slot migrates away) arrive as pushes naming their channel. The
//! manager trusts only those pushes: a channel counts as subscribed once its `ssubscribe` push
//! came, not when a command returned, because an unsolicited push can be taken for a reply.
//! It resynchronises — refreshes the slot map, opens and closes shard connections, moves
//! placements — when a shard connection is lost (failover), when a held node's channel is
//! unsubscribed by the server (resharding), when a command fails (`MOVED`, a shard down) and
//! when a subscription stays unconfirmed past the command timeout. Each resync after the first
//! marks presence stale, so the next liveness beat restores it on the promoted replicas.
//!
//! Each shard connection also subscribes a probe channel in one of its own slots; the liveness
//! beat publishes to every probe and a probe nobody received forces a full reconnect, as a deaf
//! single-Redis subscription does.

use crate::state::GatewayState;
use crate::subscriptions::{dispatch, Request, Requests};
use flotilla_shared::backoff::Backoff;
use flotilla_shared::channels::{node_channel, node_from_channel};
use flotilla_shared::slots::slot;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ProtocolVersion, PushKind};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// Delay before a resync after a failure; grows to [`RESYNC_MAX`] while failures repeat.
const RESYNC_INITIAL: Duration = Duration::from_millis(50);
const RESYNC_MAX: Duration = Duration::from_secs(2);
/// How often unconfirmed subscriptions are looked at.
const TICK: Duration = Duration::from_millis(250);

/// A shard master's address, `host:port`.
type Addr = Arc<str>;

/// What a shard connection's reader reports to the manager.
enum Event {
    /// The shard confirmed a subscription.
    Subscribed(Addr, u64, String),
    /// The shard dropped a subscription (our `SUNSUBSCRIBE`, or the slot moved away).
    Unsubscribed(Addr, u64, String),
    /// The connection ended.
    Lost(Addr, u64),
}

/// One subscription connection to a shard's master.
struct Shard {
    conn: redis::aio::MultiplexedConnection,
    /// Bumped per connection, so a late `Lost` of a replaced connection is ignored.
    generation: u64,
    probe: String,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Where a held node's channel is subscribed.
struct Placement {
    shard: Addr,
    confirmed: bool,
    sent: Instant,
}

struct Manager {
    state: GatewayState,
    /// Slot ranges (first → (last, master)).
    slots: BTreeMap<u16, (u16, Addr)>,
    shards: HashMap<Addr, Shard>,
    placements: HashMap<Uuid, Placement>,
    unconfirmed: usize,
    waiters: HashMap<Uuid, Vec<oneshot::Sender<()>>>,
    events: mpsc::UnboundedSender<Event>,
    generation: u64,
    /// A resync is due at this instant.
    resync_at: Option<tokio::time::Instant>,
    backoff: Backoff,
    last_failure: Option<Instant>,
    synced_once: bool,
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

/// Runs the sharded manager until `stop` is cancelled.
pub(crate) async fn run(state: GatewayState, mut requests: Requests, stop: CancellationToken) {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut m = Manager {
        state,
        slots: BTreeMap::new(),
        shards: HashMap::new(),
        placements: HashMap::new(),
        unconfirmed: 0,
        waiters: HashMap::new(),
        events: events_tx,
        generation: 0,
        resync_at: Some(tokio::time::Instant::now()),
        backoff: Backoff::new(RESYNC_INITIAL, RESYNC_MAX).with_floor(),
        last_failure: None,
        synced_once: false,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = m.state.subscriptions.reconnect.notified() => {
                tracing::warn!("a shard's subscription stopped receiving; reconnecting every shard");
                m.shards.clear();
                m.lost_all_placements();
                m.schedule_resync(Duration::ZERO);
            }
            Some(event) = events.recv() => m.on_event(event),
            Some(first) = requests.recv() => {
                let mut batch = vec![first];
                while let Ok(more) = requests.try_recv() {
                    batch.push(more);
                }
                m.reconcile(batch).await;
            }
            _ = tokio::time::sleep_until(m.resync_at.unwrap_or_else(far_future)), if m.resync_at.is_some() => {
                m.resync_at = None;
                m.resync().await;
            }
            _ = tick.tick() => m.check_unconfirmed(),
        }
    }
    m.state.subscriptions.up.store(false, Ordering::Relaxed);
}

impl Manager {
    fn schedule_resync(&mut self, after: Duration) {
        let at = tokio::time::Instant::now() + after;
        self.resync_at = Some(self.resync_at.map_or(at, |cur| cur.min(at)));
        self.state.subscriptions.up.store(false, Ordering::Relaxed);
    }

    fn failed(&mut self, what: &str, e: &redis::RedisError) {
        // Failures in a row back off; one long after the last starts from the shortest delay.
        if let Some(last) = self.last_failure.replace(Instant::now()) {
            self.backoff.reset_after(last.elapsed());
        }
        let delay = self.backoff.next_delay();
        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what}; resynchronising the shard subscriptions");
        self.schedule_resync(delay);
    }

    /// Schedules a resync when a subscription stayed unconfirmed past the command timeout
    /// (its `MOVED` error may have been taken for another command's reply).
    fn check_unconfirmed(&mut self) {
        if self.unconfirmed > 0 {
            let limit = self.state.redis.timeout();
            let stale = self
                .placements
                .values()
                .any(|p| !p.confirmed && p.sent.elapsed() > limit);
            if stale && self.resync_at.is_none() {
                tracing::warn!("a shard did not confirm a subscription in time");
                self.schedule_resync(Duration::ZERO);
            }
        }
    }

    /// Whether `addr`'s current connection is the one numbered `generation` (events of a
    /// replaced connection may still be queued).
    fn current(&self, addr: &Addr, generation: u64) -> bool {
        self.shards
            .get(addr)
            .is_some_and(|s| s.generation == generation)
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Subscribed(addr, generation, channel) => {
                if !self.current(&addr, generation) {
                    return;
                }
                let Some(node) = node_from_channel(&channel) else {
                    return;
                };
                if let Some(p) = self.placements.get_mut(&node) {
                    if p.shard == addr && !p.confirmed {
                        p.confirmed = true;
                        self.unconfirmed -= 1;
                    }
                }
                self.answer(node);
            }
            Event::Unsubscribed(addr, generation, channel) => {
                if !self.current(&addr, generation) {
                    return;
                }
                let moved = match node_from_channel(&channel) {
                    Some(node) => {
                        let placed_here =
                            self.placements.get(&node).is_some_and(|p| p.shard == addr);
                        if placed_here {
                            self.unplace(node);
                        }
                        placed_here
                    }
                    // A probe channel: its slot moved away.
                    None => self.shards.get(&addr).is_some_and(|s| s.probe == channel),
                };
                if moved {
                    tracing::info!(channel, shard = %addr, "a shard dropped a subscription (slot moved); resubscribing");
                    self.schedule_resync(Duration::ZERO);
                }
            }
            Event::Lost(addr, generation) => {
                if self.current(&addr, generation) {
                    tracing::warn!(shard = %addr, "lost a shard's subscription connection");
                    self.shards.remove(&addr);
                    let lost: Vec<Uuid> = self
                        .placements
                        .iter()
                        .filter(|(_, p)| p.shard == addr)
                        .map(|(n, _)| *n)
                        .collect();
                    for node in lost {
                        self.unplace(node);
                    }
                    self.schedule_resync(Duration::ZERO);
                }
            }
        }
    }

    fn unplace(&mut self, node: Uuid) {
        if let Some(p) = self.placements.remove(&node) {
            if !p.confirmed {
                self.unconfirmed -= 1;
            }
        }
    }

    fn lost_all_placements(&mut self) {
        self.placements.clear();
        self.unconfirmed = 0;
    }

    /// Answers every session waiting for the node's subscription.
    fn answer(&mut self, node: Uuid) {
        for done in self.waiters.remove(&node).unwrap_or_default() {
            let _ = done.send(());
        }
    }

    fn answer_all(&mut self) {
        for (_, waiters) in self.waiters.drain() {
            for done in waiters {
                let _ = done.send(());
            }
        }
    }

    /// Makes the requested nodes' subscriptions match the registry.
    async fn reconcile(&mut self, batch: Vec<Request>) {
        let mut nodes = Vec::with_capacity(batch.len());
        for req in batch {
            nodes.push(req.node);
            if let Some(done) = req.done {
                self.waiters.entry(req.node).or_default().push(done);
            }
        }
        nodes.sort_unstable();
        nodes.dedup();
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for node in nodes {
            let held = self.state.registry.contains(node);
            match (held, self.placements.get(&node)) {
                (true, None) => add.push(node),
                (true, Some(p)) if p.confirmed => self.answer(node),
                (false, Some(_)) => remove.push(node),
                (false, None) => self.answer(node),
                _ => {}
            }
        }
        self.unsubscribe(remove).await;
        if self.slots.is_empty() {
            // No slot map yet: the first resync subscribes every held node; a waiter is not
            // kept waiting for it (as with a single Redis that is down).
            for node in add {
                self.answer(node);
            }
            return;
        }
        if let Err(e) = self.subscribe(add.clone()).await {
            for node in add {
                self.answer(node);
            }
            self.failed("a shard subscription failed", &e);
        }
    }

    /// `SUNSUBSCRIBE`s the nodes where they are placed, a command per slot. Failures are only
    /// logged: a stray subscription costs the shard a little memory until the connection ends.
    async fn unsubscribe(&mut self, nodes: Vec<Uuid>) {
        let mut by_shard: HashMap<Addr, Vec<Uuid>> = HashMap::new();
        for node in nodes {
            if let Some(p) = self.placements.get(&node) {
                by_shard.entry(p.shard.clone()).or_default().push(node);
            }
            self.unplace(node);
            self.answer(node);
        }
        for (addr, nodes) in by_shard {
            if let Some(shard) = self.shards.get(&addr) {
                let span = tracing::info_span!("subscription_change", command = "SUNSUBSCRIBE", nodes = nodes.len(), shard = %addr);
                let sent = send_by_slot(&self.state, shard, "SUNSUBSCRIBE", &nodes)
                    .instrument(span)
                    .await;
                if let Err(e) = sent {
                    tracing::debug!(error = %e, shard = %addr, "unsubscribing failed");
                }
            }
        }
    }

    /// `SSUBSCRIBE`s the nodes on the masters owning their slots, opening shard connections
    /// as needed. Confirmations arrive as pushes. A shard that fails does not hold up the
    /// others; the last failure is returned.
    async fn subscribe(&mut self, nodes: Vec<Uuid>) -> redis::RedisResult<()> {
        let mut by_shard: HashMap<Addr, Vec<Uuid>> = HashMap::new();
        let mut result = Ok(());
        for node in nodes {
            match self.owner(slot(node_channel(node).as_bytes())) {
                Some(owner) => by_shard.entry(owner).or_default().push(node),
                None => {
                    result = Err(redis::RedisError::from((
                        redis::ErrorKind::ClusterDown,
                        "a node's slot is not covered",
                    )))
                }
            }
        }
        for (addr, nodes) in by_shard {
            if let Err(e) = self.subscribe_on(&addr, &nodes).await {
                result = Err(e);
            }
        }
        result
    }

    async fn subscribe_on(&mut self, addr: &Addr, nodes: &[Uuid]) -> redis::RedisResult<()> {
        self.open(addr).await?;
        let now = Instant::now();
        for &node in nodes {
            self.unplace(node);
            self.placements.insert(
                node,
                Placement {
                    shard: addr.clone(),
                    confirmed: false,
                    sent: now,
                },
            );
            self.unconfirmed += 1;
        }
        let shard = &self.shards[addr];
        let span = tracing::info_span!("subscription_change", command = "SSUBSCRIBE", nodes = nodes.len(), shard = %addr);
        send_by_slot(&self.state, shard, "SSUBSCRIBE", nodes)
            .instrument(span)
            .await
    }

    fn owner(&self, slot: u16) -> Option<Addr> {
        let (_, (last, addr)) = self.slots.range(..=slot).next_back()?;
        (slot <= *last).then(|| addr.clone())
    }

    /// Opens the shard connection to `addr` (and subscribes its probe) unless it is open.
    async fn open(&mut self, addr: &Addr) -> redis::RedisResult<()> {
        if self.shards.contains_key(addr) {
            return Ok(());
        }
        let probe = self.probe_for(addr);
        self.generation += 1;
        let generation = self.generation;
        let (tx, rx) = mpsc::unbounded_channel();
        let info = shard_info(&self.state, addr)?;
        let timeout = self.state.redis.timeout();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_push_sender(tx);
        let client = redis::Client::open(info)?;
        let mut conn = with_timeout(
            timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await?;
        let reader = tokio::spawn(read(
            self.state.clone(),
            addr.clone(),
            generation,
            rx,
            self.events.clone(),
        ));
        with_timeout(timeout, async {
            redis::cmd("SSUBSCRIBE")
                .arg(&probe)
                .exec_async(&mut conn)
                .await
        })
        .await?;
        tracing::info!(shard = %addr, "opened a shard subscription connection");
        self.shards.insert(
            addr.clone(),
            Shard {
                conn,
                generation,
                probe,
                reader,
            },
        );
        self.publish_probes();
        Ok(())
    }

    /// A probe channel of this gateway that hashes to a slot `addr` owns.
    fn probe_for(&self, addr: &Addr) -> String {
        // The tag comes first, so braces in a gateway id cannot change the slot.
        let id = self.state.id();
        (0u32..)
            .map(|i| format!("flotilla:probe:{{{i}}}:{id}"))
            .find(|ch| self.owner(slot(ch.as_bytes())).as_ref() == Some(addr))
            .expect("every master in the slot map owns a slot")
    }

    fn publish_probes(&self) {
        let probes = self.shards.values().map(|s| s.probe.clone()).collect();
        *self.state.subscriptions.probes.lock().unwrap() = probes;
    }

    /// Refreshes the slot map, drops connections to nodes that no longer own slots, and
    /// subscribes every held node that is not placed on its slot's owner.
    async fn resync(&mut self) {
        let started = Instant::now();
        if let Err(e) = self.refresh_slots().await {
            self.answer_all();
            self.failed("cannot read the cluster's slot map", &e);
            return;
        }
        let masters: HashSet<Addr> = self.slots.values().map(|(_, a)| a.clone()).collect();
        self.shards.retain(|addr, _| masters.contains(addr));
        // A probe whose slot moved is picked again with a fresh connection.
        let moved_probes: Vec<Addr> = self
            .shards
            .iter()
            .filter(|(addr, s)| self.owner(slot(s.probe.as_bytes())).as_ref() != Some(*addr))
            .map(|(a, _)| a.clone())
            .collect();
        for addr in moved_probes {
            self.shards.remove(&addr);
        }
        let stale: Vec<Uuid> = self
            .placements
            .iter()
            .filter(|(node, p)| {
                !self.shards.contains_key(&p.shard)
                    || self.owner(slot(node_channel(**node).as_bytes())).as_ref() != Some(&p.shard)
            })
            .map(|(n, _)| *n)
            .collect();
        // Placed on a shard that no longer owns the slot: drop it there, subscribe it anew.
        self.unsubscribe(stale).await;
        let held: Vec<Uuid> = self
            .state
            .registry
            .snapshot()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| !self.placements.contains_key(n))
            .collect();
        let count = held.len();
        if let Err(e) = self.subscribe(held).await {
            self.answer_all();
            self.failed("cannot subscribe on a shard", &e);
            return;
        }
        // Shards that hold no placement and own no needed slot stay open: they carry a probe
        // and will be needed by the next node of their slots.
        self.publish_probes();
        self.state.subscriptions.up.store(true, Ordering::Relaxed);
        crate::metrics::Counters::inc(&self.state.counters.pubsub_connects);
        if self.synced_once {
            // A failover may have lost the latest presence writes on the promoted replica.
            self.state.presence_stale.store(true, Ordering::Relaxed);
        }
        self.synced_once = true;
        tracing::info!(
            shards = self.shards.len(),
            resubscribed = count,
            ms = started.elapsed().as_millis() as u64,
            "shard subscriptions in sync with the cluster"
        );
    }

    async fn refresh_slots(&mut self) -> redis::RedisResult<()> {
        let ranges: Vec<redis::Value> = self
            .state
            .redis
            .query(redis::cmd("CLUSTER").arg("SLOTS"))
            .await?;
        let mut slots = BTreeMap::new();
        for range in ranges {
            let redis::Value::Array(items) = range else {
                continue;
            };
            let (Some(first), Some(last), Some(master)) =
                (items.first(), items.get(1), items.get(2))
            else {
                continue;
            };
            let first: u16 = redis::from_redis_value(first)?;
            let last: u16 = redis::from_redis_value(last)?;
            let redis::Value::Array(master) = master else {
                continue;
            };
            let (Some(host), Some(port)) = (master.first(), master.get(1)) else {
                continue;
            };
            let host: String = redis::from_redis_value(host)?;
            let port: u16 = redis::from_redis_value(port)?;
            slots.insert(first, (last, Arc::from(format!("{host}:{port}"))));
        }
        if slots.is_empty() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::ClusterDown,
                "the cluster reports no slots",
            )));
        }
        self.slots = slots;
        Ok(())
    }
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
    let mut info = seed.get_connection_info().clone();
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::ClientError, "bad shard address"))
        })?;
    info.addr = match info.addr {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            tls_params,
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    info.redis.protocol = ProtocolVersion::RESP3;
    Ok(info)
}

/// Sends `command` for the nodes, one command per slot (a command may name channels of one
/// slot only), all at once, and waits for the replies.
async fn send_by_slot(
    state: &GatewayState,
    shard: &Shard,
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
        let mut conn = shard.conn.clone();
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

async fn with_timeout<T>(
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
