//! Pipeline logs: every line a `vector` child writes (stdout and stderr) goes into one bounded
//! buffer, which is shipped to `POST /api/agent/logs` every couple of seconds.
//!
//! Memory stays bounded whatever Vector writes: lines are cut at [`MAX_LINE`] bytes and the
//! buffer drops its oldest lines beyond [`CAPACITY`]. A batch the api does not accept is
//! dropped (logged), as current VectorFlow agents do: logs are best effort.

use crate::client::ApiClient;
use flotilla_shared::protocol::LogBatch;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio_util::sync::CancellationToken;

/// Lines buffered at most; the oldest go first.
pub const CAPACITY: usize = 10_000;
/// Lines in one `POST /api/agent/logs` at most.
pub const BATCH: usize = 500;
/// Bytes kept of one line.
pub const MAX_LINE: usize = 8 * 1024;

/// The shared buffer of captured lines; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Logs {
    inner: Arc<Mutex<Buffer>>,
}

#[derive(Debug, Default)]
struct Buffer {
    /// `(pipeline id, line)`, oldest first.
    lines: VecDeque<(Arc<str>, String)>,
    dropped: u64,
}

impl Logs {
    /// Appends a line, dropping the oldest when full.
    pub fn push(&self, pipeline_id: &Arc<str>, line: String) {
        let mut buffer = self.inner.lock().expect("log buffer lock");
        if buffer.lines.len() >= CAPACITY {
            buffer.lines.pop_front();
            buffer.dropped += 1;
        }
        buffer.lines.push_back((pipeline_id.clone(), line));
    }

    /// Takes up to `max` of the oldest lines, grouped by pipeline (order kept within each).
    pub fn take(&self, max: usize) -> Vec<LogBatch> {
        let taken: Vec<(Arc<str>, String)> = {
            let mut buffer = self.inner.lock().expect("log buffer lock");
            let n = buffer.lines.len().min(max);
            buffer.lines.drain(..n).collect()
        };
        let mut batches: Vec<LogBatch> = vec![];
        for (pipeline_id, line) in taken {
            match batches.iter_mut().find(|b| *b.pipeline_id == *pipeline_id) {
                Some(batch) => batch.lines.push(line),
                None => batches.push(LogBatch {
                    pipeline_id: pipeline_id.to_string(),
                    lines: vec![line],
                }),
            }
        }
        batches
    }

    /// Lines dropped so far because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.inner.lock().expect("log buffer lock").dropped
    }

    /// Reads `output` (a child's stdout or stderr) line by line into the buffer until it ends.
    pub fn capture(&self, pipeline_id: &str, output: impl AsyncRead + Unpin + Send + 'static) {
        let logs = self.clone();
        let pipeline_id: Arc<str> = pipeline_id.into();
        tokio::spawn(async move {
            let mut reader = BufReader::new(output);
            let mut buf = Vec::new();
            while let Ok(true) = next_line(&mut reader, &mut buf).await {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                tracing::trace!(pipeline = %pipeline_id, line, "vector");
                logs.push(&pipeline_id, line.to_owned());
            }
        });
    }
}

/// Reads one line into `buf` (without growing it past [`MAX_LINE`]: the rest of a longer
/// line is skipped); `false` at the end of the stream.
async fn next_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    buf.clear();
    let mut read_any = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(read_any);
        }
        read_any = true;
        let (used, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        let room = MAX_LINE.saturating_sub(buf.len());
        buf.extend_from_slice(&available[..used.min(room)]);
        reader.consume(used);
        if done {
            return Ok(true);
        }
    }
}

/// Ships the buffer every `every` until `cancel`: batches of at most [`BATCH`] lines; a batch
/// the api refuses is logged and dropped, and the rest waits for the next round.
pub async fn ship(client: ApiClient, logs: Logs, every: Duration, cancel: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        loop {
            let batches = logs.take(BATCH);
            if batches.is_empty() {
                break;
            }
            let lines: usize = batches.iter().map(|b| b.lines.len()).sum();
            if let Err(e) = client.logs(&batches).await {
                tracing::error!(error = %e, lines, "shipping pipeline logs failed; dropping them");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_buffer_drops_the_oldest_and_batches_group_by_pipeline() {
        let logs = Logs::default();
        let (a, b): (Arc<str>, Arc<str>) = ("clxa".into(), "clxb".into());
        for i in 0..CAPACITY + 5 {
            logs.push(if i % 2 == 0 { &a } else { &b }, format!("line {i}"));
        }
        assert_eq!(logs.dropped(), 5);
        let batches = logs.take(BATCH);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].pipeline_id, "clxb");
        assert_eq!(batches[0].lines[0], "line 5");
        assert_eq!(batches[1].lines[0], "line 6");
        let total: usize = batches.iter().map(|b| b.lines.len()).sum();
        assert_eq!(total, BATCH);
        let mut rest = 0;
        loop {
            let batches = logs.take(BATCH);
            if batches.is_empty() {
                break;
            }
            rest += batches.iter().map(|b| b.lines.len()).sum::<usize>();
        }
        assert_eq!(rest, CAPACITY - BATCH);
    }

    #[tokio::test]
    async fn lines_are_read_bounded() {
        let mut text = b"one\r\ntwo\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', MAX_LINE * 3));
        text.extend(b"\nlast");
        let mut reader = BufReader::with_capacity(1000, &text[..]);
        let mut buf = Vec::new();
        let mut lines = vec![];
        while next_line(&mut reader, &mut buf).await.unwrap() {
            lines.push(buf.len());
        }
        assert_eq!(lines, [5, 4, MAX_LINE, 4]);
    }
}
