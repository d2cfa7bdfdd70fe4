//! The gateway's `GET /metrics`, scraped and parsed as Prometheus does, and the shipped
//! dashboard and alert rules checked against what the services really expose.

use crate::common::*;
use flotilla_shared::close_codes::{Close, REVOKED};
use flotilla_testkit::{api, db, redis_url, within};
use prometheus_parse::{Scrape, Value};
use reqwest::Method;
use serde_json::json;
use std::collections::BTreeSet;
use uuid::Uuid;

/// Scrapes `GET /metrics` over a socket and parses it.
async fn scrape(addr: std::net::SocketAddr) -> Scrape {
    let response = within("scrape", reqwest::get(format!("http://{addr}/metrics")))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of the one sample of `metric` with `labels` (a histogram's count).
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{metric}{labels:?}: {found:?}");
    match &found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        Value::Summary(_) => panic!("{metric} is a summary"),
    }
}

/// Every series name a scrape exposes, histograms under their base name and their
/// `_bucket`, `_sum` and `_count` series.
fn names(scrape: &Scrape) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for s in &scrape.samples {
        names.insert(s.metric.clone());
        if matches!(s.value, Value::Histogram(_)) {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{}{suffix}", s.metric));
            }
        }
    }
    names
}

/// The `flotilla_…` series names a file of queries mentions.
fn mentioned(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("flotilla_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        found.insert(name);
    }
    found
}

#[tokio::test]
async fn metrics_show_connections_pushes_closes_and_rejections_and_dashboards_name_real_series() {
    let db = db::fresh().await;
    let s = settings(&db.url, &redis_url(), &[]);
    let redis = redis(&s);
    let api = api::spawn(s.clone()).await;
    let gw = gateway(s).await;
    let (env_id, enroll) = api.create_environment("prod").await;
    let (node, token) = api.enroll(&enroll, "h1").await;
    let node_id: Uuid = node.parse().unwrap();
    let (mut ws, _) = gw.connect(&redis, node_id, &token).await;
    assert_eq!(refused_status(gw.try_connect("vf_node_wrong").await), 401);

    let pipeline = api
        .create_pipeline(
            &env_id,
            "p",
            &flotilla_testkit::vector_config("a"),
            json!({}),
        )
        .await;
    assert_eq!(api.deploy(&pipeline).await.status, 200);
    next_text(&mut ws).await;

    let m = scrape(gw.addr).await;
    assert_eq!(value(&m, "flotilla_gateway_connections", &[]), 1.0);
    assert_eq!(value(&m, "flotilla_gateway_connects_total", &[]), 1.0);
    assert_eq!(
        value(&m, "flotilla_gateway_handshakes_rejected_total", &[]),
        1.0
    );
    assert_eq!(
        value(&m, "flotilla_gateway_pushes_received_total", &[]),
        1.0
    );
    assert_eq!(
        value(&m, "flotilla_gateway_pushes_delivered_total", &[]),
        1.0
    );
    assert_eq!(value(&m, "flotilla_gateway_push_latency_seconds", &[]), 1.0);
    assert!(value(&m, "flotilla_gateway_pubsub_connects_total", &[]) >= 1.0);
    assert_eq!(
        value(&m, "flotilla_gateway_subscribe_timeouts_total", &[]),
        0.0
    );
    // Every reason shows from the start, at zero.
    for close in Close::ALL {
        let reason = [("reason", close.metric_label())];
        assert_eq!(value(&m, "flotilla_gateway_closes_total", &reason), 0.0);
    }

    let revoked = api
        .admin(Method::DELETE, &format!("/api/v1/fleet/{node}"), None)
        .await;
    assert!(revoked.status.is_success(), "{}", revoked.text);
    assert_eq!(close_code(&mut ws).await, Some(REVOKED));
    flotilla_testkit::eventually(
        "the close counted",
        std::time::Duration::from_secs(5),
        || async {
            (gw.state
                .counters()
                .closed(Close::Revoked)
                .load(std::sync::atomic::Ordering::Relaxed)
                == 1)
                .then_some(())
        },
    )
    .await;
    let m = scrape(gw.addr).await;
    let revoked = [("reason", "revoked")];
    assert_eq!(value(&m, "flotilla_gateway_closes_total", &revoked), 1.0);
    assert_eq!(value(&m, "flotilla_gateway_disconnects_total", &[]), 1.0);
    assert_eq!(value(&m, "flotilla_gateway_connections", &[]), 0.0);
    let a = scrape(api.addr).await;

    // What the dashboard and the alerts query is what the services expose.
    let mut exposed = names(&m);
    exposed.extend(names(&a));
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let dashboard =
        std::fs::read_to_string(format!("{root}/grafana/dashboards/flotilla.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 6, "{} panels", panels.len());
    for panel in panels {
        let targets = panel["targets"].as_array();
        let Some(targets) = targets.filter(|t| !t.is_empty()) else {
            assert_eq!(panel["type"], "row", "a panel without queries: {panel}");
            continue;
        };
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let names = mentioned(expr);
            assert!(!names.is_empty(), "{expr} names no flotilla series");
            for name in names {
                assert!(
                    exposed.contains(&name),
                    "{} queries {name}, which nothing exposes",
                    panel["title"]
                );
            }
        }
    }
    let alerts = std::fs::read_to_string(format!("{root}/prometheus/alerts.yml")).unwrap();
    for name in mentioned(&alerts) {
        assert!(
            exposed.contains(&name),
            "alerts.yml queries {name}, which nothing exposes"
        );
    }
}
