//! The heartbeat body: versions, labels, per-pipeline status, update error.

use super::*;

impl State {
    /// The heartbeat body for the current state.
    pub fn heartbeat(&self, now: Instant) -> Heartbeat {
        let pipelines = self
            .pipelines
            .iter()
            .filter_map(|(id, p)| {
                let desired = p.desired.as_ref()?;
                let mut status = PipelineStatus {
                    pipeline_id: id.clone(),
                    version: desired.version,
                    status: PipelineState::Pending,
                    pid: None,
                    uptime_seconds: None,
                    events_in: None,
                    events_out: None,
                    errors_total: None,
                    bytes_in: None,
                    bytes_out: None,
                    events_discarded: None,
                    component_metrics: None,
                    utilization: None,
                    recent_logs: None,
                    config_checksum: None,
                };
                match &p.proc {
                    Proc::Idle => {}
                    Proc::Starting { .. } | Proc::Stopping { .. } => {
                        status.status = PipelineState::Starting
                    }
                    Proc::Running {
                        pid,
                        since,
                        checksum,
                        version,
                    } => {
                        status.status = PipelineState::Running;
                        status.version = *version;
                        status.pid = Some(i64::from(*pid));
                        status.uptime_seconds = Some(now.duration_since(*since).as_secs() as i64);
                        status.config_checksum = Some(checksum.clone());
                    }
                    Proc::Backoff { .. } => status.status = PipelineState::Crashed,
                }
                if status.status == PipelineState::Crashed {
                    status.recent_logs = p.last_error.as_ref().map(|e| serde_json::json!([e]));
                }
                Some(status)
            })
            .collect();
        Heartbeat {
            agent_version: Some(self.identity.agent_version.clone()),
            vector_version: self.identity.vector_version.clone(),
            deployment_mode: self.identity.deployment_mode.clone(),
            labels: (!self.identity.labels.is_empty()).then(|| self.identity.labels.clone()),
            update_error: self.update_error.map(|f| f.as_str().to_owned()),
            pipelines,
            // No `agentHealth`: a Flotilla api takes a node that sends it for a current
            // VectorFlow agent and then hands restarts out only as pushes.
            ..Heartbeat::default()
        }
    }
}
