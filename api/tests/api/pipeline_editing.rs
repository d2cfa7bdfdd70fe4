//! Editing pipelines: configs checked as Vector reads them (with the line of the error), kept
//! byte for byte, versions and their diffs, and the selector preview a deploy agrees with.

use crate::common;

use flotilla_testkit::api::ApiHandle;
use flotilla_testkit::vector_config;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Each refused config, the line its error names, and a word of the reason.
const REFUSED: &[(&str, usize, &str)] = &[
    // Not YAML.
    (
        "sources:\n  in:\n    type: demo_logs\n    include: [a, b\nsinks: {}\n",
        5,
        "",
    ),
    (
        "sources:\n  in: {type: a}\n  in: {type: b}\n",
        3,
        "duplicated key",
    ),
    // Not Vector's top-level shape.
    ("", 1, "non-empty"),
    ("# nothing but a comment\n", 1, "empty"),
    ("- sources\n- sinks\n", 1, "top level"),
    (
        "sources:\n  in: {type: a}\nsinks:\n  out: {type: b, inputs: [in]}\nsink:\n  x: {}\n",
        5,
        "`sink`",
    ),
    ("sinks:\n  out: {type: b, inputs: [in]}\n", 1, "no sources"),
    ("sources:\n  in: {type: a}\n", 1, "no sinks"),
    ("sources: [a, b]\nsinks: {}\n", 1, "mapping"),
    (
        "sources:\n  in: demo_logs\nsinks:\n  out: {type: b, inputs: [in]}\n",
        2,
        "mapping",
    ),
    (
        "sources:\n  in:\n    format: json\nsinks:\n  out: {type: b, inputs: [in]}\n",
        2,
        "no `type`",
    ),
    (
        "sources:\n  in:\n    type: [a]\nsinks:\n  out: {type: b, inputs: [in]}\n",
        3,
        "`type`",
    ),
    (
        "sources:\n  in: {type: a}\nsinks:\n  out:\n    type: b\n",
        4,
        "no `inputs`",
    ),
    (
        "sources:\n  in: {type: a}\nsinks:\n  out:\n    type: b\n    inputs: []\n",
        6,
        "non-empty list",
    ),
    (
        "sources:\n  in: {type: a}\ntransforms:\n  t:\n    type: remap\n    inputs:\n      - in\n      - missing\nsinks:\n  out: {type: b, inputs: [t]}\n",
        8,
        "`missing`",
    ),
    (
        "sources:\n  in: {type: a}\nsinks:\n  out: {type: b, inputs: [\"nothing*\"]}\n",
        4,
        "matches no",
    ),
    (
        "sources:\n  in: {type: a}\nsinks:\n  in: {type: b, inputs: [in]}\n",
        4,
        "unique",
    ),
    (
        "sources:\n  in.put: {type: a}\nsinks:\n  out: {type: b, inputs: [in.put]}\n",
        2,
        "may not contain `.`",
    ),
];

fn check_refusal(r: &flotilla_testkit::api::Reply, line: usize, word: &str, yaml: &str) {
    assert_eq!(
        r.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{yaml:?} → {}",
        r.text
    );
    assert!(r.body["error"].is_string(), "{}", r.text);
    let details = &r.body["details"];
    assert_eq!(details["field"], "configYaml", "{}", r.text);
    let reason = details["reason"].as_str().unwrap();
    assert!(reason.contains(word), "{yaml:?}: {reason}");
    if !yaml.trim().is_empty() {
        assert_eq!(details["line"], line, "{yaml:?} → {}", r.text);
    }
}

async fn pipeline_names(api: &ApiHandle) -> Vec<String> {
    let r = api.admin(Method::GET, "/api/v1/pipelines", None).await;
    r.body["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn each_kind_of_bad_config_is_refused_with_its_line_and_nothing_is_stored() {
    let (_db, api) = common::start().await;
    let (env, _) = api.create_environment("prod").await;
    let editor = api.operator_token("editor").await.1;
    let viewer = api.operator_token("viewer").await.1;
    let existing = api
        .create_pipeline(&env, "kept", &vector_config("v1"), json!({}))
        .await;
    for (yaml, line, word) in REFUSED {
        let create = json!({"environmentId": env, "name": "new", "configYaml": yaml});
        let r = api
            .call(
                Method::POST,
                "/api/v1/pipelines",
                Some(&editor),
                Some(create),
            )
            .await;
        check_refusal(&r, *line, word, yaml);
        let r = api
            .update_pipeline(&existing, json!({"configYaml": yaml}))
            .await;
        check_refusal(&r, *line, word, yaml);
        let r = api
            .call(
                Method::POST,
                "/api/v1/pipelines/validate",
                Some(&editor),
                Some(json!({"configYaml": yaml})),
            )
            .await;
        check_refusal(&r, *line, word, yaml);
    }
    // A syntax error also names its column.
    let r = api
        .call(
            Method::POST,
            "/api/v1/pipelines/validate",
            Some(&editor),
            Some(json!({"configYaml": REFUSED[1].0})),
        )
        .await;
    assert!(
        r.body["details"]["column"].as_u64().unwrap() >= 1,
        "{}",
        r.text
    );

    assert_eq!(pipeline_names(&api).await, ["kept"]);
    let r = api
        .admin(Method::GET, &format!("/api/v1/pipelines/{existing}"), None)
        .await;
    assert_eq!(r.body["latestVersion"], 1, "{}", r.text);

    let valid = json!({"configYaml": vector_config("v2")});
    let r = api
        .call(
            Method::POST,
            "/api/v1/pipelines/validate",
            Some(&editor),
            Some(valid.clone()),
        )
        .await;
    assert_eq!((r.status, r.body), (StatusCode::OK, json!({"valid": true})));
    let r = api
        .call(
            Method::POST,
            "/api/v1/pipelines/validate",
            Some(&viewer),
            Some(valid),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api
        .call(
            Method::POST,
            "/api/v1/pipelines/validate",
            Some(&editor),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_valid_config_is_stored_and_served_byte_for_byte() {
    let (_db, api) = common::start().await;
    let (env, enroll) = api.create_environment("prod").await;
    let (_, node) = api.enroll(&enroll, "web-1").await;
    // Comments, odd spacing, quoting, anchors, a named output, a glob, CRLF line ends, no
    // final newline: all Vector's to read, all kept.
    let yaml = "# edge pipeline\r\ndata_dir:   /var/lib/vector   # state\r\nsources:\r\n  in_logs: &src\r\n    type: 'demo_logs'\r\n    format: \"json\"\r\n  in_more: *src\r\ntransforms:\r\n  split:\r\n    type: route\r\n    inputs: [\"in_*\"]\r\n    route: {errors: '.level == \"error\"'}\r\nsinks:\r\n  out:\r\n    type: blackhole\r\n    inputs:\r\n      - split.errors\r\n      - in_logs";
    let id = api.create_pipeline(&env, "edge", yaml, json!({})).await;
    let r = api
        .admin(
            Method::GET,
            &format!("/api/v1/pipelines/{id}/versions/1"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["configYaml"], yaml);
    assert_eq!(
        r.body["checksum"],
        flotilla_shared::auth::tokens::sha256_hex(yaml.as_bytes())
    );
    assert_eq!(api.deploy(&id).await.status, StatusCode::OK);
    let c = api.agent_config(&node).await;
    assert_eq!(c.body["pipelines"][0]["configYaml"], yaml, "{}", c.text);
}

#[tokio::test]
async fn versions_are_listed_newest_first_shown_and_diffed() {
    let (_db, api) = common::start().await;
    let (env, _) = api.create_environment("prod").await;
    let viewer = api.operator_token("viewer").await.1;
    let v1 = "sources:\n  in:\n    type: demo_logs\n    format: json\nsinks:\n  out:\n    type: blackhole\n    inputs: [in]\n";
    let v2 = v1.replace("format: json", "format: syslog");
    let v3 = format!("{v2}  console:\n    type: console\n    inputs: [in]\n");
    let id = api
        .create_pipeline(&env, "p", v1, json!({"role": "web"}))
        .await;
    let r = api
        .update_pipeline(&id, json!({"configYaml": v2, "logLevel": "debug"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = api
        .update_pipeline(
            &id,
            json!({"configYaml": v3, "nodeSelector": {"role": "db"}, "selectorLabels": "operator"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    let get = |path: String| {
        let api = &api;
        let viewer = viewer.clone();
        async move { api.call(Method::GET, &path, Some(&viewer), None).await }
    };
    let r = get(format!("/api/v1/pipelines/{id}/versions")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let versions = r.body["versions"].as_array().unwrap();
    let numbers: Vec<i64> = versions
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [3, 2, 1]);
    assert_eq!(versions[0]["nodeSelector"], json!({"role": "db"}));
    assert_eq!(versions[0]["selectorLabels"], "operator");
    assert_eq!(versions[1]["logLevel"], "debug");
    assert_eq!(versions[1]["nodeSelector"], json!({"role": "web"}));
    assert_eq!(versions[2]["selectorLabels"], "any");
    assert_eq!(
        versions[2]["checksum"],
        flotilla_shared::auth::tokens::sha256_hex(v1.as_bytes())
    );
    assert!(versions[2]["createdAt"].is_string());
    assert!(versions[0].get("configYaml").is_none());

    let r = get(format!("/api/v1/pipelines/{id}/versions/2")).await;
    assert_eq!(r.body["configYaml"], v2.as_str());
    assert_eq!(r.body["version"], 2);
    for missing in ["9", "0", "two"] {
        let r = get(format!("/api/v1/pipelines/{id}/versions/{missing}")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{missing}: {}", r.text);
    }

    // Any two versions.
    let r = get(format!("/api/v1/pipelines/{id}/diff?from=1&to=3")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (r.body["from"].clone(), r.body["to"].clone()),
        (json!(1), json!(3))
    );
    let diff = r.body["diff"].as_str().unwrap();
    assert!(
        diff.starts_with("--- version 1\n+++ version 3\n@@ "),
        "{diff}"
    );
    assert!(
        diff.contains("\n-    format: json\n+    format: syslog\n"),
        "{diff}"
    );
    assert!(
        diff.contains("\n+  console:\n+    type: console\n+    inputs: [in]\n"),
        "{diff}"
    );
    let r = get(format!("/api/v1/pipelines/{id}/diff?from=3&to=1")).await;
    assert!(r.body["diff"].as_str().unwrap().contains("\n-  console:\n"));
    let r = get(format!("/api/v1/pipelines/{id}/diff?from=2&to=2")).await;
    assert_eq!(r.body["diff"], "");

    // Defaults: nothing deployed, the previous version against the latest; once deployed, the
    // deployed one against the latest.
    let r = get(format!("/api/v1/pipelines/{id}/diff")).await;
    assert_eq!(
        (r.body["from"].clone(), r.body["to"].clone()),
        (json!(2), json!(3))
    );
    let r = api
        .admin(
            Method::POST,
            &format!("/api/v1/pipelines/{id}/deploy"),
            Some(json!({"version": 1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = get(format!("/api/v1/pipelines/{id}/diff?to=2")).await;
    assert_eq!(
        (r.body["from"].clone(), r.body["to"].clone()),
        (json!(1), json!(2))
    );
    assert!(r.body["diff"]
        .as_str()
        .unwrap()
        .contains("+    format: syslog"));

    // Unknown versions, pipelines and bad numbers say so.
    let r = get(format!("/api/v1/pipelines/{id}/diff?from=7")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(
        r.body["error"].as_str().unwrap().contains("version"),
        "{}",
        r.text
    );
    let r = get(format!("/api/v1/pipelines/{id}/diff?to=x")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let other = uuid::Uuid::new_v4();
    for path in [
        format!("/api/v1/pipelines/{other}/versions"),
        format!("/api/v1/pipelines/{other}/versions/1"),
        format!("/api/v1/pipelines/{other}/diff"),
    ] {
        let r = get(path.clone()).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.body["error"], "pipeline not found");
    }
}

/// The node ids whose agent config carries `pipeline`.
async fn reached(api: &ApiHandle, nodes: &[(String, String)], pipeline: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (id, token) in nodes {
        let c = api.agent_config(token).await.body;
        let has = c["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pipelineId"] == pipeline);
        if has {
            out.insert(id.clone());
        }
    }
    out
}

async fn preview(api: &ApiHandle, token: &str, env: &str, body: Value) -> Value {
    let r = api
        .call(
            Method::POST,
            &format!("/api/v1/environments/{env}/selector-preview"),
            Some(token),
            Some(body),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

#[tokio::test]
async fn the_selector_preview_counts_exactly_the_nodes_a_deploy_reaches() {
    let (_db, api) = common::start().await;
    let (env, enroll) = api.create_environment("prod").await;
    let (_, other_enroll) = api.create_environment("staging").await;
    let viewer = api.operator_token("viewer").await.1;
    // 26 nodes: every third has role=web set by an operator, every fourth reports it itself.
    let mut nodes = Vec::new();
    for i in 0..26 {
        let (id, token) = api.enroll(&enroll, &format!("host-{i:02}")).await;
        if i % 3 == 0 {
            api.set_labels(&id, json!({"role": "web", "zone": format!("z{}", i % 2)}))
                .await;
        } else if i % 4 == 0 {
            let r = api
                .call(
                    Method::POST,
                    "/api/agent/heartbeat",
                    Some(&token),
                    Some(json!({"pipelines": [], "labels": {"role": "web"}})),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        }
        nodes.push((id, token));
    }
    // A node of another environment never counts.
    let (_, stranger) = api.enroll(&other_enroll, "host-00").await;
    let r = api
        .call(
            Method::POST,
            "/api/agent/heartbeat",
            Some(&stranger),
            Some(json!({"pipelines": [], "labels": {"role": "web"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // host-03 (role=web set by an operator) is in maintenance: it matches, but runs nothing
    // until maintenance ends, so the preview counts it apart.
    let r = api
        .admin(
            Method::POST,
            &format!("/api/v1/fleet/{}/maintenance", nodes[3].0),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    let web = preview(
        &api,
        &viewer,
        &env,
        json!({"nodeSelector": {"role": "web"}}),
    )
    .await;
    let operator = preview(
        &api,
        &viewer,
        &env,
        json!({"nodeSelector": {"role": "web"}, "selectorLabels": "operator"}),
    )
    .await;
    let zone = preview(
        &api,
        &viewer,
        &env,
        json!({"nodeSelector": {"role": "web", "zone": "z0"}}),
    )
    .await;
    let everyone = preview(&api, &viewer, &env, json!({"nodeSelector": {}})).await;
    let nobody = preview(&api, &viewer, &env, json!({"nodeSelector": {"role": "db"}})).await;
    assert_eq!(everyone["count"], 25);
    assert_eq!(everyone["inMaintenance"], 1);
    assert_eq!(everyone["nodes"].as_array().unwrap().len(), 20);
    assert_eq!(nobody, json!({"count": 0, "inMaintenance": 0, "nodes": []}));
    let resting = &web["nodes"][1];
    assert_eq!(resting["host"], "host-03");
    assert_eq!(resting["maintenance"], true);
    // Rows come by host, with their effective labels and status.
    let first = &web["nodes"][0];
    assert_eq!(first["host"], "host-00");
    assert_eq!(first["labels"], json!({"role": "web", "zone": "z0"}));
    assert_eq!(first["status"], "HEALTHY");
    let hosts: Vec<&str> = web["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["host"].as_str().unwrap())
        .collect();
    let mut sorted = hosts.clone();
    sorted.sort();
    assert_eq!(hosts, sorted);

    // Deploy to each previewed selector: the nodes that get the config are exactly those.
    let cases = [
        ("web", json!({"role": "web"}), None, &web),
        (
            "operator",
            json!({"role": "web"}),
            Some("operator"),
            &operator,
        ),
        ("zone", json!({"role": "web", "zone": "z0"}), None, &zone),
    ];
    for (name, selector, labels, shown) in cases {
        let mut body = json!({"environmentId": env, "name": name,
            "configYaml": vector_config(name), "nodeSelector": selector});
        if let Some(l) = labels {
            body["selectorLabels"] = json!(l);
        }
        let r = api
            .admin(Method::POST, "/api/v1/pipelines", Some(body))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let pipeline = r.body["id"].as_str().unwrap().to_owned();
        assert_eq!(api.deploy(&pipeline).await.status, StatusCode::OK);
        let got = reached(&api, &nodes, &pipeline).await;
        let listed: BTreeSet<String> = shown["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["maintenance"] == false)
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(shown["count"], got.len(), "{name}");
        assert!(got.len() <= 20, "every reached node is listed");
        assert_eq!(listed, got, "{name}");
    }
    // role=web: 9 operator-labelled (0, 3, …, 24) and 4 reporting it (4, 8, 16, 20), less
    // host-03 in maintenance.
    assert_eq!(
        (&web["count"], &web["inMaintenance"]),
        (&json!(12), &json!(1))
    );
    assert_eq!(
        (&operator["count"], &operator["inMaintenance"]),
        (&json!(8), &json!(1))
    );
    assert_eq!(
        (&zone["count"], &zone["inMaintenance"]),
        (&json!(5), &json!(0))
    );

    // Bad input is refused clearly; an unknown environment is 404.
    let r = api
        .call(
            Method::POST,
            &format!("/api/v1/environments/{env}/selector-preview"),
            Some(&viewer),
            Some(json!({"nodeSelector": {"role": 1}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["details"]["field"], "nodeSelector");
    let r = api
        .call(
            Method::POST,
            &format!(
                "/api/v1/environments/{}/selector-preview",
                uuid::Uuid::new_v4()
            ),
            Some(&viewer),
            Some(json!({"nodeSelector": {}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api
        .call(
            Method::POST,
            &format!("/api/v1/environments/{env}/selector-preview"),
            None,
            Some(json!({"nodeSelector": {}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_openapi_document_covers_the_editing_routes() {
    let (_db, api) = common::start().await;
    let r = api.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let paths = &r.body["paths"];
    for (path, method) in [
        ("/api/v1/pipelines/validate", "post"),
        ("/api/v1/pipelines/{id}/versions", "get"),
        ("/api/v1/pipelines/{id}/versions/{version}", "get"),
        ("/api/v1/pipelines/{id}/diff", "get"),
        ("/api/v1/environments/{id}/selector-preview", "post"),
        ("/api/v1/audit", "get"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} documented"
        );
    }
    let audit_filters: Vec<&str> = paths["/api/v1/audit"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for filter in ["action", "targetType", "targetId", "tokenId"] {
        assert!(audit_filters.contains(&filter), "{filter}");
    }
    let refusal = &paths["/api/v1/pipelines"]["post"]["responses"]["422"];
    assert!(refusal.is_object(), "create documents its 422");
}
