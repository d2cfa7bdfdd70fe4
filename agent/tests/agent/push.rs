//! The push channel against the real gateway: poll interval pushes, sample requests,
//! keepalive of an idle socket, revocation, restarts, live taps, and the pipeline logs shown
//! in the fleet view.

use crate::common::*;
use flotilla_shared::close_codes::Close;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn last_seen(stack: &Stack, node: &str) -> String {
    stack.node(node).await["lastSeen"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_interval_push_changes_the_poll_period() {
    init_logs();
    let stack = Stack::start().await;
    stack.set_poll_interval(60_000).await;
    let (env, enrollment) = stack.environment().await;
    let sandbox = Sandbox::new();
    let agent = TestAgent::start(TestAgent::config(&stack, &sandbox, &enrollment));
    let node_id = stack.node_of(&env).await["id"].as_str().unwrap().to_owned();
    stack.wait_connected(&node_id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Idle on a 60 s interval: no polls (each poll is followed by a heartbeat).
    let before = last_seen(&stack, &node_id).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        last_seen(&stack, &node_id).await,
        before,
        "no poll on a 60 s interval"
    );

    // The push switches to 1 s polls at once.
    stack.set_poll_interval(1000).await;
    let mut seen = vec![before];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(4500) {
        let now = last_seen(&stack, &node_id).await;
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen.len() >= 4,
        "expected polls about every second, saw {seen:?}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_request_completes_end_to_end() {
    let (stack, env, _sandbox, agent, node_id) = connected(|_, _| {}).await;
    let pipeline = stack
        .deploy_new(&env, "sources:\n  in:\n    type: demo_logs\nsinks:\n  out:\n    type: blackhole\n    inputs: [in]\n")
        .await;
    // Sample requests are pushed to the nodes whose heartbeat reports the pipeline running.
    eventually(
        "the heartbeat reports the pipeline running",
        Duration::from_secs(5),
        || async {
            let node = stack.node(&node_id).await;
            (node["pipelines"][0]["status"] == json!("RUNNING")).then_some(())
        },
    )
    .await;

    let request = |keys: Value| {
        let stack = &stack;
        let pipeline = pipeline.clone();
        async move {
            let r = stack
                .api
                .admin(
                    Method::POST,
                    &format!("/api/v1/pipelines/{pipeline}/samples"),
                    Some(json!({ "componentKeys": keys, "limit": 3 })),
                )
                .await;
            assert!(r.status.is_success(), "{}", r.text);
            r.body["requestId"].as_str().unwrap().to_owned()
        }
    };
    let finished = |id: String| {
        let stack = &stack;
        async move {
            eventually(
                "the sample request finishes",
                Duration::from_secs(5),
                || async {
                    let r = stack
                        .api
                        .admin(Method::GET, &format!("/api/v1/samples/{id}"), None)
                        .await;
                    (r.body["status"] != json!("PENDING")).then_some(r.body)
                },
            )
            .await
        }
    };

    let t0 = Instant::now();
    let body = finished(request(json!(["in", "parse"])).await).await;
    assert_eq!(body["status"], json!("COMPLETED"), "{body}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "pushed, not polled: {:?}",
        t0.elapsed()
    );
    let samples = body["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2, "{body}");
    for s in samples {
        assert_eq!(s["events"].as_array().map(Vec::len), Some(3), "{s}");
        assert_eq!(s["events"][0]["n"], json!(1), "{s}");
    }

    // A component whose tap fails is reported as that component's error.
    let body = finished(request(json!(["in", "broken"])).await).await;
    assert_eq!(body["status"], json!("ERROR"), "{body}");
    let broken = body["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["componentKey"] == json!("broken"))
        .cloned();
    assert!(
        broken.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("no component matches"),
        "{body}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_agent_keeps_one_connection_for_many_keepalive_periods() {
    let (stack, _, _sandbox, agent, node_id) = connected(|config, _| {
        // The gateway pings every 300 ms (pongs every 200 ms); any frame resets this deadline.
        config.tuning.read_deadline = Duration::from_millis(700);
    })
    .await;
    // 4 s: over a dozen ping periods and several read deadlines.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let counters = stack.gateway().state.counters();
    assert_eq!(
        stack.gateway().connects(),
        1,
        "the socket was never recycled"
    );
    assert_eq!(
        counters
            .closed(Close::KeepaliveTimeout)
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(stack.node(&node_id).await["wsConnected"], json!(true));
    agent.stop().await;
    eventually(
        "a clean close clears presence",
        Duration::from_secs(2),
        || async { (stack.node(&node_id).await["wsConnected"] == json!(false)).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_stops_its_push_channel() {
    let (stack, _, _sandbox, agent, node_id) = connected(|_, _| {}).await;
    let r = stack
        .api
        .admin(Method::DELETE, &format!("/api/v1/fleet/{node_id}"), None)
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    eventually(
        "the gateway closes the socket",
        Duration::from_secs(5),
        || async {
            (stack
                .gateway()
                .state
                .counters()
                .closed(Close::Revoked)
                .load(std::sync::atomic::Ordering::Relaxed)
                == 1)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        stack.gateway().connects(),
        1,
        "no reconnect after a revocation"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_sharing_a_token_take_turns_slowly_instead_of_looping() {
    init_logs();
    let stack = Stack::start().await;
    let (env, enrollment) = stack.environment().await;
    let first = Sandbox::new();
    let mut config = TestAgent::config(&stack, &first, &enrollment);
    config.tuning.push_backoff_max = Duration::from_secs(2);
    let a = TestAgent::start(config.clone());
    let node_id = stack.node_of(&env).await["id"].as_str().unwrap().to_owned();
    stack.wait_connected(&node_id).await;

    // A cloned host: same data dir contents, same node token.
    let second = Sandbox::new();
    std::fs::copy(
        first.data.join("node-token"),
        second.data.join("node-token"),
    )
    .unwrap();
    let mut config = TestAgent::config(&stack, &second, "unused");
    config.enrollment_token = None;
    config.tuning.push_backoff_max = Duration::from_secs(2);
    let b = TestAgent::start(config);
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Each superseded agent waits 1–2 s before trying again: a handful of sockets, not a storm.
    let connects = stack.gateway().connects();
    assert!((2..=8).contains(&connects), "{connects} sockets in 4 s");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_action_restarts_every_pipeline() {
    let (stack, env, sandbox, agent, node_id) = connected(|_, _| {}).await;
    stack
        .deploy_new(&env, "sources:\n  a:\n    type: demo_logs\nsinks:\n  out:\n    type: blackhole\n    inputs: [a]\n")
        .await;
    stack
        .deploy_new(&env, "sources:\n  b:\n    type: demo_logs\nsinks:\n  out:\n    type: blackhole\n    inputs: [b]\n")
        .await;
    let before = eventually("both pipelines run", Duration::from_secs(5), || async {
        let running = sandbox.running();
        (running.len() == 2).then_some(running)
    })
    .await;
    let r = stack
        .api
        .admin(
            Method::POST,
            &format!("/api/v1/fleet/{node_id}/actions"),
            Some(json!({ "type": "restart" })),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    eventually(
        "both pipelines run in new processes",
        Duration::from_secs(5),
        || async {
            let running = sandbox.running();
            (running.len() == 2
                && running
                    .iter()
                    .all(|(pid, _)| before.iter().all(|(old, _)| old != pid)))
            .then_some(())
        },
    )
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_sends_the_agent_to_another_one_at_once() {
    init_logs();
    let proxy = Proxy::unrouted().await;
    let mut stack = Stack::start_behind(&proxy).await;
    proxy.route_to(stack.gateway_addr);
    let (env, enrollment) = stack.environment().await;
    let sandbox = Sandbox::new();
    let mut config = TestAgent::config(&stack, &sandbox, &enrollment);
    // Backoff alone would wait seconds: only the draining close code explains a fast move.
    config.tuning.push_backoff_base = Duration::from_secs(5);
    config.tuning.push_backoff_max = Duration::from_secs(10);
    let agent = TestAgent::start(config);
    let node_id = stack.node_of(&env).await["id"].as_str().unwrap().to_owned();
    stack.wait_connected(&node_id).await;

    let other = stack.extra_gateway().await;
    proxy.route_to(other.addr);
    let t0 = Instant::now();
    let draining = stack.gateway.take().unwrap();
    let stopped = tokio::spawn(draining.stop());
    eventually(
        "the agent connects to the other gateway",
        Duration::from_secs(3),
        || async { (other.connects() == 1).then_some(()) },
    )
    .await;
    let moved = t0.elapsed();
    eprintln!("moved to the other gateway in {moved:?}");
    // Reconnect-now waits at most 100 ms here; a backoff draw from [0, 5 s] rarely beats 500 ms.
    assert!(moved < Duration::from_millis(500), "moved in {moved:?}");
    within("the drained gateway exits", stopped).await.unwrap();
    stack.wait_connected(&node_id).await;

    // Pushes flow through the new gateway.
    let yaml = "sources:\n  moved:\n    type: demo_logs\nsinks:\n  out:\n    type: blackhole\n    inputs: [moved]\n";
    let t0 = Instant::now();
    stack.deploy_new(&env, yaml).await;
    eventually(
        "the deploy arrives by push",
        Duration::from_secs(2),
        || async {
            sandbox
                .running()
                .into_iter()
                .any(|(_, c)| runs(&c, yaml))
                .then_some(())
        },
    )
    .await;
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    agent.stop().await;
    other.stop().await;
}

/// The pid of the pipeline whose config contains `marker`.
fn pid_with(sandbox: &Sandbox, marker: &str) -> Option<u32> {
    sandbox
        .running()
        .into_iter()
        .find(|(_, config)| config.contains(marker))
        .map(|(pid, _)| pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_reach_the_fleet_api_and_a_restart_of_one_pipeline_restarts_only_that_one() {
    let (stack, env, sandbox, agent, node_id) = connected(|_, _| {}).await;
    let a = stack
        .deploy_new(&env, "sources:\n  a:\n    type: demo_logs # pa\nsinks:\n  out:\n    type: blackhole\n    inputs: [a]\n")
        .await;
    let b = stack
        .deploy_new(&env, "sources:\n  b:\n    type: demo_logs # pb\nsinks:\n  out:\n    type: blackhole\n    inputs: [b]\n")
        .await;
    let (pid_a, pid_b) = eventually("both pipelines run", Duration::from_secs(5), || async {
        Some((pid_with(&sandbox, "# pa")?, pid_with(&sandbox, "# pb")?))
    })
    .await;

    // What vector writes shows up in the fleet view, per pipeline.
    for (id, pid) in [(&a, pid_a), (&b, pid_b)] {
        let expected = format!("fake vector {pid} warning: this is stderr");
        eventually(
            "the pipeline's log lines in the fleet view",
            Duration::from_secs(5),
            || async {
                let node = stack.node(&node_id).await;
                let pipeline = node["pipelines"]
                    .as_array()?
                    .iter()
                    .find(|p| p["pipelineId"] == json!(id))?
                    .clone();
                pipeline["recentLogs"]
                    .as_array()?
                    .iter()
                    .any(|l| l.as_str() == Some(expected.as_str()))
                    .then_some(())
            },
        )
        .await;
    }

    let r = stack
        .api
        .admin(
            Method::POST,
            &format!("/api/v1/fleet/{node_id}/actions"),
            Some(json!({ "type": "restart", "pipelineId": b })),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    eventually("pipeline b restarted", Duration::from_secs(5), || async {
        pid_with(&sandbox, "# pb").filter(|pid| *pid != pid_b)
    })
    .await;
    assert!(!alive(pid_b));
    assert_eq!(pid_with(&sandbox, "# pa"), Some(pid_a), "a kept running");
    agent.stop().await;
}

/// Reads server-sent events from `response` until `want` accepts one `(event, data)`.
async fn next_event(
    response: &mut reqwest::Response,
    buffer: &mut String,
    want: impl Fn(&str, &Value) -> bool,
) -> Value {
    let mut event = String::new();
    loop {
        while let Some(i) = buffer.find('\n') {
            let line: String = buffer.drain(..=i).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:") {
                let data: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                if want(&event, &data) {
                    return data;
                }
            }
        }
        let chunk = within("a tap event", response.chunk())
            .await
            .expect("tap stream")
            .expect("tap stream still open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_started_by_an_operator_delivers_events_to_its_viewer_until_stopped() {
    let (stack, env, sandbox, agent, node_id) = connected(|_, _| {}).await;
    let pipeline = stack
        .deploy_new(&env, "sources:\n  in:\n    type: demo_logs\nsinks:\n  out:\n    type: blackhole\n    inputs: [in]\n")
        .await;
    eventually("the pipeline runs", Duration::from_secs(5), || async {
        sandbox.running().first().map(drop)
    })
    .await;
    let r = stack
        .api
        .admin(
            Method::POST,
            "/api/v1/taps",
            Some(json!({ "nodeId": node_id, "pipelineId": pipeline, "componentId": "in" })),
        )
        .await;
    assert_eq!(r.status, reqwest::StatusCode::CREATED, "{}", r.text);
    let tap = r.body["requestId"].as_str().unwrap().to_owned();

    let mut viewer = within(
        "the tap stream",
        reqwest::Client::new()
            .get(stack.api.url(&format!("/api/v1/taps/{tap}/events")))
            .bearer_auth(flotilla_testkit::api::ADMIN_TOKEN)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(viewer.status(), reqwest::StatusCode::OK);
    let mut buffer = String::new();
    let batch = next_event(&mut viewer, &mut buffer, |event, data| {
        event == "events" && data["events"].as_array().is_some_and(|e| !e.is_empty())
    })
    .await;
    let events = batch["events"].as_array().unwrap();
    assert!(events.len() <= 20, "{batch}");
    assert_eq!(events[0]["component"], "in");

    let r = stack
        .api
        .admin(Method::DELETE, &format!("/api/v1/taps/{tap}"), None)
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    next_event(&mut viewer, &mut buffer, |event, _| event == "stopped").await;
    // The agent's `vector tap` ends too.
    let taps: Vec<u32> = std::fs::read_dir(&sandbox.out)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("tap-")?.parse().ok())
        .collect();
    assert_eq!(taps.len(), 1, "one vector tap ran");
    eventually("the tap process ended", Duration::from_secs(5), || async {
        (!alive(taps[0])).then_some(())
    })
    .await;
    agent.stop().await;
}
