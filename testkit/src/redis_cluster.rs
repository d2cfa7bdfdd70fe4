//! A private Redis Cluster per test: six `redis-server` processes (three masters, three
//! replicas) on loopback, which a test can fail over (kill a master) and reshard (move a slot).
//!
//! Every question about the topology is asked of the cluster itself (`CLUSTER SLOTS`), so a
//! test sees what a client would see.

use flotilla_shared::slots::{slot, SLOTS};
use redis::aio::MultiplexedConnection;
use redis::{Cmd, FromRedisValue, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::process::{Child, Command};

/// Nodes started: three masters with one replica each.
const NODES: usize = 6;
/// `cluster-node-timeout`: how long a master may be unreachable before its replica takes over.
const NODE_TIMEOUT: Duration = Duration::from_millis(500);
/// Limit for the cluster to agree after it is created, a slot moves or a master dies.
const SETTLE: Duration = Duration::from_secs(20);
/// Keys moved per `MIGRATE`.
const MIGRATE_BATCH: usize = 100;

/// A running Redis Cluster with no persistence; its processes are killed and its files removed
/// when dropped.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

/// One `redis-server` of the cluster.
struct Node {
    port: u16,
    id: String,
    /// `None` once killed.
    child: Option<Child>,
    conn: MultiplexedConnection,
}

impl RedisCluster {
    /// Starts six nodes on free ports, joins them with `redis-cli --cluster create` and waits
    /// until every node sees all slots served and every replica is in sync with its master.
    /// Takes about two seconds: a new master reports `cluster_state:ok` no sooner than two
    /// seconds after it started.
    pub async fn start() -> Self {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "flotilla-redis-cluster-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let mut cluster = Self {
            nodes: Vec::with_capacity(NODES),
            dir,
        };
        for _ in 0..NODES {
            let node = Node::spawn(&cluster.dir).await;
            cluster.nodes.push(node);
        }
        let addrs = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port));
        let out = crate::within(
            "redis-cli --cluster create",
            Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(addrs)
                .args(["--cluster-replicas", "1", "--cluster-yes"])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("redis-cli is installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        crate::eventually("the new cluster to settle", SETTLE, || cluster.settled()).await;
        cluster
    }

    /// `redis://127.0.0.1:<port>` of every live node.
    pub fn seeds(&self) -> Vec<String> {
        self.live()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// [`Self::seeds`] joined with commas: the value of `FLOTILLA__REDIS__CLUSTER_NODES`.
    pub fn setting(&self) -> String {
        self.seeds().join(",")
    }

    /// The cluster's id of the node on `port`.
    pub fn node_id(&self, port: u16) -> &str {
        &self.node(port).id
    }

    /// Port of the master serving `slot`, as a live node sees it.
    pub async fn master_of(&self, slot: u16) -> u16 {
        let port = self.any_live();
        owner(&self.slot_map(port).await, slot)
            .unwrap_or_else(|| panic!("slot {slot} is not served, says node {port}"))
    }

    /// Port of the master serving `key`'s slot.
    pub async fn master_of_key(&self, key: &str) -> u16 {
        self.master_of(slot(key.as_bytes())).await
    }

    /// Ports of the masters serving slots, ascending.
    pub async fn masters(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .slot_map(self.any_live())
            .await
            .iter()
            .map(|r| r.2)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Kills the node on `port` with SIGKILL (its data is lost) and reaps it.
    pub async fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port);
        let node = node.unwrap_or_else(|| panic!("no node on port {port}"));
        if let Some(mut child) = node.child.take() {
            child.start_kill().expect("SIGKILL sent");
            crate::within("redis-server to exit", child.wait())
                .await
                .expect("redis-server reaped");
        }
    }

    /// Waits until a node other than `old_master` serves `slot` and every live node agrees and
    /// reports `cluster_state:ok`; returns the new master's port.
    pub async fn await_failover(&self, slot: u16, old_master: u16) -> u16 {
        let what = format!("a replica of {old_master} to take over slot {slot}");
        crate::eventually(&what, SETTLE, || async {
            let new = self.agreed_owner(slot).await.filter(|&p| p != old_master)?;
            for node in self.live() {
                let info: String = self
                    .query(node.port, redis::cmd("CLUSTER").arg("INFO"))
                    .await;
                (field(&info, "cluster_state") == Some("ok")).then_some(())?;
            }
            Some(new)
        })
        .await
    }

    /// Moves `slot` and its keys from its master to the master on `to`, as
    /// `redis-cli --cluster reshard` does, and waits until every live node sees it there.
    pub async fn migrate_slot(&self, slot: u16, to: u16) {
        let from = self.master_of(slot).await;
        if from == to {
            return;
        }
        self.begin_migration(slot, to).await;
        self.move_keys(slot, from, to).await;
        self.finish_migration(slot, from, to).await;
    }

    /// Marks `slot` as migrating from its master to `to` (and importing there), moving no key
    /// yet; returns the master it leaves.
    pub async fn begin_migration(&self, slot: u16, to: u16) -> u16 {
        let from = self.master_of(slot).await;
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let _: () = self.query(to, &setslot(slot, "IMPORTING", from_id)).await;
        let _: () = self.query(from, &setslot(slot, "MIGRATING", to_id)).await;
        from
    }

    /// Moves every key of a migrating `slot` from `from` to `to`.
    pub async fn move_keys(&self, slot: u16, from: u16, to: u16) {
        loop {
            let keys: Vec<String> = self
                .query(
                    from,
                    redis::cmd("CLUSTER")
                        .arg("GETKEYSINSLOT")
                        .arg(slot)
                        .arg(MIGRATE_BATCH),
                )
                .await;
            if keys.is_empty() {
                break;
            }
            let mut migrate = redis::cmd("MIGRATE");
            migrate.arg("127.0.0.1").arg(to).arg("").arg(0).arg(5000);
            let _: () = self.query(from, migrate.arg("KEYS").arg(&keys)).await;
        }
    }

    /// Hands a migrating `slot` to `to` on every master, and waits until all nodes agree.
    pub async fn finish_migration(&self, slot: u16, from: u16, to: u16) {
        let to_id = self.node_id(to);
        let others = self
            .masters()
            .await
            .into_iter()
            .filter(|&p| p != from && p != to);
        for port in [to, from].into_iter().chain(others) {
            let _: () = self.query(port, &setslot(slot, "NODE", to_id)).await;
        }
        let what = format!("every node to see slot {slot} on {to}");
        crate::eventually(&what, SETTLE, || async {
            (self.agreed_owner(slot).await == Some(to)).then_some(())
        })
        .await;
    }

    /// CPU seconds the node on `port` used so far (`used_cpu_sys` + `used_cpu_user`).
    pub async fn cpu_secs(&self, port: u16) -> f64 {
        let info: String = self.query(port, redis::cmd("INFO").arg("cpu")).await;
        ["used_cpu_sys", "used_cpu_user"]
            .iter()
            .map(|name| {
                field(&info, name)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or_else(|| panic!("{name} in INFO cpu"))
            })
            .sum()
    }

    /// Whether every node sees all slots served by three masters, knows all six nodes, and
    /// every replica's link to its master is up.
    async fn settled(&self) -> Option<()> {
        for node in self.live() {
            let info: String = self
                .query(node.port, redis::cmd("CLUSTER").arg("INFO"))
                .await;
            let expected = [
                ("cluster_state", "ok".to_string()),
                ("cluster_slots_assigned", SLOTS.to_string()),
                ("cluster_known_nodes", NODES.to_string()),
                ("cluster_size", (NODES / 2).to_string()),
            ];
            for (name, value) in expected {
                (field(&info, name) == Some(&value)).then_some(())?;
            }
            let repl: String = self
                .query(node.port, redis::cmd("INFO").arg("replication"))
                .await;
            if field(&repl, "role") == Some("slave") {
                (field(&repl, "master_link_status") == Some("up")).then_some(())?;
            }
        }
        Some(())
    }

    /// The master serving `slot` if every live node names the same one.
    async fn agreed_owner(&self, slot: u16) -> Option<u16> {
        let mut agreed = None;
        for node in self.live() {
            let owner = owner(&self.slot_map(node.port).await, slot)?;
            if agreed.is_some_and(|a| a != owner) {
                return None;
            }
            agreed = Some(owner);
        }
        agreed
    }

    /// `CLUSTER SLOTS` as the node on `port` sees it: (first slot, last slot, master port).
    async fn slot_map(&self, port: u16) -> Vec<(u16, u16, u16)> {
        let ranges: Vec<Vec<Value>> = self.query(port, redis::cmd("CLUSTER").arg("SLOTS")).await;
        ranges
            .iter()
            .map(|range| {
                let master: Vec<Value> = parse(&range[2]);
                (parse(&range[0]), parse(&range[1]), parse(&master[1]))
            })
            .collect()
    }

    /// Runs `cmd` on the node on `port`; panics on an error.
    async fn query<T: FromRedisValue>(&self, port: u16, cmd: &Cmd) -> T {
        let mut conn = self.node(port).conn.clone();
        let what = format!("{} on {port}", name(cmd));
        crate::within(&what, cmd.query_async(&mut conn))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// The node on `port`, live or killed.
    fn node(&self, port: u16) -> &Node {
        let node = self.nodes.iter().find(|n| n.port == port);
        node.unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// The nodes not killed.
    fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }

    /// The port of some live node, to ask about the cluster.
    fn any_live(&self) -> u16 {
        self.live().next().expect("a live node").port
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().filter_map(|n| n.child.as_mut()) {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Node {
    /// Starts a cluster-enabled `redis-server` on free ports, in its own directory under `dir`,
    /// and connects to it; tries other ports if another process took the chosen ones first.
    async fn spawn(dir: &Path) -> Self {
        for _ in 0..5 {
            let [port, bus_port] = free_ports();
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("a node dir");
            let config_file = node_dir.join(format!("nodes-{port}.conf"));
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus_port.to_string(),
                ])
                .arg("--cluster-config-file")
                .arg(&config_file)
                .arg("--dir")
                .arg(&node_dir)
                .args([
                    "--cluster-node-timeout",
                    &NODE_TIMEOUT.as_millis().to_string(),
                ])
                // Keep the three-by-two shape: no replica moves to another master.
                .args(["--cluster-allow-replica-migration", "no"])
                // A replica always stands for election, however long its master was quiet.
                .args(["--cluster-replica-validity-factor", "0"])
                // Replicas sync at once, and their offset (without which `CLUSTER SLOTS`
                // leaves them out) moves within a second rather than ten.
                .args([
                    "--repl-diskless-sync-delay",
                    "0",
                    "--repl-ping-replica-period",
                    "1",
                ])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-server is installed");
            let pid = child.id().expect("redis-server running");
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("URL");
            let what = format!("redis-server on {port} to answer");
            let conn = crate::eventually(&what, crate::STEP, || {
                let exited = child.try_wait().ok().flatten().is_some();
                let client = client.clone();
                async move {
                    if exited {
                        return Some(None);
                    }
                    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                    let info: String = redis::cmd("INFO")
                        .arg("server")
                        .query_async(&mut conn)
                        .await
                        .ok()?;
                    // Another server may hold the port until ours gives up and exits.
                    (field(&info, "process_id") == Some(&pid.to_string())).then_some(Some(conn))
                }
            })
            .await;
            if let Some(mut conn) = conn {
                let mut myid = redis::cmd("CLUSTER");
                myid.arg("MYID");
                let id = crate::within("CLUSTER MYID", myid.query_async(&mut conn))
                    .await
                    .expect("CLUSTER MYID");
                let child = Some(child);
                return Self {
                    port,
                    id,
                    child,
                    conn,
                };
            }
        }
        panic!("redis-server could not bind free ports five times");
    }
}

/// Two distinct free loopback ports: a node's client port and its cluster bus port.
fn free_ports() -> [u16; 2] {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let (a, b) = (bind(), bind());
    [a, b].map(|l| l.local_addr().expect("bound").port())
}

/// `CLUSTER SETSLOT <slot> <state> <node id>`.
fn setslot(slot: u16, state: &str, node_id: &str) -> Cmd {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("SETSLOT").arg(slot).arg(state).arg(node_id);
    cmd
}

/// The master port serving `slot` in a `CLUSTER SLOTS` map.
fn owner(map: &[(u16, u16, u16)], slot: u16) -> Option<u16> {
    map.iter()
        .find(|&&(first, last, _)| (first..=last).contains(&slot))
        .map(|r| r.2)
}

/// The value of `name:value` in `INFO` or `CLUSTER INFO` text.
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// The first two words of `cmd` (`CLUSTER SLOTS`, `MIGRATE 127.0.0.1`), to name it in a panic.
fn name(cmd: &Cmd) -> String {
    let words = cmd.args_iter().take(2).filter_map(|arg| match arg {
        redis::Arg::Simple(word) => Some(String::from_utf8_lossy(word)),
        redis::Arg::Cursor => None,
    });
    words.collect::<Vec<_>>().join(" ")
}

/// One element of a `CLUSTER SLOTS` reply as `T`.
fn parse<T: FromRedisValue>(value: &Value) -> T {
    redis::from_redis_value(value).unwrap_or_else(|e| panic!("CLUSTER SLOTS reply: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::within;
    use redis::cluster::ClusterClient;
    use redis::cluster_async::ClusterConnection;
    use redis::{AsyncCommands, AsyncConnectionConfig, PushInfo, PushKind};
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    /// A cluster connection through the cluster's live nodes.
    async fn client(cluster: &RedisCluster) -> ClusterConnection {
        let client = ClusterClient::new(cluster.seeds()).expect("seeds");
        within("a cluster connection", client.get_async_connection())
            .await
            .expect("cluster connection")
    }

    /// A RESP3 connection to the node on `port`, `SSUBSCRIBE`d to `channel`, and its pushes.
    async fn ssubscribe(
        port: u16,
        channel: &str,
    ) -> (MultiplexedConnection, UnboundedReceiver<PushInfo>) {
        let (tx, mut rx) = unbounded_channel();
        let url = format!("redis://127.0.0.1:{port}/?protocol=resp3");
        let config = AsyncConnectionConfig::new().set_push_sender(tx);
        let client = redis::Client::open(url).expect("URL");
        let connect = client.get_multiplexed_async_connection_with_config(&config);
        let mut conn = within("a RESP3 connection", connect)
            .await
            .expect("connected");
        let mut subscribe = redis::cmd("SSUBSCRIBE");
        subscribe.arg(channel);
        within("SSUBSCRIBE", subscribe.exec_async(&mut conn))
            .await
            .expect("subscribed");
        let confirmed = next_push(&mut rx, PushKind::SSubscribe).await;
        assert_eq!(confirmed.data[0], Value::BulkString(channel.into()));
        (conn, rx)
    }

    /// The next push of `kind`, skipping others.
    async fn next_push(rx: &mut UnboundedReceiver<PushInfo>, kind: PushKind) -> PushInfo {
        within(&format!("a {kind} push"), async {
            loop {
                let push = rx.recv().await.expect("connection open");
                if push.kind == kind {
                    return push;
                }
            }
        })
        .await
    }

    #[tokio::test]
    async fn three_masters_serve_every_slot() {
        let cluster = RedisCluster::start().await;
        let map = cluster.slot_map(cluster.any_live()).await;
        let served: usize = map.iter().map(|&(a, b, _)| usize::from(b - a) + 1).sum();
        assert_eq!(served, usize::from(SLOTS));
        assert_eq!(cluster.masters().await.len(), 3);
        assert_eq!(cluster.seeds().len(), NODES);

        let mut conn = client(&cluster).await;
        let _: () = within("SET", conn.set("greeting", "hi")).await.unwrap();
        let got: String = within("GET", conn.get("greeting")).await.unwrap();
        assert_eq!(got, "hi");
    }

    #[tokio::test]
    async fn sharded_publish_reaches_a_subscriber_on_the_slots_master() {
        let cluster = RedisCluster::start().await;
        let (_sub, mut rx) = ssubscribe(cluster.master_of_key("ch").await, "ch").await;

        let mut conn = client(&cluster).await;
        let mut publish = redis::cmd("SPUBLISH");
        publish.arg("ch").arg("hello");
        let receivers: i64 = within("SPUBLISH", publish.query_async(&mut conn))
            .await
            .unwrap();
        assert_eq!(receivers, 1);
        let push = next_push(&mut rx, PushKind::SMessage).await;
        assert_eq!(
            push.data,
            [
                Value::BulkString("ch".into()),
                Value::BulkString("hello".into())
            ]
        );
    }

    #[tokio::test]
    async fn a_migrated_slot_unsubscribes_its_channels_and_keeps_its_keys() {
        let cluster = RedisCluster::start().await;
        let slot = slot(b"ch");
        let from = cluster.master_of(slot).await;
        let (_sub, mut rx) = ssubscribe(from, "ch").await;
        let mut conn = client(&cluster).await;
        let _: () = within("SET", conn.set("{ch}.key", "before")).await.unwrap();

        let to = cluster
            .masters()
            .await
            .into_iter()
            .find(|&p| p != from)
            .unwrap();
        cluster.migrate_slot(slot, to).await;

        assert_eq!(cluster.master_of(slot).await, to);
        let push = next_push(&mut rx, PushKind::SUnsubscribe).await;
        assert_eq!(push.data[0], Value::BulkString("ch".into()));
        let got: String = within("GET", conn.get("{ch}.key")).await.unwrap();
        assert_eq!(got, "before");
    }

    #[tokio::test]
    async fn a_replica_takes_over_a_killed_master() {
        let mut cluster = RedisCluster::start().await;
        let slot = slot(b"failover");
        let old = cluster.master_of(slot).await;

        cluster.kill(old).await;
        let new = cluster.await_failover(slot, old).await;

        assert_ne!(new, old);
        assert_eq!(cluster.master_of(slot).await, new);
        let mut conn = client(&cluster).await;
        let _: () = within("SET", conn.set("failover", "ok")).await.unwrap();
        let got: String = within("GET", conn.get("failover")).await.unwrap();
        assert_eq!(got, "ok");
    }

    /// Flotilla's cluster handle through a slot migration: `ASK` while the slot moves (a
    /// pipeline half served where the slot was, a key already moved, a new key, a pipeline of
    /// both), `MOVED` once it has, a script loaded on
    /// the master that runs it, a fan-out over every shard, and the new owner in its map.
    #[tokio::test]
    async fn the_cluster_handle_follows_ask_and_moved() {
        use flotilla_shared::redis_conn::Redis;
        use flotilla_shared::secret::Secret;
        use flotilla_shared::settings::RedisSettings;
        let cluster = RedisCluster::start().await;
        let redis = Redis::new(&RedisSettings {
            url: Secret::new("redis://127.0.0.1:1"),
            cluster_nodes: Some(Secret::new(cluster.setting())),
            command_timeout_ms: 2000,
        })
        .expect("settings");
        let (moved, fresh, stays) = ("{router}:moved", "{router}:fresh", "{router}:stays");
        let slot = slot(b"router");
        let set = |key: &str, value: &str| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key).arg(value);
            cmd
        };
        let get = |key: &str| {
            let mut cmd = redis::cmd("GET");
            cmd.arg(key);
            cmd
        };
        let _: () = redis.query(&set(moved, "1")).await.expect("SET");
        let _: () = redis.query(&set(stays, "1")).await.expect("SET");
        let script = redis::Script::new("return redis.call('GET', KEYS[1])");
        let read_moved = || {
            let mut read = script.prepare_invoke();
            read.key(moved);
            read
        };
        let got: String = redis
            .invoke(read_moved())
            .await
            .expect("a script on the key's master");
        assert_eq!(got, "1");

        let masters = cluster.masters().await;
        let from = cluster.master_of(slot).await;
        let to = masters.into_iter().find(|&p| p != from).unwrap();
        cluster.begin_migration(slot, to).await;
        let mut migrate = redis::cmd("MIGRATE");
        migrate.arg("127.0.0.1").arg(to).arg("").arg(0).arg(5000);
        let _: () = cluster.query(from, migrate.arg("KEYS").arg(moved)).await;
        // Half a pipeline is served where the slot was (its key is still there), half asked
        // elsewhere: only the asked half is sent again.
        let mut incr = redis::pipe();
        incr.cmd("INCR").arg(stays).cmd("INCR").arg(moved);
        let got: (i64, i64) = redis.query(&incr).await.expect("a pipeline split by ASK");
        assert_eq!(got, (2, 2));
        cluster.move_keys(slot, from, to).await;
        let got: String = redis.query(&get(moved)).await.expect("ASK for a moved key");
        assert_eq!(got, "2");
        let _: () = redis
            .query(&set(fresh, "2"))
            .await
            .expect("ASK for a new key");
        let mut both = redis::pipe();
        both.add_command(get(moved)).add_command(get(fresh));
        let got: (String, String) = redis.query(&both).await.expect("ASK for a pipeline");
        assert_eq!(got, ("2".to_owned(), "2".to_owned()));

        cluster.finish_migration(slot, from, to).await;
        let got: String = redis.query(&get(fresh)).await.expect("MOVED");
        assert_eq!(got, "2");
        let got: String = redis
            .invoke(read_moved())
            .await
            .expect("a script on the new master");
        assert_eq!(got, "2");

        let publishes: Vec<Cmd> = (0..300)
            .map(|i| {
                let mut cmd = redis::cmd("SPUBLISH");
                cmd.arg(format!("node:{{{i}}}")).arg("x");
                cmd
            })
            .collect();
        let (failed, error) = redis.fan_out(publishes).await;
        assert_eq!((failed, error.map(|e| e.to_string())), (0, None));
        let map = redis.slot_map().await.expect("slot map");
        assert_eq!(
            map.owner(slot).as_deref(),
            Some(format!("127.0.0.1:{to}").as_str())
        );
    }
}
