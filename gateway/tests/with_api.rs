//! The gateway with the real api: what an operator does reaches the agent's socket.

mod common;

use common::*;
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

    let pipeline = api
        .create_pipeline(&env_id, "p", "sources: {}\n", json!({}))
        .await;
    let deployed = api.deploy(&pipeline).await;
    assert_eq!(deployed.status, 200, "{}", deployed.text);
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

#[tokio::test]
async fn a_token_the_api_verified_and_every_reconnect_skip_bcrypt_in_the_gateway() {
    let db = db::fresh().await;
    let s = settings(&db.url, &redis_url(), &[]);
    let redis = redis(&s);
    let api = api::spawn(s.clone()).await;
    let gw = gateway(s).await;
    let (_, enroll) = api.create_environment("prod").await;
    let (node, token) = api.enroll(&enroll, "h1").await;
    // The agent polls first; the api bcrypt-verifies its token and shares that through Redis.
    assert_eq!(api.agent_config(&token).await.status, 200);

    let node: Uuid = node.parse().unwrap();
    let counters = gw.state.auth_counters();
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..3 {
        let (mut ws, _) = gw.connect(&redis, node, &token).await;
        ws.close(None).await.unwrap();
        wait_absent(&redis, node, Duration::from_secs(1)).await;
    }
    assert_eq!(count(&counters.bcrypt_verifications), 0);
    assert_eq!(count(&counters.shared_hits), 1);
    assert_eq!(count(&counters.warm_hits), 2);
}

/// A deploy through the api reaches agents on either of two gateways, verbatim, within 50 ms
/// of the call.
#[tokio::test]
async fn a_deploy_reaches_agents_on_both_gateways_within_50_ms() {
    let db = db::fresh().await;
    let s = settings(&db.url, &redis_url(), &[]);
    let redis = redis(&s);
    let api = api::spawn(s.clone()).await;
    let gw1 = gateway(s.clone()).await;
    let gw2 = gateway(s).await;
    let (env_id, enroll) = api.create_environment("prod").await;
    let (a, a_token) = api.enroll(&enroll, "a").await;
    let (b, b_token) = api.enroll(&enroll, "b").await;
    let (mut ws_a, _) = gw1.connect(&redis, a.parse().unwrap(), &a_token).await;
    let (mut ws_b, _) = gw2.connect(&redis, b.parse().unwrap(), &b_token).await;
    let pipeline = api
        .create_pipeline(&env_id, "p", "sources: {}\n", json!({}))
        .await;

    let called = std::time::Instant::now();
    let deployed = api.deploy(&pipeline).await;
    assert_eq!(deployed.body["notifiedNodes"], 2, "{}", deployed.text);
    let (fa, fb) = tokio::join!(next_text(&mut ws_a), next_text(&mut ws_b));
    let elapsed = called.elapsed();
    for f in [&fa, &fb] {
        let v: Value = serde_json::from_str(f).unwrap();
        assert_eq!(v["type"], "config_changed");
        assert_eq!(v["pipelineId"], pipeline.as_str());
    }
    assert_ne!(fa, fb, "each frame has its own id");
    assert!(
        elapsed < Duration::from_millis(50),
        "deploy call to receipt on both gateways: {elapsed:?}"
    );
}
