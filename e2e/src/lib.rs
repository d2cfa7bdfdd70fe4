//! Helpers for the end-to-end tests: the local topology (`scripts/topology`) as a value that
//! stops itself, a minimal push-channel client, a minimal WebDriver client and the operator
//! console driven through it.
//!
//! The topology runs the binaries in `target/debug`: build them first (`scripts/test` does).
//!
//! # Layout
//! - this file: the topology, the push-channel client.
//! - [`console`]: the operator console driven through WebDriver.

pub mod console;
/// The WebDriver client lives in the test harness, which the benchmarks share.
pub use flotilla_testkit::webdriver;

use futures_util::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tokio_tungstenite::tungstenite::Message;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// api + two gateways + nginx started by `scripts/topology`, stopped on drop.
pub struct Topology {
    dir: PathBuf,
    /// Values from the script's env file (LB_URL, WS_URL, API_ADDR, GATEWAY1_ADDR, …).
    pub env: HashMap<String, String>,
}

impl Topology {
    /// Starts the topology against `database_url` and `redis_url` with `admin_token`.
    pub fn start(database_url: &str, redis_url: &str, admin_token: &str) -> anyhow::Result<Self> {
        Self::start_with(database_url, redis_url, admin_token, &[])
    }

    /// Like [`Topology::start`], with extra `FLOTILLA__*` settings for every process.
    pub fn start_with(
        database_url: &str,
        redis_url: &str,
        admin_token: &str,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir()
            .join(format!("flotilla-topology-{}", std::process::id()))
            .join(format!("{:x}", rand_suffix()));
        let status = Command::new(repo_root().join("scripts/topology"))
            .arg("start")
            .arg(&dir)
            .env("FLOTILLA__DATABASE__URL", database_url)
            .env("FLOTILLA__REDIS__URL", redis_url)
            .env("FLOTILLA_ADMIN_TOKEN", admin_token)
            .env("FLOTILLA_PORT", "0")
            .env("FLOTILLA_BIN_DIR", bin_dir())
            .envs(settings.iter().copied())
            .status()?;
        let topology = Topology {
            env: read_env(&dir.join("env")),
            dir,
        };
        anyhow::ensure!(status.success(), "scripts/topology start failed");
        Ok(topology)
    }

    /// A value from the env file.
    pub fn get(&self, key: &str) -> &str {
        self.env
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{key} in topology env"))
    }

    /// Stops gateway `n` (1 or 2) with `signal` (`KILL`, `TERM`) and waits for it to exit.
    pub fn stop_gateway(&self, n: u8, signal: &str) -> anyhow::Result<()> {
        self.script(&["stop-gateway", &n.to_string(), signal])
    }

    /// Starts gateway `n` again on its address and waits until it answers.
    pub fn start_gateway(&self, n: u8) -> anyhow::Result<()> {
        self.script(&["start-gateway", &n.to_string()])
    }

    fn script(&self, args: &[&str]) -> anyhow::Result<()> {
        let (verb, rest) = args.split_first().expect("a verb");
        let status = Command::new(repo_root().join("scripts/topology"))
            .arg(verb)
            .arg(&self.dir)
            .args(rest)
            .status()?;
        anyhow::ensure!(status.success(), "scripts/topology {verb} failed");
        Ok(())
    }

    /// Contents of one of the processes' logs (`api.log`, `gateway1.log`, …).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/topology"))
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Where the test's own build put the binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/<test> → target/debug
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

fn read_env(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// An HTTP call to `url` with an optional bearer token; the answer's status and JSON body
/// (`Value::Null` when it is not JSON).
pub async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (reqwest::StatusCode, serde_json::Value) {
    let mut req = http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = flotilla_testkit::within("an api call", req.send())
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// A WebSocket connection to the push channel, as an agent holds it.
pub struct PushClient {
    ws: flotilla_testkit::ws_client::Ws,
}

impl PushClient {
    /// Connects to `url` with a node token.
    pub async fn connect(url: &str, token: &str) -> anyhow::Result<Self> {
        let ws = flotilla_testkit::ws_client::connect(url, token).await?;
        Ok(Self { ws })
    }

    /// The next text frame, skipping control frames.
    pub async fn next_text(&mut self) -> anyhow::Result<String> {
        flotilla_testkit::within("a pushed frame", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                    Some(Ok(Message::Close(c))) => anyhow::bail!("closed: {c:?}"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("socket ended"),
                }
            }
        })
        .await
    }

    /// Closes the socket cleanly.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Drain until the server's close arrives.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while self.ws.next().await.is_some() {}
        })
        .await;
    }
}
