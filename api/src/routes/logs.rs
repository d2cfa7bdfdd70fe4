//! Pipeline logs: agents ship them (`POST /api/agent/logs`), operators follow them
//! (`GET /api/v1/fleet/{id}/logs`, server-sent events).

use crate::auth::{NodeCaller, Operator, Role};
use crate::error::{ApiError, Result};
use crate::extract::{id_of, Json, Query};
use crate::node_logs::{self, Lines};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use axum::Router;
use flotilla_shared::protocol::{LogBatch, Ok};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;
use uuid::Uuid;

/// Log routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/agent/logs", post(ship))
        .route("/api/v1/fleet/{id}/logs", get(follow))
}

/// Lines one request may carry in all; the oldest beyond are dropped.
pub const MAX_LINES: usize = 2000;
/// Pipelines one request may name; the rest are dropped.
pub const MAX_BATCHES: usize = 100;
/// Log requests one node may make a second (its agent sends one every 2 s); more get 429.
pub const MAX_REQUESTS_PER_SEC: i64 = 5;
/// How long an operator's log stream lasts before the client must reconnect (and is
/// authenticated again).
pub const STREAM_MAX_AGE: Duration = Duration::from_secs(3600);

/// The lines of `batches` that belong to pipelines of the node's environment, per pipeline,
/// bounded: foreign and malformed ids are skipped, each line is clipped, and at most
/// [`MAX_LINES`] lines are kept (the newest).
pub async fn accepted(
    state: &AppState,
    environment: Uuid,
    batches: Vec<(String, Vec<serde_json::Value>)>,
) -> Result<Vec<Lines>> {
    let mut by_pipeline: BTreeMap<Uuid, Vec<serde_json::Value>> = BTreeMap::new();
    for (id, lines) in batches.into_iter().take(MAX_BATCHES) {
        if let Ok(id) = Uuid::parse_str(&id) {
            by_pipeline.entry(id).or_default().extend(lines);
        }
    }
    if by_pipeline.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = by_pipeline.keys().copied().collect();
    let known: Vec<Uuid> = sqlx::query_scalar!(
        "SELECT id FROM pipelines WHERE environment_id = $1 AND id = ANY($2)",
        environment,
        &ids
    )
    .fetch_all(&state.pool)
    .await?;
    let mut budget = MAX_LINES;
    let mut kept = Vec::new();
    for (pipeline_id, lines) in by_pipeline {
        if !known.contains(&pipeline_id) {
            continue;
        }
        let take = lines.len().min(budget).min(node_logs::RING);
        budget -= take;
        let lines = lines[lines.len() - take..]
            .iter()
            .map(node_logs::line_of)
            .collect();
        kept.push(Lines { pipeline_id, lines });
    }
    Ok(kept)
}

#[utoipa::path(
    post,
    path = "/api/agent/logs",
    tag = "agent",
    request_body = Vec<LogBatch>,
    responses((status = 200, body = flotilla_shared::protocol::Ok), (status = 429, description = "more than 5 log requests a second from this node", body = flotilla_shared::protocol::ErrorBody), crate::openapi::BodyErrors, crate::openapi::NodeErrors, (status = 503, description = "Redis unavailable; the lines are not kept", body = flotilla_shared::protocol::ErrorBody)),
    security(("node_token" = []))
)]
async fn ship(
    State(state): State<AppState>,
    NodeCaller(node): NodeCaller,
    Json(batches): Json<Vec<serde_json::Value>>,
) -> Result<axum::Json<Ok>> {
    // Per element: one without a string `pipelineId` and an array of `lines` is skipped.
    let batches = batches
        .into_iter()
        .filter_map(|b| match b {
            serde_json::Value::Object(mut b) => {
                let id = b.get("pipelineId")?.as_str()?.to_owned();
                match b.remove("lines")? {
                    serde_json::Value::Array(lines) => Some((id, lines)),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect();
    let budget = flotilla_shared::channels::log_channel(node.node_id);
    if !crate::shared_budget::admit(&state.redis, &budget, MAX_REQUESTS_PER_SEC)
        .await
        .map_err(ApiError::Redis)?
    {
        return Err(ApiError::RateLimited(1));
    }
    let lines = accepted(&state, node.environment_id, batches).await?;
    node_logs::append(&state.redis, node.node_id, &lines)
        .await
        .map_err(ApiError::Redis)?;
    Ok(axum::Json(Ok { ok: true }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FollowQuery {
    pipeline_id: Option<Uuid>,
}

#[utoipa::path(
    get,
    path = "/api/v1/fleet/{id}/logs",
    tag = "operator",
    params(("id" = String, Path, description = "node id (UUID)"),
           ("pipelineId" = Option<String>, Query, description = "only this pipeline (UUID)")),
    responses((status = 200, description = "server-sent events: `lines` `{pipelineId, lines}`, first the kept lines, then new ones as they arrive", content_type = "text/event-stream"), (status = 400, description = "bad query", body = flotilla_shared::protocol::ErrorBody), crate::openapi::NotFound, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
async fn follow(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    Query(q): Query<FollowQuery>,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    op.require(Role::Viewer)?;
    let node = id_of(&id, "node")?;
    let pipelines: Vec<Uuid> = sqlx::query_scalar!(
        r#"SELECT s.pipeline_id AS "pipeline_id!" FROM node_pipeline_status s WHERE s.node_id = $1
         UNION SELECT p.id FROM pipelines p JOIN nodes n ON n.environment_id = p.environment_id
               WHERE n.id = $1 AND p.deployed_version IS NOT NULL"#,
        node
    )
    .fetch_all(&state.pool)
    .await?;
    let exists: bool = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM nodes WHERE id = $1) AS "exists!""#,
        node
    )
    .fetch_one(&state.pool)
    .await?;
    if !exists {
        return Err(ApiError::NotFound("node"));
    }
    let wanted = q.pipeline_id;
    let pipelines: Vec<Uuid> = pipelines
        .into_iter()
        .filter(|p| wanted.is_none_or(|w| w == *p))
        .collect();
    // Subscribed before the kept lines are read: a line may come twice, never not at all.
    let channel = flotilla_shared::channels::log_channel(node);
    let live = crate::live::follow(&state, op, channel, STREAM_MAX_AGE).await?;
    let kept = node_logs::read(&state.redis, node, &pipelines)
        .await
        .map_err(ApiError::Redis)?;
    let kept: Vec<Event> = pipelines
        .into_iter()
        .zip(kept)
        .filter(|(_, lines)| !lines.is_empty())
        .map(|(pipeline_id, lines)| lines_event(&Lines { pipeline_id, lines }))
        .collect();
    let live = live.filter_map(move |payload| {
        let wanted = match (wanted, serde_json::from_str::<LinesOf>(&payload)) {
            (None, _) => true,
            (Some(w), Ok(l)) => l.pipeline_id == w,
            (Some(_), Err(_)) => false,
        };
        std::future::ready(wanted.then(|| Event::default().event("lines").data(payload)))
    });
    let stream = futures_util::stream::iter(kept).chain(live).map(Ok);
    Ok(Sse::new(stream).keep_alive(crate::live::keep_alive(&state)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LinesOf {
    pipeline_id: Uuid,
}

fn lines_event(lines: &Lines) -> Event {
    Event::default()
        .event("lines")
        .data(serde_json::to_string(lines).expect("lines serialise"))
}
