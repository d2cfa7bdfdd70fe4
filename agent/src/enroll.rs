//! The node token: read from `<data dir>/node-token`, or obtained once by enrolling.

use crate::client::{ApiClient, ClientError};
use crate::config::Config;
use flotilla_shared::auth::tokens::NODE_PREFIX;
use flotilla_shared::backoff::Backoff;
use flotilla_shared::protocol::EnrollRequest;
use flotilla_shared::secret::Secret;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why the agent could not obtain a node token.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// Not enrolled and no enrollment token given.
    #[error("this node is not enrolled yet ({path} is missing): set VF_TOKEN (or --token) to an enrollment token")]
    NoEnrollmentToken {
        /// The token file looked for.
        path: String,
    },
    /// The server rejected the enrollment token.
    #[error("enrollment failed: {0}")]
    Rejected(ClientError),
    /// The token file could not be read or written.
    #[error("node token file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Shut down while waiting to retry.
    #[error("shut down before enrollment completed")]
    Cancelled,
}

/// Returns the stored node token, or enrolls (retrying transient failures) and stores it.
pub async fn node_token(
    config: &Config,
    client: &ApiClient,
    vector_version: Option<String>,
    cancel: &CancellationToken,
) -> Result<Secret, EnrollError> {
    let path = config.token_path();
    if let Some(token) = read_token(&path)? {
        tracing::info!(path = %path.display(), "using the stored node token");
        return Ok(token);
    }
    let enrollment =
        config
            .enrollment_token
            .clone()
            .ok_or_else(|| EnrollError::NoEnrollmentToken {
                path: path.display().to_string(),
            })?;
    let request = EnrollRequest {
        token: enrollment.expose().to_owned(),
        hostname: config.hostname.clone(),
        os: Some(std::env::consts::OS.to_owned()),
        agent_version: Some(crate::VERSION.to_owned()),
        vector_version,
        // Sent at enrollment (as current agents do), so label-selected pipelines arrive on
        // the first poll.
        labels: (!config.labels.is_empty())
            .then(|| serde_json::to_value(&config.labels).expect("labels serialise")),
    };
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let response = loop {
        match client.enroll(&request).await {
            Ok(r) => break r,
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "enrollment failed; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return Err(EnrollError::Cancelled),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(EnrollError::Rejected(e)),
        }
    };
    let token = Secret::new(response.node_token);
    write_token(&path, &token)?;
    tracing::info!(
        node_id = %response.node_id,
        environment = %response.environment_name,
        path = %path.display(),
        "enrolled; node token stored"
    );
    Ok(token)
}

/// Reads the token file; `None` when it does not exist or is empty. Tightens loose permissions.
pub fn read_token(path: &Path) -> Result<Option<Secret>, EnrollError> {
    let io = |source| EnrollError::Io {
        path: path.display().to_string(),
        source,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let token = text.trim();
    if token.is_empty() {
        return Ok(None);
    }
    if !token.starts_with(NODE_PREFIX) {
        tracing::warn!(path = %path.display(), "the stored node token does not start with {NODE_PREFIX}; using it anyway");
    }
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "node token file was readable by others; setting 0600");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(Some(Secret::new(token)))
}

/// Writes the token file atomically with mode 0600.
pub fn write_token(path: &Path, token: &Secret) -> Result<(), EnrollError> {
    let io = |source| EnrollError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(token.expose().as_bytes()).map_err(io)?;
    f.write_all(b"\n").map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}

/// This machine's host name (from the kernel): the default `VF_HOSTNAME`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "flotilla-agent-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn token_file_round_trip_with_mode_0600() {
        let dir = temp_dir("token");
        let path = dir.join("sub").join("node-token");
        assert!(read_token(&path).unwrap().is_none());
        write_token(&path, &Secret::new("vf_node_abc_def")).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            read_token(&path).unwrap().unwrap().expose(),
            "vf_node_abc_def"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_token(&path).unwrap().is_some());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "loose permissions are tightened");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn missing_token_without_enrollment_token_is_a_clear_error() {
        let dir = temp_dir("noenroll");
        let config = Config::new(reqwest::Url::parse("http://127.0.0.1:9").unwrap(), &dir);
        let client = ApiClient::new(config.url.clone(), Duration::from_secs(1));
        let e = node_token(&config, &client, None, &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("VF_TOKEN"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
