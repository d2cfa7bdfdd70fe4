//! The audit trail: every operator change, recorded with the token that made it.
//!
//! A change and its record are written together: handlers pass the transaction (or pool) the
//! change used, so a change that is rolled back leaves no record and a record that cannot be
//! written fails the change. Each record is also logged, naming the token.

use crate::auth::Operator;
use crate::error::Result;
use serde_json::Value;
use sqlx::PgExecutor;

/// One change to record.
pub struct Change<'a> {
    /// What was done, as `<resource>.<verb>` (for example `pipeline.deploy`).
    pub action: &'static str,
    /// The kind of thing changed (`pipeline`, `node`, `token`, …).
    pub target_type: &'static str,
    /// Which one, when it has an id.
    pub target_id: Option<String>,
    /// What changed, briefly (never a secret).
    pub detail: &'a Value,
}

/// Records `change` as made by `op`, through `db` (the change's own transaction where it has
/// one), and logs it with the token's id and name.
pub async fn record<'e>(db: impl PgExecutor<'e>, op: &Operator, change: Change<'_>) -> Result<()> {
    let token_name: String = sqlx::query_scalar!(
        "INSERT INTO audit_log (token_id, token_name, action, target_type, target_id, detail)
         SELECT $1, coalesce((SELECT name FROM operator_tokens WHERE id = $1), ''), $2, $3, $4, $5
         RETURNING token_name",
        op.token_id,
        change.action,
        change.target_type,
        change.target_id.as_deref(),
        change.detail
    )
    .fetch_one(db)
    .await?;
    tracing::info!(
        token_id = %op.token_id,
        token_name = %token_name,
        action = change.action,
        target_type = change.target_type,
        target_id = change.target_id.as_deref().unwrap_or(""),
        detail = %change.detail,
        "operator change"
    );
    Ok(())
}
