//! A Redis command connection made on first use and reused: to one Redis, or to a Redis
//! Cluster when `redis.cluster_nodes` is set.
//!
//! Services start while Redis is down; every call then fails fast with a timeout instead of
//! hanging a request, and the connection is retried on the next call.
//!
//! In cluster mode a [`SlotRouter`] sends each command to the master owning its key's slot and
//! follows `MOVED`/`ASK` and failovers. A pipeline must then stay within one slot (every key and
//! channel of one node shares the node's hash tag); commands for many nodes go through
//! [`Redis::fan_out`]. Node channels are published with [`Redis::node_publish`]: `SPUBLISH`
//! on a cluster, so a push travels only to the shard that owns its slot.

use crate::settings::RedisSettings;
use crate::slot_router::SlotRouter;
use crate::slots::SlotMap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::RwLock;

/// Where the handle connects.
#[derive(Clone)]
enum Target {
    Single(redis::Client),
    /// One client per seed: where the slot map is first read, and classic pub/sub (which
    /// any node serves).
    Cluster {
        seeds: Arc<[redis::Client]>,
    },
}

/// A lazily connected, self-reconnecting Redis connection; cheap to clone.
#[derive(Clone)]
pub struct Redis {
    target: Target,
    shared: Arc<Shared>,
    timeout: Duration,
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
    Cluster(SlotRouter),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => Box::pin(c.command(cmd)),
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
            Self::Cluster(c) => Box::pin(c.pipeline(cmd, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(_) => 0,
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
            let seeds = seeds
                .iter()
                .map(|u| redis::Client::open(u.as_str()))
                .collect::<redis::RedisResult<Vec<_>>>()?;
            Target::Cluster {
                seeds: seeds.into(),
            }
        };
        Ok(Self {
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
            Target::Cluster { seeds } => {
                let router = SlotRouter::connect(seeds.clone(), self.timeout).await?;
                self.shared.slot_maps.send_replace(Some(router.slot_map()));
                tokio::spawn(follow_topology(Arc::downgrade(&self.shared), self.timeout));
                Conn::Cluster(router)
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
            let mut conn = self.conn().await?;
            invocation.invoke_async(&mut conn).await
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(timed_out()),
        }
    }

    /// Runs commands that may touch many slots (a publish to each of many nodes) and returns
    /// how many failed, with the last error: one pipeline on one Redis, one per master on a
    /// cluster (every master at once), so each command reaches its slot's shard.
    pub async fn fan_out(&self, cmds: Vec<Cmd>) -> (usize, Option<redis::RedisError>) {
        let n = cmds.len();
        if n == 0 {
            return (0, None);
        }
        let router = match self.conn().await {
            Ok(Conn::Cluster(router)) => router,
            Ok(Conn::Single(_)) => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd).ignore();
                }
                return match self.query::<()>(&pipe).await {
                    Ok(()) => (0, None),
                    Err(e) => (n, Some(e)),
                };
            }
            Err(e) => return (n, Some(e)),
        };
        // Bounded inside, step by step, so what succeeded is not counted as failed.
        router.fan_out(cmds).await
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

/// `seed`'s settings at the cluster node `addr` (`host:port`, as the slot map names it).
pub fn at_node(
    seed: &redis::ConnectionInfo,
    addr: &str,
) -> redis::RedisResult<redis::ConnectionInfo> {
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::ClientError, "bad cluster node address"))
        })?;
    Ok(at_address(seed, host, port))
}

/// How often a cluster handle reads the slot map.
const TOPOLOGY_CHECK: Duration = Duration::from_secs(1);

/// Re-reads a cluster handle's slot map every [`TOPOLOGY_CHECK`] and publishes each change,
/// until the handle is gone.
///
/// The router learns of moved slots from `MOVED` replies, but a master demoted to a replica by
/// a failover stays up and still accepts `SPUBLISH` for its former slots without redirecting
/// (Redis 7.0), delivering to no one: only the map shows that failover.
async fn follow_topology(shared: std::sync::Weak<Shared>, timeout: Duration) {
    let mut every = tokio::time::interval(TOPOLOGY_CHECK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Some(Conn::Cluster(router)) = shared.conn.read().await.clone() else {
            return;
        };
        if let Ok(Ok(true)) = tokio::time::timeout(timeout, router.refresh()).await {
            tracing::info!("the cluster's slot map changed; following it");
        }
        let now = Some(router.slot_map());
        shared.slot_maps.send_if_modified(|known| {
            let changed = *known != now;
            if changed {
                known.clone_from(&now);
            }
            changed
        });
    }
}

pub(crate) fn timed_out() -> redis::RedisError {
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
