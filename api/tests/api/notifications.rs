//! Every change an agent must see is published to the right nodes' Redis channels, with the
//! exact frame; a Redis outage never fails the operator's request.

use crate::common;

use flotilla_testkit::listen;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(150);

fn assert_frame(frame: &Value, expected: Value) {
    let mut f = frame.clone();
    let obj = f.as_object_mut().unwrap();
    assert!(
        obj.remove("id").unwrap().as_str().unwrap().len() >= 16,
        "{frame}"
    );
    let sent = obj.remove("sentAt").unwrap().as_i64().unwrap();
    assert!(
        (chrono_now() - sent).abs() < 60_000,
        "sentAt is epoch ms: {frame}"
    );
    assert_eq!(f, expected);
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn nodes_of(msgs: &[(String, Value)]) -> BTreeSet<String> {
    msgs.iter().map(|(n, _)| n.clone()).collect()
}

#[tokio::test]
async fn pipeline_changes_reach_nodes_matching_the_selector_before_and_after() {
    let (_db, api) = common::start().await;
    let (env_id, enroll) = api.create_environment("prod").await;
    let (web, _) = api.enroll(&enroll, "web").await;
    let (db_node, _) = api.enroll(&enroll, "db").await;
    let (_, other_enroll) = api.create_environment("other").await;
    let (stranger, _) = api.enroll(&other_enroll, "x").await;
    api.admin(
        Method::PUT,
        &format!("/api/v1/fleet/{web}/labels"),
        Some(json!({"labels": {"role": "web"}})),
    )
    .await;
    api.admin(
        Method::PUT,
        &format!("/api/v1/fleet/{db_node}/labels"),
        Some(json!({"labels": {"role": "db"}})),
    )
    .await;

    let mut rx =
        listen::node_channels(&flotilla_testkit::redis_url(), &[&web, &db_node, &stranger]).await;
    let p = api
        .create_pipeline(
            &env_id,
            "p",
            &flotilla_testkit::vector_config("a1"),
            json!({"role": "web"}),
        )
        .await;
    rx.assert_quiet(QUIET).await; // creating a version changes nothing an agent runs

    let r = api.deploy(&p).await;
    assert_eq!(r.body["notifiedNodes"], 1);
    let (node, frame) = rx.next().await;
    assert_eq!(node, web);
    assert_frame(
        &frame,
        json!({"type": "config_changed", "pipelineId": p, "reason": "deploy"}),
    );
    rx.assert_quiet(QUIET).await;

    // Version 2 moves the pipeline to the db nodes: both the old and the new nodes hear.
    api.update_pipeline(
        &p,
        json!({"configYaml": flotilla_testkit::vector_config("a2"), "nodeSelector": {"role": "db"}}),
    )
    .await;
    api.deploy(&p).await;
    let msgs = rx.take(2).await;
    assert_eq!(
        nodes_of(&msgs),
        BTreeSet::from([web.clone(), db_node.clone()])
    );
    rx.assert_quiet(QUIET).await;

    // Rolling back to version 1 moves it back: again both.
    api.admin(
        Method::POST,
        &format!("/api/v1/pipelines/{p}/rollback"),
        Some(json!({"version": 1})),
    )
    .await;
    let msgs = rx.take(2).await;
    assert_eq!(
        nodes_of(&msgs),
        BTreeSet::from([web.clone(), db_node.clone()])
    );
    assert_frame(
        &msgs[0].1,
        json!({"type": "config_changed", "pipelineId": p, "reason": "rollback"}),
    );

    rx.assert_quiet(QUIET).await;
    api.admin(
        Method::POST,
        &format!("/api/v1/pipelines/{p}/undeploy"),
        None,
    )
    .await;
    let (node, frame) = rx.next().await;
    assert_eq!(node, web);
    assert_frame(
        &frame,
        json!({"type": "config_changed", "pipelineId": p, "reason": "undeploy"}),
    );

    // Deploying the latest version (2) again targets the db node; deleting then tells it.
    api.deploy(&p).await;
    assert_eq!(rx.next().await.0, db_node);
    api.admin(Method::DELETE, &format!("/api/v1/pipelines/{p}"), None)
        .await;
    let (node, frame) = rx.next().await;
    assert_eq!(node, db_node);
    assert_frame(
        &frame,
        json!({"type": "config_changed", "pipelineId": p, "reason": "delete"}),
    );
    rx.assert_quiet(QUIET).await;
}

#[tokio::test]
async fn node_changes_actions_samples_settings_and_revocation_publish() {
    let (_db, api) = common::start().await;
    let (env_id, enroll) = api.create_environment("prod").await;
    let (a, a_token) = api.enroll(&enroll, "a").await;
    let (b, _) = api.enroll(&enroll, "b").await;
    let mut rx = listen::node_channels(&flotilla_testkit::redis_url(), &[&a, &b]).await;

    api.admin(
        Method::PUT,
        &format!("/api/v1/fleet/{a}/labels"),
        Some(json!({"labels": {"x": "y"}})),
    )
    .await;
    let (node, frame) = rx.next().await;
    assert_eq!(node, a);
    assert_frame(
        &frame,
        json!({"type": "config_changed", "reason": "labels"}),
    );

    api.admin(
        Method::POST,
        &format!("/api/v1/fleet/{a}/maintenance"),
        Some(json!({"enabled": true})),
    )
    .await;
    assert_frame(
        &rx.next().await.1,
        json!({"type": "config_changed", "reason": "maintenance_on"}),
    );
    api.admin(
        Method::POST,
        &format!("/api/v1/fleet/{a}/maintenance"),
        Some(json!({"enabled": false})),
    )
    .await;
    assert_frame(
        &rx.next().await.1,
        json!({"type": "config_changed", "reason": "maintenance_off"}),
    );

    let sum = "b".repeat(64);
    api.admin(
        Method::POST,
        &format!("/api/v1/fleet/{a}/actions"),
        Some(json!({"type": "self_update", "targetVersion": "2.0.0", "downloadUrl": "https://dl/agent", "checksum": sum})),
    )
    .await;
    assert_frame(
        &rx.next().await.1,
        json!({"type": "action", "action": "self_update", "targetVersion": "2.0.0", "downloadUrl": "https://dl/agent", "checksum": sum}),
    );
    api.admin(
        Method::POST,
        &format!("/api/v1/fleet/{b}/actions"),
        Some(json!({"type": "restart"})),
    )
    .await;
    let (node, frame) = rx.next().await;
    assert_eq!(node, b);
    assert_frame(&frame, json!({"type": "action", "action": "restart"}));

    // Sample requests go to nodes reporting the pipeline RUNNING only.
    let p = api
        .create_pipeline(
            &env_id,
            "p",
            &flotilla_testkit::vector_config("a1"),
            json!({}),
        )
        .await;
    api.deploy(&p).await;
    rx.take(2).await;
    api.call(
        Method::POST,
        "/api/agent/heartbeat",
        Some(&a_token),
        Some(json!({"pipelines": [{"pipelineId": p, "version": 1, "status": "RUNNING"}]})),
    )
    .await;
    let r = api
        .admin(
            Method::POST,
            &format!("/api/v1/pipelines/{p}/samples"),
            Some(json!({"componentKeys": ["in"], "limit": 3})),
        )
        .await;
    let request_id = r.body["requestId"].as_str().unwrap();
    let (node, frame) = rx.next().await;
    assert_eq!(node, a);
    assert_frame(
        &frame,
        json!({"type": "sample_request", "requestId": request_id, "pipelineId": p, "componentKeys": ["in"], "limit": 3}),
    );
    rx.assert_quiet(QUIET).await;

    api.admin(
        Method::PUT,
        "/api/v1/settings",
        Some(json!({"pollIntervalMs": 7000})),
    )
    .await;
    let msgs = rx.take(2).await;
    assert_eq!(nodes_of(&msgs), BTreeSet::from([a.clone(), b.clone()]));
    assert_frame(
        &msgs[0].1,
        json!({"type": "poll_interval", "intervalMs": 7000}),
    );

    api.admin(Method::DELETE, &format!("/api/v1/fleet/{b}"), None)
        .await;
    let (node, frame) = rx.next().await;
    assert_eq!(node, b);
    assert_eq!(frame, json!({"ctl": "revoke"}));
    rx.assert_quiet(QUIET).await;
}

#[tokio::test]
async fn operator_requests_succeed_while_redis_is_down() {
    let (_db, api) = common::start_with(|s| {
        s.redis.url = flotilla_shared::secret::Secret::new("redis://127.0.0.1:1")
    })
    .await;
    let (env_id, enroll) = api.create_environment("prod").await;
    let (node, token) = api.enroll(&enroll, "h").await;
    let p = api
        .create_pipeline(
            &env_id,
            "p",
            &flotilla_testkit::vector_config("a1"),
            json!({}),
        )
        .await;
    let r = api.deploy(&p).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!({"deployedVersion": 1, "notifiedNodes": 0}));
    let r = api
        .admin(
            Method::POST,
            &format!("/api/v1/fleet/{node}/actions"),
            Some(json!({"type": "restart"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = api.admin(Method::GET, "/api/v1/fleet", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["nodes"][0]["wsConnected"], false);
    // The agent still converges by polling.
    assert_eq!(
        api.agent_config(&token).await.body["pipelines"][0]["pipelineId"],
        p.as_str()
    );
    let failed = api
        .state
        .notifier
        .counters()
        .failed
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(failed >= 2, "failures are counted: {failed}");
}
