//! The push channel against real Postgres and Redis, gateways in-process.

use crate::common::*;
use flotilla_shared::channels::{ControlMessage, PresenceEvent, FLEET_EVENTS};
use flotilla_shared::close_codes::{
    Close, DRAINING, KEEPALIVE_TIMEOUT, POLICY, REVOKED, SLOW_CONSUMER, SUPERSEDED, TOO_LARGE,
};
use flotilla_shared::presence::Transport;
use flotilla_testkit::sse_client::Item;
use flotilla_testkit::{eventually, redis_url, within};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn pushes_are_forwarded_verbatim_and_control_messages_never() {
    let t = setup(&[]).await;
    let (s, redis) = (t.settings.clone(), t.redis.clone());
    let [(node, token)] = t.nodes::<1>().await;
    let gw = gateway(s).await;
    let (mut ws, me) = gw.connect(&redis, node, &token).await;

    let first = frame("deploy");
    publish(&redis, node, &first).await;
    assert_eq!(next_text(&mut ws).await, first);

    // Control messages addressed to this socket's node stay inside the gateway.
    publish(
        &redis,
        node,
        &ControlMessage::Supersede { conn: me.conn_id }.to_payload(),
    )
    .await;
    publish(&redis, node, &ControlMessage::Probe { seq: 1 }.to_payload()).await;
    let second = frame("labels");
    publish(&redis, node, &second).await;
    assert_eq!(next_text(&mut ws).await, second);
    assert!(
        gw.state
            .counters()
            .pushes_delivered
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );

    let metrics = within(
        "metrics",
        reqwest::get(format!("http://{}/metrics", gw.addr)),
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        metrics.contains("flotilla_gateway_connections 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flotilla_gateway_push_latency_seconds_count"),
        "{metrics}"
    );
}

#[tokio::test]
async fn freed_memory_is_handed_back_once_a_burst_of_sockets_settles() {
    const N: usize = 30;
    let t = setup(&[("trim_after_churn", "40"), ("heartbeat_interval_ms", "50")]).await;
    let nodes = nodes(&t.db.pool, N).await;
    let gw = gateway(t.settings.clone()).await;
    let counters = gw.state.counters();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let mut sockets = Vec::new();
    for (node, token) in &nodes {
        sockets.push(gw.connect(&t.redis, *node, token).await.0);
    }
    // 30 connects are under the threshold of 40; the 30 closes then cross it.
    assert_eq!(get(&counters.connects), N as u64);
    assert_eq!(get(&counters.memory_trims), 0);
    for ws in sockets {
        drop(ws);
    }
    eventually("the closes are counted", Duration::from_secs(5), || async {
        (get(&counters.disconnects) == N as u64).then_some(())
    })
    .await;
    eventually(
        "a trim after the closes",
        Duration::from_secs(5),
        || async { (get(&counters.memory_trims) == 1).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn each_socket_gets_exactly_its_own_nodes_pushes() {
    const N: usize = 100;
    let t = setup(&[]).await;
    let (s, redis) = (t.settings.clone(), t.redis.clone());
    let nodes = nodes(&t.db.pool, N).await;
    let (a, b) = (gateway(s.clone()).await, gateway(s).await);
    let mut sockets = Vec::new();
    for (i, (node, token)) in nodes.iter().enumerate() {
        let gw = if i % 2 == 0 { &a } else { &b };
        sockets.push(gw.connect(&redis, *node, token).await.0);
    }
    let frames: Vec<String> = nodes.iter().map(|_| frame("deploy")).collect();
    let mut pipe = redis::pipe();
    for ((node, _), f) in nodes.iter().zip(&frames) {
        pipe.cmd("PUBLISH")
            .arg(flotilla_shared::channels::node_channel(*node))
            .arg(f)
            .ignore();
    }
    redis.query::<()>(&pipe).await.unwrap();
    for (ws, f) in sockets.iter_mut().zip(&frames) {
        assert_eq!(&next_text(ws).await, f);
    }
    let delivered = |gw: &GatewayHandle| {
        gw.state
            .counters()
            .pushes_delivered
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(delivered(&a) + delivered(&b), N as u64);
}

#[tokio::test]
async fn connects_and_disconnects_are_announced_on_fleet_events() {
    let t = setup(&[]).await;
    let (s, redis) = (t.settings.clone(), t.redis.clone());
    let [(node, token)] = t.nodes::<1>().await;
    let gw = gateway(s).await;
    let client = redis::Client::open(redis_url()).unwrap();
    let mut events = within("pubsub", client.get_async_pubsub()).await.unwrap();
    within("subscribe", events.subscribe(FLEET_EVENTS))
        .await
        .unwrap();
    let mut events = events.into_on_message();
    let mut next_for_node = async || loop {
        let msg = within("a fleet event", events.next()).await.unwrap();
        // The channel is shared with concurrent tests, whose apis announce other kinds of events.
        let Ok(event) = serde_json::from_slice::<PresenceEvent>(msg.get_payload_bytes()) else {
            continue;
        };
        if event.node_id == node {
            return event;
        }
    };

    let (mut ws, _) = gw.connect(&redis, node, &token).await;
    let up = next_for_node().await;
    assert!(up.connected);
    assert_eq!(up.gateway_id, gw.state.id());
    within("client close", ws.close(None)).await.unwrap();
    assert!(!next_for_node().await.connected);
}

#[tokio::test]
async fn bad_tokens_get_401_without_an_upgrade() {
    let t = setup(&[]).await;
    let s = t.settings.clone();
    let [(node, token)] = t.nodes::<1>().await;
    let gw = gateway(s).await;
    let unknown =
        flotilla_shared::auth::tokens::issue(flotilla_shared::auth::tokens::NODE_PREFIX).token;
    let wrong_secret = format!("{}{}", &token[..token.len() - 4], "0000");
    for bad in ["", "garbage", unknown.as_str(), wrong_secret.as_str()] {
        assert_eq!(
            refused_status(gw.try_connect(bad).await),
            401,
            "token {bad:?}"
        );
    }
    // Plain GET without upgrade headers and without a token: 401 too, not 400.
    let plain = within(
        "plain GET",
        reqwest::get(gw.ws_url().replace("ws://", "http://")),
    )
    .await
    .unwrap();
    assert_eq!(plain.status(), 401);
    // A revoked node (row deleted) is refused even though its token was good.
    sqlx::query("DELETE FROM nodes WHERE id = $1")
        .bind(node)
        .execute(&t.db.pool)
        .await
        .unwrap();
    assert_eq!(refused_status(gw.try_connect(&token).await), 401);
}

#[tokio::test]
async fn an_unreachable_database_answers_503() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{closed_port}/none");
    let gw = gateway(settings(&url, &redis_url(), &[])).await;
    let token =
        flotilla_shared::auth::tokens::issue(flotilla_shared::auth::tokens::NODE_PREFIX).token;
    assert_eq!(refused_status(gw.try_connect(&token).await), 503);
    assert_eq!(open_status(gw.try_open(&token).await), 503);
}

#[tokio::test]
async fn the_newest_socket_wins_across_gateways_and_a_late_close_keeps_its_presence() {
    let t = setup(&[]).await;
    let (s, redis) = (t.settings.clone(), t.redis.clone());
    let [(node, token)] = t.nodes::<1>().await;
    let (a, b) = (gateway(s.clone()).await, gateway(s).await);

    let (mut on_a, _) = a.connect(&redis, node, &token).await;
    let (mut on_b, at_b) = b.connect(&redis, node, &token).await;
    assert_eq!(close_code(&mut on_a).await, Some(SUPERSEDED));
    // A's socket is gone, and its close did not erase B's presence.
    eventually("A lets go", Duration::from_secs(2), || async {
        (a.state.connection_count() == 0).then_some(())
    })
    .await;
    assert_eq!(presence_of(&redis, node).await, Some(at_b.clone()));

    // A pushed frame reaches only the newest socket.
    let f = frame("deploy");
    publish(&redis, node, &f).await;
    assert_eq!(next_text(&mut on_b).await, f);

    // On one gateway too: the second socket supersedes the first.
    let (mut again, at_b2) = b.connect(&redis, node, &token).await;
    assert_eq!(close_code(&mut on_b).await, Some(SUPERSEDED));
    assert_ne!(at_b2.conn_id, at_b.conn_id);
    let f = frame("labels");
    publish(&redis, node, &f).await;
    assert_eq!(next_text(&mut again).await, f);
    assert_eq!(presence_of(&redis, node).await, Some(at_b2));
}

#[tokio::test]
async fn revoke_closes_with_4001_and_clears_presence() {
    let t = setup(&[]).await;
    let (s, redis) = (t.settings.clone(), t.redis.clone());
    let [(node, token)] = t.nodes::<1>().await;
    let gw = gateway(s).await;
    let (mut ws, _) = gw.connect(&redis, node, &token).await;
    publish(&redis, node, &ControlMessage::Revoke.to_payload()).await;
    assert_eq!(close_code(&mut ws).await, Some(REVOKED));
    wait_absent(&redis, node, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn sockets_closing_while_presence_is_restored_stay_released() {
    let t = setup(&[]).await;
    let (s, redis) = (t.settings.clone(), t.redis.clone());
    let nodes = t.nodes::<40>().await;
    let gw = gateway(s).await;
    let mut sockets = Vec::new();
    for (node, token) in &nodes {
        sockets.push(gw.connect(&redis, *node, token).await.0);
    }
    // Redis lost its data (the liveness key and the scripts, so each restore takes extra round
    // trips): the next beat restores every held socket's presence while the agents hang up.
    let alive = flotilla_shared::presence::keys(gw.state.redis()).alive(gw.state.id());
    let _: () = redis.query(redis::cmd("DEL").arg(alive)).await.unwrap();
    let _: () = redis
        .query(redis::cmd("SCRIPT").arg("FLUSH"))
        .await
        .unwrap();
    let closes = futures_util::future::join_all(sockets.iter_mut().map(|ws| ws.close(None)));
    let (_, closed) = tokio::join!(
        flotilla_gateway::liveness::beat(&gw.state, 1),
        within("client closes", closes)
    );
    assert!(closed.iter().all(Result::is_ok));
    eventually("sockets released", Duration::from_secs(2), || async {
        (gw.state.connection_count() == 0).then_some(())
    })
    .await;
    for (node, _) in &nodes {
        wait_absent(&redis, *node, Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn a_clean_close_clears_presence_within_a_second() {
    let t = setup(&[]).await;
    let (s, redis) = (t.settings.clone(), t.redis.clone());
    let [(node, token)] = t.nodes::<1>().await;
    let gw = gateway(s).await;
    let (mut ws, _) = gw.connect(&redis, node, &token).await;
    within("client close", ws.close(None)).await.unwrap();
    wait_absent(&redis, node, Duration::from_secs(1)).await;
    eventually("socket released", Duration::from_secs(1), || async {
        (gw.state.connection_count() == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn idle_sockets_get_pings_and_unsolicited_pongs_and_silent_ones_are_dropped() {
    let t = setup(&[("pong_timeout_ms", "1000")]).await;
    let (s, redis) = (t.settings.clone(), t.redis.clone());
    let [(node, token), (silent, silent_token)] = t.nodes::<2>().await;
    let gw = gateway(s).await;

    // An agent that never reads never answers: closed after the pong timeout.
    let (quiet, _) = gw.connect(&redis, silent, &silent_token).await;
    let closed = || async {
        (gw.state
            .counters()
            .closed(Close::KeepaliveTimeout)
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1)
            .then_some(())
    };
    eventually(
        "the silent socket is dropped",
        Duration::from_secs(3),
        closed,
    )
    .await;
    // Read the raw bytes: a WebSocket client would answer the queued pings while reading.
    assert_eq!(raw_close_code(quiet).await, Some(KEEPALIVE_TIMEOUT));
    wait_absent(&redis, silent, Duration::from_secs(1)).await;

    // A reading agent answers pings (tungstenite does) and stays up past the pong timeout.
    let (mut ws, _) = gw.connect(&redis, node, &token).await;
    let (mut pings, mut pongs) = (0, 0);
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        match within("keepalive frames", ws.next()).await {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Pong(_))) => pongs += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 3, "{pings} pings in 1.5 s at a 300 ms interval");
    assert!(
        pongs >= 2,
        "{pongs} unsolicited pongs in 1.5 s at a 200 ms interval"
    );
    // It is still there.
    assert!(presence_of(&redis, node).await.is_some());
}

#[tokio::test]
async fn binary_and_oversized_messages_close_the_socket() {
    let t = setup(&[("max_message_bytes", "1024")]).await;
    let (s, redis) = (t.settings.clone(), t.redis.clone());
    let [(a, ta), (b, tb)] = t.nodes::<2>().await;
    let gw = gateway(s).await;

    let (mut ws, _) = gw.connect(&redis, a, &ta).await;
    within("send", ws.send(Message::Binary(vec![1, 2, 3].into())))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(POLICY));

    let (mut ws, _) = gw.connect(&redis, b, &tb).await;
    within("send", ws.send(Message::text("x".repeat(4096))))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(TOO_LARGE));
}

#[tokio::test]
async fn an_agent_that_does_not_read_is_closed_as_too_slow() {
    let t = setup(&[("outbound_queue", "4")]).await;
    let (s, redis) = (t.settings.clone(), t.redis.clone());
    let [(node, token)] = t.nodes::<1>().await;
    let gw = gateway(s).await;
    let (mut ws, _) = gw.connect(&redis, node, &token).await;

    let big = format!(
        r#"{{"type":"config_changed","reason":"deploy","pad":"{}"}}"#,
        "x".repeat(60_000)
    );
    let slow = || {
        gw.state
            .counters()
            .closed(Close::SlowConsumer)
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // Socket buffers take a few MB first; keep pushing until the queue overflows.
    for _ in 0..2000 {
        if slow() > 0 {
            break;
        }
        publish(&redis, node, &big).await;
    }
    eventually(
        "the slow socket is closed",
        Duration::from_secs(3),
        || async { (slow() == 1).then_some(()) },
    )
    .await;
    // The agent reads what was sent, then the close (when the gateway could still send it).
    if let Some(code) = close_code(&mut ws).await {
        assert_eq!(code, SLOW_CONSUMER);
    }
    wait_absent(&redis, node, Duration::from_secs(3)).await;
}

#[tokio::test]
async fn reconnects_over_the_limit_get_429() {
    let t = setup(&[("reconnect_limit", "2")]).await;
    let s = t.settings.clone();
    let [(_, token)] = t.nodes::<1>().await;
    let gw = gateway(s).await;
    let _first = gw.try_connect(&token).await.unwrap();
    let _second = gw.try_connect(&token).await.unwrap();
    assert_eq!(refused_status(gw.try_connect(&token).await), 429);
}

#[tokio::test]
async fn drain_closes_in_batches_with_1012_and_refuses_new_handshakes() {
    let t = setup(&[
        ("drain_batch", "1"),
        ("drain_pause_ms", "400"),
        ("shutdown_grace_ms", "3000"),
    ])
    .await;
    let (s, redis) = (t.settings.clone(), t.redis.clone());
    let [(a, ta), (b, tb), (_, tc)] = t.nodes::<3>().await;
    let gw = gateway(s).await;
    let (mut wa, _) = gw.connect(&redis, a, &ta).await;
    let (mut wb, _) = gw.connect(&redis, b, &tb).await;

    let started = tokio::time::Instant::now();
    gw.shutdown.cancel();
    // The first batch closes one socket; the second waits for the pause.
    let first = tokio::select! {
        code = close_code(&mut wa) => code,
        code = close_code(&mut wb) => code,
    };
    assert_eq!(first, Some(DRAINING));
    assert_eq!(refused_status(gw.try_connect(&tc).await), 503);
    let health = within(
        "healthz",
        reqwest::get(format!("http://{}/healthz", gw.addr)),
    )
    .await
    .unwrap();
    assert_eq!(health.status(), 503);
    within("gateway exits", gw.task).await.unwrap().unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "batches were paced"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "exited within the grace period"
    );
    wait_absent(&redis, a, Duration::from_secs(1)).await;
    wait_absent(&redis, b, Duration::from_secs(1)).await;
}

/// 200 handshakes at once, then 200 stream opens, more than the gateway authenticates
/// concurrently: every one is answered (upgraded or opened, else 503), none hangs.
#[tokio::test]
async fn two_hundred_simultaneous_handshakes_or_stream_opens_are_all_answered() {
    let setup = setup(&[("max_pending_handshakes", "16")]).await;
    let nodes = nodes(&setup.db.pool, 200).await;
    let gw = gateway(setup.settings.clone()).await;
    let url = gw.ws_url();
    let handshakes = nodes.iter().map(|(_, token)| connect(&url, token));
    let results = within("200 handshakes", futures_util::future::join_all(handshakes)).await;
    let refusals: Vec<u16> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| refused_status(Err(e))))
        .collect();
    assert!(refusals.len() < 200, "some handshakes succeed");
    assert!(refusals.iter().all(|s| *s == 503), "{refusals:?}");

    let opens = nodes.iter().map(|(_, token)| gw.try_open(token));
    let results = within("200 opens", futures_util::future::join_all(opens)).await;
    let refusals: Vec<u16> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| open_status(Err(e))))
        .collect();
    assert!(refusals.len() < 200, "some streams open");
    assert!(refusals.iter().all(|s| *s == 503), "{refusals:?}");
}

/// Text frames that are not what an agent sends (garbage, deeply nested JSON, control
/// characters) never take the gateway down: it keeps serving the socket and others.
#[tokio::test]
async fn garbage_frames_do_not_hurt_the_gateway() {
    let setup = setup(&[]).await;
    let [(node, token), (other_node, other)] = setup.nodes::<2>().await;
    let gw = gateway(setup.settings.clone()).await;
    let (mut ws, _) = gw.connect(&setup.redis, node, &token).await;
    for junk in [
        "",
        "{",
        "null",
        "{\"type\":\"config_changed\"}",
        &"[".repeat(10_000),
        "\u{0}\u{1}",
    ] {
        ws.send(Message::Text(junk.into())).await.unwrap();
    }
    ws.send(Message::Ping(vec![1, 2, 3].into())).await.unwrap();
    let f = frame("deploy");
    publish(&setup.redis, node, &f).await;
    assert_eq!(next_text(&mut ws).await, f);
    let (_ws2, _) = gw.connect(&setup.redis, other_node, &other).await;
}

/// 10,000 bogus tokens (malformed, unknown lookup ids, a real node's lookup id with wrong
/// secrets) are refused with 401 and cost no bcrypt, a real agent connects in the middle of
/// the flood, and only a check that would need bcrypt (a token still stored as a bcrypt hash)
/// is refused once the address is over its failure budget.
#[tokio::test]
async fn ten_thousand_bogus_tokens_cost_no_bcrypt_and_real_agents_still_connect() {
    let setup = setup(&[("auth_failures_per_minute", "20")]).await;
    let [(node, token), (legacy, legacy_token)] = setup.nodes::<2>().await;
    hash_with_bcrypt(&setup.db.pool, legacy, &legacy_token).await;
    let gw = gateway(setup.settings.clone()).await;
    let url = gw.ws_url();
    let count = || {
        gw.state
            .auth_counters()
            .bcrypt_verifications
            .load(std::sync::atomic::Ordering::Relaxed)
    };

    let lookup = &token["vf_node_".len().."vf_node_".len() + 16];
    let bogus: Vec<String> = (0..10_000)
        .map(|i| match i % 3 {
            0 => format!("not-a-token-{i}"),
            1 => {
                flotilla_shared::auth::tokens::issue(flotilla_shared::auth::tokens::NODE_PREFIX)
                    .token
            }
            _ => format!("vf_node_{lookup}_{i:048x}"),
        })
        .collect();
    // The address's failure window opens with the flood's first refusal.
    let flood_started = tokio::time::Instant::now();
    let flood = futures_util::stream::iter(bogus)
        .map(|t| {
            let url = url.clone();
            async move { refused_status(connect(&url, &t).await) }
        })
        .buffer_unordered(32)
        .collect::<Vec<u16>>();
    let real = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        gw.connect(&setup.redis, node, &token).await
    };
    let (statuses, (_ws, _)) = within("the flood", async { tokio::join!(flood, real) }).await;
    assert!(
        statuses.iter().all(|s| *s == 401),
        "every bogus token is refused with 401"
    );
    assert_eq!(count(), 0, "no bogus token cost a bcrypt run");
    // The address is far over its budget: a token that still needs bcrypt is refused from
    // it for now, with the wait, and costs nothing.
    let refused = within("bcrypt-hashed handshake", async {
        let mut request = gw.ws_url().into_client_request().unwrap();
        let bearer = format!("Bearer {legacy_token}").parse().unwrap();
        request.headers_mut().insert("authorization", bearer);
        tokio_tungstenite::connect_async(request).await
    })
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            // The time left in that window, in whole seconds rounded up.
            let wait: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let left = 60 - flood_started.elapsed().as_secs().min(59);
            assert!(
                (left..=60).contains(&wait),
                "Retry-After {wait}, {left} s left"
            );
        }
        other => panic!("expected 429 for {legacy}, got {:?}", other.map(|_| ())),
    }
    assert_eq!(count(), 0);
}

/// Handshakes whose request head never completes are cut off after
/// `gateway.header_read_timeout_ms`, and real agents connect meanwhile.
#[tokio::test]
async fn stalled_handshakes_are_cut_off_and_real_agents_still_connect() {
    use flotilla_testkit::slow_client::send_and_stall;
    let t = setup(&[("header_read_timeout_ms", "300")]).await;
    let [(node, token)] = t.nodes::<1>().await;
    let gw = gateway(t.settings.clone()).await;
    let head = b"GET /api/agent/ws HTTP/1.1\r\nHost: flotilla\r\nUpgrade: websocket\r\n";
    let stalled = futures_util::future::join_all((0..50).map(|_| send_and_stall(gw.addr, head)));
    let real = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        gw.connect(&t.redis, node, &token).await
    };
    let (stalled, (_ws, _)) = tokio::join!(stalled, real);
    for s in &stalled {
        s.assert_cut_off_by(Duration::from_millis(300));
    }
}

/// An SSE stream, byte for byte as current agents read it: the headers, `: connected` first,
/// then each push as `event: <type>` and `data: <the frame>`; control messages never go out.
#[tokio::test]
async fn an_sse_stream_starts_connected_and_carries_each_push_as_one_event() {
    let t = setup(&[]).await;
    let (s, redis) = (t.settings.clone(), t.redis.clone());
    let [(node, token)] = t.nodes::<1>().await;
    let gw = gateway(s).await;
    let (mut sse, me) = gw.open(&redis, node, &token).await;
    assert_eq!(me.transport, Transport::Sse);
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    assert_eq!(sse.headers["cache-control"], "no-cache, no-transform");
    assert_eq!(sse.headers["x-accel-buffering"], "no");
    assert_eq!(
        sse.next_item().await,
        Some(Item::Comment(" connected".into()))
    );

    let deploy = frame("deploy");
    publish(&redis, node, &deploy).await;
    publish(&redis, node, &ControlMessage::Probe { seq: 7 }.to_payload()).await;
    let labels = frame("labels");
    publish(&redis, node, &labels).await;
    for sent in [&deploy, &labels] {
        assert_eq!(
            sse.next_item().await,
            Some(Item::Message {
                kind: Some("config_changed".into()),
                event: Some("config_changed".into()),
                data: sent.clone(),
            })
        );
    }
    let expected = format!(
        ": connected\n\nevent: config_changed\ndata: {deploy}\n\nevent: config_changed\ndata: {labels}\n\n"
    );
    assert_eq!(String::from_utf8_lossy(&sse.raw), expected);
}

/// A stream open is refused exactly as a WebSocket handshake is: 401 for a missing, malformed,
/// unknown, wrong or revoked token, 429 past the reconnect limit; a wrong method gets 405. An
/// `Accept` other than `text/event-stream` is tolerated (agents send none).
#[tokio::test]
async fn sse_refusals_match_the_websocket_handshake() {
    let t = setup(&[("reconnect_limit", "3")]).await;
    let [(node, token), (other, other_token)] = t.nodes::<2>().await;
    let gw = gateway(t.settings.clone()).await;
    let unknown =
        flotilla_shared::auth::tokens::issue(flotilla_shared::auth::tokens::NODE_PREFIX).token;
    let wrong_secret = format!("{}{}", &token[..token.len() - 4], "0000");
    for bad in ["", "garbage", unknown.as_str(), wrong_secret.as_str()] {
        assert_eq!(open_status(gw.try_open(bad).await), 401, "token {bad:?}");
    }
    let http = reqwest::Client::new();
    let bare = within("no Authorization", http.get(gw.push_url()).send()).await;
    assert_eq!(bare.unwrap().status(), 401);
    let post = http.post(gw.push_url()).bearer_auth(&token).send();
    assert_eq!(within("POST", post).await.unwrap().status(), 405);
    let json = http
        .get(gw.push_url())
        .bearer_auth(&other_token)
        .header("accept", "application/json")
        .send();
    let json = within("Accept: application/json", json).await.unwrap();
    assert_eq!(json.status(), 200);
    assert_eq!(json.headers()["content-type"], "text/event-stream");
    drop(json);
    wait_absent(&t.redis, other, Duration::from_secs(1)).await;

    let _streams = [
        gw.open(&t.redis, node, &token).await,
        gw.open(&t.redis, node, &token).await,
        gw.open(&t.redis, node, &token).await,
    ];
    assert_eq!(open_status(gw.try_open(&token).await), 429);
    sqlx::query("DELETE FROM nodes WHERE id = $1")
        .bind(other)
        .execute(&t.db.pool)
        .await
        .unwrap();
    assert_eq!(open_status(gw.try_open(&other_token).await), 401);
}

/// One live channel per node across gateways and transports: an SSE stream supersedes a
/// WebSocket on another gateway and the other way round, the older one ends, and its late
/// cleanup never erases the newer presence.
#[tokio::test]
async fn a_node_switching_transport_supersedes_cleanly_and_presence_follows() {
    let t = setup(&[]).await;
    let (s, redis) = (t.settings.clone(), t.redis.clone());
    let [(node, token)] = t.nodes::<1>().await;
    let (a, b) = (gateway(s.clone()).await, gateway(s).await);

    let (mut ws, _) = a.connect(&redis, node, &token).await;
    let (mut sse, on_b) = b.open(&redis, node, &token).await;
    assert_eq!(on_b.transport, Transport::Sse);
    assert_eq!(close_code(&mut ws).await, Some(SUPERSEDED));
    eventually("A lets go", Duration::from_secs(2), || async {
        (a.state.connection_count() == 0).then_some(())
    })
    .await;
    assert_eq!(presence_of(&redis, node).await, Some(on_b));
    let f = frame("deploy");
    publish(&redis, node, &f).await;
    assert_eq!(sse.next_message().await, f);

    let (mut ws, on_a) = a.connect(&redis, node, &token).await;
    assert_eq!(on_a.transport, Transport::Websocket);
    assert!(
        sse.ends_within(Duration::from_secs(1)).await,
        "the stream ends"
    );
    eventually("B lets go", Duration::from_secs(2), || async {
        (b.state.connection_count() == 0).then_some(())
    })
    .await;
    assert_eq!(presence_of(&redis, node).await, Some(on_a));
    let f = frame("labels");
    publish(&redis, node, &f).await;
    assert_eq!(next_text(&mut ws).await, f);
}

#[tokio::test]
async fn revoke_ends_an_sse_stream_within_a_second_and_clears_presence() {
    let t = setup(&[]).await;
    let [(node, token)] = t.nodes::<1>().await;
    let gw = gateway(t.settings.clone()).await;
    let (mut sse, _) = gw.open(&t.redis, node, &token).await;
    publish(&t.redis, node, &ControlMessage::Revoke.to_payload()).await;
    assert!(
        sse.ends_within(Duration::from_secs(1)).await,
        "the stream ends"
    );
    wait_absent(&t.redis, node, Duration::from_secs(1)).await;
}

/// An idle stream gets its keepalive comment every `gateway.sse_keepalive_ms` and stays up:
/// its agent never sends anything, and silence is no reason to end it.
#[tokio::test]
async fn an_idle_stream_gets_keepalive_comments_and_stays_up() {
    let t = setup(&[
        ("sse_keepalive_ms", "100"),
        ("ping_interval_ms", "100"),
        ("pong_timeout_ms", "300"),
    ])
    .await;
    let [(node, token)] = t.nodes::<1>().await;
    let gw = gateway(t.settings.clone()).await;
    let (mut sse, me) = gw.open(&t.redis, node, &token).await;
    assert_eq!(
        sse.next_item().await,
        Some(Item::Comment(" connected".into()))
    );
    let started = tokio::time::Instant::now();
    for _ in 0..5 {
        assert_eq!(
            sse.next_item().await,
            Some(Item::Comment(" keepalive".into()))
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(presence_of(&t.redis, node).await, Some(me));
    let f = frame("deploy");
    publish(&t.redis, node, &f).await;
    assert_eq!(sse.next_message().await, f);
}

/// A stream whose reader stopped (its kernel buffer full) is closed as too slow, exactly as
/// a WebSocket: the gateway keeps no more than its bounded queue for it.
#[tokio::test]
async fn an_sse_agent_that_does_not_read_is_closed_as_too_slow() {
    let t = setup(&[("outbound_queue", "4")]).await;
    let [(node, token)] = t.nodes::<1>().await;
    let gw = gateway(t.settings.clone()).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = within("connect", socket.connect(gw.addr)).await.unwrap();
    let head = format!(
        "GET /api/agent/push HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut stalled, head.as_bytes())
        .await
        .unwrap();
    eventually("the stream is open", Duration::from_secs(3), || async {
        presence_of(&t.redis, node).await
    })
    .await;
    let big = format!(
        r#"{{"type":"config_changed","reason":"deploy","pad":"{}"}}"#,
        "x".repeat(60_000)
    );
    let slow = || {
        gw.state
            .counters()
            .closed(Close::SlowConsumer)
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    for _ in 0..2000 {
        if slow() > 0 {
            break;
        }
        publish(&t.redis, node, &big).await;
    }
    eventually(
        "the stalled stream is closed",
        Duration::from_secs(3),
        || async { (slow() == 1).then_some(()) },
    )
    .await;
    wait_absent(&t.redis, node, Duration::from_secs(3)).await;
    drop(stalled);
}

/// Drain ends streams like sockets, and a draining gateway refuses new ones with 503.
#[tokio::test]
async fn drain_ends_sse_streams_and_refuses_new_ones() {
    let t = setup(&[("drain_batch", "1"), ("drain_pause_ms", "100")]).await;
    let [(a, ta), (b, tb), (_, tc)] = t.nodes::<3>().await;
    let gw = gateway(t.settings.clone()).await;
    let (mut sse, _) = gw.open(&t.redis, a, &ta).await;
    let (mut ws, _) = gw.connect(&t.redis, b, &tb).await;
    gw.shutdown.cancel();
    assert!(
        sse.ends_within(Duration::from_secs(2)).await,
        "the stream ends"
    );
    assert_eq!(close_code(&mut ws).await, Some(DRAINING));
    assert_eq!(open_status(gw.try_open(&tc).await), 503);
    within("gateway exits", gw.task).await.unwrap().unwrap();
    wait_absent(&t.redis, a, Duration::from_secs(1)).await;
}

/// A stream requested on a kept-alive connection (after another request on it) is served
/// through the router, byte for byte like one opened on a fresh connection.
#[tokio::test]
async fn a_stream_opened_on_a_kept_alive_connection_is_served_the_same() {
    let t = setup(&[]).await;
    let [(node, token)] = t.nodes::<1>().await;
    let gw = gateway(t.settings.clone()).await;
    let http = reqwest::Client::new();
    let health = within(
        "healthz",
        http.get(format!("http://{}/healthz", gw.addr)).send(),
    )
    .await;
    assert_eq!(health.unwrap().status(), 200);
    let opened = http.get(gw.push_url()).bearer_auth(&token).send();
    let mut response = within("the stream", opened).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    let me = eventually("presence", Duration::from_secs(3), || async {
        presence_of(&t.redis, node).await
    })
    .await;
    assert_eq!(me.transport, Transport::Sse);
    let f = frame("deploy");
    publish(&t.redis, node, &f).await;
    let mut got = Vec::new();
    let expected = format!(": connected\n\nevent: config_changed\ndata: {f}\n\n");
    while got.len() < expected.len() {
        let chunk = within("a chunk", response.chunk()).await.unwrap().unwrap();
        got.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8_lossy(&got), expected);
}

/// Requests the gateway reads itself (a connection's first request starting
/// `GET /api/agent/push`) get clear answers when they are not a stream open.
#[tokio::test]
async fn odd_stream_requests_get_clear_answers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = setup(&[]).await;
    let [(_, token)] = t.nodes::<1>().await;
    let gw = gateway(t.settings.clone()).await;
    let ask = |request: String| async move {
        let mut tcp = within("connect", tokio::net::TcpStream::connect(gw.addr))
            .await
            .unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 64];
        let n = within("an answer", tcp.read(&mut answer)).await.unwrap();
        String::from_utf8_lossy(&answer[..n]).into_owned()
    };
    let status = |answer: &str| answer.split(' ').nth(1).unwrap_or("").to_owned();
    let auth = format!("Authorization: Bearer {token}\r\n");
    let other_path = ask(format!("GET /api/agent/pushes HTTP/1.1\r\n{auth}\r\n")).await;
    assert_eq!(status(&other_path), "404");
    let garbage = ask("GET /api/agent/push \u{1}\u{2}\r\n\r\n".to_owned()).await;
    assert_eq!(status(&garbage), "400");
    let huge = format!(
        "GET /api/agent/push HTTP/1.1\r\nX: {}\r\n",
        "a".repeat(20_000)
    );
    assert_eq!(status(&ask(huge).await), "431");
    let no_token = ask("GET /api/agent/push HTTP/1.1\r\nHost: gw\r\n\r\n".to_owned()).await;
    assert_eq!(status(&no_token), "401");
    let with_query = ask(format!(
        "GET /api/agent/push?since=1 HTTP/1.1\r\n{auth}\r\n"
    ))
    .await;
    assert!(
        with_query.starts_with("HTTP/1.1 200 OK\r\n"),
        "{with_query}"
    );
}
