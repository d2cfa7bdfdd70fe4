//! `POST /api/agent/enroll`: an environment's enrollment token creates a node.

use crate::error::{ApiError, Result};
use crate::extract::{ClientIp, Json};
use crate::state::AppState;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use flotilla_shared::auth::tokens::{self, ENROLL_PREFIX, NODE_PREFIX};
#[allow(unused_imports)]
use flotilla_shared::protocol::ErrorBody;
use flotilla_shared::protocol::{EnrollRequest, EnrollResponse};
use uuid::Uuid;

/// Enrollment route.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/agent/enroll", post(enroll))
}

const INVALID: ApiError = ApiError::Unauthorized("Invalid enrollment token");

fn optional(field: &str, value: Option<String>) -> Result<Option<String>> {
    match value {
        Some(v) if v.len() > 128 => Err(ApiError::bad_request(
            "Invalid request body",
            serde_json::json!({ "path": field, "reason": "at most 128 characters" }),
        )),
        v => Ok(v),
    }
}

#[utoipa::path(
    post,
    path = "/api/agent/enroll",
    tag = "agent",
    request_body = EnrollRequest,
    responses((status = 200, body = EnrollResponse), crate::openapi::BodyErrors, (status = 401, description = "invalid enrollment token", body = ErrorBody), (status = 429, description = "rate limited", body = ErrorBody), (status = 503, description = "database unavailable", body = ErrorBody))
)]
async fn enroll(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<EnrollRequest>,
) -> Result<axum::Json<EnrollResponse>> {
    if let Some(ip) = ip {
        state.limits.enroll.hit(ip)?;
    }
    let hostname = req.hostname.trim();
    if hostname.is_empty() || hostname.len() > 255 {
        return Err(ApiError::bad_request(
            "Invalid request body",
            serde_json::json!({ "path": "hostname", "reason": "1 to 255 characters" }),
        ));
    }
    let os = optional("os", req.os)?;
    let agent_version = optional("agentVersion", req.agent_version)?;
    let vector_version = optional("vectorVersion", req.vector_version)?;

    let parsed = tokens::parse(ENROLL_PREFIX, &req.token).ok_or(INVALID)?;
    let env = sqlx::query!(
        "SELECT id, name, enrollment_token_hash FROM environments WHERE enrollment_token_lookup = $1",
        parsed.lookup
    )
    .fetch_optional(&state.pool)
    .await?
    .ok_or(INVALID)?;
    let (environment_id, environment_name, hash) = (env.id, env.name, env.enrollment_token_hash);
    // Under the same bcrypt cap as every other token check.
    let bcrypt = state.node_auth.bcrypt_gate();
    let verified = bcrypt.verify(parsed.secret.to_owned(), hash).await;
    if !verified.map_err(|_| ApiError::Busy)? {
        return Err(INVALID);
    }

    let issued = tokens::issue(NODE_PREFIX);
    let node_id = Uuid::new_v4();
    // Applied at once, so pipelines bound to them by selector arrive on the first poll.
    let labels = serde_json::Value::Object(
        req.labels
            .as_ref()
            .map(crate::selector::reported_labels)
            .unwrap_or_default(),
    );
    let digest = tokens::node_digest(&issued.token);
    sqlx::query!(
        "INSERT INTO nodes (id, environment_id, host, os, agent_version, vector_version, token_lookup, token_digest, reported_labels, last_seen)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())",
        node_id,
        environment_id,
        hostname,
        os,
        agent_version,
        vector_version,
        issued.lookup,
        digest.as_slice(),
        labels
    )
    .execute(&state.pool)
    .await?;
    tracing::info!(%node_id, %environment_id, host = hostname, "node enrolled");
    crate::fleet_events::node_changed(&state.redis, node_id, "enrolled");
    Ok(axum::Json(EnrollResponse {
        node_id: node_id.to_string(),
        node_token: issued.token,
        environment_id: environment_id.to_string(),
        environment_name,
    }))
}
