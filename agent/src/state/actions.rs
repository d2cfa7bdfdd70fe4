//! Fleet actions: restart one pipeline or all, or self-update once per pending action.

use super::*;
use crate::update::UpdateFailure;

/// The self-update this process was re-executed for.
#[derive(Debug, Clone)]
pub struct PreviousUpdate {
    /// The action.
    pub action: PendingAction,
    /// Why it did not take, if the binary found in place is not the one requested.
    pub error: Option<UpdateFailure>,
}

impl State {
    pub(super) fn on_pending_action(
        &mut self,
        action: Option<PendingAction>,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        let Some(action) = action else {
            self.handled_action = None;
            return;
        };
        // The api hands a restart out once (the poll consumes it), so each one is acted on;
        // a self-update stays pending until settled, so it is acted on once.
        if action.kind != "restart" {
            if self.handled_action.as_ref() == Some(&action) || self.update_in_progress {
                return;
            }
            self.handled_action = Some(action.clone());
        }
        match action.kind.as_str() {
            "restart" => self.restart_pipelines(action.pipeline_id.as_deref(), now, out),
            "self_update" => {
                if action.target_version.as_deref() == Some(self.identity.agent_version.as_str()) {
                    tracing::info!(version = %self.identity.agent_version, "self-update target is the running version");
                    return;
                }
                match (&action.download_url, &action.checksum) {
                    (Some(url), Some(sum)) if !url.is_empty() && !sum.is_empty() => {
                        tracing::info!(target = ?action.target_version, "self-update requested; downloading");
                        self.update_in_progress = true;
                        self.update_error = None;
                        out.push(Command::SelfUpdate(action));
                    }
                    _ => {
                        tracing::warn!("self_update action without downloadUrl or checksum");
                        self.update_error = Some(UpdateFailure::InvalidAction);
                        self.changed(now);
                    }
                }
            }
            other => tracing::warn!(action = other, "ignoring an unknown fleet action"),
        }
    }

    /// Restarts one pipeline (`pipelineId` of the action) or, without one, all of them.
    pub(super) fn restart_pipelines(
        &mut self,
        only: Option<&str>,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        let restarted = self.restart(only, out);
        match only {
            Some(id) if restarted == 0 => {
                tracing::warn!(pipeline = %id, "restart of a pipeline not deployed here; ignored")
            }
            Some(id) => tracing::info!(pipeline = %id, "restarting one pipeline (fleet action)"),
            None => tracing::info!(count = restarted, "restarting all pipelines (fleet action)"),
        }
        self.changed(now);
    }
}
