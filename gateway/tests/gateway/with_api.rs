//! The gateway with the real api: what an operator does reaches the agent's socket.

use crate::common::*;
use flotilla_shared::auth::tokens;
use flotilla_shared::close_codes::REVOKED;
use flotilla_testkit::{api, db, eventually, redis_url};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

#[tokio::test]
async fn deploys_reach_the_socket_presence_shows_in_the_fleet_and_revoke_closes_it() {
    let db = db::fresh().await;
    let s = settings(&db.url, &redis_url(), &[]);
    let redis = redis(&s);
    let api = api::spawn(s.clone()).await;
    let gw = gateway(s).await;
    let (env_id, enroll) = api.create_environment("prod").await;
    let (node, token) = api.enroll(&enroll, "h1").await;
    let (other, other_token) = api.enroll(&enroll, "h2").await;
    let node_id: Uuid = node.parse().unwrap();
    let (mut ws, at) = gw.connect(&redis, node_id, &token).await;

    let shown = api
        .admin(Method::GET, &format!("/api/v1/fleet/{node}"), None)
        .await;
    assert_eq!(shown.body["wsConnected"], true, "{}", shown.text);
    assert_eq!(shown.body["gatewayId"], gw.state.id(), "{}", shown.text);
    assert_eq!(at.gateway_id, gw.state.id());

    let pipeline = api.deploy_everywhere(&env_id).await;
    let pushed: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(pushed["type"], "config_changed");
    assert_eq!(pushed["reason"], "deploy");
    assert_eq!(pushed["pipelineId"], pipeline.as_str());
    assert!(
        pushed["sentAt"].is_i64() && pushed["id"].is_string(),
        "{pushed}"
    );

    // A clean close shows as disconnected within a second.
    let (mut other_ws, _) = gw
        .connect(&redis, other.parse().unwrap(), &other_token)
        .await;
    other_ws.close(None).await.unwrap();
    eventually("wsConnected false", Duration::from_secs(1), || async {
        let r = api
            .admin(Method::GET, &format!("/api/v1/fleet/{other}"), None)
            .await;
        (r.body["wsConnected"] == false).then_some(())
    })
    .await;

    let revoking = std::time::Instant::now();
    let revoked = api
        .admin(Method::DELETE, &format!("/api/v1/fleet/{node}"), None)
        .await;
    assert!(revoked.status.is_success(), "{}", revoked.text);
    assert_eq!(close_code(&mut ws).await, Some(REVOKED));
    let took = revoking.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "revoke closed the socket after {took:?}"
    );
    assert_eq!(refused_status(gw.try_connect(&token).await), 401);
}

/// A node token is checked by its digest: no bcrypt in a cold gateway, a warm one, or the
/// api.
#[tokio::test]
async fn node_tokens_cost_no_bcrypt_in_cold_and_warm_gateways_and_the_api() {
    let db = db::fresh().await;
    let s = settings(&db.url, &redis_url(), &[]);
    let redis = redis(&s);
    let api = api::spawn(s.clone()).await;
    let (_, enroll) = api.create_environment("prod").await;
    let (node, token) = api.enroll(&enroll, "h1").await;
    let node: Uuid = node.parse().unwrap();
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..2 {
        // A fresh gateway each time: nothing warm in the process.
        let gw = gateway(s.clone()).await;
        for _ in 0..2 {
            let (mut ws, _) = gw.connect(&redis, node, &token).await;
            ws.close(None).await.unwrap();
            wait_absent(&redis, node, Duration::from_secs(1)).await;
        }
        assert_eq!(count(&gw.state.auth_counters().bcrypt_verifications), 0);
    }
    assert_eq!(api.agent_config(&token).await.status, 200);
    let beat = api
        .call(
            Method::POST,
            "/api/agent/heartbeat",
            Some(&token),
            Some(json!({"pipelines": []})),
        )
        .await;
    assert_eq!(beat.status, 200, "{}", beat.text);
    assert_eq!(
        count(&api.state.node_auth.counters().bcrypt_verifications),
        0
    );
}

/// A token stored as a bcrypt hash (enrolled before digests) is bcrypt-verified once, by
/// whichever service sees it first; its digest replaces the hash, and from then on neither
/// the gateway nor the api runs bcrypt for it.
#[tokio::test]
async fn a_bcrypt_hashed_node_token_is_verified_once_and_rewritten_to_its_digest() {
    let db = db::fresh().await;
    let s = settings(&db.url, &redis_url(), &[]);
    let redis = redis(&s);
    let api = api::spawn(s.clone()).await;
    let gw = gateway(s).await;
    let [(node, token)] = nodes(&db.pool, 1).await.try_into().unwrap();
    hash_with_bcrypt(&db.pool, node, &token).await;
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let gw_auth = gw.state.auth_counters();

    let (mut ws, _) = gw.connect(&redis, node, &token).await;
    assert_eq!(count(&gw_auth.bcrypt_verifications), 1);
    assert_eq!(count(&gw_auth.digests_adopted), 1);
    let (digest, hash): (Option<Vec<u8>>, Option<String>) =
        sqlx::query_as("SELECT token_digest, token_hash FROM nodes WHERE id = $1")
            .bind(node)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(digest.as_deref(), Some(&tokens::node_digest(&token)[..]));
    assert_eq!(hash, None, "the bcrypt hash is gone");

    ws.close(None).await.unwrap();
    wait_absent(&redis, node, Duration::from_secs(1)).await;
    let (_ws, _) = gw.connect(&redis, node, &token).await;
    assert_eq!(api.agent_config(&token).await.status, 200);
    assert_eq!(count(&gw_auth.bcrypt_verifications), 1);
    assert_eq!(
        count(&api.state.node_auth.counters().bcrypt_verifications),
        0
    );
}

/// A deploy through the api reaches a mixed fleet, WebSocket and SSE agents on either of two
/// gateways, within 50 ms of the call; the fleet API says which transport each uses, and the
/// config hands out both URLs.
#[tokio::test]
async fn a_deploy_reaches_websocket_and_sse_agents_on_both_gateways_within_50_ms() {
    let db = db::fresh().await;
    let s = settings(&db.url, &redis_url(), &[]);
    let redis = redis(&s);
    let api = api::spawn(s.clone()).await;
    let gw1 = gateway(s.clone()).await;
    let gw2 = gateway(s.clone()).await;
    let (env_id, enroll) = api.create_environment("prod").await;
    let mut ws = Vec::new();
    let mut sse = Vec::new();
    for (i, gw) in [&gw1, &gw2, &gw1, &gw2].into_iter().enumerate() {
        let (node, token) = api.enroll(&enroll, &format!("n{i}")).await;
        let node: Uuid = node.parse().unwrap();
        if i < 2 {
            ws.push(gw.connect(&redis, node, &token).await.0);
        } else {
            sse.push(gw.open(&redis, node, &token).await.0);
            let config = api.agent_config(&token).await;
            assert_eq!(config.body["pushUrl"], s.api.public_push_url);
            assert_eq!(config.body["websocketUrl"], s.api.public_ws_url);
        }
    }
    let fleet = api.admin(Method::GET, "/api/v1/fleet", None).await;
    let transports: Vec<&str> = fleet.body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["pushTransport"].as_str().unwrap())
        .collect();
    assert_eq!(
        transports,
        ["websocket", "websocket", "sse", "sse"],
        "{}",
        fleet.text
    );
    let pipeline = api
        .create_pipeline(
            &env_id,
            "p",
            &flotilla_testkit::vector_config("base"),
            json!({}),
        )
        .await;

    let called = std::time::Instant::now();
    let deployed = api.deploy(&pipeline).await;
    assert_eq!(deployed.body["notifiedNodes"], 4, "{}", deployed.text);
    let over_ws = futures_util::future::join_all(ws.iter_mut().map(next_text));
    let over_sse = futures_util::future::join_all(sse.iter_mut().map(|s| s.next_message()));
    let (over_ws, over_sse) = tokio::join!(over_ws, over_sse);
    let elapsed = called.elapsed();
    let frames: Vec<String> = over_ws.into_iter().chain(over_sse).collect();
    for f in &frames {
        let v: Value = serde_json::from_str(f).unwrap();
        assert_eq!(v["type"], "config_changed");
        assert_eq!(v["pipelineId"], pipeline.as_str());
    }
    let ids: std::collections::BTreeSet<&str> = frames.iter().map(String::as_str).collect();
    assert_eq!(ids.len(), 4, "each frame has its own id");
    assert!(
        elapsed < Duration::from_millis(50),
        "deploy call to receipt by all four: {elapsed:?}"
    );
}
