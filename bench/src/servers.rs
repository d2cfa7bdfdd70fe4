//! The Redis servers behind `--redis-url`, as the bench drives them directly: one Redis, or
//! every node of a Redis Cluster (role, address and the slots each master serves, from
//! `CLUSTER NODES`), each with a multiplexed connection of its own.
//!
//! Frames the bench publishes itself go through here so that a fan-out measures the gateways,
//! not the bench's client: on one Redis one pipeline of `PUBLISH`es; on a cluster the frames
//! are grouped by the master owning their channel's slot and sent as one pipeline of
//! `SPUBLISH`es per master, every master at once. The same connections tell whether the
//! gateways have subscribed every channel and how much CPU each server has used.

use anyhow::Context;
use flotilla_shared::redis_conn::at_address;
use flotilla_shared::slots::{slot, SLOTS};
use futures_util::future::try_join_all;
use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};
use std::time::Duration;

/// Channels per `PUBSUB NUMSUB` or `SHARDNUMSUB` call. Redis 7 accepts channels of any slots
/// in one `SHARDNUMSUB` and counts the subscribers on the node asked, so each call goes to the
/// master owning its channels.
const NUMSUB_BATCH: usize = 1000;

/// What a server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// One Redis, not a cluster.
    Single,
    /// A cluster master, serving slots.
    Master,
    /// A cluster replica.
    Replica,
}

impl Role {
    /// `single`, `master` or `replica`, for summaries.
    pub fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Master => "master",
            Self::Replica => "replica",
        }
    }
}

/// One Redis server and the bench's connection to it.
pub struct Server {
    /// `host:port`, as the cluster names it.
    pub addr: String,
    /// Its port.
    pub port: u16,
    /// Its role.
    pub role: Role,
    client: redis::Client,
    conn: MultiplexedConnection,
}

/// The servers behind `--redis-url`.
pub struct Servers {
    servers: Vec<Server>,
    /// Index in `servers` of the master serving each slot; empty for one Redis.
    owners: Vec<usize>,
}

/// Frames to publish, already grouped into one pipeline per server.
pub struct Batch {
    pipes: Vec<(usize, redis::Pipeline)>,
}

impl Servers {
    /// Connects to the one Redis, or to every node of the cluster that `--redis-url` names.
    pub async fn connect(common: &crate::Common) -> anyhow::Result<Self> {
        let urls = common.redis_urls();
        if common.redis_cluster() {
            return Self::cluster(&urls).await;
        }
        let url = urls.first().context("--redis-url is empty")?;
        let info = url.as_str().into_connection_info()?;
        let server = Server::connect(info, Role::Single).await?;
        let cluster_info = server.info("cluster").await?;
        anyhow::ensure!(
            field(&cluster_info, "cluster_enabled") != Some("1"),
            "{} is a Redis Cluster node: pass the cluster's seed URLs to --redis-url, \
             comma-separated (at least two)",
            server.addr
        );
        Ok(Self {
            servers: vec![server],
            owners: Vec::new(),
        })
    }

    /// Reads `CLUSTER NODES` from the first seed that answers and connects to every node not
    /// marked failed.
    async fn cluster(seeds: &[String]) -> anyhow::Result<Self> {
        let mut last_error = None;
        let mut found = None;
        for seed in seeds {
            let info = seed.as_str().into_connection_info()?;
            let nodes = async {
                let mut conn = connect(&redis::Client::open(info.clone())?).await?;
                let text: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut conn)
                    .await?;
                anyhow::Ok(text)
            };
            match nodes.await {
                Ok(text) => {
                    found = Some((info, text));
                    break;
                }
                Err(e) => last_error = Some(e.context(format!("CLUSTER NODES on {}", info.addr))),
            }
        }
        let Some((seed, text)) = found else {
            return Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no seed URL")));
        };
        let mut nodes = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| NodeLine::parse(l).with_context(|| format!("CLUSTER NODES: {l}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        nodes.retain(|n| !n.failed);
        nodes.sort_by(|a, b| (a.port, &a.host).cmp(&(b.port, &b.host)));
        let mut servers = Vec::new();
        let mut owners = vec![usize::MAX; SLOTS as usize];
        for node in nodes {
            // A node that does not know its own address yet names none.
            let host = if node.host.is_empty() {
                host_of(&seed.addr)
            } else {
                node.host
            };
            let role = if node.master {
                Role::Master
            } else {
                Role::Replica
            };
            for range in node.slots {
                owners[range].fill(servers.len());
            }
            servers.push(Server::connect(at_address(&seed, host, node.port), role).await?);
        }
        if let Some(unserved) = owners.iter().position(|&o| o == usize::MAX) {
            anyhow::bail!("slot {unserved} is served by no live master: is the cluster up?");
        }
        Ok(Self { servers, owners })
    }

    /// Whether these are a cluster's nodes.
    pub fn is_cluster(&self) -> bool {
        !self.owners.is_empty()
    }

    /// Every server, by port (then host).
    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// The command that publishes to node channels, as the api does: `SPUBLISH` on a cluster,
    /// `PUBLISH` on one Redis.
    pub fn node_publish(&self) -> &'static str {
        if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// The index in [`Servers::servers`] of the server owning `channel`'s slot.
    pub fn owner(&self, channel: &str) -> usize {
        if self.is_cluster() {
            self.owners[slot(channel.as_bytes()) as usize]
        } else {
            0
        }
    }

    /// `(channel, payload)` pairs as one `command` each (`PUBLISH` or `SPUBLISH`), one pipeline
    /// per server owning their channels, to [`Servers::send`].
    pub fn batch(
        &self,
        command: &str,
        frames: impl IntoIterator<Item = (String, String)>,
    ) -> Batch {
        let mut pipes: Vec<Option<redis::Pipeline>> = self.servers.iter().map(|_| None).collect();
        for (channel, payload) in frames {
            pipes[self.owner(&channel)]
                .get_or_insert_with(redis::pipe)
                .cmd(command)
                .arg(channel)
                .arg(payload);
        }
        let pipes = pipes
            .into_iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, p?)))
            .collect();
        Batch { pipes }
    }

    /// Sends every pipeline of `batch` at once; returns how many subscribers the frames
    /// reached, summed.
    pub async fn send(&self, batch: &Batch) -> anyhow::Result<u64> {
        let sends = batch.pipes.iter().map(|(i, pipe)| {
            let server = &self.servers[*i];
            let mut conn = server.conn.clone();
            async move {
                let reached: Vec<u64> = pipe
                    .query_async(&mut conn)
                    .await
                    .with_context(|| format!("publishing on {}", server.addr))?;
                anyhow::Ok(reached.iter().sum::<u64>())
            }
        });
        let reached = tokio::time::timeout(crate::REDIS_TIMEOUT, try_join_all(sends))
            .await
            .context("publishing timed out")??;
        Ok(reached.iter().sum())
    }

    /// Waits until every channel has a subscriber: a gateway subscribes a node's channel just
    /// after accepting its socket (agents re-poll on connect for what they missed meanwhile),
    /// so frames the bench publishes itself must wait for that, or they measure the race, not
    /// the fan-out. On a cluster the master owning each channel's slot is asked for its sharded
    /// subscribers.
    pub async fn await_subscribed(
        &self,
        channels: &[String],
        limit: Duration,
    ) -> anyhow::Result<()> {
        let numsub = if self.is_cluster() {
            "SHARDNUMSUB"
        } else {
            "NUMSUB"
        };
        let deadline = tokio::time::Instant::now() + limit;
        let mut waiting: Vec<&String> = channels.iter().collect();
        while !waiting.is_empty() {
            let mut by_owner: Vec<Vec<&String>> = self.servers.iter().map(|_| Vec::new()).collect();
            for channel in waiting {
                by_owner[self.owner(channel)].push(channel);
            }
            let mut still = Vec::new();
            for (server, channels) in self.servers.iter().zip(&by_owner) {
                for chunk in channels.chunks(NUMSUB_BATCH) {
                    let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
                        .arg(numsub)
                        .arg(chunk)
                        .query_async(&mut server.conn.clone())
                        .await
                        .with_context(|| format!("PUBSUB {numsub} on {}", server.addr))?;
                    still.extend(
                        chunk
                            .iter()
                            .zip(&counts)
                            .filter(|(_, (_, n))| *n == 0)
                            .map(|(c, _)| *c),
                    );
                }
            }
            if still.is_empty() {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{} of {} channels still had no subscriber after {limit:?}",
                still.len(),
                channels.len()
            );
            waiting = still;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// CPU seconds each server has used so far (`used_cpu_sys` + `used_cpu_user` of
    /// `INFO cpu`), in the order of [`Servers::servers`].
    pub async fn cpu_secs(&self) -> anyhow::Result<Vec<f64>> {
        let mut all = Vec::with_capacity(self.servers.len());
        for server in &self.servers {
            let info = server.info("cpu").await?;
            let mut secs = 0.0;
            for name in ["used_cpu_sys", "used_cpu_user"] {
                secs += field(&info, name)
                    .and_then(|v| v.parse::<f64>().ok())
                    .with_context(|| format!("no {name} in INFO cpu of {}", server.addr))?;
            }
            all.push(secs);
        }
        Ok(all)
    }
}

impl Server {
    async fn connect(info: ConnectionInfo, role: Role) -> anyhow::Result<Self> {
        let (host, port) = match &info.addr {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                (host.clone(), *port)
            }
            ConnectionAddr::Unix(path) => anyhow::bail!("{path:?}: a unix socket is not supported"),
        };
        let addr = format!("{host}:{port}");
        let client = redis::Client::open(info)?;
        let conn = connect(&client)
            .await
            .with_context(|| format!("connecting to Redis at {addr}"))?;
        Ok(Self {
            addr,
            port,
            role,
            client,
            conn,
        })
    }

    /// A classic pub/sub connection to this server.
    pub async fn pubsub(&self) -> anyhow::Result<redis::aio::PubSub> {
        let pubsub = tokio::time::timeout(crate::REDIS_TIMEOUT, self.client.get_async_pubsub())
            .await
            .context("timed out")?
            .with_context(|| format!("pub/sub connection to {}", self.addr))?;
        Ok(pubsub)
    }

    /// `INFO <section>`.
    async fn info(&self, section: &str) -> anyhow::Result<String> {
        let info = redis::cmd("INFO")
            .arg(section)
            .query_async(&mut self.conn.clone())
            .await
            .with_context(|| format!("INFO {section} on {}", self.addr))?;
        Ok(info)
    }
}

async fn connect(client: &redis::Client) -> anyhow::Result<MultiplexedConnection> {
    let conn = tokio::time::timeout(
        crate::REDIS_TIMEOUT,
        client.get_multiplexed_async_connection(),
    )
    .await
    .context("timed out")??;
    Ok(conn)
}

fn host_of(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
        ConnectionAddr::Unix(_) => String::new(),
    }
}

/// One line of `CLUSTER NODES`: `<id> <ip:port@cport[,hostname]> <flags> <master> <ping-sent>
/// <pong-recv> <config-epoch> <link-state> <slot> <slot> ...`.
struct NodeLine {
    host: String,
    port: u16,
    master: bool,
    failed: bool,
    slots: Vec<std::ops::Range<usize>>,
}

impl NodeLine {
    fn parse(line: &str) -> anyhow::Result<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        anyhow::ensure!(fields.len() >= 8, "too few fields");
        let addr = fields[1].split(['@', ',']).next().unwrap_or_default();
        let (host, port) = addr.rsplit_once(':').context("no port")?;
        let flags: Vec<&str> = fields[2].split(',').collect();
        let slots = fields[8..]
            .iter()
            // `[slot->-id]` and `[slot-<-id]`: a slot migrating or importing.
            .filter(|s| !s.starts_with('['))
            .map(|s| {
                let (first, last) = s.split_once('-').unwrap_or((s, s));
                anyhow::Ok(first.parse::<usize>()?..last.parse::<usize>()? + 1)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            host: host.to_owned(),
            port: port.parse()?,
            master: flags.contains(&"master"),
            failed: flags
                .iter()
                .any(|f| matches!(*f, "fail" | "noaddr" | "handshake")),
            slots,
        })
    }
}

/// The value of `name:value` in `INFO` text.
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines() {
        let master = NodeLine::parse(
            "6dec 127.0.0.1:7000@17000 myself,master - 0 1796045320000 1 connected 0-5460 5462 \
             [5461->-4bbc]",
        )
        .unwrap();
        assert_eq!((master.host.as_str(), master.port), ("127.0.0.1", 7000));
        assert!(master.master && !master.failed);
        assert_eq!(master.slots, vec![0..5461, 5462..5463]);
        let replica = NodeLine::parse(
            "8e49 10.0.0.4:7004@17004,redis-4 slave 7482 0 1796045321137 3 connected",
        )
        .unwrap();
        assert_eq!((replica.host.as_str(), replica.port), ("10.0.0.4", 7004));
        assert!(!replica.master && replica.slots.is_empty());
        let failed = NodeLine::parse("74 :7002@17002 master,fail - 0 0 3 disconnected").unwrap();
        assert!(failed.failed && failed.host.is_empty());
    }
}
