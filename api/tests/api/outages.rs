//! The api while Postgres is unreachable: clear 503s, nothing half-done, and recovery without a
//! restart. Postgres sits behind a proxy the test cuts.

use flotilla_shared::secret::Secret;
use flotilla_testkit::proxy::Proxy;
use flotilla_testkit::{api, eventually};
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn agent_and_operator_requests_get_503_while_postgres_is_down_and_succeed_after() {
    let db = flotilla_testkit::db::fresh().await;
    let (proxy, through_proxy) = Proxy::in_front_of(&db.url).await;
    let mut settings = flotilla_testkit::settings(&db.url, &flotilla_testkit::redis_url());
    settings.database.url = Secret::new(through_proxy);
    settings.database.acquire_timeout_ms = 500;
    let api = api::spawn(settings).await;

    let (env_id, enroll_token) = api.create_environment("prod").await;
    let (_, token) = api.enroll(&enroll_token, "web-1").await;
    let p = api
        .create_pipeline(
            &env_id,
            "all",
            &flotilla_testkit::vector_config("base"),
            json!({}),
        )
        .await;
    api.deploy(&p).await;
    let draft = api
        .create_pipeline(
            &env_id,
            "draft",
            &flotilla_testkit::vector_config("draft"),
            json!({}),
        )
        .await;
    let before = api.agent_config(&token).await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.text);
    let heartbeat = |body| api.call(Method::POST, "/api/agent/heartbeat", Some(&token), body);
    assert_eq!(heartbeat(Some(json!({}))).await.status, StatusCode::OK);

    proxy.cut();
    // Concurrent polls share reads: every one of them gets the outage, not a 401 or a 500.
    let polls = join_all((0..8).map(|_| api.agent_config(&token))).await;
    for r in &polls {
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
        assert_eq!(r.body["error"], "database unavailable");
    }
    let r = heartbeat(Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    let r = api.admin(Method::GET, "/api/v1/fleet", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    let r = api.deploy(&draft).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);

    proxy.heal();
    let after = eventually("polls succeed again", Duration::from_secs(10), || async {
        let r = api.agent_config(&token).await;
        (r.status == StatusCode::OK).then_some(r)
    })
    .await;
    // The deploy that failed changed nothing.
    assert_eq!(after.body["pipelines"], before.body["pipelines"]);
    assert_eq!(after.body["pipelines"].as_array().unwrap().len(), 1);
    assert_eq!(heartbeat(Some(json!({}))).await.status, StatusCode::OK);
}
