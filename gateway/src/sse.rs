//! `GET /api/agent/push`: the push channel over Server-Sent Events, which every current
//! VectorFlow agent uses.
//!
//! A stream is a session like a WebSocket (same authentication, registry, subscription,
//! presence, supersede, revoke, drain and limits, see [`crate::session`]); only the framing
//! differs. The response starts with a `: connected` comment; each push is
//! `event: <type>\ndata: <the frame's JSON>\n\n`, and a `: keepalive` comment goes out every
//! `gateway.sse_keepalive_ms`. These agents send nothing back and set no read deadline, so a
//! dead stream is found by a failed write (the keepalive makes one) or by TCP keepalive.
//!
//! The session task writes into a one-chunk slot that the response body reads: a chunk the
//! connection cannot take yet holds the session's writes back, so its outbox fills and a
//! stream that stops reading is closed as too slow, exactly as a WebSocket is. When the session
//! ends the body ends; when the connection goes away the body is dropped and the session ends.

use crate::handshake;
use crate::metrics::Counters;
use crate::state::GatewayState;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// The first bytes of every stream.
const CONNECTED: &[u8] = b": connected\n\n";
/// The periodic comment that keeps proxies and the agent's connection alive.
pub(crate) const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// Opens a stream: authenticated exactly as a WebSocket handshake, then `200` and the events.
pub(crate) async fn open(
    State(state): State<GatewayState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let ip = handshake::client_ip(&state, peer, &headers);
    let node = match handshake::accept(&state, &headers, ip).await {
        Ok(node) => node,
        Err(rejection) => {
            Counters::inc(&state.counters.handshakes_rejected);
            return rejection.into_response();
        }
    };
    let (link, body) = channel();
    link.send(Bytes::from_static(CONNECTED));
    let sessions = state.sessions.clone();
    tokio::spawn(sessions.track_future(crate::session::run(
        state,
        node,
        crate::session::Link::Sse(link),
    )));
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache, no-transform"),
            ),
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::new(body),
    )
        .into_response()
}

/// One push as an SSE event: the frame's `type` names the event (the agent reads the type from
/// the JSON itself), the frame is the data. Pushed frames are compact JSON; a line break in one
/// would still arrive whole, as one `data:` line per line.
pub(crate) fn event(frame: &str) -> Bytes {
    #[derive(serde::Deserialize)]
    struct Typed<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    let kind = serde_json::from_str::<Typed>(frame)
        .ok()
        .and_then(|t| t.kind)
        .filter(|k| !k.is_empty() && !k.contains(['\n', '\r']))
        .unwrap_or(std::borrow::Cow::Borrowed("message"));
    let mut out = String::with_capacity(frame.len() + kind.len() + 16);
    out.push_str("event: ");
    out.push_str(&kind);
    out.push('\n');
    for line in frame.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// The slot between a session and its response body.
#[derive(Default)]
struct Slot {
    chunk: Option<Bytes>,
    /// The session is over: the body ends once the chunk is taken.
    ended: bool,
    /// The connection dropped the body.
    gone: bool,
    body: Option<Waker>,
    session: Option<Waker>,
}

/// A new stream's session end and response body.
fn channel() -> (SseLink, SseBody) {
    let slot = Arc::new(Mutex::new(Slot::default()));
    (SseLink(slot.clone()), SseBody(slot))
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(w) = waker.take() {
        w.wake();
    }
}

/// The session's end of a stream.
pub(crate) struct SseLink(Arc<Mutex<Slot>>);

impl SseLink {
    /// Ready to take a chunk; `Err` once the connection is gone.
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        let mut slot = self.0.lock().unwrap();
        if slot.gone {
            Poll::Ready(Err(()))
        } else if slot.chunk.is_none() {
            Poll::Ready(Ok(()))
        } else {
            slot.session = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// Ready once the connection is gone.
    pub(crate) fn poll_gone(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut slot = self.0.lock().unwrap();
        if slot.gone {
            Poll::Ready(())
        } else {
            slot.session = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// Hands a chunk to the body; call only when [`poll_ready`](Self::poll_ready) said so.
    pub(crate) fn send(&self, chunk: Bytes) {
        let mut slot = self.0.lock().unwrap();
        slot.chunk = Some(chunk);
        wake(&mut slot.body);
    }

    /// Ends the stream after the chunk in the slot.
    pub(crate) fn end(&self) {
        let mut slot = self.0.lock().unwrap();
        slot.ended = true;
        wake(&mut slot.body);
    }
}

impl Drop for SseLink {
    fn drop(&mut self) {
        self.end();
    }
}

/// The response body of a stream.
struct SseBody(Arc<Mutex<Slot>>);

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let mut slot = self.0.lock().unwrap();
        if let Some(chunk) = slot.chunk.take() {
            wake(&mut slot.session);
            Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
        } else if slot.ended {
            Poll::Ready(None)
        } else {
            slot.body = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        let mut slot = self.0.lock().unwrap();
        slot.gone = true;
        wake(&mut slot.session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_becomes_one_event_named_by_its_type() {
        let frame = r#"{"type":"config_changed","reason":"deploy","id":"x","sentAt":1}"#;
        assert_eq!(
            event(frame),
            format!("event: config_changed\ndata: {frame}\n\n").as_bytes()
        );
        assert_eq!(
            event("{\"id\":1,\n\"type\":\"poll_interval\"}"),
            &b"event: poll_interval\ndata: {\"id\":1,\ndata: \"type\":\"poll_interval\"}\n\n"[..]
        );
        assert_eq!(
            event("not json"),
            &b"event: message\ndata: not json\n\n"[..]
        );
        assert_eq!(
            event(r#"{"type":"a\nb"}"#),
            &b"event: message\ndata: {\"type\":\"a\\nb\"}\n\n"[..]
        );
    }
}
