//! The `components` query: events and bytes in and out, per pipeline and per component.

use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;

/// Components reported per pipeline at most (the api keeps 16 KiB of them).
pub const MAX_COMPONENTS: usize = 100;

/// The `components` query: the per-component totals Vector's GraphQL API serves (up to 0.54;
/// from 0.55 the API speaks gRPC and this query is not answered, so counters are left out).
const QUERY: &str = "{ components(first: 1000) { edges { node { __typename componentId componentType \
... on Source { metrics { receivedEventsTotal { receivedEventsTotal } receivedBytesTotal { receivedBytesTotal } sentEventsTotal { sentEventsTotal } } } \
... on Transform { metrics { receivedEventsTotal { receivedEventsTotal } sentEventsTotal { sentEventsTotal } } } \
... on Sink { metrics { receivedEventsTotal { receivedEventsTotal } sentEventsTotal { sentEventsTotal } sentBytesTotal { sentBytesTotal } } } } } } }";

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
    /// sentEvents, receivedBytes?, sentBytes?}` (VectorFlow's shape; [`super::VectorApi::fill`] adds
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

/// Asks the Vector whose API is at `addr` for its components' totals; `None` when it does not
/// answer, answers an error, or speaks another protocol.
pub(super) async fn query(http: &reqwest::Client, addr: SocketAddr) -> Option<Counters> {
    let response = http
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

#[cfg(test)]
mod tests {
    use super::*;

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
