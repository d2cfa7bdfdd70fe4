//! Sample requests (editor; audited, since they make agents act) and their results (viewer).

use crate::audit::{self, Change};
use crate::auth::{Operator, Role};
use crate::error::{ApiError, Result};
use crate::extract::{id_of, Json};
use crate::selector::places_sql;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use flotilla_shared::frames::PushMessage;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

/// Sample routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/pipelines/{id}/samples", post(request))
        .route("/api/v1/samples/{id}", get(show))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct SampleRequestBody {
    component_keys: Vec<String>,
    limit: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SampleRow {
    component_key: String,
    node_id: Option<Uuid>,
    events: Option<Value>,
    schema: Option<Value>,
    error: Option<String>,
    created_at: DateTime<Utc>,
}

#[utoipa::path(
    post,
    path = "/api/v1/pipelines/{id}/samples",
    tag = "operator",
    params(("id" = String, Path, description = "id (UUID)")),
    request_body = SampleRequestBody,
    responses((status = 201, body = Object), crate::openapi::BodyErrors, crate::openapi::NotFound, crate::openapi::Conflict, crate::openapi::Invalid, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn request(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    Json(body): Json<SampleRequestBody>,
) -> Result<(StatusCode, axum::Json<Value>)> {
    op.require(Role::Editor)?;
    let pipeline = id_of(&id, "pipeline")?;
    let limit = body.limit.unwrap_or(5);
    if !(1..=50).contains(&limit) {
        return Err(ApiError::invalid("limit", "between 1 and 50"));
    }
    let mut keys = body.component_keys;
    keys.sort();
    keys.dedup();
    if keys.is_empty() || keys.len() > 50 || keys.iter().any(|k| k.is_empty() || k.len() > 256) {
        return Err(ApiError::invalid(
            "componentKeys",
            "1 to 50 non-empty component keys",
        ));
    }
    let deployed = sqlx::query!(
        "SELECT environment_id, deployed_version FROM pipelines WHERE id = $1",
        pipeline
    )
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound("pipeline"))?;
    let environment = deployed.environment_id;
    if deployed.deployed_version.is_none() {
        return Err(ApiError::Conflict("the pipeline is not deployed".into()));
    }
    let request_id = Uuid::new_v4();
    let ttl = state.settings.api.sample_request_ttl_secs as f64;
    let mut tx = state.pool.begin().await?;
    let expires_at: DateTime<Utc> = sqlx::query_scalar!(
        "INSERT INTO sample_requests (id, pipeline_id, environment_id, component_keys, sample_limit, expires_at)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6)) RETURNING expires_at",
        request_id,
        pipeline,
        environment,
        &keys,
        limit as i32,
        ttl
    )
    .fetch_one(&mut *tx)
    .await?;
    let detail = json!({ "requestId": request_id, "componentKeys": keys, "limit": limit });
    let change = Change {
        action: "sample.request",
        target_type: "pipeline",
        target_id: Some(pipeline.to_string()),
        detail: &detail,
    };
    audit::record(&mut *tx, &op, change).await?;
    tx.commit().await?;
    // Nodes that report it running and that its deployed version is placed on
    // ([`places_sql!`]), none in maintenance: a node claiming a pipeline it was never given
    // learns nothing of the request.
    let running: Vec<Uuid> = places_sql!(
        sqlx::query_scalar,
        ["SELECT s.node_id FROM node_pipeline_status s
     JOIN nodes n ON n.id = s.node_id
     JOIN pipelines p ON p.id = s.pipeline_id
     JOIN pipeline_versions v ON v.pipeline_id = p.id AND v.version = p.deployed_version
     WHERE s.pipeline_id = $1 AND s.status = 'RUNNING' AND n.environment_id = $2
       AND NOT n.maintenance AND " +],
        [, pipeline, environment]
    )
    .fetch_all(&state.pool)
    .await?;
    let message = PushMessage::SampleRequest {
        request_id: request_id.to_string(),
        pipeline_id: pipeline.to_string(),
        component_keys: keys,
        limit: limit as u32,
    };
    let notified = state.notifier.push(&running, message).await;
    Ok((
        StatusCode::CREATED,
        axum::Json(
            json!({ "requestId": request_id, "expiresAt": expires_at, "notifiedNodes": notified }),
        ),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/samples/{id}",
    tag = "operator",
    params(("id" = String, Path, description = "id (UUID)")),
    responses((status = 200, body = Object), crate::openapi::NotFound, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn show(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>> {
    op.require(Role::Viewer)?;
    let id = id_of(&id, "sample request")?;
    let req = sqlx::query!(
        r#"SELECT id, pipeline_id, component_keys, sample_limit,
                CASE WHEN status = 'PENDING' AND expires_at <= now() THEN 'EXPIRED' ELSE status END AS "status!",
                created_at, expires_at, completed_at
         FROM sample_requests WHERE id = $1"#,
        id
    )
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound("sample request"))?;
    let samples: Vec<SampleRow> = sqlx::query_as!(
        SampleRow,
        "SELECT component_key, node_id, events, schema, error, created_at FROM samples
         WHERE request_id = $1 ORDER BY component_key",
        id
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(axum::Json(json!({
        "requestId": req.id, "pipelineId": req.pipeline_id, "status": req.status,
        "componentKeys": req.component_keys, "limit": req.sample_limit,
        "createdAt": req.created_at, "expiresAt": req.expires_at, "completedAt": req.completed_at,
        "samples": samples,
    })))
}
