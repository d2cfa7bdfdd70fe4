//! The current generation of VectorFlow agents (`../shared/DESIGN.md`, "Two agent
//! generations"): every shape they send, posted as they send it, and what is stored and shown.
//! A Redis subscription on a node's channel stands where a gateway holding its push channel
//! would be.

use crate::common;

use flotilla_testkit::api::{ApiHandle, ADMIN_TOKEN};
use flotilla_testkit::sse_client::SseClient;
use flotilla_testkit::within;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

/// What a gateway holding the node's push channel would receive.
struct NodeChannel(std::pin::Pin<Box<dyn futures_util::Stream<Item = redis::Msg> + Send>>);

impl NodeChannel {
    async fn subscribe(node_id: &str) -> Self {
        let client = redis::Client::open(flotilla_testkit::redis_url()).unwrap();
        let mut pubsub = within("subscribe", client.get_async_pubsub())
            .await
            .unwrap();
        within(
            "subscribe",
            pubsub.subscribe(format!("flotilla:node:{{{node_id}}}")),
        )
        .await
        .unwrap();
        Self(Box::pin(pubsub.into_on_message()))
    }

    /// The next frame pushed to the node.
    async fn next(&mut self) -> Value {
        let msg = within("a push", self.0.next()).await.expect("subscribed");
        serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap()
    }

    /// The next frame of `kind`, skipping others.
    async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.next().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }
}

/// An environment with one enrolled node and one pipeline deployed to it.
struct Fixture {
    api: ApiHandle,
    _db: flotilla_testkit::db::TestDb,
    node_id: String,
    token: String,
    pipeline: String,
}

async fn fixture() -> Fixture {
    let (db, api) = common::start().await;
    let (environment, enroll_token) = api.create_environment("prod").await;
    let (node_id, token) = api.enroll(&enroll_token, "h1").await;
    let pipeline = api
        .create_pipeline(
            &environment,
            "p",
            &flotilla_testkit::vector_config("base"),
            json!({}),
        )
        .await;
    assert_eq!(api.deploy(&pipeline).await.status, StatusCode::OK);
    Fixture {
        api,
        _db: db,
        node_id,
        token,
        pipeline,
    }
}

impl Fixture {
    async fn heartbeat(&self, body: Value) -> flotilla_testkit::api::Reply {
        self.api
            .call(
                Method::POST,
                "/api/agent/heartbeat",
                Some(&self.token),
                Some(body),
            )
            .await
    }

    async fn node(&self) -> Value {
        let r = self
            .api
            .admin(
                Method::GET,
                &format!("/api/v1/fleet/{}", self.node_id),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body
    }

    async fn samples(&self, body: Value) -> flotilla_testkit::api::Reply {
        self.api
            .call(
                Method::POST,
                "/api/agent/samples",
                Some(&self.token),
                Some(body),
            )
            .await
    }

    /// Starts a tap of `component` of `pipeline` on the node.
    async fn tap(&self, pipeline: &str, component: &str) -> flotilla_testkit::api::Reply {
        let body =
            json!({"nodeId": self.node_id, "pipelineId": pipeline, "componentId": component});
        self.api
            .admin(Method::POST, "/api/v1/taps", Some(body))
            .await
    }

    /// Starts a tap of `component` of the fixture's pipeline; its id.
    async fn start_tap(&self, component: &str) -> String {
        let r = self.tap(&self.pipeline, component).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body["requestId"].as_str().unwrap().to_owned()
    }

    /// The node's stored pending action.
    async fn pending_action(&self) -> Option<Value> {
        sqlx::query_scalar("SELECT pending_action FROM nodes WHERE id = $1::uuid")
            .bind(&self.node_id)
            .fetch_one(&self.api.state.pool)
            .await
            .unwrap()
    }

    async fn action(&self, body: Value) -> flotilla_testkit::api::Reply {
        self.api
            .admin(
                Method::POST,
                &format!("/api/v1/fleet/{}/actions", self.node_id),
                Some(body),
            )
            .await
    }
}

/// A current agent's heartbeat, every field of it.
fn current_heartbeat(pipeline: &str, status: &str) -> Value {
    json!({
        "agentVersion": "0.9.4", "vectorVersion": "0.47.0", "deploymentMode": "STANDALONE",
        "runningAs": "vector",
        "labels": {"region": "eu", "vf.io/os": "linux"},
        "hostMetrics": {"cpuPercent": 12.5, "memoryUsedBytes": 1024, "diskFreeBytes": 2048},
        "agentHealth": {"pollErrorsTotal": 0, "pushReconnectsTotal": 2, "heartbeatErrorsTotal": 0,
                        "pushConnected": true, "pipelinesRunning": 1, "uptimeSeconds": 60},
        "pipelines": [{
            "pipelineId": pipeline, "version": 1, "status": status, "pid": 7, "uptimeSeconds": 3,
            "eventsIn": 10, "eventsOut": 9, "errorsTotal": 1, "bytesIn": 100, "bytesOut": 90,
            "eventsDiscarded": 0, "utilization": 0.5, "configChecksum": "abc",
            "componentMetrics": [{"componentId": "in", "componentKind": "source", "receivedEvents": 10}]
        }]
    })
}

#[tokio::test]
async fn every_field_of_a_current_heartbeat_is_kept_and_shown() {
    let f = fixture().await;
    let r = f
        .heartbeat(current_heartbeat(&f.pipeline, "CRASH_LOOP"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!({"ok": true}));
    let node = f.node().await;
    // CRASH_LOOP is a pipeline's trouble, not the node's.
    assert_eq!(node["status"], "HEALTHY");
    assert_eq!(node["runningAs"], "vector");
    assert_eq!(node["deploymentMode"], "STANDALONE");
    assert_eq!(node["hostMetrics"]["cpuPercent"], 12.5);
    assert_eq!(node["agentHealth"]["pushReconnectsTotal"], 2);
    assert_eq!(node["labels"], json!({"region": "eu", "vf.io/os": "linux"}));
    let p = &node["pipelines"][0];
    assert_eq!(p["status"], "CRASH_LOOP");
    assert_eq!(p["metrics"]["eventsIn"], 10);
    assert_eq!(p["metrics"]["utilization"], 0.5);
    assert_eq!(p["componentMetrics"][0]["receivedEvents"], 10);
    // The listing leaves the reported metrics out.
    let list = f.api.admin(Method::GET, "/api/v1/fleet", None).await.body;
    assert!(list["nodes"][0].get("hostMetrics").is_none());
    assert_eq!(list["nodes"][0]["pipelines"][0]["status"], "CRASH_LOOP");
    // Counted as a crashed pipeline, like CRASHED.
    assert_eq!(list["nodes"][0]["crashedPipelines"], 1);
    assert_eq!(node["crashedPipelines"], 1);
}

#[tokio::test]
async fn one_odd_element_never_costs_the_request() {
    let f = fixture().await;
    let r = f
        .heartbeat(json!({
            "agentVersion": "0.9.4",
            "labels": {"ok": "yes", "number": 5, "": "empty key"},
            "pipelines": [
                {"pipelineId": "pipe-1", "version": 1, "status": "RUNNING"},
                {"pipelineId": "clx9k2v0b0000abcdqwerty", "version": 3, "status": "RUNNING"},
                {"pipelineId": uuid::Uuid::new_v4(), "version": 1, "status": "RUNNING"},
                {"version": 1, "status": "RUNNING"},
                "not even an object",
                {"pipelineId": f.pipeline, "version": "one", "status": "HIBERNATING", "futureField": [1]}
            ],
            "sampleResults": [{"requestId": "clx-old-request", "componentKey": "in", "events": []},
                              {"componentKey": "no request id"}],
            "somethingNew": {"x": 1}
        }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let node = f.node().await;
    assert_eq!(node["agentVersion"], "0.9.4");
    assert_eq!(node["labels"], json!({"ok": "yes"}));
    let pipelines = node["pipelines"].as_array().unwrap();
    assert_eq!(pipelines.len(), 1, "{pipelines:?}");
    assert_eq!(pipelines[0]["pipelineId"], json!(f.pipeline));
    // An unknown status is kept as given; a malformed version is 0.
    assert_eq!(pipelines[0]["status"], "HIBERNATING");
    assert_eq!(pipelines[0]["version"], 0);

    // A list longer than 1,000 is read up to its 1,000th entry, not refused.
    let mut long: Vec<Value> = (0..1000)
        .map(|i| json!({"pipelineId": format!("pipe-{i}"), "version": 1, "status": "RUNNING"}))
        .collect();
    long.push(json!({"pipelineId": f.pipeline, "version": 1, "status": "RUNNING"}));
    let r = f.heartbeat(json!({ "pipelines": long })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // The same from the samples endpoint: foreign request ids are skipped.
    let r = f
        .samples(json!({"results": [{"requestId": "pipe-1-sample", "componentKey": "in", "events": [{"a": 1}]},
                                    {"requestId": uuid::Uuid::new_v4(), "componentKey": "in"},
                                    {"requestId": 42}]}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // Only a body that is not a heartbeat at all is refused.
    for bad in [json!([1, 2]), json!({"pipelines": {"a": 1}}), json!("text")] {
        let r = f.heartbeat(bad.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
    }
    let r = f.samples(json!({"results": "none"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn enrollment_labels_apply_before_the_first_poll() {
    let (_db, api) = common::start().await;
    let (environment, enroll_token) = api.create_environment("prod").await;
    let pipeline = api
        .create_pipeline(
            &environment,
            "eu-only",
            &flotilla_testkit::vector_config("base"),
            json!({"region": "eu"}),
        )
        .await;
    api.deploy(&pipeline).await;
    let r = api
        .call(
            Method::POST,
            "/api/agent/enroll",
            None,
            Some(json!({"token": enroll_token, "hostname": "h", "labels": {"region": "eu", "bad": 1}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let token = r.body["nodeToken"].as_str().unwrap();
    let config = api.agent_config(token).await.body;
    assert_eq!(config["pipelines"][0]["pipelineId"], json!(pipeline));
    assert!(config["pushUrl"]
        .as_str()
        .unwrap()
        .ends_with("/api/agent/push"));
}

#[tokio::test]
async fn logs_are_kept_in_a_bounded_ring_shown_and_followed() {
    let f = fixture().await;
    let other_env = f.api.create_environment("other").await.0;
    let foreign = f
        .api
        .create_pipeline(
            &other_env,
            "x",
            &flotilla_testkit::vector_config("base"),
            json!({}),
        )
        .await;
    let post = |body: Value| {
        let api = &f.api;
        let token = f.token.clone();
        async move {
            api.call(Method::POST, "/api/agent/logs", Some(&token), Some(body))
                .await
        }
    };
    let r = post(json!([
        {"pipelineId": f.pipeline, "lines": ["started", "listening on 0.0.0.0:9000"]},
        {"pipelineId": foreign, "lines": ["not yours"]},
        {"pipelineId": "pipe-1", "lines": ["from another server"]},
        {"lines": ["no pipeline"]},
    ]))
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    f.heartbeat(current_heartbeat(&f.pipeline, "RUNNING")).await;
    let node = f.node().await;
    assert_eq!(
        node["pipelines"][0]["recentLogs"],
        json!(["started", "listening on 0.0.0.0:9000"])
    );

    // A live viewer gets the kept lines, then new ones as they come.
    let url = f.api.url(&format!(
        "/api/v1/fleet/{}/logs?pipelineId={}",
        f.node_id, f.pipeline
    ));
    let mut viewer = within("open the log stream", SseClient::open(&url, ADMIN_TOKEN))
        .await
        .unwrap();
    let kept = viewer.next_event("lines").await;
    assert_eq!(
        kept["lines"],
        json!(["started", "listening on 0.0.0.0:9000"])
    );
    post(json!([{"pipelineId": f.pipeline, "lines": ["a new line"]}])).await;
    let new = viewer.next_event("lines").await;
    assert_eq!(
        new,
        json!({"pipelineId": f.pipeline, "lines": ["a new line"]})
    );

    // An older agent's heartbeat repeats its recent lines: only the new ones are added.
    for lines in [json!(["a new line", "old-1"]), json!(["old-1", "old-2"])] {
        f.heartbeat(json!({"pipelines": [{"pipelineId": f.pipeline, "version": 1, "status": "RUNNING", "recentLogs": lines}]}))
            .await;
    }
    let node = f.node().await;
    assert_eq!(
        node["pipelines"][0]["recentLogs"],
        json!([
            "started",
            "listening on 0.0.0.0:9000",
            "a new line",
            "old-1",
            "old-2"
        ])
    );

    // The ring keeps the last 500 lines, each at most 4,096 bytes.
    let many: Vec<String> = (0..700).map(|i| format!("line {i}")).collect();
    post(json!([{"pipelineId": f.pipeline, "lines": many}])).await;
    post(json!([{"pipelineId": f.pipeline, "lines": ["x".repeat(10_000)]}])).await;
    let node = f.node().await;
    let logs = node["pipelines"][0]["recentLogs"].as_array().unwrap();
    assert_eq!(logs.len(), 500);
    assert_eq!(logs[0], "line 201");
    assert_eq!(logs[499].as_str().unwrap().len(), 4096);

    // A node gets 5 log requests a second.
    let mut sent = 0;
    loop {
        let r = post(json!([])).await;
        sent += 1;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(r.status, StatusCode::OK);
        assert!(sent < 500, "never refused");
    }

    // Not a list at all: 400. No token: 401.
    assert_eq!(
        post(json!({"pipelineId": f.pipeline})).await.status,
        StatusCode::BAD_REQUEST
    );
    let r = f
        .api
        .call(Method::POST, "/api/agent/logs", None, Some(json!([])))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Revoking the node drops its rings.
    let ring = format!("flotilla:logs:{{{}}}:{}", f.node_id, f.pipeline);
    let client = redis::Client::open(flotilla_testkit::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let exists = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        let ring = ring.clone();
        async move {
            redis::cmd("EXISTS")
                .arg(ring)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };
    assert_eq!(exists(&mut conn).await, 1);
    let r = f
        .api
        .admin(
            Method::DELETE,
            &format!("/api/v1/fleet/{}", f.node_id),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(exists(&mut conn).await, 0);
}

#[tokio::test]
async fn a_live_tap_relays_events_to_its_viewer_and_stops_both_ways() {
    let f = fixture().await;
    let mut channel = NodeChannel::subscribe(&f.node_id).await;
    let tap = f.start_tap("parse").await;
    let start = channel.next_of("tap_start").await;
    assert_eq!(
        (
            &start["requestId"],
            &start["pipelineId"],
            &start["componentId"]
        ),
        (&json!(tap), &json!(f.pipeline), &json!("parse"))
    );

    let url = f.api.url(&format!("/api/v1/taps/{tap}/events"));
    let mut viewer = within("open the tap", SseClient::open(&url, ADMIN_TOKEN))
        .await
        .unwrap();
    let started = viewer.next_event("started").await;
    assert_eq!(started["componentId"], "parse");

    let post = |token: String, body: Value| {
        let api = &f.api;
        async move {
            api.call(
                Method::POST,
                "/api/agent/tap-events",
                Some(&token),
                Some(body),
            )
            .await
        }
    };
    let batch = json!({"requestId": tap, "pipelineId": f.pipeline, "componentId": "parse",
                       "events": [{"message": "hello"}, {"message": "x".repeat(70_000)}]});
    let r = post(f.token.clone(), batch.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let got = viewer.next_event("events").await;
    assert_eq!(got["events"][0], json!({"message": "hello"}));
    assert_eq!(got["events"][1]["flotillaTruncated"], true);

    // Another node cannot post into this tap.
    let (_, enroll_token) = f.api.create_environment("b").await;
    let (_, stranger) = f.api.enroll(&enroll_token, "stranger").await;
    let forged = json!({"requestId": tap, "pipelineId": f.pipeline, "componentId": "parse",
                        "events": [{"message": "forged"}]});
    assert_eq!(post(stranger, forged).await.status, StatusCode::OK);
    let mine = json!({"requestId": tap, "pipelineId": f.pipeline, "componentId": "parse",
                      "events": [{"message": "second"}]});
    post(f.token.clone(), mine).await;
    let got = viewer.next_event("events").await;
    assert_eq!(got["events"], json!([{"message": "second"}]));

    // More than 20 batches in a second: 429.
    // (Sent back to back until one is refused: however slow the machine, some second sees
    // more than 20.)
    let mut sent = 0;
    loop {
        let r = post(f.token.clone(), batch.clone()).await;
        sent += 1;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(r.status, StatusCode::OK);
        assert!(sent < 500, "never refused");
    }

    // The operator stops it: the node gets tap_stop, the viewer `stopped`.
    let r = f
        .api
        .admin(Method::DELETE, &format!("/api/v1/taps/{tap}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(channel.next_of("tap_stop").await["requestId"], json!(tap));
    let stopped = viewer.next_event("stopped").await;
    assert_eq!(stopped["reason"], "stopped by an operator");
    assert!(viewer.ends_within(Duration::from_secs(5)).await);

    // Odd fields are read leniently: events that are not a list count as none.
    let odd = json!({"requestId": tap, "events": {"not": "a list"}, "status": 5, "reason": []});
    assert_eq!(post(f.token.clone(), odd).await.status, StatusCode::OK);

    // A batch for a tap that has ended tells the agent to stop it.
    post(f.token.clone(), json!({"requestId": tap, "events": [{}]})).await;
    assert_eq!(channel.next_of("tap_stop").await["requestId"], json!(tap));
    assert_eq!(
        f.api
            .admin(Method::DELETE, &format!("/api/v1/taps/{tap}"), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_tap_ends_when_the_agent_stops_it_or_its_last_viewer_leaves() {
    let f = fixture().await;
    let mut channel = NodeChannel::subscribe(&f.node_id).await;

    let tap = f.start_tap("in").await;
    let url = f.api.url(&format!("/api/v1/taps/{tap}/events"));
    let mut viewer = SseClient::open(&url, ADMIN_TOKEN).await.unwrap();
    viewer.next_event("started").await;
    f.api
        .call(
            Method::POST,
            "/api/agent/tap-events",
            Some(&f.token),
            Some(
                json!({"requestId": tap, "pipelineId": f.pipeline, "componentId": "in",
                        "status": "stopped", "reason": "pipeline restarted"}),
            ),
        )
        .await;
    let stopped = viewer.next_event("stopped").await;
    assert_eq!(stopped["reason"], "pipeline restarted");

    let tap = f.start_tap("in").await;
    let url = f.api.url(&format!("/api/v1/taps/{tap}/events"));
    let mut viewer = SseClient::open(&url, ADMIN_TOKEN).await.unwrap();
    viewer.next_event("started").await;
    drop(viewer);
    loop {
        let frame = channel.next_of("tap_stop").await;
        if frame["requestId"] == json!(tap) {
            break;
        }
    }

    // Taps are for a node's own environment's pipelines.
    let other_env = f.api.create_environment("other").await.0;
    let foreign = f
        .api
        .create_pipeline(
            &other_env,
            "x",
            &flotilla_testkit::vector_config("base"),
            json!({}),
        )
        .await;
    assert_eq!(f.tap(&foreign, "in").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_generation_gets_a_restart_it_can_act_on() {
    let f = fixture().await;
    // Not known as a current agent yet: the restart waits in the config (with its pipeline)
    // and is pushed as a hint.
    let mut channel = NodeChannel::subscribe(&f.node_id).await;
    let r = f
        .action(json!({"type": "restart", "pipelineId": f.pipeline}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let hint = channel.next_of("action").await;
    assert_eq!(
        (&hint["action"], &hint["pipelineId"]),
        (&json!("restart"), &json!(f.pipeline))
    );
    let config = f.api.agent_config(&f.token).await.body;
    assert_eq!(
        config["pendingAction"],
        json!({"type": "restart", "pipelineId": f.pipeline})
    );
    assert!(f
        .api
        .agent_config(&f.token)
        .await
        .body
        .get("pendingAction")
        .is_none());

    // A current agent (its heartbeat carries agentHealth) gets one push per pipeline and no
    // pending action it cannot read.
    f.heartbeat(current_heartbeat(&f.pipeline, "RUNNING")).await;
    let r = f.action(json!({"type": "restart"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.body["pendingAction"], Value::Null);
    let push = channel.next_of("action").await;
    assert_eq!(
        (&push["action"], &push["pipelineId"]),
        (&json!("restart"), &json!(f.pipeline))
    );
    assert!(f
        .api
        .agent_config(&f.token)
        .await
        .body
        .get("pendingAction")
        .is_none());

    // While its push channel is down the restart is kept (never handed to it in the config)
    // and pushed again by its polls until a gateway receives it.
    drop(channel);
    let r = f.action(json!({"type": "restart"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.body["pendingAction"]["type"], "restart");
    assert!(f
        .api
        .agent_config(&f.token)
        .await
        .body
        .get("pendingAction")
        .is_none());
    assert_eq!(f.pending_action().await.unwrap()["type"], "restart");
    let mut channel = NodeChannel::subscribe(&f.node_id).await;
    assert!(f
        .api
        .agent_config(&f.token)
        .await
        .body
        .get("pendingAction")
        .is_none());
    let push = channel.next_of("action").await;
    assert_eq!(push["pipelineId"], json!(f.pipeline));
    assert!(f.pending_action().await.is_none());

    // A pipeline of another environment, or not a pipeline id at all: 422.
    for p in [json!(uuid::Uuid::new_v4()), json!("pipe-1")] {
        let r = f.action(json!({"type": "restart", "pipelineId": p})).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    }
}

#[tokio::test]
async fn self_update_takes_both_checksum_forms_a_signature_and_refuses_docker() {
    let f = fixture().await;
    let hex = "AB".repeat(32);
    let signature = base64_of(&[7u8; 64]);
    let mut channel = NodeChannel::subscribe(&f.node_id).await;
    let r = f
        .action(json!({"type": "self_update", "targetVersion": "2.0.0",
                       "downloadUrl": "https://example.com/agent", "checksum": format!("sha256:{hex}"),
                       "signature": signature}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let push = channel.next_of("action").await;
    assert_eq!(push["checksum"], json!(hex.to_lowercase()));
    assert_eq!(push["signature"], json!(signature));
    let pending = &f.api.agent_config(&f.token).await.body["pendingAction"];
    assert_eq!(pending["checksum"], json!(hex.to_lowercase()));
    assert_eq!(pending["signature"], json!(signature));

    let bad = [
        json!({"checksum": "sha256:abc"}),
        json!({"checksum": hex, "signature": "not base64!"}),
        json!({"checksum": hex, "signature": base64_of(&[1u8; 10])}),
    ];
    for extra in bad {
        let mut body = json!({"type": "self_update", "targetVersion": "2.0.0", "downloadUrl": "https://example.com/agent"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let r = f.action(body).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    }

    f.heartbeat(json!({"deploymentMode": "DOCKER", "pipelines": []}))
        .await;
    let r = f
        .action(json!({"type": "self_update", "targetVersion": "2.0.0",
                       "downloadUrl": "https://example.com/agent", "checksum": hex}))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(r.body["error"].as_str().unwrap().contains("Docker"));
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn a_sample_made_while_a_pipeline_starts_is_pushed_when_it_runs() {
    let f = fixture().await;
    f.heartbeat(current_heartbeat(&f.pipeline, "STARTING"))
        .await;
    let r = f
        .api
        .admin(
            Method::POST,
            &format!("/api/v1/pipelines/{}/samples", f.pipeline),
            Some(json!({"componentKeys": ["in"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["notifiedNodes"], 0);
    let request = r.body["requestId"].clone();
    let mut channel = NodeChannel::subscribe(&f.node_id).await;
    f.heartbeat(current_heartbeat(&f.pipeline, "RUNNING")).await;
    let push = channel.next_of("sample_request").await;
    assert_eq!(push["requestId"], request);
    assert_eq!(push["componentKeys"], json!(["in"]));
    // Only on the change to RUNNING, not on every heartbeat.
    f.heartbeat(current_heartbeat(&f.pipeline, "RUNNING")).await;
    f.action(json!({"type": "restart", "pipelineId": f.pipeline}))
        .await;
    assert_eq!(channel.next().await["type"], "action");
}

/// Subscribers of a Redis channel.
async fn subscribers(channel: &str) -> i64 {
    let client = redis::Client::open(flotilla_testkit::redis_url()).unwrap();
    let mut conn = within("redis", client.get_multiplexed_async_connection())
        .await
        .unwrap();
    let (_, n): (String, i64) = within(
        "numsub",
        redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut conn),
    )
    .await
    .unwrap();
    n
}

#[tokio::test]
async fn a_live_viewer_that_stops_reading_is_cut_loose() {
    use tokio::io::AsyncWriteExt;
    let f = fixture().await;
    let channel = format!("flotilla:logs:{{{}}}", f.node_id);
    // A viewer that sends its request and never reads a byte of the answer.
    let mut stalled = within("connect", tokio::net::TcpStream::connect(f.api.addr))
        .await
        .unwrap();
    let request = format!(
        "GET /api/v1/fleet/{}/logs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n",
        f.node_id
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    flotilla_testkit::eventually("the viewer subscribed", Duration::from_secs(5), || async {
        (subscribers(&channel).await == 1).then_some(())
    })
    .await;
    // Far more than the socket buffers and the viewer's 8 MiB allowance.
    let client = redis::Client::open(flotilla_testkit::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let line = "x".repeat(1024 * 1024);
    let batch = json!({"pipelineId": f.pipeline, "lines": [line]}).to_string();
    for _ in 0..40 {
        let _: i64 = within(
            "publish",
            redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(&batch)
                .query_async(&mut conn),
        )
        .await
        .unwrap();
    }
    flotilla_testkit::eventually("the stream cut loose", Duration::from_secs(10), || async {
        (subscribers(&channel).await == 0).then_some(())
    })
    .await;
    drop(stalled);
}
