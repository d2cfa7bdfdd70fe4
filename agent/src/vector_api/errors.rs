//! Error totals: Vector serves them only as a subscription, over a WebSocket.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// Error totals per component: Vector serves them only as a subscription, whose first answer
/// (at once, with the components that have errors) is all the agent reads.
const ERRORS: &str =
    "subscription { componentErrorsTotals(interval: 1000) { componentId metric { errorsTotal } } }";

/// Why the error subscription gave no totals.
type SubscribeError = Box<dyn std::error::Error + Send + Sync>;

/// Opens `ws://<addr>/graphql`, subscribes to `componentErrorsTotals` and reads its first
/// answer, in whichever of the two GraphQL-over-WebSocket protocols the server picks
/// (`graphql-transport-ws`, or the older `graphql-ws` of Vector's own client).
pub(super) async fn subscribe(addr: SocketAddr) -> Result<BTreeMap<String, i64>, SubscribeError> {
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
