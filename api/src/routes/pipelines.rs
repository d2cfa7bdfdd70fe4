//! Pipelines: create, new versions, deploy, undeploy, rollback, delete — each change is
//! audited with it and notifies the nodes it reaches, with the selector before the change and
//! the one after it. Configs are checked as Vector would read them before they are stored.

use crate::audit::{self, Change};
use crate::auth::{Operator, Role};
use crate::error::{ApiError, Result};
use crate::extract::{id_of, Json, OptionalJson, Query};
use crate::selector::{matching_nodes, validate_labels, Placement, SelectorLabels};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use flotilla_shared::frames::{ConfigChangeReason, PushMessage};
use flotilla_shared::protocol::ErrorBody;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

/// Pipeline routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/pipelines", post(create).get(list))
        .route("/api/v1/pipelines/validate", post(validate))
        .route(
            "/api/v1/pipelines/{id}",
            get(show).put(update).delete(remove),
        )
        .route("/api/v1/pipelines/{id}/deploy", post(deploy))
        .route("/api/v1/pipelines/{id}/undeploy", post(undeploy))
        .route("/api/v1/pipelines/{id}/rollback", post(rollback))
}

const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];
const MAX_YAML: usize = 1 << 20;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct CreatePipeline {
    environment_id: Uuid,
    name: String,
    config_yaml: String,
    log_level: Option<String>,
    #[schema(value_type = Object)]
    node_selector: Option<Value>,
    /// Which node labels `nodeSelector` matches: `any` (reported or operator-set; the
    /// default) or `operator` (operator-set only, which an agent cannot claim).
    selector_labels: Option<SelectorLabels>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct UpdatePipeline {
    config_yaml: String,
    log_level: Option<String>,
    /// The new version's selector; omitted, the previous version's.
    #[schema(value_type = Object)]
    node_selector: Option<Value>,
    /// Which node labels `nodeSelector` matches (`any` or `operator`); omitted, the previous
    /// version's choice.
    selector_labels: Option<SelectorLabels>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ValidateBody {
    config_yaml: String,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
struct DeployBody {
    version: Option<i32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    environment_id: Option<Uuid>,
}

/// A pipeline as the operator API shows it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct PipelineRow {
    id: Uuid,
    environment_id: Uuid,
    name: String,
    latest_version: i32,
    deployed_version: Option<i32>,
    #[schema(value_type = Object)]
    node_selector: Value,
    /// Which node labels `nodeSelector` matches: `any` or `operator`.
    selector_labels: SelectorLabels,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionRow {
    version: i32,
    config_yaml: String,
    checksum: String,
    log_level: Option<String>,
    node_selector: Value,
    selector_labels: SelectorLabels,
    created_at: DateTime<Utc>,
}

/// Pipelines as [`PipelineRow`]s, `$rest` (literal SQL) choosing and ordering them; shows the
/// deployed version's selector, else the latest one's.
macro_rules! select_pipelines {
    ($rest:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            PipelineRow,
            r#"SELECT p.id, p.environment_id, p.name, p.latest_version, p.deployed_version,
        v.node_selector, v.selector_labels AS "selector_labels: SelectorLabels", p.created_at, p.updated_at
     FROM pipelines p
     JOIN pipeline_versions v ON v.pipeline_id = p.id AND v.version = coalesce(p.deployed_version, p.latest_version) "#
                + $rest
            $(, $arg)*
        )
    };
}

fn validate_version(
    yaml: &str,
    log_level: &Option<String>,
    selector: &Option<Value>,
) -> Result<()> {
    validate_yaml(yaml)?;
    if let Some(level) = log_level {
        if !LOG_LEVELS.contains(&level.as_str()) {
            return Err(ApiError::invalid(
                "logLevel",
                "one of trace, debug, info, warn, error",
            ));
        }
    }
    if let Some(s) = selector {
        validate_labels("nodeSelector", s)?;
    }
    Ok(())
}

/// Checks a config's size and its shape as Vector reads it (422 with the line otherwise).
fn validate_yaml(yaml: &str) -> Result<()> {
    if yaml.trim().is_empty() || yaml.len() > MAX_YAML {
        return Err(ApiError::invalid("configYaml", "non-empty, at most 1 MiB"));
    }
    crate::vector_config::validate(yaml)?;
    Ok(())
}

fn checksum(yaml: &str) -> String {
    flotilla_shared::auth::tokens::sha256_hex(yaml.as_bytes())
}

async fn insert_version(
    tx: &mut Transaction<'_, Postgres>,
    pipeline: Uuid,
    version: i32,
    yaml: &str,
    log_level: &Option<String>,
    placement: &Placement,
) -> Result<()> {
    sqlx::query!(
        "INSERT INTO pipeline_versions (pipeline_id, version, config_yaml, checksum, log_level, node_selector, selector_labels)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        pipeline,
        version,
        yaml,
        checksum(yaml),
        log_level.as_deref(),
        placement.selector,
        placement.labels.as_str()
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Creates pipeline `name` in environment `environment` from `yaml` and deploys its first
/// version to every node there, unless the environment already has a pipeline of that name
/// (then it is left as it is). Setup before any operator signs in (`flotilla-api
/// ensure-environment`), so no node is notified: agents enrolling afterwards poll it.
/// Returns whether it created the pipeline.
pub async fn ensure_bootstrap(
    pool: &sqlx::PgPool,
    environment: &str,
    name: &str,
    yaml: &str,
) -> anyhow::Result<bool> {
    validate_yaml(yaml).map_err(|e| anyhow::anyhow!("{e}: {:?}", error_details(&e)))?;
    let mut tx = pool.begin().await?;
    let id = Uuid::new_v4();
    let created = sqlx::query!(
        "INSERT INTO pipelines (id, environment_id, name, deployed_version)
         SELECT $1, e.id, $3, 1 FROM environments e
         WHERE e.name = $2
           AND NOT EXISTS (SELECT 1 FROM pipelines p WHERE p.environment_id = e.id AND p.name = $3)",
        id,
        environment,
        name
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if created {
        let placement = Placement {
            selector: json!({}),
            labels: SelectorLabels::default(),
        };
        insert_version(&mut tx, id, 1, yaml, &None, &placement).await?;
    }
    tx.commit().await?;
    Ok(created)
}

/// The `details` of a refusal, for messages outside HTTP.
fn error_details(e: &ApiError) -> Option<&Value> {
    match e {
        ApiError::Unprocessable { details, .. } | ApiError::BadRequest { details, .. } => {
            details.as_ref()
        }
        _ => None,
    }
}

async fn fetch(state: &AppState, id: Uuid) -> Result<PipelineRow> {
    select_pipelines!("WHERE p.id = $1", id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or(ApiError::NotFound("pipeline"))
}

#[utoipa::path(
    post,
    path = "/api/v1/pipelines",
    tag = "operator",
    request_body = CreatePipeline,
    responses((status = 201, body = PipelineRow), crate::openapi::BodyErrors, crate::openapi::NotFound, crate::openapi::Conflict, crate::openapi::Invalid, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn create(
    State(state): State<AppState>,
    op: Operator,
    Json(req): Json<CreatePipeline>,
) -> Result<(StatusCode, axum::Json<PipelineRow>)> {
    op.require(Role::Editor)?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid("name", "1 to 200 characters"));
    }
    validate_version(&req.config_yaml, &req.log_level, &req.node_selector)?;
    let exists: bool = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM environments WHERE id = $1) AS "exists!""#,
        req.environment_id
    )
    .fetch_one(&state.pool)
    .await?;
    if !exists {
        return Err(ApiError::NotFound("environment"));
    }
    let id = Uuid::new_v4();
    let mut tx = state.pool.begin().await?;
    sqlx::query!(
        "INSERT INTO pipelines (id, environment_id, name) VALUES ($1, $2, $3)",
        id,
        req.environment_id,
        name
    )
    .execute(&mut *tx)
    .await?;
    let placement = Placement {
        selector: req.node_selector.unwrap_or_else(|| json!({})),
        labels: req.selector_labels.unwrap_or_default(),
    };
    insert_version(&mut tx, id, 1, &req.config_yaml, &req.log_level, &placement).await?;
    let detail = json!({ "name": name, "environmentId": req.environment_id, "version": 1 });
    audit::record(&mut *tx, &op, change("pipeline.create", id, &detail)).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, axum::Json(fetch(&state, id).await?)))
}

#[utoipa::path(
    get,
    path = "/api/v1/pipelines",
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
    let rows: Vec<PipelineRow> = select_pipelines!(
        "WHERE $1::uuid IS NULL OR p.environment_id = $1 ORDER BY p.name",
        q.environment_id
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(axum::Json(json!({ "pipelines": rows })))
}

#[utoipa::path(
    get,
    path = "/api/v1/pipelines/{id}",
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
    let id = id_of(&id, "pipeline")?;
    let pipeline = fetch(&state, id).await?;
    let versions: Vec<VersionRow> = sqlx::query_as!(
        VersionRow,
        r#"SELECT version, config_yaml, checksum, log_level, node_selector,
                selector_labels AS "selector_labels: SelectorLabels", created_at
         FROM pipeline_versions WHERE pipeline_id = $1 ORDER BY version"#,
        id
    )
    .fetch_all(&state.pool)
    .await?;
    let mut body = json!(pipeline);
    body["versions"] = json!(versions);
    Ok(axum::Json(body))
}

#[utoipa::path(
    put,
    path = "/api/v1/pipelines/{id}",
    tag = "operator",
    params(("id" = String, Path, description = "id (UUID)")),
    request_body = UpdatePipeline,
    responses((status = 200, body = PipelineRow), crate::openapi::BodyErrors, crate::openapi::NotFound, crate::openapi::Invalid, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn update(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    Json(req): Json<UpdatePipeline>,
) -> Result<axum::Json<PipelineRow>> {
    op.require(Role::Editor)?;
    let id = id_of(&id, "pipeline")?;
    validate_version(&req.config_yaml, &req.log_level, &req.node_selector)?;
    let mut tx = state.pool.begin().await?;
    // Lock the pipeline row first: concurrent updates then take consecutive version numbers.
    let latest: Option<i32> = sqlx::query_scalar!(
        "SELECT latest_version FROM pipelines WHERE id = $1 FOR UPDATE",
        id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let latest = latest.ok_or(ApiError::NotFound("pipeline"))?;
    let previous = placement_of(&mut tx, id, latest)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    let version = latest + 1;
    sqlx::query!(
        "UPDATE pipelines SET latest_version = $2, updated_at = now() WHERE id = $1",
        id,
        version
    )
    .execute(&mut *tx)
    .await?;
    let placement = Placement {
        selector: req.node_selector.unwrap_or(previous.selector),
        labels: req.selector_labels.unwrap_or(previous.labels),
    };
    insert_version(
        &mut tx,
        id,
        version,
        &req.config_yaml,
        &req.log_level,
        &placement,
    )
    .await?;
    let detail = json!({ "version": version, "previousVersion": latest });
    audit::record(&mut *tx, &op, change("pipeline.update", id, &detail)).await?;
    tx.commit().await?;
    Ok(axum::Json(fetch(&state, id).await?))
}

/// Where version `version` of pipeline `id` runs, if it exists.
async fn placement_of(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    version: i32,
) -> Result<Option<Placement>> {
    Ok(sqlx::query_as!(
        Placement,
        r#"SELECT node_selector AS selector, selector_labels AS "labels: SelectorLabels"
         FROM pipeline_versions WHERE pipeline_id = $1 AND version = $2"#,
        id,
        version
    )
    .fetch_optional(&mut **tx)
    .await?)
}

/// A pipeline's deployment as a change finds it (the version columns are null when nothing
/// is deployed).
struct Deployment {
    environment_id: Uuid,
    name: String,
    latest_version: i32,
    deployed_version: Option<i32>,
    node_selector: Option<Value>,
    selector_labels: Option<String>,
}

/// Which version a change deploys.
enum Target {
    Version {
        version: Option<i32>,
        reason: ConfigChangeReason,
    },
    Undeploy,
}

/// Moves `deployed_version`, records it as `action`, and notifies every node that matched
/// before or matches after.
async fn change_deployment(
    state: &AppState,
    op: &Operator,
    action: &'static str,
    id: Uuid,
    target: Target,
) -> Result<axum::Json<Value>> {
    let mut tx = state.pool.begin().await?;
    let current: Option<Deployment> = sqlx::query_as!(
        Deployment,
        r#"SELECT p.environment_id, p.name, p.latest_version, p.deployed_version,
                v.node_selector AS "node_selector?", v.selector_labels AS "selector_labels?"
         FROM pipelines p LEFT JOIN pipeline_versions v ON v.pipeline_id = p.id AND v.version = p.deployed_version
         WHERE p.id = $1 FOR UPDATE OF p"#,
        id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Deployment {
        environment_id: environment,
        latest_version: latest,
        deployed_version: previous,
        node_selector,
        selector_labels,
        ..
    } = current.ok_or(ApiError::NotFound("pipeline"))?;
    let before = Placement::of(node_selector, selector_labels);
    let (new_version, after, reason) = match target {
        Target::Undeploy => (None, None, ConfigChangeReason::Undeploy),
        Target::Version { version, reason } => {
            let version = version.unwrap_or(latest);
            let placement = placement_of(&mut tx, id, version)
                .await?
                .ok_or_else(|| ApiError::invalid("version", "no such version"))?;
            (Some(version), Some(placement), reason)
        }
    };
    sqlx::query!(
        "UPDATE pipelines SET deployed_version = $2, updated_at = now() WHERE id = $1",
        id,
        new_version
    )
    .execute(&mut *tx)
    .await?;
    let detail = json!({ "fromVersion": previous, "toVersion": new_version });
    audit::record(&mut *tx, op, change(action, id, &detail)).await?;
    tx.commit().await?;
    let nodes =
        matching_nodes(&state.pool, environment, &[before.as_ref(), after.as_ref()]).await?;
    let notified = state
        .notifier
        .push(
            &nodes,
            PushMessage::ConfigChanged {
                pipeline_id: Some(id.to_string()),
                reason,
            },
        )
        .await;
    tracing::info!(pipeline_id = %id, version = ?new_version, ?reason, nodes = nodes.len(), "deployment changed");
    Ok(axum::Json(
        json!({ "deployedVersion": new_version, "notifiedNodes": notified }),
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/pipelines/{id}/deploy",
    tag = "operator",
    params(("id" = String, Path, description = "id (UUID)")),
    request_body(content = Option<DeployBody>, description = "optional; empty means the latest version"),
    responses((status = 200, body = Object), crate::openapi::BodyErrors, crate::openapi::NotFound, crate::openapi::Invalid, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn deploy(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<DeployBody>,
) -> Result<axum::Json<Value>> {
    op.require(Role::Editor)?;
    let id = id_of(&id, "pipeline")?;
    let version = body.version;
    change_deployment(
        &state,
        &op,
        "pipeline.deploy",
        id,
        Target::Version {
            version,
            reason: ConfigChangeReason::Deploy,
        },
    )
    .await
}

#[utoipa::path(
    post,
    path = "/api/v1/pipelines/{id}/rollback",
    tag = "operator",
    params(("id" = String, Path, description = "id (UUID)")),
    request_body = DeployBody,
    responses((status = 200, body = Object), crate::openapi::BodyErrors, crate::openapi::NotFound, crate::openapi::Invalid, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn rollback(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    Json(body): Json<DeployBody>,
) -> Result<axum::Json<Value>> {
    op.require(Role::Editor)?;
    let id = id_of(&id, "pipeline")?;
    let version = body
        .version
        .ok_or_else(|| ApiError::invalid("version", "required"))?;
    change_deployment(
        &state,
        &op,
        "pipeline.rollback",
        id,
        Target::Version {
            version: Some(version),
            reason: ConfigChangeReason::Rollback,
        },
    )
    .await
}

#[utoipa::path(
    post,
    path = "/api/v1/pipelines/{id}/undeploy",
    tag = "operator",
    params(("id" = String, Path, description = "id (UUID)")),
    responses((status = 200, body = Object), crate::openapi::NotFound, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn undeploy(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>> {
    op.require(Role::Editor)?;
    let id = id_of(&id, "pipeline")?;
    change_deployment(&state, &op, "pipeline.undeploy", id, Target::Undeploy).await
}

#[utoipa::path(
    delete,
    path = "/api/v1/pipelines/{id}",
    tag = "operator",
    params(("id" = String, Path, description = "id (UUID)")),
    responses((status = 204, description = "deleted"), crate::openapi::NotFound, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn remove(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    op.require(Role::Editor)?;
    let id = id_of(&id, "pipeline")?;
    let mut tx = state.pool.begin().await?;
    // The versions are still visible to this statement (it sees the rows as they were).
    let deleted: Option<Deployment> = sqlx::query_as!(
        Deployment,
        r#"WITH gone AS (DELETE FROM pipelines WHERE id = $1 RETURNING environment_id, name, latest_version, deployed_version)
         SELECT g.environment_id AS "environment_id!", g.name AS "name!", g.latest_version AS "latest_version!",
                g.deployed_version, v.node_selector AS "node_selector?", v.selector_labels AS "selector_labels?"
         FROM gone g LEFT JOIN pipeline_versions v ON v.pipeline_id = $1 AND v.version = g.deployed_version"#,
        id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let deleted = deleted.ok_or(ApiError::NotFound("pipeline"))?;
    let detail = json!({ "name": deleted.name, "deployedVersion": deleted.deployed_version });
    audit::record(&mut *tx, &op, change("pipeline.delete", id, &detail)).await?;
    tx.commit().await?;
    let before = Placement::of(deleted.node_selector, deleted.selector_labels);
    let nodes = matching_nodes(&state.pool, deleted.environment_id, &[before.as_ref()]).await?;
    state
        .notifier
        .push(
            &nodes,
            PushMessage::ConfigChanged {
                pipeline_id: Some(id.to_string()),
                reason: ConfigChangeReason::Delete,
            },
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// An audit record of a change to pipeline `id`.
fn change<'a>(action: &'static str, id: Uuid, detail: &'a Value) -> Change<'a> {
    Change {
        action,
        target_type: "pipeline",
        target_id: Some(id.to_string()),
        detail,
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/pipelines/validate",
    tag = "operator",
    request_body = ValidateBody,
    responses((status = 200, description = "`{valid: true}`", body = Object), crate::openapi::BodyErrors, crate::openapi::Invalid, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn validate(op: Operator, Json(req): Json<ValidateBody>) -> Result<axum::Json<Value>> {
    op.require(Role::Editor)?;
    validate_yaml(&req.config_yaml)?;
    Ok(axum::Json(json!({ "valid": true })))
}
