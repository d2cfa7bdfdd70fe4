//! The fleet page: sign-in through an HttpOnly cookie, role-dependent page, live events.

use crate::common;

use futures_util::StreamExt;
use reqwest::{redirect, StatusCode};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap()
}

async fn sign_in(api: &flotilla_testkit::api::ApiHandle, token: &str) -> reqwest::Response {
    client()
        .post(api.url("/session"))
        .header("sec-fetch-site", "same-origin")
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
}

fn session_cookie(resp: &reqwest::Response) -> String {
    let set = resp
        .headers()
        .get("set-cookie")
        .expect("a session cookie")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn signing_in_sets_an_http_only_cookie_and_shows_the_fleet() {
    let (_db, api) = common::start().await;
    let page = client().get(api.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("Operator token") && html.contains("<label for=\"token\""));

    let bad = sign_in(&api, "wrong").await;
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    assert!(bad.headers().get("set-cookie").is_none());

    let ok = sign_in(&api, flotilla_testkit::api::ADMIN_TOKEN).await;
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    assert_eq!(ok.headers()["location"], "/");
    let cookie = session_cookie(&ok);
    assert!(
        !cookie.contains(flotilla_testkit::api::ADMIN_TOKEN),
        "token is not stored verbatim"
    );

    let page = client()
        .get(api.url("/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"data-role="admin""#));
    let me = client()
        .get(api.url("/api/v1/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(
        me.json::<serde_json::Value>().await.unwrap()["role"],
        "admin"
    );

    let out = client()
        .post(api.url("/session/logout"))
        .header("sec-fetch-site", "same-origin")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert!(out.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
}

#[tokio::test]
async fn viewers_get_the_page_without_actions() {
    let (_db, api) = common::start().await;
    let r = api
        .admin(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(serde_json::json!({"name": "v", "role": "viewer"})),
        )
        .await;
    let viewer = r.body["token"].as_str().unwrap().to_owned();
    let cookie = session_cookie(&sign_in(&api, &viewer).await);
    let html = client()
        .get(api.url("/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(r#"data-role="viewer""#));
    // Actions are rendered only when the role is admin, and the api enforces it regardless.
    let r = client()
        .post(api.url("/api/v1/fleet/00000000-0000-0000-0000-000000000000/maintenance"))
        .header("cookie", &cookie)
        .json(&serde_json::json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_event_stream_relays_presence_and_heartbeats() {
    let (_db, api) = common::start().await;
    let (_, enroll) = api.create_environment("prod").await;
    let (node_id, token) = api.enroll(&enroll, "h").await;
    let cookie = session_cookie(&sign_in(&api, flotilla_testkit::api::ADMIN_TOKEN).await);
    flotilla_testkit::eventually(
        "fleet events relay subscribed",
        std::time::Duration::from_secs(5),
        || async { api.state.fleet_events.is_subscribed().then_some(()) },
    )
    .await;
    let resp = client()
        .get(api.url("/api/v1/fleet/events"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut sse = Sse {
        body: Box::pin(resp.bytes_stream()),
        seen: String::new(),
    };
    // A new stream starts with a resync; after that, events flow.
    sse.wait_for("resync").await;
    let event = flotilla_shared::channels::PresenceEvent {
        node_id: node_id.parse().unwrap(),
        connected: true,
        gateway_id: "gw-test".into(),
    };
    let redis = redis::Client::open(flotilla_testkit::redis_url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(flotilla_shared::channels::FLEET_EVENTS)
        .arg(serde_json::to_string(&event).unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();
    sse.wait_for("gw-test").await;
    api.call(
        reqwest::Method::POST,
        "/api/agent/heartbeat",
        Some(&token),
        // A heartbeat is announced when it changes what the fleet shows: here, a version.
        Some(serde_json::json!({"agentVersion": "1.0.0", "pipelines": []})),
    )
    .await;
    sse.wait_for(r#""kind":"heartbeat""#).await;
    assert!(sse.seen.contains(&node_id));

    // Without a session the stream is refused.
    let r = client()
        .get(api.url("/api/v1/fleet/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

type ByteStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// Reads a server-sent-events body until some text shows up.
struct Sse {
    body: ByteStream,
    seen: String,
}

impl Sse {
    async fn wait_for(&mut self, needle: &str) {
        flotilla_testkit::within(needle, async {
            while !self.seen.contains(needle) {
                let chunk = self.body.next().await.expect("stream open").unwrap();
                self.seen.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
    }
}
