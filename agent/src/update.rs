//! Self-update: download with connect and total timeouts, verify the SHA-256, replace the
//! binary atomically. Runs in its own task; the main loop only learns the outcome.
//!
//! Before re-executing, the agent records the action in `<data dir>/update-attempt`, so the new
//! process knows it was started by an update (and does not repeat one that did not take).

use crate::state::PreviousUpdate;
use flotilla_shared::protocol::PendingAction;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest binary accepted.
const MAX_BINARY_BYTES: usize = 512 * 1024 * 1024;

/// Downloads `url`, checks its SHA-256 against `checksum` (hex or `sha256:<hex>`) and
/// atomically replaces `exe`.
pub async fn download_and_replace(
    url: &str,
    checksum: &str,
    exe: &Path,
    connect_timeout: Duration,
    total_timeout: Duration,
) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(total_timeout)
        .build()
        .map_err(|e| format!("cannot build HTTP client: {e}"))?;
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("download failed: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("download failed: HTTP {}", resp.status()));
    }
    let mut body = Vec::new();
    let mut hasher = Sha256::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("download failed: {e}"))?
    {
        if body.len() + chunk.len() > MAX_BINARY_BYTES {
            return Err(format!(
                "download failed: larger than {MAX_BINARY_BYTES} bytes"
            ));
        }
        hasher.update(&chunk);
        body.extend_from_slice(&chunk);
    }
    let actual = hex::encode(hasher.finalize());
    let expected = expected_sha256(checksum);
    if actual != expected {
        return Err(format!(
            "checksum mismatch: expected {expected}, downloaded file has {actual}"
        ));
    }
    let exe = exe.to_owned();
    tokio::task::spawn_blocking(move || replace(&exe, &body))
        .await
        .map_err(|e| format!("replace task failed: {e}"))?
}

/// The SHA-256 a checksum names, as lowercase hex: servers send hex or `sha256:<hex>`.
pub fn expected_sha256(checksum: &str) -> String {
    let checksum = checksum.trim();
    let hex = match checksum.split_once(':') {
        Some((algorithm, hex)) if algorithm.eq_ignore_ascii_case("sha256") => hex,
        _ => checksum,
    };
    hex.trim().to_ascii_lowercase()
}

/// Writes `data` next to `exe` (mode 0755) and renames it over `exe`.
pub fn replace(exe: &Path, data: &[u8]) -> Result<(), String> {
    let dir = exe.parent().ok_or("the binary has no parent directory")?;
    let tmp = dir.join(format!(".flotilla-agent.update.{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, exe)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot replace {}: {e}", exe.display())
    })
}

/// Where the in-progress update is recorded across the re-exec.
pub fn attempt_path(data_dir: &Path) -> PathBuf {
    data_dir.join("update-attempt")
}

/// Records the update being applied.
pub fn record_attempt(data_dir: &Path, action: &PendingAction) -> std::io::Result<()> {
    std::fs::write(
        attempt_path(data_dir),
        serde_json::to_vec(action).unwrap_or_default(),
    )
}

/// Reads and deletes the recorded update, if this process was started by one.
pub fn take_attempt(data_dir: &Path) -> Option<PendingAction> {
    let path = attempt_path(data_dir);
    let text = std::fs::read(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    serde_json::from_slice(&text).ok()
}

/// The update this process was re-executed for, checked against the binary now at `exe`.
pub fn previous_update(data_dir: &Path, exe: Option<&Path>) -> Option<PreviousUpdate> {
    let action = take_attempt(data_dir)?;
    let expected = expected_sha256(action.checksum.as_deref().unwrap_or_default());
    let error = exe.and_then(|exe| match std::fs::read(exe) {
        Ok(bytes) => {
            let actual = hex::encode(Sha256::digest(&bytes));
            (actual != expected).then(|| {
                format!(
                    "after the self-update {} has checksum {actual}, expected {expected}",
                    exe.display()
                )
            })
        }
        Err(e) => Some(format!(
            "after the self-update {} cannot be read: {e}",
            exe.display()
        )),
    });
    match &error {
        None => tracing::info!(target = ?action.target_version, "running the self-updated binary"),
        Some(e) => tracing::error!(error = %e, "self-update did not take"),
    }
    Some(PreviousUpdate { action, error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_is_atomic_and_executable() {
        let dir =
            std::env::temp_dir().join(format!("flotilla-upd-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("agent");
        std::fs::write(&exe, b"old").unwrap();
        replace(&exe, b"new").unwrap();
        assert_eq!(std::fs::read(&exe).unwrap(), b"new");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&exe).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );

        let action = PendingAction {
            kind: "self_update".into(),
            target_version: Some("9.9.9".into()),
            download_url: Some("http://x".into()),
            checksum: Some("ab".into()),
            signature: None,
            pipeline_id: None,
        };
        record_attempt(&dir, &action).unwrap();
        assert_eq!(take_attempt(&dir), Some(action.clone()));
        assert_eq!(take_attempt(&dir), None);

        let good = PendingAction {
            checksum: Some(hex::encode(Sha256::digest(b"new"))),
            ..action.clone()
        };
        record_attempt(&dir, &good).unwrap();
        let previous = previous_update(&dir, Some(&exe)).unwrap();
        assert_eq!(previous.action, good);
        assert!(previous.error.is_none());
        // Current VectorFlow servers prefix the algorithm.
        let prefixed = PendingAction {
            checksum: Some(format!("sha256:{}", hex::encode(Sha256::digest(b"new")))),
            ..action.clone()
        };
        record_attempt(&dir, &prefixed).unwrap();
        assert!(previous_update(&dir, Some(&exe)).unwrap().error.is_none());
        record_attempt(&dir, &action).unwrap();
        let previous = previous_update(&dir, Some(&exe)).unwrap();
        assert!(previous.error.unwrap().contains("expected ab"));
        assert!(previous_update(&dir, Some(&exe)).is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn checksums_are_hex_or_prefixed_hex() {
        assert_eq!(expected_sha256(" AB12 "), "ab12");
        assert_eq!(expected_sha256("sha256:AB12"), "ab12");
        assert_eq!(expected_sha256("SHA256: ab12"), "ab12");
    }

    #[tokio::test]
    async fn unreachable_download_fails_within_the_connect_timeout() {
        let exe = std::env::temp_dir().join("never-written");
        let started = std::time::Instant::now();
        let e = download_and_replace(
            "http://10.255.255.1:9/agent",
            "00",
            &exe,
            Duration::from_millis(200),
            Duration::from_millis(500),
        )
        .await
        .unwrap_err();
        assert!(e.contains("download failed"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
