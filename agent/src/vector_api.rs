//! Each pipeline's Vector API: where it listens, and the counters read from it.
//!
//! Every `vector` child gets its own loopback port for its API (Vector's default, 8686, would
//! be shared by all pipelines of a host): the agent adds an `api` block to the config it
//! writes, unless the config has one, in which case that block's address is used when it is
//! enabled. Before each heartbeat the agent asks every running pipeline's API (Vector's GraphQL
//! `components` query, and the first answer of its `componentErrorsTotals` subscription, which
//! is where Vector serves error counts) for its counters; a Vector whose API does not answer
//! leaves its counters out of the heartbeat, never the heartbeat itself. `vector tap` (samples, live
//! taps) is pointed at the same address.

use flotilla_shared::protocol::{Heartbeat, PipelineState};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// The comment that opens the `api` block the agent adds to a pipeline's config.
pub const ADDED_BLOCK: &str = "# flotilla-agent: this pipeline's own Vector API (counters, taps)";

/// Components reported per pipeline at most (the api keeps 16 KiB of them).
pub const MAX_COMPONENTS: usize = 100;

/// The `components` query: the per-component totals Vector's GraphQL API serves (up to 0.54;
/// from 0.55 the API speaks gRPC and this query is not answered, so counters are left out).
const QUERY: &str = "{ components(first: 1000) { edges { node { __typename componentId componentType \
... on Source { metrics { receivedEventsTotal { receivedEventsTotal } receivedBytesTotal { receivedBytesTotal } sentEventsTotal { sentEventsTotal } } } \
... on Transform { metrics { receivedEventsTotal { receivedEventsTotal } sentEventsTotal { sentEventsTotal } } } \
... on Sink { metrics { receivedEventsTotal { receivedEventsTotal } sentEventsTotal { sentEventsTotal } sentBytesTotal { sentBytesTotal } } } } } } }";

/// Error totals per component: Vector serves them only as a subscription, whose first answer
/// (at once, with the components that have errors) is all the agent reads.
const ERRORS: &str =
    "subscription { componentErrorsTotals(interval: 1000) { componentId metric { errorsTotal } } }";

/// A pipeline config as written for Vector, and where its API listens (if anywhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The config to write.
    pub yaml: String,
    /// The API's address, to query.
    pub api: Option<SocketAddr>,
}

/// Gives `yaml` an API on a free loopback port, unless it configures one itself (then its
/// address is used when enabled). A config that is not a YAML mapping is written unchanged,
/// without an API: Vector reports what is wrong with it.
pub fn prepare(yaml: &str) -> Prepared {
    let unchanged = |api| Prepared {
        yaml: yaml.to_owned(),
        api,
    };
    let Ok(serde_norway::Value::Mapping(map)) = serde_norway::from_str(yaml) else {
        return unchanged(None);
    };
    if let Some(api) = map.get("api") {
        return unchanged(own_address(api));
    }
    let Some(addr) = free_loopback_port() else {
        return unchanged(None);
    };
    // Appended as text so the user's file (comments, order) stays as it was; a config in flow
    // style (`{sources: …}`) cannot take a block after it and is re-serialised instead.
    let mut text = yaml.to_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "{ADDED_BLOCK}\napi:\n  enabled: true\n  address: \"{addr}\"\n"
    ));
    if own_address_of(&text) == Some(addr) {
        return Prepared {
            yaml: text,
            api: Some(addr),
        };
    }
    let mut map = map;
    map.insert(
        "api".into(),
        serde_norway::to_value(json!({"enabled": true, "address": addr.to_string()}))
            .expect("a JSON object converts"),
    );
    match serde_norway::to_string(&map) {
        Ok(text) if own_address_of(&text) == Some(addr) => Prepared {
            yaml: text,
            api: Some(addr),
        },
        _ => unchanged(None),
    }
}

/// Whether `written` is `deployed` as [`prepare`] writes it (the config itself, plus the block
/// it may append).
pub fn is_prepared_from(written: &str, deployed: &str) -> bool {
    written.strip_prefix(deployed).is_some_and(|rest| {
        let rest = rest.strip_prefix('\n').unwrap_or(rest);
        rest.is_empty() || rest.starts_with(ADDED_BLOCK)
    })
}

fn own_address_of(yaml: &str) -> Option<SocketAddr> {
    match serde_norway::from_str(yaml) {
        Ok(serde_norway::Value::Mapping(map)) => own_address(map.get("api")?),
        _ => None,
    }
}

/// The address an `api` block makes Vector listen on, when it enables the API; a wildcard
/// address is reached on loopback.
fn own_address(api: &serde_norway::Value) -> Option<SocketAddr> {
    if api.get("enabled").and_then(serde_norway::Value::as_bool) != Some(true) {
        return None;
    }
    let address = match api.get("address") {
        None => "127.0.0.1:8686",
        Some(a) => a.as_str()?,
    };
    let mut addr: SocketAddr = address.trim().parse().ok()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    Some(addr)
}

/// A loopback port free right now (the OS picks it; Vector binds it a moment later, and a
/// Vector that loses that race exits and is restarted on a new one).
fn free_loopback_port() -> Option<SocketAddr> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .ok()
}

/// Where `vector tap` reaches a pipeline's Vector: its API address, with the `/graphql` path
/// up to Vector 0.54 and without it from 0.55 (the gRPC API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapUrl {
    addr: SocketAddr,
    graphql: bool,
}

impl TapUrl {
    /// The tap URL of the API at `addr` for the Vector version reported by `vector --version`
    /// (`None`: unknown, taken as one with the GraphQL API).
    pub fn new(addr: SocketAddr, vector_version: Option<&str>) -> Self {
        let grpc = vector_version
            .and_then(major_minor)
            .is_some_and(|v| v >= (0, 55));
        Self {
            addr,
            graphql: !grpc,
        }
    }
}

impl std::fmt::Display for TapUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.graphql {
            true => write!(f, "http://{}/graphql", self.addr),
            false => write!(f, "http://{}", self.addr),
        }
    }
}

/// `(major, minor)` of a version such as `0.54.0` or `0.55.1-debian`.
fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// One pipeline's counters, as reported in its heartbeat entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Counters {
    /// Events its sources received.
    pub events_in: i64,
    /// Events its sinks sent.
    pub events_out: i64,
    /// Bytes its sources received.
    pub bytes_in: i64,
    /// Bytes its sinks sent.
    pub bytes_out: i64,
    /// Per component: `{componentId, componentKind, componentType, receivedEvents,
    /// sentEvents, receivedBytes?, sentBytes?}` (VectorFlow's shape; [`VectorApi::fill`] adds
    /// `errorsTotal` to components with errors).
    pub components: Vec<Value>,
}

#[derive(Deserialize)]
struct Response {
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    components: Connection,
}

#[derive(Deserialize)]
struct Connection {
    edges: Vec<Edge>,
}

#[derive(Deserialize)]
struct Edge {
    node: Node,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Node {
    #[serde(rename = "__typename")]
    typename: String,
    component_id: String,
    #[serde(default)]
    component_type: Option<String>,
    #[serde(default)]
    metrics: Option<Value>,
}

/// A total from Vector's `{receivedEventsTotal: {receivedEventsTotal: 42.0}}` nesting; `None`
/// when Vector has not counted any yet.
fn total(metrics: &Value, name: &str) -> Option<i64> {
    metrics.get(name)?.get(name)?.as_f64().map(|n| n as i64)
}

impl Counters {
    /// Reads a `components` answer; `None` when it carries no components (GraphQL errors).
    fn from_answer(answer: Response) -> Option<Self> {
        let mut c = Counters {
            events_in: 0,
            events_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            components: vec![],
        };
        for Edge { node } in answer.data?.components.edges {
            let metrics = node.metrics.unwrap_or(Value::Null);
            let received = total(&metrics, "receivedEventsTotal");
            let sent = total(&metrics, "sentEventsTotal");
            let received_bytes = total(&metrics, "receivedBytesTotal");
            let sent_bytes = total(&metrics, "sentBytesTotal");
            let kind = match node.typename.as_str() {
                "Source" => {
                    c.events_in += received.unwrap_or(0);
                    c.bytes_in += received_bytes.unwrap_or(0);
                    "source"
                }
                "Sink" => {
                    c.events_out += sent.unwrap_or(0);
                    c.bytes_out += sent_bytes.unwrap_or(0);
                    "sink"
                }
                "Transform" => "transform",
                _ => continue,
            };
            if c.components.len() < MAX_COMPONENTS {
                let mut m = json!({
                    "componentId": node.component_id,
                    "componentKind": kind,
                    "componentType": node.component_type,
                    "receivedEvents": received.unwrap_or(0),
                    "sentEvents": sent.unwrap_or(0),
                });
                if let Some(b) = received_bytes {
                    m["receivedBytes"] = json!(b);
                }
                if let Some(b) = sent_bytes {
                    m["sentBytes"] = json!(b);
                }
                c.components.push(m);
            }
        }
        Some(c)
    }
}

/// Queries pipelines' Vector APIs; cheap to clone.
#[derive(Debug, Clone)]
pub struct VectorApi {
    http: reqwest::Client,
    timeout: Duration,
}

impl VectorApi {
    /// A client whose every query gives up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // The API is on loopback: a proxy from the environment must not be asked for it.
            .no_proxy()
            .build()
            .expect("HTTP client builds");
        Self { http, timeout }
    }

    /// The counters of the Vector whose API is at `addr`; `None` when it does not answer
    /// (yet), answers an error, or speaks another protocol.
    pub async fn counters(&self, addr: SocketAddr) -> Option<Counters> {
        let response = self
            .http
            .post(format!("http://{addr}/graphql"))
            .json(&json!({ "query": QUERY }))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        Counters::from_answer(response.json().await.ok()?)
    }

    /// Error totals per component of the Vector whose API is at `addr` (components without
    /// errors are absent); `None` when it does not answer the subscription in time.
    pub async fn errors(&self, addr: SocketAddr) -> Option<BTreeMap<String, i64>> {
        match tokio::time::timeout(self.timeout, subscribe_errors(addr)).await {
            Ok(Ok(totals)) => Some(totals),
            Ok(Err(e)) => {
                tracing::debug!(%addr, error = %e, "vector error subscription failed");
                None
            }
            Err(_) => {
                tracing::debug!(%addr, "vector error subscription timed out");
                None
            }
        }
    }

    /// Adds the counters of each RUNNING pipeline of `heartbeat` whose API is in `apis`, all
    /// queried at once; pipelines whose Vector does not answer are left as they are.
    pub async fn fill(&self, heartbeat: &mut Heartbeat, apis: &[(String, SocketAddr)]) {
        let targets: Vec<(usize, SocketAddr)> = heartbeat
            .pipelines
            .iter()
            .enumerate()
            .filter(|(_, p)| p.status == PipelineState::Running)
            .filter_map(|(i, p)| {
                let (_, addr) = apis.iter().find(|(id, _)| *id == p.pipeline_id)?;
                Some((i, *addr))
            })
            .collect();
        let answers = futures_util::future::join_all(
            targets
                .iter()
                .map(|(_, addr)| async { tokio::join!(self.counters(*addr), self.errors(*addr)) }),
        )
        .await;
        for ((i, addr), (counters, errors)) in targets.into_iter().zip(answers) {
            let p = &mut heartbeat.pipelines[i];
            let Some(mut c) = counters else {
                tracing::debug!(pipeline = %p.pipeline_id, %addr, "vector api did not answer; counters left out");
                continue;
            };
            if let Some(errors) = errors {
                p.errors_total = Some(errors.values().sum());
                for component in &mut c.components {
                    if let Some(n) = errors.get(component["componentId"].as_str().unwrap_or("")) {
                        component["errorsTotal"] = json!(n);
                    }
                }
            }
            p.events_in = Some(c.events_in);
            p.events_out = Some(c.events_out);
            p.bytes_in = Some(c.bytes_in);
            p.bytes_out = Some(c.bytes_out);
            p.component_metrics = Some(Value::Array(c.components));
        }
    }
}

/// Why the error subscription gave no totals.
type SubscribeError = Box<dyn std::error::Error + Send + Sync>;

/// Opens `ws://<addr>/graphql`, subscribes to `componentErrorsTotals` and reads its first
/// answer, in whichever of the two GraphQL-over-WebSocket protocols the server picks
/// (`graphql-transport-ws`, or the older `graphql-ws` of Vector's own client).
async fn subscribe_errors(addr: SocketAddr) -> Result<BTreeMap<String, i64>, SubscribeError> {
    let mut request = format!("ws://{addr}/graphql").into_client_request()?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-transport-ws, graphql-ws"),
    );
    let (mut socket, response) = tokio_tungstenite::connect_async(request).await?;
    let legacy = response
        .headers()
        .get("sec-websocket-protocol")
        .is_some_and(|p| p.as_bytes() == b"graphql-ws");
    let send = |v: Value| Message::Text(v.to_string().into());
    socket
        .send(send(json!({"type": "connection_init", "payload": {}})))
        .await?;
    let mut subscribed = false;
    while let Some(message) = socket.next().await {
        let text = match message? {
            Message::Text(text) => text,
            Message::Close(_) => break,
            _ => continue,
        };
        let message: Value = serde_json::from_str(text.as_str())?;
        match message["type"].as_str() {
            Some("connection_ack") if !subscribed => {
                subscribed = true;
                let kind = if legacy { "start" } else { "subscribe" };
                let query = json!({"id": "1", "type": kind, "payload": {"query": ERRORS}});
                socket.send(send(query)).await?;
            }
            Some("next" | "data") if message["id"] == "1" => {
                let totals = message["payload"]["data"]["componentErrorsTotals"]
                    .as_array()
                    .ok_or("no componentErrorsTotals in the answer")?
                    .iter()
                    .filter_map(|c| {
                        let n = c["metric"]["errorsTotal"].as_f64()?;
                        Some((c["componentId"].as_str()?.to_owned(), n as i64))
                    })
                    .collect();
                let kind = if legacy { "stop" } else { "complete" };
                let _ = socket.send(send(json!({"id": "1", "type": kind}))).await;
                let _ = socket.close(None).await;
                return Ok(totals);
            }
            Some("error" | "connection_error") => return Err(format!("{message}").into()),
            _ => {}
        }
    }
    Err("the subscription ended without an answer".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_block_on_its_own_loopback_port_is_appended() {
        let yaml = "# mine\nsources:\n  in:\n    type: demo_logs # keep\n";
        let a = prepare(yaml);
        let addr_a = a.api.unwrap();
        assert!(addr_a.ip().is_loopback());
        assert_ne!(addr_a.port(), 8686);
        assert!(
            a.yaml.starts_with(yaml),
            "the user's text is kept: {}",
            a.yaml
        );
        assert!(is_prepared_from(&a.yaml, yaml));
        assert!(!is_prepared_from(&a.yaml, "sources: {}\n"));
        assert_eq!(own_address_of(&a.yaml), Some(addr_a));
        // No trailing newline, and flow style: still one valid document with the block.
        let p = prepare("sources: {in: {type: demo_logs}}");
        assert_eq!(own_address_of(&p.yaml), p.api);
        assert!(p.api.is_some());
        let p = prepare("{\"sources\": {\"in\": {\"type\": \"demo_logs\"}}}");
        assert_eq!(own_address_of(&p.yaml), p.api);
        assert!(p.api.is_some(), "{}", p.yaml);
        let doc: serde_norway::Value = serde_norway::from_str(&p.yaml).unwrap();
        assert_eq!(doc["sources"]["in"]["type"].as_str(), Some("demo_logs"));
    }

    #[test]
    fn a_config_with_its_own_api_block_is_kept() {
        let yaml = "api:\n  enabled: true\n  address: 0.0.0.0:9999\nsources: {}\n";
        assert_eq!(
            prepare(yaml),
            Prepared {
                yaml: yaml.into(),
                api: Some("127.0.0.1:9999".parse().unwrap())
            }
        );
        let yaml = "api:\n  enabled: true\n";
        assert_eq!(prepare(yaml).api, Some("127.0.0.1:8686".parse().unwrap()));
        let yaml = "api:\n  enabled: false\n  address: 127.0.0.1:1234\n";
        assert_eq!(
            prepare(yaml),
            Prepared {
                yaml: yaml.into(),
                api: None
            }
        );
    }

    #[test]
    fn what_is_not_a_yaml_mapping_is_written_unchanged() {
        for text in ["", "- a\n- b\n", "sources: [\n", "just text"] {
            assert_eq!(
                prepare(text),
                Prepared {
                    yaml: text.into(),
                    api: None
                },
                "{text:?}"
            );
        }
    }

    #[test]
    fn tap_urls_follow_the_vector_version() {
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let url = |v| TapUrl::new(addr, v).to_string();
        assert_eq!(url(Some("0.54.0")), "http://127.0.0.1:4000/graphql");
        assert_eq!(url(None), "http://127.0.0.1:4000/graphql");
        assert_eq!(url(Some("nonsense")), "http://127.0.0.1:4000/graphql");
        assert_eq!(url(Some("0.55.0")), "http://127.0.0.1:4000");
        assert_eq!(url(Some("1.0.0")), "http://127.0.0.1:4000");
    }

    #[test]
    fn counters_add_up_sources_in_and_sinks_out() {
        let answer: Response = serde_json::from_value(json!({"data": {"components": {"edges": [
            {"node": {"__typename": "Source", "componentId": "in", "componentType": "demo_logs",
                "metrics": {"receivedEventsTotal": {"receivedEventsTotal": 12.0},
                            "receivedBytesTotal": {"receivedBytesTotal": 3400.0},
                            "sentEventsTotal": {"sentEventsTotal": 12.0}}}},
            {"node": {"__typename": "Source", "componentId": "in2", "componentType": "stdin",
                "metrics": {"receivedEventsTotal": null, "receivedBytesTotal": null, "sentEventsTotal": null}}},
            {"node": {"__typename": "Transform", "componentId": "parse", "componentType": "remap",
                "metrics": {"receivedEventsTotal": {"receivedEventsTotal": 12.0},
                            "sentEventsTotal": {"sentEventsTotal": 10.0}}}},
            {"node": {"__typename": "Sink", "componentId": "out", "componentType": "blackhole",
                "metrics": {"receivedEventsTotal": {"receivedEventsTotal": 10.0},
                            "sentEventsTotal": {"sentEventsTotal": 9.0},
                            "sentBytesTotal": {"sentBytesTotal": 2000.0}}}}
        ]}}}))
        .unwrap();
        let c = Counters::from_answer(answer).unwrap();
        assert_eq!(
            (c.events_in, c.events_out, c.bytes_in, c.bytes_out),
            (12, 9, 3400, 2000)
        );
        assert_eq!(c.components.len(), 4);
        assert_eq!(
            c.components[2],
            json!({"componentId": "parse", "componentKind": "transform", "componentType": "remap",
                   "receivedEvents": 12, "sentEvents": 10})
        );
        assert_eq!(c.components[3]["sentBytes"], json!(2000));
        assert_eq!(c.components[1]["receivedEvents"], json!(0));

        let errors: Response =
            serde_json::from_value(json!({"data": null, "errors": [{"message": "unknown field"}]}))
                .unwrap();
        assert!(Counters::from_answer(errors).is_none());
    }
}
