//! Pipeline log lines per node: the last [`RING`] lines of each (node, pipeline) in a Redis
//! list, and one channel per node that live viewers follow. Lines come from
//! `POST /api/agent/logs` and from older agents' heartbeat `recentLogs`; they are never
//! written to Postgres.

use flotilla_shared::channels::{log_channel, log_ring_key};
use flotilla_shared::redis_conn::Redis;
use serde::Serialize;
use uuid::Uuid;

/// Lines kept per node and pipeline.
pub const RING: usize = 500;
/// Bytes kept of one line (cut at a character boundary); a ring holds at most 500 × 4 KiB.
pub const MAX_LINE: usize = 4096;
/// Lines of an older agent's heartbeat `recentLogs` read per pipeline (it sends about 20).
pub const MAX_RECENT: usize = 100;
/// A ring no line reached for this long is dropped.
const RING_TTL_SECS: u64 = 7 * 24 * 3600;

/// New lines of one pipeline, as published to live viewers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lines {
    /// The pipeline.
    pub pipeline_id: Uuid,
    /// The lines, oldest first.
    pub lines: Vec<String>,
}

/// A line as kept: at most [`MAX_LINE`] bytes; a JSON value that is not a string is kept as
/// its JSON text.
pub fn line_of(value: &serde_json::Value) -> String {
    let text = match value {
        serde_json::Value::String(s) => s.as_str(),
        other => return clip(&other.to_string()),
    };
    clip(text)
}

fn clip(text: &str) -> String {
    let mut cut = text.len().min(MAX_LINE);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_owned()
}

/// Appends each batch to its ring (keeping the last [`RING`] lines) and publishes it to the
/// node's viewers, in one round trip.
pub async fn append(redis: &Redis, node: Uuid, batches: &[Lines]) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    for batch in batches.iter().filter(|b| !b.lines.is_empty()) {
        let key = log_ring_key(node, batch.pipeline_id);
        let kept = &batch.lines[batch.lines.len().saturating_sub(RING)..];
        pipe.cmd("RPUSH").arg(&key).arg(kept).ignore();
        pipe.cmd("LTRIM")
            .arg(&key)
            .arg(-(RING as i64))
            .arg(-1)
            .ignore();
        pipe.cmd("EXPIRE").arg(&key).arg(RING_TTL_SECS).ignore();
        let payload = serde_json::to_string(batch).expect("lines serialise");
        pipe.cmd("PUBLISH")
            .arg(log_channel(node))
            .arg(payload)
            .ignore();
    }
    redis.query::<()>(&pipe).await
}

/// Appends what an older agent's heartbeat reports as a pipeline's recent lines. Such an agent
/// sends its last lines in every heartbeat, so only the lines after the longest overlap with
/// the ring's tail are new.
pub async fn append_recent(
    redis: &Redis,
    node: Uuid,
    reported: Vec<Lines>,
) -> redis::RedisResult<()> {
    if reported.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for r in &reported {
        pipe.cmd("LRANGE")
            .arg(log_ring_key(node, r.pipeline_id))
            .arg(-(r.lines.len() as i64))
            .arg(-1);
    }
    let tails: Vec<Vec<String>> = redis.query(&pipe).await?;
    let fresh: Vec<Lines> = reported
        .into_iter()
        .zip(tails)
        .map(|(mut r, tail)| {
            let overlap = overlap(&tail, &r.lines);
            r.lines.drain(..overlap);
            r
        })
        .collect();
    append(redis, node, &fresh).await
}

/// Drops a revoked node's rings (one per pipeline of its environment). A failure is only
/// logged: the rings expire on their own.
pub async fn forget(state: &crate::state::AppState, node: Uuid, environment: Uuid) {
    let pipelines: Vec<Uuid> = match sqlx::query_scalar!(
        "SELECT id FROM pipelines WHERE environment_id = $1",
        environment
    )
    .fetch_all(&state.pool)
    .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "could not list a revoked node's log rings");
            return;
        }
    };
    if pipelines.is_empty() {
        return;
    }
    let mut cmd = redis::cmd("DEL");
    for p in pipelines {
        cmd.arg(log_ring_key(node, p));
    }
    if let Err(e) = state.redis.query::<()>(&cmd).await {
        tracing::warn!(error = %e, "could not drop a revoked node's log rings");
    }
}

/// The largest `k` such that the last `k` lines of `tail` are the first `k` of `lines`.
fn overlap(tail: &[String], lines: &[String]) -> usize {
    (1..=tail.len().min(lines.len()))
        .rev()
        .find(|&k| tail[tail.len() - k..] == lines[..k])
        .unwrap_or(0)
}

/// The kept lines of each of `pipelines`, oldest first, in one round trip.
pub async fn read(
    redis: &Redis,
    node: Uuid,
    pipelines: &[Uuid],
) -> redis::RedisResult<Vec<Vec<String>>> {
    if pipelines.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for &p in pipelines {
        pipe.cmd("LRANGE").arg(log_ring_key(node, p)).arg(0).arg(-1);
    }
    redis.query(&pipe).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlap_finds_the_repeated_part() {
        assert_eq!(
            overlap(&lines(&["a", "b", "c"]), &lines(&["b", "c", "d"])),
            2
        );
        assert_eq!(
            overlap(&lines(&["a", "b", "c"]), &lines(&["a", "b", "c"])),
            3
        );
        assert_eq!(overlap(&lines(&["a", "b"]), &lines(&["c"])), 0);
        assert_eq!(overlap(&[], &lines(&["c"])), 0);
        // A line repeated in the log is not mistaken for an overlap of two.
        assert_eq!(overlap(&lines(&["x", "x"]), &lines(&["x", "y"])), 1);
    }

    #[test]
    fn lines_are_clipped_at_a_character_boundary() {
        let long = "é".repeat(MAX_LINE);
        let kept = line_of(&serde_json::json!(long));
        assert_eq!(kept.len(), MAX_LINE);
        assert_eq!(kept.chars().count(), MAX_LINE / 2);
        let kept = line_of(&serde_json::json!(format!("a{long}")));
        assert_eq!(kept.len(), MAX_LINE - 1);
        assert_eq!(line_of(&serde_json::json!({"a": 1})), r#"{"a":1}"#);
    }
}
