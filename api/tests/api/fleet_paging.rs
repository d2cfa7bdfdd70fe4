//! The fleet at scale: keyset pages, server-side filters, the summary, bulk actions, the audit
//! of node changes, and fleet events only for changes the page shows. A real api on a fresh
//! Postgres database and the local Redis; presence is claimed in Redis as a gateway claims it.

use crate::common;

use flotilla_shared::channels::FLEET_EVENTS;
use flotilla_shared::presence::{self, Presence, Transport};
use flotilla_shared::redis_conn::Redis;
use flotilla_testkit::api::ApiHandle;
use flotilla_testkit::db::TestDb;
use flotilla_testkit::{listen, vector_config, within};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use uuid::Uuid;

const QUIET: Duration = Duration::from_millis(300);

fn redis() -> Redis {
    Redis::new(&flotilla_shared::settings::RedisSettings {
        url: flotilla_shared::secret::Secret::new(flotilla_testkit::redis_url()),
        cluster_nodes: None,
        command_timeout_ms: 2000,
    })
    .unwrap()
}

/// A gateway's presence for `nodes`, as a live gateway records it; released on drop of the
/// returned guard's `release` call.
struct Gateway {
    id: String,
    held: Vec<(Uuid, String)>,
}

impl Gateway {
    async fn start() -> Self {
        let id = format!("gw-test-{}", Uuid::new_v4().simple());
        let mut cmd = redis::cmd("SET");
        cmd.arg(flotilla_shared::presence::keys(&redis()).alive(&id))
            .arg(1)
            .arg("EX")
            .arg(120);
        redis().query::<()>(&cmd).await.unwrap();
        Gateway {
            id,
            held: Vec::new(),
        }
    }

    async fn connect(&mut self, node: &str, transport: Transport) {
        let node: Uuid = node.parse().unwrap();
        let conn = Uuid::new_v4().to_string();
        let p = Presence {
            gateway_id: self.id.clone(),
            conn_id: conn.clone(),
            since_ms: 1,
            transport,
        };
        presence::claim(&redis(), node, &p, None).await.unwrap();
        self.held.push((node, conn));
    }

    async fn stop(self) {
        for (node, conn) in &self.held {
            presence::release(&redis(), *node, conn, None)
                .await
                .unwrap();
        }
    }
}

async fn get(api: &ApiHandle, path: &str) -> Value {
    let r = api.admin(Method::GET, path, None).await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
    r.body
}

fn hosts(page: &Value) -> Vec<String> {
    page["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["host"].as_str().unwrap().to_owned())
        .collect()
}

async fn heartbeat(api: &ApiHandle, token: &str, body: Value) {
    let r = api
        .call(
            Method::POST,
            "/api/agent/heartbeat",
            Some(token),
            Some(body),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

/// Walks every page of `query` (limit `limit`), calling `between` after each page.
async fn walk(
    api: &ApiHandle,
    query: &str,
    limit: usize,
    mut between: impl AsyncFnMut(usize),
) -> Vec<Value> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0.. {
        let mut path = format!("/api/v1/fleet?{query}&limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let body = get(api, &path).await;
        let nodes = body["nodes"].as_array().unwrap();
        assert!(nodes.len() <= limit);
        seen.extend(nodes.iter().cloned());
        match body["nextCursor"].as_str() {
            Some(c) => {
                assert_eq!(nodes.len(), limit, "only a full page has a next one");
                cursor = Some(c.to_owned());
            }
            None => break,
        }
        between(page).await;
    }
    seen
}

#[tokio::test]
async fn paging_by_host_walks_every_node_once_while_nodes_are_added() {
    let (db, api) = common::start_with(|s| s.api.enroll_per_minute = 10_000).await;
    let (env, enroll) = api.create_environment("prod").await;
    let mut expected = BTreeSet::new();
    for i in 0..23 {
        // Mixed case: the order is case-insensitive.
        let host = if i % 2 == 0 {
            format!("node-{i:02}")
        } else {
            format!("Node-{i:02}")
        };
        let (id, _) = api.enroll(&enroll, &host).await;
        expected.insert(id);
    }
    // Two of the same host: the id breaks the tie, so neither is lost or repeated.
    for _ in 0..2 {
        expected.insert(api.enroll(&enroll, "node-10").await.0);
    }
    let mut added_after = BTreeSet::new();
    let seen = walk(&api, &format!("environmentId={env}"), 4, async |page| {
        // One node before every cursor (never shown: the walk is past it) and one after.
        api.enroll(&enroll, &format!("a-early-{page}")).await;
        added_after.insert(api.enroll(&enroll, &format!("zz-late-{page}")).await.0);
    })
    .await;
    let ids: Vec<String> = seen
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "no node twice");
    assert!(
        expected.is_subset(&unique),
        "every node present at the start"
    );
    assert!(
        added_after.is_subset(&unique),
        "nodes added after the cursor are reached"
    );
    assert!(
        seen.iter()
            .all(|n| !n["host"].as_str().unwrap().starts_with("a-early")),
        "nodes added before the cursor are not"
    );
    let keys: Vec<(String, String)> = seen
        .iter()
        .map(|n| {
            (
                n["host"].as_str().unwrap().to_lowercase(),
                n["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "case-insensitive host order, then id");

    // The default page is 100 nodes.
    let hosts: Vec<String> = (1..=90).map(|i| format!("bulk-{i}")).collect();
    flotilla_testkit::seed::nodes(&db.pool, env.parse().unwrap(), &hosts, &[], false)
        .await
        .unwrap();
    let first = get(&api, "/api/v1/fleet").await;
    assert_eq!(first["nodes"].as_array().unwrap().len(), 100);
    assert!(first["nextCursor"].is_string());
}

#[tokio::test]
async fn paging_by_last_seen_is_newest_first_with_never_seen_last() {
    let (db, api) = common::start().await;
    let (env, enroll) = api.create_environment("prod").await;
    let mut ids = Vec::new();
    for i in 0..9 {
        ids.push(api.enroll(&enroll, &format!("h{i}")).await.0);
    }
    // Three share a last-seen time, three were never seen.
    sqlx::query(
        "UPDATE nodes SET last_seen = CASE
            WHEN host IN ('h0', 'h1', 'h2') THEN NULL
            WHEN host IN ('h3', 'h4', 'h5') THEN '2026-01-01T00:00:00Z'::timestamptz
            ELSE now() - (substr(host, 2)::int * interval '1 minute') END",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let seen = walk(
        &api,
        &format!("environmentId={env}&sort=lastSeen"),
        2,
        async |_| {},
    )
    .await;
    let order: Vec<&str> = seen.iter().map(|n| n["host"].as_str().unwrap()).collect();
    assert_eq!(order.len(), 9, "{order:?}");
    assert_eq!(&order[..3], &["h6", "h7", "h8"]);
    let mid: BTreeSet<&str> = order[3..6].iter().copied().collect();
    assert_eq!(mid, BTreeSet::from(["h3", "h4", "h5"]));
    let never: BTreeSet<&str> = order[6..].iter().copied().collect();
    assert_eq!(never, BTreeSet::from(["h0", "h1", "h2"]));
    assert!(seen[6..].iter().all(|n| n["lastSeen"].is_null()));
}

/// An environment with four nodes in known states, another environment with one.
struct Fleet {
    _db: TestDb,
    api: ApiHandle,
    env: String,
    web1: String,
    web2: String,
    db1: String,
    db2: String,
    p1: String,
    p2: String,
    gateway: Option<Gateway>,
}

async fn fleet() -> Fleet {
    let (db, api) = common::start().await;
    let (env, enroll) = api.create_environment("prod").await;
    let (_, other_enroll) = api.create_environment("other").await;
    let p1 = api
        .create_pipeline(&env, "p1", &vector_config("p1"), json!({}))
        .await;
    let p2 = api
        .create_pipeline(&env, "p2", &vector_config("p2"), json!({}))
        .await;
    let mut tokens = BTreeMap::new();
    let mut node = async |enroll: &str, host: &str| {
        let (id, token) = api.enroll(enroll, host).await;
        tokens.insert(id.clone(), token);
        id
    };
    let web1 = node(&enroll, "web-1").await;
    let web2 = node(&enroll, "Web-2").await;
    let db1 = node(&enroll, "db-1").await;
    let db2 = node(&enroll, "db-2").await;
    let far = node(&other_enroll, "web-9").await;
    for (id, role) in [
        (&web1, "web"),
        (&web2, "web"),
        (&db1, "db"),
        (&db2, "db"),
        (&far, "web"),
    ] {
        api.set_labels(id, json!({ "role": role })).await;
    }
    let beat = |p: &str, status: &str, extra: Value| {
        let mut b = json!({"pipelines": [{"pipelineId": p, "version": 1, "status": status}]});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    heartbeat(
        &api,
        &tokens[&web1],
        beat(&p1, "RUNNING", json!({"labels": {"zone": "eu"}})),
    )
    .await;
    heartbeat(&api, &tokens[&web2], beat(&p1, "CRASHED", json!({}))).await;
    heartbeat(&api, &tokens[&db1], beat(&p2, "CRASH_LOOP", json!({}))).await;
    heartbeat(
        &api,
        &tokens[&db2],
        beat(&p2, "RUNNING", json!({"deploymentMode": "DOCKER"})),
    )
    .await;
    sqlx::query("UPDATE nodes SET status = 'UNREACHABLE' WHERE id = $1::uuid")
        .bind(&web2)
        .execute(&db.pool)
        .await
        .unwrap();
    let r = api
        .admin(
            Method::POST,
            &format!("/api/v1/fleet/{db1}/maintenance"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let mut gateway = Gateway::start().await;
    gateway.connect(&web1, Transport::Websocket).await;
    gateway.connect(&db1, Transport::Sse).await;
    gateway.connect(&far, Transport::Sse).await;
    Fleet {
        _db: db,
        api,
        env,
        web1,
        web2,
        db1,
        db2,
        p1,
        p2,
        gateway: Some(gateway),
    }
}

impl Fleet {
    async fn hosts(&self, filters: &str) -> BTreeSet<String> {
        let body = get(
            &self.api,
            &format!("/api/v1/fleet?environmentId={}&{filters}", self.env),
        )
        .await;
        hosts(&body).into_iter().collect()
    }

    async fn stop(mut self) {
        self.gateway.take().unwrap().stop().await;
    }
}

fn set(hosts: &[&str]) -> BTreeSet<String> {
    hosts.iter().map(|h| h.to_string()).collect()
}

#[tokio::test]
async fn each_filter_and_their_combinations_select_exactly_the_matching_nodes() {
    let f = fleet().await;
    let all = set(&["web-1", "Web-2", "db-1", "db-2"]);
    assert_eq!(f.hosts("").await, all);
    assert_eq!(
        f.hosts("status=HEALTHY").await,
        set(&["web-1", "db-1", "db-2"])
    );
    assert_eq!(f.hosts("status=UNREACHABLE").await, set(&["Web-2"]));
    assert_eq!(f.hosts("connected=true").await, set(&["web-1", "db-1"]));
    assert_eq!(f.hosts("connected=false").await, set(&["Web-2", "db-2"]));
    assert_eq!(f.hosts("transport=sse").await, set(&["db-1"]));
    assert_eq!(f.hosts("transport=websocket").await, set(&["web-1"]));
    assert!(f.hosts("connected=false&transport=sse").await.is_empty());
    assert_eq!(f.hosts("label=role%3Dweb").await, set(&["web-1", "Web-2"]));
    // Reported and operator labels together; every label must match.
    assert_eq!(
        f.hosts("label=role%3Dweb&label=zone%3Deu").await,
        set(&["web-1"])
    );
    assert!(f.hosts("label=role%3Ddb&label=zone%3Deu").await.is_empty());
    assert_eq!(f.hosts("host=WEB").await, set(&["web-1", "Web-2"]));
    assert_eq!(f.hosts("host=db-").await, set(&["db-1", "db-2"]));
    // A prefix is literal: LIKE wildcards match nothing special.
    assert!(f.hosts("host=web%25").await.is_empty());
    assert!(f.hosts("host=_").await.is_empty());
    assert_eq!(
        f.hosts(&format!("pipelineId={}", f.p1)).await,
        set(&["web-1", "Web-2"])
    );
    assert_eq!(
        f.hosts(&format!("pipelineId={}&pipelineStatus=CRASHED", f.p1))
            .await,
        set(&["Web-2"])
    );
    assert!(f
        .hosts(&format!("pipelineId={}&pipelineStatus=CRASHED", f.p2))
        .await
        .is_empty());
    assert_eq!(
        f.hosts("pipelineStatus=RUNNING").await,
        set(&["web-1", "db-2"])
    );
    assert_eq!(f.hosts("pipelineStatus=CRASH_LOOP").await, set(&["db-1"]));
    assert_eq!(f.hosts("crashed=true").await, set(&["Web-2", "db-1"]));
    assert_eq!(f.hosts("crashed=false").await, set(&["web-1", "db-2"]));
    assert_eq!(f.hosts("maintenance=true").await, set(&["db-1"]));
    assert_eq!(
        f.hosts(&format!("ids={},{}", f.web1, f.db2)).await,
        set(&["web-1", "db-2"])
    );
    // Combinations.
    assert_eq!(f.hosts("crashed=true&connected=true").await, set(&["db-1"]));
    assert_eq!(
        f.hosts("status=HEALTHY&label=role%3Dweb").await,
        set(&["web-1"])
    );
    assert_eq!(
        f.hosts("host=d&pipelineStatus=RUNNING&connected=false")
            .await,
        set(&["db-2"])
    );
    assert_eq!(
        f.hosts(&format!("ids={},{}&crashed=true", f.web1, f.web2))
            .await,
        set(&["Web-2"])
    );
    // Without an environment, the other environment's node is listed too.
    let everywhere = get(&f.api, "/api/v1/fleet?label=role%3Dweb&transport=sse").await;
    assert_eq!(hosts(&everywhere), vec!["web-9"]);
    // A filtered walk pages like an unfiltered one.
    let seen = walk(
        &f.api,
        &format!("environmentId={}&connected=false", f.env),
        1,
        async |_| {},
    )
    .await;
    assert_eq!(seen.len(), 2);

    // Presence, counts and last-known pipelines as shown.
    let body = get(&f.api, &format!("/api/v1/fleet?ids={},{}", f.db1, f.web2)).await;
    let by_host: BTreeMap<&str, &Value> = body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["host"].as_str().unwrap(), n))
        .collect();
    let db1 = by_host["db-1"];
    assert_eq!(db1["wsConnected"], true);
    assert_eq!(db1["pushTransport"], "sse");
    assert_eq!(db1["crashedPipelines"], 1);
    assert!(db1["pipelines"][0].get("lastKnown").is_none());
    let web2 = by_host["Web-2"];
    assert_eq!(web2["pipelines"][0]["status"], "CRASHED");
    assert_eq!(web2["pipelines"][0]["lastKnown"], true);
    let detail = get(&f.api, &format!("/api/v1/fleet/{}", f.web2)).await;
    assert_eq!(detail["pipelines"][0]["lastKnown"], true);
    f.stop().await;
}

#[tokio::test]
async fn bad_limits_cursors_and_filters_are_422_naming_the_parameter() {
    let (_db, api) = common::start().await;
    let (env, enroll) = api.create_environment("prod").await;
    for i in 0..3 {
        api.enroll(&enroll, &format!("h{i}")).await;
    }
    let host_cursor = get(&api, &format!("/api/v1/fleet?environmentId={env}&limit=1")).await
        ["nextCursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let cases = [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=eyJzb3J0IjoiaG9zdCJ9", "cursor"),
        (
            &format!("sort=lastSeen&cursor={host_cursor}") as &str,
            "cursor",
        ),
        ("sort=random", "sort"),
        ("status=SICK", "status"),
        ("status=healthy", "status"),
        ("status=HEALTHY&status=UNREACHABLE", "status"),
        ("connected=yes", "connected"),
        ("transport=pigeon", "transport"),
        ("label=role", "label"),
        ("label=%3Dweb", "label"),
        ("label=a%3D1&label=a%3D2", "label"),
        ("host=", "host"),
        ("pipelineId=p1", "pipelineId"),
        ("pipelineStatus=BUSY", "pipelineStatus"),
        ("crashed=1", "crashed"),
        ("maintenance=on", "maintenance"),
        ("ids=not-a-uuid", "ids"),
        ("ids=", "ids"),
        ("environmentId=prod", "environmentId"),
    ];
    for (query, field) in cases {
        let r = api
            .admin(Method::GET, &format!("/api/v1/fleet?{query}"), None)
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {}",
            r.text
        );
        assert_eq!(r.body["details"]["field"], field, "{query}: {}", r.text);
        assert!(r.body["error"].is_string());
    }
    let many: Vec<String> = (0..1001).map(|_| Uuid::new_v4().to_string()).collect();
    let r = api
        .admin(
            Method::GET,
            &format!("/api/v1/fleet?ids={}", many.join(",")),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["details"]["field"], "ids");
    let r = api
        .admin(
            Method::GET,
            "/api/v1/fleet/summary?environmentId=prod",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["details"]["field"], "environmentId");
}

#[tokio::test]
async fn the_summary_counts_statuses_presence_crashes_and_maintenance() {
    let f = fleet().await;
    let s = get(
        &f.api,
        &format!("/api/v1/fleet/summary?environmentId={}", f.env),
    )
    .await;
    assert_eq!(
        s,
        json!({
            "total": 4, "byStatus": {"HEALTHY": 3, "UNREACHABLE": 1}, "connected": 2,
            "crashedPipelines": 2, "crashedNodes": 2, "maintenance": 1
        })
    );
    let all = get(&f.api, "/api/v1/fleet/summary").await;
    assert_eq!(all["total"], 5);
    assert_eq!(all["connected"], 3);
    let (_, viewer) = f.api.operator_token("viewer").await;
    let r = f
        .api
        .call(Method::GET, "/api/v1/fleet/summary", Some(&viewer), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    f.stop().await;
}

async fn bulk(api: &ApiHandle, body: Value) -> flotilla_testkit::api::Reply {
    api.admin(Method::POST, "/api/v1/fleet/actions", Some(body))
        .await
}

async fn audit_actions(db: &TestDb, action: &str) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT json_build_object('tokenName', token_name, 'targetId', target_id, 'detail', detail)::jsonb
         FROM audit_log WHERE action = $1 ORDER BY id",
    )
    .bind(action)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn bulk_actions_change_exactly_the_matched_nodes_and_tell_them() {
    let f = fleet().await;
    let all = [&f.web1, &f.web2, &f.db1, &f.db2];
    let mut rx = listen::node_channels(
        &flotilla_testkit::redis_url(),
        &all.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    )
    .await;

    // By ids.
    let r = bulk(
        &f.api,
        json!({"nodeIds": [f.web1, f.db2, Uuid::new_v4()], "action": {"type": "maintenance", "enabled": true}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["affected"], 2);
    assert_eq!(r.body["skipped"], json!({"not_found": 1}));
    let got: BTreeMap<String, Value> = rx.take(2).await.into_iter().collect();
    assert_eq!(
        got.keys().collect::<BTreeSet<_>>(),
        BTreeSet::from([&f.web1, &f.db2])
    );
    for frame in got.values() {
        assert_eq!(frame["type"], "config_changed");
        assert_eq!(frame["reason"], "maintenance_on");
    }
    rx.assert_quiet(QUIET).await;
    assert_eq!(
        f.hosts("maintenance=true").await,
        set(&["web-1", "db-1", "db-2"])
    );

    // Nodes already in maintenance are left alone: not changed, not told, not counted.
    let r = bulk(
        &f.api,
        json!({"nodeIds": [f.web1, f.db1], "action": {"type": "maintenance", "enabled": true}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["affected"], 0);
    assert_eq!(r.body["skipped"], json!({"unchanged": 2}));
    rx.assert_quiet(QUIET).await;

    // By filter: a label, on connected nodes only.
    let r = bulk(
        &f.api,
        json!({"filter": {"environmentId": f.env, "label": "role=db", "connected": true},
               "action": {"type": "maintenance", "enabled": false}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["affected"], 1);
    let (node, frame) = rx.next().await;
    assert_eq!(node, f.db1);
    assert_eq!(frame["reason"], "maintenance_off");
    rx.assert_quiet(QUIET).await;
    assert_eq!(f.hosts("maintenance=true").await, set(&["web-1", "db-2"]));

    // A restart of one pipeline: older agents that run it get it pending and an action push;
    // a matched node that does not run it is left alone (an older agent would restart all).
    let r = bulk(
        &f.api,
        json!({"filter": {"environmentId": f.env, "crashed": true},
               "action": {"type": "restart", "pipelineId": f.p1}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["affected"], 1);
    assert_eq!(r.body["skipped"], json!({"not_running": 1}));
    let got: BTreeMap<String, Value> = rx.take(1).await.into_iter().collect();
    assert_eq!(
        got.keys().collect::<BTreeSet<_>>(),
        BTreeSet::from([&f.web2])
    );
    assert!(got
        .values()
        .all(|m| m["action"] == "restart" && m["pipelineId"] == f.p1));
    rx.assert_quiet(QUIET).await;
    let untouched = get(&f.api, &format!("/api/v1/fleet/{}", f.db1)).await;
    assert!(untouched["pendingAction"].is_null(), "{untouched}");
    let pending = get(&f.api, &format!("/api/v1/fleet/{}", f.web2)).await;
    assert_eq!(pending["pendingAction"]["type"], "restart");

    // One audit record per bulk change, with its scope, action and count.
    let records = audit_actions(&f._db, "fleet.bulk_action").await;
    assert_eq!(records.len(), 4);
    assert_eq!(records[0]["detail"]["affected"], 2);
    assert_eq!(records[1]["detail"]["affected"], 0);
    assert_eq!(
        records[0]["detail"]["action"],
        json!({"type": "maintenance", "enabled": true})
    );
    assert_eq!(records[0]["detail"]["scope"]["nodeIds"][0], f.web1);
    assert_eq!(records[2]["detail"]["scope"]["filter"]["label"], "role=db");
    assert_eq!(records[3]["detail"]["action"]["pipelineId"], f.p1);
    assert!(records.iter().all(|r| r["tokenName"].is_string()));
    f.stop().await;
}

#[tokio::test]
async fn bulk_self_update_skips_docker_nodes_and_reports_why() {
    let f = fleet().await;
    let mut rx = listen::node_channels(
        &flotilla_testkit::redis_url(),
        &[&f.web1, &f.web2, &f.db1, &f.db2],
    )
    .await;
    let r = bulk(
        &f.api,
        json!({"filter": {"environmentId": f.env, "host": "DB"},
               "action": {"type": "self_update", "targetVersion": "2.0.0",
                          "downloadUrl": "https://example.com/agent", "checksum": "a".repeat(64)}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["affected"], 1);
    assert_eq!(r.body["skipped"], json!({"docker": 1}));
    assert_eq!(r.body["notifiedNodes"], 1);
    let (node, frame) = rx.next().await;
    assert_eq!(node, f.db1);
    assert_eq!(frame["action"], "self_update");
    rx.assert_quiet(QUIET).await;
    let docker = get(&f.api, &format!("/api/v1/fleet/{}", f.db2)).await;
    assert!(docker["pendingAction"].is_null());
    // The single-node rules hold: a bad URL is refused for the whole bulk.
    let r = bulk(
        &f.api,
        json!({"filter": {"environmentId": f.env}, "action": {"type": "self_update", "targetVersion": "2",
               "downloadUrl": "ftp://x", "checksum": "a".repeat(64)}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["details"]["field"], "downloadUrl");
    f.stop().await;
}

#[tokio::test]
async fn bulk_actions_need_an_admin_and_a_clear_request() {
    let (db, api) = common::start().await;
    let (_, enroll) = api.create_environment("prod").await;
    let (node, _) = api.enroll(&enroll, "h").await;
    let body = json!({"nodeIds": [node], "action": {"type": "maintenance", "enabled": true}});
    for role in ["viewer", "editor"] {
        let (_, token) = api.operator_token(role).await;
        let r = api
            .call(
                Method::POST,
                "/api/v1/fleet/actions",
                Some(&token),
                Some(body.clone()),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{role}");
    }
    let cases = [
        (
            json!({"action": {"type": "maintenance", "enabled": true}}),
            "filter",
        ),
        (
            json!({"filter": {}, "nodeIds": [node], "action": {"type": "maintenance", "enabled": true}}),
            "filter",
        ),
        (
            json!({"filter": {"stauts": "HEALTHY"}, "action": {"type": "maintenance", "enabled": true}}),
            "filter.stauts",
        ),
        // Nothing that would quietly widen a change to every node.
        (
            json!({"filter": {}, "action": {"type": "maintenance", "enabled": true}}),
            "filter",
        ),
        (
            json!({"filter": {"environmentId": null}, "action": {"type": "maintenance", "enabled": true}}),
            "filter.environmentId",
        ),
        (
            json!({"filter": {"label": []}, "action": {"type": "maintenance", "enabled": true}}),
            "filter.label",
        ),
        (
            json!({"filter": {"status": "SICK"}, "action": {"type": "maintenance", "enabled": true}}),
            "filter.status",
        ),
        (
            json!({"filter": {"limit": "5"}, "action": {"type": "maintenance", "enabled": true}}),
            "filter.limit",
        ),
        (
            json!({"nodeIds": [], "action": {"type": "maintenance", "enabled": true}}),
            "nodeIds",
        ),
        (
            json!({"nodeIds": ["x"], "action": {"type": "maintenance", "enabled": true}}),
            "nodeIds",
        ),
        (
            json!({"nodeIds": [node], "action": {"type": "explode"}}),
            "action.type",
        ),
        (
            json!({"nodeIds": [node], "action": {"type": "maintenance"}}),
            "action.enabled",
        ),
        (
            json!({"nodeIds": [node], "action": {"type": "restart", "pipelineId": Uuid::new_v4()}}),
            "pipelineId",
        ),
    ];
    for (body, field) in cases {
        let r = bulk(&api, body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.text
        );
        assert_eq!(r.body["details"]["field"], field, "{body}: {}", r.text);
    }
    let r = api
        .raw(
            Method::POST,
            "/api/v1/fleet/actions",
            Some(flotilla_testkit::api::ADMIN_TOKEN),
            "{",
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Nothing was changed or recorded by the refused requests.
    let (maintenance, records): (bool, i64) = sqlx::query_as(
        "SELECT (SELECT maintenance FROM nodes), (SELECT count(*) FROM audit_log WHERE action = 'fleet.bulk_action')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(!maintenance);
    assert_eq!(records, 0);
}

#[tokio::test]
async fn single_node_changes_are_audited_with_the_token() {
    let (db, api) = common::start().await;
    let (_, enroll) = api.create_environment("prod").await;
    let (node, _) = api.enroll(&enroll, "h").await;
    api.set_labels(&node, json!({"role": "web"})).await;
    let base = format!("/api/v1/fleet/{node}");
    let r = api
        .admin(
            Method::POST,
            &format!("{base}/maintenance"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = api
        .admin(
            Method::POST,
            &format!("{base}/actions"),
            Some(json!({"type": "restart"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    // A refused change leaves no record.
    let r = api
        .admin(
            Method::PUT,
            &format!("{base}/labels"),
            Some(json!({"labels": {"k": 5}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = api.admin(Method::DELETE, &base, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    let rows: Vec<(String, String, Option<String>, Value)> = sqlx::query_as(
        "SELECT action, token_name, target_id, detail FROM audit_log
         WHERE target_type = 'node' ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let actions: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        actions,
        [
            "node.labels",
            "node.maintenance",
            "node.action",
            "node.revoke"
        ]
    );
    assert!(rows.iter().all(|r| r.2.as_deref() == Some(node.as_str())));
    assert!(rows.iter().all(|r| !r.1.is_empty()), "named by the token");
    assert_eq!(rows[0].3, json!({"labels": {"role": "web"}}));
    assert_eq!(rows[1].3, json!({"enabled": true}));
    assert_eq!(rows[2].3["action"]["type"], "restart");
    assert_eq!(rows[3].3["host"], "h");
    // They show in the audit listing too.
    let audit = get(&api, "/api/v1/audit").await;
    assert!(audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "node.revoke" && e["targetId"] == node));
}

/// Fleet events of one kind about `node`, as a page's stream relays them.
struct Events {
    rx: futures_util::stream::BoxStream<'static, redis::Msg>,
    node: String,
    kind: &'static str,
}

impl Events {
    async fn subscribe(node: &str, kind: &'static str) -> Self {
        let client = redis::Client::open(flotilla_testkit::redis_url()).unwrap();
        let mut pubsub = within("pubsub", client.get_async_pubsub()).await.unwrap();
        within("subscribe", pubsub.subscribe(FLEET_EVENTS))
            .await
            .unwrap();
        Events {
            rx: pubsub.into_on_message().boxed(),
            node: node.to_owned(),
            kind,
        }
    }

    /// The next event about the node within `limit`, if any.
    async fn next(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.rx.next())
                .await
                .ok()??;
            let payload: String = msg.get_payload().unwrap();
            let v: Value = serde_json::from_str(&payload).unwrap_or(Value::Null);
            if v["nodeId"] == self.node.as_str() && v["kind"] == self.kind {
                return Some(v);
            }
        }
    }
}

#[tokio::test]
async fn heartbeats_announce_only_what_the_fleet_shows() {
    let (db, api) = common::start().await;
    let (env, enroll) = api.create_environment("prod").await;
    let p = api
        .create_pipeline(&env, "p", &vector_config("p"), json!({}))
        .await;
    let (node, token) = api.enroll(&enroll, "h").await;
    let mut events = Events::subscribe(&node, "heartbeat").await;
    let beat = |status: &str, cpu: u64| {
        json!({"agentVersion": "1.0", "vectorVersion": "0.40", "labels": {"zone": "eu"},
               "hostMetrics": {"cpu": cpu},
               "pipelines": [{"pipelineId": p, "version": 1, "status": status, "eventsIn": cpu, "uptimeSeconds": cpu}]})
    };
    // The first report changes versions, labels and pipelines.
    heartbeat(&api, &token, beat("STARTING", 1)).await;
    let e = events.next(Duration::from_secs(5)).await.expect("an event");
    assert_eq!(e, json!({"nodeId": node, "kind": "heartbeat"}));
    // The same again, with new counters and metrics only: nothing the list shows.
    heartbeat(&api, &token, beat("STARTING", 2)).await;
    heartbeat(&api, &token, beat("STARTING", 3)).await;
    assert_eq!(events.next(QUIET).await, None);
    // A pipeline's status.
    heartbeat(&api, &token, beat("RUNNING", 4)).await;
    assert!(events.next(Duration::from_secs(5)).await.is_some());
    heartbeat(&api, &token, beat("RUNNING", 5)).await;
    assert_eq!(events.next(QUIET).await, None);
    // A pipeline gone.
    heartbeat(
        &api,
        &token,
        json!({"agentVersion": "1.0", "pipelines": []}),
    )
    .await;
    assert!(events.next(Duration::from_secs(5)).await.is_some());
    // A version.
    heartbeat(
        &api,
        &token,
        json!({"agentVersion": "1.1", "pipelines": []}),
    )
    .await;
    assert!(events.next(Duration::from_secs(5)).await.is_some());
    // The node's status: back from UNREACHABLE.
    sqlx::query("UPDATE nodes SET status = 'UNREACHABLE'")
        .execute(&db.pool)
        .await
        .unwrap();
    heartbeat(
        &api,
        &token,
        json!({"agentVersion": "1.1", "pipelines": []}),
    )
    .await;
    assert!(events.next(Duration::from_secs(5)).await.is_some());
    heartbeat(
        &api,
        &token,
        json!({"agentVersion": "1.1", "pipelines": []}),
    )
    .await;
    assert_eq!(events.next(QUIET).await, None);
}

#[tokio::test]
async fn a_node_turning_unreachable_is_announced() {
    let (db, api) = common::start().await;
    let (_, enroll) = api.create_environment("prod").await;
    let (node, _) = api.enroll(&enroll, "h").await;
    let mut events = Events::subscribe(&node, "status").await;
    // Silent for an hour: the next sweep (every 100 ms in tests) marks it.
    sqlx::query("UPDATE nodes SET enrolled_at = now() - interval '1 hour', last_seen = NULL")
        .execute(&db.pool)
        .await
        .unwrap();
    let e = events.next(Duration::from_secs(5)).await.expect("an event");
    assert_eq!(e, json!({"nodeId": node, "kind": "status"}));
}

#[tokio::test]
async fn the_openapi_document_lists_the_fleet_endpoints() {
    let (_db, api) = common::start().await;
    let doc = api
        .call(Method::GET, "/api/openapi.json", None, None)
        .await
        .body;
    for (path, method) in [
        ("/api/v1/fleet", "get"),
        ("/api/v1/fleet/summary", "get"),
        ("/api/v1/fleet/actions", "post"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{path} {method}");
    }
    let params: Vec<&str> = doc["paths"]["/api/v1/fleet"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "limit",
        "cursor",
        "sort",
        "status",
        "connected",
        "transport",
        "label",
        "host",
        "pipelineId",
        "pipelineStatus",
        "crashed",
        "ids",
    ] {
        assert!(params.contains(&p), "{p} in {params:?}");
    }
}

#[tokio::test]
async fn a_bulk_restart_reaches_current_agents_as_pipeline_pushes_and_clears_when_delivered() {
    let (_db, api) = common::start().await;
    let (env, enroll) = api.create_environment("prod").await;
    let p1 = api
        .create_pipeline(&env, "p1", &vector_config("p1"), json!({}))
        .await;
    let p2 = api
        .create_pipeline(&env, "p2", &vector_config("p2"), json!({}))
        .await;
    let (current, token) = api.enroll(&enroll, "current").await;
    let (unheard, unheard_token) = api.enroll(&enroll, "unheard").await;
    // Current agents report agentHealth; both run the two pipelines.
    for t in [&token, &unheard_token] {
        heartbeat(
            &api,
            t,
            json!({"agentHealth": {"pushConnected": true},
                   "pipelines": [{"pipelineId": p1, "version": 1, "status": "RUNNING"},
                                 {"pipelineId": p2, "version": 1, "status": "RUNNING"}]}),
        )
        .await;
    }
    // Only `current` has a push channel subscribed (the listener stands in for its gateway).
    let mut rx = listen::node_channels(&flotilla_testkit::redis_url(), &[&current]).await;
    let r = bulk(
        &api,
        json!({"nodeIds": [current, unheard], "action": {"type": "restart"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["affected"], 2);
    assert_eq!(r.body["notifiedNodes"], 1);
    let pushed: BTreeSet<String> = rx
        .take(2)
        .await
        .into_iter()
        .map(|(_, m)| {
            assert_eq!(m["action"], "restart");
            m["pipelineId"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(pushed, BTreeSet::from([p1.clone(), p2.clone()]));
    rx.assert_quiet(QUIET).await;
    // Delivered: nothing left pending. Not delivered: pending, for its polls to retry.
    let shown = get(&api, &format!("/api/v1/fleet?ids={current},{unheard}")).await;
    for n in shown["nodes"].as_array().unwrap() {
        let pending = &n["pendingAction"];
        if n["id"] == current.as_str() {
            assert!(pending.is_null(), "{n}");
        } else {
            assert_eq!(pending["type"], "restart", "{n}");
        }
    }
}

#[tokio::test]
async fn a_restart_taken_by_a_poll_is_announced() {
    let (_db, api) = common::start().await;
    let (_, enroll) = api.create_environment("prod").await;
    let (node, token) = api.enroll(&enroll, "h").await;
    let mut events = Events::subscribe(&node, "action").await;
    let r = api
        .admin(
            Method::POST,
            &format!("/api/v1/fleet/{node}/actions"),
            Some(json!({"type": "restart"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    // The operator's change is announced first…
    events
        .next(Duration::from_secs(5))
        .await
        .expect("the action's event");
    assert_eq!(events.next(QUIET).await, None);
    // …then an older agent's poll takes the restart: the row's pending action is gone.
    let r = api
        .call(Method::GET, "/api/agent/config", Some(&token), None)
        .await;
    assert_eq!(r.body["pendingAction"]["type"], "restart", "{}", r.text);
    let e = events.next(Duration::from_secs(5)).await.expect("an event");
    assert_eq!(e, json!({"nodeId": node, "kind": "action"}));
    let shown = get(&api, &format!("/api/v1/fleet/{node}")).await;
    assert!(shown["pendingAction"].is_null(), "{shown}");
}

#[tokio::test]
async fn a_node_shows_its_operator_and_reported_labels_apart() {
    let (_db, api) = common::start().await;
    let (env, enroll) = api.create_environment("prod").await;
    let (node, token) = api.enroll(&enroll, "h").await;
    heartbeat(
        &api,
        &token,
        json!({"pipelines": [], "labels": {"zone": "eu", "role": "db"}}),
    )
    .await;
    api.set_labels(&node, json!({"role": "web"})).await;
    let detail = get(&api, &format!("/api/v1/fleet/{node}")).await;
    let listed = get(&api, &format!("/api/v1/fleet?environmentId={env}")).await;
    for shown in [&detail, &listed["nodes"][0]] {
        // The operator's value wins in the effective labels; each source is also shown alone,
        // so an editor of operator labels never copies the agent's claims into them.
        assert_eq!(
            shown["labels"],
            json!({"zone": "eu", "role": "web"}),
            "{shown}"
        );
        assert_eq!(shown["operatorLabels"], json!({"role": "web"}), "{shown}");
        assert_eq!(
            shown["reportedLabels"],
            json!({"zone": "eu", "role": "db"}),
            "{shown}"
        );
    }
}
