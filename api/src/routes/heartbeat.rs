//! `POST /api/agent/heartbeat`: versions, labels, pipeline statuses, update errors.

use crate::auth::NodeBearer;
use crate::error::{ApiError, Result};
use crate::extract::JsonBody;
use crate::node_logs::{self, Lines};
use crate::routes::agent_samples;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use flotilla_shared::auth::node::AuthedNode;
#[allow(unused_imports)]
use flotilla_shared::protocol::Heartbeat;
use flotilla_shared::protocol::{Ok, SampleResult};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Heartbeat route.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/agent/heartbeat", post(heartbeat))
}

// Every free-form value a heartbeat stores is capped, so an agent (or a stolen token) cannot
// grow a node's record, and every fleet view that shows it, without bound: a string is clipped
// and loses its control characters; a JSON value over its cap is dropped on its own (the
// previous one stays) while the rest of the heartbeat is recorded.

/// Pipelines read from one heartbeat.
const MAX_PIPELINES: usize = 1000;
/// Characters kept of `agentVersion`, `vectorVersion` and `runningAs`.
const MAX_NAME_CHARS: usize = 128;
/// Characters kept of `deploymentMode`.
const MAX_MODE_CHARS: usize = 64;
/// Characters kept of a pipeline's `configChecksum`.
const MAX_CHECKSUM_CHARS: usize = 128;
/// Characters kept of `updateError` (`lastUpdateError`): room for a failure class and a short
/// reason, too little to relay what a download URL's server answered.
pub const MAX_UPDATE_ERROR_CHARS: usize = 200;
/// Serialised bytes kept of `hostMetrics`.
pub const MAX_HOST_METRICS: usize = 16 * 1024;
/// Serialised bytes kept of `agentHealth`.
pub const MAX_AGENT_HEALTH: usize = 4 * 1024;
/// Serialised bytes kept of a pipeline's `utilization` (a number, in practice).
pub const MAX_UTILIZATION: usize = 1024;
/// Serialised bytes kept of a pipeline's `componentMetrics`.
pub const MAX_COMPONENT_METRICS: usize = 16 * 1024;
/// Serialised bytes of `componentMetrics` kept over all pipelines of one heartbeat; past it,
/// further pipelines keep their counters but not their component metrics.
pub const MAX_COMPONENT_METRICS_TOTAL: usize = 256 * 1024;

/// A string field's value without control characters, clipped to `max` characters; anything
/// but a string is `None`.
fn text(v: Option<&Value>, max: usize) -> Option<String> {
    let s = v?.as_str()?;
    Some(s.chars().filter(|c| !c.is_control()).take(max).collect())
}

/// Bytes `v` serialises to.
fn json_len(v: &Value) -> usize {
    serde_json::to_string(v).map_or(usize::MAX, |s| s.len())
}

/// A JSON value if it serialises within `max` bytes.
fn bounded(v: Option<&Value>, max: usize) -> Option<Value> {
    let v = v.filter(|v| !v.is_null())?;
    (json_len(v) <= max).then(|| v.clone())
}

/// A reported status: as given when it looks like one (`CRASH_LOOP`, or one this server does
/// not know yet), else `UNKNOWN`.
fn status_of(v: Option<&Value>) -> String {
    match v.and_then(Value::as_str) {
        Some(s)
            if (1..=32).contains(&s.len())
                && s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') =>
        {
            s.to_owned()
        }
        _ => "UNKNOWN".to_owned(),
    }
}

/// Counters and metrics of one pipeline, numbers as given.
fn metrics(p: &Map<String, Value>) -> Value {
    let mut m = Map::new();
    for key in [
        "eventsIn",
        "eventsOut",
        "errorsTotal",
        "bytesIn",
        "bytesOut",
        "eventsDiscarded",
    ] {
        if let Some(n) = p.get(key).filter(|v| v.is_number()) {
            m.insert(key.to_owned(), n.clone());
        }
    }
    if let Some(u) = bounded(p.get("utilization"), MAX_UTILIZATION) {
        m.insert("utilization".to_owned(), u);
    }
    if let Some(c) = bounded(p.get("componentMetrics"), MAX_COMPONENT_METRICS) {
        m.insert("componentMetrics".to_owned(), c);
    }
    Value::Object(m)
}

/// One pipeline's reported state, read leniently: `None` (skipped) when its id is not one
/// this server could have issued.
struct Reported {
    id: Uuid,
    version: i32,
    status: String,
    pid: Option<i64>,
    uptime: Option<i64>,
    checksum: Option<String>,
    metrics: Value,
    recent_logs: Vec<String>,
}

impl Reported {
    fn of(p: &Value) -> Option<Self> {
        let p = p.as_object()?;
        let id = Uuid::parse_str(p.get("pipelineId")?.as_str()?).ok()?;
        let int = |k: &str| p.get(k).and_then(Value::as_i64);
        let recent_logs = match p.get("recentLogs") {
            Some(Value::Array(lines)) => {
                let kept = lines.len().saturating_sub(node_logs::MAX_RECENT);
                lines[kept..].iter().map(node_logs::line_of).collect()
            }
            Some(Value::Null) | None => Vec::new(),
            Some(line) => vec![node_logs::line_of(line)],
        };
        Some(Self {
            id,
            version: int("version")
                .and_then(|v| i32::try_from(v).ok())
                .unwrap_or(0),
            status: status_of(p.get("status")),
            pid: int("pid"),
            uptime: int("uptimeSeconds"),
            checksum: text(p.get("configChecksum"), MAX_CHECKSUM_CHARS),
            metrics: metrics(p),
            recent_logs,
        })
    }
}

/// A heartbeat's writes, on the row of the token's lookup id (`$1`) only if it carries the
/// token's digest (`$14`): for a wrong, revoked or still bcrypt-hashed token nothing is written
/// and no row comes back. A self-update is settled by an error report or by reaching the target
/// version; the node's pipeline statuses are replaced by the reported ones (the DELETE and the
/// upsert touch disjoint rows); statuses of pipelines outside the node's environment are
/// dropped by the join. It returns the pipelines that are now RUNNING and were not before
/// (every statement sees the rows as they were before it), and whether anything the fleet
/// list shows changed: the node's status, versions, deployment mode, reported labels, update
/// error or pending action (`old` holds them as they were), or any pipeline's presence,
/// version or status. Metrics, health and counters change on every heartbeat and are not
/// part of it.
macro_rules! heartbeat {
    ($($arg:expr),* $(,)?) => {
        sqlx::query_as!(WrittenRow, r#"
WITH old AS (
  SELECT id AS old_id, status AS old_status, agent_version AS old_agent_version,
         vector_version AS old_vector_version, deployment_mode AS old_deployment_mode,
         reported_labels AS old_reported_labels, last_update_error AS old_last_update_error,
         pending_action AS old_pending_action
  FROM nodes WHERE token_lookup = $1 AND token_digest = $14
  FOR UPDATE
),
node AS (
  UPDATE nodes SET
    agent_version = coalesce($2, agent_version),
    vector_version = coalesce($3, vector_version),
    deployment_mode = coalesce($4, deployment_mode),
    reported_labels = coalesce($5, reported_labels),
    host_metrics = coalesce($15, host_metrics),
    agent_health = coalesce($16, agent_health),
    running_as = coalesce($17, running_as),
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
  FROM old
  WHERE nodes.id = old.old_id
  RETURNING nodes.id, nodes.environment_id,
    (old_status, old_agent_version, old_vector_version, old_deployment_mode,
     old_reported_labels, old_last_update_error, old_pending_action)
    IS DISTINCT FROM
    (nodes.status, nodes.agent_version, nodes.vector_version, nodes.deployment_mode,
     nodes.reported_labels, nodes.last_update_error, nodes.pending_action) AS node_changed
),
gone AS (
  DELETE FROM node_pipeline_status s USING node
  WHERE s.node_id = node.id AND NOT (s.pipeline_id = ANY($7))
),
reported AS (
  INSERT INTO node_pipeline_status (node_id, pipeline_id, version, status, pid, uptime_seconds, config_checksum, metrics, updated_at)
  SELECT node.id, t.pipeline_id, t.version, t.status, t.pid, t.uptime, t.checksum, t.metrics, now()
  FROM node,
       UNNEST($7::uuid[], $8::int4[], $9::text[], $10::int8[], $11::int8[], $12::text[], $13::jsonb[])
         AS t(pipeline_id, version, status, pid, uptime, checksum, metrics)
  JOIN pipelines p ON p.id = t.pipeline_id
  WHERE p.environment_id = node.environment_id
  ON CONFLICT (node_id, pipeline_id) DO UPDATE SET
     version = excluded.version, status = excluded.status, pid = excluded.pid,
     uptime_seconds = excluded.uptime_seconds, config_checksum = excluded.config_checksum,
     metrics = excluded.metrics, updated_at = excluded.updated_at
  RETURNING pipeline_id, version, status
)
SELECT node.id AS "node_id!", node.environment_id AS "environment_id!",
       ARRAY(SELECT r.pipeline_id FROM reported r
             WHERE r.status = 'RUNNING' AND NOT EXISTS (
               SELECT 1 FROM node_pipeline_status b
               WHERE b.node_id = node.id AND b.pipeline_id = r.pipeline_id AND b.status = 'RUNNING'))
         AS "started!",
       ARRAY(SELECT r.pipeline_id FROM reported r) AS "kept!",
       node.node_changed
         OR EXISTS (SELECT 1 FROM node_pipeline_status b
                    WHERE b.node_id = node.id AND NOT (b.pipeline_id = ANY($7)))
         OR EXISTS (SELECT 1 FROM reported r WHERE NOT EXISTS (
                      SELECT 1 FROM node_pipeline_status b
                      WHERE b.node_id = node.id AND b.pipeline_id = r.pipeline_id
                        AND b.version = r.version AND b.status = r.status))
         AS "visible!"
FROM node"#, $($arg),*)
    };
}

/// The row [`heartbeat!`] returns.
struct WrittenRow {
    node_id: Uuid,
    environment_id: Uuid,
    started: Vec<Uuid>,
    kept: Vec<Uuid>,
    visible: bool,
}

/// What a heartbeat wrote.
struct Written {
    node: AuthedNode,
    /// Pipelines now RUNNING that were not before.
    started: Vec<Uuid>,
    /// Pipelines whose status was kept (those of the node's environment).
    kept: Vec<Uuid>,
    /// Whether anything the fleet list shows changed.
    visible: bool,
}

/// What a heartbeat writes, read leniently: each pipeline, label and sample result that is
/// odd is skipped on its own; only a body that is not an object, or whose `pipelines` is not
/// a list, is refused.
struct Report {
    agent_version: Option<String>,
    vector_version: Option<String>,
    deployment_mode: Option<String>,
    labels: Option<Value>,
    update_error: Option<String>,
    host_metrics: Option<Value>,
    agent_health: Option<Value>,
    running_as: Option<String>,
    pipelines: Vec<Reported>,
    sample_results: Vec<SampleResult>,
}

fn bad_shape(path: &str, reason: &str) -> ApiError {
    ApiError::bad_request(
        "Invalid request body",
        serde_json::json!({ "path": path, "reason": reason }),
    )
}

impl Report {
    /// Reads the heartbeat.
    fn of(body: &Value) -> Result<Self> {
        let hb = body
            .as_object()
            .ok_or_else(|| bad_shape("", "a JSON object is required"))?;
        let listed = match hb.get("pipelines") {
            Some(Value::Array(list)) => list.as_slice(),
            None | Some(Value::Null) => &[],
            Some(_) => return Err(bad_shape("pipelines", "must be a list")),
        };
        // Last report of a pipeline wins if an agent lists it twice; past the first
        // [`MAX_PIPELINES`] the list is not read.
        let mut pipelines: BTreeMap<Uuid, Reported> = listed
            .iter()
            .take(MAX_PIPELINES)
            .filter_map(Reported::of)
            .map(|p| (p.id, p))
            .collect();
        // One budget for all pipelines' component metrics, spent in id order.
        let mut budget = MAX_COMPONENT_METRICS_TOTAL;
        for p in pipelines.values_mut() {
            if let Value::Object(m) = &mut p.metrics {
                let size = m.get("componentMetrics").map_or(0, json_len);
                match budget.checked_sub(size) {
                    Some(left) => budget = left,
                    None => {
                        m.remove("componentMetrics");
                    }
                }
            }
        }
        let sample_results = match hb.get("sampleResults") {
            Some(Value::Array(results)) => agent_samples::accepted(results),
            _ => Vec::new(),
        };
        Ok(Report {
            agent_version: text(hb.get("agentVersion"), MAX_NAME_CHARS),
            vector_version: text(hb.get("vectorVersion"), MAX_NAME_CHARS),
            deployment_mode: text(hb.get("deploymentMode"), MAX_MODE_CHARS),
            labels: hb
                .get("labels")
                .filter(|l| l.is_object())
                .map(|l| Value::Object(crate::selector::reported_labels(l))),
            update_error: text(hb.get("updateError"), MAX_UPDATE_ERROR_CHARS),
            host_metrics: bounded(hb.get("hostMetrics"), MAX_HOST_METRICS),
            agent_health: bounded(hb.get("agentHealth"), MAX_AGENT_HEALTH),
            running_as: text(hb.get("runningAs"), MAX_NAME_CHARS),
            pipelines: pipelines.into_values().collect(),
            sample_results,
        })
    }

    /// Writes it to the node of `lookup` if that row carries `digest`; the node and the
    /// what was written, or `None`.
    async fn write(
        &self,
        state: &AppState,
        lookup: &str,
        digest: &[u8; 32],
    ) -> Result<Option<Written>> {
        let p = &self.pipelines;
        // Arrays of borrowed or optional elements are bound as they are (`as _`): the
        // macro's check knows `text[]` and `int8[]` only as vectors of owned, non-null values.
        let row: Option<WrittenRow> = heartbeat!(
            lookup,
            self.agent_version.as_deref(),
            self.vector_version.as_deref(),
            self.deployment_mode.as_deref(),
            self.labels.as_ref(),
            self.update_error.as_deref(),
            &p.iter().map(|p| p.id).collect::<Vec<_>>(),
            &p.iter().map(|p| p.version).collect::<Vec<_>>(),
            &p.iter().map(|p| p.status.as_str()).collect::<Vec<_>>() as _,
            p.iter().map(|p| p.pid).collect::<Vec<_>>() as _,
            p.iter().map(|p| p.uptime).collect::<Vec<_>>() as _,
            p.iter().map(|p| p.checksum.clone()).collect::<Vec<_>>() as _,
            &p.iter().map(|p| p.metrics.clone()).collect::<Vec<_>>(),
            digest.as_slice(),
            self.host_metrics.as_ref(),
            self.agent_health.as_ref(),
            self.running_as.as_deref(),
        )
        .fetch_optional(&state.pool)
        .await?;
        Ok(row.map(|r| Written {
            node: AuthedNode {
                node_id: r.node_id,
                environment_id: r.environment_id,
            },
            started: r.started,
            kept: r.kept,
            visible: r.visible,
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
    let parsed = body.parse::<Value>().and_then(|v| Report::of(&v));
    let checked = bearer.lookup_and_digest();
    let mut written = None;
    if let (Some((lookup, digest)), Ok(report)) = (&checked, &parsed) {
        written = report.write(&state, lookup, digest).await?;
    }
    let (written, report) = match (written, parsed) {
        (Some(written), Ok(report)) => (written, report),
        (_, parsed) => {
            bearer.check(&state).await?;
            let report = parsed?;
            // A verified token is well-formed, and its row now carries its digest.
            let (lookup, digest) = checked.ok_or(ApiError::Unauthorized("Unauthorized"))?;
            let written = report.write(&state, lookup, &digest).await?;
            // Revoked between the check and the write.
            (
                written.ok_or(ApiError::Unauthorized("Unauthorized"))?,
                report,
            )
        }
    };
    let Written {
        node,
        started,
        kept,
        visible,
    } = written;
    // Only a change the fleet page shows is announced: 10,000 agents heartbeating every 15 s
    // would otherwise send every open page ~670 events a second.
    if visible {
        crate::fleet_events::node_changed(&state.redis, node.node_id, "heartbeat");
    }

    let logs: Vec<Lines> = report
        .pipelines
        .into_iter()
        .filter(|p| !p.recent_logs.is_empty() && kept.contains(&p.id))
        .map(|p| Lines {
            pipeline_id: p.id,
            lines: p.recent_logs,
        })
        .collect();
    // The heartbeat itself is recorded; lines lost to a Redis outage are only logged.
    if let Err(e) = node_logs::append_recent(&state.redis, node.node_id, logs).await {
        tracing::warn!(error = %e, node_id = %node.node_id, "could not keep reported log lines");
    }
    if !started.is_empty() {
        agent_samples::push_pending(&state, node, &started).await?;
    }
    if !report.sample_results.is_empty() {
        agent_samples::record(&state, node, report.sample_results).await?;
    }
    Ok(axum::Json(Ok { ok: true }))
}
