//! Operator tokens (admin): issue, list, revoke. Tokens are shown once, hashes never; the
//! audit trail records each issue and revocation by name and role, never the token.

use crate::audit::{self, Change};
use crate::auth::operator::create_token;
use crate::auth::{Operator, Role};
use crate::error::{ApiError, Result};
use crate::extract::{id_of, Json};
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

#[derive(Deserialize, utoipa::ToSchema)]
struct CreateToken {
    name: String,
    role: Role,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenRow {
    id: Uuid,
    name: String,
    role: String,
    revoked: bool,
    bootstrap: bool,
    created_at: DateTime<Utc>,
}

#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "operator",
    request_body = CreateToken,
    responses((status = 201, description = "the token, shown once", body = Object), crate::openapi::BodyErrors, crate::openapi::Invalid, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
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
    let mut tx = state.pool.begin().await?;
    let (id, token) =
        create_token(&mut *tx, name, req.role, state.settings.auth.bcrypt_cost).await?;
    let detail = json!({ "name": name, "role": req.role });
    audit::record(&mut *tx, &op, change("token.create", id, &detail)).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "id": id, "name": name, "role": req.role, "token": token })),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "operator",
    responses((status = 200, body = Object), crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn list(State(state): State<AppState>, op: Operator) -> Result<axum::Json<Value>> {
    op.require(Role::Admin)?;
    let rows: Vec<TokenRow> = sqlx::query_as!(
        TokenRow,
        "SELECT id, name, role, revoked, bootstrap, created_at FROM operator_tokens ORDER BY created_at"
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(axum::Json(json!({ "tokens": rows })))
}

#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
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
    let id = id_of(&id, "token")?;
    let mut tx = state.pool.begin().await?;
    let revoked = sqlx::query!(
        "UPDATE operator_tokens SET revoked = true WHERE id = $1 RETURNING name, role",
        id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let (name, role) = revoked
        .map(|t| (t.name, t.role))
        .ok_or(ApiError::NotFound("token"))?;
    crate::auth::session::end_all_of(&mut *tx, id).await?;
    let detail = json!({ "name": name, "role": role });
    audit::record(&mut *tx, &op, change("token.revoke", id, &detail)).await?;
    tx.commit().await?;
    // Its open live streams, on every api, end within a second.
    state.fleet_events.credentials_revoked(&state.redis).await;
    Ok(StatusCode::NO_CONTENT)
}

/// An audit record of a change to operator token `id`.
fn change<'a>(action: &'static str, id: Uuid, detail: &'a Value) -> Change<'a> {
    Change {
        action,
        target_type: "token",
        target_id: Some(id.to_string()),
        detail,
    }
}
