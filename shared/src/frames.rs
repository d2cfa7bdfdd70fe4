//! Frames pushed to agents: one JSON text frame each, `type` first.
//!
//! The api builds a [`PushFrame`] and publishes its JSON to the node's Redis channel; the
//! gateway forwards it verbatim; agents parse it with [`PushFrame::parse`], which ignores
//! unknown fields and maps unknown types to [`PushMessage::Unknown`].

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why an agent's config changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigChangeReason {
    /// A pipeline version was deployed.
    Deploy,
    /// A pipeline was undeployed.
    Undeploy,
    /// A pipeline was rolled back to an earlier version.
    Rollback,
    /// A pipeline was deleted.
    Delete,
    /// The node entered maintenance.
    MaintenanceOn,
    /// The node left maintenance.
    MaintenanceOff,
    /// The node's labels changed.
    Labels,
    /// A reason this agent does not know yet.
    #[serde(other)]
    Other,
}

/// A fleet action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Download, verify and run a new agent binary.
    SelfUpdate,
    /// Restart one pipeline (`pipelineId`), or all of them.
    Restart,
    /// An action this agent does not know yet.
    #[serde(other)]
    Other,
}

/// The body of a push frame, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum PushMessage {
    /// Re-poll the config.
    ConfigChanged {
        /// The pipeline concerned, if one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pipeline_id: Option<String>,
        /// What happened.
        reason: ConfigChangeReason,
    },
    /// Tap these components and post the events to `/api/agent/samples`.
    SampleRequest {
        /// The sample request.
        request_id: String,
        /// Its pipeline.
        pipeline_id: String,
        /// Components to tap.
        component_keys: Vec<String>,
        /// Events per component.
        limit: u32,
    },
    /// Perform a fleet action (after confirming it by a poll).
    Action {
        /// Which action.
        action: ActionKind,
        /// Self-update target version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target_version: Option<String>,
        /// Self-update download URL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        download_url: Option<String>,
        /// Self-update SHA-256: hex, or `sha256:<hex>`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checksum: Option<String>,
        /// Self-update: optional ed25519 signature (base64) over the binary's SHA-256.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
        /// Restart: the one pipeline to restart (current agents ignore a restart without it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pipeline_id: Option<String>,
    },
    /// Start a live tap of one component and post its events to `/api/agent/tap-events`.
    TapStart {
        /// The tap.
        request_id: String,
        /// Its pipeline.
        pipeline_id: String,
        /// The component to tap.
        component_id: String,
    },
    /// Stop a live tap.
    TapStop {
        /// The tap.
        request_id: String,
    },
    /// Poll on this interval from now on.
    PollInterval {
        /// Milliseconds between polls.
        interval_ms: u64,
    },
    /// A type this agent does not know; ignored.
    #[serde(other)]
    Unknown,
}

impl PushMessage {
    /// The `type` it is sent with (a bounded set, usable as a metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            PushMessage::ConfigChanged { .. } => "config_changed",
            PushMessage::SampleRequest { .. } => "sample_request",
            PushMessage::Action { .. } => "action",
            PushMessage::TapStart { .. } => "tap_start",
            PushMessage::TapStop { .. } => "tap_stop",
            PushMessage::PollInterval { .. } => "poll_interval",
            PushMessage::Unknown => "unknown",
        }
    }
}

/// A push frame: the message plus a unique `id` and `sentAt` (epoch ms at publish).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushFrame {
    /// The message; its `type` is serialised first.
    #[serde(flatten)]
    pub message: PushMessage,
    /// Unique frame id.
    #[serde(default)]
    pub id: String,
    /// Unix epoch milliseconds when the api published it.
    #[serde(default)]
    pub sent_at: i64,
}

impl PushFrame {
    /// Stamps a message with a fresh id and the current time.
    pub fn new(message: PushMessage) -> Self {
        Self {
            message,
            id: Uuid::new_v4().simple().to_string(),
            sent_at: chrono::Utc::now().timestamp_millis(),
        }
    }

    /// The JSON text the agent receives.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("push frames serialise")
    }

    /// Parses a received frame; unknown types and fields are tolerated.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        match value.get("type") {
            // serde would read a number as a variant's index: only a string names a type.
            Some(kind) if !kind.is_string() => Ok(Self {
                message: PushMessage::Unknown,
                id: value["id"].as_str().unwrap_or_default().to_owned(),
                sent_at: value["sentAt"].as_i64().unwrap_or_default(),
            }),
            _ => serde_json::from_value(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn round_trip(message: PushMessage, expected: Value) {
        let frame = PushFrame::new(message);
        let text = frame.to_json();
        assert!(text.starts_with("{\"type\":"), "type first: {text}");
        let mut v: Value = serde_json::from_str(&text).unwrap();
        assert!(v["id"].as_str().unwrap().len() >= 16);
        assert!(v["sentAt"].as_i64().unwrap() > 1_700_000_000_000);
        let obj = v.as_object_mut().unwrap();
        obj.remove("id");
        obj.remove("sentAt");
        assert_eq!(v, expected);
        assert_eq!(PushFrame::parse(&text).unwrap(), frame);
    }

    #[test]
    fn every_design_frame() {
        let p = Uuid::new_v4().to_string();
        round_trip(
            PushMessage::ConfigChanged {
                pipeline_id: Some(p.clone()),
                reason: ConfigChangeReason::Deploy,
            },
            json!({"type":"config_changed","pipelineId":p,"reason":"deploy"}),
        );
        round_trip(
            PushMessage::ConfigChanged {
                pipeline_id: None,
                reason: ConfigChangeReason::MaintenanceOn,
            },
            json!({"type":"config_changed","reason":"maintenance_on"}),
        );
        let r = Uuid::new_v4().to_string();
        round_trip(
            PushMessage::SampleRequest {
                request_id: r.clone(),
                pipeline_id: p.clone(),
                component_keys: vec!["in".into()],
                limit: 5,
            },
            json!({"type":"sample_request","requestId":r,"pipelineId":p,"componentKeys":["in"],"limit":5}),
        );
        round_trip(
            PushMessage::Action {
                action: ActionKind::SelfUpdate,
                target_version: Some("1.2.3".into()),
                download_url: Some("https://x/agent".into()),
                checksum: Some("sha256:ab".into()),
                signature: Some("c2ln".into()),
                pipeline_id: None,
            },
            json!({"type":"action","action":"self_update","targetVersion":"1.2.3","downloadUrl":"https://x/agent","checksum":"sha256:ab","signature":"c2ln"}),
        );
        round_trip(
            PushMessage::Action {
                action: ActionKind::Restart,
                target_version: None,
                download_url: None,
                checksum: None,
                signature: None,
                pipeline_id: None,
            },
            json!({"type":"action","action":"restart"}),
        );
        // VectorFlow issues cuids: ids are opaque strings.
        round_trip(
            PushMessage::Action {
                action: ActionKind::Restart,
                target_version: None,
                download_url: None,
                checksum: None,
                signature: None,
                pipeline_id: Some("clx9k2v0b0000abcd".into()),
            },
            json!({"type":"action","action":"restart","pipelineId":"clx9k2v0b0000abcd"}),
        );
        round_trip(
            PushMessage::TapStart {
                request_id: r.clone(),
                pipeline_id: p.clone(),
                component_id: "parse".into(),
            },
            json!({"type":"tap_start","requestId":r,"pipelineId":p,"componentId":"parse"}),
        );
        round_trip(
            PushMessage::TapStop {
                request_id: r.clone(),
            },
            json!({"type":"tap_stop","requestId":r}),
        );
        round_trip(
            PushMessage::PollInterval { interval_ms: 5000 },
            json!({"type":"poll_interval","intervalMs":5000}),
        );
    }

    #[test]
    fn unknown_types_reasons_and_fields_are_tolerated() {
        let f = PushFrame::parse(r#"{"type":"brand_new","x":1,"id":"a","sentAt":1}"#).unwrap();
        assert_eq!(f.message, PushMessage::Unknown);
        let f = PushFrame::parse(r#"{"type":"config_changed","reason":"weather","extra":[1]}"#)
            .unwrap();
        assert_eq!(
            f.message,
            PushMessage::ConfigChanged {
                pipeline_id: None,
                reason: ConfigChangeReason::Other
            }
        );
        let f = PushFrame::parse(r#"{"type":"action","action":"dance"}"#).unwrap();
        assert!(matches!(
            f.message,
            PushMessage::Action {
                action: ActionKind::Other,
                ..
            }
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in ["", "null", "[]", "{", r#"{"type":"poll_interval"}"#] {
            assert!(PushFrame::parse(bad).is_err(), "{bad}");
        }
        // A non-string type is just another unknown type, never a variant by its index.
        for kind in ["0", "3", "5", "true", "[]", "{}"] {
            let text = format!(r#"{{"type":{kind},"requestId":"r","intervalMs":1}}"#);
            assert_eq!(
                PushFrame::parse(&text).unwrap().message,
                PushMessage::Unknown
            );
        }
    }
}
