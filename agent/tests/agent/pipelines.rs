//! Enrollment, deploys, config changes, undeploys and crashes against the real api + gateway.

use crate::common::*;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

fn yaml(marker: &str) -> String {
    format!("sources:\n  in:\n    type: demo_logs\n    format: json # {marker}\nsinks:\n  out:\n    type: blackhole\n    inputs: [in]\n")
}

/// `(status, pid, checksum)` of a pipeline as the node's last heartbeat reported it.
async fn reported(
    stack: &Stack,
    node: &str,
    pipeline: &str,
) -> Option<(String, Option<i64>, Option<String>)> {
    sqlx::query_as(
        "SELECT status, pid, config_checksum FROM node_pipeline_status WHERE node_id = $1::uuid AND pipeline_id = $2::uuid",
    )
    .bind(node)
    .bind(pipeline)
    .fetch_optional(&stack.db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_runs_within_200ms_update_restarts_undeploy_stops_and_the_token_is_reused() {
    init_logs();
    let stack = Stack::start().await;
    let (env, enrollment) = stack.environment().await;
    let sandbox = Sandbox::new();
    let agent = TestAgent::start(TestAgent::config(&stack, &sandbox, &enrollment));
    let node = stack.node_of(&env).await;
    let node_id = node["id"].as_str().unwrap().to_owned();
    stack.wait_connected(&node_id).await;

    let token_file = sandbox.data.join("node-token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(std::fs::read_to_string(&token_file)
        .unwrap()
        .starts_with("vf_node_"));

    // Deploy: the pipeline process runs the new config within 200 ms of the deploy call.
    let v1 = yaml("v1");
    let pipeline = stack.api.create_pipeline(&env, "web", &v1, json!({})).await;
    let t0 = Instant::now();
    let r = stack.api.deploy(&pipeline).await;
    assert!(r.status.is_success(), "{}", r.text);
    let (pid1, latency) = eventually("the pipeline runs", Duration::from_secs(5), || async {
        sandbox
            .running()
            .into_iter()
            .find(|(_, c)| runs(c, &v1))
            .map(|(pid, _)| (pid, t0.elapsed()))
    })
    .await;
    eprintln!("deploy call to running process: {latency:?}");
    assert!(
        latency < Duration::from_millis(200),
        "deploy → running took {latency:?}"
    );
    assert_eq!(sandbox.running().len(), 1);
    let (status, pid, checksum) = eventually(
        "the heartbeat reports it",
        Duration::from_secs(5),
        || async {
            reported(&stack, &node_id, &pipeline)
                .await
                .filter(|(s, _, _)| s == "RUNNING")
        },
    )
    .await;
    assert_eq!((status.as_str(), pid), ("RUNNING", Some(i64::from(pid1))));
    assert_eq!(
        checksum.unwrap(),
        flotilla_shared::auth::tokens::sha256_hex(v1.as_bytes())
    );

    // A new version: the old process is replaced by one running the new config.
    let v2 = yaml("v2");
    stack.update_pipeline(&pipeline, &v2).await;
    let r = stack.api.deploy(&pipeline).await;
    assert!(r.status.is_success(), "{}", r.text);
    let pid2 = eventually("the new version runs", Duration::from_secs(5), || async {
        sandbox
            .running()
            .into_iter()
            .find(|(_, c)| runs(c, &v2))
            .map(|(pid, _)| pid)
    })
    .await;
    assert_ne!(pid1, pid2);
    eventually(
        "the old process is gone",
        Duration::from_secs(5),
        || async { (!alive(pid1)).then_some(()) },
    )
    .await;
    assert_eq!(sandbox.running().len(), 1);
    // The pipeline's Vector has a data directory of its own, named in its config.
    let dirs = sandbox.data_dirs();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let written = std::fs::read_to_string(&sandbox.config_files()[0]).unwrap();
    let doc: serde_json::Value = serde_norway::from_str(&written).unwrap();
    assert_eq!(doc["data_dir"].as_str(), Some(&*dirs[0].to_string_lossy()));

    // Undeploy: the process stops and its config file and data are deleted.
    stack.undeploy(&pipeline).await;
    eventually("the pipeline stops", Duration::from_secs(5), || async {
        (sandbox.running().is_empty()
            && sandbox.config_files().is_empty()
            && sandbox.data_dirs().is_empty())
        .then_some(())
    })
    .await;
    agent.stop().await;

    // A restart reuses the stored token: no enrollment token needed, still one node.
    let mut config = TestAgent::config(&stack, &sandbox, "unused");
    config.enrollment_token = None;
    let agent = TestAgent::start(config);
    eventually(
        "the agent reconnects with its stored token",
        Duration::from_secs(10),
        || async {
            let nodes = stack.fleet(&env).await;
            assert_eq!(nodes.len(), 1, "no second enrollment");
            (nodes[0]["wsConnected"] == json!(true) && nodes[0]["id"] == json!(node_id))
                .then_some(())
        },
    )
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restart_reconnects_and_picks_up_a_deploy_made_while_disconnected() {
    init_logs();
    let mut stack = Stack::start().await;
    // Polls alone would take a minute: only the reconnect's re-poll can explain a fast pick-up.
    stack.set_poll_interval(60_000).await;
    let (env, enrollment) = stack.environment().await;
    let sandbox = Sandbox::new();
    let agent = TestAgent::start(TestAgent::config(&stack, &sandbox, &enrollment));
    let node_id = stack.node_of(&env).await["id"].as_str().unwrap().to_owned();
    stack.wait_connected(&node_id).await;

    stack.stop_gateway().await;
    let v1 = yaml("while-disconnected");
    stack.deploy_new(&env, &v1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        sandbox.running().is_empty(),
        "nothing could have told the agent yet"
    );

    stack.start_gateway().await;
    eventually(
        "the deploy is picked up after the reconnect",
        Duration::from_secs(5),
        || async {
            sandbox
                .running()
                .into_iter()
                .any(|(_, c)| runs(&c, &v1))
                .then_some(())
        },
    )
    .await;
    stack.wait_connected(&node_id).await;
    assert_eq!(
        stack.gateway().connects(),
        1,
        "one socket on the new gateway"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_vector_binary_is_reported_as_a_crashed_pipeline() {
    let (stack, env, _sandbox, agent, node_id) = connected(|config, sandbox| {
        config.vector_bin = sandbox.dir.join("no-such-vector");
    })
    .await;
    let pipeline = stack.deploy_new(&env, &yaml("x")).await;
    eventually(
        "the pipeline is reported CRASHED",
        Duration::from_secs(5),
        || async {
            reported(&stack, &node_id, &pipeline)
                .await
                .filter(|(s, _, _)| s == "CRASHED")
        },
    )
    .await;
    // The agent itself is fine: it still takes pushes and heartbeats.
    assert_eq!(stack.node(&node_id).await["wsConnected"], json!(true));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_pipeline_is_restarted_with_backoff() {
    let (stack, env, sandbox, agent, node_id) = connected(|_, _| {}).await;
    let pipeline = stack
        .deploy_new(&env, &format!("{}# fake_crash\n", yaml("c")))
        .await;
    eventually("the crash is reported", Duration::from_secs(5), || async {
        reported(&stack, &node_id, &pipeline)
            .await
            .filter(|(s, _, _)| s == "CRASHED")
    })
    .await;
    // Why it crashed, in Vector's own words (its stderr), is what the node detail shows.
    eventually(
        "vector's last words in the node's recentLogs",
        Duration::from_secs(5),
        || async {
            let node = stack.node(&node_id).await;
            node["pipelines"]
                .as_array()?
                .iter()
                .find(|p| p["pipelineId"] == json!(pipeline))?["recentLogs"]
                .as_array()?
                .iter()
                .any(|l| l == "fake vector: crashing as asked")
                .then_some(())
        },
    )
    .await;
    // A fixed config replaces the crashing one without waiting out the backoff.
    let fixed = yaml("fixed");
    stack.update_pipeline(&pipeline, &fixed).await;
    assert!(stack.api.deploy(&pipeline).await.status.is_success());
    eventually(
        "the fixed pipeline runs",
        Duration::from_secs(5),
        || async {
            sandbox
                .running()
                .into_iter()
                .any(|(_, c)| runs(&c, &fixed))
                .then_some(())
        },
    )
    .await;
    agent.stop().await;
    assert!(sandbox.running().is_empty(), "shutdown stops the pipelines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_first_polls_do_not_keep_the_push_channel_from_starting() {
    init_logs();
    let stack = Stack::start().await;
    let (env, enrollment) = stack.environment().await;
    let sandbox = Sandbox::new();
    // Enrolled earlier; the api is unreachable when the agent starts.
    let (node_id, token) = stack.api.enroll(&enrollment, "host-a").await;
    std::fs::write(sandbox.data.join("node-token"), token).unwrap();
    let api_proxy = Proxy::unrouted().await;
    let mut config = TestAgent::config(&stack, &sandbox, &enrollment);
    config.url = reqwest::Url::parse(&format!("http://{}/", api_proxy.addr)).unwrap();
    let agent = TestAgent::start(config);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stack.node(&node_id).await["wsConnected"], json!(false));

    api_proxy.route_to(stack.api.addr);
    stack.wait_connected(&node_id).await;
    let yaml = yaml("after-outage");
    let t0 = Instant::now();
    stack.deploy_new(&env, &yaml).await;
    eventually(
        "the deploy arrives by push",
        Duration::from_secs(2),
        || async {
            sandbox
                .running()
                .into_iter()
                .any(|(_, c)| runs(&c, &yaml))
                .then_some(())
        },
    )
    .await;
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    agent.stop().await;
}

/// The node detail's entry for `pipeline`.
async fn detail(stack: &Stack, node: &str, pipeline: &str) -> Option<serde_json::Value> {
    stack.node(node).await["pipelines"]
        .as_array()?
        .iter()
        .find(|p| p["pipelineId"] == json!(pipeline))
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_from_each_pipelines_vector_api_reach_the_node_detail() {
    let (stack, env, sandbox, agent, node_id) = connected(|_, _| {}).await;
    stack.set_poll_interval(1000).await;
    // The stand-in serves its API for configs marked `fake_api`.
    let with_api = stack
        .deploy_new(
            &env,
            "# fake_api\nsources:\n  in:\n    type: demo_logs\n    format: json\ntransforms:\n  parse:\n    type: remap\n    inputs: [in]\n    source: '.'\nsinks:\n  out:\n    type: blackhole\n    inputs: [parse]\n",
        )
        .await;
    // This Vector's API never answers: its pipeline is reported without counters.
    let silent = stack.deploy_new(&env, &yaml("silent")).await;

    let first = eventually(
        "counters in the node detail",
        Duration::from_secs(10),
        || async {
            let p = detail(&stack, &node_id, &with_api).await?;
            (p["status"] == "RUNNING" && p["metrics"]["eventsIn"].as_i64()? > 0).then_some(p)
        },
    )
    .await;
    // The stand-in answers its n-th query with 10n events per component, 1000n bytes into
    // sources and 800n bytes out of sinks.
    let m = &first["metrics"];
    let events = m["eventsIn"].as_i64().unwrap();
    assert_eq!(events % 10, 0, "{m}");
    assert_eq!(m["eventsOut"].as_i64(), Some(events), "{m}");
    assert_eq!(m["bytesIn"].as_i64(), Some(events * 100), "{m}");
    assert_eq!(m["bytesOut"].as_i64(), Some(events * 80), "{m}");
    let components = first["componentMetrics"]
        .as_array()
        .expect("componentMetrics");
    let kinds: Vec<(&str, &str)> = components
        .iter()
        .map(|c| {
            (
                c["componentId"].as_str().unwrap(),
                c["componentKind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("in", "source"), ("parse", "transform"), ("out", "sink")]
    );
    assert!(components
        .iter()
        .all(|c| c["receivedEvents"].as_i64() == Some(events)));
    // Errors come from Vector's error subscription: the stand-in's m-th subscriber sees m
    // errors on every sink.
    let errors = m["errorsTotal"].as_i64().expect("errorsTotal");
    assert!(errors > 0, "{m}");
    assert_eq!(components[2]["errorsTotal"].as_i64(), Some(errors));
    assert!(components[..2]
        .iter()
        .all(|c| c.get("errorsTotal").is_none()));

    // Each heartbeat reads them again.
    eventually("the counters grow", Duration::from_secs(10), || async {
        let p = detail(&stack, &node_id, &with_api).await?;
        (p["metrics"]["eventsIn"].as_i64()? > events).then_some(())
    })
    .await;

    // Each Vector has an API port of its own, on loopback.
    let ports: Vec<String> = sandbox
        .running()
        .iter()
        .filter_map(|(_, c)| {
            let line = c.lines().find(|l| l.starts_with("  address: "))?;
            Some(
                line.trim_start_matches("  address: ")
                    .trim_matches('"')
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert_ne!(ports[0], ports[1]);
    assert!(
        ports.iter().all(|p| p.starts_with("127.0.0.1:")),
        "{ports:?}"
    );

    let p = detail(&stack, &node_id, &silent).await.expect("reported");
    assert_eq!(p["status"], "RUNNING", "{p}");
    assert!(p["metrics"].get("eventsIn").is_none(), "{p}");
    assert!(p["componentMetrics"].is_null(), "{p}");
    agent.stop().await;
}
