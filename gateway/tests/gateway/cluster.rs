//! Gateways and the api on a real Redis Cluster (three masters, three replicas): node channels
//! over sharded pub/sub, presence, a master's failover and a slot's migration.

use crate::common::*;
use flotilla_shared::channels::node_channel;
use flotilla_shared::close_codes::{REVOKED, SUPERSEDED};
use flotilla_shared::presence::{self, Presence, Transport};
use flotilla_shared::settings::Settings;
use flotilla_shared::slots::slot;
use flotilla_testkit::redis_cluster::RedisCluster;
use flotilla_testkit::sse_client::SseClient;
use flotilla_testkit::{api, db, eventually, within};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// Test settings in cluster mode; `redis.url` points nowhere, so nothing can use it.
fn cluster_settings(db_url: &str, cluster: &RedisCluster) -> Settings {
    flotilla_testkit::settings_with(
        db_url,
        "redis://127.0.0.1:1",
        &[
            ("redis.cluster_nodes", &cluster.setting()),
            ("gateway.pong_timeout_ms", "5000"),
        ],
    )
}

/// How many connections have `channel` sharded-subscribed on the node at `port`.
async fn shard_subscribers(port: u16, channel: &str) -> Option<i64> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()?;
    let (_, n): (String, i64) = tokio::time::timeout(
        Duration::from_secs(1),
        redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(channel)
            .query_async(&mut conn),
    )
    .await
    .ok()?
    .ok()?;
    Some(n)
}

/// Waits until a connection has `channel` sharded-subscribed on the node at `port`.
async fn await_shard_subscriber(what: &str, port: u16, channel: &str, limit: Duration) {
    eventually(what, limit, || async move {
        (shard_subscribers(port, channel).await? == 1).then_some(())
    })
    .await;
}

async fn fleet_node(api: &api::ApiHandle, node: &str) -> Value {
    api.admin(Method::GET, &format!("/api/v1/fleet/{node}"), None)
        .await
        .body
}

#[tokio::test]
async fn on_a_cluster_deploys_reach_both_gateways_and_supersede_presence_and_revoke_hold() {
    let cluster = RedisCluster::start().await;
    let db = db::fresh().await;
    let s = cluster_settings(&db.url, &cluster);
    let redis = redis(&s);
    assert!(redis.is_cluster());
    let api = api::spawn(s.clone()).await;
    let (gw1, gw2) = (gateway(s.clone()).await, gateway(s.clone()).await);
    let (env_id, enroll) = api.create_environment("prod").await;

    // Two nodes per shard: the first of each on gw1 over the WebSocket, the second on gw2
    // over SSE, so each gateway subscribes on every shard.
    let mut per_shard: BTreeMap<u16, Vec<(String, String)>> = BTreeMap::new();
    for i in 0.. {
        if per_shard.len() == 3 && per_shard.values().all(|v| v.len() >= 2) {
            break;
        }
        assert!(i < 200, "enrolled 200 nodes without two on each shard");
        let (node, token) = api.enroll(&enroll, &format!("h{i}")).await;
        let channel = node_channel(node.parse().unwrap());
        let shard = cluster.master_of(slot(channel.as_bytes())).await;
        let on_shard = per_shard.entry(shard).or_default();
        if on_shard.len() < 2 {
            on_shard.push((node, token));
        }
    }
    // The console's live fleet events (classic pub/sub, relayed by the api) work too.
    let mut events = within(
        "the fleet events stream",
        SseClient::open(&api.url("/api/v1/fleet/events"), api::ADMIN_TOKEN),
    )
    .await
    .expect("the stream opens");
    let mut sockets = Vec::new();
    let mut streams = Vec::new();
    for pair in per_shard.values() {
        let (node, token) = &pair[0];
        let (ws, at) = gw1.connect(&redis, node.parse().unwrap(), token).await;
        assert_eq!(at.transport, Transport::Websocket);
        sockets.push((node.clone(), ws));
        let (node, token) = &pair[1];
        let (sse, at) = gw2.open(&redis, node.parse().unwrap(), token).await;
        assert_eq!(at.transport, Transport::Sse);
        streams.push((node.clone(), sse));
    }

    // Presence: each node reads as connected through its gateway, and the fleet's
    // `connected` filter (the gateways' node sets) lists all six.
    for (node, _) in &sockets {
        let shown = fleet_node(&api, node).await;
        assert_eq!(shown["wsConnected"], true, "{shown}");
        assert_eq!(shown["gatewayId"], gw1.state.id(), "{shown}");
    }
    for (node, _) in &streams {
        assert_eq!(fleet_node(&api, node).await["gatewayId"], gw2.state.id());
    }
    let listed = api
        .admin(
            Method::GET,
            &format!("/api/v1/fleet?environmentId={env_id}&connected=true"),
            None,
        )
        .await;
    assert_eq!(
        listed.body["nodes"].as_array().map(Vec::len),
        Some(6),
        "{}",
        listed.text
    );

    let first = &sockets[0].0;
    loop {
        if events.next_message().await.contains(first.as_str()) {
            break;
        }
    }

    // A deploy reaches every socket and stream, on every shard.
    let pipeline = api.deploy_everywhere(&env_id).await;
    for (_, ws) in &mut sockets {
        let pushed: Value = serde_json::from_str(&next_text(ws).await).unwrap();
        assert_eq!(pushed["reason"], "deploy", "{pushed}");
    }
    for (_, sse) in &mut streams {
        let pushed: Value = serde_json::from_str(&sse.next_message().await).unwrap();
        assert_eq!(pushed["reason"], "deploy", "{pushed}");
    }

    // Log lines (a ring per node and pipeline, a per-node budget) are kept and shown.
    let (node, token) = &per_shard.values().next().unwrap()[1];
    let shipped = api
        .call(
            Method::POST,
            "/api/agent/logs",
            Some(token),
            Some(json!([{"pipelineId": pipeline, "lines": ["started"]}])),
        )
        .await;
    assert_eq!(shipped.status, 200, "{}", shipped.text);
    let url = api.url(&format!("/api/v1/fleet/{node}/logs?pipelineId={pipeline}"));
    let mut viewer = within("the log stream", SseClient::open(&url, api::ADMIN_TOKEN))
        .await
        .expect("the log stream opens");
    assert_eq!(
        viewer.next_event("lines").await["lines"],
        json!(["started"])
    );

    // Supersede across gateways: the first node reconnects on gw2; gw1 closes the old socket.
    let (node, token) = &per_shard.values().next().unwrap()[0];
    let (mut newer, at) = gw2.connect(&redis, node.parse().unwrap(), token).await;
    assert_eq!(at.gateway_id, gw2.state.id());
    let (_, older) = &mut sockets[0];
    assert_eq!(close_code(older).await, Some(SUPERSEDED));
    publish_until_delivered(&redis, node.parse().unwrap(), &frame("deploy")).await;
    let pushed: Value = serde_json::from_str(&next_text(&mut newer).await).unwrap();
    assert_eq!(pushed["reason"], "deploy", "{pushed}");

    // Revoke closes within a second, through the node's shard.
    let (node, _) = &sockets[2];
    let revoking = Instant::now();
    let revoked = api
        .admin(Method::DELETE, &format!("/api/v1/fleet/{node}"), None)
        .await;
    assert!(revoked.status.is_success(), "{}", revoked.text);
    assert_eq!(close_code(&mut sockets[2].1).await, Some(REVOKED));
    let took = revoking.elapsed();
    assert!(took < Duration::from_secs(1), "revoke took {took:?}");
}

#[tokio::test]
async fn presence_keeps_its_rules_on_a_cluster() {
    let cluster = RedisCluster::start().await;
    let db = db::fresh().await;
    let redis = redis(&cluster_settings(&db.url, &cluster));
    let keys = presence::keys(&redis);
    let at = |gw: &str, conn: &str, transport| Presence {
        gateway_id: gw.into(),
        conn_id: conn.into(),
        since_ms: 1,
        transport,
    };
    let (live, dead) = ("gw-live", "gw-dead");
    let mut alive = redis::cmd("SET");
    alive.arg(keys.alive(live)).arg(1).arg("EX").arg(60);
    redis.query::<()>(&alive).await.unwrap();
    let nodes: Vec<Uuid> = (0..12).map(|_| Uuid::new_v4()).collect();
    for (i, node) in nodes.iter().enumerate() {
        let gw = if i % 4 == 3 { dead } else { live };
        let transport = if i % 2 == 0 {
            Transport::Websocket
        } else {
            Transport::Sse
        };
        let prev = presence::claim(&redis, *node, &at(gw, &format!("c{i}"), transport), None)
            .await
            .unwrap();
        assert_eq!(prev, None);
    }
    // Lookup reads each node on its shard, in order, and needs a live gateway.
    let found = presence::lookup(&redis, &nodes).await.unwrap();
    for (i, p) in found.iter().enumerate() {
        assert_eq!(p.is_some(), i % 4 != 3, "node {i}: {p:?}");
    }
    let mut connected = presence::connected(&redis).await.unwrap();
    connected.sort();
    let mut want: Vec<(Uuid, Transport)> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 4 != 3)
        .map(|(i, n)| {
            (
                *n,
                if i % 2 == 0 {
                    Transport::Websocket
                } else {
                    Transport::Sse
                },
            )
        })
        .collect();
    want.sort();
    assert_eq!(connected, want);
    // A newer connection takes over and moves the node between sets; a stale release
    // changes nothing; a restore never overrides another connection.
    let moved = presence::claim(&redis, nodes[0], &at(live, "newer", Transport::Sse), None)
        .await
        .unwrap();
    assert_eq!(moved.map(|p| p.conn_id), Some("c0".to_owned()));
    assert!(!presence::release(&redis, nodes[0], "c0", None)
        .await
        .unwrap());
    assert!(
        !presence::restore(&redis, nodes[0], &at(live, "c0", Transport::Websocket))
            .await
            .unwrap()
    );
    let listed = presence::connected(&redis).await.unwrap();
    assert!(listed.contains(&(nodes[0], Transport::Sse)), "{listed:?}");
    assert!(!listed.contains(&(nodes[0], Transport::Websocket)));
    assert!(presence::release(&redis, nodes[0], "newer", None)
        .await
        .unwrap());
    assert!(!presence::connected(&redis)
        .await
        .unwrap()
        .iter()
        .any(|(n, _)| *n == nodes[0]));
    // A node a race took out of its set is put back by the re-index of the sockets held.
    let mut srem = redis::cmd("SREM");
    srem.arg(keys.nodes(live, Transport::Sse))
        .arg(nodes[1].to_string());
    redis.query::<()>(&srem).await.unwrap();
    let listed = |redis: flotilla_shared::redis_conn::Redis| async move {
        presence::connected(&redis).await.unwrap()
    };
    assert!(!listed(redis.clone())
        .await
        .contains(&(nodes[1], Transport::Sse)));
    // Only what the node's presence still names: a superseded connection is not put back.
    presence::reindex(
        &redis,
        live,
        [
            (nodes[1], "c1".to_owned(), Transport::Sse),
            (nodes[5], "superseded".to_owned(), Transport::Sse),
        ],
    )
    .await
    .unwrap();
    assert!(listed(redis.clone())
        .await
        .contains(&(nodes[1], Transport::Sse)));
    let mut srem = redis::cmd("SREM");
    srem.arg(keys.nodes(live, Transport::Sse))
        .arg(nodes[5].to_string());
    redis.query::<()>(&srem).await.unwrap();
    presence::reindex(
        &redis,
        live,
        [(nodes[5], "superseded".to_owned(), Transport::Sse)],
    )
    .await
    .unwrap();
    assert!(!listed(redis.clone())
        .await
        .contains(&(nodes[5], Transport::Sse)));
    // A stray left in a set (a node that moved without the set following) is reconciled away.
    let mut stray = redis::cmd("SADD");
    stray
        .arg(keys.nodes(live, Transport::Websocket))
        .arg(Uuid::new_v4().to_string());
    redis.query::<()>(&stray).await.unwrap();
    let held: Vec<Uuid> = nodes[1..].to_vec();
    let removed = presence::reconcile(&redis, live, |n| held.contains(&n))
        .await
        .unwrap();
    assert_eq!(removed, 1);
}

#[tokio::test]
async fn a_failover_keeps_the_socket_and_the_next_deploy_reaches_the_node() {
    let mut cluster = RedisCluster::start().await;
    let db = db::fresh().await;
    let s = cluster_settings(&db.url, &cluster);
    let redis = redis(&s);
    let api = api::spawn(s.clone()).await;
    let gw = gateway(s).await;
    let (env_id, enroll) = api.create_environment("prod").await;
    let (node, token) = api.enroll(&enroll, "h1").await;
    let node_id: Uuid = node.parse().unwrap();
    let (mut ws, _) = gw.connect(&redis, node_id, &token).await;
    let channel = node_channel(node_id);
    let old = cluster.master_of(slot(channel.as_bytes())).await;

    cluster.kill(old).await;
    let killed = Instant::now();
    let new = cluster.await_failover(slot(channel.as_bytes()), old).await;
    let promoted = killed.elapsed();
    assert_ne!(new, old);
    await_shard_subscriber(
        "the gateway subscribed on the promoted replica",
        new,
        &channel,
        Duration::from_secs(15),
    )
    .await;
    let resubscribed = killed.elapsed();

    // The next deploy reaches the node on the socket it had all along.
    api.deploy_everywhere(&env_id).await;
    let pushed: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(pushed["reason"], "deploy", "{pushed}");
    assert_eq!(gw.connects(), 1, "the agent reconnected");
    assert_eq!(gw.state.connection_count(), 1);

    // Presence is right again within 15 s of the kill.
    eventually(
        "the node reads as connected",
        Duration::from_secs(15).saturating_sub(killed.elapsed()),
        || async {
            let shown = fleet_node(&api, &node).await;
            (shown["wsConnected"] == true && shown["gatewayId"] == gw.state.id()).then_some(())
        },
    )
    .await;
    println!(
        "failover: replica promoted {promoted:?} after the kill, gateway resubscribed after \
         {resubscribed:?}, presence right after {:?}",
        killed.elapsed()
    );
}

#[tokio::test]
async fn resharding_a_slot_while_pushes_flow_loses_nothing_after_the_move() {
    let cluster = RedisCluster::start().await;
    let db = db::fresh().await;
    let s = cluster_settings(&db.url, &cluster);
    let redis = redis(&s);
    let gw = gateway(s).await;
    let [(node, token)] = nodes(&db.pool, 1).await.try_into().unwrap();
    let (ws, _) = gw.connect(&redis, node, &token).await;
    let channel = node_channel(node);
    let slot = slot(channel.as_bytes());
    let from = cluster.master_of(slot).await;
    let to = *cluster
        .masters()
        .await
        .iter()
        .find(|&&m| m != from)
        .unwrap();

    // Received sequence numbers, read off the socket.
    let received = Arc::new(Mutex::new(Vec::<u64>::new()));
    let reader = {
        let received = received.clone();
        let (_, mut read) = ws.split();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = read.next().await {
                if let Message::Text(text) = msg {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    if let Some(seq) = v["seq"].as_u64() {
                        received.lock().unwrap().push(seq);
                    }
                }
            }
        })
    };
    // Pushes every 2 ms, as the api publishes them; each remembers when it went out and how
    // many subscribers Redis says it reached.
    let published = Arc::new(Mutex::new(Vec::<(u64, Instant, i64)>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let publisher = {
        let (published, stop, redis) = (published.clone(), stop.clone(), redis.clone());
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.is_cancelled() {
                let payload = json!({"type": "config_changed", "reason": "test", "seq": seq});
                let mut cmd = redis::cmd(redis.node_publish());
                cmd.arg(node_channel(node)).arg(payload.to_string());
                let reached = redis.query::<i64>(&cmd).await.unwrap_or(-1);
                published
                    .lock()
                    .unwrap()
                    .push((seq, Instant::now(), reached));
                seq += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let moving = Instant::now();
    cluster.migrate_slot(slot, to).await;
    let moved = Instant::now();
    await_shard_subscriber(
        "the gateway subscribed on the slot's new master",
        to,
        &channel,
        Duration::from_secs(10),
    )
    .await;
    let resubscribed = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    within("the publisher", publisher).await.unwrap();
    let published = published.lock().unwrap().clone();
    let last = published.last().unwrap().0;
    eventually("the last push", Duration::from_secs(5), || async {
        received.lock().unwrap().contains(&last).then_some(())
    })
    .await;
    reader.abort();
    let received = received.lock().unwrap().clone();

    // Every push Redis delivered arrived, in order, and every push after the gateway followed
    // the move was delivered.
    let delivered: Vec<u64> = published
        .iter()
        .filter(|(_, _, reached)| *reached > 0)
        .map(|(seq, _, _)| *seq)
        .collect();
    assert_eq!(
        received, delivered,
        "the socket got exactly what Redis delivered"
    );
    let after: Vec<_> = published
        .iter()
        .filter(|(_, at, _)| *at > resubscribed)
        .collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|(_, _, reached)| *reached == 1),
        "a push after the move was lost: {after:?}"
    );
    let lost: Vec<_> = published.iter().filter(|(_, _, r)| *r < 1).collect();
    let window = match (lost.first(), lost.last()) {
        (Some(first), Some(last)) => last.1.duration_since(first.1),
        _ => Duration::ZERO,
    };
    println!(
        "resharding: slot {slot} moved in {:?}; gateway resubscribed {:?} after the move; \
         {} of {} pushes reached no subscriber, over a window of {window:?}",
        moved.duration_since(moving),
        resubscribed.duration_since(moved),
        lost.len(),
        published.len()
    );
    assert_eq!(gw.connects(), 1, "the agent reconnected");
}

#[tokio::test]
async fn a_master_demoted_while_alive_is_followed() {
    let cluster = RedisCluster::start().await;
    let db = db::fresh().await;
    let s = cluster_settings(&db.url, &cluster);
    let redis = redis(&s);
    let gw = gateway(s).await;
    let [(node, token)] = nodes(&db.pool, 1).await.try_into().unwrap();
    let (mut ws, _) = gw.connect(&redis, node, &token).await;
    let slot = slot(node_channel(node).as_bytes());
    let old = cluster.master_of(slot).await;

    // A manual failover: the replica takes the slots over and the old master, alive, becomes
    // its replica. Its connections stay open; only the slot map shows the move.
    let id = cluster.node_id(old).to_owned();
    let client = redis::Client::open(format!("redis://127.0.0.1:{old}")).unwrap();
    let mut conn = within("a connection", client.get_multiplexed_async_connection())
        .await
        .unwrap();
    let replicas: Vec<String> = within(
        "its replicas",
        redis::cmd("CLUSTER")
            .arg("REPLICAS")
            .arg(&id)
            .query_async(&mut conn),
    )
    .await
    .unwrap();
    let replica: u16 = replicas
        .first()
        .expect("a replica")
        .split_whitespace()
        .nth(1)
        .and_then(|addr| addr.split(['@', ':']).nth(1))
        .and_then(|p| p.parse().ok())
        .expect("a replica's port");
    let client = redis::Client::open(format!("redis://127.0.0.1:{replica}")).unwrap();
    let mut conn = within("a connection", client.get_multiplexed_async_connection())
        .await
        .unwrap();
    let _: () = within(
        "a manual failover",
        redis::cmd("CLUSTER").arg("FAILOVER").query_async(&mut conn),
    )
    .await
    .unwrap();
    let demoted = Instant::now();
    eventually(
        "the replica serves the slot",
        Duration::from_secs(10),
        || async { (cluster.master_of(slot).await == replica).then_some(()) },
    )
    .await;

    // Pushes reach the same socket through the new master (the publisher's connection
    // follows the new slot map; the old master, now a replica, would take SPUBLISH silently).
    publish_until_delivered(&redis, node, &frame("deploy")).await;
    let pushed: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(pushed["reason"], "deploy", "{pushed}");
    assert_eq!(gw.connects(), 1, "the agent reconnected");
    println!(
        "demoted master: pushes delivered again {:?} after the failover began",
        demoted.elapsed()
    );
}
