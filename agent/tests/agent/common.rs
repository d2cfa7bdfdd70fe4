//! The real api + gateway (in-process, on port 0) over a fresh Postgres database and the local
//! Redis, an in-process agent with short timings, and the stand-in `vector` from `fixtures/`.

use flotilla_agent::{Config, Outcome, Tuning};
use flotilla_shared::settings::Settings;
use flotilla_testkit::api::ApiHandle;
use flotilla_testkit::db::TestDb;
use flotilla_testkit::gateway::{self, GatewayHandle};
use reqwest::Method;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use flotilla_testkit::proxy::Proxy;
pub use flotilla_testkit::{eventually, within};

/// Postgres, the api and a gateway.
pub struct Stack {
    pub db: TestDb,
    pub settings: Settings,
    pub api: ApiHandle,
    pub gateway: Option<GatewayHandle>,
    pub gateway_addr: SocketAddr,
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Agents reach the gateway through `proxy` (a stand-in load balancer).
    pub async fn start_behind(proxy: &Proxy) -> Self {
        Self::start_with(Some(proxy.addr)).await
    }

    async fn start_with(public: Option<SocketAddr>) -> Self {
        let db = flotilla_testkit::db::fresh().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway_addr = listener.local_addr().unwrap();
        let mut settings = flotilla_testkit::settings(&db.url, &flotilla_testkit::redis_url());
        let public = public.unwrap_or(gateway_addr);
        settings.api.public_ws_url = format!("ws://{public}/api/agent/ws");
        let gateway = gateway::spawn_on(settings.clone(), listener).await;
        let api = flotilla_testkit::api::spawn(settings.clone()).await;
        Self {
            db,
            settings,
            api,
            gateway: Some(gateway),
            gateway_addr,
        }
    }

    /// Another gateway on a new port.
    pub async fn extra_gateway(&self) -> GatewayHandle {
        gateway::spawn(self.settings.clone()).await
    }

    pub fn gateway(&self) -> &GatewayHandle {
        self.gateway.as_ref().expect("gateway running")
    }

    pub async fn stop_gateway(&mut self) {
        if let Some(g) = self.gateway.take() {
            g.stop().await;
        }
    }

    /// Starts a new gateway on the same address.
    pub async fn start_gateway(&mut self) {
        let addr = self.gateway_addr;
        let listener = eventually(
            "the gateway port is free again",
            Duration::from_secs(5),
            || async move { TcpListener::bind(addr).await.ok() },
        )
        .await;
        self.gateway = Some(gateway::spawn_on(self.settings.clone(), listener).await);
    }

    /// A new environment's `(id, enrollment token)`.
    pub async fn environment(&self) -> (String, String) {
        self.api
            .create_environment(&format!("env-{}", uuid::Uuid::new_v4().simple()))
            .await
    }

    /// Creates and deploys a pipeline for every node of the environment.
    pub async fn deploy_new(&self, env: &str, yaml: &str) -> String {
        let id = self
            .api
            .create_pipeline(
                env,
                &format!("p-{}", uuid::Uuid::new_v4().simple()),
                yaml,
                json!({}),
            )
            .await;
        let r = self.api.deploy(&id).await;
        assert!(r.status.is_success(), "deploy: {}", r.text);
        id
    }

    /// Updates a pipeline's config (a new version).
    pub async fn update_pipeline(&self, id: &str, yaml: &str) {
        let r = self
            .api
            .admin(
                Method::PUT,
                &format!("/api/v1/pipelines/{id}"),
                Some(json!({ "configYaml": yaml })),
            )
            .await;
        assert!(r.status.is_success(), "update: {}", r.text);
    }

    pub async fn undeploy(&self, id: &str) {
        let r = self
            .api
            .admin(
                Method::POST,
                &format!("/api/v1/pipelines/{id}/undeploy"),
                Some(json!({})),
            )
            .await;
        assert!(r.status.is_success(), "undeploy: {}", r.text);
    }

    /// The fleet view of the nodes of `env`.
    pub async fn fleet(&self, env: &str) -> Vec<Value> {
        let path = format!("/api/v1/fleet?environmentId={env}");
        let r = self.api.admin(Method::GET, &path, None).await;
        r.body["nodes"].as_array().cloned().unwrap_or_default()
    }

    /// The fleet view of the only node of `env`, once it exists.
    pub async fn node_of(&self, env: &str) -> Value {
        eventually("the node enrolled", Duration::from_secs(10), || async {
            self.fleet(env).await.first().cloned()
        })
        .await
    }

    pub async fn node(&self, node_id: &str) -> Value {
        let r = self
            .api
            .admin(Method::GET, &format!("/api/v1/fleet/{node_id}"), None)
            .await;
        assert!(r.status.is_success(), "fleet node: {}", r.text);
        r.body.get("node").cloned().unwrap_or(r.body)
    }

    /// Waits until the node's push socket is up.
    pub async fn wait_connected(&self, node_id: &str) {
        eventually(
            "the agent's push channel is connected",
            Duration::from_secs(10),
            || async { (self.node(node_id).await["wsConnected"] == json!(true)).then_some(()) },
        )
        .await;
    }

    pub async fn set_poll_interval(&self, ms: u64) {
        let r = self
            .api
            .admin(
                Method::PUT,
                "/api/v1/settings",
                Some(json!({ "pollIntervalMs": ms })),
            )
            .await;
        assert!(r.status.is_success(), "settings: {}", r.text);
    }
}

/// Short timings for tests.
pub fn fast_tuning() -> Tuning {
    let ms = Duration::from_millis;
    Tuning {
        heartbeat_debounce: ms(100),
        read_deadline: ms(2000),
        push_backoff_base: ms(50),
        push_backoff_max: ms(400),
        push_stable_after: ms(1000),
        drain_reconnect_max: ms(100),
        connect_timeout: ms(2000),
        http_timeout: ms(5000),
        crash_backoff_base: ms(100),
        crash_backoff_max: ms(1000),
        stop_grace: ms(2000),
        tap_timeout: ms(3000),
        sample_retry: ms(200),
        download_connect_timeout: ms(1000),
        download_timeout: ms(5000),
        sse_read_deadline: ms(3000),
        log_flush: ms(200),
        live_tap_flush: ms(100),
        live_tap_max: ms(60_000),
        vector_api_timeout: ms(1000),
    }
}

/// A scratch directory with a `vector` wrapper that records runs in `out/`.
pub struct Sandbox {
    pub dir: PathBuf,
    pub data: PathBuf,
    pub out: PathBuf,
    pub vector: PathBuf,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "flotilla-agent-it-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let data = dir.join("data");
        let out = dir.join("out");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vector");
        let vector = dir.join("vector");
        std::fs::write(
            &vector,
            format!(
                "#!/bin/sh\nFAKE_VECTOR_OUT='{}' exec '{}' \"$@\"\n",
                out.display(),
                fixture.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&vector, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self {
            dir,
            data,
            out,
            vector,
        }
    }

    /// `(pid, config)` of every stand-in vector process still running.
    pub fn running(&self) -> Vec<(u32, String)> {
        let mut found = vec![];
        for entry in std::fs::read_dir(&self.out).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("run-")
                .and_then(|n| n.strip_suffix(".yaml"))
            else {
                continue;
            };
            let Ok(pid) = pid.parse::<u32>() else {
                continue;
            };
            if alive(pid) {
                found.push((
                    pid,
                    std::fs::read_to_string(entry.path()).unwrap_or_default(),
                ));
            }
        }
        found
    }

    /// The config files the agent keeps.
    pub fn config_files(&self) -> Vec<PathBuf> {
        self.pipeline_entries("yaml")
    }

    /// The pipelines' own Vector data directories.
    pub fn data_dirs(&self) -> Vec<PathBuf> {
        self.pipeline_entries("data")
    }

    fn pipeline_entries(&self, extension: &str) -> Vec<PathBuf> {
        match std::fs::read_dir(self.data.join("pipelines")) {
            Ok(dir) => dir
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == extension))
                .collect(),
            Err(_) => vec![],
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for (pid, _) in self.running() {
            let _ = std::process::Command::new("kill")
                .arg("-9")
                .arg(pid.to_string())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// An agent running in-process.
pub struct TestAgent {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<Outcome>>,
}

impl TestAgent {
    pub fn config(stack: &Stack, sandbox: &Sandbox, enrollment_token: &str) -> Config {
        let mut config = Config::new(
            reqwest::Url::parse(&stack.api.url("/")).unwrap(),
            &sandbox.data,
        );
        config.enrollment_token = Some(flotilla_shared::secret::Secret::new(enrollment_token));
        config.vector_bin = sandbox.vector.clone();
        config.tuning = fast_tuning();
        config
    }

    pub fn start(config: Config) -> Self {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(flotilla_agent::run(config, shutdown.clone()));
        Self { shutdown, task }
    }

    /// Stops it the way SIGTERM does and waits.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let outcome = within("agent shutdown", self.task)
            .await
            .expect("agent task");
        assert!(matches!(outcome, Ok(Outcome::Stopped)), "{outcome:?}");
    }
}

/// Logs for a failing test: `RUST_LOG=flotilla_agent=debug cargo test ...`.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The set-up most agent tests share: a stack, an environment, and one agent enrolled into it
/// (its config adjusted by `tweak`) whose push channel is connected. Returns
/// `(stack, environment id, sandbox, agent, node id)`; keep the sandbox alive while the agent runs.
pub async fn connected(
    tweak: impl FnOnce(&mut Config, &Sandbox),
) -> (Stack, String, Sandbox, TestAgent, String) {
    init_logs();
    let stack = Stack::start().await;
    let (env, enrollment) = stack.environment().await;
    let sandbox = Sandbox::new();
    let mut config = TestAgent::config(&stack, &sandbox, &enrollment);
    tweak(&mut config, &sandbox);
    let agent = TestAgent::start(config);
    let node_id = stack.node_of(&env).await["id"].as_str().unwrap().to_owned();
    stack.wait_connected(&node_id).await;
    (stack, env, sandbox, agent, node_id)
}

/// Whether a stand-in vector's config file is `deployed` as the agent writes it (the
/// deployed YAML plus, possibly, the Vector API block the agent adds).
pub fn runs(written: &str, deployed: &str) -> bool {
    flotilla_agent::vector_api::is_prepared_from(written, deployed)
}
