//! `POST /api/agent/heartbeat`: versions, labels, pipeline statuses, update errors.

use crate::error::{ApiError, Result};
use crate::extract::{Json, NodeCaller};
use crate::routes::agent_samples;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
#[allow(unused_imports)]
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

fn clip(s: Option<String>, max: usize) -> Option<String> {
    s.map(|s| s.chars().take(max).collect())
}

/// A heartbeat's writes. A self-update is settled by an error report or by reaching the target
/// version; statuses of pipelines outside the node's environment are dropped by the join.
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
  WHERE id = $1
),
gone AS (
  DELETE FROM node_pipeline_status WHERE node_id = $1 AND NOT (pipeline_id = ANY($7))
)
INSERT INTO node_pipeline_status (node_id, pipeline_id, version, status, pid, uptime_seconds, config_checksum, metrics, updated_at)
SELECT $1, t.pipeline_id, t.version, t.status, t.pid, t.uptime, t.checksum, t.metrics, now()
FROM UNNEST($7::uuid[], $8::int4[], $9::text[], $10::int8[], $11::int8[], $12::text[], $13::jsonb[])
     AS t(pipeline_id, version, status, pid, uptime, checksum, metrics)
JOIN pipelines p ON p.id = t.pipeline_id AND p.environment_id = $14
ON CONFLICT (node_id, pipeline_id) DO UPDATE SET
   version = excluded.version, status = excluded.status, pid = excluded.pid,
   uptime_seconds = excluded.uptime_seconds, config_checksum = excluded.config_checksum,
   metrics = excluded.metrics, updated_at = excluded.updated_at";

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
    NodeCaller(node): NodeCaller,
    Json(hb): Json<Heartbeat>,
) -> Result<axum::Json<Ok>> {
    if hb.pipelines.len() > MAX_PIPELINES {
        return Err(ApiError::bad_request(
            "Invalid request body",
            serde_json::json!({ "path": "pipelines", "reason": "too many pipelines" }),
        ));
    }
    if let Some(labels) = &hb.labels {
        crate::selector::validate_labels("labels", &serde_json::json!(labels)).map_err(|_| {
            ApiError::bad_request(
                "Invalid request body",
                serde_json::json!({ "path": "labels" }),
            )
        })?;
    }
    if let Some(results) = &hb.sample_results {
        agent_samples::validate(results, "sampleResults")?;
    }
    let update_error = clip(hb.update_error, 4096);

    // Last report of a pipeline wins if an agent lists it twice.
    let statuses: BTreeMap<Uuid, &PipelineStatus> =
        hb.pipelines.iter().map(|p| (p.pipeline_id, p)).collect();
    let ids: Vec<Uuid> = statuses.keys().copied().collect();
    let versions: Vec<i32> = statuses.values().map(|p| p.version).collect();
    let states: Vec<&str> = statuses.values().map(|p| p.status.as_str()).collect();
    let pids: Vec<Option<i64>> = statuses.values().map(|p| p.pid).collect();
    let uptimes: Vec<Option<i64>> = statuses.values().map(|p| p.uptime_seconds).collect();
    let checksums: Vec<Option<String>> = statuses
        .values()
        .map(|p| clip(p.config_checksum.clone(), 128))
        .collect();
    let metrics: Vec<serde_json::Value> = statuses.values().map(|p| metrics(p)).collect();
    // One statement, so one round trip and atomic: the node's row, then its pipeline statuses
    // replaced by the reported ones (the DELETE and the upsert touch disjoint rows).
    sqlx::query(HEARTBEAT)
        .bind(node.node_id)
        .bind(clip(hb.agent_version, 128))
        .bind(clip(hb.vector_version, 128))
        .bind(clip(hb.deployment_mode, 64))
        .bind(hb.labels.map(|l| serde_json::json!(l)))
        .bind(update_error)
        .bind(&ids)
        .bind(&versions)
        .bind(&states)
        .bind(&pids)
        .bind(&uptimes)
        .bind(&checksums)
        .bind(&metrics)
        .bind(node.environment_id)
        .execute(&state.pool)
        .await?;
    crate::fleet_events::node_changed(&state.redis, node.node_id, "heartbeat");

    if let Some(results) = hb.sample_results {
        agent_samples::record(&state, node, results).await?;
    }
    Ok(axum::Json(Ok { ok: true }))
}
