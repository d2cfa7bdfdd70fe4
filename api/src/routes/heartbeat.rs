//! `POST /api/agent/heartbeat`: versions, labels, pipeline statuses, update errors.

use crate::error::{ApiError, Result};
use crate::extract::{JsonBody, NodeBearer};
use crate::routes::agent_samples;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use flotilla_shared::node_auth::AuthedNode;
use flotilla_shared::protocol::{Heartbeat, Ok, PipelineStatus};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Heartbeat route.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/agent/heartbeat", post(heartbeat))
}

const MAX_PIPELINES: usize = 1000;

fn metrics(p: &PipelineStatus) -> serde_json::Value {
    serde_json::json!({
        "eventsIn": p.events_in, "eventsOut": p.events_out, "errorsTotal": p.errors_total,
        "bytesIn": p.bytes_in, "bytesOut": p.bytes_out, "eventsDiscarded": p.events_discarded,
        "utilization": p.utilization,
    })
}

/// Log lines kept per pipeline, and characters kept per line.
const MAX_LOG_LINES: usize = 20;
const MAX_LOG_LINE: usize = 1000;

/// The last [`MAX_LOG_LINES`] reported log lines as a JSON array of strings (an entry that is
/// not a string is kept as its JSON text); `None` when none were reported.
fn recent_logs(p: &PipelineStatus) -> Option<serde_json::Value> {
    let lines: &[serde_json::Value] = match p.recent_logs.as_ref()? {
        serde_json::Value::Array(lines) => lines,
        serde_json::Value::Null => return None,
        line => std::slice::from_ref(line),
    };
    let kept = lines.len().saturating_sub(MAX_LOG_LINES);
    let lines: Vec<serde_json::Value> = lines[kept..]
        .iter()
        .map(|line| {
            let text = match line {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            serde_json::Value::String(text.chars().take(MAX_LOG_LINE).collect())
        })
        .collect();
    (!lines.is_empty()).then_some(serde_json::Value::Array(lines))
}

fn clip(s: Option<String>, max: usize) -> Option<String> {
    s.map(|s| s.chars().take(max).collect())
}

/// A heartbeat's writes, on the row of the token's lookup id (`$1`) only if it carries the
/// token's digest (`$14`): for a wrong, revoked or still bcrypt-hashed token nothing is written
/// and no row comes back. A self-update is settled by an error report or by reaching the target
/// version; the node's pipeline statuses are replaced by the reported ones (the DELETE and the
/// upsert touch disjoint rows); statuses of pipelines outside the node's environment are
/// dropped by the join.
const HEARTBEAT: &str = "
WITH node AS (
  UPDATE nodes SET
    agent_version = coalesce($2, agent_version),
    vector_version = coalesce($3, vector_version),
    deployment_mode = coalesce($4, deployment_mode),
    reported_labels = coalesce($5, reported_labels),
    status = 'HEALTHY',
    last_seen = now(),
    last_update_error = CASE
        WHEN $6::text IS NOT NULL THEN $6
        WHEN pending_action->>'type' = 'self_update' AND $2 = pending_action->>'targetVersion' THEN NULL
        ELSE last_update_error END,
    pending_action = CASE
        WHEN pending_action->>'type' = 'self_update'
             AND ($6::text IS NOT NULL OR $2 = pending_action->>'targetVersion') THEN NULL
        ELSE pending_action END
  WHERE token_lookup = $1 AND token_digest = $14
  RETURNING id, environment_id
),
gone AS (
  DELETE FROM node_pipeline_status s USING node
  WHERE s.node_id = node.id AND NOT (s.pipeline_id = ANY($7))
),
reported AS (
  INSERT INTO node_pipeline_status (node_id, pipeline_id, version, status, pid, uptime_seconds, config_checksum, metrics, recent_logs, updated_at)
  SELECT node.id, t.pipeline_id, t.version, t.status, t.pid, t.uptime, t.checksum, t.metrics, t.logs, now()
  FROM node,
       UNNEST($7::uuid[], $8::int4[], $9::text[], $10::int8[], $11::int8[], $12::text[], $13::jsonb[], $15::jsonb[])
         AS t(pipeline_id, version, status, pid, uptime, checksum, metrics, logs)
  JOIN pipelines p ON p.id = t.pipeline_id
  WHERE p.environment_id = node.environment_id
  ON CONFLICT (node_id, pipeline_id) DO UPDATE SET
     version = excluded.version, status = excluded.status, pid = excluded.pid,
     uptime_seconds = excluded.uptime_seconds, config_checksum = excluded.config_checksum,
     metrics = excluded.metrics, recent_logs = excluded.recent_logs, updated_at = excluded.updated_at
)
SELECT id AS node_id, environment_id FROM node";

/// What a heartbeat writes, bound once and usable for either authentication path.
struct Report<'a> {
    agent_version: Option<String>,
    vector_version: Option<String>,
    deployment_mode: Option<String>,
    labels: Option<serde_json::Value>,
    update_error: Option<String>,
    ids: Vec<Uuid>,
    versions: Vec<i32>,
    states: Vec<&'a str>,
    pids: Vec<Option<i64>>,
    uptimes: Vec<Option<i64>>,
    checksums: Vec<Option<String>>,
    metrics: Vec<serde_json::Value>,
    logs: Vec<Option<serde_json::Value>>,
}

impl<'a> Report<'a> {
    /// Validates the heartbeat and prepares its columns.
    fn of(hb: &'a Heartbeat) -> Result<Self> {
        if hb.pipelines.len() > MAX_PIPELINES {
            return Err(ApiError::bad_request(
                "Invalid request body",
                serde_json::json!({ "path": "pipelines", "reason": "too many pipelines" }),
            ));
        }
        if let Some(labels) = &hb.labels {
            crate::selector::validate_labels("labels", &serde_json::json!(labels)).map_err(
                |_| {
                    ApiError::bad_request(
                        "Invalid request body",
                        serde_json::json!({ "path": "labels" }),
                    )
                },
            )?;
        }
        if let Some(results) = &hb.sample_results {
            agent_samples::validate(results, "sampleResults")?;
        }
        // Last report of a pipeline wins if an agent lists it twice.
        let statuses: BTreeMap<Uuid, &PipelineStatus> =
            hb.pipelines.iter().map(|p| (p.pipeline_id, p)).collect();
        Ok(Report {
            agent_version: clip(hb.agent_version.clone(), 128),
            vector_version: clip(hb.vector_version.clone(), 128),
            deployment_mode: clip(hb.deployment_mode.clone(), 64),
            labels: hb.labels.as_ref().map(|l| serde_json::json!(l)),
            update_error: clip(hb.update_error.clone(), 4096),
            ids: statuses.keys().copied().collect(),
            versions: statuses.values().map(|p| p.version).collect(),
            states: statuses.values().map(|p| p.status.as_str()).collect(),
            pids: statuses.values().map(|p| p.pid).collect(),
            uptimes: statuses.values().map(|p| p.uptime_seconds).collect(),
            checksums: statuses
                .values()
                .map(|p| clip(p.config_checksum.clone(), 128))
                .collect(),
            metrics: statuses.values().map(|p| metrics(p)).collect(),
            logs: statuses.values().map(|p| recent_logs(p)).collect(),
        })
    }

    /// Writes it to the node of `lookup` if that row carries `digest`; the node, or `None`.
    async fn write(
        &self,
        state: &AppState,
        lookup: &str,
        digest: &[u8; 32],
    ) -> Result<Option<AuthedNode>> {
        let row: Option<(Uuid, Uuid)> = sqlx::query_as(HEARTBEAT)
            .bind(lookup)
            .bind(&self.agent_version)
            .bind(&self.vector_version)
            .bind(&self.deployment_mode)
            .bind(&self.labels)
            .bind(&self.update_error)
            .bind(&self.ids)
            .bind(&self.versions)
            .bind(&self.states)
            .bind(&self.pids)
            .bind(&self.uptimes)
            .bind(&self.checksums)
            .bind(&self.metrics)
            .bind(digest.as_slice())
            .bind(&self.logs)
            .fetch_optional(&state.pool)
            .await?;
        Ok(row.map(|(node_id, environment_id)| AuthedNode {
            node_id,
            environment_id,
        }))
    }
}

#[utoipa::path(
    post,
    path = "/api/agent/heartbeat",
    tag = "agent",
    request_body = Heartbeat,
    responses((status = 200, body = flotilla_shared::protocol::Ok), crate::openapi::BodyErrors, crate::openapi::NodeErrors),
    security(("node_token" = []))
)]
async fn heartbeat(
    State(state): State<AppState>,
    bearer: NodeBearer,
    body: JsonBody,
) -> Result<axum::Json<Ok>> {
    // A valid token with a valid body is checked by the write itself: one round trip.
    // Otherwise (a wrong, revoked or still bcrypt-hashed token, or a bad body) the full check
    // runs first, so a token that is not valid gets 401 before anything is said about its body.
    let parsed = body.parse::<Heartbeat>();
    let checked = bearer.lookup_and_digest();
    let mut written = None;
    if let (Some((lookup, digest)), Ok(hb)) = (&checked, &parsed) {
        if let Ok(report) = Report::of(hb) {
            written = report.write(&state, lookup, digest).await?;
        }
    }
    let (node, hb) = match (written, parsed) {
        (Some(node), Ok(hb)) => (node, hb),
        (_, parsed) => {
            bearer.check(&state).await?;
            let hb = parsed?;
            let report = Report::of(&hb)?;
            // A verified token is well-formed, and its row now carries its digest.
            let (lookup, digest) = checked.ok_or(ApiError::Unauthorized("Unauthorized"))?;
            let written = report.write(&state, lookup, &digest).await?;
            // Revoked between the check and the write.
            let node = written.ok_or(ApiError::Unauthorized("Unauthorized"))?;
            (node, hb)
        }
    };
    crate::fleet_events::node_changed(&state.redis, node.node_id, "heartbeat");

    if let Some(results) = hb.sample_results {
        agent_samples::record(&state, node, results).await?;
    }
    Ok(axum::Json(Ok { ok: true }))
}
