//! Node selectors: which nodes run a pipeline.
//!
//! A selector is a JSON object of string label values; a node matches when every key/value
//! is among its labels (the agent-reported labels overlaid with the operator's). In SQL that
//! is JSONB containment: `labels @> selector`.

use crate::error::ApiError;
use serde_json::{Map, Value};
use sqlx::PgExecutor;
use uuid::Uuid;

/// SQL for a node's effective labels (operator labels override reported ones).
pub const EFFECTIVE_LABELS: &str = "(n.reported_labels || n.labels)";

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

/// Nodes of `environment` matching any of `selectors` (`None` entries are skipped).
pub async fn matching_nodes(
    db: impl PgExecutor<'_>,
    environment: Uuid,
    selectors: &[Option<&Value>],
) -> Result<Vec<Uuid>, sqlx::Error> {
    let selectors: Vec<Value> = selectors.iter().flatten().map(|v| (*v).clone()).collect();
    if selectors.is_empty() {
        return Ok(Vec::new());
    }
    // `@> ANY (ARRAY …)` on the exact indexed expression lets Postgres use the GIN index.
    sqlx::query_scalar(&format!(
        "SELECT n.id FROM nodes n
         WHERE n.environment_id = $1
           AND {EFFECTIVE_LABELS} @> ANY (ARRAY(SELECT jsonb_array_elements($2::jsonb)))"
    ))
    .bind(environment)
    .bind(Value::Array(selectors))
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
