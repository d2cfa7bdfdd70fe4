//! The agent HTTP API (VectorFlow agent protocol v1, plus the current generation's logs and
//! tap events) with connect and request timeouts.

use flotilla_shared::protocol::{
    ConfigResponse, EnrollRequest, EnrollResponse, Heartbeat, LogBatch, SamplesRequest, TapEvents,
};
use flotilla_shared::secret::Secret;
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server rejected the credentials (401/403).
    #[error("unauthorized ({0}): the token was rejected")]
    Unauthorized(StatusCode),
    /// Any other non-success status.
    #[error("api answered {status}: {body}")]
    Status {
        /// Status code.
        status: StatusCode,
        /// The start of the body.
        body: String,
    },
    /// Connection, timeout or decoding failure.
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
}

impl ClientError {
    /// Whether retrying the same request later can help.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unauthorized(_) => false,
            Self::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            Self::Transport(_) => true,
        }
    }
}

/// A handle on the api; cheap to clone.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    token: Option<Secret>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// A client for the api at `base`, with the given per-request timeout.
    pub fn new(base: Url, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .user_agent(concat!("flotilla-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("HTTP client builds");
        Self {
            http,
            base,
            token: None,
        }
    }

    /// The same client authenticated with a node token.
    pub fn with_token(&self, token: Secret) -> Self {
        Self {
            token: Some(token),
            ..self.clone()
        }
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let prefix = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{prefix}{path}"));
        url
    }

    /// `POST /api/agent/enroll`.
    pub async fn enroll(&self, body: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        self.send(self.http.post(self.url("/api/agent/enroll")).json(body))
            .await
    }

    /// `GET /api/agent/config`.
    pub async fn config(&self) -> Result<ConfigResponse, ClientError> {
        self.send(self.authed(self.http.get(self.url("/api/agent/config"))))
            .await
    }

    /// `POST /api/agent/heartbeat`.
    pub async fn heartbeat(&self, body: &Heartbeat) -> Result<(), ClientError> {
        let req = self.authed(self.http.post(self.url("/api/agent/heartbeat")).json(body));
        self.send::<serde_json::Value>(req).await.map(drop)
    }

    /// `POST /api/agent/samples`.
    pub async fn samples(&self, body: &SamplesRequest) -> Result<(), ClientError> {
        let req = self.authed(self.http.post(self.url("/api/agent/samples")).json(body));
        self.send::<serde_json::Value>(req).await.map(drop)
    }

    /// `POST /api/agent/logs`.
    pub async fn logs(&self, body: &[LogBatch]) -> Result<(), ClientError> {
        let req = self.authed(self.http.post(self.url("/api/agent/logs")).json(body));
        self.send::<serde_json::Value>(req).await.map(drop)
    }

    /// `POST /api/agent/tap-events`.
    pub async fn tap_events(&self, body: &TapEvents) -> Result<(), ClientError> {
        let req = self.authed(self.http.post(self.url("/api/agent/tap-events")).json(body));
        self.send::<serde_json::Value>(req).await.map(drop)
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t.expose()),
            None => req,
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = req.send().await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(ClientError::Unauthorized(status));
        }
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(ClientError::Status {
                status,
                body: text.chars().take(300).collect(),
            });
        }
        Ok(resp.json().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_a_base_path_and_debug_hides_the_token() {
        let c = ApiClient::new(
            Url::parse("https://x.example/flotilla/").unwrap(),
            Duration::from_secs(1),
        );
        assert_eq!(
            c.url("/api/agent/config").as_str(),
            "https://x.example/flotilla/api/agent/config"
        );
        let c = ApiClient::new(Url::parse("http://h:1").unwrap(), Duration::from_secs(1))
            .with_token(Secret::new("vf_node_secret"));
        assert_eq!(
            c.url("/api/agent/config").as_str(),
            "http://h:1/api/agent/config"
        );
        assert!(!format!("{c:?}").contains("secret"));
    }
}
