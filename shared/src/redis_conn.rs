//! A Redis command connection made on first use and reused: to one Redis, or to a Redis
//! Cluster when `redis.cluster_nodes` is set.
//!
//! Services start while Redis is down; every call then fails fast with a timeout instead of
//! hanging a request, and the connection is retried on the next call.
//!
//! In cluster mode the redis crate's cluster connection routes each command by its key and
//! follows `MOVED`/`ASK` and failovers. A pipeline must then stay within one slot (every key and
//! channel of one node shares the node's hash tag); commands for many nodes go through
//! [`Redis::fan_out`]. Node channels are published with [`Redis::node_publish`]: `SPUBLISH`
//! on a cluster, so a push travels only to the shard that owns its slot.

use crate::settings::RedisSettings;
use crate::slots::SlotMap;
use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::RwLock;

/// Commands [`Redis::fan_out`] keeps in flight at once on a cluster.
const FAN_OUT_IN_FLIGHT: usize = 256;
/// Commands one handle keeps in flight at once on a cluster. The cluster client keeps each
/// request's whole state until it is answered, unlike a single connection's pipeline: without
/// this cap 10,000 agents connecting at once took a gateway's heap to a 250 MB peak and left
/// it 0.5 KiB per agent larger once settled (jemalloc statistics; BENCHMARKS.md).
const CLUSTER_IN_FLIGHT: usize = 256;

/// Where the handle connects.
#[derive(Clone)]
enum Target {
    Single(redis::Client),
    Cluster {
        client: ClusterClient,
        /// One client per seed, for connections that any node can serve (classic pub/sub).
        seeds: Arc<[redis::Client]>,
    },
}

/// A lazily connected, self-reconnecting Redis connection; cheap to clone.
#[derive(Clone)]
pub struct Redis {
    target: Target,
    shared: Arc<Shared>,
    timeout: Duration,
    /// On a cluster: the commands allowed in flight at once.
    in_flight: Option<Arc<tokio::sync::Semaphore>>,
}

/// What every clone of a handle shares.
#[derive(Default)]
struct Shared {
    /// The connection once made; on a cluster replaced when the slot map changes.
    conn: RwLock<Option<Conn>>,
    /// On a cluster: the latest slot map seen, published when it changes.
    slot_maps: tokio::sync::watch::Sender<Option<SlotMap>>,
}

/// The connection behind a [`Redis`] handle: a single server's or a cluster's.
#[derive(Clone)]
pub enum Conn {
    /// One Redis.
    Single(ConnectionManager),
    /// A Redis Cluster (routes by key, follows redirections).
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl Redis {
    /// Parses the URL (or the cluster's seed URLs); no connection is made yet.
    pub fn new(settings: &RedisSettings) -> redis::RedisResult<Self> {
        let timeout = Duration::from_millis(settings.command_timeout_ms);
        let seeds = settings.cluster_seeds();
        let target = if seeds.is_empty() {
            Target::Single(redis::Client::open(settings.url.expose())?)
        } else {
            let client = ClusterClientBuilder::new(seeds.clone())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                // Redirections and a failover's refresh take a few tries; the command
                // timeout still bounds each call.
                .retries(4)
                .min_retry_wait(10)
                .max_retry_wait(200)
                .build()?;
            let seeds = seeds
                .iter()
                .map(|u| redis::Client::open(u.as_str()))
                .collect::<redis::RedisResult<Vec<_>>>()?;
            Target::Cluster {
                client,
                seeds: seeds.into(),
            }
        };
        let in_flight = matches!(target, Target::Cluster { .. })
            .then(|| Arc::new(tokio::sync::Semaphore::new(CLUSTER_IN_FLIGHT)));
        Ok(Self {
            in_flight,
            target,
            shared: Arc::default(),
            timeout,
        })
    }

    /// Whether this handle talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    /// The publish command of node channels: `SPUBLISH` (sharded pub/sub) on a cluster,
    /// `PUBLISH` on one Redis. Both answer how many subscribers received the message.
    pub fn node_publish(&self) -> &'static str {
        if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// The seed clients: the one Redis, or each seed node of the cluster.
    pub fn seed_clients(&self) -> Vec<redis::Client> {
        match &self.target {
            Target::Single(client) => vec![client.clone()],
            Target::Cluster { seeds, .. } => seeds.to_vec(),
        }
    }

    /// A classic pub/sub connection. On a cluster any node serves it (classic messages reach
    /// every node), so every seed is tried at once and the first to answer serves it.
    pub async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let seeds = self.seed_clients();
        let tries = seeds
            .iter()
            .map(|client| Box::pin(client.get_async_pubsub()));
        let first =
            tokio::time::timeout(self.timeout, futures_util::future::select_ok(tries)).await;
        match first {
            Ok(Ok((pubsub, _))) => Ok(pubsub),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(timed_out()),
        }
    }

    /// Timeout applied to each command.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The shared connection, connecting first if needed.
    pub async fn conn(&self) -> redis::RedisResult<Conn> {
        if let Some(conn) = self.shared.conn.read().await.as_ref() {
            return Ok(conn.clone());
        }
        let mut slot = self.shared.conn.write().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = match &self.target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(self.timeout)
                    .set_response_timeout(self.timeout)
                    // Fail fast: callers treat Redis as optional and retry on their next call.
                    .set_number_of_retries(0);
                Conn::Single(client.get_connection_manager_with_config(config).await?)
            }
            Target::Cluster { client, .. } => {
                let conn = client.get_async_connection().await?;
                tokio::spawn(follow_topology(
                    Arc::downgrade(&self.shared),
                    client.clone(),
                    self.timeout,
                ));
                Conn::Cluster(conn)
            }
        };
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// The slot maps the handle sees, from its first connection on: a new value each time
    /// the cluster's map changes (read every [`TOPOLOGY_CHECK`]; always `None` on one Redis).
    pub fn slot_map_changes(&self) -> tokio::sync::watch::Receiver<Option<SlotMap>> {
        self.shared.slot_maps.subscribe()
    }

    /// The cluster's slot map (`CLUSTER SLOTS`).
    pub async fn slot_map(&self) -> redis::RedisResult<SlotMap> {
        let reply: Vec<Value> = self.query(redis::cmd("CLUSTER").arg("SLOTS")).await?;
        SlotMap::parse(&reply)
    }

    /// Runs a command or pipeline with the timeout applied. On a cluster a pipeline must keep
    /// to one slot.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &(impl ConnectionLikeQuery + ?Sized),
    ) -> redis::RedisResult<T> {
        let attempt = async {
            let _permit = self.permit().await;
            let mut conn = self.conn().await?;
            cmd.run(&mut conn).await
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result.and_then(|v| redis::from_redis_value(&v)),
            Err(_) => Err(timed_out()),
        }
    }

    /// Runs a script invocation with the timeout applied.
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> redis::RedisResult<T> {
        let attempt = async {
            let _permit = self.permit().await;
            let mut conn = self.conn().await?;
            invocation.invoke_async(&mut conn).await
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(timed_out()),
        }
    }

    /// A place among the commands in flight (on a cluster; one Redis needs none).
    async fn permit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        match &self.in_flight {
            Some(limit) => limit.acquire().await.ok(),
            None => None,
        }
    }

    /// Runs commands that may touch many slots (a publish to each of many nodes) and returns
    /// how many failed, with the last error: one pipeline on one Redis; on a cluster each
    /// command on its own, [`FAN_OUT_IN_FLIGHT`] at a time, so each reaches its slot's shard.
    pub async fn fan_out(&self, cmds: Vec<Cmd>) -> (usize, Option<redis::RedisError>) {
        if cmds.is_empty() {
            return (0, None);
        }
        if !self.is_cluster() {
            let n = cmds.len();
            let mut pipe = redis::pipe();
            for cmd in cmds {
                pipe.add_command(cmd).ignore();
            }
            return match self.query::<()>(&pipe).await {
                Ok(()) => (0, None),
                Err(e) => (n, Some(e)),
            };
        }
        // Owned futures: a stream of closures over borrowed commands is not `Send` for every
        // lifetime, which axum handlers need.
        let calls: Vec<_> = cmds
            .into_iter()
            .map(|cmd| {
                let redis = self.clone();
                async move { redis.query::<()>(&cmd).await }
            })
            .collect();
        let results: Vec<redis::RedisResult<()>> = futures_util::stream::iter(calls)
            .buffer_unordered(FAN_OUT_IN_FLIGHT)
            .collect()
            .await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        (failed, results.into_iter().filter_map(Result::err).last())
    }
}

/// `seed`'s scheme, TLS settings and credentials at another host and port: how a cluster
/// client reaches a node the cluster names.
pub fn at_address(seed: &redis::ConnectionInfo, host: String, port: u16) -> redis::ConnectionInfo {
    let addr = match &seed.addr {
        redis::ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => redis::ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => redis::ConnectionAddr::Tcp(host, port),
    };
    redis::ConnectionInfo {
        addr,
        redis: seed.redis.clone(),
    }
}

/// How often a cluster handle reads the slot map.
const TOPOLOGY_CHECK: Duration = Duration::from_secs(1);

/// Replaces a cluster handle's connection when the slot map changes, and publishes the new
/// map, until the handle is gone.
///
/// The cluster client follows a slot only when a node answers `MOVED`. A master demoted to a
/// replica by a failover stays up and still accepts `SPUBLISH` for its former slots without
/// redirecting (Redis 7.0), delivering to no one, so publishers would never learn of the
/// failover. A fresh connection reads the new map.
async fn follow_topology(
    shared: std::sync::Weak<Shared>,
    client: ClusterClient,
    timeout: Duration,
) {
    let mut every = tokio::time::interval(TOPOLOGY_CHECK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Some(Conn::Cluster(mut current)) = shared.conn.read().await.clone() else {
            return;
        };
        let mut slots = redis::cmd("CLUSTER");
        slots.arg("SLOTS");
        let read = tokio::time::timeout(timeout, slots.query_async::<Vec<Value>>(&mut current));
        let Some(now) = read
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|reply| SlotMap::parse(&reply).ok())
        else {
            continue;
        };
        let first = match &*shared.slot_maps.borrow() {
            Some(known) if *known == now => continue,
            known => known.is_none(),
        };
        if !first {
            let Ok(Ok(fresh)) = tokio::time::timeout(timeout, client.get_async_connection()).await
            else {
                continue;
            };
            tracing::info!("the cluster's slot map changed; reconnected to follow it");
            *shared.conn.write().await = Some(Conn::Cluster(fresh));
        }
        shared.slot_maps.send_replace(Some(now));
    }
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::IoError, "redis command timed out"))
}

/// A command or a pipeline.
pub trait ConnectionLikeQuery: Sync {
    /// Sends it and returns the raw reply.
    fn run<'a>(
        &'a self,
        conn: &'a mut Conn,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = redis::RedisResult<redis::Value>> + Send + 'a>,
    >;
}

impl ConnectionLikeQuery for redis::Cmd {
    fn run<'a>(
        &'a self,
        conn: &'a mut Conn,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = redis::RedisResult<redis::Value>> + Send + 'a>,
    > {
        Box::pin(self.query_async(conn))
    }
}

impl ConnectionLikeQuery for redis::Pipeline {
    fn run<'a>(
        &'a self,
        conn: &'a mut Conn,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = redis::RedisResult<redis::Value>> + Send + 'a>,
    > {
        Box::pin(self.query_async(conn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[tokio::test]
    async fn a_down_redis_fails_fast() {
        let redis = Redis::new(&RedisSettings {
            url: Secret::new("redis://127.0.0.1:1"),
            cluster_nodes: None,
            command_timeout_ms: 500,
        })
        .unwrap();
        assert!(!redis.is_cluster());
        assert_eq!(redis.node_publish(), "PUBLISH");
        // Bounded by the command timeout, however the connection attempt behaves.
        let started = tokio::time::Instant::now();
        for _ in 0..3 {
            assert!(redis.query::<String>(&redis::cmd("PING")).await.is_err());
        }
        assert!(started.elapsed() < std::time::Duration::from_millis(3 * 500 + 300));
    }

    #[tokio::test]
    async fn a_down_cluster_fails_fast() {
        let redis = Redis::new(&RedisSettings {
            url: Secret::new("redis://127.0.0.1:1"),
            cluster_nodes: Some(Secret::new("redis://127.0.0.1:1,redis://127.0.0.1:2")),
            command_timeout_ms: 500,
        })
        .unwrap();
        assert!(redis.is_cluster());
        assert_eq!(redis.node_publish(), "SPUBLISH");
        let started = tokio::time::Instant::now();
        for _ in 0..3 {
            assert!(redis.query::<String>(&redis::cmd("PING")).await.is_err());
        }
        assert!(redis.pubsub().await.is_err());
        assert!(started.elapsed() < std::time::Duration::from_millis(4 * 500 + 300));
    }
}
