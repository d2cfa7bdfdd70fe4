//! One node: its detail, and the admin's changes to it (labels, maintenance, an action,
//! revocation), each audited in the change's own transaction.

use super::rules::{is_docker, push_of, validate_action};
use super::{load_node, NodeView};
use crate::audit::{self, Change};
use crate::auth::{Operator, Role};
use crate::error::{ApiError, Result};
use crate::extract::{id_of, Json, Query};
use crate::fleet_events::node_changed;
use crate::selector::validate_labels;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use flotilla_shared::channels::ControlMessage;
use flotilla_shared::frames::{ActionKind, ConfigChangeReason, PushMessage};
use flotilla_shared::protocol::PendingAction;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

#[utoipa::path(
    get,
    path = "/api/v1/fleet/{id}",
    tag = "operator",
    params(
        ("id" = String, Path, description = "id (UUID)"),
        ("recentLogs" = Option<bool>, Query, description = "false: leave each pipeline's kept log lines out (default true)"),
    ),
    responses((status = 200, body = NodeView), (status = 400, description = "bad query", body = flotilla_shared::protocol::ErrorBody), crate::openapi::NotFound, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
pub(crate) async fn show(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Result<axum::Json<NodeView>> {
    op.require(Role::Viewer)?;
    let id = id_of(&id, "node")?;
    let logs = q.recent_logs.unwrap_or(true);
    Ok(axum::Json(super::load_node_with(&state, id, logs).await?))
}

/// What `GET /api/v1/fleet/{id}` may leave out.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ShowQuery {
    recent_logs: Option<bool>,
}

/// A node's new operator labels.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct LabelsBody {
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
pub(crate) async fn labels(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    Json(body): Json<LabelsBody>,
) -> Result<axum::Json<NodeView>> {
    op.require(Role::Admin)?;
    let id = id_of(&id, "node")?;
    let labels = Value::Object(validate_labels("labels", &body.labels)?);
    let detail = json!({ "labels": labels });
    set_column(
        &state,
        &op,
        id,
        Column::Labels(labels),
        "node.labels",
        &detail,
    )
    .await?;
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

/// Maintenance on or off.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct MaintenanceBody {
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
pub(crate) async fn maintenance(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    Json(body): Json<MaintenanceBody>,
) -> Result<axum::Json<NodeView>> {
    op.require(Role::Admin)?;
    let id = id_of(&id, "node")?;
    let detail = json!({ "enabled": body.enabled });
    let (column, action) = (Column::Maintenance(body.enabled), "node.maintenance");
    set_column(&state, &op, id, column, action, &detail).await?;
    state
        .notifier
        .push(
            &[id],
            PushMessage::ConfigChanged {
                pipeline_id: None,
                reason: maintenance_reason(body.enabled),
            },
        )
        .await;
    node_changed(&state.redis, id, "maintenance");
    Ok(axum::Json(load_node(&state, id).await?))
}

/// The `config_changed` reason of turning maintenance on or off.
pub(crate) fn maintenance_reason(enabled: bool) -> ConfigChangeReason {
    if enabled {
        ConfigChangeReason::MaintenanceOn
    } else {
        ConfigChangeReason::MaintenanceOff
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
pub(crate) async fn action(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    Json(body): Json<PendingAction>,
) -> Result<(StatusCode, axum::Json<Value>)> {
    op.require(Role::Admin)?;
    let id = id_of(&id, "node")?;
    let (kind, action) = validate_action(body, &state.self_update_hosts)?;
    let node = sqlx::query!(
        r#"SELECT environment_id, deployment_mode, agent_health IS NOT NULL AS "current_agent!" FROM nodes WHERE id = $1"#,
        id
    )
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound("node"))?;
    let (environment, deployment_mode, current_agent) = (
        node.environment_id,
        node.deployment_mode,
        node.current_agent,
    );
    if kind == ActionKind::SelfUpdate && is_docker(deployment_mode.as_deref()) {
        return Err(ApiError::Conflict(
            "the node runs in Docker (deploymentMode DOCKER), where the agent cannot replace itself: update its image instead".into(),
        ));
    }
    if let Some(p) = &action.pipeline_id {
        // The id is bound as the text it was given, and cast by the statement.
        let known: bool = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM pipelines WHERE id = $1::uuid AND environment_id = $2) AS "exists!""#,
            p as _,
            environment
        )
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
    let detail = json!({ "action": action, "pending": pending.is_some() });
    let column = Column::PendingAction(pending.clone());
    set_column(&state, &op, id, column, "node.action", &detail).await?;
    // A current agent is not sent the older agents' restart push: it would act on it, and
    // again on the pushes its next poll retries.
    let notified = if delivered {
        1
    } else if kind == ActionKind::Restart && current_agent {
        0
    } else {
        state.notifier.push(&[id], push_of(kind, &action)).await
    };
    node_changed(&state.redis, id, "action");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(
            json!({ "pendingAction": pending, "action": action, "notifiedNodes": notified }),
        ),
    ))
}

/// The node columns an admin sets one at a time, each with its new value.
enum Column {
    Labels(Value),
    Maintenance(bool),
    PendingAction(Option<Value>),
}

/// Sets `column` of node `id` to its value and records the change as `action` with `detail`,
/// in one transaction; 404 when there is no such node.
async fn set_column(
    state: &AppState,
    op: &Operator,
    id: Uuid,
    column: Column,
    action: &'static str,
    detail: &Value,
) -> Result<()> {
    let mut tx = state.pool.begin().await?;
    let update = match column {
        Column::Labels(labels) => {
            sqlx::query!("UPDATE nodes SET labels = $2 WHERE id = $1", id, labels)
                .execute(&mut *tx)
                .await?
        }
        Column::Maintenance(on) => {
            sqlx::query!("UPDATE nodes SET maintenance = $2 WHERE id = $1", id, on)
                .execute(&mut *tx)
                .await?
        }
        Column::PendingAction(pending) => {
            sqlx::query!(
                "UPDATE nodes SET pending_action = $2 WHERE id = $1",
                id,
                pending
            )
            .execute(&mut *tx)
            .await?
        }
    };
    let n = update.rows_affected();
    if n == 0 {
        return Err(ApiError::NotFound("node"));
    }
    let change = Change {
        action,
        target_type: "node",
        target_id: Some(id.to_string()),
        detail,
    };
    audit::record(&mut *tx, op, change).await?;
    tx.commit().await?;
    Ok(())
}

#[utoipa::path(
    delete,
    path = "/api/v1/fleet/{id}",
    tag = "operator",
    params(("id" = String, Path, description = "id (UUID)")),
    responses((status = 204, description = "revoked"), crate::openapi::NotFound, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    op.require(Role::Admin)?;
    let id = id_of(&id, "node")?;
    // Deleting the row is the revocation: every authenticator re-reads it on each request.
    let mut tx = state.pool.begin().await?;
    let revoked = sqlx::query!(
        "DELETE FROM nodes WHERE id = $1 RETURNING environment_id, host",
        id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some((environment, host)) = revoked.map(|n| (n.environment_id, n.host)) else {
        return Err(ApiError::NotFound("node"));
    };
    let change = Change {
        action: "node.revoke",
        target_type: "node",
        target_id: Some(id.to_string()),
        detail: &json!({ "host": host, "environmentId": environment }),
    };
    audit::record(&mut *tx, &op, change).await?;
    tx.commit().await?;
    crate::node_logs::forget(&state, id, environment).await;
    state.notifier.control(id, &ControlMessage::Revoke).await;
    node_changed(&state.redis, id, "revoked");
    Ok(StatusCode::NO_CONTENT)
}
