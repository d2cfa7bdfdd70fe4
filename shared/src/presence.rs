//! Which gateway holds each node's socket, kept in Redis.
//!
//! A node's presence is the hash at [`presence_key`] with fields `gateway`, `conn`, `since`
//! (epoch ms) and `transport` (`websocket` or `sse`; absent means `websocket`). It counts only while the holding gateway's liveness key
//! ([`Keys::alive`]) exists, so a crashed gateway's sockets read as gone once that key
//! expires. Every read-modify-write is one Lua script, so it is atomic:
//! - [`claim`]: a new socket takes the node over (newest wins) and learns who held it before;
//! - [`release`]: a closing socket deletes the entry only if it still holds it, so a late close
//!   of an older socket never erases a newer one's presence;
//! - [`restore`]: after Redis lost its data or a claim failed, a gateway re-asserts a socket
//!   it still holds, unless a newer socket took the node in the meantime. An older entry (one a
//!   crashed gateway left, or the one the failed claim should have replaced) is taken over, not
//!   obeyed; unlike a claim, no supersede is sent, so an older socket still open elsewhere
//!   stays open until it ends or its own gateway restores. Sockets of one gateway compare
//!   exactly; across gateways, `since` comes from each host's clock, so two sockets of one node
//!   opened within the hosts' clock skew may be ordered wrongly;
//! - [`lookup`]: the fleet API reads many nodes in one round trip (on a cluster, a read per
//!   node, all in flight at once, and one for the gateways' liveness);
//! - [`connected`]: every live connection at once, for the fleet API's `connected` and
//!   `transport` filters and its summary.
//!
//! Beside the hashes, each gateway has a set of the nodes it holds per transport
//! ([`NODES_KEY_PREFIX`]`<gateway>:<transport>`), and [`GATEWAYS_KEY`] names the gateways
//! that have such sets; the three writing scripts keep them in step with the hashes in the
//! same atomic step (a claim also takes the node out of its previous holder's set). They let
//! the fleet API find the ~10% of a large fleet that is connected without reading a hash per
//! node: [`connected`] checks each gateway's liveness once and reads the live gateways' sets
//! in short `SSCAN` steps (never holding Redis long, however many are connected); the API hands
//! Postgres the ids as the list the page's other filters and order apply to.
//!
//! On a Redis Cluster a script may touch one slot only. A node's hash carries the node's hash
//! tag (its slot is its channel's), while the gateway-wide keys — [`Keys::gateways`], the node
//! sets and the liveness keys — share the tag `{flotilla:presence}`, so [`connected`] stays
//! one script there. The writers then run in steps: the node's hash by a script on the node's
//! slot (the read-modify-write that decides who holds the node stays atomic), then the node
//! sets and the fleet event in one pipeline to the presence slot's master; once the hash is
//! written that second step is best effort. The sets are then an index that races can leave a
//! node in after it left, or without while it is connected: the gateway's periodic [`reindex`] and
//! [`reconcile`] repair both, and [`connected`] lists a node found in two sets once. [`lookup`]
//! reads each hash on its own shard.

use crate::channels::{presence_key, FLEET_EVENTS};
use crate::redis_conn::Redis;
use futures_util::StreamExt;
use redis::{RedisResult, Script, ScriptInvocation, Value};
use std::str::FromStr;
use std::sync::LazyLock;
use uuid::Uuid;

/// A node's live connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The gateway holding the socket.
    pub gateway_id: String,
    /// The socket's connection id (unique across the fleet).
    pub conn_id: String,
    /// When the socket opened, Unix epoch milliseconds.
    pub since_ms: i64,
    /// How the agent is connected.
    pub transport: Transport,
}

/// The push transport of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `GET /api/agent/ws` (the older agents).
    Websocket,
    /// `GET /api/agent/push`, Server-Sent Events (current agents).
    Sse,
}

impl Transport {
    /// The name stored in Redis and shown by the fleet API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Websocket => "websocket",
            Self::Sse => "sse",
        }
    }

    fn parse(stored: Option<&str>) -> Self {
        match stored {
            Some("sse") => Self::Sse,
            _ => Self::Websocket,
        }
    }
}

impl FromStr for Transport {
    type Err = ();

    /// `websocket` or `sse`, as shown by the fleet API.
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "websocket" => Ok(Self::Websocket),
            "sse" => Ok(Self::Sse),
            _ => Err(()),
        }
    }
}

/// Set of the gateway ids that hold (or held) node sets (single Redis).
pub const GATEWAYS_KEY: &str = "flotilla:presence:gateways";
/// Prefix of a gateway's node sets: `<prefix><gateway id>:<transport>` (single Redis).
pub const NODES_KEY_PREFIX: &str = "flotilla:presence:nodes:";

/// The names of the gateway-wide presence keys, which differ by deployment: on a cluster they
/// share one hash tag so the scripts that read them together stay on one slot.
#[derive(Debug, Clone, Copy)]
pub struct Keys {
    /// Set of the gateway ids that hold (or held) node sets.
    pub gateways: &'static str,
    /// Prefix of a gateway's node sets: `<prefix><gateway id>:<transport>`.
    pub nodes_prefix: &'static str,
    /// Text before the gateway id in its liveness key.
    pub alive_prefix: &'static str,
    /// Text after the gateway id in its liveness key.
    pub alive_suffix: &'static str,
}

const SINGLE: Keys = Keys {
    gateways: GATEWAYS_KEY,
    nodes_prefix: NODES_KEY_PREFIX,
    alive_prefix: "flotilla:gateway:",
    alive_suffix: ":alive",
};

const CLUSTER: Keys = Keys {
    gateways: "flotilla:{flotilla:presence}:gateways",
    nodes_prefix: "flotilla:{flotilla:presence}:nodes:",
    alive_prefix: "flotilla:{flotilla:presence}:gateway:",
    alive_suffix: ":alive",
};

/// The key names `redis` uses.
pub fn keys(redis: &Redis) -> Keys {
    if redis.is_cluster() {
        CLUSTER
    } else {
        SINGLE
    }
}

impl Keys {
    /// The key that exists (with a short TTL) while the gateway is alive.
    pub fn alive(&self, gateway_id: &str) -> String {
        format!("{}{gateway_id}{}", self.alive_prefix, self.alive_suffix)
    }

    /// The gateway's set of nodes connected over `transport`.
    pub fn nodes(&self, gateway_id: &str, transport: Transport) -> String {
        format!("{}{gateway_id}:{}", self.nodes_prefix, transport.as_str())
    }
}

/// `KEYS[1]` = the gateways set; `ARGV` = the liveness key's prefix and suffix around a
/// gateway id, then the node sets' prefix. Returns the live gateways (a few keys each, however
/// many nodes they hold); forgets a dead gateway whose sets are empty.
static CONNECTED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local out = {}
        for _, gw in ipairs(redis.call('SMEMBERS', KEYS[1])) do
          if redis.call('EXISTS', ARGV[1] .. gw .. ARGV[2]) == 1 then
            out[#out + 1] = gw
          elseif redis.call('EXISTS', ARGV[3] .. gw .. ':websocket', ARGV[3] .. gw .. ':sse') == 0 then
            redis.call('SREM', KEYS[1], gw)
          end
        end
        return out",
    )
});

/// Members read per `SSCAN` step: each step is short, so reading a large set never holds Redis
/// (the push bus) for long.
const SCAN_COUNT: usize = 5000;

/// Hashes read at once by [`lookup`] on a cluster.
const LOOKUP_IN_FLIGHT: usize = 256;

/// The fields of a presence hash, in the order [`parse_fields`] reads them.
const FIELDS: [&str; 4] = ["gateway", "conn", "since", "transport"];

/// `KEYS` = presence keys; `ARGV` = the liveness key's prefix and suffix around the gateway id.
/// Single Redis only (the keys span slots).
static LOOKUP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local out = {}
        for i, key in ipairs(KEYS) do
          local p = redis.call('HMGET', key, 'gateway', 'conn', 'since', 'transport')
          if p[1] and p[2] and redis.call('EXISTS', ARGV[1] .. p[1] .. ARGV[2]) == 1 then
            out[i] = p
          else
            out[i] = false
          end
        end
        return out",
    )
});

/// Sets the presence hash `KEYS[1]` and returns its previous fields (nils when there was
/// none). On a single Redis (`ARGV[6]` given) it also moves the node (`ARGV[5]`) from its
/// previous holder's node set to the new one's (prefix `ARGV[6]`), records the gateway in the
/// gateways set (`KEYS[2]`), and publishes `ARGV[8]` on channel `ARGV[7]` if given.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local prev = redis.call('HMGET', KEYS[1], 'gateway', 'conn', 'since', 'transport')
        redis.call('HSET', KEYS[1], 'gateway', ARGV[1], 'conn', ARGV[2], 'since', ARGV[3],
                   'transport', ARGV[4])
        if ARGV[6] then
          if prev[1] then
            redis.call('SREM', ARGV[6] .. prev[1] .. ':' .. (prev[4] or 'websocket'), ARGV[5])
          end
          redis.call('SADD', ARGV[6] .. ARGV[1] .. ':' .. ARGV[4], ARGV[5])
          redis.call('SADD', KEYS[2], ARGV[1])
        end
        if ARGV[8] then
          redis.call('PUBLISH', ARGV[7], ARGV[8])
        end
        return prev",
    )
});

/// Deletes the presence hash `KEYS[1]` if connection `ARGV[1]` still holds it and returns
/// `<gateway>:<transport>` (else nil). On a single Redis (`ARGV[3]` given) it also takes the
/// node (`ARGV[2]`) out of its holder's node set (prefix `ARGV[3]`) and publishes `ARGV[5]` on
/// channel `ARGV[4]` if given.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local p = redis.call('HMGET', KEYS[1], 'conn', 'gateway', 'transport')
        if p[1] == ARGV[1] then
          local set = p[2] .. ':' .. (p[3] or 'websocket')
          redis.call('DEL', KEYS[1])
          if ARGV[3] then
            redis.call('SREM', ARGV[3] .. set, ARGV[2])
          end
          if ARGV[5] then
            redis.call('PUBLISH', ARGV[4], ARGV[5])
          end
          return set
        end
        return false",
    )
});

/// Sets the presence hash `KEYS[1]` unless another connection that opened at the same time or
/// later (`since` >= `ARGV[3]`) holds it, then answers 0; on a single Redis (`ARGV[6]` given)
/// it also moves the node (`ARGV[5]`) from a previous holder's node set to its gateway's (prefix
/// `ARGV[6]`) and keeps the gateway in the gateways set (`KEYS[2]`).
static RESTORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local cur = redis.call('HMGET', KEYS[1], 'gateway', 'conn', 'since', 'transport')
        local other = cur[2] and cur[2] ~= ARGV[2]
        if other and (tonumber(cur[3]) or 0) >= tonumber(ARGV[3]) then
          return 0
        end
        redis.call('HSET', KEYS[1], 'gateway', ARGV[1], 'conn', ARGV[2], 'since', ARGV[3],
                   'transport', ARGV[4])
        if ARGV[6] then
          if other and cur[1] then
            redis.call('SREM', ARGV[6] .. cur[1] .. ':' .. (cur[4] or 'websocket'), ARGV[5])
          end
          redis.call('SADD', ARGV[6] .. ARGV[1] .. ':' .. ARGV[4], ARGV[5])
          redis.call('SADD', KEYS[2], ARGV[1])
        end
        return 1",
    )
});

/// Parses `[gateway, conn, since, transport]` (any of them nil) into a presence.
fn parse_fields(value: Value) -> Option<Presence> {
    let fields: Vec<Option<String>> = redis::from_redis_value(&value).ok()?;
    match fields.as_slice() {
        [Some(gateway), Some(conn), since, transport] => Some(Presence {
            gateway_id: gateway.clone(),
            conn_id: conn.clone(),
            since_ms: since.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0),
            transport: Transport::parse(transport.as_deref()),
        }),
        _ => None,
    }
}

/// The presence script invocation's common part: the node's hash and the new fields.
fn write_invocation<'a>(
    script: &'a Script,
    keys: &Keys,
    cluster: bool,
    node_id: Uuid,
    presence: &Presence,
) -> ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    invocation
        .key(presence_key(node_id))
        .arg(&presence.gateway_id)
        .arg(&presence.conn_id)
        .arg(presence.since_ms)
        .arg(presence.transport.as_str())
        .arg(node_id.to_string());
    if !cluster {
        invocation.key(keys.gateways).arg(keys.nodes_prefix);
    }
    invocation
}

/// Adds the publish of a fleet event to `pipe` (classic pub/sub: every api instance, on any
/// cluster node, hears it, so it rides along with the index update on the index's shard).
fn announce(pipe: &mut redis::Pipeline, event: Option<&str>) {
    if let Some(event) = event {
        pipe.cmd("PUBLISH").arg(FLEET_EVENTS).arg(event).ignore();
    }
}

/// Presence of each node, in order, in one round trip (on a cluster, each hash read on its
/// own shard); `None` for a node with no socket or whose gateway is no longer alive.
pub async fn lookup(redis: &Redis, node_ids: &[Uuid]) -> RedisResult<Vec<Option<Presence>>> {
    if node_ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys = keys(redis);
    if !redis.is_cluster() {
        let mut invocation = LOOKUP.prepare_invoke();
        for id in node_ids {
            invocation.key(presence_key(*id));
        }
        invocation.arg(keys.alive_prefix).arg(keys.alive_suffix);
        let values: Vec<Value> = redis.invoke(invocation).await?;
        return Ok(values.into_iter().map(parse_fields).collect());
    }
    // Owned futures (collected first): closures over borrowed ids inside the stream would not
    // be `Send` for every lifetime, which axum handlers need.
    let reads: Vec<_> = node_ids
        .iter()
        .map(|id| {
            let (redis, mut cmd) = (redis.clone(), redis::cmd("HMGET"));
            cmd.arg(presence_key(*id)).arg(&FIELDS[..]);
            async move { redis.query::<Value>(&cmd).await.map(parse_fields) }
        })
        .collect();
    let found: Vec<Option<Presence>> = futures_util::stream::iter(reads)
        .buffered(LOOKUP_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<RedisResult<_>>()?;
    let mut gateways: Vec<&str> = found
        .iter()
        .flatten()
        .map(|p| p.gateway_id.as_str())
        .collect();
    gateways.sort_unstable();
    gateways.dedup();
    let mut pipe = redis::pipe();
    for gw in &gateways {
        pipe.cmd("EXISTS").arg(keys.alive(gw));
    }
    let alive: Vec<bool> = if gateways.is_empty() {
        Vec::new()
    } else {
        redis.query(&pipe).await?
    };
    let live: std::collections::HashSet<&str> = gateways
        .iter()
        .zip(alive)
        .filter_map(|(gw, alive)| alive.then_some(*gw))
        .collect();
    Ok(found
        .iter()
        .map(|p| p.clone().filter(|p| live.contains(p.gateway_id.as_str())))
        .collect())
}

/// Makes `presence` the node's connection and returns the one it replaced, if any; `event`,
/// if given, is published on [`FLEET_EVENTS`] in the same step (one round trip on a single
/// Redis; three steps on a cluster, see the module doc).
pub async fn claim(
    redis: &Redis,
    node_id: Uuid,
    presence: &Presence,
    event: Option<&str>,
) -> RedisResult<Option<Presence>> {
    let keys = keys(redis);
    let cluster = redis.is_cluster();
    let mut invocation = write_invocation(&CLAIM, &keys, cluster, node_id, presence);
    if let (false, Some(event)) = (cluster, event) {
        invocation.arg(FLEET_EVENTS).arg(event);
    }
    let previous = parse_fields(redis.invoke(invocation).await?);
    if cluster {
        let node = node_id.to_string();
        let mut pipe = redis::pipe();
        if let Some(prev) = &previous {
            if (&prev.gateway_id, prev.transport) != (&presence.gateway_id, presence.transport) {
                pipe.cmd("SREM")
                    .arg(keys.nodes(&prev.gateway_id, prev.transport))
                    .arg(&node)
                    .ignore();
            }
        }
        pipe.cmd("SADD")
            .arg(keys.nodes(&presence.gateway_id, presence.transport))
            .arg(&node)
            .ignore();
        pipe.cmd("SADD")
            .arg(keys.gateways)
            .arg(&presence.gateway_id)
            .ignore();
        announce(&mut pipe, event);
        index_step(redis.query::<()>(&pipe).await, node_id);
    }
    Ok(previous)
}

/// On a cluster, the node sets and the fleet event follow the node's hash in a later step
/// (one pipeline); once the hash is written, its failure is only logged (the liveness beat's
/// periodic re-index and reconciliation repair the sets; a lost event only delays the console).
fn index_step(result: RedisResult<()>, node_id: Uuid) {
    if let Err(e) = result {
        tracing::warn!(%node_id, error = %e, "could not update the presence index or announce it");
    }
}

/// Deletes the node's presence if `conn_id` still holds it; true when it did. Only then is
/// `event`, if given, published on [`FLEET_EVENTS`]: in the same step on a single Redis, in the
/// later best-effort one on a cluster.
pub async fn release(
    redis: &Redis,
    node_id: Uuid,
    conn_id: &str,
    event: Option<&str>,
) -> RedisResult<bool> {
    let keys = keys(redis);
    let cluster = redis.is_cluster();
    let mut invocation = RELEASE.prepare_invoke();
    invocation
        .key(presence_key(node_id))
        .arg(conn_id)
        .arg(node_id.to_string());
    if !cluster {
        invocation.arg(keys.nodes_prefix);
        if let Some(event) = event {
            invocation.arg(FLEET_EVENTS).arg(event);
        }
    }
    let released: Option<String> = redis.invoke(invocation).await?;
    if let (true, Some(set)) = (cluster, &released) {
        let mut pipe = redis::pipe();
        pipe.cmd("SREM")
            .arg(format!("{}{set}", keys.nodes_prefix))
            .arg(node_id.to_string())
            .ignore();
        announce(&mut pipe, event);
        index_step(redis.query::<()>(&pipe).await, node_id);
    }
    Ok(released.is_some())
}

/// Re-asserts `presence` unless another connection holds the node; true when it holds now.
pub async fn restore(redis: &Redis, node_id: Uuid, presence: &Presence) -> RedisResult<bool> {
    let keys = keys(redis);
    let cluster = redis.is_cluster();
    let invocation = write_invocation(&RESTORE, &keys, cluster, node_id, presence);
    let held: bool = redis.invoke(invocation).await?;
    if cluster && held {
        let mut pipe = redis::pipe();
        pipe.cmd("SADD")
            .arg(keys.nodes(&presence.gateway_id, presence.transport))
            .arg(node_id.to_string())
            .ignore();
        pipe.cmd("SADD")
            .arg(keys.gateways)
            .arg(&presence.gateway_id)
            .ignore();
        index_step(redis.query::<()>(&pipe).await, node_id);
    }
    Ok(held)
}

/// Adds to the gateway's node sets every connection it holds that its node's presence still
/// names (a cluster's index can lose a node to a race between two write steps; [`reconcile`]
/// takes out the ones it holds no more). `held` is (node, connection id, transport).
pub async fn reindex(
    redis: &Redis,
    gateway: &str,
    held: impl IntoIterator<Item = (Uuid, String, Transport)>,
) -> RedisResult<()> {
    let keys = keys(redis);
    let reads: Vec<_> = held
        .into_iter()
        .map(|(node, conn, transport)| {
            let (redis, mut cmd) = (redis.clone(), redis::cmd("HGET"));
            cmd.arg(presence_key(node)).arg("conn");
            async move {
                let holder: Option<String> = redis.query(&cmd).await?;
                Ok((holder == Some(conn)).then_some((node, transport)))
            }
        })
        .collect();
    let holding: Vec<Option<(Uuid, Transport)>> = futures_util::stream::iter(reads)
        .buffer_unordered(LOOKUP_IN_FLIGHT)
        .collect::<Vec<RedisResult<_>>>()
        .await
        .into_iter()
        .collect::<RedisResult<_>>()?;
    let mut by_transport: [Vec<String>; 2] = Default::default();
    for (node, transport) in holding.into_iter().flatten() {
        let at = match transport {
            Transport::Websocket => 0,
            Transport::Sse => 1,
        };
        by_transport[at].push(node.to_string());
    }
    for (transport, nodes) in [Transport::Websocket, Transport::Sse]
        .into_iter()
        .zip(by_transport)
    {
        for chunk in nodes.chunks(SCAN_COUNT) {
            let mut sadd = redis::cmd("SADD");
            sadd.arg(keys.nodes(gateway, transport)).arg(chunk);
            redis.query::<()>(&sadd).await?;
        }
    }
    let mut sadd = redis::cmd("SADD");
    sadd.arg(keys.gateways).arg(gateway);
    redis.query(&sadd).await
}

/// Every member of a set, read in short `SSCAN` steps.
async fn scan_set(redis: &Redis, key: &str) -> RedisResult<Vec<String>> {
    let mut out = Vec::new();
    let mut cursor = 0u64;
    loop {
        let mut scan = redis::cmd("SSCAN");
        scan.arg(key).arg(cursor).arg("COUNT").arg(SCAN_COUNT);
        let (next, members): (u64, Vec<String>) = redis.query(&scan).await?;
        out.extend(members);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

/// Every node with a live connection (its gateway alive), with its transport: the live
/// gateways in one script, then their node sets in short `SSCAN` steps. A node listed by two
/// gateways' sets (an index race on a cluster) is listed once, with the transport that sorts
/// first.
pub async fn connected(redis: &Redis) -> RedisResult<Vec<(Uuid, Transport)>> {
    let keys = keys(redis);
    let mut invocation = CONNECTED.prepare_invoke();
    invocation
        .key(keys.gateways)
        .arg(keys.alive_prefix)
        .arg(keys.alive_suffix)
        .arg(keys.nodes_prefix);
    let gateways: Vec<String> = redis.invoke(invocation).await?;
    let mut out = Vec::new();
    for gateway in gateways {
        for transport in [Transport::Websocket, Transport::Sse] {
            let members = scan_set(redis, &keys.nodes(&gateway, transport)).await?;
            out.extend(
                members
                    .iter()
                    .filter_map(|id| Uuid::parse_str(id).ok())
                    .map(|id| (id, transport)),
            );
        }
    }
    // SSCAN may return a member twice while its set is rehashed.
    out.sort_unstable();
    out.dedup_by_key(|(id, _)| *id);
    Ok(out)
}

/// `KEYS[1]` = a gateway's node set, `KEYS[2]` = a node's presence hash; `ARGV[1]` = the
/// node, `ARGV[2]` = the gateway. Takes the node out of the set unless the hash names that
/// gateway. Single Redis only (the two keys are on different slots of a cluster).
static FORGET_STRAY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('HGET', KEYS[2], 'gateway') ~= ARGV[2] then
          return redis.call('SREM', KEYS[1], ARGV[1])
        end
        return 0",
    )
});

/// Takes `member` out of the gateway's set `key` unless its presence names the gateway:
/// atomically on a single Redis; on a cluster the check and the removal are two steps.
async fn forget_stray(redis: &Redis, key: &str, member: &str, gateway: &str) -> RedisResult<usize> {
    let node = Uuid::parse_str(member).unwrap_or_default();
    if !redis.is_cluster() {
        let mut invocation = FORGET_STRAY.prepare_invoke();
        invocation
            .key(key)
            .key(presence_key(node))
            .arg(member)
            .arg(gateway);
        return redis.invoke(invocation).await;
    }
    let mut hget = redis::cmd("HGET");
    hget.arg(presence_key(node)).arg("gateway");
    let holder: Option<String> = redis.query(&hget).await?;
    if holder.as_deref() == Some(gateway) {
        return Ok(0);
    }
    redis.query(redis::cmd("SREM").arg(key).arg(member)).await
}

/// Takes out of `gateway`'s node sets every node that `holds` says the gateway does not hold
/// and whose presence no longer names it: left behind when a node moved to a gateway that
/// does not keep these sets (a rolling upgrade), by an earlier process under the same id, or
/// by a race between a cluster's two write steps. A node that `holds` or whose presence names
/// the gateway (a connect or close in flight) stays. Returns how many were taken out.
pub async fn reconcile(
    redis: &Redis,
    gateway: &str,
    holds: impl Fn(Uuid) -> bool,
) -> RedisResult<usize> {
    let keys = keys(redis);
    let mut removed = 0;
    for transport in [Transport::Websocket, Transport::Sse] {
        let key = keys.nodes(gateway, transport);
        let strays = scan_set(redis, &key)
            .await?
            .into_iter()
            .filter(|m| Uuid::parse_str(m).map_or(true, |id| !holds(id)));
        for member in strays {
            removed += forget_stray(redis, &key, &member, gateway).await?;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    //! These run against the Redis at `FLOTILLA_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`).

    use super::*;
    use crate::secret::Secret;
    use crate::settings::RedisSettings;

    fn redis() -> Redis {
        let url = std::env::var("FLOTILLA_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        Redis::new(&RedisSettings {
            url: Secret::new(url),
            cluster_nodes: None,
            command_timeout_ms: 2000,
        })
        .unwrap()
    }

    fn at(gateway_id: &str, conn_id: &str, since_ms: i64) -> Presence {
        Presence {
            gateway_id: gateway_id.into(),
            conn_id: conn_id.into(),
            since_ms,
            transport: Transport::Websocket,
        }
    }

    async fn set_alive(redis: &Redis, gateway_id: &str) {
        let mut cmd = redis::cmd("SET");
        cmd.arg(keys(redis).alive(gateway_id))
            .arg(1)
            .arg("EX")
            .arg(60);
        redis.query::<()>(&cmd).await.unwrap();
    }

    #[tokio::test]
    async fn events_go_out_with_a_claim_and_only_with_a_release_that_took_effect() {
        use futures_util::StreamExt;
        let redis = redis();
        let url = std::env::var("FLOTILLA_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let mut events = redis::Client::open(url)
            .unwrap()
            .get_async_pubsub()
            .await
            .unwrap();
        events.subscribe(FLEET_EVENTS).await.unwrap();
        let mut events = events.into_on_message();
        let node = Uuid::new_v4();
        let tag = |what: &str| format!("{what}-{node}");
        let gw = format!("gw-{}", Uuid::new_v4().simple());

        claim(&redis, node, &at(&gw, "c1", 1), Some(&tag("up")))
            .await
            .unwrap();
        assert!(!release(&redis, node, "stale", Some(&tag("stale")))
            .await
            .unwrap());
        assert!(release(&redis, node, "c1", Some(&tag("down")))
            .await
            .unwrap());

        let mut seen = Vec::new();
        while seen.len() < 2 {
            let msg = tokio::time::timeout(std::time::Duration::from_secs(5), events.next())
                .await
                .expect("an event within 5 s")
                .unwrap();
            let payload: String = msg.get_payload().unwrap();
            if payload.ends_with(&node.to_string()) {
                seen.push(payload);
            }
        }
        // Pub/sub keeps order on one connection: had the stale release published, it would
        // have come second.
        assert_eq!(seen, vec![tag("up"), tag("down")]);
    }

    #[tokio::test]
    async fn claim_returns_the_previous_holder_and_release_compares() {
        let redis = redis();
        let node = Uuid::new_v4();
        let gw = format!("gw-{}", Uuid::new_v4().simple());
        assert_eq!(
            claim(&redis, node, &at(&gw, "c1", 10), None).await.unwrap(),
            None
        );
        let sse = Presence {
            transport: Transport::Sse,
            ..at(&gw, "c2", 20)
        };
        assert_eq!(
            claim(&redis, node, &sse, None).await.unwrap(),
            Some(at(&gw, "c1", 10))
        );
        // A late release of the older connection leaves the newer one in place.
        assert!(!release(&redis, node, "c1", None).await.unwrap());
        set_alive(&redis, &gw).await;
        assert_eq!(lookup(&redis, &[node]).await.unwrap(), vec![Some(sse)]);
        assert!(release(&redis, node, "c2", None).await.unwrap());
        assert_eq!(lookup(&redis, &[node]).await.unwrap(), vec![None]);
    }

    #[tokio::test]
    async fn lookup_needs_a_live_gateway_and_keeps_order() {
        let redis = redis();
        let live = format!("gw-{}", Uuid::new_v4().simple());
        let dead = format!("gw-{}", Uuid::new_v4().simple());
        set_alive(&redis, &live).await;
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        claim(&redis, a, &at(&live, "ca", 1), None).await.unwrap();
        claim(&redis, b, &at(&dead, "cb", 2), None).await.unwrap();
        let got = lookup(&redis, &[c, a, b]).await.unwrap();
        assert_eq!(got, vec![None, Some(at(&live, "ca", 1)), None]);
        assert!(lookup(&redis, &[]).await.unwrap().is_empty());
        for n in [a, b] {
            redis
                .query::<()>(redis::cmd("DEL").arg(presence_key(n)))
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn connected_follows_claims_moves_releases_and_live_gateways() {
        let redis = redis();
        let live = format!("gw-{}", Uuid::new_v4().simple());
        let other = format!("gw-{}", Uuid::new_v4().simple());
        let dead = format!("gw-{}", Uuid::new_v4().simple());
        set_alive(&redis, &live).await;
        set_alive(&redis, &other).await;
        let (a, b, c, d) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let sse = |gw: &str, conn: &str| Presence {
            transport: Transport::Sse,
            ..at(gw, conn, 2)
        };
        let mine = |all: Vec<(Uuid, Transport)>| -> Vec<(Uuid, Transport)> {
            let mut v: Vec<_> = all
                .into_iter()
                .filter(|(n, _)| [a, b, c, d].contains(n))
                .collect();
            v.sort();
            v
        };
        let sorted = |mut v: Vec<(Uuid, Transport)>| {
            v.sort();
            v
        };
        claim(&redis, a, &at(&live, "ca", 1), None).await.unwrap();
        claim(&redis, b, &sse(&live, "cb"), None).await.unwrap();
        claim(&redis, c, &at(&dead, "cc", 3), None).await.unwrap();
        restore(&redis, d, &sse(&other, "cd")).await.unwrap();
        assert_eq!(
            mine(connected(&redis).await.unwrap()),
            sorted(vec![
                (a, Transport::Websocket),
                (b, Transport::Sse),
                (d, Transport::Sse)
            ])
        );
        // A node that moves (another gateway, another transport) is listed once, as it is now.
        claim(&redis, a, &sse(&other, "ca2"), None).await.unwrap();
        claim(&redis, c, &at(&live, "cc2", 4), None).await.unwrap();
        assert_eq!(
            mine(connected(&redis).await.unwrap()),
            sorted(vec![
                (a, Transport::Sse),
                (b, Transport::Sse),
                (c, Transport::Websocket),
                (d, Transport::Sse)
            ])
        );
        // A stale release changes nothing; a real one removes the node.
        assert!(!release(&redis, a, "ca", None).await.unwrap());
        assert!(release(&redis, b, "cb", None).await.unwrap());
        assert_eq!(
            mine(connected(&redis).await.unwrap()),
            sorted(vec![
                (a, Transport::Sse),
                (c, Transport::Websocket),
                (d, Transport::Sse)
            ])
        );
        // The dead gateway holds nothing any more: it is forgotten.
        let known: bool = redis
            .query(redis::cmd("SISMEMBER").arg(GATEWAYS_KEY).arg(&dead))
            .await
            .unwrap();
        assert!(!known);
        for (n, conn) in [(a, "ca2"), (c, "cc2"), (d, "cd")] {
            assert!(release(&redis, n, conn, None).await.unwrap());
        }
        assert!(mine(connected(&redis).await.unwrap()).is_empty());
    }

    #[tokio::test]
    async fn restore_never_overrides_a_newer_connection() {
        let redis = redis();
        let node = Uuid::new_v4();
        assert!(restore(&redis, node, &at("g1", "c1", 1)).await.unwrap());
        assert!(restore(&redis, node, &at("g1", "c1", 1)).await.unwrap());
        claim(&redis, node, &at("g2", "c2", 2), None).await.unwrap();
        assert!(!restore(&redis, node, &at("g1", "c1", 1)).await.unwrap());
        assert!(release(&redis, node, "c2", None).await.unwrap());
    }

    /// An entry older than the socket restoring (left by a crashed gateway, or by this socket's
    /// predecessor when the claim failed) does not close the socket: the restore takes over,
    /// and the node moves between the gateways' sets as on a claim.
    #[tokio::test]
    async fn restore_takes_over_an_older_entry() {
        let redis = redis();
        let (stale, me) = (
            format!("gw-{}", Uuid::new_v4().simple()),
            format!("gw-{}", Uuid::new_v4().simple()),
        );
        set_alive(&redis, &stale).await;
        set_alive(&redis, &me).await;
        let node = Uuid::new_v4();
        claim(&redis, node, &at(&stale, "old", 1), None)
            .await
            .unwrap();
        assert!(restore(&redis, node, &at(&me, "new", 2)).await.unwrap());
        let found = lookup(&redis, &[node]).await.unwrap();
        assert_eq!(found[0].as_ref().map(|p| p.conn_id.as_str()), Some("new"));
        for (gateway, member) in [(&stale, false), (&me, true)] {
            let mut ismember = redis::cmd("SISMEMBER");
            ismember
                .arg(keys(&redis).nodes(gateway, Transport::Websocket))
                .arg(node.to_string());
            assert_eq!(redis.query::<bool>(&ismember).await.unwrap(), member);
        }
        // The same instant is not older: the entry stays.
        claim(&redis, node, &at(&stale, "same", 3), None)
            .await
            .unwrap();
        assert!(!restore(&redis, node, &at(&me, "new", 3)).await.unwrap());
        assert!(release(&redis, node, "same", None).await.unwrap());
    }

    #[tokio::test]
    async fn reconcile_forgets_only_nodes_the_gateway_no_longer_holds() {
        let redis = redis();
        let gw = format!("gw-{}", Uuid::new_v4().simple());
        let other = format!("gw-{}", Uuid::new_v4().simple());
        let (held, moved, connecting) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        for node in [held, moved, connecting] {
            claim(&redis, node, &at(&gw, &node.to_string(), 1), None)
                .await
                .unwrap();
        }
        // `moved` went to a gateway that keeps no sets: its hash names the other gateway, and
        // nothing took it out of this one's set.
        let mut hset = redis::cmd("HSET");
        hset.arg(presence_key(moved)).arg("gateway").arg(&other);
        redis.query::<()>(&hset).await.unwrap();
        let key = format!("{NODES_KEY_PREFIX}{gw}:websocket");
        let members = |redis: Redis, key: String| async move {
            let mut m: Vec<String> = redis.query(redis::cmd("SMEMBERS").arg(&key)).await.unwrap();
            m.sort();
            m
        };
        // The gateway holds `held`; `connecting` is not registered yet but its hash names the
        // gateway, so it stays.
        let removed = reconcile(&redis, &gw, |id| id == held).await.unwrap();
        assert_eq!(removed, 1);
        let mut want = vec![held.to_string(), connecting.to_string()];
        want.sort();
        assert_eq!(members(redis.clone(), key.clone()).await, want);
        // Nothing left to do the second time.
        assert_eq!(reconcile(&redis, &gw, |id| id == held).await.unwrap(), 0);
    }
}
