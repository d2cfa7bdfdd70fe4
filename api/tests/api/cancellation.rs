//! A request whose client stops waiting still finishes its work, and leaves no connection
//! inside a transaction.

use crate::common;

use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_request_that_times_out_still_finishes_and_leaves_no_transaction_open() {
    let (db, api) = common::start_with(|s| s.api.request_timeout_ms = 300).await;
    let (env_id, _) = api.create_environment("prod").await;
    let p = api
        .create_pipeline(
            &env_id,
            "web",
            &flotilla_testkit::vector_config("a1"),
            json!({}),
        )
        .await;
    let id: uuid::Uuid = p.parse().unwrap();

    // Hold the pipeline's row lock so the update waits inside its transaction.
    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM pipelines WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *lock)
        .await
        .unwrap();
    let r = api
        .update_pipeline(
            &p,
            json!({"configYaml": flotilla_testkit::vector_config("a2")}),
        )
        .await;
    assert_eq!(r.status, StatusCode::REQUEST_TIMEOUT, "{}", r.text);
    lock.commit().await.unwrap();

    // The update was not cut off with the answer: it completes once the lock is free.
    flotilla_testkit::eventually("the update lands", Duration::from_secs(5), || async {
        let r = api
            .admin(Method::GET, &format!("/api/v1/pipelines/{p}"), None)
            .await;
        (r.body["latestVersion"] == 2).then_some(())
    })
    .await;
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(open, 0, "connections left inside a transaction");
}
