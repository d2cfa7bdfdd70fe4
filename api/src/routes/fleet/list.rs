//! `GET /api/v1/fleet`: the fleet a page at a time, filtered and ordered by the server, and
//! `GET /api/v1/fleet/summary`: the counts the page's summary bar shows.
//!
//! Pages are keyset pages: the cursor carries the last row's sort key and id, and the next
//! page starts strictly after it, so rows inserted or removed meanwhile never shift a page
//! (no OFFSET, and no page costs more than its own rows).

use super::filter::{Filter, Presence};
use super::{select_nodes, with_crash_counts, with_presence, NodeView, NODE_SUMMARY};
use crate::auth::{Operator, Role};
use crate::error::{ApiError, Result};
use crate::extract::Query;
use crate::paging;
use crate::state::AppState;
use axum::extract::{RawQuery, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, QueryBuilder};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The list's orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sort {
    /// Host name, case-insensitive, ascending (the default).
    Host,
    /// Last heartbeat, newest first; never-seen nodes last.
    LastSeen,
}

/// Where a page ended: the last row's sort key and id.
#[derive(Serialize, Deserialize)]
#[serde(tag = "sort", rename_all = "camelCase", deny_unknown_fields)]
enum After {
    Host { host: String, id: Uuid },
    LastSeen { at: Option<DateTime<Utc>>, id: Uuid },
}

/// A page of the fleet.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetPage {
    nodes: Vec<NodeView>,
    /// Pass as `cursor` (with the same filters and sort) for the next page; null on the last.
    next_cursor: Option<String>,
}

/// The list's parameters.
struct ListParams {
    filter: Filter,
    limit: i64,
    sort: Sort,
    after: Option<After>,
}

impl ListParams {
    /// Reads the query string; parameters that are not the list's are ignored.
    fn parse(query: Option<&str>) -> Result<Self> {
        let mut filter = Filter::default();
        let (mut limit, mut cursor, mut sort) = (None, None, None);
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match key.as_ref() {
                "limit" => {
                    let n = value
                        .parse()
                        .map_err(|_| ApiError::invalid("limit", "a number, 1 to 1000"))?;
                    limit = Some(n);
                }
                "cursor" => cursor = Some(value.into_owned()),
                "sort" => {
                    sort = Some(match value.as_ref() {
                        "host" => Sort::Host,
                        "lastSeen" => Sort::LastSeen,
                        _ => return Err(ApiError::invalid("sort", "host or lastSeen")),
                    })
                }
                other => {
                    filter.set(other, &value)?;
                }
            }
        }
        let sort = sort.unwrap_or(Sort::Host);
        let after: Option<After> = paging::decode(cursor.as_deref())?;
        let matches = match &after {
            None => true,
            Some(After::Host { .. }) => sort == Sort::Host,
            Some(After::LastSeen { .. }) => sort == Sort::LastSeen,
        };
        if !matches {
            return Err(ApiError::invalid(
                "cursor",
                "made for another sort: pass the sort of the page it came from",
            ));
        }
        Ok(Self {
            filter,
            limit: paging::limit(limit)?,
            sort,
            after,
        })
    }
}

/// The SQL of one page: `limit + 1` rows, to learn whether another page follows. Built at run
/// time, so not checked at compile time: the filters, the cursor and the order present change
/// the statement (each combination is its own index path). The fleet list tests
/// (`fleet_paging`) cover it.
fn page_query<'q>(p: &'q ListParams, presence: &'q Presence) -> QueryBuilder<'q, Postgres> {
    let mut qb = QueryBuilder::new(select_nodes(
        &format!(r#"{NODE_SUMMARY}, lower(n.host) COLLATE "C" AS sort_host"#),
        "",
    ));
    qb.push(" WHERE true");
    p.filter.push_conditions(&mut qb, presence);
    match &p.after {
        Some(After::Host { host, id }) => {
            qb.push(r#" AND (lower(n.host) COLLATE "C", n.id) > ("#)
                .push_bind(host.as_str())
                .push(r#" COLLATE "C", "#)
                .push_bind(*id)
                .push(")");
        }
        Some(After::LastSeen { at, id }) => {
            qb.push(" AND (coalesce(n.last_seen, '-infinity'::timestamptz), n.id) < (coalesce(")
                .push_bind(*at)
                .push("::timestamptz, '-infinity'::timestamptz), ")
                .push_bind(*id)
                .push(")");
        }
        None => {}
    }
    qb.push(match p.sort {
        Sort::Host => r#" ORDER BY lower(n.host) COLLATE "C", n.id"#,
        Sort::LastSeen => {
            " ORDER BY coalesce(n.last_seen, '-infinity'::timestamptz) DESC, n.id DESC"
        }
    });
    qb.push(" LIMIT ").push_bind(p.limit + 1);
    qb
}

#[utoipa::path(
    get,
    path = "/api/v1/fleet",
    tag = "operator",
    params(
        ("environmentId" = Option<String>, Query, description = "only this environment (UUID)"),
        ("limit" = Option<i64>, Query, description = "nodes per page, 1 to 1000 (default 100)"),
        ("cursor" = Option<String>, Query, description = "nextCursor of the previous page (same filters and sort)"),
        ("sort" = Option<String>, Query, description = "host (default; case-insensitive, ascending) or lastSeen (newest first)"),
        ("status" = Option<String>, Query, description = "HEALTHY or UNREACHABLE"),
        ("connected" = Option<bool>, Query, description = "push channel connected (true) or not (false)"),
        ("transport" = Option<String>, Query, description = "connected over websocket or sse"),
        ("label" = Option<Vec<String>>, Query, description = "k=v on the effective labels (reported, then operator); repeat for more, all must match"),
        ("host" = Option<String>, Query, description = "host name prefix, case-insensitive"),
        ("pipelineId" = Option<String>, Query, description = "nodes reporting this pipeline (UUID)"),
        ("pipelineStatus" = Option<String>, Query, description = "with pipelineId: that pipeline's status; alone: any pipeline's (RUNNING, STARTING, STOPPED, CRASHED, CRASH_LOOP, PENDING, UNKNOWN)"),
        ("crashed" = Option<bool>, Query, description = "some pipeline CRASHED or CRASH_LOOP (true) or none (false)"),
        ("maintenance" = Option<bool>, Query, description = "in maintenance (true) or not (false)"),
        ("ids" = Option<String>, Query, description = "only these nodes: up to 1000 comma-separated ids"),
    ),
    responses((status = 200, body = FleetPage), crate::openapi::Invalid, (status = 503, description = "a presence filter while Redis is unavailable", body = flotilla_shared::protocol::ErrorBody), crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    op: Operator,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<FleetPage>> {
    op.require(Role::Viewer)?;
    let params = ListParams::parse(query.as_deref())?;
    let presence = params.filter.presence(&state).await?;
    // Planned with the values each time (an unnamed statement): the id lists of presence and
    // `ids` are hashed, and the status and label estimates fit the values asked for.
    let mut nodes: Vec<NodeView> = page_query(&params, &presence)
        .build_query_as()
        .persistent(false)
        .fetch_all(&state.pool)
        .await?;
    let next_cursor = paging::next_cursor(&mut nodes, params.limit, |last| match params.sort {
        Sort::Host => After::Host {
            host: last.sort_host.clone().unwrap_or_default(),
            id: last.id,
        },
        Sort::LastSeen => After::LastSeen {
            at: last.last_seen,
            id: last.id,
        },
    });
    let nodes = with_presence(&state, with_crash_counts(nodes)).await;
    Ok(axum::Json(FleetPage { nodes, next_cursor }))
}

/// The summary query's parameters.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(crate) struct SummaryQuery {
    /// Only this environment (UUID).
    environment_id: Option<String>,
}

/// The fleet's counts.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetSummary {
    total: i64,
    /// Nodes per status (every status present, zero included).
    by_status: BTreeMap<String, i64>,
    /// Nodes whose push channel is connected; null while Redis is unavailable.
    connected: Option<i64>,
    /// Pipelines (per node) reported CRASHED or CRASH_LOOP.
    crashed_pipelines: i64,
    /// Nodes with at least one such pipeline.
    crashed_nodes: i64,
    /// Nodes in maintenance.
    maintenance: i64,
}

#[utoipa::path(
    get,
    path = "/api/v1/fleet/summary",
    tag = "operator",
    params(SummaryQuery),
    responses((status = 200, body = FleetSummary), crate::openapi::Invalid, crate::openapi::OperatorErrors),
    security(("operator_token" = []), ("session_cookie" = []))
)]
pub(crate) async fn summary(
    State(state): State<AppState>,
    op: Operator,
    Query(q): Query<SummaryQuery>,
) -> Result<axum::Json<FleetSummary>> {
    op.require(Role::Viewer)?;
    let environment = q
        .environment_id
        .map(|e| Uuid::parse_str(&e).map_err(|_| ApiError::invalid("environmentId", "a UUID")))
        .transpose()?;
    // Three independent reads, run at once: one pass over the environment's nodes, one over
    // its crashed pipelines (the status index of node_pipeline_status), and the connected
    // nodes (Redis, then their ids matched in the environment). Runtime statements, not
    // checked at compile time: each is planned with its values every time (`persistent(false)`,
    // so an environment's index serves it), which sqlx 0.8's checked macros cannot ask for.
    // `the_summary_counts_statuses_presence_crashes_and_maintenance` covers them.
    let env_clause = if environment.is_some() {
        " AND n.environment_id = $1"
    } else {
        " AND $1::uuid IS NULL"
    };
    let statuses = async {
        sqlx::query_as::<_, (String, i64, i64)>(&format!(
            "SELECT n.status, count(*), count(*) FILTER (WHERE n.maintenance)
             FROM nodes n WHERE true{env_clause} GROUP BY n.status"
        ))
        .bind(environment)
        .persistent(false)
        .fetch_all(&state.pool)
        .await
    };
    let crashed = async {
        sqlx::query_as::<_, (i64, i64)>(&format!(
            "SELECT count(*), count(DISTINCT s.node_id)
             FROM node_pipeline_status s JOIN nodes n ON n.id = s.node_id
             WHERE s.status IN ('CRASHED', 'CRASH_LOOP'){env_clause}"
        ))
        .bind(environment)
        .persistent(false)
        .fetch_one(&state.pool)
        .await
    };
    let connected = async {
        match flotilla_shared::presence::connected(&state.redis).await {
            Ok(live) => {
                let ids: Vec<Uuid> = live.into_iter().map(|(id, _)| id).collect();
                sqlx::query_scalar::<_, i64>(&format!(
                    "SELECT count(*) FROM nodes n WHERE n.id = ANY($2){env_clause}"
                ))
                .bind(environment)
                .bind(&ids)
                .persistent(false)
                .fetch_one(&state.pool)
                .await
                .map(Some)
            }
            Err(e) => {
                tracing::warn!(error = %e, "presence unavailable; summary without connected count");
                Ok(None)
            }
        }
    };
    let (rows, (crashed_pipelines, crashed_nodes), connected) =
        tokio::try_join!(statuses, crashed, connected)?;
    let mut by_status: BTreeMap<String, i64> = ["HEALTHY", "UNREACHABLE"]
        .into_iter()
        .map(|s| (s.to_owned(), 0))
        .collect();
    let (mut total, mut maintenance) = (0, 0);
    for (status, n, m) in rows {
        total += n;
        maintenance += m;
        by_status.insert(status, n);
    }
    Ok(axum::Json(FleetSummary {
        total,
        by_status,
        connected,
        crashed_pipelines,
        crashed_nodes,
        maintenance,
    }))
}
