//! The push channel over server-sent events (`GET /api/agent/push`), for servers that push
//! only that way (current VectorFlow).
//!
//! One stream is one session of [`push::run`](crate::push::run): the same events, backoff and
//! re-polls as the WebSocket. Framing follows VectorFlow's agent exactly: a line starting `:`
//! is a comment, `event: ` and `data: ` need their space, a blank line dispatches, lines are at
//! most [`MAX_LINE`] bytes, and the message type is the JSON `type` (the event name is
//! ignored). SSE has no pings, so any bytes (`: keepalive` included) count as liveness.

use crate::config::Tuning;
use crate::push::End;
use crate::state::{Event, PushEvent};
use flotilla_shared::close_codes::Reconnect;
use flotilla_shared::frames::{PushFrame, PushMessage};
use flotilla_shared::secret::Secret;
use reqwest::StatusCode;
use std::time::Duration;
use tokio::sync::{mpsc::UnboundedSender, watch};
use tokio_util::sync::CancellationToken;

/// Longest line accepted; a longer one is skipped whole.
pub const MAX_LINE: usize = 256 * 1024;

/// The HTTP client of the stream: a connect timeout but no total one (the stream is endless).
pub fn client(tuning: &Tuning) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(tuning.connect_timeout)
        .user_agent(concat!("flotilla-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("HTTP client builds")
}

/// Opens the stream and reads it until it ends; reports `Connected` and `Disconnected`
/// around a stream that answered 200.
pub async fn session<T: Send + Sync>(
    http: &reqwest::Client,
    url: &str,
    token: &Secret,
    tuning: &Tuning,
    events: &UnboundedSender<Event>,
    target: &mut watch::Receiver<T>,
    cancel: &CancellationToken,
) -> End {
    let request = http
        .get(url)
        .bearer_auth(token.expose())
        .header("accept", "text/event-stream")
        .send();
    let response = tokio::select! {
        () = cancel.cancelled() => return End::Cancelled,
        r = tokio::time::timeout(tuning.connect_timeout, request) => r,
    };
    let mut response = match response {
        Err(_) => {
            tracing::warn!(url, timeout = ?tuning.connect_timeout, "push stream: no response headers in time");
            return End::Closed(Reconnect::WithBackoff);
        }
        Ok(Err(e)) => {
            tracing::warn!(url, error = %e, "push stream connect failed");
            return End::Closed(Reconnect::WithBackoff);
        }
        Ok(Ok(response)) => response,
    };
    if let Some(end) = refused(&response) {
        tracing::warn!(url, status = %response.status(), "push stream refused");
        return end;
    }
    tracing::debug!(url, "push stream open");
    let _ = events.send(Event::Push(PushEvent::Connected));
    let mut parser = Parser::default();
    let end = loop {
        let chunk = tokio::select! {
            () = cancel.cancelled() => break End::Cancelled,
            changed = target.changed() => {
                break if changed.is_ok() { End::UrlChanged } else { End::Cancelled };
            }
            chunk = tokio::time::timeout(tuning.sse_read_deadline, response.chunk()) => chunk,
        };
        match chunk {
            Err(_) => {
                tracing::warn!(deadline = ?tuning.sse_read_deadline, "nothing on the push stream within the read deadline; reconnecting");
                break End::Closed(Reconnect::WithBackoff);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "push stream failed");
                break End::Closed(Reconnect::WithBackoff);
            }
            Ok(Ok(None)) => {
                tracing::info!("push stream ended by the server");
                break End::Closed(Reconnect::WithBackoff);
            }
            Ok(Ok(Some(bytes))) => {
                for message in parser.feed(&bytes) {
                    tracing::debug!(?message, "push received");
                    let _ = events.send(Event::Push(PushEvent::Message(message)));
                }
            }
        }
    };
    let _ = events.send(Event::Push(PushEvent::Disconnected));
    end
}

/// What a non-200 answer means: 401 is a revoked or unknown node (stop), 429 and 503 may say
/// when to come back, anything else backs off.
fn refused(response: &reqwest::Response) -> Option<End> {
    let status = response.status();
    if status == StatusCode::OK {
        return None;
    }
    if status == StatusCode::UNAUTHORIZED {
        return Some(End::Closed(Reconnect::Never));
    }
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|_| matches!(status.as_u16(), 429 | 503));
    Some(
        retry_after.map_or(End::Closed(Reconnect::WithBackoff), |secs| {
            End::RetryAfter(Duration::from_secs(secs.min(300)))
        }),
    )
}

/// An incremental `text/event-stream` parser: bytes in, push messages out.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    /// The current line passed [`MAX_LINE`]: drop the rest of it.
    skipping: bool,
    data: Option<String>,
}

impl Parser {
    /// Feeds received bytes; returns the messages they completed.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<PushMessage> {
        let mut out = vec![];
        while !bytes.is_empty() {
            let (part, rest, complete) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if !self.skipping {
                self.line.extend_from_slice(part);
                if self.line.len() > MAX_LINE {
                    tracing::warn!(
                        max = MAX_LINE,
                        "skipping an over-long line on the push stream"
                    );
                    self.line = Vec::new();
                    self.skipping = true;
                }
            }
            if complete {
                if !std::mem::take(&mut self.skipping) {
                    let line = std::mem::take(&mut self.line);
                    out.extend(self.line_done(&line));
                }
                self.line.clear();
            }
        }
        out
    }

    fn line_done(&mut self, line: &[u8]) -> Option<PushMessage> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            let data = self.data.take()?;
            return match PushFrame::parse(&data) {
                Ok(frame) => Some(frame.message),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring a malformed push message");
                    None
                }
            };
        }
        if let Some(value) = line.strip_prefix(b"data: ") {
            let value = String::from_utf8_lossy(value);
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(&value);
                }
                None => self.data = Some(value.into_owned()),
            }
        }
        // Comments (`:`), `event: ` (the JSON carries the type) and other fields: nothing.
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::PushTarget;
    use flotilla_shared::frames::ConfigChangeReason;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A bare HTTP server: each request's path picks what is written back, one part every
    /// 50 ms; a stream then stays open and silent, a refusal is closed.
    async fn serve(respond: fn(&str) -> Vec<&'static [u8]>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = vec![0; 4096];
                    let n = socket.read(&mut request).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&request[..n]).into_owned();
                    let path = request.split(' ').nth(1).unwrap_or("").to_owned();
                    let parts = respond(&path);
                    let stream = parts[0] == OK;
                    for part in parts {
                        if socket.write_all(part).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    // A refusal closes the connection; a stream then stays open, silent.
                    if stream {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                });
            }
        });
        format!("http://{addr}")
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";

    fn tuning() -> Tuning {
        let ms = Duration::from_millis;
        Tuning {
            sse_read_deadline: ms(300),
            connect_timeout: ms(2000),
            push_backoff_base: ms(10),
            push_backoff_max: ms(50),
            ..Tuning::default()
        }
    }

    async fn one_session(url: &str) -> (End, Vec<Event>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (_target_tx, mut target) = watch::channel(());
        let end = tokio::time::timeout(
            Duration::from_secs(5),
            session(
                &client(&tuning()),
                url,
                &Secret::new("vf_node_t"),
                &tuning(),
                &tx,
                &mut target,
                &CancellationToken::new(),
            ),
        )
        .await
        .expect("the session ends");
        let mut events = vec![];
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        (end, events)
    }

    #[tokio::test]
    async fn a_401_stops_the_channel_and_other_refusals_back_off() {
        let base = serve(|path| match path {
            "/401" => vec![b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n"],
            "/503" => vec![b"HTTP/1.1 503 Busy\r\nretry-after: 2\r\ncontent-length: 0\r\n\r\n"],
            _ => vec![b"HTTP/1.1 204 No Content\r\n\r\n"],
        })
        .await;
        let (end, events) = one_session(&format!("{base}/401")).await;
        assert_eq!(end, End::Closed(Reconnect::Never));
        assert!(events.is_empty(), "never connected: {events:?}");
        let (end, _) = one_session(&format!("{base}/503")).await;
        assert_eq!(end, End::RetryAfter(Duration::from_secs(2)));
        let (end, _) = one_session(&format!("{base}/204")).await;
        assert_eq!(end, End::Closed(Reconnect::WithBackoff));
    }

    /// Keepalive comments hold a quiet stream open past the read deadline; silence ends it.
    #[tokio::test]
    async fn keepalives_are_liveness_and_silence_ends_the_stream() {
        let base = serve(|_| {
            let mut parts = vec![OK, b": connected\n\n"];
            parts.extend([&b": keepalive\n\n"[..]; 10]);
            parts.push(b"event: tap_stop\ndata: {\"type\":\"tap_stop\",\"requestId\":\"x\"}\n\n");
            parts
        })
        .await;
        let started = std::time::Instant::now();
        let (end, events) = one_session(&format!("{base}/api/agent/push")).await;
        assert_eq!(end, End::Closed(Reconnect::WithBackoff));
        let lasted = started.elapsed();
        assert!(lasted >= Duration::from_millis(800), "{lasted:?}");
        let kinds: Vec<String> = events
            .iter()
            .map(|e| match e {
                Event::Push(PushEvent::Message(m)) => format!("{m:?}"),
                Event::Push(p) => format!("{p:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            ["Connected", "TapStop { request_id: \"x\" }", "Disconnected"]
        );
    }

    /// A `pushUrl` that keeps failing fast gives way to the agent's own server.
    #[tokio::test]
    async fn three_quick_failures_move_to_the_fallback() {
        static FAILED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let base = serve(|path| match path {
            "/api/agent/push" => vec![OK, b": connected\n\n"],
            _ => {
                FAILED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                vec![b"HTTP/1.1 500 Oops\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"]
            }
        })
        .await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (_target_tx, target) = watch::channel(PushTarget::Sse {
            url: format!("{base}/elsewhere/push"),
            fallback: format!("{base}/api/agent/push"),
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(crate::push::run(
            target,
            Secret::new("vf_node_t"),
            tuning(),
            tx,
            cancel.clone(),
        ));
        let event = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("connected to the fallback");
        assert!(
            matches!(event, Some(Event::Push(PushEvent::Connected))),
            "{event:?}"
        );
        assert_eq!(FAILED.load(std::sync::atomic::Ordering::SeqCst), 3);
        cancel.cancel();
        task.await.unwrap();
    }

    #[test]
    fn vectorflow_framing_in_any_chunking() {
        let stream = b": connected\n\nevent: config_changed\ndata: {\"type\":\"config_changed\",\"reason\":\"deploy\"}\n\n: keepalive\n\nevent: tap_stop\r\ndata: {\"type\":\"tap_stop\",\"requestId\":\"clx1\"}\r\n\r\n";
        let expected = vec![
            PushMessage::ConfigChanged {
                pipeline_id: None,
                reason: ConfigChangeReason::Deploy,
            },
            PushMessage::TapStop {
                request_id: "clx1".into(),
            },
        ];
        assert_eq!(Parser::default().feed(stream), expected);
        for size in [1, 2, 7, 30] {
            let mut parser = Parser::default();
            let got: Vec<_> = stream.chunks(size).flat_map(|c| parser.feed(c)).collect();
            assert_eq!(got, expected, "chunks of {size}");
        }
    }

    #[test]
    fn fields_need_their_space_and_the_type_comes_from_the_json() {
        let mut p = Parser::default();
        // `data:` without the space is not data; the event name is ignored.
        assert!(p
            .feed(b"data:{\"type\":\"tap_stop\",\"requestId\":\"a\"}\n\n")
            .is_empty());
        assert_eq!(
            p.feed(b"event: something_else\ndata: {\"type\":\"tap_stop\",\"requestId\":\"b\"}\n\n"),
            vec![PushMessage::TapStop {
                request_id: "b".into()
            }]
        );
        // Unknown types and malformed JSON do not break the stream.
        assert_eq!(
            p.feed(b"data: {\"type\":\"future\"}\n\ndata: {nope\n\n"),
            vec![PushMessage::Unknown]
        );
    }

    #[test]
    fn an_over_long_line_is_skipped_and_the_stream_goes_on() {
        let mut p = Parser::default();
        let mut long = b"data: ".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        for chunk in long.chunks(4096) {
            assert!(p.feed(chunk).is_empty());
        }
        assert!(p.feed(b"\n\n").is_empty());
        assert_eq!(
            p.feed(b"data: {\"type\":\"tap_stop\",\"requestId\":\"c\"}\n\n"),
            vec![PushMessage::TapStop {
                request_id: "c".into()
            }]
        );
    }
}
