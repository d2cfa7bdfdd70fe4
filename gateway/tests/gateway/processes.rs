//! Gateways as real processes (SIGTERM, SIGKILL) and a private Redis that restarts.

use crate::common::*;
use flotilla_shared::close_codes::DRAINING;
use flotilla_shared::presence;
use flotilla_shared::redis_conn::Redis;
use flotilla_testkit::process::{self, Process};
use flotilla_testkit::proxy::Proxy;
use flotilla_testkit::redis_server::RedisServer;
use flotilla_testkit::sse_client::SseClient;
use flotilla_testkit::{db, eventually, redis_url, within};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The environment of a gateway process: the test settings' short intervals, debug logging.
fn env(db_url: &str, redis_url: &str, overrides: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = [
        ("FLOTILLA__DATABASE__URL", db_url),
        ("FLOTILLA__REDIS__URL", redis_url),
        ("FLOTILLA__REDIS__COMMAND_TIMEOUT_MS", "500"),
        ("FLOTILLA__GATEWAY__LISTEN", "127.0.0.1:0"),
        ("FLOTILLA__GATEWAY__PING_INTERVAL_MS", "300"),
        ("FLOTILLA__GATEWAY__PONG_TIMEOUT_MS", "5000"),
        ("FLOTILLA__GATEWAY__UNSOLICITED_PONG_INTERVAL_MS", "200"),
        ("FLOTILLA__GATEWAY__LIVENESS_TTL_MS", "2000"),
        ("FLOTILLA__GATEWAY__HEARTBEAT_INTERVAL_MS", "500"),
        ("FLOTILLA__GATEWAY__SHUTDOWN_GRACE_MS", "3000"),
        ("FLOTILLA__AUTH__BCRYPT_COST", "4"),
        ("FLOTILLA__LOG__LEVEL", "debug"),
        ("RUST_LOG", "debug"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    pairs.extend(
        overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    pairs
}

async fn start(db_url: &str, redis_url: &str) -> Process {
    start_with(db_url, redis_url, &[]).await
}

async fn start_with(db_url: &str, redis_url: &str, overrides: &[(&str, &str)]) -> Process {
    let env = env(db_url, redis_url, overrides);
    process::start(env!("CARGO_BIN_EXE_flotilla-gateway"), &env).await
}

fn ws_url(p: &Process) -> String {
    format!("ws://{}/api/agent/ws", p.addr)
}

#[tokio::test]
async fn sigterm_drains_with_1012_exits_in_time_and_logs_no_secrets() {
    let db = db::fresh().await;
    let s = settings(&db.url, &redis_url(), &[]);
    let redis = redis(&s);
    let [(node, token)] = nodes(&db.pool, 1).await.try_into().unwrap();
    let mut gw = start(&db.url, &redis_url()).await;

    // A refused handshake and an accepted one, both logged at debug level.
    let wrong = format!("{}{}", &token[..token.len() - 4], "0000");
    assert_eq!(refused_status(connect(&ws_url(&gw), &wrong).await), 401);
    let mut ws = connect(&ws_url(&gw), &token).await.expect("handshake");
    eventually("presence", Duration::from_secs(5), || async {
        presence_of(&redis, node).await
    })
    .await;

    let healthcheck = |addr: std::net::SocketAddr| async move {
        let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla-gateway"))
            .arg("healthcheck")
            .env("FLOTILLA__GATEWAY__LISTEN", addr.to_string())
            .status();
        within("healthcheck", status).await.unwrap().success()
    };
    assert!(healthcheck(gw.addr).await, "a serving gateway is healthy");

    let started = Instant::now();
    gw.terminate().await;
    assert_eq!(close_code(&mut ws).await, Some(DRAINING));
    let status = gw.wait().await;
    assert!(status.success(), "exit status {status}");
    assert!(!healthcheck(gw.addr).await, "a stopped gateway is not");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "exited within the grace period"
    );
    wait_absent(&redis, node, Duration::from_secs(1)).await;

    let output = gw.output();
    assert!(output.contains("listening on"), "{output}");
    let digest: Vec<u8> = sqlx::query_scalar("SELECT token_digest FROM nodes WHERE id = $1")
        .bind(node)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let digest = hex::encode(digest);
    let secret = token.rsplit('_').next().unwrap();
    for leaked in [token.as_str(), wrong.as_str(), secret, digest.as_str()] {
        assert!(
            !output.contains(leaked),
            "a secret is in the logs:\n{output}"
        );
    }
}

/// A second SIGTERM during a slow drain ends the process at once.
#[tokio::test]
async fn a_second_signal_exits_without_finishing_the_drain() {
    let db = db::fresh().await;
    let pairs = nodes(&db.pool, 3).await;
    // One socket per batch, a minute between batches, two minutes of grace: an exit within
    // ten seconds can only be the second signal's doing, however loaded the machine.
    let mut gw = start_with(
        &db.url,
        &redis_url(),
        &[
            ("FLOTILLA__GATEWAY__DRAIN_BATCH", "1"),
            ("FLOTILLA__GATEWAY__DRAIN_PAUSE_MS", "60000"),
            ("FLOTILLA__GATEWAY__SHUTDOWN_GRACE_MS", "120000"),
        ],
    )
    .await;
    let mut sockets = Vec::new();
    for (_, token) in &pairs {
        sockets.push(connect(&ws_url(&gw), token).await.expect("handshake"));
    }
    gw.terminate().await;
    // The drain has begun once the first socket (whichever it is) is closed.
    let closes = sockets.iter_mut().map(|ws| Box::pin(close_code(ws)));
    let (first, _, _) = futures_util::future::select_all(closes).await;
    assert_eq!(first, Some(DRAINING));
    let second = Instant::now();
    gw.terminate().await;
    let status = gw.wait().await;
    assert!(
        !status.success(),
        "a cut-short drain exits non-zero: {status}"
    );
    assert!(second.elapsed() < Duration::from_secs(10), "exited at once");
    assert!(gw.output().contains("second signal"));
}

#[tokio::test]
async fn a_crashed_gateways_sockets_read_as_gone_after_its_liveness_ttl() {
    let db = db::fresh().await;
    let s = settings(&db.url, &redis_url(), &[]);
    let redis = redis(&s);
    let [(node, token)] = nodes(&db.pool, 1).await.try_into().unwrap();
    let mut gw = start(&db.url, &redis_url()).await;
    let _ws = connect(&ws_url(&gw), &token).await.expect("handshake");
    eventually("presence", Duration::from_secs(5), || async {
        presence_of(&redis, node).await
    })
    .await;

    let killed = Instant::now();
    gw.kill().await;
    // The presence entry is still there, but its gateway's liveness key expires (TTL 2 s).
    wait_absent(&redis, node, Duration::from_secs(4)).await;
    assert!(
        killed.elapsed() >= Duration::from_millis(1000),
        "presence outlived the liveness TTL's start"
    );
}

/// `kill -9` of one gateway: its agent reconnects to the survivor and is shown there, even
/// while the dead gateway's presence entry has not expired yet.
#[tokio::test]
async fn after_a_kill_9_the_agent_is_shown_on_the_surviving_gateway() {
    let db = db::fresh().await;
    let s = settings(&db.url, &redis_url(), &[]);
    let redis = redis(&s);
    let [(node, token)] = nodes(&db.pool, 1).await.try_into().unwrap();
    let mut doomed = start_with(
        &db.url,
        &redis_url(),
        &[("FLOTILLA__GATEWAY__ID", "doomed")],
    )
    .await;
    let survivor = start_with(
        &db.url,
        &redis_url(),
        &[("FLOTILLA__GATEWAY__ID", "survivor")],
    )
    .await;
    let mut ws = connect(&ws_url(&doomed), &token).await.expect("handshake");
    let first = eventually(
        "presence on the doomed gateway",
        Duration::from_secs(5),
        || async { presence_of(&redis, node).await },
    )
    .await;
    assert_eq!(first.gateway_id, "doomed");

    doomed.kill().await;
    // The agent notices the dead socket and reconnects through the balancer to the survivor.
    assert!(
        within("the socket to end", futures_util::StreamExt::next(&mut ws))
            .await
            .is_none_or(|m| m.is_err())
    );
    let _ws = connect(&ws_url(&survivor), &token)
        .await
        .expect("reconnect");
    let now = eventually(
        "presence on the survivor",
        Duration::from_secs(5),
        || async {
            presence_of(&redis, node)
                .await
                .filter(|p| p.gateway_id == "survivor")
        },
    )
    .await;
    assert_ne!(now.conn_id, first.conn_id);
    let f = frame("deploy");
    publish_until_delivered(&redis, node, &f).await;
}

/// The same for an SSE agent: its stream ends with the killed process, and the stream it opens
/// on the survivor is what the fleet shows, as an SSE connection.
#[tokio::test]
async fn after_a_kill_9_an_sse_agent_is_shown_on_the_surviving_gateway() {
    let db = db::fresh().await;
    let redis = redis(&settings(&db.url, &redis_url(), &[]));
    let [(node, token)] = nodes(&db.pool, 1).await.try_into().unwrap();
    let id = |name| [("FLOTILLA__GATEWAY__ID", name)];
    let mut doomed = start_with(&db.url, &redis_url(), &id("doomed")).await;
    let survivor = start_with(&db.url, &redis_url(), &id("survivor")).await;
    let push_url = |p: &Process| format!("http://{}/api/agent/push", p.addr);
    let token = token.as_str();
    let open = |url: String| async move {
        match SseClient::open(&url, token).await {
            Ok(stream) => stream,
            Err(e) => panic!("the stream opens: {e:?}"),
        }
    };
    let mut sse = open(push_url(&doomed)).await;
    let on = |gateway: &'static str| {
        let redis = &redis;
        async move {
            presence_of(redis, node)
                .await
                .filter(|p| p.gateway_id == gateway)
        }
    };
    eventually(
        "presence on the doomed gateway",
        Duration::from_secs(5),
        || on("doomed"),
    )
    .await;

    doomed.kill().await;
    assert!(
        sse.ends_within(Duration::from_secs(2)).await,
        "the stream ends"
    );
    let _sse = open(push_url(&survivor)).await;
    let now = eventually("presence on the survivor", Duration::from_secs(5), || {
        on("survivor")
    })
    .await;
    assert_eq!(now.transport, flotilla_shared::presence::Transport::Sse);
}

#[tokio::test]
async fn a_redis_restart_loses_nothing_the_gateway_holds() {
    let db = db::fresh().await;
    let mut server = RedisServer::start().await;
    let s = settings(&db.url, &server.url(), &[]);
    let redis = redis(&s);
    let [(node, token)] = nodes(&db.pool, 1).await.try_into().unwrap();
    let gw = gateway(s).await;
    let (mut ws, before) = gw.connect(&redis, node, &token).await;
    let f = frame("deploy");
    publish(&redis, node, &f).await;
    assert_eq!(next_text(&mut ws).await, f);

    // While Redis is down the gateway is not ready, but the agent's socket stays up.
    server.kill().await;
    let readyz = format!("http://{}/readyz", gw.addr);
    eventually("/readyz turns 503", Duration::from_secs(5), || async {
        let r = reqwest::get(&readyz).await.ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
    server.restart().await; // empty: presence, liveness key and subscriptions are gone
    eventually("/readyz turns 200", Duration::from_secs(10), || async {
        let r = reqwest::get(&readyz).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    // The gateway resubscribes and restores the socket's presence.
    let restored = eventually("presence restored", Duration::from_secs(5), || async {
        presence::lookup(&redis, &[node])
            .await
            .ok()?
            .pop()
            .flatten()
    })
    .await;
    assert_eq!(restored, before);
    let f = frame("labels");
    publish_until_delivered(&redis, node, &f).await;
    assert_eq!(next_text(&mut ws).await, f);
    assert!(
        gw.state
            .counters()
            .pubsub_connects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
}

#[tokio::test]
async fn a_gateway_started_while_redis_is_down_catches_up_when_it_returns() {
    let db = db::fresh().await;
    let mut server = RedisServer::start().await;
    server.kill().await;
    let s = settings(&db.url, &server.url(), &[]);
    let redis = redis(&s);
    let [(node, token)] = nodes(&db.pool, 1).await.try_into().unwrap();
    let gw = gateway(s).await;
    // Authentication needs only Postgres: the agent gets its socket (and polls meanwhile).
    let mut ws = connect(&format!("ws://{}/api/agent/ws", gw.addr), &token)
        .await
        .expect("handshake without Redis");

    server.restart().await;
    eventually("presence recorded", Duration::from_secs(5), || async {
        presence::lookup(&redis, &[node])
            .await
            .ok()?
            .pop()
            .flatten()
    })
    .await;
    let f = frame("deploy");
    publish_until_delivered(&redis, node, &f).await;
    assert_eq!(next_text(&mut ws).await, f);
}

/// A fresh database, a Redis handle straight to the test Redis, a proxy to it, and an
/// in-process gateway (with `overrides`) that reaches Redis only through the proxy.
async fn behind_a_redis_proxy(
    overrides: &[(&str, &str)],
) -> (db::TestDb, Redis, Proxy, GatewayHandle) {
    let db = db::fresh().await;
    let redis = redis(&settings(&db.url, &redis_url(), &[]));
    let (proxy, through_proxy) = Proxy::in_front_of(&redis_url()).await;
    let through_proxy = settings(&db.url, &through_proxy, overrides);
    let gw = gateway(through_proxy).await;
    (db, redis, proxy, gw)
}

#[tokio::test]
async fn a_socket_closed_while_redis_is_unreachable_is_released_once_it_is_back() {
    let (db, redis, proxy, gw) = behind_a_redis_proxy(&[]).await;
    let [(node, token)] = nodes(&db.pool, 1).await.try_into().unwrap();
    let (mut ws, _) = gw.connect(&redis, node, &token).await;

    proxy.cut();
    within("client close", futures_util::SinkExt::close(&mut ws))
        .await
        .unwrap();
    eventually("the release is pending", Duration::from_secs(3), || async {
        (gw.state.unreleased_count() == 1).then_some(())
    })
    .await;
    // Redis still holds the entry, and the gateway's liveness key has not expired yet.
    assert!(presence_of(&redis, node).await.is_some());

    proxy.heal();
    wait_absent(&redis, node, Duration::from_secs(3)).await;
    assert_eq!(gw.state.unreleased_count(), 0);
}

#[tokio::test]
async fn a_socket_opened_while_redis_is_unreachable_shows_once_it_is_back() {
    // A long liveness TTL: the key survives the outage, so only the failed claim can trigger
    // the restore.
    let (db, redis, proxy, gw) = behind_a_redis_proxy(&[("liveness_ttl_ms", "30000")]).await;
    let [(node, token)] = nodes(&db.pool, 1).await.try_into().unwrap();
    eventually(
        "the gateway is alive in Redis",
        Duration::from_secs(3),
        || async {
            let key = flotilla_shared::presence::keys(gw.state.redis()).alive(gw.state.id());
            redis
                .query::<Option<String>>(redis::cmd("GET").arg(key))
                .await
                .ok()
                .flatten()
        },
    )
    .await;

    proxy.cut();
    let mut ws = gw
        .try_connect(&token)
        .await
        .expect("handshake needs only Postgres");
    eventually(
        "the socket is registered",
        Duration::from_secs(3),
        || async { (gw.state.connection_count() == 1).then_some(()) },
    )
    .await;
    assert!(presence_of(&redis, node).await.is_none());

    proxy.heal();
    eventually("presence recorded", Duration::from_secs(3), || async {
        presence_of(&redis, node).await
    })
    .await;
    let f = frame("deploy");
    publish_until_delivered(&redis, node, &f).await;
    assert_eq!(next_text(&mut ws).await, f);
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Opens `tokens.len()` sockets that answer pings in the background.
async fn open_idle(url: &str, nodes: &[(Uuid, String)]) -> Vec<tokio::task::JoinHandle<()>> {
    use futures_util::StreamExt;
    let mut readers = Vec::new();
    for (_, token) in nodes {
        let mut ws = connect(url, token).await.expect("handshake");
        readers.push(tokio::spawn(async move {
            while let Some(Ok(_)) = ws.next().await {}
        }));
    }
    readers
}

#[tokio::test]
async fn an_idle_socket_costs_the_gateway_a_few_kib() {
    const WARM: usize = 200;
    const MEASURED: usize = 2000;
    flotilla_gateway::os::raise_nofile_limit(); // this process holds the client ends
    let db = db::fresh().await;
    let nodes = nodes(&db.pool, WARM + MEASURED).await;
    let keepalive = [
        ("FLOTILLA__GATEWAY__PING_INTERVAL_MS", "30000"),
        ("FLOTILLA__GATEWAY__PONG_TIMEOUT_MS", "40000"),
        ("FLOTILLA__GATEWAY__UNSOLICITED_PONG_INTERVAL_MS", "20000"),
        ("RUST_LOG", "info"),
    ];
    let gw = start_with(&db.url, &redis_url(), &keepalive).await;
    let url = ws_url(&gw);
    let _warm = open_idle(&url, &nodes[..WARM]).await;
    let before = rss_kib(gw.pid());
    let _measured = open_idle(&url, &nodes[WARM..]).await;
    let after = rss_kib(gw.pid());
    let per_socket = (after.saturating_sub(before)) as f64 / MEASURED as f64;
    println!("gateway RSS {before} KiB -> {after} KiB: {per_socket:.2} KiB per idle socket");
    assert!(per_socket <= 4.0, "{per_socket:.2} KiB per idle socket");
}

/// Redis drops the gateway's subscription while the gateway's connection stays open and silent
/// (no error, no end of stream): the heartbeat's probe reaches no subscriber, the gateway
/// reconnects and resubscribes, and pushes flow again to the socket it kept.
#[tokio::test]
async fn a_silently_dead_subscription_is_found_by_the_probe_and_replaced() {
    let (db, redis, proxy, gw) = behind_a_redis_proxy(&[("heartbeat_interval_ms", "200")]).await;
    let [(node, token)] = nodes(&db.pool, 1).await.try_into().unwrap();
    let (mut ws, _) = gw.connect(&redis, node, &token).await;
    let first = frame("deploy");
    publish_until_delivered(&redis, node, &first).await;
    assert_eq!(next_text(&mut ws).await, first);
    let connects = || gw.state.counters().pubsub_connects.load(Ordering::Relaxed);
    let before = connects();

    proxy.deafen_subscribers();
    let channel = flotilla_shared::channels::node_channel(node);
    let subscribers = || async {
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg("NUMSUB").arg(&channel);
        let (_, count): (String, i64) = redis.query(&cmd).await.expect("PUBSUB NUMSUB");
        count
    };
    eventually(
        "Redis dropped the subscription",
        Duration::from_secs(3),
        || async { (subscribers().await == 0).then_some(()) },
    )
    .await;

    let second = frame("labels");
    publish_until_delivered(&redis, node, &second).await;
    assert_eq!(
        next_text(&mut ws).await,
        second,
        "the same socket gets pushes again"
    );
    assert!(connects() > before, "the subscription was replaced");
}
