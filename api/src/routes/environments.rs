//! Environments: create, list, rotate the enrollment token (admin), and preview which of
//! their nodes a selector matches (viewer).

use crate::audit::{self, Change};
use crate::auth::{Operator, Role};
use crate::error::{ApiError, Result};
use crate::extract::{id_of, Json};
use crate::selector::{matches_sql, selector_params, validate_labels, Placement, SelectorLabels};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, Utc};
use flotilla_shared::auth::tokens::{self, ENROLL_PREFIX};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

/// Environment routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/environments", post(create).get(list))
        .route("/api/v1/environments/{id}/enrollment-token", post(rotate))
        .route(
            "/api/v1/environments/{id}/selector-preview",
            post(selector_preview),
        )
}

#[derive(Deserialize, utoipa::ToSchema)]
struct CreateEnvironment {
    name: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvironmentRow {
    id: Uuid,
    name: String,
    enrollment_token_hint: String,
    created_at: DateTime<Utc>,
    node_count: i64,
}

async fn issue_enrollment_token(state: &AppState) -> Result<(tokens::IssuedToken, String, String)> {
    let issued = tokens::issue(ENROLL_PREFIX);
    let hash = tokens::hash_secret(issued.secret.clone(), state.settings.auth.bcrypt_cost)
        .await
        .map_err(anyhow::Error::from)?;
    let hint = tokens::hint(&issued.token, ENROLL_PREFIX);
    Ok((issued, hash, hint))
}

#[utoipa::path(
    post,
    path = "/api/v1/environments",
    tag = "operator",
    request_body = CreateEnvironment,
    responses((status = 201, description = "created; the enrollment token is shown once", body = Object), crate::openapi::BodyErrors, crate::openapi::Conflict, crate::openapi::Invalid, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn create(
    State(state): State<AppState>,
    op: Operator,
    Json(req): Json<CreateEnvironment>,
) -> Result<(StatusCode, axum::Json<Value>)> {
    op.require(Role::Admin)?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::invalid("name", "1 to 100 characters"));
    }
    let (issued, hash, hint) = issue_enrollment_token(&state).await?;
    let id = Uuid::new_v4();
    let mut tx = state.pool.begin().await?;
    sqlx::query!(
        "INSERT INTO environments (id, name, enrollment_token_lookup, enrollment_token_hash, enrollment_token_hint)
         VALUES ($1, $2, $3, $4, $5)",
        id,
        name,
        issued.lookup,
        hash,
        hint
    )
    .execute(&mut *tx)
    .await?;
    let detail = json!({ "name": name });
    audit::record(&mut *tx, &op, change("environment.create", id, &detail)).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(
            json!({ "id": id, "name": name, "enrollmentToken": issued.token, "enrollmentTokenHint": hint }),
        ),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/environments",
    tag = "operator",
    responses((status = 200, body = Object), crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn list(State(state): State<AppState>, op: Operator) -> Result<axum::Json<Value>> {
    op.require(Role::Viewer)?;
    let rows: Vec<EnvironmentRow> = sqlx::query_as!(
        EnvironmentRow,
        r#"SELECT e.id, e.name, e.enrollment_token_hint, e.created_at,
                (SELECT count(*) FROM nodes n WHERE n.environment_id = e.id) AS "node_count!"
         FROM environments e ORDER BY e.name"#
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(axum::Json(json!({ "environments": rows })))
}

#[utoipa::path(
    post,
    path = "/api/v1/environments/{id}/enrollment-token",
    tag = "operator",
    params(("id" = String, Path, description = "id (UUID)")),
    responses((status = 200, description = "the new token, shown once", body = Object), crate::openapi::NotFound, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn rotate(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>> {
    op.require(Role::Admin)?;
    let id = id_of(&id, "environment")?;
    let (issued, hash, hint) = issue_enrollment_token(&state).await?;
    let mut tx = state.pool.begin().await?;
    let name: Option<String> = sqlx::query_scalar!(
        "UPDATE environments SET enrollment_token_lookup = $2, enrollment_token_hash = $3, enrollment_token_hint = $4
         WHERE id = $1 RETURNING name",
        id,
        issued.lookup,
        hash,
        hint
    )
    .fetch_optional(&mut *tx)
    .await?;
    let name = name.ok_or(ApiError::NotFound("environment"))?;
    // The token is shown once, to the caller; the trail says only that it changed.
    let detail = json!({ "name": name });
    audit::record(&mut *tx, &op, change("environment.rotate", id, &detail)).await?;
    tx.commit().await?;
    Ok(axum::Json(
        json!({ "id": id, "enrollmentToken": issued.token, "enrollmentTokenHint": hint }),
    ))
}

/// An audit record of a change to environment `id`.
fn change<'a>(action: &'static str, id: Uuid, detail: &'a Value) -> Change<'a> {
    Change {
        action,
        target_type: "environment",
        target_id: Some(id.to_string()),
        detail,
    }
}

/// Rows a selector preview shows.
const PREVIEW_ROWS: i64 = 20;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct PreviewBody {
    /// Label map a node must contain (`{}` matches every node).
    #[schema(value_type = Object)]
    node_selector: Value,
    /// Which node labels it matches: `any` (the default) or `operator`.
    selector_labels: Option<SelectorLabels>,
}

/// A node a selector matches.
#[derive(Serialize, utoipa::ToSchema)]
struct PreviewNode {
    id: Uuid,
    host: String,
    status: String,
    /// Effective labels: the reported ones overlaid with the operator's.
    #[schema(value_type = Object)]
    labels: Value,
    /// In maintenance: it gets the pipeline only when maintenance ends.
    maintenance: bool,
}

/// How many nodes a selector matches, and the first of them by host.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct Preview {
    /// Matching nodes that would run the pipeline now.
    count: i64,
    /// Matching nodes in maintenance, which get it when maintenance ends.
    in_maintenance: i64,
    nodes: Vec<PreviewNode>,
}

#[utoipa::path(
    post,
    path = "/api/v1/environments/{id}/selector-preview",
    tag = "operator",
    params(("id" = String, Path, description = "environment id (UUID)")),
    request_body = PreviewBody,
    responses((status = 200, description = "the count and the first 20 nodes by host", body = Preview), crate::openapi::BodyErrors, crate::openapi::NotFound, crate::openapi::Invalid, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn selector_preview(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    Json(req): Json<PreviewBody>,
) -> Result<axum::Json<Preview>> {
    op.require(Role::Viewer)?;
    let id = id_of(&id, "environment")?;
    validate_labels("nodeSelector", &req.node_selector)?;
    let exists: bool = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM environments WHERE id = $1) AS "exists!""#,
        id
    )
    .fetch_one(&state.pool)
    .await?;
    if !exists {
        return Err(ApiError::NotFound("environment"));
    }
    let placement = Placement {
        selector: req.node_selector,
        labels: req.selector_labels.unwrap_or_default(),
    };
    // The very predicate deploys notify with, so the preview is what a deploy reaches.
    let (any, operator) = selector_params(&[Some(&placement)])
        .ok_or_else(|| anyhow::anyhow!("a placement gives selector parameters"))?;
    // A node in maintenance runs no pipelines (its config lists none) until it ends.
    let counts = matches_sql!(
        sqlx::query,
        [r#"SELECT count(*) FILTER (WHERE NOT n.maintenance) AS "count!", count(*) FILTER (WHERE n.maintenance) AS "in_maintenance!"
         FROM nodes n WHERE n.environment_id = $1 AND "# +],
        [, id, any, operator]
    )
    .fetch_one(&state.pool)
    .await?;
    let nodes: Vec<PreviewNode> = matches_sql!(
        sqlx::query_as,
        [PreviewNode, r#"SELECT n.id, n.host, n.status, n.reported_labels || n.labels AS "labels!", n.maintenance
         FROM nodes n WHERE n.environment_id = $1 AND "# +],
        [+ "
         ORDER BY n.host, n.id LIMIT $4", id, any, operator, PREVIEW_ROWS]
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(axum::Json(Preview {
        count: counts.count,
        in_maintenance: counts.in_maintenance,
        nodes,
    }))
}

/// Creates environment `name` if missing and makes `token` its enrollment token.
pub async fn ensure_bootstrap(
    pool: &sqlx::PgPool,
    name: &str,
    token: &str,
    cost: u32,
) -> anyhow::Result<()> {
    let parsed = tokens::parse(ENROLL_PREFIX, token)
        .ok_or_else(|| anyhow::anyhow!("malformed enrollment token"))?;
    let existing = sqlx::query!(
        "SELECT enrollment_token_lookup, enrollment_token_hash FROM environments WHERE name = $1",
        name
    )
    .fetch_optional(pool)
    .await?;
    if let Some(env) = existing {
        if env.enrollment_token_lookup == parsed.lookup
            && tokens::verify_secret(parsed.secret.to_owned(), env.enrollment_token_hash).await
        {
            return Ok(());
        }
    }
    let hash = tokens::hash_secret(parsed.secret.to_owned(), cost).await?;
    sqlx::query!(
        "INSERT INTO environments (id, name, enrollment_token_lookup, enrollment_token_hash, enrollment_token_hint)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name) DO UPDATE SET enrollment_token_lookup = excluded.enrollment_token_lookup,
             enrollment_token_hash = excluded.enrollment_token_hash, enrollment_token_hint = excluded.enrollment_token_hint",
        Uuid::new_v4(),
        name,
        parsed.lookup,
        hash,
        tokens::hint(token, ENROLL_PREFIX)
    )
    .execute(pool)
    .await?;
    tracing::info!(environment = name, "bootstrap environment ready");
    Ok(())
}
