//! Self-update: download with connect and total timeouts, verify the SHA-256, replace the
//! binary atomically. Runs in its own task; the main loop only learns the outcome, an
//! [`UpdateFailure`] class and never the error's text (which is logged here).
//!
//! Only https is followed, redirects included; plain http only with `VF_ALLOW_HTTP_UPDATES`
//! (the server refuses other URLs too: this is the second line).
//!
//! Before re-executing, the agent records the action in `<data dir>/update-attempt`, so the new
//! process knows it was started by an update (and does not repeat one that did not take).

use crate::state::PreviousUpdate;
use flotilla_shared::protocol::PendingAction;
use reqwest::Url;
use sha2::{Digest, Sha256};
use std::fmt::Display;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest binary accepted.
const MAX_BINARY_BYTES: usize = 512 * 1024 * 1024;
/// Redirects followed at most (each to an allowed scheme).
const MAX_REDIRECTS: usize = 10;

/// Why a self-update failed, as reported to the server (`updateError`): a fixed class, never
/// the error text, which would tell whoever chose the download URL what the node's network
/// answered there (a closed port, a refused TLS handshake, an HTTP status, a body). The
/// detail is logged on the agent only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateFailure {
    /// `invalid_action`: the action has no download URL or no checksum.
    InvalidAction,
    /// `url_refused`: the download URL is not https (nor http allowed by
    /// `VF_ALLOW_HTTP_UPDATES`), or not a URL.
    UrlRefused,
    /// `download_failed`: no complete binary arrived, whatever the cause (name resolution,
    /// connect, TLS, an HTTP error status, a redirect to a refused scheme, a timeout, a binary
    /// over 512 MiB).
    DownloadFailed,
    /// `checksum_mismatch`: the downloaded binary has another SHA-256 than the action's.
    ChecksumMismatch,
    /// `install_failed`: the binary could not be replaced (or this agent cannot replace
    /// itself), or after the re-exec the binary in place is not the one requested.
    InstallFailed,
}

impl UpdateFailure {
    /// The class as reported.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidAction => "invalid_action",
            Self::UrlRefused => "url_refused",
            Self::DownloadFailed => "download_failed",
            Self::ChecksumMismatch => "checksum_mismatch",
            Self::InstallFailed => "install_failed",
        }
    }

    /// Logs `detail` here and gives the class to report.
    pub fn logged(self, detail: impl Display) -> Self {
        tracing::error!(failure = self.as_str(), error = %detail, "self-update failed");
        self
    }
}

impl std::fmt::Display for UpdateFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a download may use `scheme`: `https`, or `http` when `allow_http`.
fn scheme_allowed(scheme: &str, allow_http: bool) -> bool {
    scheme == "https" || (allow_http && scheme == "http")
}

/// Downloads `url` (https only unless `allow_http`, redirects included), checks its SHA-256
/// against `checksum` (hex or `sha256:<hex>`) and atomically replaces `exe`.
pub async fn download_and_replace(
    url: &str,
    checksum: &str,
    exe: &Path,
    connect_timeout: Duration,
    total_timeout: Duration,
    allow_http: bool,
) -> Result<(), UpdateFailure> {
    use UpdateFailure::{ChecksumMismatch, DownloadFailed, InstallFailed, UrlRefused};
    let url = Url::parse(url).map_err(|e| UrlRefused.logged(e))?;
    if !scheme_allowed(url.scheme(), allow_http) {
        return Err(UrlRefused.logged(format_args!(
            "the download URL's scheme is {:?}: only https is followed (http too with VF_ALLOW_HTTP_UPDATES)",
            url.scheme()
        )));
    }
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else if scheme_allowed(attempt.url().scheme(), allow_http) {
            attempt.follow()
        } else {
            attempt.error("redirected to a scheme that is not allowed")
        }
    });
    let client = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(total_timeout)
        .redirect(redirects)
        .build()
        .map_err(|e| DownloadFailed.logged(format_args!("cannot build HTTP client: {e}")))?;
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| DownloadFailed.logged(e))?;
    if !resp.status().is_success() {
        return Err(DownloadFailed.logged(format_args!("HTTP {}", resp.status())));
    }
    let mut body = Vec::new();
    let mut hasher = Sha256::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| DownloadFailed.logged(e))? {
        if body.len() + chunk.len() > MAX_BINARY_BYTES {
            return Err(DownloadFailed.logged(format_args!("larger than {MAX_BINARY_BYTES} bytes")));
        }
        hasher.update(&chunk);
        body.extend_from_slice(&chunk);
    }
    let actual = hex::encode(hasher.finalize());
    let expected = expected_sha256(checksum);
    if actual != expected {
        return Err(ChecksumMismatch.logged(format_args!(
            "expected {expected}, downloaded file has {actual}"
        )));
    }
    let exe = exe.to_owned();
    tokio::task::spawn_blocking(move || replace(&exe, &body))
        .await
        .map_err(|e| InstallFailed.logged(format_args!("replace task failed: {e}")))?
        .map_err(|e| InstallFailed.logged(e))
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
    let detail = exe.and_then(|exe| match std::fs::read(exe) {
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
    let error = match detail {
        None => {
            tracing::info!(target = ?action.target_version, "running the self-updated binary");
            None
        }
        Some(detail) => Some(UpdateFailure::InstallFailed.logged(detail)),
    };
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
        assert_eq!(previous.error, Some(UpdateFailure::InstallFailed));
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
            true,
        )
        .await
        .unwrap_err();
        assert_eq!(e, UpdateFailure::DownloadFailed);
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    /// A plain-http server on loopback answering every request with `status` and `body`.
    async fn serve(status: &'static str, body: &'static [u8]) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(body).await;
            }
        });
        addr
    }

    /// What the server is told is one of a few fixed classes: a closed port, an error status
    /// with a revealing body and a wrong binary read the same way, whatever the remote said.
    #[tokio::test]
    async fn failures_are_reported_as_fixed_classes() {
        let dir =
            std::env::temp_dir().join(format!("flotilla-upd-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("agent");
        std::fs::write(&exe, b"old").unwrap();
        let attempt = |url: String, allow_http: bool| {
            let exe = exe.clone();
            async move {
                let second = Duration::from_secs(1);
                let update = download_and_replace(&url, "00", &exe, second, 5 * second, allow_http);
                tokio::time::timeout(10 * second, update)
                    .await
                    .expect("the download ends within its timeouts")
            }
        };

        // A port nothing listens on (bound, then released).
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        let not_found = serve("404 Not Found", b"redis_version:7.2.4 secret internal page").await;
        let wrong = serve("200 OK", b"not the binary").await;

        for url in [
            format!("http://{closed_addr}/agent"),
            format!("http://{not_found}/agent"),
        ] {
            assert_eq!(
                attempt(url.clone(), true).await,
                Err(UpdateFailure::DownloadFailed),
                "{url}"
            );
        }
        assert_eq!(
            attempt(format!("http://{wrong}/agent"), true).await,
            Err(UpdateFailure::ChecksumMismatch)
        );
        // Plain http only when allowed; never another scheme.
        for url in [
            format!("http://{wrong}/agent"),
            "ftp://example.com/agent".to_owned(),
            "file:///etc/passwd".to_owned(),
            "not a url".to_owned(),
        ] {
            assert_eq!(
                attempt(url.clone(), false).await,
                Err(UpdateFailure::UrlRefused),
                "{url}"
            );
        }
        assert_eq!(std::fs::read(&exe).unwrap(), b"old", "nothing was replaced");
        let reported: Vec<&str> = [
            UpdateFailure::InvalidAction,
            UpdateFailure::UrlRefused,
            UpdateFailure::DownloadFailed,
            UpdateFailure::ChecksumMismatch,
            UpdateFailure::InstallFailed,
        ]
        .iter()
        .map(|f| f.as_str())
        .collect();
        assert_eq!(
            reported,
            [
                "invalid_action",
                "url_refused",
                "download_failed",
                "checksum_mismatch",
                "install_failed"
            ]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn redirects_keep_to_the_allowed_schemes() {
        assert!(scheme_allowed("https", false));
        assert!(!scheme_allowed("http", false));
        assert!(scheme_allowed("http", true));
        assert!(!scheme_allowed("ftp", true));
        assert!(!scheme_allowed("file", true));
    }
}
