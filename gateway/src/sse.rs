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
//! A stream opened as the first request of a connection (always, behind nginx, which opens a
//! connection per proxied request) is served without hyper ([`raw_route`]): the gateway reads
//! the request head itself and the session writes the events straight to the socket, with a
//! close-delimited body, so an idle stream costs what an idle WebSocket does. A stream
//! requested on a kept-alive connection goes through the router ([`open`]): the session writes
//! into a one-chunk slot that hyper's response body reads. Either way a chunk the connection
//! cannot take yet holds the session's writes back, so its outbox fills and a stream that stops
//! reading is closed as too slow, exactly as a WebSocket is; when the session ends the stream
//! ends, and when the connection goes away the session ends.

use crate::handshake;
use crate::state::GatewayState;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use flotilla_shared::http_server::RawRoute;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

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
    let node = match handshake::admit(&state, peer, &headers).await {
        Ok(node) => node,
        Err(refusal) => return refusal,
    };
    let (mut link, body) = channel();
    link.send(Bytes::from_static(CONNECTED));
    let sessions = state.sessions.clone();
    tokio::spawn(sessions.track_future(crate::session::run(
        state,
        node,
        crate::session::Link::Sse(link),
    )));
    (StatusCode::OK, stream_headers(), Body::new(body)).into_response()
}

/// The response headers of a stream.
fn stream_headers() -> [(header::HeaderName, HeaderValue); 3] {
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
    ]
}

/// The request line prefix of the connections served without hyper.
const RAW_PREFIX: &[u8] = b"GET /api/agent/push";
/// Longest request head read for a stream.
const MAX_HEAD: usize = 16 * 1024;

/// Hands connections whose first request is a stream open to [`serve_raw`].
pub(crate) fn raw_route(state: &GatewayState) -> RawRoute {
    let state = state.clone();
    RawRoute {
        prefix: RAW_PREFIX,
        handler: Arc::new(move |tcp, peer| Box::pin(serve_raw(state.clone(), tcp, peer))),
    }
}

/// Serves a connection whose first request opens a stream: the head is read and checked here,
/// and refusals and the stream are written straight to the socket.
async fn serve_raw(state: GatewayState, mut tcp: TcpStream, peer: SocketAddr) {
    let limit = std::time::Duration::from_millis(state.settings.header_read_timeout_ms);
    let head = match tokio::time::timeout(limit, read_head(&mut tcp)).await {
        Ok(Ok(head)) => head,
        Ok(Err(status)) => return write_response(&mut tcp, status.into_response()).await,
        Err(_) => return,
    };
    let node = match handshake::admit(&state, peer, &head).await {
        Ok(node) => node,
        Err(refusal) => return write_response(&mut tcp, refusal).await,
    };
    let headers = stream_headers();
    let mut response = raw_head(StatusCode::OK, headers.iter().map(|(n, v)| (n, v)));
    response.push_str(std::str::from_utf8(CONNECTED).expect("ASCII"));
    if tcp.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let link = SseLink::Raw {
        tcp,
        pending: Bytes::new(),
    };
    // A task of its own, like a WebSocket's, so nothing of this request's reading stays
    // allocated for the stream's life.
    let sessions = state.sessions.clone();
    let session = crate::session::run(state, node, crate::session::Link::Sse(link));
    tokio::spawn(sessions.track_future(session));
}

/// Reads a request head and checks it is `GET /api/agent/push`; its headers, or the status
/// to refuse it with.
async fn read_head(tcp: &mut TcpStream) -> Result<HeaderMap, StatusCode> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = tcp
            .read(&mut chunk)
            .await
            .map_err(|_| StatusCode::BAD_REQUEST)?;
        if n == 0 {
            return Err(StatusCode::BAD_REQUEST);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut fields);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => return checked(&request),
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            }
            Err(_) => return Err(StatusCode::BAD_REQUEST),
        }
    }
}

/// The headers of a parsed `GET /api/agent/push` head (404 for another path, 405 for another
/// method, as the router would answer).
fn checked(request: &httparse::Request<'_, '_>) -> Result<HeaderMap, StatusCode> {
    let path = request.path.unwrap_or_default();
    if path.split('?').next() != Some("/api/agent/push") {
        return Err(StatusCode::NOT_FOUND);
    }
    if request.method != Some("GET") {
        return Err(StatusCode::METHOD_NOT_ALLOWED);
    }
    let mut headers = HeaderMap::new();
    for field in request.headers.iter() {
        let name = header::HeaderName::from_bytes(field.name.as_bytes());
        let value = HeaderValue::from_bytes(field.value);
        if let (Ok(name), Ok(value)) = (name, value) {
            headers.append(name, value);
        }
    }
    Ok(headers)
}

/// Writes a whole response (a refusal) and closes the connection.
async fn write_response(tcp: &mut TcpStream, response: Response) {
    let (parts, body) = response.into_parts();
    let body = match http_body_util::BodyExt::collect(body).await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let length = HeaderValue::from(body.len());
    let headers = parts
        .headers
        .iter()
        .chain([(&header::CONTENT_LENGTH, &length)]);
    let head = raw_head(parts.status, headers);
    let _ = tcp.write_all(head.as_bytes()).await;
    let _ = tcp.write_all(&body).await;
    let _ = tcp.shutdown().await;
}

/// A response head for a connection served without hyper: the status line,
/// `connection: close` (the body, if any, ends with the connection) and `headers`.
fn raw_head<'a>(
    status: StatusCode,
    headers: impl Iterator<Item = (&'a header::HeaderName, &'a HeaderValue)>,
) -> String {
    let reason = status.canonical_reason().unwrap_or("");
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nconnection: close\r\n",
        status.as_u16()
    );
    for (name, value) in headers {
        if let Ok(value) = value.to_str() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    head
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
pub(crate) struct Slot {
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
    (SseLink::Body(slot.clone()), SseBody(slot))
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(w) = waker.take() {
        w.wake();
    }
}

/// The session's end of a stream.
pub(crate) enum SseLink {
    /// The socket itself (a stream opened as a connection's first request).
    Raw {
        /// The agent's connection.
        tcp: TcpStream,
        /// What is still to be written of the last chunk.
        pending: Bytes,
    },
    /// The slot hyper's response body reads.
    Body(Arc<Mutex<Slot>>),
}

impl SseLink {
    /// Ready to take a chunk (a raw stream writes what it holds first); `Err` once the
    /// connection is gone.
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        match self {
            SseLink::Raw { tcp, pending } => {
                while !pending.is_empty() {
                    match Pin::new(&mut *tcp).poll_write(cx, pending) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                        Poll::Ready(Ok(n)) => bytes::Buf::advance(pending, n),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Poll::Ready(Ok(()))
            }
            SseLink::Body(slot) => {
                let mut slot = slot.lock().unwrap();
                if slot.gone {
                    Poll::Ready(Err(()))
                } else if slot.chunk.is_none() {
                    Poll::Ready(Ok(()))
                } else {
                    slot.session = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }

    /// Ready once the connection is gone (anything the agent sends is read and dropped).
    pub(crate) fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            SseLink::Raw { tcp, .. } => {
                let mut scratch = [0u8; 64];
                loop {
                    let mut read = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut *tcp).poll_read(cx, &mut read) {
                        Poll::Ready(Ok(())) if !read.filled().is_empty() => continue,
                        Poll::Ready(_) => return Poll::Ready(()),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
            SseLink::Body(slot) => {
                let mut slot = slot.lock().unwrap();
                if slot.gone {
                    Poll::Ready(())
                } else {
                    slot.session = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }

    /// Takes a chunk; call only when [`poll_ready`](Self::poll_ready) said so (a raw stream
    /// writes it on the next `poll_ready`).
    pub(crate) fn send(&mut self, chunk: Bytes) {
        match self {
            SseLink::Raw { pending, .. } => *pending = chunk,
            SseLink::Body(slot) => {
                let mut slot = slot.lock().unwrap();
                slot.chunk = Some(chunk);
                wake(&mut slot.body);
            }
        }
    }

    /// Ends the stream after what was handed over (a raw one ends when it is dropped).
    pub(crate) fn end(&mut self) {
        if let SseLink::Body(slot) = self {
            let mut slot = slot.lock().unwrap();
            slot.ended = true;
            wake(&mut slot.body);
        }
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
