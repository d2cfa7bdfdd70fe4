//! Node selectors: which nodes run a pipeline.
//!
//! A selector is a JSON object of string label values; a node matches when every key/value
//! is among its labels. Which labels is the pipeline version's choice ([`SelectorLabels`]):
//! its effective labels (the agent-reported ones overlaid with the operator's), or the
//! operator-set ones alone, which an agent cannot claim for itself. In SQL that is JSONB
//! containment: `labels @> selector`.

use crate::error::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::PgExecutor;
use uuid::Uuid;

/// SQL for a node's effective labels (operator labels override reported ones).
pub const EFFECTIVE_LABELS: &str = "(n.reported_labels || n.labels)";

/// SQL: node `n` is one pipeline version `v` is placed on (its selector holds on the labels
/// the version matches). `places_sql!()` is the predicate as a literal, for `concat!`;
/// `places_sql!(sqlx::query, [<before>], [<after>])` calls `sqlx::query!(<before> <predicate>
/// <after>)`, so a compile-time-checked statement (whose SQL is literals joined by `+`)
/// contains it: `[<before>]` ends with a `+`, `[<after>]` starts with one.
macro_rules! places_sql {
    () => {
        $crate::selector::places_sql!(concat, [], [])
    };
    ($($m:ident)::+, [$($before:tt)*], [$($after:tt)*]) => {
        $($m)::+!($($before)* "(CASE WHEN v.selector_labels = 'operator' THEN n.labels
               ELSE n.reported_labels || n.labels END) @> v.node_selector" $($after)*)
    };
}
pub(crate) use places_sql;

/// Which of a node's labels a pipeline version's selector matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SelectorLabels {
    /// Reported and operator-set labels (operator-set ones win): the default.
    #[default]
    Any,
    /// Operator-set labels only: a node cannot select itself by the labels it reports.
    Operator,
}

impl SelectorLabels {
    /// As stored in `pipeline_versions.selector_labels`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::Operator => "operator",
        }
    }
}

impl TryFrom<String> for SelectorLabels {
    type Error = String;

    fn try_from(stored: String) -> Result<Self, String> {
        match stored.as_str() {
            "any" => Ok(Self::Any),
            "operator" => Ok(Self::Operator),
            _ => Err(format!("unknown selector_labels {stored:?}")),
        }
    }
}

/// Read from the text column `selector_labels` (in a checked query, as
/// `selector_labels AS "selector_labels: SelectorLabels"`); an unknown value is an error.
impl sqlx::Type<sqlx::Postgres> for SelectorLabels {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl sqlx::Decode<'_, sqlx::Postgres> for SelectorLabels {
    fn decode(value: sqlx::postgres::PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
        let stored = <String as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
        Ok(Self::try_from(stored)?)
    }
}

/// Where a pipeline version runs: its selector (`node_selector`), and the labels it matches
/// (`selector_labels`).
#[derive(Debug, Clone)]
pub struct Placement {
    /// The selector (`node_selector`).
    pub selector: Value,
    /// The labels it matches (`selector_labels`).
    pub labels: SelectorLabels,
}

impl Placement {
    /// From a version's columns as an outer join gives them: `None` without a selector (no
    /// version). A value the table's check would refuse counts as `any`, the wider match.
    pub fn of(selector: Option<Value>, labels: Option<String>) -> Option<Self> {
        Some(Self {
            selector: selector?,
            labels: labels
                .and_then(|l| SelectorLabels::try_from(l).ok())
                .unwrap_or_default(),
        })
    }
}

/// Largest number of labels on a node or keys in a selector.
const MAX_LABELS: usize = 64;

/// Checks that `value` is a label map (string → string); `field` names it in the error.
pub fn validate_labels(field: &str, value: &Value) -> Result<Map<String, Value>, ApiError> {
    let map = value
        .as_object()
        .ok_or_else(|| ApiError::invalid(field, "must be an object of string values"))?;
    if map.len() > MAX_LABELS {
        return Err(ApiError::invalid(
            field,
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (k, v) in map {
        if k.is_empty() || k.len() > 128 {
            return Err(ApiError::invalid(
                field,
                "label keys are 1 to 128 characters",
            ));
        }
        match v.as_str() {
            Some(s) if s.len() <= 256 => {}
            _ => {
                return Err(ApiError::invalid(
                    field,
                    format!("label `{k}` must be a string of at most 256 characters"),
                ))
            }
        }
    }
    Ok(map.clone())
}

/// The valid entries of labels an agent reports (string keys of 1 to 128 characters to
/// string values of at most 256, at most 64 of them); the rest are skipped, so one odd label
/// never costs the agent its request. Anything but an object gives no labels.
pub fn reported_labels(value: &Value) -> Map<String, Value> {
    let Some(map) = value.as_object() else {
        return Map::new();
    };
    map.iter()
        .filter(|(k, v)| {
            !k.is_empty() && k.len() <= 128 && v.as_str().is_some_and(|s| s.len() <= 256)
        })
        .take(MAX_LABELS)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// SQL: node `n` matches one of the selectors in JSON array `$2` (on its effective labels) or
/// in `$3` (on its operator labels), as [`selector_params`] builds them. `@> ANY (ARRAY …)` on
/// the exact indexed expressions lets Postgres use the GIN indexes (effective labels, operator
/// labels); an empty array matches nothing. Written into a compile-time-checked statement as
/// [`places_sql!`] is: `matches_sql!(sqlx::query, [<before> +], [+ <after>])`.
macro_rules! matches_sql {
    ($($m:ident)::+, [$($before:tt)*], [$($after:tt)*]) => {
        $($m)::+!($($before)* "((n.reported_labels || n.labels) @> ANY (ARRAY(SELECT jsonb_array_elements($2::jsonb)))
     OR n.labels @> ANY (ARRAY(SELECT jsonb_array_elements($3::jsonb))))" $($after)*)
    };
}
pub(crate) use matches_sql;

/// The `$2` and `$3` of [`matches_sql!`] for `placements` (`None` entries are skipped); `None`
/// when no placement is left, which matches no node.
pub fn selector_params(placements: &[Option<&Placement>]) -> Option<(Value, Value)> {
    let (operator, any): (Vec<&Placement>, Vec<&Placement>) = placements
        .iter()
        .flatten()
        .partition(|p| p.labels == SelectorLabels::Operator);
    if operator.is_empty() && any.is_empty() {
        return None;
    }
    let selectors =
        |ps: Vec<&Placement>| Value::Array(ps.into_iter().map(|p| p.selector.clone()).collect());
    Some((selectors(any), selectors(operator)))
}

/// Nodes of `environment` matching any of `placements` (`None` entries are skipped).
pub async fn matching_nodes(
    db: impl PgExecutor<'_>,
    environment: Uuid,
    placements: &[Option<&Placement>],
) -> Result<Vec<Uuid>, sqlx::Error> {
    let Some((any, operator)) = selector_params(placements) else {
        return Ok(Vec::new());
    };
    matches_sql!(
        sqlx::query_scalar,
        ["SELECT n.id FROM nodes n WHERE n.environment_id = $1 AND " +],
        [, environment, any, operator]
    )
    .fetch_all(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_must_be_string_maps() {
        assert!(validate_labels("l", &json!({"a": "b"})).is_ok());
        assert!(validate_labels("l", &json!({})).is_ok());
        for bad in [
            json!([]),
            json!("x"),
            json!({"a": 1}),
            json!({"": "x"}),
            json!({"a": null}),
        ] {
            assert!(validate_labels("l", &bad).is_err(), "{bad}");
        }
    }
}
