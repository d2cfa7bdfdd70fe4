//! Each pipeline's Vector API: where it listens, and the counters read from it.
//!
//! Every `vector` child gets its own loopback port for its API (Vector's default, 8686, would
//! be shared by all pipelines of a host): the agent adds an `api` block to the config it
//! writes, unless the config has one, in which case that block's address is used when it is
//! enabled. Before each heartbeat the agent asks every running pipeline's API (Vector's GraphQL
//! `components` query, and the first answer of its `componentErrorsTotals` subscription, which
//! is where Vector serves error counts) for its counters; a Vector whose API does not answer
//! leaves its counters out of the heartbeat, never the heartbeat itself. `vector tap`
//! (samples, live taps) is pointed at the same address.
//!
//! # Layout
//! - [`config`]: the `api` block added to a pipeline's config, and the address it gives.
//! - [`counters`]: the `components` query (events and bytes in and out).
//! - [`errors`]: the `componentErrorsTotals` subscription (errors).

use flotilla_shared::protocol::{Heartbeat, PipelineState};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

pub mod config;
pub mod counters;
pub mod errors;

pub use config::{is_prepared_from, prepare, Prepared, ADDED_BLOCK};
pub use counters::{Counters, MAX_COMPONENTS};

/// Where `vector tap` reaches a pipeline's Vector: its API address, with the `/graphql` path
/// up to Vector 0.54 and without it from 0.55 (the gRPC API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapUrl {
    addr: SocketAddr,
    graphql: bool,
}

impl TapUrl {
    /// The tap URL of the API at `addr` for the Vector version reported by `vector --version`
    /// (`None`: unknown, taken as one with the GraphQL API).
    pub fn new(addr: SocketAddr, vector_version: Option<&str>) -> Self {
        let grpc = vector_version
            .and_then(major_minor)
            .is_some_and(|v| v >= (0, 55));
        Self {
            addr,
            graphql: !grpc,
        }
    }
}

impl std::fmt::Display for TapUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.graphql {
            true => write!(f, "http://{}/graphql", self.addr),
            false => write!(f, "http://{}", self.addr),
        }
    }
}

/// `(major, minor)` of a version such as `0.54.0` or `0.55.1-debian`.
fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Queries pipelines' Vector APIs; cheap to clone.
#[derive(Debug, Clone)]
pub struct VectorApi {
    http: reqwest::Client,
    timeout: Duration,
}

impl VectorApi {
    /// A client whose every query gives up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // The API is on loopback: a proxy from the environment must not be asked for it.
            .no_proxy()
            .build()
            .expect("HTTP client builds");
        Self { http, timeout }
    }

    /// The counters of the Vector whose API is at `addr`; `None` when it does not answer
    /// (yet), answers an error, or speaks another protocol.
    pub async fn counters(&self, addr: SocketAddr) -> Option<Counters> {
        counters::query(&self.http, addr).await
    }

    /// Error totals per component of the Vector whose API is at `addr` (components without
    /// errors are absent); `None` when it does not answer the subscription in time.
    pub async fn errors(&self, addr: SocketAddr) -> Option<BTreeMap<String, i64>> {
        match tokio::time::timeout(self.timeout, errors::subscribe(addr)).await {
            Ok(Ok(totals)) => Some(totals),
            Ok(Err(e)) => {
                tracing::debug!(%addr, error = %e, "vector error subscription failed");
                None
            }
            Err(_) => {
                tracing::debug!(%addr, "vector error subscription timed out");
                None
            }
        }
    }

    /// Adds the counters of each RUNNING pipeline of `heartbeat` whose API is in `apis`, all
    /// queried at once; pipelines whose Vector does not answer are left as they are.
    pub async fn fill(&self, heartbeat: &mut Heartbeat, apis: &[(String, SocketAddr)]) {
        let targets: Vec<(usize, SocketAddr)> = heartbeat
            .pipelines
            .iter()
            .enumerate()
            .filter(|(_, p)| p.status == PipelineState::Running)
            .filter_map(|(i, p)| {
                let (_, addr) = apis.iter().find(|(id, _)| *id == p.pipeline_id)?;
                Some((i, *addr))
            })
            .collect();
        let answers = futures_util::future::join_all(
            targets
                .iter()
                .map(|(_, addr)| async { tokio::join!(self.counters(*addr), self.errors(*addr)) }),
        )
        .await;
        for ((i, addr), (counters, errors)) in targets.into_iter().zip(answers) {
            let p = &mut heartbeat.pipelines[i];
            let Some(mut c) = counters else {
                tracing::debug!(pipeline = %p.pipeline_id, %addr, "vector api did not answer; counters left out");
                continue;
            };
            if let Some(errors) = errors {
                p.errors_total = Some(errors.values().sum());
                for component in &mut c.components {
                    if let Some(n) = errors.get(component["componentId"].as_str().unwrap_or("")) {
                        component["errorsTotal"] = json!(n);
                    }
                }
            }
            p.events_in = Some(c.events_in);
            p.events_out = Some(c.events_out);
            p.bytes_in = Some(c.bytes_in);
            p.bytes_out = Some(c.bytes_out);
            p.component_metrics = Some(Value::Array(c.components));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_urls_follow_the_vector_version() {
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let url = |v| TapUrl::new(addr, v).to_string();
        assert_eq!(url(Some("0.54.0")), "http://127.0.0.1:4000/graphql");
        assert_eq!(url(None), "http://127.0.0.1:4000/graphql");
        assert_eq!(url(Some("nonsense")), "http://127.0.0.1:4000/graphql");
        assert_eq!(url(Some("0.55.0")), "http://127.0.0.1:4000");
        assert_eq!(url(Some("1.0.0")), "http://127.0.0.1:4000");
    }
}
