//! `GET /api/agent/config`: what the node must run, plus pending samples and actions.

use crate::error::Result;
use crate::extract::NodeCaller;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
#[allow(unused_imports)]
use flotilla_shared::protocol::{
    ConfigResponse, PendingAction, PipelineConfig, SampleRequestConfig,
};
use serde_json::Value;
use uuid::Uuid;

/// Config route.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/agent/config", get(config))
}

#[derive(sqlx::FromRow)]
struct NodeRow {
    pending_action: Option<Value>,
    poll_interval_ms: i32,
}

#[derive(sqlx::FromRow)]
struct PipelineRow {
    id: Uuid,
    name: String,
    version: i32,
    config_yaml: String,
    checksum: String,
    log_level: Option<String>,
}

#[derive(sqlx::FromRow)]
struct SampleRow {
    id: Uuid,
    pipeline_id: Uuid,
    component_keys: Vec<String>,
    sample_limit: i32,
}

#[utoipa::path(
    get,
    path = "/api/agent/config",
    tag = "agent",
    responses((status = 200, body = ConfigResponse), crate::openapi::NodeErrors),
    security(("node_token" = []))
)]
async fn config(
    State(state): State<AppState>,
    NodeCaller(node): NodeCaller,
) -> Result<Json<ConfigResponse>> {
    let row: NodeRow = sqlx::query_as(
        "SELECT pending_action, (SELECT poll_interval_ms FROM settings) AS poll_interval_ms FROM nodes WHERE id = $1",
    )
    .bind(node.node_id)
    .fetch_one(&state.pool)
    .await?;
    // Deployed pipelines of the node's environment whose selector its labels satisfy;
    // none while the node is in maintenance.
    let pipelines: Vec<PipelineRow> = sqlx::query_as(
        "SELECT p.id, p.name, v.version, v.config_yaml, v.checksum, v.log_level
         FROM nodes n
         JOIN pipelines p ON p.environment_id = n.environment_id
         JOIN pipeline_versions v ON v.pipeline_id = p.id AND v.version = p.deployed_version
         WHERE n.id = $1 AND NOT n.maintenance AND (n.reported_labels || n.labels) @> v.node_selector
         ORDER BY p.name",
    )
    .bind(node.node_id)
    .fetch_all(&state.pool)
    .await?;
    let ids: Vec<Uuid> = pipelines.iter().map(|p| p.id).collect();
    let samples: Vec<SampleRow> = if ids.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT id, pipeline_id, component_keys, sample_limit FROM sample_requests
             WHERE status = 'PENDING' AND expires_at > now() AND pipeline_id = ANY($1)
             ORDER BY created_at",
        )
        .bind(&ids)
        .fetch_all(&state.pool)
        .await?
    };
    let pending_action = pending_action(&state, node.node_id, row.pending_action).await?;

    Ok(Json(ConfigResponse {
        pipelines: pipelines
            .into_iter()
            .map(|p| PipelineConfig {
                pipeline_id: p.id,
                pipeline_name: p.name,
                version: p.version,
                config_yaml: p.config_yaml,
                checksum: p.checksum,
                log_level: p.log_level,
                secrets: None,
                cert_files: None,
            })
            .collect(),
        poll_interval_ms: row.poll_interval_ms as u64,
        websocket_url: state.settings.api.public_ws_url.clone(),
        secret_backend: "BUILTIN".into(),
        sample_requests: (!samples.is_empty()).then(|| {
            samples
                .into_iter()
                .map(|s| SampleRequestConfig {
                    request_id: s.id,
                    pipeline_id: s.pipeline_id,
                    component_keys: s.component_keys,
                    limit: s.sample_limit as u32,
                })
                .collect()
        }),
        pending_action,
    }))
}

/// The node's pending action. A restart is handed out once (it is consumed by this poll);
/// a self-update stays until the heartbeat reports the target version or an error.
async fn pending_action(
    state: &AppState,
    node: Uuid,
    stored: Option<Value>,
) -> Result<Option<PendingAction>> {
    let Some(value) = stored else { return Ok(None) };
    let action: Option<PendingAction> = serde_json::from_value(value).ok();
    if let Some(a) = &action {
        if a.kind == "restart" {
            let taken = sqlx::query(
                "UPDATE nodes SET pending_action = NULL WHERE id = $1 AND pending_action->>'type' = 'restart'",
            )
            .bind(node)
            .execute(&state.pool)
            .await?
            .rows_affected();
            // A concurrent poll took it first: it is that poll's to deliver.
            if taken == 0 {
                return Ok(None);
            }
        }
    }
    Ok(action)
}
