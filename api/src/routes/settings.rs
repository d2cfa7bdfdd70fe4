//! Fleet-wide settings: the poll interval (changes are audited).

use crate::audit::{self, Change};
use crate::auth::{Operator, Role};
use crate::error::{ApiError, Result};
use crate::extract::Json;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::Router;
use flotilla_shared::frames::PushMessage;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

/// Settings routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/settings", get(show).put(update))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct UpdateSettings {
    poll_interval_ms: i64,
}

#[utoipa::path(
    get,
    path = "/api/v1/settings",
    tag = "operator",
    responses((status = 200, body = Object), crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn show(State(state): State<AppState>, op: Operator) -> Result<axum::Json<Value>> {
    op.require(Role::Viewer)?;
    let ms: i32 = sqlx::query_scalar!("SELECT poll_interval_ms FROM settings")
        .fetch_one(&state.pool)
        .await?;
    Ok(axum::Json(json!({ "pollIntervalMs": ms })))
}

#[utoipa::path(
    put,
    path = "/api/v1/settings",
    tag = "operator",
    request_body = UpdateSettings,
    responses((status = 200, body = Object), crate::openapi::BodyErrors, crate::openapi::Invalid, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn update(
    State(state): State<AppState>,
    op: Operator,
    Json(req): Json<UpdateSettings>,
) -> Result<axum::Json<Value>> {
    op.require(Role::Admin)?;
    if !(1000..=3_600_000).contains(&req.poll_interval_ms) {
        return Err(ApiError::invalid(
            "pollIntervalMs",
            "between 1000 and 3600000",
        ));
    }
    let mut tx = state.pool.begin().await?;
    // Locked, so the value recorded as replaced is the one replaced.
    let previous: i32 = sqlx::query_scalar!("SELECT poll_interval_ms FROM settings FOR UPDATE")
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query!(
        "UPDATE settings SET poll_interval_ms = $1",
        req.poll_interval_ms as i32
    )
    .execute(&mut *tx)
    .await?;
    let detail = json!({ "pollIntervalMs": { "from": previous, "to": req.poll_interval_ms } });
    let change = Change {
        action: "settings.update",
        target_type: "settings",
        target_id: None,
        detail: &detail,
    };
    audit::record(&mut *tx, &op, change).await?;
    tx.commit().await?;
    let nodes: Vec<Uuid> = sqlx::query_scalar!("SELECT id FROM nodes")
        .fetch_all(&state.pool)
        .await?;
    let notified = state
        .notifier
        .push(
            &nodes,
            PushMessage::PollInterval {
                interval_ms: req.poll_interval_ms as u64,
            },
        )
        .await;
    Ok(axum::Json(
        json!({ "pollIntervalMs": req.poll_interval_ms, "notifiedNodes": notified }),
    ))
}
