//! What the api tells operators about itself: `GET /metrics` scraped and parsed as Prometheus
//! does, and request ids in JSON log lines.

use flotilla_testkit::{api, db, eventually, redis_url, settings, within};
use prometheus_parse::{Sample, Scrape, Value};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

/// Scrapes `GET /metrics` over a socket: the text, and the text parsed.
///
/// prometheus-parse skips samples whose label values hold `{` or `}` (Prometheus itself takes
/// any UTF-8), so series of templated routes are also looked for as lines of the text.
async fn scrape(addr: std::net::SocketAddr) -> (String, Scrape) {
    let response = within("scrape", reqwest::get(format!("http://{addr}/metrics")))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    (text, parsed)
}

/// The samples of `metric` whose labels include every pair of `labels`.
fn samples<'a>(scrape: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

/// The summed value of the matching counters, gauges or histogram counts.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found = samples(scrape, metric, labels);
    assert!(!found.is_empty(), "no {metric}{labels:?} in the scrape");
    found
        .iter()
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => panic!("{metric} is a summary"),
        })
        .sum()
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_show_pool_reads_and_notifications() {
    let db = db::fresh().await;
    let api = api::spawn(settings(&db.url, &redis_url())).await;
    let (env_id, enroll) = api.create_environment("prod").await;
    let (node, token) = api.enroll(&enroll, "h1").await;
    let polled = api.agent_config(&token).await;
    assert_eq!(polled.status, 200, "{}", polled.text);
    let shown = api
        .admin(Method::GET, &format!("/api/v1/fleet/{node}"), None)
        .await;
    assert_eq!(shown.status, 200, "{}", shown.text);
    let missing = api
        .admin(Method::GET, &format!("/no/such/{node}"), None)
        .await;
    assert_eq!(missing.status, 404);
    let pipeline = api
        .create_pipeline(
            &env_id,
            "p",
            &flotilla_testkit::vector_config("a"),
            json!({}),
        )
        .await;
    let deployed = api.deploy(&pipeline).await;
    assert_eq!(deployed.status, 200, "{}", deployed.text);

    let (text, m) = scrape(api.addr).await;
    let requests = "flotilla_api_http_requests_total";
    let fleet = r#"{method="GET",route="/api/v1/fleet/{id}",status="200"} 1"#;
    assert!(text.contains(&format!("\n{requests}{fleet}\n")), "{text}");
    let fleet_count = r#"_count{method="GET",route="/api/v1/fleet/{id}"} 1"#;
    let durations = "flotilla_api_http_request_duration_seconds";
    assert!(
        text.contains(&format!("\n{durations}{fleet_count}\n")),
        "{text}"
    );
    let unmatched = [("route", "unmatched"), ("status", "404")];
    assert_eq!(value(&m, requests, &unmatched), 1.0);
    let created = [("route", "/api/v1/environments"), ("status", "201")];
    assert_eq!(value(&m, requests, &created), 1.0);
    // No raw path, hence no id, in any label.
    assert!(!text.contains(&node), "{text}");
    assert_eq!(value(&m, durations, &created[..1]), 1.0);
    assert!(value(&m, "flotilla_api_config_poll_round_keys", &[]) >= 1.0);
    let config_changed = [("type", "config_changed")];
    assert!(
        value(
            &m,
            "flotilla_api_notifications_published_total",
            &config_changed
        ) >= 1.0
    );
    assert_eq!(
        value(&m, "flotilla_api_notifications_failed_total", &[]),
        0.0
    );
    assert!(value(&m, "flotilla_api_db_pool_connections", &[]) >= 1.0);
    assert!(value(&m, "flotilla_api_db_pool_max_connections", &[]) >= 1.0);
    value(&m, "flotilla_api_db_pool_idle_connections", &[]);
    assert_eq!(value(&m, "flotilla_api_fleet_event_subscribers", &[]), 0.0);
    assert_eq!(
        value(&m, "flotilla_api_bcrypt_verifications_total", &[]),
        0.0
    );
    value(&m, "flotilla_api_token_digests_adopted_total", &[]);

    // The scrape itself is counted by the next one.
    let (_, again) = scrape(api.addr).await;
    let scrapes = [("route", "/metrics"), ("status", "200")];
    assert_eq!(value(&again, requests, &scrapes), 1.0);
}

#[tokio::test]
async fn a_json_log_line_of_a_request_carries_its_request_id_and_never_its_token() {
    let db = db::fresh().await;
    let secret = "vf_node_telemetry-never-logged-4f2a9c";
    let env = [
        ("FLOTILLA__DATABASE__URL", db.url.as_str()),
        ("FLOTILLA__REDIS__URL", &redis_url()),
        ("FLOTILLA__API__LISTEN", "127.0.0.1:0"),
        ("FLOTILLA__LOG__FORMAT", "json"),
        // The request span's own lines are at debug level.
        ("RUST_LOG", "info,tower_http=debug"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let proc = flotilla_testkit::process::start(env!("CARGO_BIN_EXE_flotilla-api"), &env).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/api/agent/config", proc.addr);
    let answer = within(
        "request",
        http.get(&url)
            .header("x-request-id", "abc")
            .bearer_auth(secret)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), 401);
    assert_eq!(answer.headers()["x-request-id"], "abc");
    // Without one, the api makes one up and hands it back.
    let answer = within("request", http.get(&url).send()).await.unwrap();
    let made = answer.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(made.len() >= 32 && made != "abc", "{made}");

    let line = eventually("the request's log line", Duration::from_secs(5), || {
        let output = proc.output();
        async move {
            output.lines().find_map(|line| {
                let line: serde_json::Value = serde_json::from_str(line).ok()?;
                (line["span"]["request_id"] == "abc").then_some(line)
            })
        }
    })
    .await;
    assert_eq!(line["span"]["name"], "request", "{line}");
    assert_eq!(line["span"]["route"], "/api/agent/config", "{line}");
    assert_eq!(line["span"]["method"], "GET", "{line}");
    let output = proc.output();
    assert!(!output.contains(secret), "{output}");
    assert!(!output.to_lowercase().contains("authorization"), "{output}");
}
