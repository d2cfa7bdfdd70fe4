//! The local topology from `scripts/topology` (api + two gateways + nginx with the shipped
//! routes): a deploy through the balancer reaches WebSocket and SSE agents on both gateways.

use flotilla_e2e::{call, PushClient, Topology};
use flotilla_testkit::sse_client::{resolve_push_url, Item, SseClient};
use flotilla_testkit::{db, eventually, redis_url};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const ADMIN: &str = flotilla_testkit::api::ADMIN_TOKEN;

/// An agent's push connection: the older agents' WebSocket or current agents' SSE stream.
enum Agent {
    Ws(Box<PushClient>),
    Sse(Box<SseClient>),
}

impl Agent {
    async fn next_frame(&mut self) -> Value {
        let text = match self {
            Agent::Ws(ws) => ws.next_text().await.unwrap(),
            Agent::Sse(sse) => sse.next_message().await,
        };
        serde_json::from_str(&text).unwrap()
    }
}

/// A mixed fleet through the balancer: WebSocket and SSE agents (each SSE agent resolving its
/// push URL as current agents do) land on both gateways, idle streams get their keepalives
/// through nginx, and one deploy reaches every agent. A buffering proxy would hold a frame this
/// small for many keepalive periods, so a bound of one second tells streaming from buffering
/// without timing the push itself (BENCHMARKS.md measures its latency).
#[tokio::test]
async fn a_deploy_through_the_balancer_reaches_websocket_and_sse_agents_on_both_gateways() {
    let db = db::fresh().await;
    let keepalive = [("FLOTILLA__GATEWAY__SSE_KEEPALIVE_MS", "200")];
    let topo =
        Topology::start_with(&db.url, &redis_url(), ADMIN, &keepalive).expect("topology starts");
    let lb = topo.get("LB_URL").to_owned();
    let http = reqwest::Client::new();
    use reqwest::Method;

    let (s, env) = call(
        &http,
        Method::POST,
        format!("{lb}/api/v1/environments"),
        Some(ADMIN),
        Some(json!({"name": "e2e"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let enroll = env["enrollmentToken"].as_str().unwrap();
    let mut agents = Vec::new();
    for i in 0..8 {
        let (s, node) = call(
            &http,
            Method::POST,
            format!("{lb}/api/agent/enroll"),
            None,
            Some(json!({"token": enroll, "hostname": format!("n{i}")})),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let token = node["nodeToken"].as_str().unwrap().to_owned();
        let (_, config) = call(
            &http,
            Method::GET,
            format!("{lb}/api/agent/config"),
            Some(&token),
            None,
        )
        .await;
        // The config points both generations at the balancer.
        assert_eq!(config["websocketUrl"], topo.get("WS_URL"));
        assert_eq!(config["pushUrl"], topo.get("PUSH_URL"));
        // The balancer takes turns between the gateways: two of each kind in a row puts both
        // kinds on both.
        let agent = if i % 4 < 2 {
            let push = PushClient::connect(topo.get("WS_URL"), &token).await;
            Agent::Ws(Box::new(push.expect("WebSocket through nginx")))
        } else {
            let url = resolve_push_url(&lb, config["pushUrl"].as_str());
            assert_eq!(
                url,
                topo.get("PUSH_URL"),
                "pushUrl is on the agent's origin"
            );
            match SseClient::open(&url, &token).await {
                Ok(stream) => Agent::Sse(Box::new(stream)),
                Err(e) => panic!("SSE through nginx: {e:?}"),
            }
        };
        agents.push((node["nodeId"].as_str().unwrap().to_owned(), agent));
    }
    // An agent whose server hands out a pushUrl on another origin falls back to its own.
    assert_eq!(
        resolve_push_url(&lb, Some("https://elsewhere.example/api/agent/push")),
        format!("{lb}/api/agent/push")
    );
    // nginx spreads both kinds over both gateways; presence shows which holds each, and how.
    let shown = eventually("all eight connected", Duration::from_secs(5), || async {
        let (_, fleet) = call(
            &http,
            Method::GET,
            format!("{lb}/api/v1/fleet"),
            Some(ADMIN),
            None,
        )
        .await;
        let nodes = fleet["nodes"].as_array()?.clone();
        nodes
            .iter()
            .all(|n| n["wsConnected"] == true)
            .then_some(nodes)
    })
    .await;
    let held: BTreeSet<(String, String)> = shown
        .iter()
        .map(|n| {
            let gateway = n["gatewayId"].as_str().unwrap().to_owned();
            (n["pushTransport"].as_str().unwrap().to_owned(), gateway)
        })
        .collect();
    for transport in ["websocket", "sse"] {
        for gateway in ["local-gw-1", "local-gw-2"] {
            assert!(
                held.contains(&(transport.to_owned(), gateway.to_owned())),
                "{transport} agents on {gateway}: {held:?}"
            );
        }
    }

    // Idle streams stay up behind nginx across several keepalive periods.
    for (_, agent) in agents.iter_mut() {
        if let Agent::Sse(sse) = agent {
            let mut keepalives = 0;
            while keepalives < 3 {
                match sse.next_item().await {
                    Some(Item::Comment(c)) if c == " keepalive" => keepalives += 1,
                    Some(Item::Comment(_)) => {}
                    other => panic!("expected keepalives, got {other:?}"),
                }
            }
        }
    }

    let (_, p) = call(
        &http,
        Method::POST,
        format!("{lb}/api/v1/pipelines"),
        Some(ADMIN),
        Some(json!({"environmentId": env["id"], "name": "p", "configYaml": flotilla_testkit::vector_config("base")})),
    )
    .await;
    let pipeline = p["id"].as_str().unwrap();
    let called = std::time::Instant::now();
    let (s, deployed) = call(
        &http,
        Method::POST,
        format!("{lb}/api/v1/pipelines/{pipeline}/deploy"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(deployed["notifiedNodes"], 8);
    let receipts = futures_util::future::join_all(agents.iter_mut().map(|(_, agent)| async {
        let frame = agent.next_frame().await;
        (matches!(agent, Agent::Sse(_)), frame, called.elapsed())
    }))
    .await;
    for (sse, frame, elapsed) in receipts {
        assert_eq!(frame["type"], "config_changed");
        assert_eq!(frame["pipelineId"], pipeline);
        assert_eq!(frame["reason"], "deploy");
        if sse {
            assert!(
                elapsed < Duration::from_secs(1),
                "deploy call to SSE receipt: {elapsed:?}"
            );
        }
    }
    for (_, agent) in agents {
        if let Agent::Ws(push) = agent {
            push.close().await;
        }
    }
    assert!(!topo.log("api.log").contains("panicked"));
}

/// The next frame of `kind` on a current agent's stream, skipping others.
async fn next_of(stream: &mut SseClient, kind: &str) -> Value {
    loop {
        let frame: Value = serde_json::from_str(&stream.next_message().await).unwrap();
        if frame["type"] == kind {
            return frame;
        }
    }
}

/// A current agent through the balancer, speaking exactly what current VectorFlow agents
/// send: its enrollment labels bind a pipeline at once; its logs reach an operator's live
/// view within 3 s; a live tap streams to the operator within 1 s of `tap_start`; a restart of
/// one pipeline arrives over its SSE stream; a sample requested while the pipeline starts is
/// pushed and completed within 2 s of the pipeline reporting RUNNING.
#[tokio::test]
async fn a_current_agent_ships_logs_runs_a_tap_restarts_a_pipeline_and_samples() {
    use reqwest::Method;
    use std::time::Instant;
    let db = db::fresh().await;
    let topo = Topology::start(&db.url, &redis_url(), ADMIN).expect("topology starts");
    let lb = topo.get("LB_URL").to_owned();
    let http = reqwest::Client::new();
    let (_, env) = call(
        &http,
        Method::POST,
        format!("{lb}/api/v1/environments"),
        Some(ADMIN),
        Some(json!({"name": "current"})),
    )
    .await;
    let (s, p) = call(
        &http,
        Method::POST,
        format!("{lb}/api/v1/pipelines"),
        Some(ADMIN),
        Some(
            json!({"environmentId": env["id"], "name": "edge", "configYaml": flotilla_testkit::vector_config("base"),
                    "nodeSelector": {"role": "edge"}}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let pipeline = p["id"].as_str().unwrap().to_owned();
    call(
        &http,
        Method::POST,
        format!("{lb}/api/v1/pipelines/{pipeline}/deploy"),
        Some(ADMIN),
        None,
    )
    .await;
    let (s, node) = call(
        &http,
        Method::POST,
        format!("{lb}/api/agent/enroll"),
        None,
        Some(
            json!({"token": env["enrollmentToken"], "hostname": "edge-1",
                    "labels": {"role": "edge", "vf.io/os": "linux"}}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let node_id = node["nodeId"].as_str().unwrap().to_owned();
    let token = node["nodeToken"].as_str().unwrap().to_owned();
    let agent = |method: Method, path: &str, body: Option<Value>| {
        call(&http, method, format!("{lb}{path}"), Some(&token), body)
    };
    let (_, config) = agent(Method::GET, "/api/agent/config", None).await;
    assert_eq!(config["pipelines"][0]["pipelineId"], json!(pipeline));
    let url = resolve_push_url(&lb, config["pushUrl"].as_str());
    let mut stream = SseClient::open(&url, &token)
        .await
        .expect("SSE through nginx");
    let heartbeat = |status: &str| {
        json!({"agentVersion": "0.9.4", "runningAs": "vector", "deploymentMode": "STANDALONE",
               "agentHealth": {"pushConnected": true, "pipelinesRunning": 0, "uptimeSeconds": 1},
               "hostMetrics": {"cpuPercent": 3.5},
               "pipelines": [{"pipelineId": pipeline, "version": 1, "status": status}]})
    };
    let (s, _) = agent(
        Method::POST,
        "/api/agent/heartbeat",
        Some(heartbeat("STARTING")),
    )
    .await;
    assert_eq!(s, StatusCode::OK);

    // Logs: shipped by the agent, seen live by an operator within 3 s.
    let logs_url = format!("{lb}/api/v1/fleet/{node_id}/logs");
    let mut logs = SseClient::open(&logs_url, ADMIN).await.expect("log stream");
    let shipped = Instant::now();
    let batch = json!([{"pipelineId": pipeline, "lines": ["vector started", "healthcheck ok"]}]);
    let (s, _) = agent(Method::POST, "/api/agent/logs", Some(batch)).await;
    assert_eq!(s, StatusCode::OK);
    let seen = logs.next_event("lines").await;
    assert_eq!(seen["lines"], json!(["vector started", "healthcheck ok"]));
    assert!(
        shipped.elapsed() < Duration::from_secs(3),
        "{:?}",
        shipped.elapsed()
    );

    // A sample requested while the pipeline starts is pushed once it runs.
    let (s, sample) = call(
        &http,
        Method::POST,
        format!("{lb}/api/v1/pipelines/{pipeline}/samples"),
        Some(ADMIN),
        Some(json!({"componentKeys": ["in"]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let request = sample["requestId"].as_str().unwrap().to_owned();
    let running = Instant::now();
    agent(
        Method::POST,
        "/api/agent/heartbeat",
        Some(heartbeat("RUNNING")),
    )
    .await;
    let push = next_of(&mut stream, "sample_request").await;
    assert_eq!(push["requestId"], json!(request));
    let result = json!({"results": [{"requestId": request, "componentKey": "in", "events": [{"message": "hi"}]}]});
    agent(Method::POST, "/api/agent/samples", Some(result)).await;
    let (_, done) = call(
        &http,
        Method::GET,
        format!("{lb}/api/v1/samples/{request}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert!(
        running.elapsed() < Duration::from_secs(2),
        "{:?}",
        running.elapsed()
    );

    // A live tap: events reach the operator within 1 s of tap_start.
    let (s, tap) = call(
        &http,
        Method::POST,
        format!("{lb}/api/v1/taps"),
        Some(ADMIN),
        Some(json!({"nodeId": node_id, "pipelineId": pipeline, "componentId": "in"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let tap = tap["requestId"].as_str().unwrap().to_owned();
    let mut viewer = SseClient::open(&format!("{lb}/api/v1/taps/{tap}/events"), ADMIN)
        .await
        .expect("tap stream");
    viewer.next_event("started").await;
    let start = next_of(&mut stream, "tap_start").await;
    let started = Instant::now();
    assert_eq!(start["componentId"], "in");
    let events = json!({"requestId": tap, "pipelineId": pipeline, "componentId": "in",
                        "events": [{"message": "tapped"}]});
    agent(Method::POST, "/api/agent/tap-events", Some(events)).await;
    let got = viewer.next_event("events").await;
    assert_eq!(got["events"], json!([{"message": "tapped"}]));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    call(
        &http,
        Method::DELETE,
        format!("{lb}/api/v1/taps/{tap}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(
        next_of(&mut stream, "tap_stop").await["requestId"],
        json!(tap)
    );

    // Restart one pipeline: a push the agent acts on, no pending action it cannot read.
    let (s, _) = call(
        &http,
        Method::POST,
        format!("{lb}/api/v1/fleet/{node_id}/actions"),
        Some(ADMIN),
        Some(json!({"type": "restart", "pipelineId": pipeline})),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let restart = next_of(&mut stream, "action").await;
    assert_eq!(
        (&restart["action"], &restart["pipelineId"]),
        (&json!("restart"), &json!(pipeline))
    );
    let (_, config) = agent(Method::GET, "/api/agent/config", None).await;
    assert!(config.get("pendingAction").is_none(), "{config}");
    assert!(!topo.log("api.log").contains("panicked"));
}
