//! The fleet: nodes with status, pipelines and push-channel presence; labels, maintenance,
//! actions and revocation (admin).

use crate::download_url::{self, AllowList};
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
/// them), `{detail}` adds fields to each pipeline.
fn select_nodes(node: &str, detail: &str) -> String {
    format!(
        "SELECT n.id, n.host, n.environment_id, n.status, n.last_seen, n.agent_version,
        n.vector_version, n.os, n.deployment_mode, {node}, (n.reported_labels || n.labels) AS labels, n.maintenance,
        n.pending_action, n.last_update_error, n.enrolled_at,
        coalesce((SELECT json_agg(json_build_object('pipelineId', s.pipeline_id, 'version', s.version, 'status', s.status{detail})
                                  ORDER BY s.pipeline_id)
                  FROM node_pipeline_status s WHERE s.node_id = n.id), '[]'::json)::jsonb AS pipelines
     FROM nodes n"
    )
}

/// One node also carries what the agent last reported about itself and each pipeline (the
/// list leaves these out: they would dominate a large fleet's listing).
const NODE_DETAIL: &str = "n.running_as, n.host_metrics, n.agent_health";
const NODE_SUMMARY: &str =
    "NULL::text AS running_as, NULL::jsonb AS host_metrics, NULL::jsonb AS agent_health";
const PIPELINE_DETAIL: &str =
    ", 'configChecksum', s.config_checksum, 'uptimeSeconds', s.uptime_seconds,
        'metrics', s.metrics - 'componentMetrics', 'componentMetrics', s.metrics -> 'componentMetrics',
        'updatedAt', s.updated_at";

/// Pipeline statuses that count as crashed.
const CRASHED: [&str; 2] = ["CRASHED", "CRASH_LOOP"];

/// Counts each node's crashed pipelines.
fn with_crash_counts(mut nodes: Vec<NodeView>) -> Vec<NodeView> {
    for n in &mut nodes {
        n.crashed_pipelines = n.pipelines.as_array().map_or(0, |ps| {
            ps.iter()
                .filter(|p| p["status"].as_str().is_some_and(|s| CRASHED.contains(&s)))
                .count()
        });
    }
    nodes
}

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
        select_nodes(NODE_SUMMARY, "")
    ))
    .bind(environment)
    .fetch_all(&state.pool)
    .await?;
    Ok(with_presence(state, with_crash_counts(nodes)).await)
}

/// One node in detail: its reported metrics, and each pipeline's kept log lines as
/// `recentLogs` (left out, with a warning, while Redis is unavailable).
async fn load_node(state: &AppState, id: Uuid) -> Result<NodeView> {
    let mut node: NodeView = sqlx::query_as(&format!(
        "{} WHERE n.id = $1",
        select_nodes(NODE_DETAIL, PIPELINE_DETAIL)
    ))
    .bind(id)
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound("node"))?;
    if let Value::Array(pipelines) = &mut node.pipelines {
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

/// A self-update checksum as bare lower-case hex: given as hex or `sha256:<hex>` (current
/// agents read both, older ones only hex).
fn checksum_hex(given: Option<&str>) -> Result<String> {
    let sum = given.unwrap_or_default();
    let hex = sum
        .strip_prefix("sha256:")
        .or_else(|| sum.strip_prefix("SHA256:"))
        .unwrap_or(sum);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::invalid(
            "checksum",
            "the SHA-256 of the binary, as hex or sha256:<hex>",
        ));
    }
    Ok(hex.to_ascii_lowercase())
}

/// Checks an action and puts it in the form agents get: a restart keeps only its pipeline, a
/// self-update its version, URL (in canonical form, if [`download_url::check`] accepts it with
/// `allowed`), hex checksum and signature.
fn validate_action(a: PendingAction, allowed: &AllowList) -> Result<(ActionKind, PendingAction)> {
    let clean = PendingAction {
        kind: a.kind.clone(),
        target_version: None,
        download_url: None,
        checksum: None,
        signature: None,
        pipeline_id: None,
    };
    match a.kind.as_str() {
        "restart" => {
            if let Some(p) = &a.pipeline_id {
                if Uuid::parse_str(p).is_err() {
                    return Err(ApiError::invalid("pipelineId", "a pipeline id (UUID)"));
                }
            }
            let pipeline_id = a.pipeline_id.map(|p| p.to_ascii_lowercase());
            Ok((
                ActionKind::Restart,
                PendingAction {
                    pipeline_id,
                    ..clean
                },
            ))
        }
        "self_update" => {
            let version = a.target_version.as_deref().unwrap_or_default();
            if version.is_empty() || version.len() > 128 {
                return Err(ApiError::invalid(
                    "targetVersion",
                    "required for self_update",
                ));
            }
            let url = download_url::check(a.download_url.as_deref().unwrap_or_default(), allowed)
                .map_err(|refused| ApiError::invalid("downloadUrl", refused.to_string()))?;
            let checksum = checksum_hex(a.checksum.as_deref())?;
            if let Some(sig) = &a.signature {
                use base64::Engine;
                let raw = base64::engine::general_purpose::STANDARD.decode(sig);
                if raw.map(|r| r.len()) != Ok(64) {
                    return Err(ApiError::invalid(
                        "signature",
                        "an ed25519 signature (64 bytes) in base64",
                    ));
                }
            }
            Ok((
                ActionKind::SelfUpdate,
                PendingAction {
                    target_version: a.target_version,
                    download_url: Some(url),
                    checksum: Some(checksum),
                    signature: a.signature,
                    ..clean
                },
            ))
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
    responses((status = 202, body = Object), crate::openapi::BodyErrors, crate::openapi::NotFound, crate::openapi::Conflict, crate::openapi::Invalid, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn action(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    Json(body): Json<PendingAction>,
) -> Result<(StatusCode, axum::Json<Value>)> {
    op.require(Role::Admin)?;
    let id = id_of(&id, "node")?;
    let (kind, action) = validate_action(body, &state.self_update_hosts)?;
    let node: Option<(Uuid, Option<String>, bool)> = sqlx::query_as(
        "SELECT environment_id, deployment_mode, agent_health IS NOT NULL FROM nodes WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await?;
    let (environment, deployment_mode, current_agent) = node.ok_or(ApiError::NotFound("node"))?;
    if kind == ActionKind::SelfUpdate
        && deployment_mode.is_some_and(|m| m.eq_ignore_ascii_case("docker"))
    {
        return Err(ApiError::Conflict(
            "the node runs in Docker (deploymentMode DOCKER), where the agent cannot replace itself: update its image instead".into(),
        ));
    }
    if let Some(p) = &action.pipeline_id {
        let known: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pipelines WHERE id = $1::uuid AND environment_id = $2)",
        )
        .bind(p)
        .bind(environment)
        .fetch_one(&state.pool)
        .await?;
        if !known {
            return Err(ApiError::invalid(
                "pipelineId",
                "not a pipeline of the node's environment",
            ));
        }
    }
    // A current agent restarts on pushes only; the restart is kept for it only if they did
    // not arrive (its next polls retry them).
    let delivered = kind == ActionKind::Restart
        && current_agent
        && crate::restarts::push_to_current(&state, id, &action).await?;
    let pending = (!delivered).then(|| json!(action));
    let n = sqlx::query("UPDATE nodes SET pending_action = $2 WHERE id = $1")
        .bind(id)
        .bind(&pending)
        .execute(&state.pool)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(ApiError::NotFound("node"));
    }
    // A current agent is not sent the older agents' restart push: it would act on it, and
    // again on the pushes its next poll retries.
    let notified = if delivered {
        1
    } else if kind == ActionKind::Restart && current_agent {
        0
    } else {
        let message = PushMessage::Action {
            action: kind,
            target_version: action.target_version.clone(),
            download_url: action.download_url.clone(),
            checksum: action.checksum.clone(),
            signature: action.signature.clone(),
            pipeline_id: action.pipeline_id.clone(),
        };
        state.notifier.push(&[id], message).await
    };
    node_changed(&state.redis, id, "action");
    tracing::info!(node_id = %id, action = %action.kind, pipeline_id = ?action.pipeline_id, token_id = %op.token_id, "action requested");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(
            json!({ "pendingAction": pending, "action": action, "notifiedNodes": notified }),
        ),
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
    let environment: Option<Uuid> =
        sqlx::query_scalar("DELETE FROM nodes WHERE id = $1 RETURNING environment_id")
            .bind(id)
            .fetch_optional(&state.pool)
            .await?;
    let Some(environment) = environment else {
        return Err(ApiError::NotFound("node"));
    };
    crate::node_logs::forget(&state, id, environment).await;
    state.notifier.control(id, &ControlMessage::Revoke).await;
    node_changed(&state.redis, id, "revoked");
    tracing::info!(node_id = %id, "node revoked");
    Ok(StatusCode::NO_CONTENT)
}
