//! The operator API: roles, validation, versions, and never a token hash.

use crate::common;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn roles_are_enforced() {
    let (_db, api) = common::start().await;
    let (env_id, _) = api.create_environment("prod").await;
    let viewer = api.operator_token("viewer").await.1;
    let editor = api.operator_token("editor").await.1;
    let pipeline = api
        .create_pipeline(
            &env_id,
            "p",
            &flotilla_testkit::vector_config("a1"),
            json!({}),
        )
        .await;
    let deploy = format!("/api/v1/pipelines/{pipeline}/deploy");

    assert_eq!(
        api.call(Method::GET, "/api/v1/fleet", None, None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.call(Method::GET, "/api/v1/fleet", Some("vf_op_bogus"), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.call(Method::GET, "/api/v1/fleet", Some(&viewer), None)
            .await
            .status,
        StatusCode::OK
    );
    let r = api.call(Method::POST, &deploy, Some(&viewer), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body["error"].as_str().unwrap().contains("editor"));
    assert_eq!(
        api.call(Method::POST, &deploy, Some(&editor), None)
            .await
            .status,
        StatusCode::OK
    );
    let r = api
        .call(
            Method::POST,
            "/api/v1/environments",
            Some(&editor),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api
        .call(
            Method::PUT,
            "/api/v1/settings",
            Some(&editor),
            Some(json!({"pollIntervalMs": 5000})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // A revoked operator token stops working on the next request.
    let tokens = api.admin(Method::GET, "/api/v1/tokens", None).await.body;
    let editor_id = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "editor")
        .unwrap()["id"]
        .clone();
    let r = api
        .admin(
            Method::DELETE,
            &format!("/api/v1/tokens/{}", editor_id.as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        api.call(Method::POST, &deploy, Some(&editor), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn environments_and_pipelines_validate_and_conflict() {
    let (_db, api) = common::start().await;
    let (env_id, _) = api.create_environment("prod").await;
    let r = api
        .admin(
            Method::POST,
            "/api/v1/environments",
            Some(json!({"name": "prod"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = api
        .admin(
            Method::POST,
            "/api/v1/environments",
            Some(json!({"name": ""})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["details"]["field"], "name");
    let r = api
        .admin(Method::POST, "/api/v1/environments", Some(json!({})))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = api.admin(Method::GET, "/api/v1/environments", None).await;
    assert_eq!(r.body["environments"][0]["name"], "prod");
    assert!(r.body["environments"][0].get("enrollmentToken").is_none());

    api.create_pipeline(
        &env_id,
        "p",
        &flotilla_testkit::vector_config("a1"),
        json!({}),
    )
    .await;
    let body = |name: &str, extra: Value| {
        let mut b = json!({"environmentId": env_id, "name": name, "configYaml": flotilla_testkit::vector_config("a1")});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let cases = [
        (body("p", json!({})), StatusCode::CONFLICT),
        (
            body("q", json!({"configYaml": ""})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            body("q", json!({"logLevel": "loud"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            body("q", json!({"nodeSelector": {"a": 1}})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            body("q", json!({"environmentId": uuid::Uuid::new_v4()})),
            StatusCode::NOT_FOUND,
        ),
        (json!({"name": "q"}), StatusCode::BAD_REQUEST),
    ];
    for (b, expected) in cases {
        let r = api
            .admin(Method::POST, "/api/v1/pipelines", Some(b.clone()))
            .await;
        assert_eq!(r.status, expected, "{b} → {}", r.text);
        assert!(r.body["error"].is_string());
    }
    for path in [
        "/api/v1/pipelines/not-a-uuid",
        &format!("/api/v1/pipelines/{}", uuid::Uuid::new_v4()),
    ] {
        assert_eq!(
            api.admin(Method::GET, path, None).await.status,
            StatusCode::NOT_FOUND
        );
    }
    let r = api.admin(Method::GET, "/api/v1/nowhere", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn versions_deploy_rollback_undeploy_delete() {
    let (_db, api) = common::start().await;
    let (env_id, enroll) = api.create_environment("prod").await;
    let (_, node) = api.enroll(&enroll, "h").await;
    let id = api
        .create_pipeline(
            &env_id,
            "p",
            &flotilla_testkit::vector_config("v1"),
            json!({}),
        )
        .await;
    let path = format!("/api/v1/pipelines/{id}");
    let r = api
        .admin(
            Method::PUT,
            &path,
            Some(json!({"configYaml": flotilla_testkit::vector_config("v2"), "logLevel": "debug"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["latestVersion"], 2);
    assert_eq!(r.body["deployedVersion"], Value::Null);
    let r = api.deploy(&id).await;
    assert_eq!(r.body, json!({"deployedVersion": 2, "notifiedNodes": 1}));
    let c = api.agent_config(&node).await.body;
    assert_eq!(c["pipelines"][0]["logLevel"], "debug");
    let r = api
        .admin(
            Method::POST,
            &format!("{path}/rollback"),
            Some(json!({"version": 1})),
        )
        .await;
    assert_eq!(r.body["deployedVersion"], 1);
    assert_eq!(
        api.agent_config(&node).await.body["pipelines"][0]["configYaml"],
        flotilla_testkit::vector_config("v1")
    );
    let r = api
        .admin(
            Method::POST,
            &format!("{path}/rollback"),
            Some(json!({"version": 9})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = api
        .admin(
            Method::POST,
            &format!("{path}/deploy"),
            Some(json!({"version": 2})),
        )
        .await;
    assert_eq!(r.body["deployedVersion"], 2);
    let shown = api.admin(Method::GET, &path, None).await.body;
    assert_eq!(shown["versions"].as_array().unwrap().len(), 2);
    let r = api
        .admin(Method::POST, &format!("{path}/undeploy"), None)
        .await;
    assert_eq!(r.body["deployedVersion"], Value::Null);
    assert_eq!(api.agent_config(&node).await.body["pipelines"], json!([]));
    assert_eq!(
        api.admin(Method::DELETE, &path, None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.admin(Method::GET, &path, None).await.status,
        StatusCode::NOT_FOUND
    );
    let list = api
        .admin(
            Method::GET,
            &format!("/api/v1/pipelines?environmentId={env_id}"),
            None,
        )
        .await;
    assert_eq!(list.body["pipelines"], json!([]));
}

#[tokio::test]
async fn concurrent_updates_get_unique_consecutive_versions() {
    let (db, api) = common::start().await;
    let (env_id, _) = api.create_environment("prod").await;
    let id = api
        .create_pipeline(
            &env_id,
            "p",
            &flotilla_testkit::vector_config("v0"),
            json!({}),
        )
        .await;
    let path = format!("/api/v1/pipelines/{id}");
    let updates = (0..16).map(|i| {
        api.admin(
            Method::PUT,
            &path,
            Some(json!({"configYaml": flotilla_testkit::vector_config(&format!("v{i}"))})),
        )
    });
    let replies = futures_util::future::join_all(updates).await;
    assert!(
        replies.iter().all(|r| r.status == StatusCode::OK),
        "{:?}",
        replies.iter().map(|r| &r.text).collect::<Vec<_>>()
    );
    let deploys = (0..8).map(|_| api.deploy(&id));
    for r in futures_util::future::join_all(deploys).await {
        assert_eq!(r.status, StatusCode::OK);
    }
    let versions: Vec<i32> = sqlx::query_scalar(
        "SELECT version FROM pipeline_versions WHERE pipeline_id = $1::uuid ORDER BY version",
    )
    .bind(&id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(versions, (1..=17).collect::<Vec<_>>());
}

#[tokio::test]
async fn fleet_settings_and_actions_validate() {
    let (_db, api) = common::start().await;
    let (env_id, enroll) = api.create_environment("prod").await;
    let (node_id, _) = api.enroll(&enroll, "h").await;
    let r = api
        .admin(
            Method::GET,
            &format!("/api/v1/fleet?environmentId={env_id}"),
            None,
        )
        .await;
    let n = &r.body["nodes"][0];
    for field in [
        "id",
        "host",
        "environmentId",
        "status",
        "lastSeen",
        "labels",
        "maintenanceMode",
        "pipelines",
        "wsConnected",
    ] {
        assert!(n.get(field).is_some(), "{field} in {n}");
    }
    assert_eq!(n["wsConnected"], false);
    let r = api
        .admin(
            Method::GET,
            &format!("/api/v1/fleet?environmentId={}", uuid::Uuid::new_v4()),
            None,
        )
        .await;
    assert_eq!(r.body["nodes"], json!([]));

    let base = format!("/api/v1/fleet/{node_id}");
    for bad in [json!({"labels": ["x"]}), json!({"labels": {"k": 5}})] {
        assert_eq!(
            api.admin(Method::PUT, &format!("{base}/labels"), Some(bad))
                .await
                .status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
    for bad in [
        json!({"type": "explode"}),
        json!({"type": "self_update", "targetVersion": "2", "downloadUrl": "ftp://x", "checksum": "a".repeat(64)}),
        json!({"type": "self_update", "targetVersion": "2", "downloadUrl": "http://x", "checksum": "zz"}),
    ] {
        assert_eq!(
            api.admin(Method::POST, &format!("{base}/actions"), Some(bad))
                .await
                .status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
    let ghost = format!("/api/v1/fleet/{}/maintenance", uuid::Uuid::new_v4());
    assert_eq!(
        api.admin(Method::POST, &ghost, Some(json!({"enabled": true})))
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    for ms in [999, 3_600_001] {
        let r = api
            .admin(
                Method::PUT,
                "/api/v1/settings",
                Some(json!({"pollIntervalMs": ms})),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let r = api
        .admin(
            Method::PUT,
            "/api/v1/settings",
            Some(json!({"pollIntervalMs": 5000})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        api.admin(Method::GET, "/api/v1/settings", None).await.body["pollIntervalMs"],
        5000
    );
}

#[tokio::test]
async fn no_response_ever_contains_a_token_hash() {
    let (db, api) = common::start().await;
    let (env_id, enroll) = api.create_environment("prod").await;
    let (node_id, _) = api.enroll(&enroll, "h").await;
    let digest: String = sqlx::query_scalar("SELECT encode(token_digest, 'hex') FROM nodes")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let p = api
        .create_pipeline(
            &env_id,
            "p",
            &flotilla_testkit::vector_config("a1"),
            json!({}),
        )
        .await;
    api.admin(
        Method::POST,
        "/api/v1/tokens",
        Some(json!({"name": "v", "role": "viewer"})),
    )
    .await;
    for path in [
        "/api/v1/environments".to_owned(),
        "/api/v1/fleet".to_owned(),
        format!("/api/v1/fleet/{node_id}"),
        "/api/v1/pipelines".to_owned(),
        format!("/api/v1/pipelines/{p}"),
        "/api/v1/tokens".to_owned(),
        "/api/v1/settings".to_owned(),
    ] {
        let r = api.admin(Method::GET, &path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert!(
            !r.text.contains("$2b$") && !r.text.contains("$2y$"),
            "{path} leaks a hash: {}",
            r.text
        );
        let text = r.text.to_lowercase();
        assert!(
            !text.contains("hash") && !text.contains("digest") && !text.contains(&digest),
            "{path}: {}",
            r.text
        );
    }
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let (_db, api) = common::start_with(|s| s.api.max_body_bytes = 1024).await;
    let big = format!(r#"{{"name": "{}"}}"#, "x".repeat(4096));
    let r = api
        .raw(
            Method::POST,
            "/api/v1/environments",
            Some(flotilla_testkit::api::ADMIN_TOKEN),
            &big,
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.body["error"].is_string());
    // Routes whose body is optional read it under the same limit.
    let deploy = format!("/api/v1/pipelines/{}/deploy", uuid::Uuid::new_v4());
    let r = api
        .raw(
            Method::POST,
            &deploy,
            Some(flotilla_testkit::api::ADMIN_TOKEN),
            &big,
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn health_and_readiness() {
    let (_db, api) = common::start().await;
    assert_eq!(
        api.call(Method::GET, "/healthz", None, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.call(Method::GET, "/readyz", None, None).await.status,
        StatusCode::OK
    );
    let (_db2, down) = common::start_with(|s| {
        s.redis.url = flotilla_shared::secret::Secret::new("redis://127.0.0.1:1")
    })
    .await;
    let r = down.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body["details"], json!({"database": true, "redis": false}));
}

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let (_db, api) = common::start().await;
    let r = api.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = r.body["paths"].as_object().unwrap();
    for path in [
        "/api/agent/enroll",
        "/api/agent/config",
        "/api/agent/heartbeat",
        "/api/agent/samples",
        "/api/v1/environments",
        "/api/v1/pipelines/{id}/deploy",
        "/api/v1/fleet/{id}/actions",
        "/api/v1/samples/{id}",
        "/api/v1/settings",
        "/api/v1/tokens",
    ] {
        assert!(paths.contains_key(path), "{path} documented");
    }
    let schemas = r.body["components"]["schemas"].as_object().unwrap();
    assert!(schemas.contains_key("ConfigResponse") && schemas.contains_key("Heartbeat"));
}
