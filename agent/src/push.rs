//! The push channel: a WebSocket to the gateway (or, for servers without one, a [`sse`]
//! stream), reconnected forever with backoff.
//!
//! The task reports [`PushEvent`]s to the main loop and keeps no agent state. Any frame (data,
//! ping or pong) resets the read deadline, so an idle socket that the gateway keeps alive is
//! never recycled. Close codes follow [`reconnect_policy`]: draining gateways are left after a
//! short random delay, a superseded socket backs off (another agent may share the token), a
//! revoked node stops the task.

use crate::config::Tuning;
use crate::sse;
use crate::state::{Event, PushEvent};
use flotilla_shared::backoff::Backoff;
use flotilla_shared::close_codes::{reconnect_policy, Reconnect, NORMAL};
use flotilla_shared::frames::PushFrame;
use flotilla_shared::protocol::ConfigResponse;
use flotilla_shared::secret::Secret;
use futures_util::StreamExt;
use rand::Rng;
use reqwest::Url;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{mpsc::UnboundedSender, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Shutdown; the socket was closed with 1000.
    Cancelled,
    /// The URL changed; reconnect at once.
    UrlChanged,
    /// The socket closed or failed; what to do next.
    Closed(Reconnect),
    /// The gateway refused the handshake for now (503 or 429) and said when to come back.
    RetryAfter(Duration),
}

/// The `Retry-After` of a refused handshake (503 busy or draining, 429 reconnecting too often).
fn retry_after(error: &tokio_tungstenite::tungstenite::Error) -> Option<Duration> {
    let tokio_tungstenite::tungstenite::Error::Http(response) = error else {
        return None;
    };
    if !matches!(response.status().as_u16(), 429 | 503) {
        return None;
    }
    let secs: u64 = response
        .headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(300)))
}

/// Where the push channel connects, and over which transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushTarget {
    /// The WebSocket at the config's `websocketUrl`.
    WebSocket(String),
    /// Server-sent events at `url`; `fallback` (`VF_URL` + `/api/agent/push`) is used after
    /// [`SSE_QUICK_FAILURES`] failures in a row that each came sooner than [`SSE_QUICK`].
    Sse {
        /// The stream URL.
        url: String,
        /// The stream URL on the agent's own server.
        fallback: String,
    },
}

/// SSE failures in a row after which the agent leaves `pushUrl` for its own server's stream.
pub const SSE_QUICK_FAILURES: u32 = 3;
/// An SSE stream that failed sooner than this counts as a quick failure.
pub const SSE_QUICK: Duration = Duration::from_secs(5);

impl PushTarget {
    /// The push channel a config asks for: its `websocketUrl` when it has one; else SSE at
    /// its `pushUrl` if that has the scheme and host:port of `server` (the agent's `VF_URL`),
    /// otherwise at `server` + `/api/agent/push`, as current VectorFlow agents do.
    pub fn from_config(config: &ConfigResponse, server: &Url) -> Self {
        let websocket = config.websocket_url.as_deref().map(str::trim);
        if let Some(url) = websocket.filter(|u| !u.is_empty()) {
            return Self::WebSocket(url.to_owned());
        }
        let mut fallback = server.clone();
        let prefix = fallback.path().trim_end_matches('/').to_owned();
        fallback.set_path(&format!("{prefix}/api/agent/push"));
        let fallback = fallback.to_string();
        let url = config
            .push_url
            .as_deref()
            .and_then(|u| Url::parse(u.trim()).ok())
            .filter(|u| {
                u.scheme() == server.scheme()
                    && u.host_str() == server.host_str()
                    && u.port_or_known_default() == server.port_or_known_default()
            })
            .map_or_else(|| fallback.clone(), String::from);
        Self::Sse { url, fallback }
    }
}

/// Runs the push channel until `cancel` or a revocation. `target` carries the latest
/// [`PushTarget`]; a change reconnects.
pub async fn run(
    mut target: watch::Receiver<PushTarget>,
    token: Secret,
    tuning: Tuning,
    events: UnboundedSender<Event>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(tuning.push_backoff_base, tuning.push_backoff_max);
    let mut http: Option<reqwest::Client> = None;
    // SSE only: quick failures in a row, and whether the fallback URL took over.
    let (mut quick_failures, mut on_fallback) = (0, false);
    loop {
        let current = target.borrow_and_update().clone();
        let opened = Instant::now();
        let end = match &current {
            PushTarget::WebSocket(url) => {
                websocket(url, &token, &tuning, &events, &mut target, &cancel).await
            }
            PushTarget::Sse { url, fallback } => {
                let http = http.get_or_insert_with(|| sse::client(&tuning));
                let stream = if on_fallback { fallback } else { url };
                let end =
                    sse::session(http, stream, &token, &tuning, &events, &mut target, &cancel)
                        .await;
                let failed = matches!(end, End::Closed(_) | End::RetryAfter(_));
                if failed && opened.elapsed() < SSE_QUICK {
                    quick_failures += 1;
                    if quick_failures >= SSE_QUICK_FAILURES && !on_fallback && url != fallback {
                        tracing::warn!(push_url = %url, fallback = %fallback, "pushUrl keeps failing; using the agent's own server");
                        on_fallback = true;
                    }
                } else {
                    quick_failures = 0;
                }
                end
            }
        };
        if opened.elapsed() >= tuning.push_stable_after {
            backoff.reset();
        }
        let delay = match end {
            End::Cancelled => return,
            End::UrlChanged => {
                (quick_failures, on_fallback) = (0, false);
                Duration::ZERO
            }
            End::Closed(Reconnect::Never) => {
                let _ = events.send(Event::Push(PushEvent::Revoked));
                return;
            }
            End::Closed(Reconnect::Now) => {
                let max = u64::try_from(tuning.drain_reconnect_max.as_millis()).unwrap_or(u64::MAX);
                Duration::from_millis(rand::thread_rng().gen_range(0..=max))
            }
            End::Closed(Reconnect::Superseded) => {
                // Reconnecting would supersede the other socket in turn: wait long, so two
                // agents sharing a token take turns slowly instead of looping.
                let delay = backoff.next_long_delay();
                tracing::warn!(
                    retry_in = ?delay,
                    "push channel superseded by a newer connection of this node: another agent may be using the same node token"
                );
                delay
            }
            End::Closed(Reconnect::WithBackoff) => backoff.next_delay(),
            // The server is healthy but busy: come back around when it said, spread out,
            // without growing the backoff (which would strand agents long after the burst).
            End::RetryAfter(after) => {
                let max = u64::try_from(after.as_millis() * 2)
                    .unwrap_or(u64::MAX)
                    .max(1);
                Duration::from_millis(rand::thread_rng().gen_range(0..=max))
            }
        };
        tracing::debug!(retry_in = ?delay, "push channel reconnecting");
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
            changed = target.changed() => {
                if changed.is_err() { return }
                (quick_failures, on_fallback) = (0, false);
            }
        }
    }
}

/// One WebSocket session: connect, read until it ends; reports `Connected` and
/// `Disconnected` around an open socket.
async fn websocket(
    url: &str,
    token: &Secret,
    tuning: &Tuning,
    events: &UnboundedSender<Event>,
    target: &mut watch::Receiver<PushTarget>,
    cancel: &CancellationToken,
) -> End {
    let connected = tokio::select! {
        () = cancel.cancelled() => return End::Cancelled,
        r = tokio::time::timeout(tuning.connect_timeout, connect(url, token)) => r,
    };
    match connected {
        Ok(Ok(socket)) => {
            tracing::debug!(url, "push channel open");
            let _ = events.send(Event::Push(PushEvent::Connected));
            let end = session(socket, target, tuning, events, cancel).await;
            let _ = events.send(Event::Push(PushEvent::Disconnected));
            end
        }
        Ok(Err(e)) => {
            tracing::warn!(url, error = %e, "push channel connect failed");
            retry_after(&e).map_or(End::Closed(Reconnect::WithBackoff), End::RetryAfter)
        }
        Err(_) => {
            tracing::warn!(url, timeout = ?tuning.connect_timeout, "push channel connect timed out");
            End::Closed(Reconnect::WithBackoff)
        }
    }
}

/// Opens the socket with the node token as a bearer token.
async fn connect(
    url: &str,
    token: &Secret,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let mut request = url.into_client_request()?;
    let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|e| tokio_tungstenite::tungstenite::Error::HttpFormat(e.into()))?;
    auth.set_sensitive(true);
    request.headers_mut().insert("authorization", auth);
    let (socket, _response) = tokio_tungstenite::connect_async(request).await?;
    Ok(socket)
}

/// Reads frames until the socket ends, the deadline passes, the URL changes or shutdown.
async fn session<T: Send + Sync>(
    mut socket: Socket,
    url: &mut watch::Receiver<T>,
    tuning: &Tuning,
    events: &UnboundedSender<Event>,
    cancel: &CancellationToken,
) -> End {
    loop {
        let frame = tokio::select! {
            () = cancel.cancelled() => {
                close(&mut socket, "agent shutting down").await;
                return End::Cancelled;
            }
            changed = url.changed() => {
                close(&mut socket, "push URL changed").await;
                return if changed.is_ok() { End::UrlChanged } else { End::Cancelled };
            }
            frame = tokio::time::timeout(tuning.read_deadline, socket.next()) => frame,
        };
        match frame {
            Err(_) => {
                tracing::warn!(deadline = ?tuning.read_deadline, "no frame from the gateway within the read deadline; reconnecting");
                return End::Closed(Reconnect::WithBackoff);
            }
            Ok(None) => return End::Closed(Reconnect::WithBackoff),
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "push channel failed");
                return End::Closed(Reconnect::WithBackoff);
            }
            Ok(Some(Ok(Message::Text(text)))) => match PushFrame::parse(text.as_str()) {
                Ok(frame) => {
                    tracing::debug!(id = %frame.id, message = ?frame.message, "push received");
                    let _ = events.send(Event::Push(PushEvent::Message(frame.message)));
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a malformed push frame"),
            },
            Ok(Some(Ok(Message::Close(frame)))) => {
                let code = frame.as_ref().map_or(1005, |f| u16::from(f.code));
                let policy = reconnect_policy(code);
                tracing::info!(
                    code,
                    reason = frame.as_ref().map_or("", |f| f.reason.as_str()),
                    ?policy,
                    "push channel closed by the gateway"
                );
                return End::Closed(policy);
            }
            // Pings (answered by tungstenite), pongs and anything else: liveness only.
            Ok(Some(Ok(_))) => {}
        }
    }
}

async fn close(socket: &mut Socket, reason: &str) {
    let frame = CloseFrame {
        code: CloseCode::from(NORMAL),
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = socket.close(Some(frame)).await;
        // Wait for the gateway's close reply so the close handshake completes.
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn refused(status: u16, retry_after: Option<&str>) -> tokio_tungstenite::tungstenite::Error {
        let mut response = tokio_tungstenite::tungstenite::http::Response::builder().status(status);
        if let Some(v) = retry_after {
            response = response.header("retry-after", v);
        }
        tokio_tungstenite::tungstenite::Error::Http(Box::new(response.body(None).unwrap()))
    }

    fn target(websocket: Option<&str>, push: Option<&str>, server: &str) -> PushTarget {
        let config = ConfigResponse {
            pipelines: vec![],
            poll_interval_ms: 5000,
            websocket_url: websocket.map(Into::into),
            push_url: push.map(Into::into),
            secret_backend: "BUILTIN".into(),
            sample_requests: None,
            pending_action: None,
        };
        PushTarget::from_config(&config, &Url::parse(server).unwrap())
    }

    #[test]
    fn the_push_target_follows_the_current_agents_rules() {
        let sse = |url: &str, fallback: &str| PushTarget::Sse {
            url: url.into(),
            fallback: fallback.into(),
        };
        let own = "https://vf.example/api/agent/push";
        // A WebSocket URL wins (Flotilla always sends one).
        assert_eq!(
            target(
                Some("wss://gw.example/api/agent/ws"),
                Some(own),
                "https://vf.example"
            ),
            PushTarget::WebSocket("wss://gw.example/api/agent/ws".into())
        );
        // None (or empty): SSE, at pushUrl when it has the agent's scheme and host:port.
        assert_eq!(
            target(Some(" "), Some(own), "https://vf.example"),
            sse(own, own)
        );
        assert_eq!(
            target(
                None,
                Some("https://vf.example:443/other/push"),
                "https://vf.example/"
            ),
            sse("https://vf.example/other/push", own)
        );
        // Another host, port or scheme, or none at all: the agent's own server.
        for push in [
            Some("https://evil.example/api/agent/push"),
            Some("https://vf.example:8443/api/agent/push"),
            Some("http://vf.example/api/agent/push"),
            Some("not a url"),
            None,
        ] {
            assert_eq!(
                target(None, push, "https://vf.example"),
                sse(own, own),
                "{push:?}"
            );
        }
        // A base path on VF_URL is kept.
        assert_eq!(
            target(None, None, "http://10.0.0.1:8080/vf/"),
            sse(
                "http://10.0.0.1:8080/vf/api/agent/push",
                "http://10.0.0.1:8080/vf/api/agent/push"
            )
        );
    }

    #[test]
    fn busy_and_rate_limited_handshakes_honour_retry_after() {
        assert_eq!(
            retry_after(&refused(503, Some("1"))),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            retry_after(&refused(429, Some("60"))),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            retry_after(&refused(429, Some("99999"))),
            Some(Duration::from_secs(300))
        );
        assert_eq!(retry_after(&refused(503, None)), None);
        assert_eq!(retry_after(&refused(401, Some("1"))), None);
        assert_eq!(retry_after(&refused(503, Some("soon"))), None);
    }

    /// `wss://` goes through rustls (with its crypto provider) and fails cleanly on a peer
    /// that does not speak TLS.
    #[tokio::test]
    async fn wss_handshake_failures_are_errors() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                use tokio::io::AsyncWriteExt;
                let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let url = format!("wss://127.0.0.1:{}/api/agent/ws", addr.port());
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            connect(&url, &Secret::new("vf_node_x")),
        )
        .await;
        assert!(matches!(result, Ok(Err(_))), "{result:?}");
    }

    /// A gateway that closes with a code makes the session end with that code's policy.
    #[tokio::test]
    async fn close_codes_map_to_reconnect_policies() {
        use flotilla_shared::close_codes::{DRAINING, REVOKED, SUPERSEDED};
        for (code, expected) in [
            (DRAINING, Reconnect::Now),
            (REVOKED, Reconnect::Never),
            (SUPERSEDED, Reconnect::Superseded),
            (NORMAL, Reconnect::WithBackoff),
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let (socket, _) = listener.accept().await.unwrap();
                let mut ws = tokio_tungstenite::accept_async(socket).await.unwrap();
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: "test".into(),
                };
                let _ = ws.close(Some(frame)).await;
                while let Some(Ok(_)) = ws.next().await {}
            });
            let socket = connect(&format!("ws://{addr}/ws"), &Secret::new("t"))
                .await
                .unwrap();
            let (_tx, mut url) = watch::channel(String::new());
            let (events, _rx) = tokio::sync::mpsc::unbounded_channel();
            let end = tokio::time::timeout(
                Duration::from_secs(5),
                session(
                    socket,
                    &mut url,
                    &Tuning::default(),
                    &events,
                    &CancellationToken::new(),
                ),
            )
            .await
            .unwrap();
            assert_eq!(end, End::Closed(expected), "code {code}");
        }
    }

    /// Any frame, pings included, resets the read deadline; silence ends the session.
    #[tokio::test]
    async fn pings_keep_an_idle_session_alive_and_silence_ends_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(socket).await.unwrap();
            use futures_util::SinkExt;
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if ws.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
            }
            // Then silence, with the socket open.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let socket = connect(&format!("ws://{addr}/ws"), &Secret::new("t"))
            .await
            .unwrap();
        let (_tx, mut url) = watch::channel(String::new());
        let (events, _rx) = tokio::sync::mpsc::unbounded_channel();
        let tuning = Tuning {
            read_deadline: Duration::from_millis(200),
            ..Tuning::default()
        };
        let started = Instant::now();
        let end = session(
            socket,
            &mut url,
            &tuning,
            &events,
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(end, End::Closed(Reconnect::WithBackoff));
        let lasted = started.elapsed();
        assert!(
            lasted >= Duration::from_millis(550),
            "pings kept it alive: {lasted:?}"
        );
        assert!(
            lasted < Duration::from_secs(2),
            "silence ended it: {lasted:?}"
        );
    }
}
