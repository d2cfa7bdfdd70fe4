//! One agent connection, served by one task: queued frames out, keepalive, closes on request.
//!
//! The connection is a WebSocket or an SSE stream ([`Link`]); everything but the framing is
//! the same for both. The whole session is a single hand-written poll over the connection, its
//! outbox and one timer, so an idle connection costs one task and no extra buffers or channels.

use crate::keepalive::{Due, Keepalive};
use crate::metrics::Counters;
use crate::outbox::{Next, Outbox};
use crate::registry::Conn;
use crate::sse::SseLink;
use crate::state::GatewayState;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use flotilla_shared::auth::node::AuthedNode;
use flotilla_shared::close_codes::Close;
use flotilla_shared::presence::Transport;
use futures_util::{SinkExt, StreamExt};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tracing::Instrument;
use uuid::Uuid;

/// How long a close handshake may take before the socket is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// An agent's push connection: only the framing differs between the two.
pub(crate) enum Link {
    /// An upgraded WebSocket (the older agents). Boxed, so that a stream's session is not
    /// the size of a socket's.
    Ws(Box<WebSocket>),
    /// A Server-Sent Events stream (current agents, [`crate::sse`]).
    Sse(SseLink),
}

impl Link {
    /// The transport's name, as presence and the fleet API show it.
    fn transport(&self) -> Transport {
        match self {
            Link::Ws(_) => Transport::Websocket,
            Link::Sse(_) => Transport::Sse,
        }
    }
}

/// Serves an agent connection of `node` until it closes.
///
/// Not an `async fn`: the socket moves into its [`Session`] here, once, and the `async move`
/// block captures it in place; an `async fn` would also store its arguments, and an idle
/// socket's memory is mostly this future.
pub(crate) fn run(
    state: GatewayState,
    node: AuthedNode,
    link: Link,
) -> impl Future<Output = ()> + Send {
    let node_id = node.node_id;
    let outbox = Arc::new(Outbox::new(state.settings.outbound_queue));
    let conn = Conn {
        id: Uuid::new_v4(),
        since_ms: chrono::Utc::now().timestamp_millis(),
        transport: link.transport(),
        outbox: outbox.clone(),
    };
    // Debug level: an enabled span is allocated for the socket's whole life. Events that matter
    // at info level and above carry the node id themselves.
    let span = tracing::debug_span!("session", node_id = %node_id, conn_id = %conn.id);
    let mut session = Session::new(state.clone(), link, outbox);
    async move {
        if let Some(older) = state.registry.insert(node_id, conn.clone()) {
            older.outbox.close(Close::Superseded);
        }
        // After registering, so a drain either saw this socket or is seen here.
        if state.draining.is_cancelled() {
            conn.outbox.close(Close::Draining);
        }
        Counters::inc(&state.counters.connects);
        // Boxed: the Redis round trips are large but short-lived futures; an idle socket
        // keeps only the session.
        Box::pin(crate::presence::announce(&state, node_id, &conn)).await;
        tracing::debug!("socket open");

        let end = session.serve().await;
        count_close(&state.counters, end);
        tracing::debug!(?end, "socket closed");

        // Presence goes as soon as the socket is done with, not after the agent has (or has
        // not) answered the close frame.
        let gone = async {
            if state.registry.remove(node_id, conn.id) {
                state.subscriptions.sync(node_id);
            }
            crate::presence::withdraw(&state, node_id, &conn).await;
        };
        // Boxed, like the Redis calls: only a closing socket needs them.
        match end {
            End::Closed(close) => {
                futures_util::future::join(Box::pin(session.close(close)), Box::pin(gone)).await;
            }
            End::PeerGone => Box::pin(gone).await,
        }
    }
    .instrument(span)
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The gateway closed it so.
    Closed(Close),
    /// The agent closed it or the connection dropped.
    PeerGone,
}

fn count_close(counters: &Counters, end: End) {
    Counters::inc(&counters.disconnects);
    if let End::Closed(close) = end {
        counters.closed(close).inc();
    }
}

struct Session {
    link: Link,
    state: GatewayState,
    outbox: Arc<Outbox>,
    keepalive: Keepalive,
    timer: Pin<Box<Sleep>>,
    ping_due: bool,
    pong_due: bool,
    unflushed: bool,
}

impl Session {
    fn new(state: GatewayState, link: Link, outbox: Arc<Outbox>) -> Self {
        let keepalive = match link {
            Link::Ws(_) => Keepalive::websocket(&state.settings, Instant::now()),
            Link::Sse(_) => Keepalive::sse(&state.settings, Instant::now()),
        };
        let timer = Box::pin(tokio::time::sleep_until(keepalive.deadline()));
        Self {
            link,
            state,
            outbox,
            keepalive,
            timer,
            ping_due: false,
            pong_due: false,
            unflushed: false,
        }
    }

    /// Serves the socket until the gateway decides to close it or the agent is gone.
    async fn serve(&mut self) -> End {
        poll_fn(|cx| self.poll(cx)).await
    }

    /// Sends a close frame and waits briefly for the agent's; ends an SSE stream (it has no
    /// close codes: the agent reconnects with its backoff).
    async fn close(&mut self, close: Close) {
        let ws = match &mut self.link {
            Link::Ws(ws) => ws,
            Link::Sse(sse) => return sse.end(),
        };
        let frame = CloseFrame {
            code: close.code(),
            reason: Utf8Bytes::from_static(close.reason()),
        };
        let handshake = async {
            if ws.send(Message::Close(Some(frame))).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, handshake).await;
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        if let Poll::Ready(end) = self.poll_timer(cx) {
            return Poll::Ready(end);
        }
        if let Poll::Ready(end) = self.poll_read(cx) {
            return Poll::Ready(end);
        }
        self.poll_write(cx)
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            while let Some(due) = self.keepalive.due(now) {
                match due {
                    Due::Timeout => return Poll::Ready(End::Closed(Close::KeepaliveTimeout)),
                    Due::Ping => self.ping_due = true,
                    Due::Pong => self.pong_due = true,
                }
            }
            self.timer.as_mut().reset(self.keepalive.deadline());
        }
        Poll::Pending
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        let ws = match &mut self.link {
            Link::Ws(ws) => ws,
            // An SSE agent sends nothing: the only news is that the connection went away.
            Link::Sse(sse) => return sse.poll_gone(cx).map(|()| End::PeerGone),
        };
        loop {
            match ws.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(Message::Binary(_)))) => {
                    return Poll::Ready(End::Closed(Close::Policy))
                }
                // Anything else is a sign of life; pings are answered by the socket itself, and a
                // close is answered there too, after which the stream ends.
                Poll::Ready(Some(Ok(_))) => self.keepalive.heard(Instant::now()),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(read_error(&e)),
                Poll::Ready(None) => return Poll::Ready(End::PeerGone),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        loop {
            let writable = match self.link.poll_ready(cx) {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(())) => return Poll::Ready(End::PeerGone),
                Poll::Pending => false,
            };
            let out = if writable && self.ping_due {
                self.ping_due = false;
                Out::Ping
            } else if writable && self.pong_due {
                self.pong_due = false;
                self.keepalive.sent_data(Instant::now());
                Out::Pong
            } else {
                match self.outbox.poll_next(cx, writable) {
                    Poll::Ready(Next::Close(close)) => return Poll::Ready(End::Closed(close)),
                    Poll::Ready(Next::Frame(frame)) => {
                        Counters::inc(&self.state.counters.pushes_delivered);
                        self.keepalive.sent_data(Instant::now());
                        Out::Frame(frame)
                    }
                    Poll::Pending => break,
                }
            };
            if self.link.start_send(out).is_err() {
                return Poll::Ready(End::PeerGone);
            }
            self.unflushed = true;
        }
        if self.unflushed {
            match self.link.poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(())) => return Poll::Ready(End::PeerGone),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }
}

/// What a session writes.
enum Out {
    Ping,
    Pong,
    Frame(Utf8Bytes),
}

impl Link {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        match self {
            Link::Ws(ws) => ws.poll_ready_unpin(cx).map_err(drop),
            Link::Sse(sse) => sse.poll_ready(cx),
        }
    }

    fn start_send(&mut self, out: Out) -> Result<(), ()> {
        match self {
            Link::Ws(ws) => ws
                .start_send_unpin(match out {
                    Out::Ping => Message::Ping(Bytes::new()),
                    Out::Pong => Message::Pong(Bytes::new()),
                    Out::Frame(frame) => Message::Text(frame),
                })
                .map_err(drop),
            Link::Sse(sse) => {
                sse.send(match out {
                    // SSE has one keepalive, a comment; its schedule never makes a pong due.
                    Out::Ping | Out::Pong => Bytes::from_static(crate::sse::KEEPALIVE),
                    Out::Frame(frame) => crate::sse::event(frame.as_str()),
                });
                Ok(())
            }
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        match self {
            Link::Ws(ws) => ws.poll_flush_unpin(cx).map_err(drop),
            // Flushed once the socket (or hyper's response body) has taken the chunk.
            Link::Sse(sse) => sse.poll_ready(cx),
        }
    }
}

/// An oversized message is answered with [`Close::TooLarge`]; other errors end the session.
fn read_error(error: &axum::Error) -> End {
    use std::error::Error as _;
    use tokio_tungstenite::tungstenite::Error as WsError;
    match error.source().and_then(|e| e.downcast_ref::<WsError>()) {
        Some(WsError::Capacity(_)) => End::Closed(Close::TooLarge),
        _ => End::PeerGone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the value a function returns, without calling it.
    fn returned_size<A, B, C, R>(_: impl FnOnce(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn an_idle_session_is_small() {
        let size = returned_size(run);
        println!("session future: {size} bytes");
        assert!(size <= 768, "session future is {size} bytes");
    }
}
