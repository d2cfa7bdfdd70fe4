//! Bodies of the agent HTTP API (VectorFlow agent protocol v1). All JSON is camelCase and
//! unknown request fields are ignored.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Node labels: string keys to string values.
pub type Labels = BTreeMap<String, String>;

/// `POST /api/agent/enroll` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EnrollRequest {
    /// Enrollment token of the environment.
    pub token: String,
    /// Host name of the node.
    pub hostname: String,
    /// Operating system.
    #[serde(default)]
    pub os: Option<String>,
    /// Agent version.
    #[serde(default)]
    pub agent_version: Option<String>,
    /// Vector version.
    #[serde(default)]
    pub vector_version: Option<String>,
    /// Labels the agent detected (current agents); applied at once, so pipelines bound by
    /// selector arrive on the first poll. Entries whose value is not a string are skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub labels: Option<Value>,
}

/// `POST /api/agent/enroll` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EnrollResponse {
    /// The new node (an opaque string to agents: other servers issue other ids).
    pub node_id: String,
    /// The node token, returned this once.
    pub node_token: String,
    /// The environment the node joined.
    pub environment_id: String,
    /// Its name.
    pub environment_name: String,
}

/// One pipeline in the config response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PipelineConfig {
    /// Pipeline id (opaque).
    pub pipeline_id: String,
    /// Pipeline name.
    pub pipeline_name: String,
    /// Deployed version number.
    pub version: i32,
    /// Vector config to write.
    pub config_yaml: String,
    /// Hex SHA-256 of what the agent writes; changes exactly when a restart is needed.
    pub checksum: String,
    /// Vector log level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Secrets (none with the built-in backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<BTreeMap<String, String>>,
    /// Certificate files to write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_files: Option<Vec<Value>>,
}

/// A pending sample request in the config response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SampleRequestConfig {
    /// Request id (opaque).
    pub request_id: String,
    /// Pipeline to tap (opaque).
    pub pipeline_id: String,
    /// Components to tap.
    pub component_keys: Vec<String>,
    /// Events per component.
    pub limit: u32,
}

/// The node's pending fleet action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PendingAction {
    /// `self_update` or `restart`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Self-update target version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    /// Self-update download URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_url: Option<String>,
    /// Self-update SHA-256: hex, or `sha256:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Self-update: optional ed25519 signature (base64) over the binary's SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Restart: only this pipeline (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_id: Option<String>,
}

/// `GET /api/agent/config` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ConfigResponse {
    /// Pipelines to run.
    pub pipelines: Vec<PipelineConfig>,
    /// Poll interval.
    pub poll_interval_ms: u64,
    /// The push channel's WebSocket URL (the older agents; always sent by Flotilla, absent
    /// from servers that push only over SSE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket_url: Option<String>,
    /// The push channel's SSE URL, `GET /api/agent/push` (current agents use it only when its
    /// scheme and host:port equal their own server URL's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_url: Option<String>,
    /// Always `BUILTIN`.
    pub secret_backend: String,
    /// Pending sample requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_requests: Option<Vec<SampleRequestConfig>>,
    /// Pending action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_action: Option<PendingAction>,
}

/// Pipeline process states an agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PipelineState {
    /// Running.
    Running,
    /// Starting.
    Starting,
    /// Stopped.
    Stopped,
    /// Crashed (or could not start).
    Crashed,
    /// Crashed ten times in quick succession; the agent backs off.
    CrashLoop,
    /// Waiting to start.
    Pending,
}

impl PipelineState {
    /// The upper-case name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Starting => "STARTING",
            Self::Stopped => "STOPPED",
            Self::Crashed => "CRASHED",
            Self::CrashLoop => "CRASH_LOOP",
            Self::Pending => "PENDING",
        }
    }
}

/// One pipeline's status in a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PipelineStatus {
    /// Pipeline id (opaque; ids the server does not know are skipped).
    pub pipeline_id: String,
    /// Version running.
    pub version: i32,
    /// Process state.
    pub status: PipelineState,
    /// Process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    /// Seconds since start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<i64>,
    /// Events in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_in: Option<i64>,
    /// Events out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_out: Option<i64>,
    /// Errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors_total: Option<i64>,
    /// Bytes in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<i64>,
    /// Bytes out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<i64>,
    /// Events discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_discarded: Option<i64>,
    /// Per-component metrics (opaque).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_metrics: Option<Value>,
    /// Utilisation (opaque).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization: Option<Value>,
    /// Recent log lines (opaque).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent_logs: Option<Value>,
    /// Checksum of the config the process runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_checksum: Option<String>,
}

/// `POST /api/agent/heartbeat` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// Agent version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Vector version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector_version: Option<String>,
    /// Deployment mode (e.g. STANDALONE, DOCKER).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_mode: Option<String>,
    /// Labels the agent reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    /// The last self-update failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_error: Option<String>,
    /// The user the agent runs as (current agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_as: Option<String>,
    /// Pipeline statuses.
    #[serde(default)]
    pub pipelines: Vec<PipelineStatus>,
    /// Host metrics (opaque).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_metrics: Option<Value>,
    /// Legacy sample results, handled like `POST /api/agent/samples`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_results: Option<Vec<SampleResult>>,
    /// Agent health (opaque).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_health: Option<Value>,
}

/// One field of an inferred event schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SchemaField {
    /// Field path.
    pub path: String,
    /// Type name.
    #[serde(rename = "type")]
    pub kind: String,
    /// Sample value.
    #[serde(default)]
    pub sample: Value,
}

/// One component's sample result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SampleResult {
    /// The sample request (opaque; ids the server does not know are skipped).
    pub request_id: String,
    /// The component tapped.
    pub component_key: String,
    /// Events captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<Value>>,
    /// Inferred schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Vec<SchemaField>>,
    /// Why the tap failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /api/agent/samples` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SamplesRequest {
    /// Results, one per component.
    pub results: Vec<SampleResult>,
}

/// One element of `POST /api/agent/logs`: new log lines of one pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct LogBatch {
    /// The pipeline (opaque; ids the server does not know are skipped).
    pub pipeline_id: String,
    /// The lines, oldest first.
    pub lines: Vec<String>,
}

/// `POST /api/agent/tap-events`: a batch of a live tap's events, or (with `status`) its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TapEvents {
    /// The tap (`requestId` of its `tap_start`).
    pub request_id: String,
    /// Its pipeline.
    #[serde(default)]
    pub pipeline_id: String,
    /// Its component.
    #[serde(default)]
    pub component_id: String,
    /// Events captured since the last batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<Value>>,
    /// `stopped` when the tap has ended on the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Why it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `{ok: true}` response.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Ok {
    /// Always true.
    pub ok: bool,
}

/// `{error, details?}` body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// Specifics, e.g. which field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_ignores_unknown_fields_and_accepts_minimal_body() {
        let hb: Heartbeat =
            serde_json::from_str(r#"{"pipelines":[],"futureField":{"a":1}}"#).unwrap();
        assert!(hb.pipelines.is_empty());
        let hb: Heartbeat = serde_json::from_str("{}").unwrap();
        assert!(hb.sample_results.is_none());
    }

    #[test]
    fn config_response_is_camel_case() {
        let c = ConfigResponse {
            pipelines: vec![],
            poll_interval_ms: 15000,
            websocket_url: Some("ws://x".into()),
            push_url: Some("http://x/api/agent/push".into()),
            secret_backend: "BUILTIN".into(),
            sample_requests: None,
            pending_action: Some(PendingAction {
                kind: "restart".into(),
                target_version: None,
                download_url: None,
                checksum: None,
                signature: None,
                pipeline_id: None,
            }),
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["pollIntervalMs"], 15000);
        assert_eq!(v["websocketUrl"], "ws://x");
        assert_eq!(v["pushUrl"], "http://x/api/agent/push");
        assert_eq!(v["secretBackend"], "BUILTIN");
        assert_eq!(v["pendingAction"]["type"], "restart");
        assert!(v.get("sampleRequests").is_none());
    }
}
