//! A push-channel client over Server-Sent Events that reads a stream exactly as a current
//! VectorFlow agent does (`../shared/DESIGN.md`, "Two agent generations"): a line starting
//! `:` is a comment; `event: ` and `data: ` need the space after the colon; a blank line
//! dispatches; the message type is the JSON `type` field, the event name is ignored. Anything
//! but a 200 is a failure.

use std::time::Duration;

/// The stream URL a current agent uses: the config's `pushUrl` only when its scheme and
/// host:port equal those of the agent's own server URL (`VF_URL`), else `VF_URL` +
/// `/api/agent/push`.
pub fn resolve_push_url(server_url: &str, push_url: Option<&str>) -> String {
    let origin = |url: &str| -> Option<(String, String)> {
        let url = reqwest::Url::parse(url).ok()?;
        let port = url.port_or_known_default()?;
        Some((
            url.scheme().to_owned(),
            format!("{}:{port}", url.host_str()?),
        ))
    };
    match push_url {
        Some(push) if origin(push).is_some() && origin(push) == origin(server_url) => {
            push.to_owned()
        }
        _ => format!("{}/api/agent/push", server_url.trim_end_matches('/')),
    }
}

/// What a stream delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A comment line, without its leading `:` (`" connected"`, `" keepalive"`).
    Comment(String),
    /// A dispatched message: its JSON `type` (`None` when the data is not such JSON), the
    /// event name it came with, and the data.
    Message {
        /// The JSON `type` field: what the agent dispatches on.
        kind: Option<String>,
        /// The `event: ` line's value, if any.
        event: Option<String>,
        /// The `data: ` lines, joined with `\n`.
        data: String,
    },
}

/// Why a stream could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The server answered with this status instead of 200.
    Status(reqwest::StatusCode, reqwest::header::HeaderMap),
    /// The request failed.
    Request(reqwest::Error),
}

/// An open stream.
pub struct SseClient {
    response: reqwest::Response,
    /// Response headers, for checks.
    pub headers: reqwest::header::HeaderMap,
    pending: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    /// Every byte received, for byte-exact checks.
    pub raw: Vec<u8>,
}

/// The agent waits this long for response headers.
const HEADERS_TIMEOUT: Duration = Duration::from_secs(15);
/// The agent's longest line.
const MAX_LINE: usize = 256 * 1024;

impl SseClient {
    /// Opens `url` (`…/api/agent/push`) with a node token, as the agent does.
    pub async fn open(url: &str, token: &str) -> Result<Self, OpenError> {
        Self::send(reqwest::Client::new().get(url).bearer_auth(token)).await
    }

    /// Opens a stream with a request of the caller's (a cookie instead of a bearer token).
    pub async fn send(request: reqwest::RequestBuilder) -> Result<Self, OpenError> {
        let request = request.header("accept", "text/event-stream").send();
        let response = tokio::time::timeout(HEADERS_TIMEOUT, request)
            .await
            .unwrap_or_else(|_| panic!("no response headers within 15 s"))
            .map_err(OpenError::Request)?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(OpenError::Status(
                response.status(),
                response.headers().clone(),
            ));
        }
        Ok(Self {
            headers: response.headers().clone(),
            response,
            pending: Vec::new(),
            event: None,
            data: Vec::new(),
            raw: Vec::new(),
        })
    }

    /// The next comment or message; `None` when the stream ended. Waits at most
    /// [`crate::STEP`].
    pub async fn next_item(&mut self) -> Option<Item> {
        crate::within("an SSE item", self.read_item()).await
    }

    /// The next message's JSON data, skipping comments; panics when the stream ends.
    pub async fn next_message(&mut self) -> String {
        loop {
            match self.next_item().await {
                Some(Item::Message { data, .. }) => return data,
                Some(Item::Comment(_)) => continue,
                None => panic!("the stream ended"),
            }
        }
    }

    /// The data of the next message sent as `event: <event>`, as JSON, skipping everything
    /// else (an operator's stream names its events); panics when the stream ends first.
    pub async fn next_event(&mut self, event: &str) -> serde_json::Value {
        loop {
            match self.next_item().await {
                Some(Item::Message {
                    event: Some(e),
                    data,
                    ..
                }) if e == event => return serde_json::from_str(&data).expect("JSON data"),
                Some(_) => {}
                None => panic!("the stream ended before `{event}`"),
            }
        }
    }

    /// Whether the stream ends within `limit` (comments before the end are skipped; a message
    /// is a failure).
    pub async fn ends_within(&mut self, limit: Duration) -> bool {
        let ended = async {
            loop {
                match self.read_item().await {
                    None => return true,
                    Some(Item::Comment(_)) => continue,
                    Some(message) => panic!("a message instead of the end: {message:?}"),
                }
            }
        };
        tokio::time::timeout(limit, ended).await.unwrap_or(false)
    }

    async fn read_item(&mut self) -> Option<Item> {
        loop {
            while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                let line = String::from_utf8(line).expect("UTF-8 lines");
                if let Some(item) = self.take_line(&line) {
                    return Some(item);
                }
            }
            assert!(self.pending.len() <= MAX_LINE, "a line over 256 KiB");
            match self.response.chunk().await {
                Ok(Some(chunk)) => {
                    self.raw.extend_from_slice(&chunk);
                    self.pending.extend_from_slice(&chunk);
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }

    fn take_line(&mut self, line: &str) -> Option<Item> {
        if line.is_empty() {
            if self.data.is_empty() {
                self.event = None;
                return None;
            }
            let data = std::mem::take(&mut self.data).join("\n");
            let kind = serde_json::from_str::<serde_json::Value>(&data)
                .ok()
                .and_then(|v| v.get("type")?.as_str().map(str::to_owned));
            return Some(Item::Message {
                kind,
                event: self.event.take(),
                data,
            });
        }
        if let Some(comment) = line.strip_prefix(':') {
            return Some(Item::Comment(comment.to_owned()));
        }
        if let Some(event) = line.strip_prefix("event: ") {
            self.event = Some(event.to_owned());
        } else if let Some(data) = line.strip_prefix("data: ") {
            self.data.push(data.to_owned());
        }
        None
    }
}
