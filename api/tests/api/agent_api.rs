//! The agent HTTP API against a real Postgres and Redis.

use crate::common;

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::sync::atomic::Ordering;

#[tokio::test]
async fn enroll_returns_a_node_token_once_and_stores_only_its_digest() {
    let (db, api) = common::start().await;
    let (env_id, enroll_token) = api.create_environment("prod").await;
    let r = api
        .call(
            Method::POST,
            "/api/agent/enroll",
            None,
            Some(json!({"token": enroll_token, "hostname": "web-1", "os": "linux", "agentVersion": "1.0.0",
                        "vectorVersion": "0.40.0", "somethingNew": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let token = r.body["nodeToken"].as_str().unwrap();
    assert!(token.starts_with("vf_node_"));
    assert_eq!(r.body["environmentId"], env_id.as_str());
    assert_eq!(r.body["environmentName"], "prod");
    let stored: Vec<(String, Vec<u8>, Option<String>)> =
        sqlx::query_as("SELECT token_lookup, token_digest, token_hash FROM nodes")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 1);
    let (lookup, digest, hash) = &stored[0];
    assert_eq!(
        digest.as_slice(),
        flotilla_shared::auth::tokens::node_digest(token),
        "the token's SHA-256 is stored"
    );
    assert_eq!(*hash, None, "no bcrypt hash for a node token");
    assert!(
        token.contains(lookup.as_str()),
        "lookup id embedded in token"
    );
    assert_eq!(api.agent_config(token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn enroll_rejects_bad_tokens_and_bad_bodies_with_the_documented_shapes() {
    let (_db, api) = common::start().await;
    let (_, enroll_token) = api.create_environment("prod").await;
    let wrong_secret = format!("{}{}", &enroll_token[..enroll_token.len() - 4], "0000");
    for token in ["", "nope", "vf_enroll_x", wrong_secret.as_str()] {
        let r = api
            .call(
                Method::POST,
                "/api/agent/enroll",
                None,
                Some(json!({"token": token, "hostname": "h"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{token}");
        assert_eq!(r.body, json!({"error": "Invalid enrollment token"}));
    }
    let r = api
        .raw(Method::POST, "/api/agent/enroll", None, "{not json")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body["error"].is_string() && r.body["details"].is_object(),
        "{}",
        r.text
    );
    let r = api
        .raw(Method::POST, "/api/agent/enroll", None, r#"{"token":"x"}"#)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.body["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("hostname"),
        "{}",
        r.text
    );
    let r = api
        .call(
            Method::POST,
            "/api/agent/enroll",
            None,
            Some(json!({"token": enroll_token, "hostname": "  "})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["details"]["path"], "hostname");
}

#[tokio::test]
async fn agent_endpoints_reject_missing_wrong_and_revoked_tokens() {
    let (_db, api) = common::start().await;
    let (_, enroll_token) = api.create_environment("prod").await;
    let (node_id, token) = api.enroll(&enroll_token, "h1").await;
    let wrong = format!("{}{}", &token[..token.len() - 4], "ffff");
    for t in [
        None,
        Some("garbage"),
        Some(wrong.as_str()),
        Some(enroll_token.as_str()),
    ] {
        let r = api.call(Method::GET, "/api/agent/config", t, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{t:?}");
        assert!(r.body["error"].is_string());
    }
    assert_eq!(api.agent_config(&token).await.status, StatusCode::OK);
    let r = api
        .admin(Method::DELETE, &format!("/api/v1/fleet/{node_id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // The very next request fails, although the token is warm in the cache.
    assert_eq!(
        api.agent_config(&token).await.status,
        StatusCode::UNAUTHORIZED
    );
    // A heartbeat, well-formed or not, from the revoked (still cached) token: 401.
    for body in [json!({"pipelines": []}), json!({"pipelines": "nope"})] {
        let r = api
            .call(
                Method::POST,
                "/api/agent/heartbeat",
                Some(&token),
                Some(body),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    }
}

/// Node tokens are checked by their digest: no bcrypt on any request, in this api or a fresh
/// one (nothing warm), and a digest replaced under the same lookup id refuses the old token
/// on the very next request.
#[tokio::test]
async fn node_tokens_cost_no_bcrypt_and_a_replaced_digest_is_rejected_at_once() {
    let (db, api) = common::start().await;
    let (_, enroll_token) = api.create_environment("prod").await;
    let (node_id, token) = api.enroll(&enroll_token, "h1").await;
    let fresh = flotilla_testkit::api::spawn(api.state.settings.as_ref().clone()).await;
    for api in [&api, &fresh] {
        for _ in 0..10 {
            assert_eq!(api.agent_config(&token).await.status, StatusCode::OK);
            let beat = api
                .call(
                    Method::POST,
                    "/api/agent/heartbeat",
                    Some(&token),
                    Some(json!({"pipelines": []})),
                )
                .await;
            assert_eq!(beat.status, StatusCode::OK, "{}", beat.text);
        }
        let bcrypt = &api.state.node_auth.counters().bcrypt_verifications;
        assert_eq!(bcrypt.load(Ordering::SeqCst), 0, "no bcrypt run");
    }

    let issued = flotilla_shared::auth::tokens::issue(flotilla_shared::auth::tokens::NODE_PREFIX);
    sqlx::query("UPDATE nodes SET token_digest = $2, token_lookup = $3 WHERE id = $1::uuid")
        .bind(&node_id)
        .bind(flotilla_shared::auth::tokens::node_digest(&issued.token).as_slice())
        .bind(&issued.lookup)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        api.agent_config(&token).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(api.agent_config(&issued.token).await.status, StatusCode::OK);
}

/// A heartbeat is checked by its own write (the row must carry the token's digest): after the
/// digest changes under the same lookup id, nothing is written.
#[tokio::test]
async fn a_heartbeat_writes_nothing_once_the_digest_changed() {
    let (db, api) = common::start().await;
    let (_, enroll_token) = api.create_environment("prod").await;
    let (node_id, token) = api.enroll(&enroll_token, "h1").await;
    let beat = |version: &str| {
        api.call(
            Method::POST,
            "/api/agent/heartbeat",
            Some(&token),
            Some(json!({"agentVersion": version, "pipelines": []})),
        )
    };
    assert_eq!(beat("1.0.1").await.status, StatusCode::OK);

    let other = flotilla_shared::auth::tokens::issue(flotilla_shared::auth::tokens::NODE_PREFIX);
    sqlx::query("UPDATE nodes SET token_digest = $2 WHERE id = $1::uuid")
        .bind(&node_id)
        .bind(flotilla_shared::auth::tokens::node_digest(&other.token).as_slice())
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(beat("6.6.6").await.status, StatusCode::UNAUTHORIZED);
    let version: Option<String> =
        sqlx::query_scalar("SELECT agent_version FROM nodes WHERE id = $1::uuid")
            .bind(&node_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(version.as_deref(), Some("1.0.1"));
}

/// A node enrolled before digests were stored keeps its bcrypt hash until its token next
/// verifies: its first heartbeat runs bcrypt once, is written, and the digest replaces the
/// hash; later polls and heartbeats run none. A wrong secret for such a row is refused and
/// replaces nothing.
#[tokio::test]
async fn a_bcrypt_hashed_node_token_works_once_then_is_checked_by_its_digest() {
    let (db, api) = common::start().await;
    let (_, enroll_token) = api.create_environment("prod").await;
    let (node_id, token) = api.enroll(&enroll_token, "h1").await;
    let secret = token.rsplit('_').next().unwrap().to_owned();
    let hash = flotilla_shared::auth::tokens::hash_secret(secret, 4)
        .await
        .unwrap();
    sqlx::query("UPDATE nodes SET token_hash = $2, token_digest = NULL WHERE id = $1::uuid")
        .bind(&node_id)
        .bind(&hash)
        .execute(&db.pool)
        .await
        .unwrap();
    let counters = api.state.node_auth.counters().clone();
    let bcrypt = || counters.bcrypt_verifications.load(Ordering::SeqCst);
    let beat = |token: String, version: &'static str| {
        let api = &api;
        async move {
            api.call(
                Method::POST,
                "/api/agent/heartbeat",
                Some(&token),
                Some(json!({"agentVersion": version, "pipelines": []})),
            )
            .await
        }
    };

    let wrong = format!("{}{}", &token[..token.len() - 4], "0000");
    assert_eq!(beat(wrong, "6.6.6").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(bcrypt(), 1);
    let still: Option<String> =
        sqlx::query_scalar("SELECT token_hash FROM nodes WHERE id = $1::uuid")
            .bind(&node_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        still.as_deref(),
        Some(hash.as_str()),
        "a wrong secret replaces nothing"
    );

    let r = beat(token.clone(), "2.0.0").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(bcrypt(), 2);
    assert_eq!(counters.digests_adopted.load(Ordering::SeqCst), 1);
    let (digest, hash, version): (Option<Vec<u8>>, Option<String>, Option<String>) =
        sqlx::query_as(
            "SELECT token_digest, token_hash, agent_version FROM nodes WHERE id = $1::uuid",
        )
        .bind(&node_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        digest.as_deref(),
        Some(&flotilla_shared::auth::tokens::node_digest(&token)[..])
    );
    assert_eq!(hash, None);
    assert_eq!(
        version.as_deref(),
        Some("2.0.0"),
        "the heartbeat was written"
    );

    for _ in 0..5 {
        assert_eq!(api.agent_config(&token).await.status, StatusCode::OK);
        assert_eq!(beat(token.clone(), "2.0.0").await.status, StatusCode::OK);
    }
    assert_eq!(bcrypt(), 2, "checked by its digest from then on");
}

#[tokio::test]
async fn a_rotated_enrollment_token_is_rejected_immediately() {
    let (_db, api) = common::start().await;
    let (env_id, old) = api.create_environment("prod").await;
    api.enroll(&old, "h1").await;
    let r = api
        .admin(
            Method::POST,
            &format!("/api/v1/environments/{env_id}/enrollment-token"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let new = r.body["enrollmentToken"].as_str().unwrap().to_owned();
    let r = api
        .call(
            Method::POST,
            "/api/agent/enroll",
            None,
            Some(json!({"token": old, "hostname": "h2"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    api.enroll(&new, "h2").await;
}

#[tokio::test]
async fn config_serves_deployed_matching_pipelines_with_checksums() {
    let (_db, api) = common::start().await;
    let (env_id, enroll_token) = api.create_environment("prod").await;
    let (web_id, web) = api.enroll(&enroll_token, "web").await;
    let (_, db_node) = api.enroll(&enroll_token, "db").await;
    api.set_labels(&web_id, json!({"role": "web"})).await;

    let everywhere = api
        .create_pipeline(
            &env_id,
            "all",
            &flotilla_testkit::vector_config("base"),
            json!({}),
        )
        .await;
    let web_only = api
        .create_pipeline(
            &env_id,
            "web",
            &flotilla_testkit::vector_config("web"),
            json!({"role": "web"}),
        )
        .await;
    let _undeployed = api
        .create_pipeline(
            &env_id,
            "draft",
            &flotilla_testkit::vector_config("draft"),
            json!({}),
        )
        .await;
    assert_eq!(api.deploy(&everywhere).await.status, StatusCode::OK);
    assert_eq!(api.deploy(&web_only).await.status, StatusCode::OK);

    let c = api.agent_config(&web).await;
    assert_eq!(c.status, StatusCode::OK);
    let names = pipeline_names(&c.body);
    assert_eq!(names, ["all", "web"]);
    let p = &c.body["pipelines"][0];
    assert_eq!(p["version"], 1);
    assert_eq!(p["configYaml"], flotilla_testkit::vector_config("base"));
    assert_eq!(
        p["checksum"],
        flotilla_shared::auth::tokens::sha256_hex(
            flotilla_testkit::vector_config("base").as_bytes()
        )
    );
    assert_eq!(c.body["pollIntervalMs"], 15000);
    assert_eq!(c.body["secretBackend"], "BUILTIN");
    assert_eq!(
        c.body["websocketUrl"],
        api.state.settings.api.public_ws_url.as_str()
    );

    let c = api.agent_config(&db_node).await;
    let names = pipeline_names(&c.body);
    assert_eq!(names, ["all"]);

    // Maintenance: no pipelines, still a websocketUrl.
    let r = api
        .admin(
            Method::POST,
            &format!("/api/v1/fleet/{web_id}/maintenance"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let c = api.agent_config(&web).await;
    assert_eq!(c.body["pipelines"], json!([]));
    assert!(c.body["websocketUrl"].as_str().unwrap().starts_with("ws"));

    // A new version with the same YAML keeps the checksum; different YAML changes it.
    let r = api
        .update_pipeline(
            &everywhere,
            json!({"configYaml": flotilla_testkit::vector_config("base")}),
        )
        .await;
    assert_eq!(r.body["latestVersion"], 2);
    api.deploy(&everywhere).await;
    let c = api.agent_config(&db_node).await;
    assert_eq!(c.body["pipelines"][0]["version"], 2);
    assert_eq!(
        c.body["pipelines"][0]["checksum"],
        flotilla_shared::auth::tokens::sha256_hex(
            flotilla_testkit::vector_config("base").as_bytes()
        )
    );
}

#[tokio::test]
async fn a_node_never_sees_another_environments_config() {
    let (_db, api) = common::start().await;
    let (a_env, a_token) = api.create_environment("a").await;
    let (_, b_token) = api.create_environment("b").await;
    let (_, a_node) = api.enroll(&a_token, "a1").await;
    let (_, b_node) = api.enroll(&b_token, "b1").await;
    let p = api
        .create_pipeline(
            &a_env,
            "secret-a",
            &flotilla_testkit::vector_config("a1"),
            json!({}),
        )
        .await;
    api.deploy(&p).await;
    assert_eq!(
        api.agent_config(&a_node).await.body["pipelines"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(api.agent_config(&b_node).await.body["pipelines"], json!([]));
}

#[tokio::test]
async fn concurrent_polls_share_reads_and_each_gets_its_own_config() {
    let (_db, api) = common::start().await;
    let (a_env, a_token) = api.create_environment("a").await;
    let (_, b_token) = api.create_environment("b").await;
    let mut nodes = Vec::new();
    for i in 0..10 {
        nodes.push(("a", api.enroll(&a_token, &format!("a{i}")).await));
        nodes.push(("b", api.enroll(&b_token, &format!("b{i}")).await));
    }
    let p = api
        .create_pipeline(
            &a_env,
            "only-a",
            &flotilla_testkit::vector_config("a1"),
            json!({}),
        )
        .await;
    api.deploy(&p).await;
    let (revoked_id, revoked) = nodes.pop().unwrap().1;
    let r = api
        .admin(Method::DELETE, &format!("/api/v1/fleet/{revoked_id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    // Each node three times at once, the revoked one among them.
    let rounds_before = api.state.polls.rounds();
    let asks: Vec<_> = (0..3).flat_map(|_| nodes.iter()).collect();
    let replies = join_all(
        asks.iter()
            .map(|(_, (_, token))| api.agent_config(token))
            .chain(std::iter::once(api.agent_config(&revoked))),
    )
    .await;
    let (last, replies) = replies.split_last().unwrap();
    assert_eq!(last.status, StatusCode::UNAUTHORIZED, "{}", last.text);
    for ((env, _), r) in asks.iter().zip(replies) {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let names = pipeline_names(&r.body);
        let expected: &[&str] = if *env == "a" { &["only-a"] } else { &[] };
        assert_eq!(names, expected, "{env}");
    }
    // The polls went through the coalesced reads, at most one round each.
    let rounds = api.state.polls.rounds() - rounds_before;
    assert!((1..=asks.len() as u64 + 1).contains(&rounds), "{rounds}");
}

#[tokio::test]
async fn heartbeat_records_state_and_settles_self_updates() {
    let (db, api) = common::start().await;
    let (env_id, enroll_token) = api.create_environment("prod").await;
    let (node_id, token) = api.enroll(&enroll_token, "h").await;
    let p1 = api
        .create_pipeline(
            &env_id,
            "p1",
            &flotilla_testkit::vector_config("a1"),
            json!({}),
        )
        .await;
    let p2 = api
        .create_pipeline(
            &env_id,
            "p2",
            &flotilla_testkit::vector_config("b1"),
            json!({}),
        )
        .await;
    let hb = |pipelines: serde_json::Value, extra: serde_json::Value| {
        let mut body = json!({"agentVersion": "1.0.0", "vectorVersion": "0.40", "labels": {"zone": "a"}, "pipelines": pipelines});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let r = api
        .call(
            Method::POST,
            "/api/agent/heartbeat",
            Some(&token),
            Some(hb(
                json!([{"pipelineId": p1, "version": 1, "status": "RUNNING", "pid": 42, "uptimeSeconds": 5, "eventsIn": 10, "newMetric": 1},
                       {"pipelineId": p2, "version": 1, "status": "CRASHED"}]),
                json!({"hostMetrics": {"cpu": 1}}),
            )),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!({"ok": true}));
    let node = api
        .admin(Method::GET, &format!("/api/v1/fleet/{node_id}"), None)
        .await
        .body;
    assert_eq!(node["agentVersion"], "1.0.0");
    assert_eq!(node["labels"], json!({"zone": "a"}));
    assert_eq!(node["status"], "HEALTHY");
    assert_eq!(node["pipelines"].as_array().unwrap().len(), 2);

    // An unreported pipeline's row goes away.
    api.call(
        Method::POST,
        "/api/agent/heartbeat",
        Some(&token),
        Some(hb(
            json!([{"pipelineId": p1, "version": 1, "status": "RUNNING"}]),
            json!({}),
        )),
    )
    .await;
    let node = api
        .admin(Method::GET, &format!("/api/v1/fleet/{node_id}"), None)
        .await
        .body;
    let pipelines = node["pipelines"].as_array().unwrap();
    assert_eq!(pipelines.len(), 1);
    assert_eq!(
        (
            &pipelines[0]["pipelineId"],
            &pipelines[0]["version"],
            &pipelines[0]["status"]
        ),
        (&json!(p1), &json!(1), &json!("RUNNING"))
    );

    // A status this server does not know is kept as given, not refused.
    let r = api
        .call(
            Method::POST,
            "/api/agent/heartbeat",
            Some(&token),
            Some(json!({"pipelines": [{"pipelineId": p1, "version": 1, "status": "DANCING"}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // A self-update is cleared by an update error (kept as lastUpdateError)...
    let sum = "a".repeat(64);
    let action = json!({"type": "self_update", "targetVersion": "2.0.0", "downloadUrl": "https://x/agent", "checksum": sum});
    assert_eq!(
        api.admin(
            Method::POST,
            &format!("/api/v1/fleet/{node_id}/actions"),
            Some(action.clone())
        )
        .await
        .status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        api.agent_config(&token).await.body["pendingAction"]["targetVersion"],
        "2.0.0"
    );
    api.call(
        Method::POST,
        "/api/agent/heartbeat",
        Some(&token),
        Some(hb(json!([]), json!({"updateError": "checksum mismatch"}))),
    )
    .await;
    let node = api
        .admin(Method::GET, &format!("/api/v1/fleet/{node_id}"), None)
        .await
        .body;
    assert_eq!(node["pendingAction"], serde_json::Value::Null);
    assert_eq!(node["lastUpdateError"], "checksum mismatch");
    // ...or by reaching the target version.
    api.admin(
        Method::POST,
        &format!("/api/v1/fleet/{node_id}/actions"),
        Some(action),
    )
    .await;
    api.call(
        Method::POST,
        "/api/agent/heartbeat",
        Some(&token),
        Some(json!({"agentVersion": "2.0.0", "pipelines": []})),
    )
    .await;
    let (pending, error): (Option<serde_json::Value>, Option<String>) =
        sqlx::query_as("SELECT pending_action, last_update_error FROM nodes WHERE id = $1::uuid")
            .bind(&node_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(pending.is_none() && error.is_none());

    // A restart is handed out by exactly one poll.
    api.admin(
        Method::POST,
        &format!("/api/v1/fleet/{node_id}/actions"),
        Some(json!({"type": "restart"})),
    )
    .await;
    assert_eq!(
        api.agent_config(&token).await.body["pendingAction"],
        json!({"type": "restart"})
    );
    assert!(api
        .agent_config(&token)
        .await
        .body
        .get("pendingAction")
        .is_none());
}

#[tokio::test]
async fn silent_nodes_become_unreachable_and_heal_on_heartbeat() {
    let (db, api) = common::start().await;
    let (_, enroll_token) = api.create_environment("prod").await;
    let (node_id, token) = api.enroll(&enroll_token, "h").await;
    let report = flotilla_api::sweep::sweep_once(&api.state).await.unwrap();
    assert_eq!(report.unreachable, 0);
    sqlx::query("UPDATE nodes SET last_seen = now() - interval '46 seconds'")
        .execute(&db.pool)
        .await
        .unwrap();
    let report = flotilla_api::sweep::sweep_once(&api.state).await.unwrap();
    assert_eq!(report.unreachable, 1);
    let node = api
        .admin(Method::GET, &format!("/api/v1/fleet/{node_id}"), None)
        .await
        .body;
    assert_eq!(node["status"], "UNREACHABLE");
    api.call(
        Method::POST,
        "/api/agent/heartbeat",
        Some(&token),
        Some(json!({"pipelines": []})),
    )
    .await;
    let node = api
        .admin(Method::GET, &format!("/api/v1/fleet/{node_id}"), None)
        .await
        .body;
    assert_eq!(node["status"], "HEALTHY");
}

#[tokio::test]
async fn the_background_sweep_runs_without_a_caller() {
    let (db, api) = common::start().await;
    let (_, enroll_token) = api.create_environment("prod").await;
    let (node_id, _) = api.enroll(&enroll_token, "h").await;
    sqlx::query("UPDATE nodes SET last_seen = now() - interval '1 hour'")
        .execute(&db.pool)
        .await
        .unwrap();
    flotilla_testkit::eventually(
        "node marked unreachable",
        std::time::Duration::from_secs(5),
        || async {
            let n = api
                .admin(Method::GET, &format!("/api/v1/fleet/{node_id}"), None)
                .await
                .body;
            (n["status"] == "UNREACHABLE").then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_bootstrap_environment_accepts_its_configured_enrollment_token() {
    let token = format!("vf_enroll_{}_{}", "0".repeat(15) + "d", "e".repeat(48));
    let demo = token.clone();
    let (db, api) = common::start_with(move |s| {
        s.api.bootstrap_environment = Some("demo".into());
        s.api.bootstrap_enrollment_token = Some(flotilla_shared::secret::Secret::new(demo));
    })
    .await;
    api.enroll(&token, "demo-1").await;
    // A second start on the same database keeps one environment.
    let mut settings = (*api.state.settings).clone();
    settings.database.url = flotilla_shared::secret::Secret::new(db.url.clone());
    flotilla_api::Api::build(settings).await.unwrap();
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM environments")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(names, ["demo"]);
}

/// The log lines an older agent reports in its heartbeat land in the node's log ring (JSON
/// entries kept as their text) and are shown on the node, not in the fleet listing.
#[tokio::test]
async fn recent_logs_are_kept_bounded_and_shown_on_the_node() {
    let (_db, api) = common::start().await;
    let (env_id, enroll_token) = api.create_environment("prod").await;
    let (node_id, token) = api.enroll(&enroll_token, "h").await;
    let p = api
        .create_pipeline(
            &env_id,
            "p",
            &flotilla_testkit::vector_config("a1"),
            json!({}),
        )
        .await;
    let mut lines: Vec<serde_json::Value> = (0..24).map(|i| json!(format!("line {i}"))).collect();
    lines.push(json!({"level": "error", "message": "bind failed"}));
    lines.push(json!("x".repeat(5000)));
    let r = api
        .call(
            Method::POST,
            "/api/agent/heartbeat",
            Some(&token),
            Some(json!({"pipelines": [{"pipelineId": p, "version": 1, "status": "CRASHED", "recentLogs": lines}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    let node = api
        .admin(Method::GET, &format!("/api/v1/fleet/{node_id}"), None)
        .await
        .body;
    let logs = node["pipelines"][0]["recentLogs"].as_array().unwrap();
    assert_eq!(logs.len(), 26);
    assert_eq!(logs[0], "line 0");
    assert_eq!(logs[24], r#"{"level":"error","message":"bind failed"}"#);
    assert_eq!(logs[25].as_str().unwrap().len(), 4096);
    assert_eq!(node["pipelines"][0]["status"], "CRASHED");
    // A page that follows the live log asks for the node without them.
    let lean = api
        .admin(
            Method::GET,
            &format!("/api/v1/fleet/{node_id}?recentLogs=false"),
            None,
        )
        .await
        .body;
    assert_eq!(lean["pipelines"][0]["status"], "CRASHED");
    assert!(lean["pipelines"][0].get("recentLogs").is_none(), "{lean}");

    let fleet = api.admin(Method::GET, "/api/v1/fleet", None).await.body;
    let listed = &fleet["nodes"][0]["pipelines"][0];
    assert_eq!(listed["status"], "CRASHED");
    assert!(listed.get("recentLogs").is_none(), "{listed}");
}

/// The `pipelineName`s of a config response, in order.
fn pipeline_names(config: &serde_json::Value) -> Vec<&str> {
    config["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pipelineName"].as_str().unwrap())
        .collect()
}
