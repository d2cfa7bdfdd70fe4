//! A simulated current agent's push channel: `GET /api/agent/push` over a plain TCP stream,
//! read as the agent reads it (lines; `data: ` lines carry the frames; `:` lines are
//! comments). Kept minimal so that one child process holds thousands of streams.
//!
//! Failures are reported as tungstenite errors, so the agents' retry and backoff logic is the
//! same for both transports: a refusal is `Error::Http` with its status and `Retry-After`.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::http::{header, StatusCode};
use tokio_tungstenite::tungstenite::Error as WsError;

/// Read buffer of a stream: events are small.
const READ_BUFFER: usize = 1024;
/// Longest response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// An open stream.
pub struct SseStream {
    reader: BufReader<TcpStream>,
    line: String,
}

impl SseStream {
    /// Sends the request on `stream` and reads the response head; a status other than 200 is
    /// an `Error::Http` carrying it (and `Retry-After`).
    pub async fn open(mut stream: TcpStream, host: &str, token: &str) -> Result<Self, WsError> {
        let request = format!(
            "GET /api/agent/push HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut reader = BufReader::with_capacity(READ_BUFFER, stream);
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            if reader.read_line(&mut head).await? == 0 || head.len() > MAX_HEAD {
                return Err(WsError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| WsError::Io(std::io::ErrorKind::InvalidData.into()))?;
        if status != 200 {
            let mut refusal = Response::new(None);
            *refusal.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            let retry_after = head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("retry-after")
                    .then(|| value.trim().to_owned())
            });
            if let Some(value) = retry_after.and_then(|v| v.parse().ok()) {
                refusal.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return Err(WsError::Http(Box::new(refusal)));
        }
        Ok(Self {
            reader,
            line: String::new(),
        })
    }

    /// The next frame (a `data: ` line's payload); `None` when the stream ended. The body is
    /// chunked: the gateway sends each event as one chunk, so a chunk-size line is a line of
    /// its own, and `0` is the last chunk.
    pub async fn next_frame(&mut self) -> Option<&str> {
        loop {
            self.line.clear();
            match self.reader.read_line(&mut self.line).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let line = self.line.trim_end_matches(['\r', '\n']);
            if line == "0" {
                return None;
            }
            if line.starts_with("data: ") {
                return Some(&self.line.trim_end_matches(['\r', '\n'])["data: ".len()..]);
            }
        }
    }

    /// Closes the connection, as an agent that stops.
    pub async fn close(self) {
        let mut stream = self.reader.into_inner();
        let _ = stream.shutdown().await;
        let mut rest = [0u8; 256];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}
