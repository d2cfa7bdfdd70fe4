//! Starting the api in-process and talking to it.

use flotilla_api::{Api, AppState};
use flotilla_shared::settings::Settings;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

/// The bootstrap admin token every test api starts with.
pub const ADMIN_TOKEN: &str = "test-admin-0d4f8a2c6e1b3957a8c0e2f4b6d81a3c5e7f9b2d4a6c8e0f";

/// A running api.
pub struct ApiHandle {
    /// Bound address.
    pub addr: SocketAddr,
    /// Its state (pool, authenticators, counters).
    pub state: AppState,
    /// Cancelling it shuts the api down.
    pub shutdown: CancellationToken,
    /// The serve task.
    pub task: tokio::task::JoinHandle<()>,
    http: reqwest::Client,
}

/// Starts the api on port 0 with `settings`.
pub async fn spawn(settings: Settings) -> ApiHandle {
    let api = crate::within("api start", Api::build(settings))
        .await
        .expect("api builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = api.state().clone();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        api.serve(listener, token).await.expect("api serves");
    });
    ApiHandle {
        addr,
        state,
        shutdown,
        task,
        http: reqwest::Client::new(),
    }
}

/// A response's status and JSON body (`Value::Null` when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// Parsed body.
    pub body: Value,
    /// Raw body text.
    pub text: String,
}

impl ApiHandle {
    /// `http://addr`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends a request with an optional bearer token and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = crate::within(path, req.send()).await.expect("request sent");
        let status = resp.status();
        let text = crate::within(path, resp.text()).await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, body, text }
    }

    /// Sends a raw body with a content type (for malformed-input tests).
    pub async fn raw(&self, method: Method, path: &str, token: Option<&str>, body: &str) -> Reply {
        let mut req = self
            .http
            .request(method, self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = crate::within(path, req.send()).await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, body, text }
    }

    /// An admin call.
    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.call(method, path, Some(ADMIN_TOKEN), body).await
    }

    /// Creates an environment; returns `(id, enrollment token)`.
    pub async fn create_environment(&self, name: &str) -> (String, String) {
        let r = self
            .admin(
                Method::POST,
                "/api/v1/environments",
                Some(serde_json::json!({ "name": name })),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        (
            r.body["id"].as_str().unwrap().to_owned(),
            r.body["enrollmentToken"].as_str().unwrap().to_owned(),
        )
    }

    /// Issues an operator token with `role`; returns `(token id, token)`.
    pub async fn operator_token(&self, role: &str) -> (String, String) {
        let r = self
            .admin(
                Method::POST,
                "/api/v1/tokens",
                Some(serde_json::json!({ "name": role, "role": role })),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        (
            r.body["id"].as_str().unwrap().to_owned(),
            r.body["token"].as_str().unwrap().to_owned(),
        )
    }

    /// Sets a node's operator labels.
    pub async fn set_labels(&self, node_id: &str, labels: Value) {
        let path = format!("/api/v1/fleet/{node_id}/labels");
        let body = serde_json::json!({ "labels": labels });
        let r = self.admin(Method::PUT, &path, Some(body)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }

    /// Enrolls a node; returns `(node id, node token)`.
    pub async fn enroll(&self, enrollment_token: &str, hostname: &str) -> (String, String) {
        let r = self
            .call(
                Method::POST,
                "/api/agent/enroll",
                None,
                Some(serde_json::json!({ "token": enrollment_token, "hostname": hostname })),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        (
            r.body["nodeId"].as_str().unwrap().to_owned(),
            r.body["nodeToken"].as_str().unwrap().to_owned(),
        )
    }

    /// Creates a pipeline (version 1, not deployed); returns its id.
    pub async fn create_pipeline(
        &self,
        environment_id: &str,
        name: &str,
        yaml: &str,
        selector: Value,
    ) -> String {
        let r = self
            .admin(
                Method::POST,
                "/api/v1/pipelines",
                Some(serde_json::json!({
                    "environmentId": environment_id, "name": name, "configYaml": yaml, "nodeSelector": selector
                })),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body["id"].as_str().unwrap().to_owned()
    }

    /// Saves a new version of a pipeline (`body`: `{configYaml, logLevel?, nodeSelector?}`).
    pub async fn update_pipeline(&self, pipeline_id: &str, body: Value) -> Reply {
        self.admin(
            Method::PUT,
            &format!("/api/v1/pipelines/{pipeline_id}"),
            Some(body),
        )
        .await
    }

    /// Deploys the latest version of a pipeline.
    pub async fn deploy(&self, pipeline_id: &str) -> Reply {
        self.admin(
            Method::POST,
            &format!("/api/v1/pipelines/{pipeline_id}/deploy"),
            Some(serde_json::json!({})),
        )
        .await
    }

    /// Creates a pipeline for every node of the environment (empty selector) and deploys it;
    /// returns its id.
    pub async fn deploy_everywhere(&self, environment_id: &str) -> String {
        let pipeline = self
            .create_pipeline(
                environment_id,
                "everywhere",
                &crate::vector_config("base"),
                serde_json::json!({}),
            )
            .await;
        let deployed = self.deploy(&pipeline).await;
        assert_eq!(deployed.status, StatusCode::OK, "{}", deployed.text);
        pipeline
    }

    /// The node's config as the agent sees it.
    pub async fn agent_config(&self, node_token: &str) -> Reply {
        self.call(Method::GET, "/api/agent/config", Some(node_token), None)
            .await
    }
}
