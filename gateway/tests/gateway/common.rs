//! Helpers shared by the gateway's integration tests.

use flotilla_shared::auth::tokens::{self, NODE_PREFIX};
use flotilla_shared::channels::node_channel;
use flotilla_shared::frames::{PushFrame, PushMessage};
use flotilla_shared::redis_conn::Redis;
use flotilla_shared::settings::Settings;
use flotilla_testkit::db::TestDb;
use flotilla_testkit::sse_client::{OpenError, SseClient};
use flotilla_testkit::{eventually, within};
use futures_util::StreamExt;
use sqlx::PgPool;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

pub use flotilla_testkit::gateway::{presence_of, spawn as gateway, GatewayHandle};
pub use flotilla_testkit::ws_client::{connect, next_text, refused_status, Ws};

/// Test settings with gateway `overrides` applied, their keys relative to `gateway.`
/// (`("pong_timeout_ms", "200")` sets `gateway.pong_timeout_ms`).
pub fn settings(db_url: &str, redis_url: &str, overrides: &[(&str, &str)]) -> Settings {
    let keys: Vec<String> = overrides
        .iter()
        .map(|(k, _)| format!("gateway.{k}"))
        .collect();
    // Sockets a test holds without reading must not hit the keepalive timeout meanwhile; the
    // keepalive test sets it back.
    let mut all = vec![("gateway.pong_timeout_ms", "5000")];
    all.extend(
        keys.iter()
            .map(String::as_str)
            .zip(overrides.iter().map(|(_, v)| *v)),
    );
    flotilla_testkit::settings_with(db_url, redis_url, &all)
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
    let hosts: Vec<String> = (0..n).map(|i| format!("host-{i}")).collect();
    flotilla_testkit::seed::nodes(pool, env, &hosts, &[], false)
        .await
        .expect("insert nodes")
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

/// The HTTP status of a refused stream open.
pub fn open_status(result: Result<SseClient, OpenError>) -> u16 {
    match result {
        Err(OpenError::Status(status, _)) => status.as_u16(),
        Err(OpenError::Request(e)) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the stream opened"),
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
        .query(
            redis::cmd(redis.node_publish())
                .arg(node_channel(node))
                .arg(payload),
        )
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
            let mut cmd = redis::cmd(redis.node_publish());
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
