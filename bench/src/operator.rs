//! The operator API calls the scenarios make, as the bootstrap admin.

use crate::services::ADMIN_TOKEN;
use anyhow::Context;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use uuid::Uuid;

/// A client of one api.
#[derive(Clone)]
pub struct Operator {
    http: reqwest::Client,
    base: String,
}

impl Operator {
    /// A client of the api at `addr`.
    pub fn new(addr: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            base: format!("http://{addr}"),
        })
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request.bearer_auth(ADMIN_TOKEN).send().await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "api answered {status}: {body}");
        Ok(body)
    }

    /// Creates a pipeline in `environment` selecting `selector`; returns its id.
    pub async fn create_pipeline(
        &self,
        environment: Uuid,
        name: &str,
        selector: Value,
    ) -> anyhow::Result<Uuid> {
        let body = json!({
            "environmentId": environment,
            "name": name,
            "configYaml": "sources:\n  in:\n    type: demo_logs\n    format: json\nsinks:\n  out:\n    type: blackhole\n    inputs: [in]\n",
            "nodeSelector": selector,
        });
        let created = self
            .call(
                self.http
                    .post(format!("{}/api/v1/pipelines", self.base))
                    .json(&body),
            )
            .await?;
        Ok(created["id"].as_str().context("pipeline id")?.parse()?)
    }

    /// Deploys the latest version of `pipeline`; returns `notifiedNodes`.
    pub async fn deploy(&self, pipeline: Uuid) -> anyhow::Result<u64> {
        let answer = self
            .call(
                self.http
                    .post(format!("{}/api/v1/pipelines/{pipeline}/deploy", self.base)),
            )
            .await?;
        answer["notifiedNodes"].as_u64().context("notifiedNodes")
    }

    /// Nodes of `environment` shown `wsConnected` on a gateway other than `except_gateway`,
    /// read a page of 1,000 connected nodes at a time.
    pub async fn connected(
        &self,
        environment: Uuid,
        except_gateway: &str,
    ) -> anyhow::Result<usize> {
        let mut count = 0;
        let mut cursor = String::new();
        loop {
            let page = self
                .call(self.http.get(format!(
                    "{}/api/v1/fleet?environmentId={environment}&connected=true&limit=1000{cursor}",
                    self.base
                )))
                .await?;
            let nodes = page["nodes"].as_array().context("nodes")?;
            count += nodes
                .iter()
                .filter(|n| {
                    n["wsConnected"] == json!(true) && n["gatewayId"] != json!(except_gateway)
                })
                .count();
            match page["nextCursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => return Ok(count),
            }
        }
    }
}
