//! `POST /api/v1/fleet/actions` (admin): one action on every node of a filter, or of a list of
//! ids, as one set-based change in one transaction, audited once, with notifications to
//! exactly the nodes it changed.

use super::filter::{node_ids, Filter};
use super::node::maintenance_reason;
use super::rules::{is_docker, push_of, validate_action};
use crate::audit::{self, Change};
use crate::auth::{Operator, Role};
use crate::error::{ApiError, Result};
use crate::extract::Json;
use crate::fleet_events::nodes_changed;
use crate::state::AppState;
use axum::extract::State;
use flotilla_shared::frames::{ActionKind, PushMessage};
use flotilla_shared::protocol::PendingAction;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::{Postgres, QueryBuilder};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Restart pushes to current agents in flight at once.
const PUSH_CONCURRENCY: usize = 32;

/// The nodes and the action.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct BulkBody {
    /// The fleet list's filters (`environmentId`, `status`, `connected`, `transport`, `label`
    /// (a string or a list of `k=v`), `host`, `pipelineId`, `pipelineStatus`, `crashed`,
    /// `maintenance`, `ids`); `{}` is the whole fleet.
    #[schema(value_type = Option<Object>)]
    filter: Option<Value>,
    /// Or exactly these nodes (up to 1000).
    node_ids: Option<Vec<String>>,
    /// `{type: "maintenance", enabled}`, `{type: "restart", pipelineId?}` or
    /// `{type: "self_update", targetVersion, downloadUrl, checksum, signature?}`.
    #[schema(value_type = Object)]
    action: Value,
}

/// What a bulk action did.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkResult {
    /// Nodes changed.
    affected: usize,
    /// Nodes left alone, by reason: `docker` (self-update in Docker), `other_environment`
    /// (restart of a pipeline the node's environment does not hold), `not_found` (ids
    /// with no node).
    skipped: BTreeMap<&'static str, usize>,
    /// Nodes whose push channel was sent the change.
    notified_nodes: usize,
}

/// A bulk action, checked.
enum Action {
    Maintenance(bool),
    Act(ActionKind, PendingAction),
}

impl Action {
    fn of(value: &Value, state: &AppState) -> Result<Self> {
        match value.get("type").and_then(Value::as_str) {
            Some("maintenance") => value
                .get("enabled")
                .and_then(Value::as_bool)
                .map(Action::Maintenance)
                .ok_or_else(|| ApiError::invalid("action.enabled", "true or false")),
            Some("restart" | "self_update") => {
                let a: PendingAction = serde_json::from_value(value.clone())
                    .map_err(|e| ApiError::invalid("action", e.to_string()))?;
                let (kind, clean) = validate_action(a, &state.self_update_hosts)?;
                Ok(Action::Act(kind, clean))
            }
            _ => Err(ApiError::invalid(
                "action.type",
                "maintenance, restart or self_update",
            )),
        }
    }

    /// As recorded in the audit trail.
    fn describe(&self) -> Value {
        match self {
            Action::Maintenance(enabled) => json!({ "type": "maintenance", "enabled": enabled }),
            Action::Act(_, a) => json!(a),
        }
    }
}

/// One node the filter matched.
#[derive(sqlx::FromRow)]
struct Target {
    id: Uuid,
    environment_id: Uuid,
    deployment_mode: Option<String>,
    current_agent: bool,
    maintenance: bool,
    /// Runs the pipeline a restart names (true when it names none).
    runs_pipeline: bool,
}

#[utoipa::path(
    post,
    path = "/api/v1/fleet/actions",
    tag = "operator",
    request_body = BulkBody,
    responses((status = 200, body = BulkResult), crate::openapi::BodyErrors, crate::openapi::Invalid, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
pub(crate) async fn bulk(
    State(state): State<AppState>,
    op: Operator,
    Json(body): Json<BulkBody>,
) -> Result<axum::Json<BulkResult>> {
    op.require(Role::Admin)?;
    let (filter, asked) = match (&body.filter, &body.node_ids) {
        (Some(f), None) => (Filter::from_json(f)?, None),
        (None, Some(ids)) => {
            let ids = node_ids("nodeIds", ids.iter().map(String::as_str))?;
            let asked = ids.len();
            (Filter::of_ids(ids), Some(asked))
        }
        _ => {
            return Err(ApiError::invalid(
                "filter",
                "give either filter or nodeIds, not both",
            ))
        }
    };
    let action = Action::of(&body.action, &state)?;
    // A restart of one pipeline concerns only the nodes of that pipeline's environment.
    let pipeline_environment = match &action {
        Action::Act(
            _,
            PendingAction {
                pipeline_id: Some(p),
                ..
            },
        ) => Some(
            // The id is bound as the text it was given, and cast by the statement.
            sqlx::query_scalar!(
                "SELECT environment_id FROM pipelines WHERE id = $1::uuid",
                p as _
            )
            .fetch_optional(&state.pool)
            .await?
            .ok_or_else(|| ApiError::invalid("pipelineId", "no such pipeline"))?,
        ),
        _ => None,
    };
    let restart_of: Option<Uuid> = match &action {
        Action::Act(_, a) => a.pipeline_id.as_deref().and_then(|p| p.parse().ok()),
        Action::Maintenance(_) => None,
    };
    let presence = filter.presence(&state).await?;

    let mut tx = state.pool.begin().await?;
    // Built at run time, so not checked at compile time: the filter's conditions decide the
    // statement ([`Filter::push_conditions`]). The bulk action tests (`fleet_paging`) cover it.
    let targets: Vec<Target> = {
        let mut select = QueryBuilder::<Postgres>::new(
            "SELECT n.id, n.environment_id, n.deployment_mode, n.agent_health IS NOT NULL AS current_agent,
                    n.maintenance, ",
        );
        // A restart of one pipeline is for the nodes that run it (an older agent would restart
        // everything it runs).
        match restart_of {
            Some(pipeline) => select
                .push("EXISTS (SELECT 1 FROM node_pipeline_status s WHERE s.node_id = n.id AND s.pipeline_id = ")
                .push_bind(pipeline)
                .push(")"),
            None => select.push("true"),
        };
        select.push(" AS runs_pipeline FROM nodes n WHERE true");
        filter.push_conditions(&mut select, &presence);
        // Locked in id order, so concurrent bulk changes cannot deadlock.
        select.push(" ORDER BY n.id FOR UPDATE OF n");
        select
            .build_query_as()
            .persistent(false)
            .fetch_all(&mut *tx)
            .await?
    };

    let mut skipped: BTreeMap<&'static str, usize> = BTreeMap::new();
    if let Some(asked) = asked.filter(|a| *a > targets.len()) {
        skipped.insert("not_found", asked - targets.len());
    }
    let mut changed = Vec::with_capacity(targets.len());
    let (mut current, mut older) = (Vec::new(), Vec::new());
    for t in &targets {
        let skip = match &action {
            Action::Act(ActionKind::SelfUpdate, _) if is_docker(t.deployment_mode.as_deref()) => {
                Some("docker")
            }
            _ if pipeline_environment.is_some_and(|e| e != t.environment_id) => {
                Some("other_environment")
            }
            _ if !t.runs_pipeline => Some("not_running"),
            // Already so: nothing to change or tell it.
            Action::Maintenance(enabled) if t.maintenance == *enabled => Some("unchanged"),
            _ => None,
        };
        match skip {
            Some(reason) => *skipped.entry(reason).or_default() += 1,
            None => {
                changed.push(t.id);
                if t.current_agent {
                    current.push(t.id);
                } else {
                    older.push(t.id);
                }
            }
        }
    }
    match &action {
        Action::Maintenance(enabled) => {
            sqlx::query!(
                "UPDATE nodes SET maintenance = $2 WHERE id = ANY($1)",
                &changed,
                enabled
            )
            .execute(&mut *tx)
            .await?;
        }
        Action::Act(_, a) => {
            sqlx::query!(
                "UPDATE nodes SET pending_action = $2 WHERE id = ANY($1)",
                &changed,
                json!(a)
            )
            .execute(&mut *tx)
            .await?;
        }
    }
    let scope = match (&body.filter, &body.node_ids) {
        (Some(f), _) => json!({ "filter": f }),
        (_, ids) => json!({ "nodeIds": ids }),
    };
    let detail = json!({
        "scope": scope,
        "action": action.describe(),
        "affected": changed.len(),
        "skipped": skipped,
    });
    let change = Change {
        action: "fleet.bulk_action",
        target_type: "fleet",
        target_id: None,
        detail: &detail,
    };
    audit::record(&mut *tx, &op, change).await?;
    tx.commit().await?;

    let notified = notify(&state, &action, &changed, &current, &older).await?;
    let kind = match action {
        Action::Maintenance(_) => "maintenance",
        Action::Act(..) => "action",
    };
    nodes_changed(&state.redis, &changed, kind);
    Ok(axum::Json(BulkResult {
        affected: changed.len(),
        skipped,
        notified_nodes: notified,
    }))
}

/// Tells the changed nodes, as the single-node changes do: a restart reaches a current agent
/// as one push per pipeline (and stays pending until its gateway took them), every other
/// change is one push per node. Returns the nodes sent a push.
async fn notify(
    state: &AppState,
    action: &Action,
    changed: &[Uuid],
    current: &[Uuid],
    older: &[Uuid],
) -> Result<usize> {
    Ok(match action {
        Action::Maintenance(enabled) => {
            let message = PushMessage::ConfigChanged {
                pipeline_id: None,
                reason: maintenance_reason(*enabled),
            };
            state.notifier.push(changed, message).await
        }
        Action::Act(ActionKind::Restart, a) => {
            // Older agents read the restart from their next poll; the push only hastens it.
            let pushed = state
                .notifier
                .push(older, push_of(ActionKind::Restart, a))
                .await;
            let delivered: Vec<Uuid> = futures_util::stream::iter(current.to_vec())
                .map(|node| {
                    let (state, a) = (state.clone(), a.clone());
                    async move {
                        match crate::restarts::push_to_current(&state, node, &a).await {
                            Ok(true) => Some(node),
                            Ok(false) => None,
                            Err(e) => {
                                tracing::warn!(%node, error = %e, "restart push failed; the node's next poll retries it");
                                None
                            }
                        }
                    }
                })
                .buffer_unordered(PUSH_CONCURRENCY)
                .filter_map(std::future::ready)
                .collect()
                .await;
            // Delivered restarts are done; the others stay pending for the polls to retry
            // (unless another action replaced them meanwhile).
            sqlx::query!(
                "UPDATE nodes SET pending_action = NULL WHERE id = ANY($1) AND pending_action = $2",
                &delivered,
                json!(a)
            )
            .execute(&state.pool)
            .await?;
            pushed + delivered.len()
        }
        Action::Act(kind, a) => state.notifier.push(changed, push_of(*kind, a)).await,
    })
}
