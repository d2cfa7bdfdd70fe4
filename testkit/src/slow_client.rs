//! Clients that start a request and then stall, to check servers cut them off.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What a server did with a stalled request.
#[derive(Debug)]
pub struct Stalled {
    /// Everything the server sent before it closed the connection.
    pub answer: String,
    /// Time from the last byte sent to the close.
    pub closed_after: Duration,
}

impl Stalled {
    /// Asserts the server closed the connection because of its `timeout`: not before it, and
    /// without answering anything but 408.
    pub fn assert_cut_off_by(&self, timeout: Duration) {
        assert!(
            self.closed_after >= timeout,
            "cut off by the timeout, not before: {self:?}"
        );
        assert!(
            self.answer.is_empty() || self.answer.starts_with("HTTP/1.1 408"),
            "nothing but 408 was answered: {self:?}"
        );
    }
}

/// Connects to `addr`, sends `partial` (an unfinished request) and nothing more, and waits for
/// the server to close the connection; panics if it is still open after [`crate::STEP`].
pub async fn send_and_stall(addr: SocketAddr, partial: &[u8]) -> Stalled {
    let mut tcp = crate::within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    tcp.write_all(partial)
        .await
        .expect("send the partial request");
    let sent = Instant::now();
    let mut answer = Vec::new();
    // A reset counts as closed, like an orderly end of stream.
    let _ = crate::within(
        "the server to close a stalled request",
        tcp.read_to_end(&mut answer),
    )
    .await;
    Stalled {
        answer: String::from_utf8_lossy(&answer).into_owned(),
        closed_after: sent.elapsed(),
    }
}
