//! Redis channel and key names, and the gateway control messages.
//!
//! The braces in `flotilla:node:{<id>}` are a Redis Cluster hash tag, so a node's channel and
//! presence key live on the same shard.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Pub/sub channel carrying one node's push frames (and gateway control messages).
pub fn node_channel(node_id: Uuid) -> String {
    format!("flotilla:node:{{{node_id}}}")
}

/// Parses a node channel name back to the node id.
pub fn node_from_channel(channel: &str) -> Option<Uuid> {
    let id = channel.strip_prefix("flotilla:node:{")?.strip_suffix('}')?;
    Uuid::parse_str(id).ok()
}

/// Hash holding a node's current connection: `gateway`, `conn`, `since` (epoch ms).
pub fn presence_key(node_id: Uuid) -> String {
    format!("flotilla:presence:{{{node_id}}}")
}

/// List holding the last log lines of one node's pipeline.
pub fn log_ring_key(node_id: Uuid, pipeline_id: Uuid) -> String {
    format!("flotilla:logs:{{{node_id}}}:{pipeline_id}")
}

/// Channel carrying one node's new log lines to live viewers.
pub fn log_channel(node_id: Uuid) -> String {
    format!("flotilla:logs:{{{node_id}}}")
}

/// Hash describing a running live tap (node, pipeline, component); expires with the tap.
pub fn tap_key(tap_id: Uuid) -> String {
    format!("flotilla:tap:{{{tap_id}}}")
}

/// Number of operators watching a tap.
pub fn tap_viewers_key(tap_id: Uuid) -> String {
    format!("flotilla:tap:{{{tap_id}}}:viewers")
}

/// Channel carrying a tap's events (and its end) to its viewers.
pub fn tap_channel(tap_id: Uuid) -> String {
    format!("flotilla:tap:{{{tap_id}}}:events")
}

/// Channel on which gateways announce connects and disconnects (feeds the fleet page).
pub const FLEET_EVENTS: &str = "flotilla:fleet-events";

/// A gateway-internal message sharing a node channel; never forwarded to agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ctl", rename_all = "snake_case")]
pub enum ControlMessage {
    /// The node was revoked: close its socket with [`crate::close_codes::REVOKED`].
    Revoke,
    /// A newer socket `conn` of the node opened; close every other one as superseded.
    Supersede {
        /// Connection id of the winning socket.
        conn: String,
    },
    /// A gateway's self-probe, proving its subscription still receives.
    Probe {
        /// Probe sequence number.
        seq: u64,
    },
}

impl ControlMessage {
    /// Serialises the message (it starts with `{"ctl"`, unlike every agent frame).
    pub fn to_payload(&self) -> String {
        serde_json::to_string(self).expect("control messages serialise")
    }

    /// Parses a payload if it is a control message; agent frames return `None` cheaply.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        if !payload.starts_with(b"{\"ctl\"") {
            return None;
        }
        serde_json::from_slice(payload).ok()
    }
}

/// A presence change announced on [`FLEET_EVENTS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceEvent {
    /// The node.
    pub node_id: Uuid,
    /// True on connect, false on disconnect.
    pub connected: bool,
    /// The gateway that holds (or held) the socket.
    pub gateway_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_round_trip() {
        let id = Uuid::new_v4();
        let ch = node_channel(id);
        assert_eq!(ch, format!("flotilla:node:{{{id}}}"));
        assert_eq!(node_from_channel(&ch), Some(id));
        assert_eq!(node_from_channel("flotilla:node:{nope}"), None);
    }

    #[test]
    fn control_messages_are_recognised_and_frames_are_not() {
        let m = ControlMessage::Supersede { conn: "c1".into() };
        assert_eq!(ControlMessage::parse(m.to_payload().as_bytes()), Some(m));
        assert_eq!(
            ControlMessage::parse(br#"{"ctl":"revoke"}"#),
            Some(ControlMessage::Revoke)
        );
        assert_eq!(
            ControlMessage::parse(br#"{"type":"config_changed","reason":"deploy"}"#),
            None
        );
        assert_eq!(ControlMessage::parse(b"{\"ctl\":garbage"), None);
    }
}
