//! `POST /api/agent/samples`, and the one code path every sample result goes through
//! (legacy heartbeats carry `sampleResults` too).

use crate::auth::NodeCaller;
use crate::error::{ApiError, Result};
use crate::extract::Json;
use crate::selector::places_sql;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use flotilla_shared::auth::node::AuthedNode;
use flotilla_shared::frames::PushMessage;
#[allow(unused_imports)]
use flotilla_shared::protocol::{Ok, SampleResult, SamplesRequest};
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Samples route.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/agent/samples", post(submit))
}

const MAX_RESULTS: usize = 1000;
const MAX_EVENTS: usize = 1000;
/// Characters kept of a result's `error` (an agent's tap failure, shown to viewers).
pub const MAX_ERROR_CHARS: usize = 4096;

#[utoipa::path(
    post,
    path = "/api/agent/samples",
    tag = "agent",
    request_body = SamplesRequest,
    responses((status = 200, body = flotilla_shared::protocol::Ok), crate::openapi::BodyErrors, crate::openapi::NodeErrors),
    security(("node_token" = []))
)]
async fn submit(
    State(state): State<AppState>,
    NodeCaller(node): NodeCaller,
    Json(req): Json<Value>,
) -> Result<axum::Json<Ok>> {
    let Some(Value::Array(results)) = req.get("results") else {
        return Err(ApiError::bad_request(
            "Invalid request body",
            serde_json::json!({ "path": "results", "reason": "a list of results is required" }),
        ));
    };
    record(&state, node, accepted(results)).await?;
    Ok(axum::Json(Ok { ok: true }))
}

/// The results that can be recorded, read one by one: a result that is not one (no request
/// id or component key, a component key over 256 characters) is skipped, events beyond
/// [`MAX_EVENTS`] are dropped, an error is clipped to [`MAX_ERROR_CHARS`], and at most
/// [`MAX_RESULTS`] results are read.
pub fn accepted(results: &[Value]) -> Vec<SampleResult> {
    results
        .iter()
        .take(MAX_RESULTS)
        .filter_map(|r| serde_json::from_value::<SampleResult>(r.clone()).ok())
        .filter(|r| !r.component_key.is_empty() && r.component_key.len() <= 256)
        .map(|mut r| {
            if let Some(events) = &mut r.events {
                events.truncate(MAX_EVENTS);
            }
            if let Some(error) = &mut r.error {
                if let Some((cut, _)) = error.char_indices().nth(MAX_ERROR_CHARS) {
                    error.truncate(cut);
                }
            }
            r
        })
        .collect()
}

/// Joins sample requests `r` to the node `$3` when the request's pipeline runs there: it is
/// deployed, placed on the node ([`places_sql!`]), and the node is not in
/// maintenance — what the node's poll hands it. Written into a checked statement as
/// `places_sql!` is: `placed_sql!(sqlx::query, [<before> +], [+ <after>])`.
macro_rules! placed_sql {
    ($($m:ident)::+, [$($before:tt)*], [$($after:tt)*]) => {
        places_sql!($($m)::+, [$($before)* "
         JOIN pipelines p ON p.id = r.pipeline_id
         JOIN pipeline_versions v ON v.pipeline_id = p.id AND v.version = p.deployed_version
         JOIN nodes n ON n.id = $3 AND n.environment_id = p.environment_id AND NOT n.maintenance
                     AND " +], [$($after)*])
    };
}

/// Pushes the pending sample requests of `pipelines` to the node that just reported them
/// RUNNING: requests made while a pipeline started reach it now, not at its next poll. Only
/// pipelines placed on the node count: a report alone is the node's word.
pub async fn push_pending(state: &AppState, node: AuthedNode, pipelines: &[Uuid]) -> Result<()> {
    let pending = placed_sql!(
        sqlx::query,
        ["SELECT r.id, r.pipeline_id, r.component_keys, r.sample_limit FROM sample_requests r" +],
        [+ "
         WHERE r.status = 'PENDING' AND r.expires_at > now() AND r.environment_id = $1
           AND r.pipeline_id = ANY($2)
         ORDER BY r.created_at", node.environment_id, pipelines, node.node_id]
    )
    .fetch_all(&state.pool)
    .await?;
    for r in pending {
        let message = PushMessage::SampleRequest {
            request_id: r.id.to_string(),
            pipeline_id: r.pipeline_id.to_string(),
            component_keys: r.component_keys,
            limit: r.sample_limit as u32,
        };
        state.notifier.push(&[node.node_id], message).await;
    }
    Ok(())
}

/// Stores results; each sample request is locked while its results are written, so the
/// PENDING → COMPLETED/ERROR move happens exactly once however many agents submit at once.
/// Results for unknown, expired, finished or other-environment requests are ignored, as are
/// those for a pipeline the node does not run (by placement, not by the node's own report,
/// which it could forge); repeated results are no-ops (unique per request and component).
pub async fn record(state: &AppState, node: AuthedNode, results: Vec<SampleResult>) -> Result<()> {
    let mut by_request: BTreeMap<Uuid, Vec<SampleResult>> = BTreeMap::new();
    // A request id this server never issued (another server's, or garbage) is skipped.
    for r in results {
        if let Ok(id) = Uuid::parse_str(&r.request_id) {
            by_request.entry(id).or_default().push(r);
        }
    }
    // BTreeMap order: requests are always locked in the same order, so no deadlocks.
    for (request_id, results) in by_request {
        let mut tx = state.pool.begin().await?;
        let keys: Option<Vec<String>> = placed_sql!(
            sqlx::query_scalar,
            ["SELECT r.component_keys FROM sample_requests r" +],
            [+ "
             WHERE r.id = $1 AND r.environment_id = $2 AND r.status = 'PENDING' AND r.expires_at > now()
             FOR UPDATE OF r", request_id, node.environment_id, node.node_id]
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(keys) = keys else { continue };
        for r in results.iter().filter(|r| keys.contains(&r.component_key)) {
            sqlx::query!(
                "INSERT INTO samples (request_id, component_key, node_id, events, schema, error)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT ON CONSTRAINT samples_request_component_key DO NOTHING",
                request_id,
                r.component_key,
                node.node_id,
                r.events.as_ref().map(|e| serde_json::json!(e)),
                r.schema.as_ref().map(|s| serde_json::json!(s)),
                r.error.as_deref()
            )
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query!(
            "UPDATE sample_requests r
             SET status = CASE WHEN EXISTS (SELECT 1 FROM samples s WHERE s.request_id = r.id AND s.error IS NOT NULL)
                               THEN 'ERROR' ELSE 'COMPLETED' END,
                 completed_at = now(), completed_by = $2
             WHERE r.id = $1 AND r.status = 'PENDING'
               AND (SELECT count(*) FROM samples s WHERE s.request_id = r.id) >= cardinality(r.component_keys)",
            request_id,
            node.node_id
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(())
}
