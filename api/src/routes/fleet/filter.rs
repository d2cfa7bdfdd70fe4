//! The fleet's filters: read from the list's query string or from a bulk action's `filter`
//! (the same keys), and turned into SQL conditions on `nodes n`, each served by an index.
//!
//! `connected` and `transport` live in Redis, not Postgres. The gateways keep a set of the
//! connected nodes beside each node's presence hash, updated in the same Lua step (see
//! [`flotilla_shared::presence`]); a filter on them reads that set once (liveness checked per
//! gateway) and hands Postgres the live ids as one array, so the page's order, cursor and
//! other filters still run as one index scan. With ~10,000 of 100,000 nodes connected, that
//! is one Redis round trip of ~10,000 short entries, whatever the page.

use crate::error::{ApiError, Result};
use crate::state::AppState;
use flotilla_shared::presence::{self, Transport};
use serde_json::{Map, Value};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

/// Node ids one `ids` filter (or bulk `nodeIds`) may name.
pub const MAX_IDS: usize = 1000;
/// Longest host prefix.
const MAX_HOST: usize = 255;
/// Longest label key or value in a filter.
const MAX_LABEL: usize = 256;
/// Node statuses.
const STATUSES: [&str; 2] = ["HEALTHY", "UNREACHABLE"];
/// Pipeline statuses an agent reports (`UNKNOWN` stands for one this server could not read).
pub const PIPELINE_STATUSES: [&str; 7] = [
    "RUNNING",
    "STARTING",
    "STOPPED",
    "CRASHED",
    "CRASH_LOOP",
    "PENDING",
    "UNKNOWN",
];
/// The keys a filter may have.
pub const KEYS: [&str; 11] = [
    "environmentId",
    "status",
    "connected",
    "transport",
    "label",
    "host",
    "pipelineId",
    "pipelineStatus",
    "crashed",
    "maintenance",
    "ids",
];

/// Which nodes to list or change; every condition must hold.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    environment_id: Option<Uuid>,
    status: Option<&'static str>,
    connected: Option<bool>,
    transport: Option<Transport>,
    /// Effective labels (reported || operator) that must all match.
    labels: Map<String, Value>,
    host: Option<String>,
    pipeline_id: Option<Uuid>,
    pipeline_status: Option<&'static str>,
    crashed: Option<bool>,
    maintenance: Option<bool>,
    ids: Option<Vec<Uuid>>,
}

/// The presence condition, once Redis has been read. Queries that carry one run as unnamed
/// statements, planned with their values: Postgres then hashes the id list (a lookup per
/// row, not a scan of ~10,000 ids) and knows its length.
pub enum Presence {
    /// No presence filter.
    Any,
    /// Only these nodes (connected, on the asked transport).
    In(Vec<Uuid>),
    /// Every node but these (the connected ones).
    NotIn(Vec<Uuid>),
    /// No node can match (`connected=false` with a transport).
    Nothing,
}

fn boolean(key: &str, v: &str) -> Result<bool> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::invalid(key, "true or false")),
    }
}

fn one_of(key: &str, v: &str, allowed: &[&'static str]) -> Result<&'static str> {
    allowed
        .iter()
        .find(|a| **a == v)
        .copied()
        .ok_or_else(|| ApiError::invalid(key, format!("one of {}", allowed.join(", "))))
}

fn uuid(key: &str, v: &str) -> Result<Uuid> {
    Uuid::parse_str(v.trim()).map_err(|_| ApiError::invalid(key, "a UUID"))
}

/// Node ids, at most [`MAX_IDS`], at least one.
pub fn node_ids<'a>(key: &str, ids: impl IntoIterator<Item = &'a str>) -> Result<Vec<Uuid>> {
    let ids: Vec<Uuid> = ids
        .into_iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            Uuid::parse_str(s.trim())
                .map_err(|_| ApiError::invalid(key, "node ids (UUIDs), comma-separated"))
        })
        .collect::<Result<_>>()?;
    if ids.is_empty() || ids.len() > MAX_IDS {
        return Err(ApiError::invalid(
            key,
            format!("1 to {MAX_IDS} node ids (UUIDs)"),
        ));
    }
    Ok(ids)
}

impl Filter {
    /// Applies one `key=value`; `false` for a key that is not a filter key.
    pub fn set(&mut self, key: &str, v: &str) -> Result<bool> {
        let once = |given: bool| {
            if given {
                Err(ApiError::invalid(key, "given more than once"))
            } else {
                Ok(())
            }
        };
        match key {
            "environmentId" => {
                once(self.environment_id.is_some())?;
                self.environment_id = Some(uuid(key, v)?);
            }
            "status" => {
                once(self.status.is_some())?;
                self.status = Some(one_of(key, v, &STATUSES)?);
            }
            "connected" => {
                once(self.connected.is_some())?;
                self.connected = Some(boolean(key, v)?);
            }
            "transport" => {
                once(self.transport.is_some())?;
                let t = v
                    .parse()
                    .map_err(|()| ApiError::invalid(key, "websocket or sse"))?;
                self.transport = Some(t);
            }
            "label" => {
                let (k, val) = v
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| ApiError::invalid(key, "key=value"))?;
                if k.len() > MAX_LABEL || val.len() > MAX_LABEL {
                    return Err(ApiError::invalid(
                        key,
                        format!("key and value of at most {MAX_LABEL} bytes"),
                    ));
                }
                let before = self.labels.insert(k.to_owned(), Value::from(val));
                if before.is_some_and(|b| b != val) {
                    return Err(ApiError::invalid(
                        key,
                        format!("two values for {k}: no node can match"),
                    ));
                }
            }
            "host" => {
                once(self.host.is_some())?;
                if v.is_empty() || v.len() > MAX_HOST || v.chars().any(char::is_control) {
                    return Err(ApiError::invalid(
                        key,
                        format!("a host name prefix of 1 to {MAX_HOST} bytes"),
                    ));
                }
                self.host = Some(v.to_owned());
            }
            "pipelineId" => {
                once(self.pipeline_id.is_some())?;
                self.pipeline_id = Some(uuid(key, v)?);
            }
            "pipelineStatus" => {
                once(self.pipeline_status.is_some())?;
                self.pipeline_status = Some(one_of(key, v, &PIPELINE_STATUSES)?);
            }
            "crashed" => {
                once(self.crashed.is_some())?;
                self.crashed = Some(boolean(key, v)?);
            }
            "maintenance" => {
                once(self.maintenance.is_some())?;
                self.maintenance = Some(boolean(key, v)?);
            }
            "ids" => {
                once(self.ids.is_some())?;
                self.ids = Some(node_ids(key, v.split(','))?);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Reads a bulk action's `filter` object: the list's keys, with JSON booleans or strings,
    /// and lists for `label` and `ids`; an unknown key is refused, since a misspelt filter
    /// would widen the change.
    pub fn from_json(value: &Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| ApiError::invalid("filter", "an object of the fleet list's filters"))?;
        if obj.is_empty() {
            return Err(ApiError::invalid(
                "filter",
                "at least one filter (an empty one would act on every node of every environment; name the environment, or use nodeIds)",
            ));
        }
        let mut f = Filter::default();
        for (key, v) in obj {
            let field = format!("filter.{key}");
            // A null or an empty list would silently drop the filter and widen the change.
            let texts: Vec<String> = match v {
                Value::Null => {
                    return Err(ApiError::invalid(
                        &field,
                        "a value (leave the key out for none)",
                    ))
                }
                Value::String(s) => vec![s.clone()],
                Value::Bool(b) => vec![b.to_string()],
                Value::Array(items) if items.is_empty() => {
                    return Err(ApiError::invalid(
                        &field,
                        "at least one value (leave the key out for none)",
                    ))
                }
                Value::Array(items) if key == "label" || key == "ids" => items
                    .iter()
                    .map(|i| i.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or_else(|| ApiError::invalid(&field, "a list of strings"))?,
                _ => return Err(ApiError::invalid(&field, "a string or a boolean")),
            };
            if key == "ids" {
                f.ids = Some(node_ids(&field, texts.iter().flat_map(|t| t.split(',')))?);
                continue;
            }
            for t in &texts {
                if !f.set(key, t).map_err(|e| rename(e, &field))? {
                    return Err(ApiError::invalid(
                        &field,
                        format!("not a filter; filters are {}", KEYS.join(", ")),
                    ));
                }
            }
        }
        Ok(f)
    }

    /// A filter on exactly these nodes.
    pub fn of_ids(ids: Vec<Uuid>) -> Self {
        Filter {
            ids: Some(ids),
            ..Filter::default()
        }
    }

    /// The environment asked for, if any.
    pub fn environment_id(&self) -> Option<Uuid> {
        self.environment_id
    }

    /// Reads Redis when a presence filter needs it (503 while Redis is unavailable: a page
    /// that ignored the filter would show the wrong nodes).
    pub async fn presence(&self, state: &AppState) -> Result<Presence> {
        if self.connected.is_none() && self.transport.is_none() {
            return Ok(Presence::Any);
        }
        if self.connected == Some(false) && self.transport.is_some() {
            return Ok(Presence::Nothing);
        }
        let live = presence::connected(&state.redis)
            .await
            .map_err(ApiError::Redis)?;
        let ids = live
            .into_iter()
            .filter(|(_, t)| self.transport.is_none_or(|want| want == *t))
            .map(|(id, _)| id)
            .collect();
        Ok(if self.connected == Some(false) {
            Presence::NotIn(ids)
        } else {
            Presence::In(ids)
        })
    }

    /// Appends ` AND <condition>` for each filter, on the alias `n` of `nodes`. Dynamic SQL,
    /// not checked at compile time: which conditions a request has decides the statement (a
    /// fixed one would have to test every filter on every row, and lose the index paths). The
    /// fleet list and bulk action tests cover each filter.
    pub fn push_conditions<'q>(
        &'q self,
        qb: &mut QueryBuilder<'q, Postgres>,
        presence: &'q Presence,
    ) {
        if let Some(env) = self.environment_id {
            qb.push(" AND n.environment_id = ").push_bind(env);
        }
        if let Some(status) = self.status {
            qb.push(" AND n.status = ").push_bind(status);
        }
        if let Some(m) = self.maintenance {
            qb.push(if m {
                " AND n.maintenance"
            } else {
                " AND NOT n.maintenance"
            });
        }
        if !self.labels.is_empty() {
            // Containment on the effective labels: served by nodes_effective_labels_idx.
            qb.push(" AND (n.reported_labels || n.labels) @> ")
                .push_bind(Value::Object(self.labels.clone()));
        }
        if let Some(host) = &self.host {
            // A range on the host order's own key, so the sort index serves it; the upper
            // bound is the prefix followed by the highest code point.
            qb.push(r#" AND lower(n.host) COLLATE "C" >= lower("#)
                .push_bind(host.as_str())
                .push(r#") COLLATE "C" AND lower(n.host) COLLATE "C" < (lower("#)
                .push_bind(host.as_str())
                .push(r#") || chr(1114111)) COLLATE "C""#);
        }
        if let Some(ids) = &self.ids {
            qb.push(" AND n.id = ANY(")
                .push_bind(ids.as_slice())
                .push(")");
        }
        // A status other than RUNNING (and crashed=true) is the exception an operator looks
        // for: its few nodes are read first from the status indexes, then ordered. RUNNING,
        // a pipeline alone or crashed=false match most nodes, so the page walks its order
        // and checks each node by its primary key instead.
        let rare = self.pipeline_status.is_some_and(|s| s != "RUNNING");
        match (self.pipeline_id, self.pipeline_status) {
            (None, None) => {}
            (pipeline, status) => {
                qb.push(if rare {
                    " AND n.id = ANY(ARRAY(SELECT s.node_id FROM node_pipeline_status s WHERE true"
                } else {
                    " AND EXISTS (SELECT 1 FROM node_pipeline_status s WHERE s.node_id = n.id"
                });
                if let Some(p) = pipeline {
                    qb.push(" AND s.pipeline_id = ").push_bind(p);
                }
                if let Some(st) = status {
                    qb.push(" AND s.status = ").push_bind(st);
                }
                qb.push(if rare { "))" } else { ")" });
            }
        }
        match self.crashed {
            None => {}
            Some(true) => {
                qb.push(
                    " AND n.id = ANY(ARRAY(SELECT s.node_id FROM node_pipeline_status s
                       WHERE s.status IN ('CRASHED', 'CRASH_LOOP')))",
                );
            }
            Some(false) => {
                qb.push(
                    " AND NOT EXISTS (SELECT 1 FROM node_pipeline_status s WHERE s.node_id = n.id
                       AND s.status IN ('CRASHED', 'CRASH_LOOP'))",
                );
            }
        }
        match presence {
            Presence::Any => {}
            Presence::In(ids) => {
                qb.push(" AND n.id = ANY(")
                    .push_bind(ids.as_slice())
                    .push(")");
            }
            Presence::NotIn(ids) => {
                qb.push(" AND NOT (n.id = ANY(")
                    .push_bind(ids.as_slice())
                    .push("))");
            }
            Presence::Nothing => {
                qb.push(" AND false");
            }
        }
    }
}

/// The same error, naming `field` (a bulk filter's keys are named `filter.<key>`).
fn rename(e: ApiError, field: &str) -> ApiError {
    match e {
        ApiError::Unprocessable {
            details: Some(mut d),
            error,
        } => {
            d["field"] = Value::from(field);
            ApiError::Unprocessable {
                error,
                details: Some(d),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(e: ApiError) -> String {
        match e {
            ApiError::Unprocessable {
                details: Some(d), ..
            } => d["field"].as_str().unwrap().to_owned(),
            other => panic!("not a 422: {other:?}"),
        }
    }

    #[test]
    fn query_values_are_checked_and_named() {
        let mut f = Filter::default();
        assert!(f.set("status", "HEALTHY").unwrap());
        assert!(!f.set("limit", "5").unwrap());
        assert_eq!(field_of(f.set("status", "HEALTHY").unwrap_err()), "status");
        assert_eq!(
            field_of(f.set("connected", "yes").unwrap_err()),
            "connected"
        );
        assert_eq!(
            field_of(f.set("transport", "smoke").unwrap_err()),
            "transport"
        );
        assert_eq!(field_of(f.set("label", "novalue").unwrap_err()), "label");
        assert_eq!(
            field_of(f.set("pipelineStatus", "BUSY").unwrap_err()),
            "pipelineStatus"
        );
        assert_eq!(field_of(f.set("ids", "1,2").unwrap_err()), "ids");
        assert_eq!(field_of(f.set("host", "").unwrap_err()), "host");
        f.set("label", "a=1").unwrap();
        assert_eq!(field_of(f.set("label", "a=2").unwrap_err()), "label");
        let many = vec![Uuid::nil().to_string(); MAX_IDS + 1].join(",");
        assert_eq!(field_of(f.set("ids", &many).unwrap_err()), "ids");
    }

    #[test]
    fn a_bulk_filter_takes_the_same_keys_and_refuses_others() {
        let f = Filter::from_json(&json!({
            "status": "UNREACHABLE", "crashed": true, "label": ["a=1", "b=2"],
            "ids": [Uuid::nil().to_string()]
        }))
        .unwrap();
        assert_eq!(f.status, Some("UNREACHABLE"));
        assert_eq!(f.labels.len(), 2);
        assert_eq!(f.ids.as_deref(), Some(&[Uuid::nil()][..]));
        let e = Filter::from_json(&json!({ "stauts": "HEALTHY" })).unwrap_err();
        assert_eq!(field_of(e), "filter.stauts");
        let e = Filter::from_json(&json!({ "connected": 1 })).unwrap_err();
        assert_eq!(field_of(e), "filter.connected");
        let e = Filter::from_json(&json!({ "connected": "maybe" })).unwrap_err();
        assert_eq!(field_of(e), "filter.connected");
    }
}
