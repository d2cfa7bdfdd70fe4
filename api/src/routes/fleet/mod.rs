//! The fleet: nodes with status, pipelines and push-channel presence; labels, maintenance,
//! actions and revocation (admin).
//!
//! # Layout
//! - [`filter`]: the list's filters, read from a query string or a bulk action's body, and
//!   the SQL conditions they become (each an index path);
//! - [`list`]: `GET /api/v1/fleet` (keyset pages) and `GET /api/v1/fleet/summary`;
//! - [`node`]: one node: detail, labels, maintenance, an action, revocation;
//! - [`rules`]: what an action may be (shared by one node and the bulk);
//! - [`bulk`]: `POST /api/v1/fleet/actions`, one change to every node of a filter or a list.

pub mod bulk;
pub mod filter;
pub mod list;
pub mod node;
pub mod rules;

use crate::error::{ApiError, Result};
use crate::state::AppState;
use axum::routing::{get, post, put};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

/// Fleet routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/fleet", get(list::list))
        .route("/api/v1/fleet/summary", get(list::summary))
        .route("/api/v1/fleet/actions", post(bulk::bulk))
        .route("/api/v1/fleet/{id}", get(node::show).delete(node::revoke))
        .route("/api/v1/fleet/{id}/labels", put(node::labels))
        .route("/api/v1/fleet/{id}/maintenance", post(node::maintenance))
        .route("/api/v1/fleet/{id}/actions", post(node::action))
}

/// A node as the operator API shows it (never its token or hash).
#[derive(Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    id: Uuid,
    host: String,
    environment_id: Uuid,
    status: String,
    last_seen: Option<DateTime<Utc>>,
    agent_version: Option<String>,
    vector_version: Option<String>,
    os: Option<String>,
    deployment_mode: Option<String>,
    /// The user the agent runs as (current agents; detail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    running_as: Option<String>,
    /// The latest host metrics the agent reported (detail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    host_metrics: Option<Value>,
    /// The latest agent health the agent reported (detail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    agent_health: Option<Value>,
    /// Effective labels: the agent's own, overlaid with the operator's.
    #[schema(value_type = Object)]
    labels: Value,
    /// The labels an operator set (what `PUT …/labels` replaces; no agent can claim them).
    #[schema(value_type = Object)]
    operator_labels: Value,
    /// The labels the agent reports about itself.
    #[schema(value_type = Object)]
    reported_labels: Value,
    #[sqlx(rename = "maintenance")]
    maintenance_mode: bool,
    #[schema(value_type = Option<Object>)]
    pending_action: Option<Value>,
    last_update_error: Option<String>,
    enrolled_at: DateTime<Utc>,
    /// Each pipeline's reported status; on an UNREACHABLE node each carries `lastKnown: true`
    /// (the status it last reported, which may no longer hold).
    #[schema(value_type = Vec<Object>)]
    pipelines: Value,
    /// The sort key of the host order (lower-case host), for the cursor.
    #[serde(skip)]
    #[sqlx(default)]
    sort_host: Option<String>,
    /// Pipelines reported `CRASHED` or `CRASH_LOOP`.
    #[sqlx(skip)]
    crashed_pipelines: usize,
    #[sqlx(skip)]
    ws_connected: bool,
    #[sqlx(skip)]
    gateway_id: Option<String>,
    #[sqlx(skip)]
    connected_since: Option<DateTime<Utc>>,
    /// How the agent's push channel is connected (`websocket` or `sse`), while it is.
    #[sqlx(skip)]
    push_transport: Option<flotilla_shared::presence::Transport>,
}

/// Nodes with their pipelines' statuses; `{node}` adds the node's reported metrics (or NULLs
/// them), `{detail}` adds fields to each pipeline. For the list, whose statement is built at
/// run time; [`load_node_with`] reads one node with the same columns in a checked statement.
pub(crate) fn select_nodes(node: &str, detail: &str) -> String {
    format!(
        "SELECT n.id, n.host, n.environment_id, n.status, n.last_seen, n.agent_version,
        n.vector_version, n.os, n.deployment_mode, {node}, (n.reported_labels || n.labels) AS labels,
        n.labels AS operator_labels, n.reported_labels, n.maintenance,
        n.pending_action, n.last_update_error, n.enrolled_at,
        coalesce((SELECT json_agg(json_build_object('pipelineId', s.pipeline_id, 'version', s.version, 'status', s.status{detail})
                                  ORDER BY s.pipeline_id)
                  FROM node_pipeline_status s WHERE s.node_id = n.id), '[]'::json)::jsonb AS pipelines
     FROM nodes n"
    )
}

/// The list leaves out what the agent last reported about itself and each pipeline (it
/// would dominate a large fleet's listing); one node carries it ([`load_node_with`]).
pub(crate) const NODE_SUMMARY: &str =
    "NULL::text AS running_as, NULL::jsonb AS host_metrics, NULL::jsonb AS agent_health";

/// Pipeline statuses that count as crashed.
pub const CRASHED: [&str; 2] = ["CRASHED", "CRASH_LOOP"];

/// Counts each node's crashed pipelines, and marks the pipelines of an UNREACHABLE node as
/// last known.
pub(crate) fn with_crash_counts(mut nodes: Vec<NodeView>) -> Vec<NodeView> {
    for n in &mut nodes {
        let unreachable = n.status == "UNREACHABLE";
        if let Value::Array(ps) = &mut n.pipelines {
            n.crashed_pipelines = ps
                .iter()
                .filter(|p| p["status"].as_str().is_some_and(|s| CRASHED.contains(&s)))
                .count();
            if unreachable {
                for p in ps.iter_mut() {
                    p["lastKnown"] = json!(true);
                }
            }
        }
    }
    nodes
}

/// Fills in push-channel presence for all nodes with one Redis round trip. Redis being down
/// leaves every node shown as not connected rather than failing the page.
pub(crate) async fn with_presence(state: &AppState, mut nodes: Vec<NodeView>) -> Vec<NodeView> {
    let ids: Vec<Uuid> = nodes.iter().map(|n| n.id).collect();
    match flotilla_shared::presence::lookup(&state.redis, &ids).await {
        Ok(presence) => {
            for (node, p) in nodes.iter_mut().zip(presence) {
                if let Some(p) = p {
                    node.ws_connected = true;
                    node.connected_since = DateTime::from_timestamp_millis(p.since_ms);
                    node.gateway_id = Some(p.gateway_id);
                    node.push_transport = Some(p.transport);
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "presence unavailable; showing nodes as not connected")
        }
    }
    nodes
}

/// One node in detail: its reported metrics, and each pipeline's kept log lines as
/// `recentLogs` (left out, with a warning, while Redis is unavailable).
pub(crate) async fn load_node(state: &AppState, id: Uuid) -> Result<NodeView> {
    load_node_with(state, id, true).await
}

/// [`load_node`], with each pipeline's kept log lines only when `logs` (a page that follows
/// the live log does not need them again on every refresh).
pub(crate) async fn load_node_with(state: &AppState, id: Uuid, logs: bool) -> Result<NodeView> {
    // The columns of [`select_nodes`], with the node's reported metrics and each pipeline's
    // detail.
    let row = sqlx::query!(
        r#"SELECT n.id, n.host, n.environment_id, n.status, n.last_seen, n.agent_version,
        n.vector_version, n.os, n.deployment_mode, n.running_as, n.host_metrics, n.agent_health,
        (n.reported_labels || n.labels) AS "labels!",
        n.labels AS operator_labels, n.reported_labels, n.maintenance,
        n.pending_action, n.last_update_error, n.enrolled_at,
        coalesce((SELECT json_agg(json_build_object('pipelineId', s.pipeline_id, 'version', s.version, 'status', s.status,
                                                    'configChecksum', s.config_checksum, 'uptimeSeconds', s.uptime_seconds,
        'metrics', s.metrics - 'componentMetrics', 'componentMetrics', s.metrics -> 'componentMetrics',
        'updatedAt', s.updated_at)
                                  ORDER BY s.pipeline_id)
                  FROM node_pipeline_status s WHERE s.node_id = n.id), '[]'::json)::jsonb AS "pipelines!"
     FROM nodes n WHERE n.id = $1"#,
        id
    )
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound("node"))?;
    let mut node = NodeView {
        id: row.id,
        host: row.host,
        environment_id: row.environment_id,
        status: row.status,
        last_seen: row.last_seen,
        agent_version: row.agent_version,
        vector_version: row.vector_version,
        os: row.os,
        deployment_mode: row.deployment_mode,
        running_as: row.running_as,
        host_metrics: row.host_metrics,
        agent_health: row.agent_health,
        labels: row.labels,
        operator_labels: row.operator_labels,
        reported_labels: row.reported_labels,
        maintenance_mode: row.maintenance,
        pending_action: row.pending_action,
        last_update_error: row.last_update_error,
        enrolled_at: row.enrolled_at,
        pipelines: row.pipelines,
        sort_host: None,
        crashed_pipelines: 0,
        ws_connected: false,
        gateway_id: None,
        connected_since: None,
        push_transport: None,
    };
    if let (true, Value::Array(pipelines)) = (logs, &mut node.pipelines) {
        let ids: Vec<Uuid> = pipelines
            .iter()
            .filter_map(|p| p["pipelineId"].as_str()?.parse().ok())
            .collect();
        match crate::node_logs::read(&state.redis, id, &ids).await {
            Ok(logs) => {
                for (p, lines) in pipelines.iter_mut().zip(logs) {
                    p["recentLogs"] = json!(lines);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "log lines unavailable; showing the node without them")
            }
        }
    }
    Ok(with_presence(state, with_crash_counts(vec![node]))
        .await
        .remove(0))
}
