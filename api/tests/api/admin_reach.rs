//! What an admin, an agent or a stolen node token can reach through the api: self-update URLs
//! stay on https to public or allowed hosts, agents' reports are capped, a node answers samples
//! only for pipelines it runs, and a pipeline can refuse nodes that merely claim a label.

use crate::common;

use flotilla_testkit::api::ApiHandle;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// An environment with one enrolled node: `(environment id, node id, node token)`.
async fn one_node(api: &ApiHandle) -> (String, String, String) {
    let (env, enroll) = api.create_environment("prod").await;
    let (node, token) = api.enroll(&enroll, "h").await;
    (env, node, token)
}

fn self_update(url: &str) -> Value {
    json!({"type": "self_update", "targetVersion": "2.0.0", "downloadUrl": url, "checksum": "a".repeat(64)})
}

async fn action(api: &ApiHandle, node: &str, body: Value) -> flotilla_testkit::api::Reply {
    api.admin(
        Method::POST,
        &format!("/api/v1/fleet/{node}/actions"),
        Some(body),
    )
    .await
}

async fn heartbeat(api: &ApiHandle, token: &str, body: Value) -> flotilla_testkit::api::Reply {
    api.call(
        Method::POST,
        "/api/agent/heartbeat",
        Some(token),
        Some(body),
    )
    .await
}

async fn node_detail(api: &ApiHandle, node: &str) -> (Value, usize) {
    let r = api
        .admin(Method::GET, &format!("/api/v1/fleet/{node}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    (r.body, r.text.len())
}

/// Each refused URL answers 422 naming `downloadUrl` and why; nothing is stored or pushed.
#[tokio::test]
async fn self_update_urls_must_be_https_to_a_public_host() {
    let (_db, api) = common::start().await;
    let (_, node, token) = one_node(&api).await;
    for (url, why) in [
        ("http://example.com/agent", "must be https"),
        ("ftp://example.com/agent", "must be https"),
        ("https://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://127.0.0.1:6379", "loopback"),
        ("https://2130706433/agent", "loopback"),
        ("https://[::1]/agent", "loopback"),
        ("https://[::ffff:10.0.0.1]/agent", "private"),
        ("https://10.0.0.8/agent", "private"),
        ("https://192.168.1.1/agent", "private"),
        ("https://100.64.0.1/agent", "CGNAT"),
        ("https://0.0.0.0/agent", "unspecified"),
        ("https://localhost/agent", "localhost"),
        ("https://user:pass@example.com/agent", "credentials"),
        (
            "https://example.com/agent\r\nX-Injected: 1",
            "whitespace or control",
        ),
        ("https://example.com/a gent", "whitespace or control"),
        ("example.com/agent", "https URL"),
    ] {
        let r = action(&api, &node, self_update(url)).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{url}: {}",
            r.text
        );
        assert_eq!(r.body["details"]["field"], "downloadUrl", "{url}");
        let reason = r.body["details"]["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{url}: {reason}");
    }
    let long = format!("https://example.com/{}", "a".repeat(2048));
    let r = action(&api, &node, self_update(&long)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert!(api.agent_config(&token).await.body["pendingAction"].is_null());

    // A public host is accepted and handed out in the form that was checked.
    let r = action(
        &api,
        &node,
        self_update("HTTPS://Downloads.Example.COM/agent"),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let pending = &api.agent_config(&token).await.body["pendingAction"];
    assert_eq!(
        pending["downloadUrl"],
        "https://downloads.example.com/agent"
    );
    // Private hosts stay refused with a reason that names the way to allow them.
    let r = action(&api, &node, self_update("https://10.0.0.8/agent")).await;
    let reason = r.body["details"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("api.self_update_allowed_hosts"), "{reason}");
}

/// An allow-list entry that is no host name, address or block stops the api at start, naming
/// the setting and the entry.
#[tokio::test]
async fn a_bad_allow_list_entry_stops_the_api() {
    let db = flotilla_testkit::db::fresh().await;
    let mut settings = flotilla_testkit::settings(&db.url, &flotilla_testkit::redis_url());
    settings.api.self_update_allowed_hosts = "mirror.internal, 10.0.0.0/33".into();
    let error = match flotilla_api::Api::build(settings).await {
        Ok(_) => panic!("the api started with a bad allow-list entry"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("api.self_update_allowed_hosts"), "{error}");
    assert!(error.contains("10.0.0.0/33"), "{error}");
}

/// `api.self_update_allowed_hosts` opens exactly the hosts, addresses and blocks it names.
#[tokio::test]
async fn allowed_internal_hosts_are_accepted() {
    let (_db, api) = common::start_with(|s| {
        s.api.self_update_allowed_hosts = "10.20.0.0/16, mirror.localhost,fd00::1".into()
    })
    .await;
    let (_, node, token) = one_node(&api).await;
    for url in [
        "https://10.20.30.40:8443/agent",
        "https://mirror.localhost/agent",
        "https://[fd00::1]/agent",
        "https://example.com/agent",
    ] {
        let r = action(&api, &node, self_update(url)).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{url}: {}", r.text);
        assert_eq!(
            api.agent_config(&token).await.body["pendingAction"]["downloadUrl"],
            url
        );
    }
    for url in [
        "https://10.21.0.1/agent",
        "https://localhost/agent",
        "https://[fd00::2]/agent",
        "http://10.20.30.40/agent",
    ] {
        let r = action(&api, &node, self_update(url)).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{url}: {}",
            r.text
        );
    }
}

/// Whatever an agent (of any make) reports as its update error is kept to 200 characters
/// without control characters: a remote's response cannot be relayed to viewers through it.
#[tokio::test]
async fn reported_update_errors_are_capped_and_stripped() {
    let (_db, api) = common::start().await;
    let (_, node, token) = one_node(&api).await;
    let r = action(&api, &node, self_update("https://example.com/agent")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let leaked = format!(
        "download failed: HTTP 200 \r\n\x1b[31m{}",
        "redis_version:7.2.4\n".repeat(500)
    );
    let r = heartbeat(
        &api,
        &token,
        json!({"updateError": leaked, "pipelines": []}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let (detail, _) = node_detail(&api, &node).await;
    let kept = detail["lastUpdateError"].as_str().unwrap();
    assert_eq!(kept.chars().count(), 200);
    assert!(!kept.chars().any(char::is_control), "{kept:?}");
    assert!(kept.starts_with("download failed: HTTP 200 [31mredis_version"));
    // The error still settles the self-update.
    assert!(detail["pendingAction"].is_null());
}

/// One oversized value (a 3 MiB utilization, 40 KiB of component metrics, a long label) is
/// dropped on its own; the rest of the heartbeat is recorded and the node's detail stays small.
#[tokio::test]
async fn oversized_heartbeat_values_are_dropped_one_by_one() {
    let (_db, api) = common::start().await;
    let (env, node, token) = one_node(&api).await;
    let p1 = api
        .create_pipeline(
            &env,
            "p1",
            &flotilla_testkit::vector_config("a1"),
            json!({}),
        )
        .await;
    let p2 = api
        .create_pipeline(
            &env,
            "p2",
            &flotilla_testkit::vector_config("a1"),
            json!({}),
        )
        .await;
    let huge = "9".repeat(3 * 1024 * 1024);
    let metrics = json!([{"componentId": "in", "pad": "x".repeat(40 * 1024)}]);
    let body = json!({
        "agentVersion": "1.2.3",
        "runningAs": format!("vector\u{1b}[2J{}", "r".repeat(1000)),
        "hostMetrics": {"cpuPercent": 5, "pad": "x".repeat(20 * 1024)},
        "agentHealth": {"pushConnected": true},
        "labels": {"zone": "a", "long": "v".repeat(300)},
        "pipelines": [
            {"pipelineId": p1, "version": 1, "status": "RUNNING", "eventsIn": 7, "utilization": huge},
            {"pipelineId": p2, "version": 1, "status": "RUNNING", "utilization": 0.5, "componentMetrics": metrics},
        ],
    });
    let r = heartbeat(&api, &token, body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    let (detail, size) = node_detail(&api, &node).await;
    assert!(size < 64 * 1024, "the node's detail is {size} bytes");
    assert_eq!(detail["agentVersion"], "1.2.3");
    let running_as = detail["runningAs"].as_str().unwrap();
    assert_eq!(running_as.chars().count(), 128);
    assert!(running_as.starts_with("vector[2J"));
    assert!(detail.get("hostMetrics").is_none(), "over 16 KiB: dropped");
    assert_eq!(detail["agentHealth"], json!({"pushConnected": true}));
    assert_eq!(detail["labels"], json!({"zone": "a"}));
    let pipelines = detail["pipelines"].as_array().unwrap();
    let of = |id: &str| {
        pipelines
            .iter()
            .find(|p| p["pipelineId"] == id)
            .unwrap_or_else(|| panic!("{id} recorded: {pipelines:?}"))
    };
    assert_eq!(of(&p1)["status"], "RUNNING");
    assert_eq!(of(&p1)["metrics"], json!({"eventsIn": 7}));
    assert_eq!(of(&p2)["metrics"]["utilization"], 0.5);
    assert!(
        of(&p2)["componentMetrics"].is_null(),
        "over 16 KiB: dropped"
    );
}

/// Component metrics share one budget per heartbeat: however many pipelines a node reports,
/// its record grows by at most 256 KiB of them.
#[tokio::test]
async fn component_metrics_share_one_budget_per_heartbeat() {
    let (_db, api) = common::start().await;
    let (env, node, token) = one_node(&api).await;
    let metrics = json!([{"componentId": "in", "pad": "x".repeat(15 * 1024)}]);
    let each = serde_json::to_string(&metrics).unwrap().len();
    let mut reported = Vec::new();
    for i in 0..20 {
        let p = api
            .create_pipeline(
                &env,
                &format!("p{i}"),
                &flotilla_testkit::vector_config("a1"),
                json!({}),
            )
            .await;
        reported.push(json!({"pipelineId": p, "version": 1, "status": "RUNNING", "componentMetrics": metrics}));
    }
    let r = heartbeat(&api, &token, json!({"pipelines": reported})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let (detail, size) = node_detail(&api, &node).await;
    let pipelines = detail["pipelines"].as_array().unwrap();
    assert_eq!(pipelines.len(), 20, "every status is recorded");
    let with_metrics = pipelines
        .iter()
        .filter(|p| !p["componentMetrics"].is_null())
        .count();
    assert_eq!(with_metrics, 256 * 1024 / each);
    assert!(size < 300 * 1024, "the node's detail is {size} bytes");
}

/// A node's result for a sample request is recorded only if the request's pipeline runs on
/// that node; another node of the environment (claiming to run it or not) is skipped, and
/// the rest of its request still counts.
#[tokio::test]
async fn a_node_answers_samples_only_for_pipelines_it_runs() {
    let (_db, api) = common::start().await;
    let (env, enroll) = api.create_environment("prod").await;
    let (a, a_token) = api.enroll(&enroll, "a").await;
    let (_, b_token) = api.enroll(&enroll, "b").await;
    api.set_labels(&a, json!({"role": "a"})).await;
    let only_a = api
        .create_pipeline(
            &env,
            "only-a",
            &flotilla_testkit::vector_config("a1"),
            json!({"role": "a"}),
        )
        .await;
    let everywhere = api
        .create_pipeline(
            &env,
            "everywhere",
            &flotilla_testkit::vector_config("a1"),
            json!({}),
        )
        .await;
    for p in [&only_a, &everywhere] {
        assert_eq!(api.deploy(p).await.status, StatusCode::OK);
    }
    let request = |pipeline: String| {
        let api = &api;
        async move {
            let r = api
                .admin(
                    Method::POST,
                    &format!("/api/v1/pipelines/{pipeline}/samples"),
                    Some(json!({"componentKeys": ["in"]})),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
            r.body
        }
    };
    let id = |r: Value| r["requestId"].as_str().unwrap().to_owned();
    let on_a = id(request(only_a.clone()).await);
    let on_both = id(request(everywhere.clone()).await);
    let status = |id: String| {
        let api = &api;
        async move {
            api.admin(Method::GET, &format!("/api/v1/samples/{id}"), None)
                .await
                .body
        }
    };

    // B claims to run A's pipeline, then answers both requests: only the one for the
    // pipeline it runs is recorded.
    let r = heartbeat(
        &api,
        &b_token,
        json!({"pipelines": [{"pipelineId": only_a, "version": 1, "status": "RUNNING"}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let forged = json!({"results": [
        {"requestId": on_a, "componentKey": "in", "events": [{"forged": true}]},
        {"requestId": on_both, "componentKey": "in", "events": [{"from": "b"}]},
    ]});
    let r = api
        .call(
            Method::POST,
            "/api/agent/samples",
            Some(&b_token),
            Some(forged),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // Through a heartbeat (older agents) alike.
    let r = heartbeat(
        &api,
        &b_token,
        json!({"pipelines": [], "sampleResults": [{"requestId": on_a, "componentKey": "in", "events": [{"forged": true}]}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let s = status(on_a.clone()).await;
    assert_eq!(s["status"], "PENDING");
    assert_eq!(s["samples"], json!([]));
    assert_eq!(status(on_both).await["status"], "COMPLETED");

    // A, which runs it, is recorded.
    let r = api
        .call(
            Method::POST,
            "/api/agent/samples",
            Some(&a_token),
            Some(json!({"results": [{"requestId": on_a, "componentKey": "in", "events": [{"m": 1}]}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let s = status(on_a).await;
    assert_eq!(s["status"], "COMPLETED");
    assert_eq!(s["samples"][0]["nodeId"], a.as_str());
    assert_eq!(s["samples"][0]["events"], json!([{"m": 1}]));

    // A new request reaches only the node the pipeline runs on, whatever B claims.
    let running = json!({"pipelines": [{"pipelineId": only_a, "version": 1, "status": "RUNNING"}]});
    assert_eq!(
        heartbeat(&api, &a_token, running).await.status,
        StatusCode::OK
    );
    assert_eq!(request(only_a).await["notifiedNodes"], 1);
}

fn names(config: &Value) -> Vec<&str> {
    config["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pipelineName"].as_str().unwrap())
        .collect()
}

/// A pipeline with `selectorLabels: "operator"` reaches a node by the labels an operator set
/// only: a node that reports the label itself neither gets it nor is notified of it, until an
/// operator sets the label. Pipelines without the option still match reported labels.
#[tokio::test]
async fn operator_label_pipelines_ignore_labels_nodes_claim() {
    let (_db, api) = common::start().await;
    let (env, node, token) = one_node(&api).await;
    let r = heartbeat(
        &api,
        &token,
        json!({"labels": {"tier": "secret"}, "pipelines": []}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    let create = |name: &'static str, labels: Option<&'static str>| {
        let api = &api;
        let env = env.clone();
        async move {
            let mut body = json!({"environmentId": env, "name": name, "configYaml": flotilla_testkit::vector_config("a1"),
                                  "nodeSelector": {"tier": "secret"}});
            if let Some(l) = labels {
                body["selectorLabels"] = json!(l);
            }
            let r = api
                .admin(Method::POST, "/api/v1/pipelines", Some(body))
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
            r.body
        }
    };
    let guarded = create("guarded", Some("operator")).await;
    assert_eq!(guarded["selectorLabels"], "operator");
    let open = create("open", None).await;
    assert_eq!(open["selectorLabels"], "any");
    let guarded = guarded["id"].as_str().unwrap().to_owned();
    let open = open["id"].as_str().unwrap().to_owned();

    let r = api.deploy(&guarded).await;
    assert_eq!(
        r.body["notifiedNodes"], 0,
        "a claimed label notifies no one"
    );
    let r = api.deploy(&open).await;
    assert_eq!(r.body["notifiedNodes"], 1);
    assert_eq!(names(&api.agent_config(&token).await.body), ["open"]);

    // A new version keeps the option unless it names another.
    let r = api
        .update_pipeline(
            &guarded,
            json!({"configYaml": flotilla_testkit::vector_config("a2")}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["selectorLabels"], "operator");
    let r = api.deploy(&guarded).await;
    assert_eq!(r.body["notifiedNodes"], 0);
    assert_eq!(names(&api.agent_config(&token).await.body), ["open"]);

    // Once an operator sets the label, the node is told and gets the pipeline.
    let mut channel =
        flotilla_testkit::listen::node_channels(&flotilla_testkit::redis_url(), &[node.as_str()])
            .await;
    api.set_labels(&node, json!({"tier": "secret"})).await;
    let (_, frame) = channel.next().await;
    assert_eq!(frame["type"], "config_changed");
    assert_eq!(
        names(&api.agent_config(&token).await.body),
        ["guarded", "open"]
    );
    let r = api.deploy(&guarded).await;
    assert_eq!(r.body["notifiedNodes"], 1);

    // The option is one of two words.
    let r = api
        .update_pipeline(
            &guarded,
            json!({"configYaml": flotilla_testkit::vector_config("a3"), "selectorLabels": "sometimes"}),
        )
        .await;
    assert!(r.status.is_client_error(), "{}", r.text);
    let r = api
        .update_pipeline(
            &guarded,
            json!({"configYaml": flotilla_testkit::vector_config("a3"), "selectorLabels": "any"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // Like the selector, the option takes effect when its version is deployed.
    assert_eq!(r.body["selectorLabels"], "operator");
    let shown = api
        .admin(Method::GET, &format!("/api/v1/pipelines/{guarded}"), None)
        .await
        .body;
    let labels: Vec<&Value> = shown["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["selectorLabels"])
        .collect();
    assert_eq!(
        labels,
        [&json!("operator"), &json!("operator"), &json!("any")]
    );

    // The OpenAPI document describes the option.
    let doc = api
        .call(Method::GET, "/api/openapi.json", None, None)
        .await
        .body;
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["SelectorLabels"]["enum"],
        json!(["any", "operator"])
    );
    for body in ["CreatePipeline", "UpdatePipeline", "PipelineRow"] {
        assert!(
            schemas[body]["properties"]["selectorLabels"].is_object(),
            "{body}: {}",
            schemas[body]
        );
    }
}
