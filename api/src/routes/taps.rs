//! Live taps: an editor starts one on a node's component (`POST /api/v1/taps`), watches it
//! (`GET /api/v1/taps/{id}/events`, server-sent events) and stops it; the agent posts its
//! batches to `POST /api/agent/tap-events`.

use crate::auth::{NodeCaller, Operator, Role};
use crate::error::{ApiError, Result};
use crate::extract::{id_of, Json};
use crate::state::AppState;
use crate::taps::{self, Tap, TapMessage};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::routing::{delete, get, post};
use axum::Router;
use flotilla_shared::protocol::Ok;
#[allow(unused_imports)]
use flotilla_shared::protocol::TapEvents;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use uuid::Uuid;

/// Tap routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/taps", post(start))
        .route("/api/v1/taps/{id}", delete(stop))
        .route("/api/v1/taps/{id}/events", get(events))
        .route("/api/agent/tap-events", post(agent_events))
}

/// Events one batch may carry; the rest are dropped.
pub const MAX_EVENTS: usize = 100;
/// Serialised bytes of one event; a larger one is replaced by a note of its size.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct StartBody {
    node_id: String,
    pipeline_id: String,
    component_id: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/taps",
    tag = "operator",
    request_body = StartBody,
    responses((status = 201, body = Object), crate::openapi::BodyErrors, crate::openapi::NotFound, crate::openapi::Invalid, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn start(
    State(state): State<AppState>,
    op: Operator,
    Json(body): Json<StartBody>,
) -> Result<(StatusCode, axum::Json<Value>)> {
    op.require(Role::Editor)?;
    let node_id = id_of(&body.node_id, "node")?;
    let pipeline_id = id_of(&body.pipeline_id, "pipeline")?;
    if body.component_id.is_empty() || body.component_id.len() > 256 {
        return Err(ApiError::invalid("componentId", "1 to 256 characters"));
    }
    // The pipeline must belong to the node's environment.
    let same_environment: Option<bool> = sqlx::query_scalar!(
        r#"SELECT p.environment_id = n.environment_id AS "same!" FROM nodes n, pipelines p WHERE n.id = $1 AND p.id = $2"#,
        node_id,
        pipeline_id
    )
    .fetch_optional(&state.pool)
    .await?;
    match same_environment {
        None => return Err(ApiError::NotFound("node or pipeline")),
        Some(false) => return Err(ApiError::NotFound("pipeline")),
        Some(true) => {}
    }
    let tap = Tap {
        node_id,
        pipeline_id,
        component_id: body.component_id,
    };
    let id = taps::start(&state, &tap).await?;
    // A tap makes an agent act, so it is on the trail (the audit record logs the token).
    let detail = json!({ "requestId": id, "nodeId": node_id, "componentId": tap.component_id });
    let change = crate::audit::Change {
        action: "tap.start",
        target_type: "pipeline",
        target_id: Some(pipeline_id.to_string()),
        detail: &detail,
    };
    crate::audit::record(&state.pool, &op, change).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "requestId": id, "expiresInSecs": taps::LIFETIME.as_secs() })),
    ))
}

#[utoipa::path(
    delete,
    path = "/api/v1/taps/{id}",
    tag = "operator",
    params(("id" = String, Path, description = "tap id (UUID)")),
    responses((status = 204, description = "stopped"), crate::openapi::NotFound, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn stop(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    op.require(Role::Editor)?;
    let id = id_of(&id, "tap")?;
    taps::get(&state.redis, id)
        .await
        .map_err(ApiError::Redis)?
        .ok_or(ApiError::NotFound("tap"))?;
    taps::end(&state, id, "stopped by an operator")
        .await
        .map_err(ApiError::Redis)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/api/v1/taps/{id}/events",
    tag = "operator",
    params(("id" = String, Path, description = "tap id (UUID)")),
    responses((status = 200, description = "server-sent events: `events` batches, then `stopped`", content_type = "text/event-stream"), crate::openapi::NotFound, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn events(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    op.require(Role::Editor)?;
    let id = id_of(&id, "tap")?;
    // Subscribed before the tap is looked up, so no batch falls between the two.
    // A viewer's stream ends with the tap at the latest, even if no one announces its end.
    let messages = crate::live::follow(
        &state,
        op,
        flotilla_shared::channels::tap_channel(id),
        taps::LIFETIME + taps::GRACE,
    )
    .await?;
    let tap = taps::get(&state.redis, id)
        .await
        .map_err(ApiError::Redis)?
        .ok_or(ApiError::NotFound("tap"))?;
    taps::viewer_joined(&state.redis, id)
        .await
        .map_err(ApiError::Redis)?;
    let viewer = Viewer {
        state: state.clone(),
        id,
    };
    let started = Event::default().event("started").data(
        json!({ "requestId": id, "nodeId": tap.node_id, "pipelineId": tap.pipeline_id, "componentId": tap.component_id })
            .to_string(),
    );
    // Each batch as an `events` event; the end as `stopped`, after which the stream ends.
    let follow = futures_util::stream::unfold(
        (Box::pin(messages), false),
        |(mut messages, ended)| async move {
            if ended {
                return None;
            }
            let payload = messages.next().await?;
            let (last, event) = match serde_json::from_str::<TapMessage>(&payload) {
                Ok(TapMessage::Stopped { reason }) => (
                    true,
                    Event::default()
                        .event("stopped")
                        .data(json!({ "reason": reason }).to_string()),
                ),
                _ => (false, Event::default().event("events").data(payload)),
            };
            Some((event, (messages, last)))
        },
    );
    let stream = futures_util::stream::once(std::future::ready(started))
        .chain(follow)
        .map(move |event| {
            let _ = &viewer; // counted out when the stream is dropped
            Ok(event)
        });
    Ok(Sse::new(stream).keep_alive(crate::live::keep_alive(&state)))
}

/// A viewer of a tap, counted out (and the tap ended if it was the last) when dropped.
struct Viewer {
    state: AppState,
    id: Uuid,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        let (state, id) = (self.state.clone(), self.id);
        tokio::spawn(async move { taps::viewer_left(&state, id).await });
    }
}

#[utoipa::path(
    post,
    path = "/api/agent/tap-events",
    tag = "agent",
    request_body = TapEvents,
    responses((status = 200, body = flotilla_shared::protocol::Ok), (status = 429, description = "more than 20 batches a second for this tap", body = flotilla_shared::protocol::ErrorBody), crate::openapi::BodyErrors, crate::openapi::NodeErrors),
    security(("node_token" = []))
)]
async fn agent_events(
    State(state): State<AppState>,
    NodeCaller(node): NodeCaller,
    Json(body): Json<Value>,
) -> Result<axum::Json<Ok>> {
    let done = axum::Json(Ok { ok: true });
    // Read leniently: a field of an unexpected type counts as absent.
    let text = |k: &str| body.get(k).and_then(Value::as_str);
    let (status, reason) = (text("status"), text("reason"));
    // A tap id this server never issued is not one of its taps: nothing to relay.
    let Some(Ok(id)) = text("requestId").map(Uuid::parse_str) else {
        return Ok(done);
    };
    let tap = taps::get(&state.redis, id).await.map_err(ApiError::Redis)?;
    match tap {
        // Only the tapped node may post to its tap; others are ignored.
        Some(tap) if tap.node_id != node.node_id => {}
        Some(_) if status == Some("stopped") => {
            let reason = reason.unwrap_or("stopped by the agent");
            let reason: String = reason.chars().take(512).collect();
            taps::stopped_by_agent(&state, id, &reason)
                .await
                .map_err(ApiError::Redis)?;
        }
        Some(_) => {
            if !taps::admit_batch(&state.redis, id)
                .await
                .map_err(ApiError::Redis)?
            {
                return Err(ApiError::RateLimited(1));
            }
            let events = match body.get("events") {
                Some(Value::Array(events)) => bounded(events.clone()),
                _ => Vec::new(),
            };
            if !events.is_empty() {
                taps::publish(&state.redis, id, &TapMessage::Events { events })
                    .await
                    .map_err(ApiError::Redis)?;
            }
        }
        // An ended tap the agent still runs: tell it to stop.
        None if status != Some("stopped") => {
            taps::stop_on_node(&state, node.node_id, id).await;
        }
        None => {}
    }
    Ok(done)
}

/// At most [`MAX_EVENTS`] events, each at most [`MAX_EVENT_BYTES`] serialised.
fn bounded(mut events: Vec<Value>) -> Vec<Value> {
    events.truncate(MAX_EVENTS);
    for e in &mut events {
        let size = serde_json::to_string(e).map(|s| s.len()).unwrap_or(0);
        if size > MAX_EVENT_BYTES {
            *e = json!({ "flotillaTruncated": true, "bytes": size });
        }
    }
    events
}
