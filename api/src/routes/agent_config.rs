//! `GET /api/agent/config`: what the node must run, plus pending samples and actions (read
//! by [`crate::polls`]).

use crate::auth::NodeBearer;
use crate::error::Result;
use crate::polls;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use flotilla_shared::protocol::ConfigResponse;

/// Config route.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/agent/config", get(config))
}

#[utoipa::path(
    get,
    path = "/api/agent/config",
    tag = "agent",
    responses((status = 200, body = ConfigResponse), crate::openapi::NodeErrors),
    security(("node_token" = []))
)]
async fn config(State(state): State<AppState>, bearer: NodeBearer) -> Result<Json<ConfigResponse>> {
    // One round trip, shared with concurrent polls: the token is checked against the
    // credentials in the same row.
    let reads = &state.polls;
    let (node, mut row) = bearer
        .authenticate(&state, |lookup| async move {
            let row = reads.read(&lookup).await?;
            Ok(row.map(|r| (r.credentials().clone(), r)))
        })
        .await?;
    let pending_action = polls::pending_action(
        &state,
        node.node_id,
        row.pending_action.take(),
        row.current_agent,
    )
    .await?;
    let samples = row.samples.take().map(|s| s.0).unwrap_or_default();
    let pipelines = row.pipelines();

    Ok(Json(ConfigResponse {
        pipelines,
        poll_interval_ms: row.poll_interval_ms as u64,
        websocket_url: Some(state.settings.api.public_ws_url.clone()),
        push_url: Some(state.settings.api.public_push_url.clone()),
        secret_backend: "BUILTIN".into(),
        sample_requests: (!samples.is_empty()).then_some(samples),
        pending_action,
    }))
}
