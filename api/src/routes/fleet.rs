//! The fleet: nodes with status, pipelines and push-channel presence; labels, maintenance,
//! actions and revocation (admin).

use crate::error::{ApiError, Result};
use crate::extract::{id_of, Json, Operator, Query};
use crate::fleet_events::node_changed;
use crate::operator_auth::Role;
use crate::selector::validate_labels;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::Router;
use chrono::{DateTime, Utc};
use flotilla_shared::channels::ControlMessage;
use flotilla_shared::frames::{ActionKind, ConfigChangeReason, PushMessage};
use flotilla_shared::protocol::ErrorBody;
use flotilla_shared::protocol::PendingAction;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

/// Fleet routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/fleet", get(list))
        .route("/api/v1/fleet/{id}", get(show).delete(revoke))
        .route("/api/v1/fleet/{id}/labels", put(labels))
        .route("/api/v1/fleet/{id}/maintenance", post(maintenance))
        .route("/api/v1/fleet/{id}/actions", post(action))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    environment_id: Option<Uuid>,
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
    #[schema(value_type = Object)]
    labels: Value,
    #[sqlx(rename = "maintenance")]
    maintenance_mode: bool,
    #[schema(value_type = Object)]
    pending_action: Option<Value>,
    last_update_error: Option<String>,
    enrolled_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pipelines: Value,
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

/// Nodes with their pipelines' statuses; `{detail}` adds fields to each pipeline.
fn select_nodes(detail: &str) -> String {
    format!(
        "SELECT n.id, n.host, n.environment_id, n.status, n.last_seen, n.agent_version,
        n.vector_version, n.os, n.deployment_mode, (n.reported_labels || n.labels) AS labels, n.maintenance,
        n.pending_action, n.last_update_error, n.enrolled_at,
        coalesce((SELECT json_agg(json_build_object('pipelineId', s.pipeline_id, 'version', s.version, 'status', s.status{detail})
                                  ORDER BY s.pipeline_id)
                  FROM node_pipeline_status s WHERE s.node_id = n.id), '[]'::json)::jsonb AS pipelines
     FROM nodes n"
    )
}

/// One node's pipelines also carry what the agent last reported about them (the list leaves
/// these out: with 20 log lines each they would dominate a large fleet's listing).
const PIPELINE_DETAIL: &str =
    ", 'configChecksum', s.config_checksum, 'uptimeSeconds', s.uptime_seconds,
        'metrics', s.metrics, 'recentLogs', s.recent_logs, 'updatedAt', s.updated_at";

/// Fills in push-channel presence for all nodes with one Redis round trip. Redis being down
/// leaves every node shown as not connected rather than failing the page.
async fn with_presence(state: &AppState, mut nodes: Vec<NodeView>) -> Vec<NodeView> {
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

/// Loads nodes (optionally of one environment), presence included.
pub async fn load_nodes(state: &AppState, environment: Option<Uuid>) -> Result<Vec<NodeView>> {
    let nodes: Vec<NodeView> = sqlx::query_as(&format!(
        "{} WHERE $1::uuid IS NULL OR n.environment_id = $1 ORDER BY n.host, n.id",
        select_nodes("")
    ))
    .bind(environment)
    .fetch_all(&state.pool)
    .await?;
    Ok(with_presence(state, nodes).await)
}

async fn load_node(state: &AppState, id: Uuid) -> Result<NodeView> {
    let node: NodeView = sqlx::query_as(&format!(
        "{} WHERE n.id = $1",
        select_nodes(PIPELINE_DETAIL)
    ))
    .bind(id)
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound("node"))?;
    Ok(with_presence(state, vec![node]).await.remove(0))
}

#[utoipa::path(
    get,
    path = "/api/v1/fleet",
    tag = "operator",
    params(("environmentId" = Option<String>, Query, description = "only this environment (UUID)")),
    responses((status = 200, body = Object), (status = 400, description = "bad query", body = ErrorBody), crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn list(
    State(state): State<AppState>,
    op: Operator,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<Value>> {
    op.require(Role::Viewer)?;
    Ok(axum::Json(
        json!({ "nodes": load_nodes(&state, q.environment_id).await? }),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/fleet/{id}",
    tag = "operator",
    params(("id" = String, Path, description = "id (UUID)")),
    responses((status = 200, body = NodeView), crate::openapi::NotFound, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn show(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<axum::Json<NodeView>> {
    op.require(Role::Viewer)?;
    let id = id_of(&id, "node")?;
    Ok(axum::Json(load_node(&state, id).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct LabelsBody {
    #[schema(value_type = Object)]
    labels: Value,
}

#[utoipa::path(
    put,
    path = "/api/v1/fleet/{id}/labels",
    tag = "operator",
    params(("id" = String, Path, description = "id (UUID)")),
    request_body = LabelsBody,
    responses((status = 200, body = NodeView), crate::openapi::BodyErrors, crate::openapi::NotFound, crate::openapi::Invalid, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn labels(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    Json(body): Json<LabelsBody>,
) -> Result<axum::Json<NodeView>> {
    op.require(Role::Admin)?;
    let id = id_of(&id, "node")?;
    let labels = validate_labels("labels", &body.labels)?;
    let n = sqlx::query("UPDATE nodes SET labels = $2 WHERE id = $1")
        .bind(id)
        .bind(Value::Object(labels))
        .execute(&state.pool)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(ApiError::NotFound("node"));
    }
    state
        .notifier
        .push(
            &[id],
            PushMessage::ConfigChanged {
                pipeline_id: None,
                reason: ConfigChangeReason::Labels,
            },
        )
        .await;
    node_changed(&state.redis, id, "labels");
    Ok(axum::Json(load_node(&state, id).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct MaintenanceBody {
    enabled: bool,
}

#[utoipa::path(
    post,
    path = "/api/v1/fleet/{id}/maintenance",
    tag = "operator",
    params(("id" = String, Path, description = "id (UUID)")),
    request_body = MaintenanceBody,
    responses((status = 200, body = NodeView), crate::openapi::BodyErrors, crate::openapi::NotFound, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn maintenance(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    Json(body): Json<MaintenanceBody>,
) -> Result<axum::Json<NodeView>> {
    op.require(Role::Admin)?;
    let id = id_of(&id, "node")?;
    let n = sqlx::query("UPDATE nodes SET maintenance = $2 WHERE id = $1")
        .bind(id)
        .bind(body.enabled)
        .execute(&state.pool)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(ApiError::NotFound("node"));
    }
    let reason = if body.enabled {
        ConfigChangeReason::MaintenanceOn
    } else {
        ConfigChangeReason::MaintenanceOff
    };
    state
        .notifier
        .push(
            &[id],
            PushMessage::ConfigChanged {
                pipeline_id: None,
                reason,
            },
        )
        .await;
    node_changed(&state.redis, id, "maintenance");
    Ok(axum::Json(load_node(&state, id).await?))
}

fn validate_action(a: &PendingAction) -> Result<ActionKind> {
    match a.kind.as_str() {
        "restart" => Ok(ActionKind::Restart),
        "self_update" => {
            let version = a.target_version.as_deref().unwrap_or_default();
            if version.is_empty() || version.len() > 128 {
                return Err(ApiError::invalid(
                    "targetVersion",
                    "required for self_update",
                ));
            }
            let url = a.download_url.as_deref().unwrap_or_default();
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() > 2048 {
                return Err(ApiError::invalid(
                    "downloadUrl",
                    "an http(s) URL is required for self_update",
                ));
            }
            let sum = a.checksum.as_deref().unwrap_or_default();
            if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ApiError::invalid(
                    "checksum",
                    "the hex SHA-256 of the binary",
                ));
            }
            Ok(ActionKind::SelfUpdate)
        }
        _ => Err(ApiError::invalid("type", "self_update or restart")),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/fleet/{id}/actions",
    tag = "operator",
    params(("id" = String, Path, description = "id (UUID)")),
    request_body = PendingAction,
    responses((status = 202, body = Object), crate::openapi::BodyErrors, crate::openapi::NotFound, crate::openapi::Invalid, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn action(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    Json(mut body): Json<PendingAction>,
) -> Result<(StatusCode, axum::Json<Value>)> {
    op.require(Role::Admin)?;
    let id = id_of(&id, "node")?;
    let kind = validate_action(&body)?;
    if kind == ActionKind::Restart {
        (body.target_version, body.download_url, body.checksum) = (None, None, None);
    } else {
        body.checksum = body.checksum.map(|c| c.to_ascii_lowercase());
    }
    let n = sqlx::query("UPDATE nodes SET pending_action = $2 WHERE id = $1")
        .bind(id)
        .bind(json!(body))
        .execute(&state.pool)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(ApiError::NotFound("node"));
    }
    let message = PushMessage::Action {
        action: kind,
        target_version: body.target_version.clone(),
        download_url: body.download_url.clone(),
        checksum: body.checksum.clone(),
    };
    let notified = state.notifier.push(&[id], message).await;
    node_changed(&state.redis, id, "action");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "pendingAction": body, "notifiedNodes": notified })),
    ))
}

#[utoipa::path(
    delete,
    path = "/api/v1/fleet/{id}",
    tag = "operator",
    params(("id" = String, Path, description = "id (UUID)")),
    responses((status = 204, description = "revoked"), crate::openapi::NotFound, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn revoke(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    op.require(Role::Admin)?;
    let id = id_of(&id, "node")?;
    // Deleting the row is the revocation: every authenticator re-reads it on each request.
    let n = sqlx::query("DELETE FROM nodes WHERE id = $1")
        .bind(id)
        .execute(&state.pool)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(ApiError::NotFound("node"));
    }
    state.notifier.control(id, &ControlMessage::Revoke).await;
    node_changed(&state.redis, id, "revoked");
    tracing::info!(node_id = %id, "node revoked");
    Ok(StatusCode::NO_CONTENT)
}
