//! Starting a gateway in-process and reaching its push channel.

use crate::sse_client::{OpenError, SseClient};
use crate::ws_client::{self, Ws};
use flotilla_gateway::metrics::Counters;
use flotilla_gateway::{Gateway, GatewayState};
use flotilla_shared::presence::{self, Presence};
use flotilla_shared::redis_conn::Redis;
use flotilla_shared::settings::Settings;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A running gateway.
pub struct GatewayHandle {
    /// Bound address.
    pub addr: SocketAddr,
    /// Its state (registry, counters, Redis handle).
    pub state: GatewayState,
    /// Cancelling it drains the gateway and ends the serve task.
    pub shutdown: CancellationToken,
    /// The serve task; its result is the gateway's.
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// Starts a gateway on port 0 with `settings`.
pub async fn spawn(settings: Settings) -> GatewayHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    spawn_on(settings, listener).await
}

/// Starts a gateway with `settings` on `listener` (a fixed address, e.g. a restarted gateway's).
pub async fn spawn_on(settings: Settings, listener: TcpListener) -> GatewayHandle {
    let gateway = crate::within("gateway build", Gateway::build(settings))
        .await
        .expect("gateway builds");
    let addr = listener.local_addr().unwrap();
    let state = gateway.state().clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gateway.serve(listener, shutdown.clone()));
    GatewayHandle {
        addr,
        state,
        shutdown,
        task,
    }
}

impl GatewayHandle {
    /// The WebSocket push channel's URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/api/agent/ws", self.addr)
    }

    /// The SSE push channel's URL.
    pub fn push_url(&self) -> String {
        format!("http://{}/api/agent/push", self.addr)
    }

    /// Connects a WebSocket with `token`; the handshake error (e.g. HTTP 401) on failure.
    pub async fn try_connect(&self, token: &str) -> Result<Ws, tungstenite::Error> {
        ws_client::connect(&self.ws_url(), token).await
    }

    /// Opens an SSE stream with `token`; the status on refusal.
    pub async fn try_open(&self, token: &str) -> Result<SseClient, OpenError> {
        crate::within("an SSE stream", SseClient::open(&self.push_url(), token)).await
    }

    /// Connects a WebSocket and waits until the node's presence names it.
    pub async fn connect(&self, redis: &Redis, node: Uuid, token: &str) -> (Ws, Presence) {
        let before = presence_of(redis, node).await.map(|p| p.conn_id);
        let ws = self.try_connect(token).await.expect("handshake succeeds");
        (ws, self.presence_after(redis, node, before).await)
    }

    /// Opens an SSE stream and waits until the node's presence names it.
    pub async fn open(&self, redis: &Redis, node: Uuid, token: &str) -> (SseClient, Presence) {
        let before = presence_of(redis, node).await.map(|p| p.conn_id);
        let stream = match self.try_open(token).await {
            Ok(stream) => stream,
            Err(e) => panic!("the stream opens: {e:?}"),
        };
        (stream, self.presence_after(redis, node, before).await)
    }

    /// Waits until the node's presence is a connection of this gateway other than `before`.
    async fn presence_after(&self, redis: &Redis, node: Uuid, before: Option<String>) -> Presence {
        let id = self.state.id().to_owned();
        crate::eventually(
            "presence of the new connection",
            Duration::from_secs(5),
            || {
                let (id, before) = (id.clone(), before.clone());
                async move {
                    presence_of(redis, node)
                        .await
                        .filter(|p| p.gateway_id == id && Some(&p.conn_id) != before.as_ref())
                }
            },
        )
        .await
    }

    /// Push connections opened so far.
    pub fn connects(&self) -> u64 {
        Counters::get(&self.state.counters().connects)
    }

    /// Stops it (drains its connections) and waits until it has exited cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        crate::within("gateway shutdown", self.task)
            .await
            .expect("gateway task")
            .expect("gateway serves");
    }
}

/// The node's presence as gateways record it in Redis (`None`: not connected).
pub async fn presence_of(redis: &Redis, node: Uuid) -> Option<Presence> {
    presence::lookup(redis, &[node])
        .await
        .expect("presence lookup")
        .pop()
        .flatten()
}
