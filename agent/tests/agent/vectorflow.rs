//! The agent against a stand-in for a current VectorFlow server (SSE generation): cuid ids, a
//! config with no `websocketUrl` but a `pushUrl`, the push stream at `/api/agent/push` framed
//! as VectorFlow frames it, and the logs and tap-events endpoints. Each endpoint records what
//! it receives.

use crate::common::{alive, eventually, fast_tuning, init_logs, Sandbox, TestAgent};
use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use flotilla_agent::Config;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const NODE_TOKEN: &str = "vf_node_clxnode0000stub";
const PIPELINE_A: &str = "clx9k2v0b0000abcd";
const PIPELINE_B: &str = "clx9k2v0b0001efgh";

/// What the stub received, and what it serves.
#[derive(Default)]
struct Recorded {
    enrolls: Vec<Value>,
    polls: usize,
    heartbeats: Vec<Value>,
    logs: Vec<Value>,
    tap_events: Vec<Value>,
    /// The URI (path and query) of each push stream opened.
    streams: Vec<String>,
    /// The open push stream.
    stream: Option<mpsc::UnboundedSender<Bytes>>,
    /// The config served.
    pipelines: Vec<Value>,
    push_url: Option<String>,
}

#[derive(Clone, Default)]
struct Stub(Arc<Mutex<Recorded>>);

impl Stub {
    fn with<T>(&self, f: impl FnOnce(&mut Recorded) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }

    /// Pushes a message the way VectorFlow does: `event: <type>` and `data: <json>`.
    fn push(&self, message: Value) {
        let frame = format!(
            "event: {}\ndata: {message}\n\n",
            message["type"].as_str().unwrap()
        );
        self.with(|r| {
            let stream = r.stream.as_ref().expect("a push stream is open");
            stream.send(Bytes::from(frame)).expect("stream open");
        });
    }

    /// Waits until the recorded state satisfies `check`.
    async fn until<T>(&self, what: &str, check: impl Fn(&Recorded) -> Option<T>) -> T {
        eventually(what, Duration::from_secs(10), || {
            let found = self.with(|r| check(r));
            async move { found }
        })
        .await
    }

    /// Serves the stub on a fresh port; returns its base URL.
    async fn serve(self) -> String {
        let app = Router::new()
            .route("/api/agent/enroll", post(enroll))
            .route("/api/agent/config", get(config))
            .route("/api/agent/heartbeat", post(heartbeat))
            .route("/api/agent/logs", post(logs))
            .route("/api/agent/tap-events", post(tap_events))
            .route("/api/agent/push", get(push))
            .with_state(self);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {NODE_TOKEN}"))
}

async fn enroll(State(stub): State<Stub>, Json(body): Json<Value>) -> Json<Value> {
    stub.with(|r| r.enrolls.push(body));
    Json(json!({
        "nodeId": "clxnode0000stub",
        "nodeToken": NODE_TOKEN,
        "environmentId": "clxenv00000stub",
        "environmentName": "production",
    }))
}

async fn config(State(stub): State<Stub>, headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let body = stub.with(|r| {
        r.polls += 1;
        // No websocketUrl: this server pushes only over SSE.
        let mut body = json!({
            "pipelines": r.pipelines,
            "pollIntervalMs": 60_000,
            "secretBackend": "BUILTIN",
        });
        if let Some(url) = &r.push_url {
            body["pushUrl"] = json!(url);
        }
        body
    });
    Json(body).into_response()
}

async fn heartbeat(State(stub): State<Stub>, Json(body): Json<Value>) -> Json<Value> {
    stub.with(|r| r.heartbeats.push(body));
    Json(json!({ "ok": true }))
}

async fn logs(State(stub): State<Stub>, Json(body): Json<Vec<Value>>) -> Json<Value> {
    stub.with(|r| r.logs.extend(body));
    Json(json!({ "ok": true }))
}

async fn tap_events(State(stub): State<Stub>, Json(body): Json<Value>) -> Json<Value> {
    stub.with(|r| r.tap_events.push(body));
    Json(json!({ "ok": true }))
}

/// `GET /api/agent/push`: `: connected`, then the pushed messages, with a `: keepalive`
/// comment every 200 ms (VectorFlow: 30 s).
async fn push(State(stub): State<Stub>, uri: OriginalUri, headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return (StatusCode::UNAUTHORIZED, "unauthorized").into_response();
    }
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    tx.send(Bytes::from_static(b": connected\n\n")).unwrap();
    // Weak, so dropping the recorded sender ends the stream.
    let keepalive = tx.downgrade();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Some(tx) = keepalive.upgrade() else {
                return;
            };
            if tx.send(Bytes::from_static(b": keepalive\n\n")).is_err() {
                return;
            }
        }
    });
    stub.with(|r| {
        r.streams.push(uri.0.to_string());
        r.stream = Some(tx);
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        let bytes = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(bytes), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache, no-transform")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(body))
        .unwrap()
}

fn pipeline(id: &str, marker: &str) -> Value {
    json!({
        "pipelineId": id,
        "pipelineName": format!("pipeline-{marker}"),
        "version": 1,
        "configYaml": format!("sources:\n  in:\n    type: demo_logs # {marker}\n"),
        "checksum": format!("sha-{marker}"),
    })
}

fn agent_config(url: &str, sandbox: &Sandbox) -> Config {
    let mut config = Config::new(reqwest::Url::parse(url).unwrap(), &sandbox.data);
    config.enrollment_token = Some(flotilla_shared::secret::Secret::new("vf_enroll_stub"));
    config.vector_bin = sandbox.vector.clone();
    config.labels = [("region".to_owned(), "eu".to_owned())].into();
    config.tuning = fast_tuning();
    config.tuning.live_tap_max = Duration::from_millis(1500);
    config
}

/// The pid running the pipeline whose config carries `marker`.
fn pid_of(sandbox: &Sandbox, marker: &str) -> Option<u32> {
    sandbox
        .running()
        .into_iter()
        .find(|(_, config)| config.contains(&format!("# {marker}\n")))
        .map(|(pid, _)| pid)
}

/// The tap-events bodies of one tap.
fn tap_bodies(r: &Recorded, request_id: &str) -> Vec<Value> {
    r.tap_events
        .iter()
        .filter(|b| b["requestId"] == request_id)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_works_against_a_current_vectorflow_server() {
    init_logs();
    let stub = Stub::default();
    let url = stub.clone().serve().await;
    stub.with(|r| {
        r.pipelines = vec![pipeline(PIPELINE_A, "a")];
        // Same origin as VF_URL: used as given.
        r.push_url = Some(format!("{url}/api/agent/push?via=pushUrl"));
    });
    let sandbox = Sandbox::new();
    let agent = TestAgent::start(agent_config(&url, &sandbox));

    // Enrolls with its labels, polls, opens the stream at pushUrl and re-polls on connect.
    let enroll = stub
        .until("the agent enrolled", |r| r.enrolls.first().cloned())
        .await;
    assert_eq!(enroll["token"], "vf_enroll_stub");
    assert_eq!(enroll["labels"], json!({ "region": "eu" }));
    stub.until("the push stream is open", |r| r.stream.as_ref().map(drop))
        .await;
    assert_eq!(
        stub.with(|r| r.streams.clone()),
        ["/api/agent/push?via=pushUrl"]
    );
    let polls = stub
        .until("a poll after the stream opened", |r| {
            (r.polls >= 2).then_some(r.polls)
        })
        .await;
    let pid_a = eventually("pipeline a runs", Duration::from_secs(5), || async {
        pid_of(&sandbox, "a")
    })
    .await;
    let config_files: Vec<String> = sandbox
        .config_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(config_files, [format!("{PIPELINE_A}.yaml")]);

    // Heartbeats carry the cuid, and no agentHealth.
    let heartbeat = stub
        .until("a heartbeat reports pipeline a running", |r| {
            r.heartbeats
                .iter()
                .find(|h| h["pipelines"][0]["status"] == "RUNNING")
                .cloned()
        })
        .await;
    assert_eq!(heartbeat["pipelines"][0]["pipelineId"], PIPELINE_A);
    assert!(heartbeat.get("agentHealth").is_none(), "{heartbeat}");

    // config_changed re-polls: a pipeline deployed meanwhile starts.
    stub.with(|r| r.pipelines.push(pipeline(PIPELINE_B, "b")));
    stub.push(json!({ "type": "config_changed", "pipelineId": PIPELINE_B, "reason": "deploy" }));
    stub.until("a poll after config_changed", |r| {
        (r.polls > polls).then_some(())
    })
    .await;
    let pid_b = eventually("pipeline b runs", Duration::from_secs(5), || async {
        pid_of(&sandbox, "b")
    })
    .await;

    // Vector's output is shipped, per pipeline.
    for (id, pid) in [(PIPELINE_A, pid_a), (PIPELINE_B, pid_b)] {
        stub.until("both output lines of a pipeline are shipped", |r| {
            let lines: Vec<&str> = r
                .logs
                .iter()
                .filter(|b| b["pipelineId"] == id)
                .flat_map(|b| b["lines"].as_array().unwrap())
                .filter_map(Value::as_str)
                .collect();
            let running = format!("fake vector {pid} running");
            let stderr = format!("fake vector {pid} warning: this is stderr");
            (lines.iter().any(|l| l.starts_with(&running)) && lines.contains(&stderr.as_str()))
                .then_some(())
        })
        .await;
    }

    // A live tap stopped by tap_stop: events in batches of at most 20, then its end.
    stub.push(json!({ "type": "tap_start", "requestId": "clxtap0000001", "pipelineId": PIPELINE_A, "componentId": "parse" }));
    stub.until("tap events arrive", |r| {
        (!tap_bodies(r, "clxtap0000001").is_empty()).then_some(())
    })
    .await;
    stub.push(json!({ "type": "tap_stop", "requestId": "clxtap0000001" }));
    let bodies = stub
        .until("the tap's end is posted", |r| {
            let bodies = tap_bodies(r, "clxtap0000001");
            bodies
                .last()
                .is_some_and(|b| b["status"] == "stopped")
                .then_some(bodies)
        })
        .await;
    let (end, batches) = bodies.split_last().unwrap();
    assert_eq!(end["reason"], "stopped");
    assert_eq!(end["pipelineId"], PIPELINE_A);
    assert_eq!(end["componentId"], "parse");
    for batch in batches {
        let events = batch["events"].as_array().unwrap();
        assert!((1..=20).contains(&events.len()), "{batch}");
        assert_eq!(events[0]["component"], "parse");
    }

    // A live tap nobody stops ends at its time limit.
    stub.push(json!({ "type": "tap_start", "requestId": "clxtap0000002", "pipelineId": PIPELINE_B, "componentId": "in" }));
    let end = stub
        .until("the tap reaches its time limit", |r| {
            tap_bodies(r, "clxtap0000002")
                .into_iter()
                .find(|b| b["status"] == "stopped")
        })
        .await;
    assert!(
        end["reason"].as_str().unwrap().contains("time limit"),
        "{end}"
    );
    assert!(stub.with(|r| tap_bodies(r, "clxtap0000002").len()) > 1);

    // A restart of pipeline b, pushed (VectorFlow has no restart in pendingAction).
    stub.push(json!({ "type": "action", "action": "restart", "pipelineId": PIPELINE_B }));
    let new_b = eventually("pipeline b restarted", Duration::from_secs(5), || async {
        pid_of(&sandbox, "b").filter(|pid| *pid != pid_b)
    })
    .await;
    assert!(!alive(pid_b));
    assert_eq!(
        pid_of(&sandbox, "a"),
        Some(pid_a),
        "pipeline a kept running"
    );
    assert_ne!(new_b, pid_b);

    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_push_url_is_not_used_and_a_dropped_stream_reconnects_and_repolls() {
    init_logs();
    let stub = Stub::default();
    let url = stub.clone().serve().await;
    let foreign = Stub::default();
    let foreign_url = foreign.clone().serve().await;
    stub.with(|r| r.push_url = Some(format!("{foreign_url}/api/agent/push")));
    let sandbox = Sandbox::new();
    let agent = TestAgent::start(agent_config(&url, &sandbox));

    stub.until("the push stream is open on the agent's own server", |r| {
        r.stream.as_ref().map(drop)
    })
    .await;
    assert_eq!(stub.with(|r| r.streams.clone()), ["/api/agent/push"]);
    let polls = stub
        .until("a poll after the stream opened", |r| {
            (r.polls >= 2).then_some(r.polls)
        })
        .await;

    // The server ends the stream: the agent reconnects and polls again.
    stub.with(|r| r.stream = None);
    stub.until("a second stream", |r| {
        (r.streams.len() >= 2 && r.stream.is_some()).then_some(())
    })
    .await;
    stub.until("a poll after the reconnect", |r| {
        (r.polls > polls).then_some(())
    })
    .await;
    assert!(
        foreign.with(|r| r.streams.is_empty()),
        "the foreign pushUrl was not used"
    );
    agent.stop().await;
}
