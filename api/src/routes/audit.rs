//! The audit trail (admin): every operator change, newest first, paged by cursor, optionally
//! narrowed to one action, target or token.

use crate::auth::{Operator, Role};
use crate::error::Result;
use crate::extract::Query;
use crate::paging;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Audit routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/audit", get(list))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuditQuery {
    limit: Option<i64>,
    cursor: Option<String>,
    action: Option<String>,
    target_type: Option<String>,
    target_id: Option<String>,
    token_id: Option<Uuid>,
}

/// One recorded change.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    #[serde(skip)]
    id: i64,
    at: DateTime<Utc>,
    token_id: Uuid,
    token_name: String,
    action: String,
    target_type: String,
    target_id: Option<String>,
    #[schema(value_type = Object)]
    detail: Value,
}

/// A page of the audit trail.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    entries: Vec<AuditEntry>,
    /// Pass as `cursor` for the next (older) page; null on the last one.
    next_cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "operator",
    params(
        ("limit" = Option<i64>, Query, description = "entries per page, 1 to 1000 (default 100)"),
        ("cursor" = Option<String>, Query, description = "nextCursor of the previous page"),
        ("action" = Option<String>, Query, description = "only this action, e.g. `pipeline.deploy`"),
        ("targetType" = Option<String>, Query, description = "only this kind of target, e.g. `pipeline`"),
        ("targetId" = Option<String>, Query, description = "only this target id"),
        ("tokenId" = Option<String>, Query, description = "only changes made with this operator token (UUID)"),
    ),
    responses((status = 200, body = AuditPage), (status = 400, description = "bad query", body = flotilla_shared::protocol::ErrorBody), crate::openapi::Invalid, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn list(
    State(state): State<AppState>,
    op: Operator,
    Query(q): Query<AuditQuery>,
) -> Result<axum::Json<AuditPage>> {
    op.require(Role::Admin)?;
    let limit = paging::limit(q.limit)?;
    let after: Option<i64> = paging::decode(q.cursor.as_deref())?;
    let mut entries: Vec<AuditEntry> = sqlx::query_as!(
        AuditEntry,
        "SELECT id, at, token_id, token_name, action, target_type, target_id, detail
         FROM audit_log
         WHERE ($1::bigint IS NULL OR id < $1)
           AND ($3::text IS NULL OR action = $3)
           AND ($4::text IS NULL OR target_type = $4)
           AND ($5::text IS NULL OR target_id = $5)
           AND ($6::uuid IS NULL OR token_id = $6)
         ORDER BY id DESC LIMIT $2",
        after,
        limit + 1,
        q.action.filter(|a| !a.is_empty()),
        q.target_type.filter(|t| !t.is_empty()),
        q.target_id.filter(|t| !t.is_empty()),
        q.token_id
    )
    .fetch_all(&state.pool)
    .await?;
    let next_cursor = paging::next_cursor(&mut entries, limit, |e| e.id);
    Ok(axum::Json(AuditPage {
        entries,
        next_cursor,
    }))
}
