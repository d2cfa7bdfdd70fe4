//! Sharded pub/sub on a Redis Cluster: node channels through `SSUBSCRIBE`, one subscription
//! connection per shard this gateway needs.
//!
//! A sharded message travels only within the shard that owns its channel's slot, so the
//! gateway subscribes each node's channel on that shard's master. The manager keeps where each
//! held node is subscribed (its placement) and the cluster's slot map. It batches
//! `SSUBSCRIBE`/`SUNSUBSCRIBE` by slot (one command names channels of one slot only) and queues
//! them on the shard's connection, whose writer sends them in order; the manager never waits
//! for their replies, so confirmations keep flowing while a loaded shard answers slowly.
//! Connections to several shards open concurrently.
//!
//! The shard connections speak RESP3, so subscription replies, messages and the server's own
//! `sunsubscribe` (sent when a slot migrates away) arrive as pushes naming their channel. The
//! manager trusts only those pushes: a channel counts as subscribed once its `ssubscribe` push
//! came, not when a command returned, because the client takes an unsolicited push for the
//! reply of the oldest command in flight. A `sunsubscribe` the manager did not ask for means
//! the slot moved.
//!
//! It resynchronises — re-reads the slot map, opens and closes shard connections, moves
//! placements and sends again what stayed unconfirmed — at once when a slot moved or a shard
//! connection that had lived a while was lost (a failover), and with backoff (25 ms to 2 s)
//! after a failure: a command or connection that failed (`MOVED`, a shard down), a subscription
//! unconfirmed past the command timeout, a connection lost soon after it opened. A shard that
//! failed to open or lost its connection is left alone for 2 s, so the manager does not keep
//! waiting on a dead master (each new try to open it can hold the manager for one command
//! timeout). After a resync that followed a lost, deaf
//! or silent connection, or a master leaving the slot map, the next liveness beat restores
//! presence (a promoted replica may miss the latest writes).
//!
//! Each shard connection also subscribes a probe channel in one of its own slots; the liveness
//! beat publishes to every probe, and a probe nobody received reconnects that shard.

mod link;

use crate::state::GatewayState;
use crate::subscriptions::{Request, Requests};
use flotilla_shared::backoff::Backoff;
use flotilla_shared::channels::{node_channel, node_from_channel};
use flotilla_shared::slots::{slot, Addr, SlotMap};
use link::{connect, with_timeout, Event, Shard};
use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Delay before a resync after a failure; grows to [`RESYNC_MAX`] while failures repeat, and
/// starts over once a resync has held for [`RESYNC_MAX`].
const RESYNC_INITIAL: Duration = Duration::from_millis(50);
const RESYNC_MAX: Duration = Duration::from_secs(2);
/// How often unconfirmed subscriptions and unheard probes are looked at.
const TICK: Duration = Duration::from_millis(250);

/// Where a held node's channel is subscribed.
struct Placement {
    shard: Addr,
    confirmed: bool,
    sent: Instant,
}

struct Manager {
    state: GatewayState,
    slots: SlotMap,
    shards: HashMap<Addr, Shard>,
    placements: HashMap<Uuid, Placement>,
    unconfirmed: usize,
    /// `SUNSUBSCRIBE`s sent and not yet answered, so their replies are not taken for moves.
    unsubscribing: HashMap<(Addr, Uuid), (u32, Instant)>,
    /// Addresses that failed (to open, or to answer in time), and when to try each again.
    unreachable: HashMap<Addr, Instant>,
    waiters: HashMap<Uuid, Vec<oneshot::Sender<()>>>,
    events: mpsc::UnboundedSender<Event>,
    generation: u64,
    /// A resync is due at this instant.
    resync_at: Option<tokio::time::Instant>,
    backoff: Backoff,
    /// When the last resync succeeded (none after a failure).
    synced_at: Option<Instant>,
    /// A shard connection was lost or deaf since the last resync: restore presence after it.
    restore_presence: bool,
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

/// Runs the sharded manager until `stop` is cancelled.
pub(crate) async fn run(state: GatewayState, mut requests: Requests, stop: CancellationToken) {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut m = Manager {
        state,
        slots: SlotMap::default(),
        shards: HashMap::new(),
        placements: HashMap::new(),
        unconfirmed: 0,
        unsubscribing: HashMap::new(),
        unreachable: HashMap::new(),
        waiters: HashMap::new(),
        events: events_tx,
        generation: 0,
        resync_at: Some(tokio::time::Instant::now()),
        backoff: Backoff::new(RESYNC_INITIAL, RESYNC_MAX).with_floor(),
        synced_at: None,
        restore_presence: false,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The Redis handle reads the slot map every second and publishes each change: a master
    // demoted while alive keeps its connections, so only the map may show that slots moved.
    let mut slot_maps = m.state.redis.slot_map_changes();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = m.state.subscriptions.reconnect.notified() => m.drop_deaf_shards(),
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
            _ = tick.tick() => {
                m.drop_deaf_shards();
                m.check_unconfirmed();
                m.forget_unanswered_unsubscribes();
            }
            Ok(()) = slot_maps.changed() => {
                let now = slot_maps.borrow_and_update().clone();
                if let Some(now) = now {
                    m.on_slot_map(&now);
                }
            }
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

    /// Schedules a resync after the backoff's next delay.
    fn retry_later(&mut self, why: &dyn Display) {
        if self
            .synced_at
            .take()
            .is_some_and(|t| t.elapsed() >= RESYNC_MAX)
        {
            self.backoff.reset();
        }
        let delay = self.backoff.next_delay();
        tracing::warn!(
            retry_in_ms = delay.as_millis() as u64,
            "{why}; resynchronising the shard subscriptions"
        );
        self.schedule_resync(delay);
    }

    /// Reconnects the shards whose probe the liveness beat published and nobody received.
    fn drop_deaf_shards(&mut self) {
        let deaf = std::mem::take(&mut *self.state.subscriptions.unheard.lock().unwrap());
        for probe in deaf {
            let addr = self
                .shards
                .iter()
                .find(|(_, s)| s.probe == probe)
                .map(|(a, _)| a.clone());
            if let Some(addr) = addr {
                tracing::warn!(shard = %addr, "a shard's subscription stopped receiving; reconnecting it");
                self.drop_shard(&addr);
                self.restore_presence = true;
                self.schedule_resync(Duration::ZERO);
            }
        }
    }

    /// Schedules a resync when a subscription stayed unconfirmed past the command timeout
    /// (its command may never have been written, or its error taken for another's reply).
    fn check_unconfirmed(&mut self) {
        if self.unconfirmed == 0 || self.resync_at.is_some() {
            return;
        }
        let limit = self.state.redis.timeout();
        if self
            .placements
            .values()
            .any(|p| !p.confirmed && p.sent.elapsed() > limit)
        {
            self.retry_later(&"a shard did not confirm a subscription in time");
        }
    }

    /// Resynchronises if the cluster's slot map is not the one the subscriptions follow (a
    /// failover, a migration whose `sunsubscribe` was missed).
    fn on_slot_map(&mut self, now: &SlotMap) {
        if self.slots.is_empty() || *now == self.slots {
            return;
        }
        let demoted = self
            .shards
            .keys()
            .any(|addr| !now.masters().any(|m| m == addr));
        tracing::info!(demoted, "the cluster's slot map changed; resynchronising");
        if demoted {
            self.restore_presence = true;
        }
        self.schedule_resync(Duration::ZERO);
    }

    /// Forgets `SUNSUBSCRIBE`s unanswered past the command timeout (their reply may have been
    /// an error, with a push taken for it), so they cannot hide a later move of the slot.
    fn forget_unanswered_unsubscribes(&mut self) {
        let limit = self.state.redis.timeout();
        self.unsubscribing
            .retain(|_, (_, sent)| sent.elapsed() <= limit);
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
                let Some(node) = node_from_channel(&channel) else {
                    return;
                };
                if !self.current(&addr, generation) {
                    return;
                }
                match self.placements.get_mut(&node) {
                    Some(p) if p.shard == addr => {
                        if !p.confirmed {
                            p.confirmed = true;
                            self.unconfirmed -= 1;
                        }
                        self.answer(node);
                    }
                    // A late confirmation from a shard the node has since left.
                    Some(_) => {}
                    None => self.answer(node),
                }
            }
            Event::Unsubscribed(addr, generation, channel) => {
                if !self.current(&addr, generation) {
                    return;
                }
                let moved = match node_from_channel(&channel) {
                    Some(node) => {
                        let key = (addr.clone(), node);
                        if let Some((pending, _)) = self.unsubscribing.get_mut(&key) {
                            // The reply to our own SUNSUBSCRIBE.
                            *pending -= 1;
                            if *pending == 0 {
                                self.unsubscribing.remove(&key);
                            }
                            return;
                        }
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
                    tracing::info!(channel, shard = %addr, "a shard dropped a subscription (its slot moved); resubscribing");
                    self.schedule_resync(Duration::ZERO);
                }
            }
            Event::Lost(addr, generation) => {
                if !self.current(&addr, generation) {
                    return;
                }
                let lived = self.shards[&addr].opened.elapsed();
                tracing::warn!(shard = %addr, lived_ms = lived.as_millis() as u64, "lost a shard's subscription connection");
                self.drop_shard(&addr);
                self.restore_presence = true;
                if lived >= RESYNC_MAX {
                    self.schedule_resync(Duration::ZERO);
                } else {
                    // A server that accepts and drops at once must not make this spin.
                    self.retry_later(&format_args!("the connection to shard {addr} did not last"));
                }
            }
            Event::Failed {
                addr,
                generation,
                command,
                nodes,
                error,
            } => {
                if self.current(&addr, generation) {
                    self.on_failed(addr, command, nodes, error);
                }
            }
        }
    }

    /// Forgets a shard connection and every placement on it.
    fn drop_shard(&mut self, addr: &Addr) {
        self.shards.remove(addr);
        self.unsubscribing.retain(|(a, _), _| a != addr);
        let lost: Vec<Uuid> = self
            .placements
            .iter()
            .filter(|(_, p)| &p.shard == addr)
            .map(|(n, _)| *n)
            .collect();
        for node in lost {
            self.unplace(node);
        }
        self.publish_probes();
    }

    fn unplace(&mut self, node: Uuid) {
        if let Some(p) = self.placements.remove(&node) {
            if !p.confirmed {
                self.unconfirmed -= 1;
            }
        }
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
        for &node in &remove {
            self.answer(node);
        }
        self.unsubscribe(remove);
        if self.slots.is_empty() {
            // No slot map yet: the first resync subscribes every held node; a waiter is not
            // kept waiting for it (as with a single Redis that is down).
            for node in add {
                self.answer(node);
            }
            return;
        }
        let unplaced = self.subscribe(add.clone()).await;
        if let Err(e) = unplaced {
            // Nodes not placed are subscribed by the resync; their sessions go on meanwhile.
            for node in add {
                if !self.placements.contains_key(&node) {
                    self.answer(node);
                }
            }
            self.retry_later(&format_args!("a shard subscription failed: {e}"));
        }
    }

    /// `SUNSUBSCRIBE`s the nodes where they are placed, a command per slot, every shard at
    /// once. Failures are only logged: a stray subscription costs the shard a little memory
    /// until the connection ends.
    fn unsubscribe(&mut self, nodes: Vec<Uuid>) {
        let mut by_shard: HashMap<Addr, Vec<Uuid>> = HashMap::new();
        for node in nodes {
            if let Some(p) = self.placements.get(&node) {
                by_shard.entry(p.shard.clone()).or_default().push(node);
            }
            self.unplace(node);
        }
        let now = Instant::now();
        for (addr, nodes) in self.send("SUNSUBSCRIBE", by_shard) {
            for node in nodes {
                let pending = self
                    .unsubscribing
                    .entry((addr.clone(), node))
                    .or_insert((0, now));
                *pending = (pending.0 + 1, now);
            }
        }
    }

    /// Queues `command` for each shard's nodes on that shard's connection (sent a command per
    /// slot, in order; failures come back as [`Event::Failed`]). Returns the shards queued on.
    fn send(
        &self,
        command: &'static str,
        by_shard: HashMap<Addr, Vec<Uuid>>,
    ) -> Vec<(Addr, Vec<Uuid>)> {
        let mut queued = Vec::new();
        for (addr, nodes) in by_shard {
            if let Some(shard) = self.shards.get(&addr) {
                shard.queue(command, nodes.clone());
                queued.push((addr, nodes));
            }
        }
        queued
    }

    /// A batch of subscription commands failed. A shard whose connection is lost is dropped
    /// and left alone for a while, so the next batches do not wait on it again; a timeout does
    /// not drop it, since a large batch on a loaded host may outlast the timeout while its
    /// confirmations still arrive (and what stays unconfirmed is sent again). Waiting sessions
    /// go on; the nodes still unconfirmed are unplaced, so the next resync subscribes them.
    fn on_failed(
        &mut self,
        addr: Addr,
        command: &'static str,
        nodes: Vec<Uuid>,
        e: redis::RedisError,
    ) {
        if e.is_connection_dropped() || e.is_connection_refusal() {
            tracing::warn!(shard = %addr, error = %e, "lost a shard's connection; reconnecting it later");
            self.drop_shard(&addr);
            self.unreachable
                .insert(addr.clone(), Instant::now() + RESYNC_MAX);
            self.restore_presence = true;
        }
        if command == "SUNSUBSCRIBE" {
            tracing::debug!(error = %e, shard = %addr, "unsubscribing failed");
            for node in nodes {
                let key = (addr.clone(), node);
                if let Some((pending, _)) = self.unsubscribing.get_mut(&key) {
                    *pending -= 1;
                    if *pending == 0 {
                        self.unsubscribing.remove(&key);
                    }
                }
            }
            return;
        }
        for node in nodes {
            // Unplaced, so the resync sends it again at once.
            if self
                .placements
                .get(&node)
                .is_some_and(|p| p.shard == addr && !p.confirmed)
            {
                self.unplace(node);
            }
            self.answer(node);
        }
        self.retry_later(&format_args!("a shard subscription failed: {e}"));
    }

    /// `SSUBSCRIBE`s the nodes on the masters owning their slots, opening shard connections
    /// (concurrently) as needed and skipping addresses that failed a moment ago. Confirmations
    /// arrive as pushes. Nodes whose shard is unavailable stay unplaced; a failure is returned.
    async fn subscribe(&mut self, nodes: Vec<Uuid>) -> redis::RedisResult<()> {
        let mut by_shard: HashMap<Addr, Vec<Uuid>> = HashMap::new();
        let mut result = Ok(());
        for node in nodes {
            match self.slots.owner(slot(node_channel(node).as_bytes())) {
                Some(owner) => by_shard.entry(owner).or_default().push(node),
                None => result = Err(cluster_error("a node's slot is not covered")),
            }
        }
        let closed: Vec<Addr> = by_shard
            .keys()
            .filter(|a| !self.shards.contains_key(*a))
            .cloned()
            .collect();
        if let Err(e) = self.open(closed).await {
            result = Err(e);
        }
        let mut sendable: HashMap<Addr, Vec<Uuid>> = HashMap::new();
        let now = Instant::now();
        for (addr, nodes) in by_shard {
            if !self.shards.contains_key(&addr) {
                if result.is_ok() {
                    result = Err(cluster_error("a shard is unreachable"));
                }
                continue;
            }
            for &node in &nodes {
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
            sendable.insert(addr, nodes);
        }
        self.send("SSUBSCRIBE", sendable);
        result
    }

    /// Opens connections to `addrs` at once (each with its probe subscribed), skipping those
    /// that failed less than [`RESYNC_MAX`] ago; returns a failure if any.
    async fn open(&mut self, addrs: Vec<Addr>) -> redis::RedisResult<()> {
        let mut opening = Vec::new();
        for addr in addrs {
            if self
                .unreachable
                .get(&addr)
                .is_some_and(|at| *at > Instant::now())
            {
                continue;
            }
            self.unreachable.remove(&addr);
            self.generation += 1;
            let probe = self.probe_for(&addr, self.generation);
            let (state, events, generation) =
                (self.state.clone(), self.events.clone(), self.generation);
            opening.push(async move {
                let opened = connect(&state, &addr, generation, probe, events).await;
                (addr, opened)
            });
        }
        let mut result = Ok(());
        for (addr, opened) in futures_util::future::join_all(opening).await {
            match opened {
                Ok(shard) => {
                    tracing::info!(shard = %addr, "opened a shard subscription connection");
                    self.shards.insert(addr, shard);
                }
                Err(e) => {
                    tracing::warn!(shard = %addr, error = %e, "cannot open a shard subscription connection");
                    self.unreachable.insert(addr, Instant::now() + RESYNC_MAX);
                    result = Err(e);
                }
            }
        }
        self.publish_probes();
        result
    }

    /// A probe channel of this gateway's connection `generation` that hashes to a slot `addr`
    /// owns (named per connection, so a late report about an earlier connection's probe
    /// cannot reconnect a later one).
    fn probe_for(&self, addr: &Addr, generation: u64) -> String {
        // The tag comes first, so braces in a gateway id cannot change the slot.
        let id = self.state.id();
        (0u32..)
            .map(|i| format!("flotilla:probe:{{{i}}}:{id}:{generation}"))
            .find(|ch| self.slots.owner(slot(ch.as_bytes())).as_ref() == Some(addr))
            .expect("every master in the slot map owns a slot")
    }

    fn publish_probes(&self) {
        let probes = self.shards.values().map(|s| s.probe.clone()).collect();
        *self.state.subscriptions.probes.lock().unwrap() = probes;
    }

    /// Re-reads the slot map, closes connections to nodes that no longer own slots, moves
    /// probes whose slot moved, and subscribes every held node that is not placed on its slot's
    /// owner or whose subscription stayed unconfirmed.
    async fn resync(&mut self) {
        let started = Instant::now();
        if let Err(e) = self.refresh_slots().await {
            self.answer_all();
            self.retry_later(&format_args!("cannot read the cluster's slot map: {e}"));
            return;
        }
        let masters: HashSet<Addr> = self.slots.masters().cloned().collect();
        let gone: Vec<Addr> = self
            .shards
            .keys()
            .filter(|a| !masters.contains(*a))
            .cloned()
            .collect();
        if !gone.is_empty() {
            // A master left the map: a failover, whose new master may miss the latest writes.
            self.restore_presence = true;
        }
        for addr in gone {
            self.drop_shard(&addr);
        }
        self.move_probes().await;
        let limit = self.state.redis.timeout();
        let (mut misplaced, mut unheard) = (Vec::new(), Vec::new());
        for (node, p) in &self.placements {
            if self
                .slots
                .owner(slot(node_channel(*node).as_bytes()))
                .as_ref()
                != Some(&p.shard)
            {
                misplaced.push(*node);
            } else if !p.confirmed && p.sent.elapsed() > limit {
                unheard.push(*node);
            }
        }
        // Placed on a shard that no longer owns the slot (which dropped the channel itself
        // when the slot left), or sent and never confirmed: subscribed anew. A repeated
        // SSUBSCRIBE is harmless.
        for node in misplaced.into_iter().chain(unheard) {
            self.unplace(node);
        }
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
            self.retry_later(&format_args!("cannot subscribe on a shard: {e}"));
            return;
        }
        self.synced_at = Some(Instant::now());
        self.state.subscriptions.up.store(true, Ordering::Relaxed);
        crate::metrics::Counters::inc(&self.state.counters.pubsub_connects);
        if std::mem::take(&mut self.restore_presence) {
            self.state.presence_stale.store(true, Ordering::Relaxed);
        }
        tracing::info!(
            shards = self.shards.len(),
            resubscribed = count,
            ms = started.elapsed().as_millis() as u64,
            "shard subscriptions in sync with the cluster"
        );
    }

    /// Gives every shard whose probe's slot moved away a new probe on the same connection.
    async fn move_probes(&mut self) {
        let moved: Vec<Addr> = self
            .shards
            .iter()
            .filter(|(addr, s)| self.slots.owner(slot(s.probe.as_bytes())).as_ref() != Some(*addr))
            .map(|(a, _)| a.clone())
            .collect();
        for addr in moved {
            let probe = self.probe_for(&addr, self.shards[&addr].generation);
            let mut conn = self.shards[&addr].conn.clone();
            let subscribed = with_timeout(self.state.redis.timeout(), async {
                redis::cmd("SSUBSCRIBE")
                    .arg(&probe)
                    .exec_async(&mut conn)
                    .await
            })
            .await;
            match subscribed {
                Ok(()) => {
                    if let Some(shard) = self.shards.get_mut(&addr) {
                        shard.probe = probe;
                    }
                }
                Err(e) => {
                    tracing::warn!(shard = %addr, error = %e, "cannot move a shard's probe; reconnecting it");
                    self.drop_shard(&addr);
                }
            }
        }
        self.publish_probes();
    }

    async fn refresh_slots(&mut self) -> redis::RedisResult<()> {
        self.slots = self.state.redis.slot_map().await?;
        Ok(())
    }
}

fn cluster_error(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::ClusterDown, what))
}
