//! Helpers shared by the gateway's integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use flotilla_gateway::{Gateway, GatewayState};
use flotilla_shared::auth::tokens::{self, NODE_PREFIX};
use flotilla_shared::channels::node_channel;
use flotilla_shared::frames::{PushFrame, PushMessage};
use flotilla_shared::presence::{self, Presence};
use flotilla_shared::redis_conn::Redis;
use flotilla_shared::settings::Settings;
use flotilla_testkit::db::TestDb;
use flotilla_testkit::sse_client::{OpenError, SseClient};
use flotilla_testkit::{eventually, within};
use futures_util::StreamExt;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Test settings with `overrides` (`FLOTILLA__GATEWAY__…` style keys) applied on top.
pub fn settings(db_url: &str, redis_url: &str, overrides: &[(&str, &str)]) -> Settings {
    let mut s = flotilla_testkit::settings(db_url, redis_url);
    // Sockets a test holds without reading must not hit the keepalive timeout meanwhile; the
    // keepalive test sets it back.
    s.gateway.pong_timeout_ms = 5000;
    for (key, value) in overrides {
        let g = &mut s.gateway;
        match *key {
            "liveness_ttl_ms" => g.liveness_ttl_ms = value.parse().unwrap(),
            "pong_timeout_ms" => g.pong_timeout_ms = value.parse().unwrap(),
            "outbound_queue" => g.outbound_queue = value.parse().unwrap(),
            "max_message_bytes" => g.max_message_bytes = value.parse().unwrap(),
            "reconnect_limit" => g.reconnect_limit = value.parse().unwrap(),
            "drain_batch" => g.drain_batch = value.parse().unwrap(),
            "drain_pause_ms" => g.drain_pause_ms = value.parse().unwrap(),
            "shutdown_grace_ms" => g.shutdown_grace_ms = value.parse().unwrap(),
            "max_pending_handshakes" => g.max_pending_handshakes = value.parse().unwrap(),
            "auth_failures_per_minute" => g.auth_failures_per_minute = value.parse().unwrap(),
            "header_read_timeout_ms" => g.header_read_timeout_ms = value.parse().unwrap(),
            "heartbeat_interval_ms" => g.heartbeat_interval_ms = value.parse().unwrap(),
            "sse_keepalive_ms" => g.sse_keepalive_ms = value.parse().unwrap(),
            "trim_after_churn" => g.trim_after_churn = value.parse().unwrap(),
            other => panic!("unknown override {other}"),
        }
    }
    s
}

/// Inserts an environment and `n` nodes, their tokens stored as digests like an enrolled
/// node's, in one statement; returns `(node id, node token)` for each.
pub async fn nodes(pool: &PgPool, n: usize) -> Vec<(Uuid, String)> {
    let env = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO environments (id, name, enrollment_token_lookup, enrollment_token_hash, enrollment_token_hint)
         VALUES ($1, $2, $3, 'unused', 'unused')",
    )
    .bind(env)
    .bind(format!("env-{}", env.simple()))
    .bind(env.simple().to_string())
    .execute(pool)
    .await
    .expect("insert environment");
    let issued: Vec<_> = (0..n).map(|_| tokens::issue(NODE_PREFIX)).collect();
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    let hosts: Vec<String> = (0..n).map(|i| format!("host-{i}")).collect();
    let lookups: Vec<&str> = issued.iter().map(|t| t.lookup.as_str()).collect();
    let digests: Vec<Vec<u8>> = issued
        .iter()
        .map(|t| tokens::node_digest(&t.token).to_vec())
        .collect();
    sqlx::query(
        "INSERT INTO nodes (id, environment_id, host, token_lookup, token_digest)
         SELECT u.id, $1, u.host, u.lookup, u.digest
         FROM unnest($2::uuid[], $3::text[], $4::text[], $5::bytea[]) AS u(id, host, lookup, digest)",
    )
    .bind(env)
    .bind(&ids)
    .bind(&hosts)
    .bind(&lookups)
    .bind(&digests)
    .execute(pool)
    .await
    .expect("insert nodes");
    ids.into_iter()
        .zip(issued.into_iter().map(|t| t.token))
        .collect()
}

/// Stores `token` as a node enrolled before digests were stored has it: a bcrypt hash of its
/// secret (cost 4), no digest.
pub async fn hash_with_bcrypt(pool: &PgPool, node: Uuid, token: &str) {
    let secret = tokens::parse(NODE_PREFIX, token).unwrap().secret.to_owned();
    let hash = tokens::hash_secret(secret, 4).await.unwrap();
    sqlx::query("UPDATE nodes SET token_hash = $2, token_digest = NULL WHERE id = $1")
        .bind(node)
        .bind(hash)
        .execute(pool)
        .await
        .expect("store a bcrypt hash");
}

/// A gateway running in-process.
pub struct Gw {
    pub addr: SocketAddr,
    pub state: GatewayState,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts a gateway on port 0.
pub async fn gateway(settings: Settings) -> Gw {
    let gateway = within("gateway build", Gateway::build(settings))
        .await
        .expect("gateway builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = gateway.state().clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gateway.serve(listener, shutdown.clone()));
    Gw {
        addr,
        state,
        shutdown,
        task,
    }
}

impl Gw {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/api/agent/ws", self.addr)
    }

    /// Connects with `token`; the handshake error (e.g. HTTP 401) on failure.
    pub async fn try_connect(&self, token: &str) -> Result<Ws, tungstenite::Error> {
        connect(&self.ws_url(), token).await
    }

    /// The SSE push channel's URL.
    pub fn push_url(&self) -> String {
        format!("http://{}/api/agent/push", self.addr)
    }

    /// Opens an SSE stream with `token`; the status on refusal.
    pub async fn try_open(&self, token: &str) -> Result<SseClient, OpenError> {
        within("an SSE stream", SseClient::open(&self.push_url(), token)).await
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

    /// Connects and waits until the node's presence names this socket's gateway.
    pub async fn connect(&self, redis: &Redis, node: Uuid, token: &str) -> (Ws, Presence) {
        let before = presence_of(redis, node).await.map(|p| p.conn_id);
        let ws = self.try_connect(token).await.expect("handshake succeeds");
        (ws, self.presence_after(redis, node, before).await)
    }

    /// Waits until the node's presence is a connection of this gateway other than `before`.
    async fn presence_after(&self, redis: &Redis, node: Uuid, before: Option<String>) -> Presence {
        let id = self.state.id().to_owned();
        eventually(
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
}

/// Opens a WebSocket to `url` with a bearer token.
pub async fn connect(url: &str, token: &str) -> Result<Ws, tungstenite::Error> {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    within(
        "websocket handshake",
        tokio_tungstenite::connect_async(request),
    )
    .await
    .map(|(ws, _)| ws)
}

/// The HTTP status of a refused handshake.
pub fn refused_status(result: Result<Ws, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade succeeded"),
    }
}

/// The HTTP status of a refused stream open.
pub fn open_status(result: Result<SseClient, OpenError>) -> u16 {
    match result {
        Err(OpenError::Status(status, _)) => status.as_u16(),
        Err(OpenError::Request(e)) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the stream opened"),
    }
}

/// The next text frame, skipping pings and pongs.
pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        match within("a text frame", ws.next()).await {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until the gateway's close frame and returns its code (`None` if the connection ended
/// without one); text frames before it are skipped.
pub async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match within("a close frame", ws.next()).await {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// The close code in what the server sent, read off the wire without answering anything.
pub async fn raw_close_code(ws: Ws) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    let _ = within(
        "the server to close",
        ws.into_inner().read_to_end(&mut bytes),
    )
    .await;
    let mut rest = bytes.as_slice();
    // Server frames are unmasked; the gateway sends only short frames here.
    while let [head, len, tail @ ..] = rest {
        let len = usize::from(*len & 0x7f);
        assert!(len < 126, "unexpected long frame");
        if head & 0x0f == 0x8 {
            return tail.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
        }
        rest = tail.get(len..)?;
    }
    None
}

pub fn redis(settings: &Settings) -> Redis {
    Redis::new(&settings.redis).unwrap()
}

pub async fn presence_of(redis: &Redis, node: Uuid) -> Option<Presence> {
    presence::lookup(redis, &[node])
        .await
        .expect("presence lookup")
        .pop()
        .flatten()
}

/// Waits until the node reads as not connected.
pub async fn wait_absent(redis: &Redis, node: Uuid, limit: Duration) {
    eventually("presence to clear", limit, || async {
        presence_of(redis, node).await.is_none().then_some(())
    })
    .await;
}

/// Publishes a payload on the node's channel, as the api does.
pub async fn publish(redis: &Redis, node: Uuid, payload: &str) -> i64 {
    redis
        .query(redis::cmd("PUBLISH").arg(node_channel(node)).arg(payload))
        .await
        .expect("publish")
}

/// Publishes `payload` until a subscriber (a gateway) receives it; Redis errors count as "not
/// yet" (for tests where Redis comes back).
pub async fn publish_until_delivered(redis: &Redis, node: Uuid, payload: &str) {
    eventually(
        "a gateway subscribed to the node's channel",
        Duration::from_secs(5),
        || async {
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(node_channel(node)).arg(payload);
            let delivered: i64 = redis.query(&cmd).await.ok()?;
            (delivered > 0).then_some(())
        },
    )
    .await;
}

/// A fresh database with nodes, and settings and a Redis handle on the shared test Redis.
pub struct Setup {
    pub db: TestDb,
    pub settings: Settings,
    pub redis: Redis,
}

/// [`Setup`] with `overrides` applied to the gateway settings.
pub async fn setup(overrides: &[(&str, &str)]) -> Setup {
    let db = flotilla_testkit::db::fresh().await;
    let settings = settings(&db.url, &flotilla_testkit::redis_url(), overrides);
    let redis = redis(&settings);
    Setup {
        db,
        settings,
        redis,
    }
}

impl Setup {
    /// `N` nodes in one environment.
    pub async fn nodes<const N: usize>(&self) -> [(Uuid, String); N] {
        nodes(&self.db.pool, N).await.try_into().unwrap()
    }
}

/// A `config_changed` frame as the api publishes it.
pub fn frame(reason: &str) -> String {
    let reason = serde_json::from_value(serde_json::Value::from(reason)).unwrap();
    PushFrame::new(PushMessage::ConfigChanged {
        pipeline_id: None,
        reason,
    })
    .to_json()
}
