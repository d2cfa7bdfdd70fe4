//! Config polls' reads: everything a `GET /api/agent/config` answers, read with the node's
//! credentials in one round trip and coalesced with concurrent polls' into one query a round
//! ([`BatchedReads`]), and what a poll hands out of the row (pipelines, the pending action).

use crate::error::Result;
use crate::selector::places_sql;
use crate::state::AppState;
use flotilla_shared::auth::node::NodeCredentials;
use flotilla_shared::batched_reads::{BatchedReads, Keyed};
use flotilla_shared::protocol::{PendingAction, PipelineConfig, SampleRequestConfig};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// Concurrent polls' reads, coalesced into one query a round.
pub type PollReads = BatchedReads<PollRow>;

/// The poll reads of an api over `pool`.
pub fn poll_reads(pool: PgPool) -> PollReads {
    BatchedReads::new(pool, POLL)
}

/// Everything a poll needs, read with the node's credentials in one round trip.
#[derive(Clone, sqlx::FromRow)]
pub struct PollRow {
    #[sqlx(flatten)]
    credentials: NodeCredentials,
    /// The node's pending action, as stored.
    pub pending_action: Option<Value>,
    /// The node runs a current VectorFlow agent (see [`crate::restarts`]).
    pub current_agent: bool,
    /// The fleet's poll interval.
    pub poll_interval_ms: i32,
    // Deployed pipelines, as parallel arrays ordered by name; NULL when there are none.
    pipeline_ids: Option<Vec<Uuid>>,
    names: Option<Vec<String>>,
    versions: Option<Vec<i32>>,
    config_yamls: Option<Vec<String>>,
    checksums: Option<Vec<String>>,
    log_levels: Option<Vec<Option<String>>>,
    /// The pending sample requests of the node's pipelines.
    pub samples: Option<sqlx::types::Json<Vec<SampleRequestConfig>>>,
}

impl PollRow {
    /// The node's credentials, read in the same row.
    pub fn credentials(&self) -> &NodeCredentials {
        &self.credentials
    }

    /// The pipelines the node must run, ordered by name (taken out of the row).
    pub fn pipelines(&mut self) -> Vec<PipelineConfig> {
        pipeline_configs(
            self.pipeline_ids.take().unwrap_or_default(),
            self.names.take().unwrap_or_default(),
            self.versions.take().unwrap_or_default(),
            self.config_yamls.take().unwrap_or_default(),
            self.checksums.take().unwrap_or_default(),
            self.log_levels.take().unwrap_or_default(),
        )
    }
}

impl Keyed for PollRow {
    fn key(&self) -> &str {
        &self.credentials.token_lookup
    }
}

/// The poll, for every token lookup id in the array `$1`: the node's row; the deployed
/// pipelines of its environment placed on it ([`places_sql!`]: the selector holds on the labels
/// the version matches; none in maintenance); the pending sample requests of those pipelines.
/// Run by [`BatchedReads`] at run time, so not checked at compile time; the config poll tests
/// cover it.
const POLL: &str = concat!(
    "
SELECT n.id, n.environment_id, n.token_lookup, n.token_digest, n.token_hash, n.pending_action,
       n.agent_health IS NOT NULL AS current_agent,
       (SELECT poll_interval_ms FROM settings) AS poll_interval_ms,
       d.pipeline_ids, d.names, d.versions, d.config_yamls, d.checksums, d.log_levels,
       CASE WHEN d.pipeline_ids IS NOT NULL THEN (
         SELECT json_agg(json_build_object('requestId', r.id, 'pipelineId', r.pipeline_id,
                                           'componentKeys', r.component_keys, 'limit', r.sample_limit)
                         ORDER BY r.created_at)
         FROM sample_requests r
         WHERE r.status = 'PENDING' AND r.expires_at > now() AND r.pipeline_id = ANY(d.pipeline_ids)
       ) END AS samples
FROM nodes n
LEFT JOIN LATERAL (
  -- Aggregated in the order of the sorted subquery (one sort for all six arrays).
  SELECT array_agg(m.id) AS pipeline_ids, array_agg(m.name) AS names,
         array_agg(m.version) AS versions, array_agg(m.config_yaml) AS config_yamls,
         array_agg(m.checksum) AS checksums, array_agg(m.log_level) AS log_levels
  FROM (
    SELECT p.id, p.name, v.version, v.config_yaml, v.checksum, v.log_level
    FROM pipelines p
    JOIN pipeline_versions v ON v.pipeline_id = p.id AND v.version = p.deployed_version
    WHERE p.environment_id = n.environment_id AND NOT n.maintenance
      AND ",
    places_sql!(),
    "
    ORDER BY p.name
  ) m
) d ON true
WHERE n.token_lookup = ANY($1)"
);

/// Pipeline configs from the poll's parallel arrays.
fn pipeline_configs(
    ids: Vec<Uuid>,
    names: Vec<String>,
    versions: Vec<i32>,
    yamls: Vec<String>,
    checksums: Vec<String>,
    log_levels: Vec<Option<String>>,
) -> Vec<PipelineConfig> {
    ids.into_iter()
        .zip(names)
        .zip(versions)
        .zip(yamls)
        .zip(checksums)
        .zip(log_levels)
        .map(
            |(((((pipeline_id, pipeline_name), version), config_yaml), checksum), log_level)| {
                PipelineConfig {
                    pipeline_id: pipeline_id.to_string(),
                    pipeline_name,
                    version,
                    config_yaml,
                    checksum,
                    log_level,
                    secrets: None,
                    cert_files: None,
                }
            },
        )
        .collect()
}

/// The node's pending action. A restart is handed out once (it is consumed by this poll),
/// except to a current agent, which cannot read it there and gets pushes instead
/// ([`crate::restarts`]); a self-update stays until the heartbeat reports the target version
/// or an error.
pub async fn pending_action(
    state: &AppState,
    node: Uuid,
    stored: Option<Value>,
    current_agent: bool,
) -> Result<Option<PendingAction>> {
    let Some(value) = stored else { return Ok(None) };
    let action: Option<PendingAction> = serde_json::from_value(value).ok();
    if let Some(a) = &action {
        if a.kind == "restart" && current_agent {
            crate::restarts::retry_on_poll(state, node, a).await?;
            return Ok(None);
        }
        if a.kind == "restart" {
            let taken = sqlx::query!(
                "UPDATE nodes SET pending_action = NULL WHERE id = $1 AND pending_action->>'type' = 'restart'",
                node
            )
            .execute(&state.pool)
            .await?
            .rows_affected();
            // A concurrent poll took it first: it is that poll's to deliver.
            if taken == 0 {
                return Ok(None);
            }
            // The fleet shows the pending action: its row changed.
            crate::fleet_events::node_changed(&state.redis, node, "action");
        }
    }
    Ok(action)
}
