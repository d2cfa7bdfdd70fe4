//! Operator sign-in and sessions under attack: the failure budget and the bcrypt cap on
//! sign-in, warm tokens that strangers cannot lock out, forged cross-site writes, server-side
//! sessions, the first admin token, and live streams that end at revocation.

use crate::common;

use flotilla_testkit::api::{ApiHandle, ADMIN_TOKEN};
use flotilla_testkit::sse_client::{Item, SseClient};
use flotilla_testkit::within;
use reqwest::{redirect, Method, StatusCode};
use serde_json::json;
use std::time::Duration;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in from the page (as a browser would send it: same-origin fetch metadata).
async fn sign_in(api: &ApiHandle, token: &str) -> reqwest::Response {
    within(
        "sign-in",
        client()
            .post(api.url("/session"))
            .header("sec-fetch-site", "same-origin")
            .form(&[("token", token)])
            .send(),
    )
    .await
    .unwrap()
}

/// The `name=value` of the session cookie a sign-in set.
fn session_cookie(resp: &reqwest::Response) -> String {
    let set = resp.headers()["set-cookie"].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

/// The same token with another secret: its lookup id finds the row, so checking it costs bcrypt.
fn wrong_secret(token: &str) -> String {
    let (head, secret) = token.rsplit_once('_').unwrap();
    let flipped: String = secret
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    format!("{head}_{flipped}")
}

/// `GET /api/v1/me` with a session cookie (`name=value`).
async fn me_by_cookie(api: &ApiHandle, cookie: &str) -> StatusCode {
    let request = client().get(api.url("/api/v1/me")).header("cookie", cookie);
    within("/api/v1/me", request.send()).await.unwrap().status()
}

/// Signs out from the page with a session cookie.
async fn sign_out(api: &ApiHandle, cookie: &str) -> reqwest::Response {
    let request = client()
        .post(api.url("/session/logout"))
        .header("sec-fetch-site", "same-origin")
        .header("cookie", cookie);
    within("sign-out", request.send()).await.unwrap()
}

async fn me(api: &ApiHandle, token: &str) -> StatusCode {
    api.call(Method::GET, "/api/v1/me", Some(token), None)
        .await
        .status
}

/// Sign-in spends the address's failure budget like any bearer check: once it is spent, a
/// guess that would cost bcrypt gets 429 (no bcrypt run), while a token verified before (warm)
/// keeps working by bearer and by sign-in.
#[tokio::test]
async fn sign_in_spends_the_failure_budget_and_cannot_lock_out_a_warm_token() {
    let budget = 10;
    let (_db, api) = common::start_with(|s| s.api.auth_failures_per_minute = budget).await;
    let (_, editor) = api.operator_token("editor").await;
    assert_eq!(me(&api, &editor).await, StatusCode::OK, "now warm");
    let guess = wrong_secret(&editor);
    // The address's window opens with the first wrong guess.
    let started = std::time::Instant::now();
    for i in 0..budget {
        let r = sign_in(&api, &guess).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "guess {i}");
    }
    let gate = api.state.node_auth.bcrypt_gate().clone();
    let runs = gate.runs();
    for _ in 0..20 {
        let r = sign_in(&api, &guess).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        common::assert_retry_after_left(r.headers(), started);
        assert_eq!(me(&api, &guess).await, StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(
        gate.runs(),
        runs,
        "an address over its budget costs no bcrypt"
    );
    // Bogus bearers (unknown lookups: no bcrypt) are refused with 401, never 429.
    assert_eq!(me(&api, "vf_op_bogus").await, StatusCode::UNAUTHORIZED);
    // The operator's own warm token, by bearer and by sign-in, from the same address.
    assert_eq!(me(&api, &editor).await, StatusCode::OK);
    assert_eq!(me(&api, ADMIN_TOKEN).await, StatusCode::OK);
    let signed_in = sign_in(&api, &editor).await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let cookie = session_cookie(&signed_in);
    assert_eq!(me_by_cookie(&api, &cookie).await, StatusCode::OK);
}

/// Bogus bearers, session cookies and node tokens from one address cost no slow hash and spend
/// no budget: afterwards the admin's token and cookie work, and so does a sign-in or a bearer
/// check with a cold token (never verified on this api, so it needs bcrypt).
#[tokio::test]
async fn strangers_on_the_same_address_cannot_lock_out_an_operator() {
    let (_db, api) = common::start_with(|s| s.api.auth_failures_per_minute = 10).await;
    let (_, cold_sign_in) = api.operator_token("editor").await;
    let (_, cold_bearer) = api.operator_token("viewer").await;
    let signed_in = sign_in(&api, ADMIN_TOKEN).await;
    let cookie = session_cookie(&signed_in);
    for i in 0..150 {
        let bogus = format!("not-a-token-{i}");
        assert_eq!(me(&api, &bogus).await, StatusCode::UNAUTHORIZED);
        let bogus = format!("vf_op_{:016x}_{}", i, "0".repeat(48));
        assert_eq!(me(&api, &bogus).await, StatusCode::UNAUTHORIZED);
        let bogus = format!("flotilla_session={}", "0".repeat(64));
        assert_eq!(me_by_cookie(&api, &bogus).await, StatusCode::UNAUTHORIZED);
        let bogus = format!("vf_node_{:016x}_{}", i, "0".repeat(48));
        assert_eq!(
            api.agent_config(&bogus).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(me(&api, ADMIN_TOKEN).await, StatusCode::OK);
    assert_eq!(me_by_cookie(&api, &cookie).await, StatusCode::OK);
    assert_eq!(
        sign_in(&api, &cold_sign_in).await.status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(me(&api, &cold_bearer).await, StatusCode::OK);
}

/// Operator bcrypt waits at the process's one bcrypt gate: with one permit and no queueing,
/// concurrent guesses that each need bcrypt are turned away with 503, and concurrent checks
/// of one cold token share a single bcrypt run.
#[tokio::test]
async fn operator_bcrypt_is_capped_and_identical_checks_share_one_run() {
    let (_db, api) = common::start_with(|s| {
        s.auth.max_concurrent_bcrypt = 1;
        s.auth.bcrypt_queue_timeout_ms = 1;
        s.auth.bcrypt_cost = 8;
        s.api.auth_failures_per_minute = 10_000;
    })
    .await;
    let (_, viewer) = api.operator_token("viewer").await;
    let guesses = (0..12).map(|i| {
        let guess = format!("{}{i:02}", &wrong_secret(&viewer)[..viewer.len() - 2]);
        let api = &api;
        async move { me(api, &guess).await }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    assert!(
        statuses.contains(&StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    assert!(statuses.iter().all(|s| matches!(
        *s,
        StatusCode::UNAUTHORIZED | StatusCode::SERVICE_UNAVAILABLE
    )));

    let (_, cold) = api.operator_token("viewer").await;
    let gate = api.state.node_auth.bcrypt_gate().clone();
    let runs = gate.runs();
    let checks = (0..12).map(|_| me(&api, &cold));
    let statuses = futures_util::future::join_all(checks).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(gate.runs() - runs, 1, "one bcrypt run for twelve checks");
}

/// A cookie-authenticated write must be same-origin JSON; forged forms, `text/plain` posts and
/// cross-site requests get 403, and so does a cross-site sign-in (login forgery).
#[tokio::test]
async fn cookie_writes_and_sign_in_refuse_cross_site_requests() {
    let (_db, api) = common::start().await;
    let (_, enroll) = api.create_environment("prod").await;
    let (node, _) = api.enroll(&enroll, "h1").await;
    let cookie = session_cookie(&sign_in(&api, ADMIN_TOKEN).await);
    let url = |path: &str| api.url(&format!("/api/v1/fleet/{node}/{path}"));
    let cookie = cookie.as_str();
    let send = move |req: reqwest::RequestBuilder| async move {
        within("a write", req.header("cookie", cookie).send())
            .await
            .unwrap()
            .status()
    };
    let http = client();
    // What a form or a no-cors fetch on another site can send.
    let restart = send(
        http.post(url("actions"))
            .header("content-type", "text/plain")
            .body(r#"{"type":"restart"}"#),
    );
    assert_eq!(restart.await, StatusCode::FORBIDDEN);
    let form = send(
        http.post(url("maintenance"))
            .header("sec-fetch-site", "same-origin")
            .form(&[("enabled", "true")]),
    );
    assert_eq!(form.await, StatusCode::FORBIDDEN);
    let cross = send(
        http.post(url("maintenance"))
            .header("sec-fetch-site", "cross-site")
            .json(&json!({"enabled": true})),
    );
    assert_eq!(cross.await, StatusCode::FORBIDDEN);
    let other_origin = send(
        http.post(url("maintenance"))
            .header("origin", "http://evil.example")
            .json(&json!({"enabled": true})),
    );
    assert_eq!(other_origin.await, StatusCode::FORBIDDEN);
    let deleted = send(http.delete(url("").trim_end_matches('/').to_owned()));
    assert_eq!(deleted.await, StatusCode::FORBIDDEN);
    let maintenance: bool = sqlx::query_scalar("SELECT maintenance FROM nodes WHERE id = $1::uuid")
        .bind(&node)
        .fetch_one(&api.state.pool)
        .await
        .unwrap();
    assert!(!maintenance, "no forged write took effect");
    // The page's own requests pass, by fetch metadata or by an Origin naming this host.
    let same = send(
        http.post(url("maintenance"))
            .header("sec-fetch-site", "same-origin")
            .json(&json!({"enabled": true})),
    );
    assert_eq!(same.await, StatusCode::OK);
    let by_origin = send(
        http.post(url("maintenance"))
            .header("origin", format!("http://{}", api.addr))
            .json(&json!({"enabled": false})),
    );
    assert_eq!(by_origin.await, StatusCode::OK);
    // A bearer token needs neither (no browser sends one by itself).
    let bearer = api
        .admin(
            Method::POST,
            &format!("/api/v1/fleet/{node}/maintenance"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(bearer.status, StatusCode::OK);

    for forged in [
        http.post(api.url("/session"))
            .header("sec-fetch-site", "cross-site")
            .form(&[("token", ADMIN_TOKEN)]),
        http.post(api.url("/session"))
            .header("origin", "http://evil.example")
            .form(&[("token", ADMIN_TOKEN)]),
        http.post(api.url("/session"))
            .form(&[("token", ADMIN_TOKEN)]),
    ] {
        let r = within("a forged sign-in", forged.send()).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.headers().get("set-cookie").is_none());
    }
}

/// The cookie holds a random session id, not the token; the session lives on the server and
/// ends at sign-out, at expiry and at the token's revocation, whatever the browser replays.
#[tokio::test]
async fn sessions_are_server_side_and_end_on_the_server() {
    let (_db, api) = common::start().await;
    let first = session_cookie(&sign_in(&api, ADMIN_TOKEN).await);
    let second = session_cookie(&sign_in(&api, ADMIN_TOKEN).await);
    assert_ne!(first, second, "each sign-in opens its own session");
    let value = first.split_once('=').unwrap().1;
    assert_eq!(value.len(), 64);
    assert!(!value.contains(&hex::encode(ADMIN_TOKEN)) && !value.contains(ADMIN_TOKEN));
    assert_eq!(me_by_cookie(&api, &first).await, StatusCode::OK);

    assert_eq!(sign_out(&api, &first).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        me_by_cookie(&api, &first).await,
        StatusCode::UNAUTHORIZED,
        "signed out"
    );
    assert_eq!(me_by_cookie(&api, &second).await, StatusCode::OK);

    sqlx::query("UPDATE operator_sessions SET expires_at = now() - interval '1 second'")
        .execute(&api.state.pool)
        .await
        .unwrap();
    assert_eq!(
        me_by_cookie(&api, &second).await,
        StatusCode::UNAUTHORIZED,
        "expired"
    );

    let (editor_id, editor) = api.operator_token("editor").await;
    let third = session_cookie(&sign_in(&api, &editor).await);
    assert_eq!(me_by_cookie(&api, &third).await, StatusCode::OK);
    let revoked = api
        .admin(Method::DELETE, &format!("/api/v1/tokens/{editor_id}"), None)
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    assert_eq!(
        me_by_cookie(&api, &third).await,
        StatusCode::UNAUTHORIZED,
        "revoked"
    );
}

/// Waits for the end of a live stream that may still send messages before it.
async fn ends_within(stream: &mut SseClient, limit: Duration) -> bool {
    let end = async {
        while let Some(item) = stream.next_item().await {
            if let Item::Message { .. } = item {
                continue;
            }
        }
    };
    tokio::time::timeout(limit, end).await.is_ok()
}

/// Open live streams (fleet events by token and by session, a node's log lines, a tap's
/// events) end within a second of their token's revocation or their session's sign-out, on
/// this api and on another one, with a re-check interval far longer than that.
#[tokio::test]
async fn live_streams_end_within_a_second_of_revocation() {
    let (db, api) = common::start_with(|s| s.api.live_recheck_ms = 600_000).await;
    let mut settings = flotilla_testkit::settings(&db.url, &flotilla_testkit::redis_url());
    settings.api.live_recheck_ms = 600_000;
    let other = flotilla_testkit::api::spawn(settings).await;
    let (environment, enroll) = api.create_environment("prod").await;
    let (node, _) = api.enroll(&enroll, "h1").await;
    let pipeline = api
        .create_pipeline(
            &environment,
            "p",
            &flotilla_testkit::vector_config("base"),
            json!({}),
        )
        .await;
    assert_eq!(api.deploy(&pipeline).await.status, StatusCode::OK);
    let (editor_id, editor) = api.operator_token("editor").await;
    let tap = api
        .call(
            Method::POST,
            "/api/v1/taps",
            Some(&editor),
            Some(json!({"nodeId": node, "pipelineId": pipeline, "componentId": "in"})),
        )
        .await;
    assert_eq!(tap.status, StatusCode::CREATED, "{}", tap.text);
    let tap = tap.body["requestId"].as_str().unwrap().to_owned();

    let open = |url: String| {
        let editor = editor.clone();
        async move { SseClient::open(&url, &editor).await.expect("stream opens") }
    };
    let mut streams = vec![
        open(api.url("/api/v1/fleet/events")).await,
        open(other.url("/api/v1/fleet/events")).await,
        open(api.url(&format!("/api/v1/fleet/{node}/logs"))).await,
        open(other.url(&format!("/api/v1/taps/{tap}/events"))).await,
    ];
    let cookie = session_cookie(&sign_in(&api, ADMIN_TOKEN).await);
    let mut by_session = SseClient::send(
        client()
            .get(other.url("/api/v1/fleet/events"))
            .header("cookie", &cookie),
    )
    .await
    .expect("stream opens");
    let _ = by_session.next_message().await; // the first resync: the stream is up
    for s in &mut streams {
        assert!(
            !ends_within(s, Duration::from_millis(100)).await,
            "still open"
        );
    }

    let revoked = api
        .admin(Method::DELETE, &format!("/api/v1/tokens/{editor_id}"), None)
        .await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT);
    for (i, s) in streams.iter_mut().enumerate() {
        assert!(
            ends_within(s, Duration::from_secs(1)).await,
            "stream {i} ended"
        );
    }
    assert!(!ends_within(&mut by_session, Duration::from_millis(100)).await);

    assert_eq!(
        sign_out(&api, &cookie).await.status(),
        StatusCode::SEE_OTHER
    );
    assert!(ends_within(&mut by_session, Duration::from_secs(1)).await);
}

/// With no notice at all (the row revoked behind the api's back, as when Redis was down), a
/// stream still ends at its next re-check.
#[tokio::test]
async fn a_live_stream_re_checks_its_token_at_each_keepalive() {
    let (_db, api) = common::start_with(|s| s.api.live_recheck_ms = 200).await;
    let (viewer_id, viewer) = api.operator_token("viewer").await;
    let mut stream = SseClient::open(&api.url("/api/v1/fleet/events"), &viewer)
        .await
        .expect("stream opens");
    let _ = stream.next_message().await;
    sqlx::query("UPDATE operator_tokens SET revoked = true WHERE id = $1::uuid")
        .bind(&viewer_id)
        .execute(&api.state.pool)
        .await
        .unwrap();
    assert!(ends_within(&mut stream, Duration::from_secs(5)).await);
}

fn process_env(db: &flotilla_testkit::db::TestDb, admin: Option<&str>) -> Vec<(String, String)> {
    let mut env = vec![
        ("FLOTILLA__DATABASE__URL", db.url.clone()),
        ("FLOTILLA__REDIS__URL", flotilla_testkit::redis_url()),
        ("FLOTILLA__API__LISTEN", "127.0.0.1:0".to_owned()),
        ("FLOTILLA__AUTH__BCRYPT_COST", "4".to_owned()),
    ];
    if let Some(admin) = admin {
        env.push(("FLOTILLA__API__BOOTSTRAP_ADMIN_TOKEN", admin.to_owned()));
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// The line a first start printed, if any: the token after the banner.
fn printed_token(output: &str) -> Option<String> {
    let banner = flotilla_api::auth::bootstrap::FIRST_ADMIN_BANNER;
    output
        .lines()
        .find_map(|l| l.strip_prefix(banner).map(str::to_owned))
}

/// The status of `GET path` on a process's address with a bearer token.
async fn bearer_status(addr: std::net::SocketAddr, path: &str, token: &str) -> StatusCode {
    let request = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .bearer_auth(token);
    within(path, request.send()).await.unwrap().status()
}

async fn admin_tokens(db: &flotilla_testkit::db::TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM operator_tokens WHERE role = 'admin' AND NOT revoked")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// With no bootstrap token, a first start issues an admin token and prints it once (a line of
/// its own on standard output, in no log line), even when two apis start at once; later
/// starts issue and print nothing.
#[tokio::test]
async fn a_first_start_prints_one_admin_token_once() {
    let db = flotilla_testkit::db::fresh().await;
    let binary = env!("CARGO_BIN_EXE_flotilla-api");
    let env = process_env(&db, None);
    let (mut one, mut two) = tokio::join!(
        flotilla_testkit::process::start(binary, &env),
        flotilla_testkit::process::start(binary, &env),
    );
    assert_eq!(admin_tokens(&db).await, 1, "one admin token between them");
    let printed: Vec<String> = [&one, &two]
        .iter()
        .filter_map(|p| printed_token(&p.output()))
        .collect();
    assert_eq!(printed.len(), 1, "printed by one of them");
    let token = printed[0].clone();
    assert!(token.starts_with("vf_op_"), "an issued operator token");
    let listed = bearer_status(two.addr, "/api/v1/tokens", &token).await;
    assert_eq!(listed, StatusCode::OK);
    let output = one.output() + &two.output();
    assert_eq!(
        output.matches(&token).count(),
        1,
        "printed once, never logged"
    );
    one.kill().await;
    two.kill().await;

    let mut again = flotilla_testkit::process::start(binary, &env).await;
    let me = bearer_status(again.addr, "/api/v1/me", &token).await;
    assert_eq!(me, StatusCode::OK, "the token survives restarts");
    assert!(printed_token(&again.output()).is_none());
    again.kill().await;
}

/// A bootstrap token installed by an earlier configuration (as releases that shipped
/// `flotilla-admin` as the default did) stops working once the setting is unset; a first
/// admin token takes its place.
#[tokio::test]
async fn an_unset_bootstrap_token_removes_the_one_installed_before() {
    let db = flotilla_testkit::db::fresh().await;
    let binary = env!("CARGO_BIN_EXE_flotilla-api");
    let env = process_env(&db, None);
    // The schema and the old default, as an earlier release left them.
    let mut setup = flotilla_testkit::process::start(binary, &env).await;
    setup.kill().await;
    sqlx::query("DELETE FROM operator_tokens")
        .execute(&db.pool)
        .await
        .unwrap();
    flotilla_api::auth::bootstrap::ensure_bootstrap(&db.pool, "flotilla-admin", 4)
        .await
        .unwrap();

    let mut api = flotilla_testkit::process::start(binary, &env).await;
    let old_default = bearer_status(api.addr, "/api/v1/me", "flotilla-admin").await;
    assert_eq!(old_default, StatusCode::UNAUTHORIZED);
    let token = printed_token(&api.output()).expect("a first admin token");
    assert_eq!(
        bearer_status(api.addr, "/api/v1/me", &token).await,
        StatusCode::OK
    );
    api.kill().await;
}

/// A guessable bootstrap token stops the api at start, saying how to make a good one.
#[tokio::test]
async fn a_guessable_bootstrap_token_stops_the_api() {
    let db = flotilla_testkit::db::fresh().await;
    for weak in ["flotilla-admin", "change-me", &"a".repeat(40)] {
        let out = within(
            "the api to refuse",
            tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla-api"))
                .envs(process_env(&db, Some(weak)))
                .output(),
        )
        .await
        .unwrap();
        assert!(!out.status.success(), "{weak} refused");
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("api.bootstrap_admin_token"), "{text}");
        assert!(text.contains("openssl rand -hex 32"), "{text}");
        assert!(!text.contains(weak), "the token is not echoed");
    }
}
