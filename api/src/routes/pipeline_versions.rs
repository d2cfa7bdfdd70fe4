//! A pipeline's stored versions (viewer): the list, one version with its YAML, and a unified
//! diff between any two.

use crate::auth::{Operator, Role};
use crate::error::{ApiError, Result};
use crate::extract::{id_of, Query};
use crate::selector::SelectorLabels;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use similar::TextDiff;
use uuid::Uuid;

/// Longest a diff may search for the smallest edit.
const DIFF_DEADLINE: std::time::Duration = std::time::Duration::from_millis(500);

/// Pipeline version routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/pipelines/{id}/versions", get(list))
        .route("/api/v1/pipelines/{id}/versions/{version}", get(show))
        .route("/api/v1/pipelines/{id}/diff", get(diff))
}

/// One version, without its YAML.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionSummary {
    version: i32,
    /// Hex SHA-256 of the YAML.
    checksum: String,
    log_level: Option<String>,
    #[schema(value_type = Object)]
    node_selector: Value,
    selector_labels: SelectorLabels,
    created_at: DateTime<Utc>,
}

/// A pipeline's versions, newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct VersionList {
    versions: Vec<VersionSummary>,
}

/// One version with its YAML, byte for byte as saved.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionDetail {
    version: i32,
    config_yaml: String,
    checksum: String,
    log_level: Option<String>,
    #[schema(value_type = Object)]
    node_selector: Value,
    selector_labels: SelectorLabels,
    created_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct DiffQuery {
    from: Option<i32>,
    to: Option<i32>,
}

/// The unified diff from one version's YAML to another's.
#[derive(Serialize, utoipa::ToSchema)]
pub struct VersionDiff {
    from: i32,
    to: i32,
    /// Unified diff text (empty when the two are the same).
    diff: String,
}

/// The pipeline's `(latest, deployed)` versions; 404 when it does not exist.
async fn versions_of(state: &AppState, id: Uuid) -> Result<(i32, Option<i32>)> {
    let versions = sqlx::query!(
        "SELECT latest_version, deployed_version FROM pipelines WHERE id = $1",
        id
    )
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound("pipeline"))?;
    Ok((versions.latest_version, versions.deployed_version))
}

async fn yaml_of(state: &AppState, id: Uuid, version: i32) -> Result<String> {
    sqlx::query_scalar!(
        "SELECT config_yaml FROM pipeline_versions WHERE pipeline_id = $1 AND version = $2",
        id,
        version
    )
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound("pipeline version"))
}

#[utoipa::path(
    get,
    path = "/api/v1/pipelines/{id}/versions",
    tag = "operator",
    params(("id" = String, Path, description = "pipeline id (UUID)")),
    responses((status = 200, body = VersionList), crate::openapi::NotFound, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn list(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<axum::Json<VersionList>> {
    op.require(Role::Viewer)?;
    let id = id_of(&id, "pipeline")?;
    versions_of(&state, id).await?;
    let versions = sqlx::query_as!(
        VersionSummary,
        r#"SELECT version, checksum, log_level, node_selector,
                selector_labels AS "selector_labels: SelectorLabels", created_at
         FROM pipeline_versions WHERE pipeline_id = $1 ORDER BY version DESC"#,
        id
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(axum::Json(VersionList { versions }))
}

#[utoipa::path(
    get,
    path = "/api/v1/pipelines/{id}/versions/{version}",
    tag = "operator",
    params(
        ("id" = String, Path, description = "pipeline id (UUID)"),
        ("version" = i32, Path, description = "version number"),
    ),
    responses((status = 200, body = VersionDetail), crate::openapi::NotFound, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn show(
    State(state): State<AppState>,
    op: Operator,
    Path((id, version)): Path<(String, String)>,
) -> Result<axum::Json<VersionDetail>> {
    op.require(Role::Viewer)?;
    let id = id_of(&id, "pipeline")?;
    // Anything but a version number names no version.
    let version: i32 = version
        .parse()
        .map_err(|_| ApiError::NotFound("pipeline version"))?;
    versions_of(&state, id).await?;
    sqlx::query_as!(
        VersionDetail,
        r#"SELECT version, config_yaml, checksum, log_level, node_selector,
                selector_labels AS "selector_labels: SelectorLabels", created_at
         FROM pipeline_versions WHERE pipeline_id = $1 AND version = $2"#,
        id,
        version
    )
    .fetch_optional(&state.pool)
    .await?
    .map(axum::Json)
    .ok_or(ApiError::NotFound("pipeline version"))
}

#[utoipa::path(
    get,
    path = "/api/v1/pipelines/{id}/diff",
    tag = "operator",
    params(
        ("id" = String, Path, description = "pipeline id (UUID)"),
        ("from" = Option<i32>, Query, description = "older side; default the deployed version, else the one before the latest"),
        ("to" = Option<i32>, Query, description = "newer side; default the latest version"),
    ),
    responses((status = 200, body = VersionDiff), (status = 400, description = "bad query", body = flotilla_shared::protocol::ErrorBody), crate::openapi::NotFound, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn diff(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    Query(q): Query<DiffQuery>,
) -> Result<axum::Json<VersionDiff>> {
    op.require(Role::Viewer)?;
    let id = id_of(&id, "pipeline")?;
    let (latest, deployed) = versions_of(&state, id).await?;
    let to = q.to.unwrap_or(latest);
    let from = q
        .from
        .unwrap_or_else(|| deployed.unwrap_or((latest - 1).max(1)));
    let old = yaml_of(&state, id, from).await?;
    let new = yaml_of(&state, id, to).await?;
    // Two 1 MiB configs can take a while to diff: off the async workers, and with a deadline
    // past which the diff is coarser (whole changed regions) rather than slower.
    let diff = tokio::task::spawn_blocking(move || {
        TextDiff::configure()
            .timeout(DIFF_DEADLINE)
            .diff_lines(&old, &new)
            .unified_diff()
            .context_radius(3)
            .header(&format!("version {from}"), &format!("version {to}"))
            .to_string()
    })
    .await
    .map_err(|e| anyhow::anyhow!("diff failed: {e}"))?;
    Ok(axum::Json(VersionDiff { from, to, diff }))
}
