//! Environments: create, list, rotate the enrollment token (admin).

use crate::error::{ApiError, Result};
use crate::extract::{id_of, Json, Operator};
use crate::operator_auth::Role;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, Utc};
use flotilla_shared::tokens::{self, ENROLL_PREFIX};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

/// Environment routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/environments", post(create).get(list))
        .route("/api/v1/environments/{id}/enrollment-token", post(rotate))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct CreateEnvironment {
    name: String,
}

#[derive(Serialize, sqlx::FromRow)]
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
    sqlx::query(
        "INSERT INTO environments (id, name, enrollment_token_lookup, enrollment_token_hash, enrollment_token_hint)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(name)
    .bind(&issued.lookup)
    .bind(&hash)
    .bind(&hint)
    .execute(&state.pool)
    .await?;
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
    let rows: Vec<EnvironmentRow> = sqlx::query_as(
        "SELECT e.id, e.name, e.enrollment_token_hint, e.created_at,
                (SELECT count(*) FROM nodes n WHERE n.environment_id = e.id) AS node_count
         FROM environments e ORDER BY e.name",
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
    let updated = sqlx::query(
        "UPDATE environments SET enrollment_token_lookup = $2, enrollment_token_hash = $3, enrollment_token_hint = $4
         WHERE id = $1",
    )
    .bind(id)
    .bind(&issued.lookup)
    .bind(&hash)
    .bind(&hint)
    .execute(&state.pool)
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(ApiError::NotFound("environment"));
    }
    tracing::info!(environment_id = %id, "enrollment token rotated");
    Ok(axum::Json(
        json!({ "id": id, "enrollmentToken": issued.token, "enrollmentTokenHint": hint }),
    ))
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
    let existing: Option<(String, String)> = sqlx::query_as(
        "SELECT enrollment_token_lookup, enrollment_token_hash FROM environments WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    if let Some((lookup, hash)) = existing {
        if lookup == parsed.lookup && tokens::verify_secret(parsed.secret.to_owned(), hash).await {
            return Ok(());
        }
    }
    let hash = tokens::hash_secret(parsed.secret.to_owned(), cost).await?;
    sqlx::query(
        "INSERT INTO environments (id, name, enrollment_token_lookup, enrollment_token_hash, enrollment_token_hint)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (name) DO UPDATE SET enrollment_token_lookup = excluded.enrollment_token_lookup,
             enrollment_token_hash = excluded.enrollment_token_hash, enrollment_token_hint = excluded.enrollment_token_hint",
    )
    .bind(Uuid::new_v4())
    .bind(name)
    .bind(parsed.lookup)
    .bind(&hash)
    .bind(tokens::hint(token, ENROLL_PREFIX))
    .execute(pool)
    .await?;
    tracing::info!(environment = name, "bootstrap environment ready");
    Ok(())
}
