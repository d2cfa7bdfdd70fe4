//! Live taps (`tap_start`): `vector tap` on one component, its events posted to
//! `POST /api/agent/tap-events` in batches of at most [`BATCH`] every flush interval, until
//! `tap_stop`, the time limit or the end of `vector tap`; then the end is posted once, as
//! `{status: "stopped", reason}`.
//!
//! The state machine decides which taps run (at most three, only on deployed pipelines); this
//! module only runs one.

use crate::client::ApiClient;
use crate::samples::TapProcess;
use crate::vector_api::TapUrl;
use flotilla_shared::protocol::TapEvents;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Events in one post at most.
pub const BATCH: usize = 20;
/// Events held between two flushes at most; a tap samples, so more are dropped.
pub const PENDING_MAX: usize = 100;

/// A live tap asked for by a `tap_start` push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveTap {
    /// The tap's id.
    pub request_id: String,
    /// The pipeline tapped.
    pub pipeline_id: String,
    /// The component whose outputs are tapped.
    pub component_id: String,
}

impl LiveTap {
    fn body(&self, events: Option<Vec<Value>>, reason: Option<String>) -> TapEvents {
        TapEvents {
            request_id: self.request_id.clone(),
            pipeline_id: self.pipeline_id.clone(),
            component_id: self.component_id.clone(),
            status: reason.is_some().then(|| "stopped".to_owned()),
            events,
            reason,
        }
    }
}

/// How a tap ends: `stop` cancelled (by `tap_stop`, or by `shutdown` with the agent).
pub struct Stop {
    /// This tap's stop.
    pub stop: CancellationToken,
    /// The agent is shutting down (a parent of `stop`).
    pub shutdown: CancellationToken,
}

/// Runs one live tap to its end and posts that end.
pub async fn run(
    tap: LiveTap,
    vector_bin: &Path,
    api: Option<TapUrl>,
    client: &ApiClient,
    flush_every: Duration,
    max: Duration,
    stop: Stop,
) {
    let reason = match TapProcess::spawn(vector_bin, api, &tap.component_id, None) {
        Err(e) => e,
        Ok(process) => capture(&tap, process, client, flush_every, max, &stop).await,
    };
    tracing::info!(tap = %tap.request_id, reason = %reason, "live tap ended");
    if let Err(e) = client.tap_events(&tap.body(None, Some(reason))).await {
        tracing::warn!(tap = %tap.request_id, error = %e, "posting the end of a live tap failed");
    }
}

/// Reads events and posts them until the tap ends; returns why it ended.
async fn capture(
    tap: &LiveTap,
    mut process: TapProcess,
    client: &ApiClient,
    flush_every: Duration,
    max: Duration,
    stop: &Stop,
) -> String {
    let deadline = tokio::time::sleep(max);
    tokio::pin!(deadline);
    let start = tokio::time::Instant::now() + flush_every;
    let mut ticks = tokio::time::interval_at(start, flush_every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending: Vec<Value> = vec![];
    let mut dropped = 0u64;
    let ended = loop {
        tokio::select! {
            () = stop.stop.cancelled() => break None,
            () = &mut deadline => {
                break Some(format!("time limit of {}s reached", max.as_secs_f32()));
            }
            _ = ticks.tick() => flush(tap, client, &mut pending).await,
            line = process.lines.next_line() => match line {
                Ok(Some(line)) => match serde_json::from_str::<Value>(line.trim()) {
                    Ok(event) if pending.len() < PENDING_MAX => pending.push(event),
                    Ok(_) => dropped += 1,
                    Err(_) => {}
                },
                Ok(None) | Err(_) => break Some(String::new()),
            },
        }
    };
    let (status, stderr) = process.finish().await;
    flush(tap, client, &mut pending).await;
    if dropped > 0 {
        tracing::debug!(tap = %tap.request_id, dropped, "live tap dropped events beyond its buffer");
    }
    match ended {
        None if stop.shutdown.is_cancelled() => "agent shutting down".into(),
        None => "stopped".into(),
        Some(reason) if !reason.is_empty() => reason,
        Some(_) => match status {
            Some(s) if !s.success() => format!("vector tap failed ({s}): {stderr}"),
            _ => "vector tap ended".into(),
        },
    }
}

/// Posts the pending events in batches of [`BATCH`]; a refused batch is logged and dropped.
async fn flush(tap: &LiveTap, client: &ApiClient, pending: &mut Vec<Value>) {
    while !pending.is_empty() {
        let batch: Vec<Value> = pending.drain(..pending.len().min(BATCH)).collect();
        if let Err(e) = client.tap_events(&tap.body(Some(batch), None)).await {
            tracing::warn!(tap = %tap.request_id, error = %e, "posting live tap events failed; dropping them");
        }
    }
}
