//! The audit trail: every operator change, with the token that made it, newest first, paged by
//! cursor, filtered, admins only; a refused change leaves no record.

use crate::common;

use flotilla_testkit::api::{ApiHandle, Reply};
use flotilla_testkit::vector_config;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Every entry of the trail matching `query` (`""` or `&k=v…`), walked in pages of `limit`.
async fn walk(api: &ApiHandle, limit: usize, query: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut path = format!("/api/v1/audit?limit={limit}{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = api.admin(Method::GET, &path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let page = r.body["entries"].as_array().unwrap();
        assert!(page.len() <= limit);
        entries.extend(page.iter().cloned());
        match r.body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return entries,
        }
    }
    panic!("the trail never ended");
}

fn actions(entries: &[Value]) -> Vec<&str> {
    entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect()
}

fn ok(r: Reply, expected: StatusCode) -> Value {
    assert_eq!(r.status, expected, "{}", r.text);
    r.body
}

#[tokio::test]
async fn every_change_is_recorded_with_its_token_newest_first_and_pages_by_cursor() {
    let (_db, api) = common::start().await;
    let admin_id = ok(
        api.admin(Method::GET, "/api/v1/me", None).await,
        StatusCode::OK,
    )["tokenId"]
        .as_str()
        .unwrap()
        .to_owned();

    // Environment create and rotate, operator token create (by the admin).
    let env = ok(
        api.admin(
            Method::POST,
            "/api/v1/environments",
            Some(json!({"name": "prod"})),
        )
        .await,
        StatusCode::CREATED,
    );
    let env_id = env["id"].as_str().unwrap().to_owned();
    let rotated = ok(
        api.admin(
            Method::POST,
            &format!("/api/v1/environments/{env_id}/enrollment-token"),
            None,
        )
        .await,
        StatusCode::OK,
    );
    let enroll = rotated["enrollmentToken"].as_str().unwrap().to_owned();
    let editor = ok(
        api.admin(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": "ci-bot", "role": "editor"})),
        )
        .await,
        StatusCode::CREATED,
    );
    let (editor_id, editor_token) = (
        editor["id"].as_str().unwrap().to_owned(),
        editor["token"].as_str().unwrap().to_owned(),
    );

    // The pipeline's life, by the editor.
    let as_editor = |method: Method, path: String, body: Option<Value>| {
        let api = &api;
        let token = editor_token.clone();
        async move { api.call(method, &path, Some(&token), body).await }
    };
    let created = ok(
        as_editor(
            Method::POST,
            "/api/v1/pipelines".into(),
            Some(
                json!({"environmentId": env_id, "name": "web", "configYaml": vector_config("v1")}),
            ),
        )
        .await,
        StatusCode::CREATED,
    );
    let p = created["id"].as_str().unwrap().to_owned();
    let steps: [(Method, String, Option<Value>, StatusCode); 4] = [
        (
            Method::PUT,
            format!("/api/v1/pipelines/{p}"),
            Some(json!({"configYaml": vector_config("v2")})),
            StatusCode::OK,
        ),
        (
            Method::POST,
            format!("/api/v1/pipelines/{p}/deploy"),
            None,
            StatusCode::OK,
        ),
        (
            Method::POST,
            format!("/api/v1/pipelines/{p}/rollback"),
            Some(json!({"version": 1})),
            StatusCode::OK,
        ),
        (
            Method::POST,
            format!("/api/v1/pipelines/{p}/samples"),
            Some(json!({"componentKeys": ["in"]})),
            StatusCode::CREATED,
        ),
    ];
    for (method, path, body, status) in steps {
        ok(as_editor(method, path, body).await, status);
    }
    // A tap on a node makes its agent act: recorded too.
    let (node_id, _) = api.enroll(&enroll, "web-1").await;
    ok(
        as_editor(
            Method::POST,
            "/api/v1/taps".into(),
            Some(json!({"nodeId": node_id, "pipelineId": p, "componentId": "in"})),
        )
        .await,
        StatusCode::CREATED,
    );
    ok(
        as_editor(
            Method::POST,
            format!("/api/v1/pipelines/{p}/undeploy"),
            None,
        )
        .await,
        StatusCode::OK,
    );
    ok(
        as_editor(Method::DELETE, format!("/api/v1/pipelines/{p}"), None).await,
        StatusCode::NO_CONTENT,
    );

    // Settings and the token's revocation, by the admin.
    ok(
        api.admin(
            Method::PUT,
            "/api/v1/settings",
            Some(json!({"pollIntervalMs": 7000})),
        )
        .await,
        StatusCode::OK,
    );
    ok(
        api.admin(Method::DELETE, &format!("/api/v1/tokens/{editor_id}"), None)
            .await,
        StatusCode::NO_CONTENT,
    );

    let all = walk(&api, 1000, "").await;
    let expected = [
        "token.revoke",
        "settings.update",
        "pipeline.delete",
        "pipeline.undeploy",
        "tap.start",
        "sample.request",
        "pipeline.rollback",
        "pipeline.deploy",
        "pipeline.update",
        "pipeline.create",
        "token.create",
        "environment.rotate",
        "environment.create",
    ];
    assert_eq!(actions(&all), expected);
    let by_action = |a: &str| all.iter().find(|e| e["action"] == a).unwrap().clone();

    // Who: the token's id and name, whichever made it.
    for e in &all {
        let by_editor = e["targetType"] == "pipeline";
        let (id, name) = if by_editor {
            (editor_id.as_str(), "ci-bot")
        } else {
            (admin_id.as_str(), "")
        };
        assert_eq!(e["tokenId"], id, "{e}");
        if by_editor {
            assert_eq!(e["tokenName"], name, "{e}");
        } else {
            assert!(e["tokenName"].is_string(), "{e}");
        }
        assert!(e["at"].is_string(), "{e}");
    }
    // What: targets and brief details.
    assert_eq!(by_action("pipeline.create")["targetId"], p.as_str());
    assert_eq!(by_action("pipeline.create")["detail"]["name"], "web");
    assert_eq!(
        by_action("pipeline.update")["detail"],
        json!({"version": 2, "previousVersion": 1})
    );
    assert_eq!(
        by_action("pipeline.deploy")["detail"],
        json!({"fromVersion": null, "toVersion": 2})
    );
    assert_eq!(
        by_action("pipeline.rollback")["detail"],
        json!({"fromVersion": 2, "toVersion": 1})
    );
    assert_eq!(
        by_action("pipeline.undeploy")["detail"],
        json!({"fromVersion": 1, "toVersion": null})
    );
    assert_eq!(
        by_action("pipeline.delete")["detail"],
        json!({"name": "web", "deployedVersion": null})
    );
    assert_eq!(by_action("tap.start")["detail"]["nodeId"], node_id.as_str());
    assert_eq!(
        by_action("settings.update")["detail"],
        json!({"pollIntervalMs": {"from": 15000, "to": 7000}})
    );
    assert_eq!(by_action("token.create")["targetId"], editor_id.as_str());
    assert_eq!(
        by_action("token.revoke")["detail"],
        json!({"name": "ci-bot", "role": "editor"})
    );
    assert_eq!(by_action("environment.rotate")["targetId"], env_id.as_str());
    // Never a token.
    let text = serde_json::to_string(&all).unwrap();
    for secret in [
        enroll.as_str(),
        env["enrollmentToken"].as_str().unwrap(),
        editor_token.as_str(),
    ] {
        assert!(!text.contains(secret), "the trail holds a token");
    }

    // Pages of two walk the same trail, and the last page says it is the last.
    assert_eq!(walk(&api, 2, "").await, all);
    let r = api.admin(Method::GET, "/api/v1/audit?limit=2", None).await;
    assert_eq!(r.body["entries"].as_array().unwrap().len(), 2);
    assert!(r.body["nextCursor"].is_string());
    let r = api
        .admin(Method::GET, "/api/v1/audit?cursor=garbage", None)
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Filters.
    let pipeline_history = walk(&api, 2, &format!("&targetType=pipeline&targetId={p}")).await;
    assert_eq!(actions(&pipeline_history), expected[2..10]);
    let by_editor = walk(&api, 1000, &format!("&tokenId={editor_id}")).await;
    assert_eq!(by_editor, pipeline_history);
    let deploys = walk(&api, 1000, "&action=pipeline.deploy").await;
    assert_eq!(actions(&deploys), ["pipeline.deploy"]);
    let tokens = walk(&api, 1000, "&targetType=token").await;
    assert_eq!(actions(&tokens), ["token.revoke", "token.create"]);
    let r = api
        .admin(Method::GET, "/api/v1/audit?tokenId=not-a-uuid", None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn only_admins_read_the_trail() {
    let (_db, api) = common::start().await;
    for role in ["viewer", "editor"] {
        let token = api.operator_token(role).await.1;
        let r = api
            .call(Method::GET, "/api/v1/audit", Some(&token), None)
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{role}");
    }
    let r = api.call(Method::GET, "/api/v1/audit", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = api.admin(Method::GET, "/api/v1/audit", None).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn a_refused_change_leaves_no_record() {
    let (_db, api) = common::start().await;
    let (env, _) = api.create_environment("prod").await;
    let p = api
        .create_pipeline(&env, "web", &vector_config("v1"), json!({}))
        .await;
    let before = walk(&api, 1000, "").await;
    assert_eq!(actions(&before), ["pipeline.create", "environment.create"]);

    let refused = [
        (
            Method::POST,
            "/api/v1/pipelines".to_owned(),
            json!({"environmentId": env, "name": "bad", "configYaml": "sources: {}\n"}),
        ),
        (
            Method::PUT,
            format!("/api/v1/pipelines/{p}"),
            json!({"configYaml": "not: [valid\n"}),
        ),
        (
            Method::POST,
            format!("/api/v1/pipelines/{p}/deploy"),
            json!({"version": 9}),
        ),
        (
            Method::POST,
            format!("/api/v1/pipelines/{p}/rollback"),
            json!({}),
        ),
        (
            Method::PUT,
            "/api/v1/settings".to_owned(),
            json!({"pollIntervalMs": 5}),
        ),
        (
            Method::POST,
            "/api/v1/tokens".to_owned(),
            json!({"name": " ", "role": "viewer"}),
        ),
        (
            Method::POST,
            "/api/v1/environments".to_owned(),
            json!({"name": ""}),
        ),
        (
            Method::POST,
            format!("/api/v1/pipelines/{p}/samples"),
            json!({"componentKeys": []}),
        ),
    ];
    for (method, path, body) in refused {
        let r = api.admin(method, &path, Some(body)).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}: {}",
            r.text
        );
    }
    // A conflict the database refuses inside the change's transaction leaves none either.
    let r = api
        .admin(
            Method::POST,
            "/api/v1/pipelines",
            Some(json!({"environmentId": env, "name": "web", "configYaml": vector_config("v2")})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(walk(&api, 1000, "").await, before);
}
