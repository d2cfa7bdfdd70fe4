//! Operator tokens (admin): issue, list, revoke. Tokens are shown once, hashes never.

use crate::error::{ApiError, Result};
use crate::extract::{id_of, Json, Operator};
use crate::operator_auth::{create_token, Role};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

/// Token routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tokens", post(create).get(list))
        .route("/api/v1/tokens/{id}", delete(revoke))
}

#[derive(Deserialize)]
struct CreateToken {
    name: String,
    role: Role,
}

#[derive(Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
struct TokenRow {
    id: Uuid,
    name: String,
    role: String,
    revoked: bool,
    bootstrap: bool,
    created_at: DateTime<Utc>,
}

async fn create(
    State(state): State<AppState>,
    op: Operator,
    Json(req): Json<CreateToken>,
) -> Result<(StatusCode, axum::Json<Value>)> {
    op.require(Role::Admin)?;
    let name = req.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::invalid("name", "1 to 100 characters"));
    }
    let (id, token) =
        create_token(&state.pool, name, req.role, state.settings.auth.bcrypt_cost).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "id": id, "name": name, "role": req.role, "token": token })),
    ))
}

async fn list(State(state): State<AppState>, op: Operator) -> Result<axum::Json<Value>> {
    op.require(Role::Admin)?;
    let rows: Vec<TokenRow> =
        sqlx::query_as("SELECT id, name, role, revoked, bootstrap, created_at FROM operator_tokens ORDER BY created_at")
            .fetch_all(&state.pool)
            .await?;
    Ok(axum::Json(json!({ "tokens": rows })))
}

async fn revoke(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    op.require(Role::Admin)?;
    let id = id_of(&id, "token")?;
    let n = sqlx::query("UPDATE operator_tokens SET revoked = true WHERE id = $1")
        .bind(id)
        .execute(&state.pool)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(ApiError::NotFound("token"));
    }
    Ok(StatusCode::NO_CONTENT)
}
