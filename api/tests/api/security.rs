//! Abuse and secrecy: rate limits, floods of bogus tokens, and no secret in any log line.

use crate::common;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::sync::atomic::Ordering;

#[tokio::test]
async fn enrollment_attempts_are_rate_limited_per_address() {
    let (_db, api) = common::start_with(|s| s.api.enroll_per_minute = 5).await;
    let (_, enroll) = api.create_environment("prod").await;
    // The address's window opens with the first attempt.
    let started = std::time::Instant::now();
    for i in 0..5 {
        let r = api
            .call(
                Method::POST,
                "/api/agent/enroll",
                None,
                Some(json!({"token": "vf_enroll_bad", "hostname": format!("h{i}")})),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let resp = reqwest::Client::new()
        .post(api.url("/api/agent/enroll"))
        .json(&json!({"token": enroll, "hostname": "late"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    common::assert_retry_after_left(resp.headers(), started);
}

/// 10,000 bogus tokens — malformed, unknown lookup ids, and a real node's lookup id with wrong
/// secrets — are refused with 401 and cost no bcrypt, a real agent keeps being served, and
/// only a check that would need bcrypt (a token still stored as a bcrypt hash) is refused once
/// the address is over its failure budget.
#[tokio::test]
async fn a_flood_of_bogus_tokens_costs_no_bcrypt_and_real_agents_stay_served() {
    let budget = 20;
    let (db, api) = common::start_with(|s| s.api.auth_failures_per_minute = budget).await;
    let (_, enroll) = api.create_environment("prod").await;
    let (_, token) = api.enroll(&enroll, "real").await;
    let (legacy_id, legacy) = api.enroll(&enroll, "enrolled-long-ago").await;
    let secret = legacy.rsplit('_').next().unwrap().to_owned();
    sqlx::query("UPDATE nodes SET token_hash = $2, token_digest = NULL WHERE id = $1::uuid")
        .bind(&legacy_id)
        .bind(
            flotilla_shared::auth::tokens::hash_secret(secret, 4)
                .await
                .unwrap(),
        )
        .execute(&db.pool)
        .await
        .unwrap();
    let counters = api.state.node_auth.counters().clone();

    let lookup = &token["vf_node_".len().."vf_node_".len() + 16];
    let bogus: Vec<String> = (0..10_000)
        .map(|i| match i % 3 {
            0 => format!("garbage-{i}"),
            1 => {
                flotilla_shared::auth::tokens::issue(flotilla_shared::auth::tokens::NODE_PREFIX)
                    .token
            }
            _ => format!("vf_node_{lookup}_{:048x}", i),
        })
        .collect();
    let http = reqwest::Client::new();
    let url = api.url("/api/agent/config");
    let statuses: Vec<StatusCode> = futures_util::stream::iter(bogus)
        .map(|t| {
            let http = http.clone();
            let url = url.clone();
            async move { http.get(url).bearer_auth(t).send().await.unwrap().status() }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED));
    assert_eq!(counters.bcrypt_verifications.load(Ordering::SeqCst), 0);
    // The real agent from the same address is still served.
    assert_eq!(api.agent_config(&token).await.status, StatusCode::OK);
    // A token that still needs bcrypt waits until the address is within its budget again.
    let r = api.agent_config(&legacy).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(counters.bcrypt_verifications.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn no_log_line_contains_a_token_or_a_hash() {
    let db = flotilla_testkit::db::fresh().await;
    let admin = "log-test-admin-8e1a3c5f7b9d2e4a6c8f0b1d3e5a7c9f2b4d6e8a0c1f3b5d";
    let env = [
        ("FLOTILLA__DATABASE__URL", db.url.as_str()),
        ("FLOTILLA__REDIS__URL", &flotilla_testkit::redis_url()),
        ("FLOTILLA__API__LISTEN", "127.0.0.1:0"),
        ("FLOTILLA__API__BOOTSTRAP_ADMIN_TOKEN", admin),
        ("FLOTILLA__AUTH__BCRYPT_COST", "4"),
        ("FLOTILLA__LOG__LEVEL", "debug"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let proc = flotilla_testkit::process::start(env!("CARGO_BIN_EXE_flotilla-api"), &env).await;
    let base = format!("http://{}", proc.addr);
    let http = reqwest::Client::new();
    let created: serde_json::Value = http
        .post(format!("{base}/api/v1/environments"))
        .bearer_auth(admin)
        .json(&json!({"name": "prod"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let enroll = created["enrollmentToken"].as_str().unwrap().to_owned();
    let node: serde_json::Value = http
        .post(format!("{base}/api/agent/enroll"))
        .json(&json!({"token": enroll, "hostname": "h"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = node["nodeToken"].as_str().unwrap().to_owned();
    http.get(format!("{base}/api/agent/config"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    http.post(format!("{base}/api/agent/heartbeat"))
        .bearer_auth(&token)
        .json(&json!({"pipelines": []}))
        .send()
        .await
        .unwrap();
    // Failures log too; none of them may echo what was sent.
    http.get(format!("{base}/api/agent/config"))
        .bearer_auth(format!("{token}x"))
        .send()
        .await
        .unwrap();
    http.post(format!("{base}/session"))
        .form(&[("token", admin)])
        .send()
        .await
        .unwrap();
    let hashes: Vec<String> = sqlx::query_scalar("SELECT encode(token_digest, 'hex') FROM nodes UNION ALL SELECT token_hash FROM operator_tokens UNION ALL SELECT enrollment_token_hash FROM environments")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let logs = proc.output();
    assert!(logs.contains("node enrolled"), "logs were captured: {logs}");
    let secret_of = |t: &str| t.rsplit('_').next().unwrap().to_owned();
    for secret in [admin.to_owned(), secret_of(&enroll), secret_of(&token)] {
        assert!(!logs.contains(&secret), "a token leaked into the logs");
    }
    for hash in hashes {
        assert!(!logs.contains(&hash), "a hash leaked into the logs");
    }
    assert!(!logs.contains("$2b$"));
}

/// A client that never finishes its request head is cut off after `api.header_read_timeout_ms`;
/// one that stalls in its body gets 408 after `api.request_timeout_ms`; neither, even fifty at
/// once, delays a real agent.
#[tokio::test]
async fn slow_clients_are_cut_off_and_real_agents_stay_served() {
    use flotilla_testkit::slow_client::send_and_stall;
    use std::time::Duration;
    let (_db, api) = common::start_with(|s| {
        s.api.header_read_timeout_ms = 300;
        s.api.request_timeout_ms = 500;
    })
    .await;
    let (_, enroll) = api.create_environment("prod").await;
    let (_, token) = api.enroll(&enroll, "real").await;

    let head = b"GET /api/agent/config HTTP/1.1\r\nHost: flotilla\r\nX-Slow: ";
    // An authenticated agent whose heartbeat body stops after its first bytes.
    let body = format!(
        "POST /api/agent/heartbeat HTTP/1.1\r\nHost: flotilla\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"pipelines\":"
    );
    let heads = futures_util::future::join_all((0..50).map(|_| send_and_stall(api.addr, head)));
    let real = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        api.agent_config(&token).await.status
    };
    let (heads, stalled_body, real) =
        tokio::join!(heads, send_and_stall(api.addr, body.as_bytes()), real);

    assert_eq!(real, StatusCode::OK, "a real agent is served meanwhile");
    for stalled in &heads {
        stalled.assert_cut_off_by(Duration::from_millis(300));
    }
    assert!(
        stalled_body.answer.starts_with("HTTP/1.1 408"),
        "a stalled body gets 408: {stalled_body:?}"
    );
    assert!(stalled_body.closed_after >= Duration::from_millis(500));
}
