//! Sample requests end to end: validation, isolation, idempotency, one transition.

use crate::common;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

struct Fixture {
    _db: flotilla_testkit::db::TestDb,
    api: flotilla_testkit::api::ApiHandle,
    pipeline: String,
    nodes: Vec<String>,
}

async fn fixture(nodes: usize) -> Fixture {
    let (db, api) = common::start().await;
    let (env_id, enroll_token) = api.create_environment("prod").await;
    let pipeline = api
        .create_pipeline(
            &env_id,
            "p",
            &flotilla_testkit::vector_config("a1"),
            json!({}),
        )
        .await;
    api.deploy(&pipeline).await;
    let mut tokens = Vec::new();
    for i in 0..nodes {
        tokens.push(api.enroll(&enroll_token, &format!("h{i}")).await.1);
    }
    Fixture {
        _db: db,
        api,
        pipeline,
        nodes: tokens,
    }
}

async fn request(f: &Fixture, keys: Value) -> String {
    let r = f
        .api
        .admin(
            Method::POST,
            &format!("/api/v1/pipelines/{}/samples", f.pipeline),
            Some(json!({"componentKeys": keys})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(r.body["expiresAt"].is_string());
    r.body["requestId"].as_str().unwrap().to_owned()
}

async fn submit(f: &Fixture, node: usize, results: Value) -> StatusCode {
    f.api
        .call(
            Method::POST,
            "/api/agent/samples",
            Some(&f.nodes[node]),
            Some(json!({"results": results})),
        )
        .await
        .status
}

async fn status(f: &Fixture, id: &str) -> Value {
    f.api
        .admin(Method::GET, &format!("/api/v1/samples/{id}"), None)
        .await
        .body
}

#[tokio::test]
async fn results_complete_a_request_once_and_duplicates_are_idempotent() {
    let f = fixture(1).await;
    let id = request(&f, json!(["in", "out"])).await;
    let config = f.api.agent_config(&f.nodes[0]).await.body;
    assert_eq!(config["sampleRequests"][0]["requestId"], id.as_str());
    assert_eq!(config["sampleRequests"][0]["limit"], 5);

    assert_eq!(
        submit(
            &f,
            0,
            json!([{"requestId": id, "componentKey": "in", "events": [{"m": 1}]}])
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(status(&f, &id).await["status"], "PENDING");
    // Duplicate of the first component: a no-op.
    assert_eq!(
        submit(
            &f,
            0,
            json!([{"requestId": id, "componentKey": "in", "events": [{"m": 2}]}])
        )
        .await,
        StatusCode::OK
    );
    // A component that was not requested is ignored.
    submit(
        &f,
        0,
        json!([{"requestId": id, "componentKey": "other", "events": []}]),
    )
    .await;
    assert_eq!(submit(&f, 0, json!([{"requestId": id, "componentKey": "out", "events": [], "schema": [{"path": ".m", "type": "integer", "sample": 1}]}])).await, StatusCode::OK);
    let s = status(&f, &id).await;
    assert_eq!(s["status"], "COMPLETED");
    assert_eq!(s["samples"].as_array().unwrap().len(), 2);
    assert_eq!(s["samples"][0]["events"], json!([{"m": 1}]));
    // Finished requests no longer appear in config and ignore late results.
    assert!(f
        .api
        .agent_config(&f.nodes[0])
        .await
        .body
        .get("sampleRequests")
        .is_none());
    assert_eq!(
        submit(
            &f,
            0,
            json!([{"requestId": id, "componentKey": "out", "error": "late"}])
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(status(&f, &id).await["status"], "COMPLETED");
}

#[tokio::test]
async fn an_error_result_ends_the_request_in_error_and_heartbeat_results_take_the_same_path() {
    let f = fixture(1).await;
    let id = request(&f, json!(["in", "out"])).await;
    let r = f
        .api
        .call(
            Method::POST,
            "/api/agent/heartbeat",
            Some(&f.nodes[0]),
            Some(json!({"pipelines": [], "sampleResults": [
                {"requestId": id, "componentKey": "in", "events": []},
                {"requestId": id, "componentKey": "out", "error": "tap failed"}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let s = status(&f, &id).await;
    assert_eq!(s["status"], "ERROR");
    assert_eq!(s["samples"][1]["error"], "tap failed");
}

#[tokio::test]
async fn two_agents_racing_on_one_request_cause_exactly_one_transition() {
    for _ in 0..5 {
        let f = fixture(2).await;
        let keys: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
        let id = request(&f, json!(keys)).await;
        // Each agent submits every component, in opposite orders, at the same time.
        let mine = |rev: bool| {
            let mut ks = keys.clone();
            if rev {
                ks.reverse();
            }
            json!(ks
                .iter()
                .map(|k| json!({"requestId": id, "componentKey": k, "events": [k]}))
                .collect::<Vec<_>>())
        };
        let (a, b) = tokio::join!(submit(&f, 0, mine(false)), submit(&f, 1, mine(true)));
        assert_eq!((a, b), (StatusCode::OK, StatusCode::OK));
        let s = status(&f, &id).await;
        assert_eq!(s["status"], "COMPLETED");
        assert_eq!(s["samples"].as_array().unwrap().len(), 8);
        let completed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sample_requests WHERE id = $1::uuid AND completed_at IS NOT NULL AND completed_by IS NOT NULL",
        )
        .bind(&id)
        .fetch_one(&f._db.pool)
        .await
        .unwrap();
        assert_eq!(completed, 1);
    }
}

#[tokio::test]
async fn results_for_another_environment_or_an_expired_request_are_ignored() {
    let f = fixture(1).await;
    let id = request(&f, json!(["in"])).await;
    let (_, other_enroll) = f.api.create_environment("other").await;
    let (_, stranger) = f.api.enroll(&other_enroll, "x").await;
    let r = f
        .api
        .call(
            Method::POST,
            "/api/agent/samples",
            Some(&stranger),
            Some(json!({"results": [{"requestId": id, "componentKey": "in", "events": [1]}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let s = status(&f, &id).await;
    assert_eq!(s["status"], "PENDING");
    assert_eq!(s["samples"], json!([]));

    sqlx::query("UPDATE sample_requests SET expires_at = now() - interval '1 second'")
        .execute(&f._db.pool)
        .await
        .unwrap();
    submit(
        &f,
        0,
        json!([{"requestId": id, "componentKey": "in", "events": [1]}]),
    )
    .await;
    assert_eq!(status(&f, &id).await["status"], "EXPIRED");
    flotilla_api::sweep::sweep_once(&f.api.state).await.unwrap();
    let stored: String =
        sqlx::query_scalar("SELECT status FROM sample_requests WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&f._db.pool)
            .await
            .unwrap();
    assert_eq!(stored, "EXPIRED");
}

#[tokio::test]
async fn bad_sample_bodies_are_400_and_unknown_requests_are_ignored() {
    let f = fixture(1).await;
    for body in [r#"{"results": 5}"#, "[]", "{"] {
        let r = f
            .api
            .raw(Method::POST, "/api/agent/samples", Some(&f.nodes[0]), body)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            r.body["error"].is_string() && r.body["details"].is_object(),
            "{}",
            r.text
        );
    }
    let r = f
        .api
        .call(
            Method::POST,
            "/api/agent/samples",
            Some(&f.nodes[0]),
            Some(json!({"results": [{"componentKey": "x"}, {"requestId": uuid::Uuid::new_v4(), "componentKey": ""}]})),
        )
        .await;
    // Results that are not ones are skipped, one by one; the request stands.
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = f
        .api
        .call(
            Method::POST,
            "/api/agent/samples",
            Some(&f.nodes[0]),
            Some(json!({"results": [{"requestId": uuid::Uuid::new_v4(), "componentKey": "in"}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // Operator-side validation.
    for body in [
        json!({"componentKeys": []}),
        json!({"componentKeys": ["a"], "limit": 0}),
        json!({"componentKeys": ["a"], "limit": 51}),
    ] {
        let r = f
            .api
            .admin(
                Method::POST,
                &format!("/api/v1/pipelines/{}/samples", f.pipeline),
                Some(body),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
}
