//! Restarts, delivered so every agent generation can act on them.
//!
//! Older agents and Flotilla's own read a restart from the config's `pendingAction` (a push
//! only makes them poll); the poll that hands it out consumes it. Current VectorFlow agents do
//! not understand a restart there: they need one `action` push per pipeline, carrying its
//! `pipelineId`. A node is taken for a current agent once its heartbeat carried
//! `agentHealth`. For such a node the restart stays pending until a gateway holding its push
//! channel has received the pushes; each poll of the node retries them.

use crate::error::Result;
use crate::state::AppState;
use flotilla_shared::frames::{ActionKind, PushMessage};
use flotilla_shared::protocol::PendingAction;
use uuid::Uuid;

/// One restart push per pipeline.
fn pushes(pipelines: &[String]) -> Vec<PushMessage> {
    pipelines
        .iter()
        .map(|p| PushMessage::Action {
            action: ActionKind::Restart,
            target_version: None,
            download_url: None,
            checksum: None,
            signature: None,
            pipeline_id: Some(p.clone()),
        })
        .collect()
}

/// The pipelines a restart of `restart` concerns on the node: the one it names, or every
/// pipeline the node reports.
async fn targets(state: &AppState, node: Uuid, restart: &PendingAction) -> Result<Vec<String>> {
    if let Some(p) = &restart.pipeline_id {
        return Ok(vec![p.clone()]);
    }
    let ids: Vec<Uuid> = sqlx::query_scalar!(
        "SELECT pipeline_id FROM node_pipeline_status WHERE node_id = $1 ORDER BY pipeline_id",
        node
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(ids.iter().map(Uuid::to_string).collect())
}

/// Pushes a restart to a current agent; true when its gateway received every push.
pub async fn push_to_current(
    state: &AppState,
    node: Uuid,
    restart: &PendingAction,
) -> Result<bool> {
    let pipelines = targets(state, node, restart).await?;
    Ok(state.notifier.deliver(node, pushes(&pipelines)).await)
}

/// A poll of a current agent with a restart pending: the pushes are sent again, and the
/// restart is cleared once they arrived (only if it is still the same restart).
pub async fn retry_on_poll(state: &AppState, node: Uuid, restart: &PendingAction) -> Result<()> {
    if push_to_current(state, node, restart).await? {
        let cleared = sqlx::query!(
            "UPDATE nodes SET pending_action = NULL WHERE id = $1 AND pending_action = $2",
            node,
            serde_json::json!(restart)
        )
        .execute(&state.pool)
        .await?
        .rows_affected();
        // The fleet shows the pending action: its row changed.
        if cleared > 0 {
            crate::fleet_events::node_changed(&state.redis, node, "action");
        }
    }
    Ok(())
}
