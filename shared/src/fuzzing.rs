//! The checks the fuzz targets (`fuzz/`) run on untrusted input, shared with the regression
//! test that replays every input under `fuzz/regressions/`.

use crate::auth::tokens::{self, ENROLL_PREFIX, NODE_PREFIX, OPERATOR_PREFIX};
use crate::channels::ControlMessage;
use crate::frames::PushFrame;
use crate::protocol::{ConfigResponse, EnrollRequest, Heartbeat, SamplesRequest};

/// Push frames and Redis payloads: parsing never panics, and whatever parses round-trips.
pub fn push_frame(data: &[u8]) {
    let _ = ControlMessage::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(frame) = PushFrame::parse(text) {
            let again = PushFrame::parse(&frame.to_json()).expect("a serialised frame parses");
            assert_eq!(again, frame);
        }
    }
}

/// Agent request bodies the api accepts, and the config response the agent reads.
pub fn agent_bodies(data: &[u8]) {
    let _ = serde_json::from_slice::<EnrollRequest>(data);
    let _ = serde_json::from_slice::<Heartbeat>(data);
    let _ = serde_json::from_slice::<SamplesRequest>(data);
    let _ = serde_json::from_slice::<ConfigResponse>(data);
}

/// Token parsing: never panics; a parsed token's parts rebuild exactly the input.
pub fn tokens(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for prefix in [NODE_PREFIX, ENROLL_PREFIX, OPERATOR_PREFIX] {
        if let Some(p) = tokens::parse(prefix, text) {
            assert_eq!(format!("{prefix}{}_{}", p.lookup, p.secret), text);
        }
    }
    let (lookup, secret) = tokens::operator_parts(text);
    assert!(!lookup.is_empty() && !secret.is_empty());
    let _ = tokens::hint(text, NODE_PREFIX);
}
