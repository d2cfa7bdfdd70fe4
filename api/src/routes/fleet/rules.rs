//! What an operator action may be: checked and put in the form agents get, for one node and
//! for the bulk alike.

use crate::download_url::{self, AllowList};
use crate::error::{ApiError, Result};
use flotilla_shared::frames::{ActionKind, PushMessage};
use flotilla_shared::protocol::PendingAction;
use uuid::Uuid;

/// A self-update checksum as bare lower-case hex: given as hex or `sha256:<hex>` (current
/// agents read both, older ones only hex).
fn checksum_hex(given: Option<&str>) -> Result<String> {
    let sum = given.unwrap_or_default();
    let hex = sum
        .strip_prefix("sha256:")
        .or_else(|| sum.strip_prefix("SHA256:"))
        .unwrap_or(sum);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::invalid(
            "checksum",
            "the SHA-256 of the binary, as hex or sha256:<hex>",
        ));
    }
    Ok(hex.to_ascii_lowercase())
}

/// Checks an action and puts it in the form agents get: a restart keeps only its pipeline, a
/// self-update its version, URL (in canonical form, if [`download_url::check`] accepts it with
/// `allowed`), hex checksum and signature.
pub(crate) fn validate_action(
    a: PendingAction,
    allowed: &AllowList,
) -> Result<(ActionKind, PendingAction)> {
    let clean = PendingAction {
        kind: a.kind.clone(),
        target_version: None,
        download_url: None,
        checksum: None,
        signature: None,
        pipeline_id: None,
    };
    match a.kind.as_str() {
        "restart" => {
            if let Some(p) = &a.pipeline_id {
                if Uuid::parse_str(p).is_err() {
                    return Err(ApiError::invalid("pipelineId", "a pipeline id (UUID)"));
                }
            }
            let pipeline_id = a.pipeline_id.map(|p| p.to_ascii_lowercase());
            Ok((
                ActionKind::Restart,
                PendingAction {
                    pipeline_id,
                    ..clean
                },
            ))
        }
        "self_update" => {
            let version = a.target_version.as_deref().unwrap_or_default();
            if version.is_empty() || version.len() > 128 {
                return Err(ApiError::invalid(
                    "targetVersion",
                    "required for self_update",
                ));
            }
            let url = download_url::check(a.download_url.as_deref().unwrap_or_default(), allowed)
                .map_err(|refused| ApiError::invalid("downloadUrl", refused.to_string()))?;
            let checksum = checksum_hex(a.checksum.as_deref())?;
            if let Some(sig) = &a.signature {
                use base64::Engine;
                let raw = base64::engine::general_purpose::STANDARD.decode(sig);
                if raw.map(|r| r.len()) != Ok(64) {
                    return Err(ApiError::invalid(
                        "signature",
                        "an ed25519 signature (64 bytes) in base64",
                    ));
                }
            }
            Ok((
                ActionKind::SelfUpdate,
                PendingAction {
                    target_version: a.target_version,
                    download_url: Some(url),
                    checksum: Some(checksum),
                    signature: a.signature,
                    ..clean
                },
            ))
        }
        _ => Err(ApiError::invalid("type", "self_update or restart")),
    }
}

/// The push that announces `action` to older agents (which act on it, or re-poll).
pub(crate) fn push_of(kind: ActionKind, action: &PendingAction) -> PushMessage {
    PushMessage::Action {
        action: kind,
        target_version: action.target_version.clone(),
        download_url: action.download_url.clone(),
        checksum: action.checksum.clone(),
        signature: action.signature.clone(),
        pipeline_id: action.pipeline_id.clone(),
    }
}

/// Whether a reported deployment mode is Docker, where the agent cannot replace itself.
pub(crate) fn is_docker(deployment_mode: Option<&str>) -> bool {
    deployment_mode.is_some_and(|m| m.eq_ignore_ascii_case("docker"))
}
