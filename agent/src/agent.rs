//! The main loop: one task owns the [`State`] and the [`Supervisor`]; everything else (polls,
//! heartbeats, the push channel, child watchers, taps, downloads) runs in tasks that report
//! back over one channel. No agent state sits behind a lock.

use crate::client::{ApiClient, ClientError};
use crate::config::{Config, ReExec};
use crate::live_tap::{self, LiveTap};
use crate::logs::{self, Logs};
use crate::push::PushTarget;
use crate::state::{Command, Event, Identity, PollError, State};
use crate::supervisor::Supervisor;
use crate::update::UpdateFailure;
use crate::vector_api::{TapUrl, VectorApi};
use crate::{enroll, push, samples, update};
use anyhow::Context;
use flotilla_shared::protocol::{PendingAction, SamplesRequest};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How [`run`] ended.
#[derive(Debug)]
pub enum Outcome {
    /// Shut down on request.
    Stopped,
    /// The binary was replaced: the caller must execute it (pipelines are already stopped).
    ReExec(ReExec),
}

/// Runs the agent until `shutdown` is cancelled (or a self-update needs a re-exec).
///
/// On shutdown the push socket is closed with 1000 and every pipeline is stopped.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<Outcome> {
    tracing::info!(
        version = crate::VERSION,
        url = %config.url,
        data_dir = %config.data_dir.display(),
        vector = %config.vector_bin.display(),
        "flotilla-agent starting"
    );
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let client = ApiClient::new(config.url.clone(), config.tuning.http_timeout);
    let vector_version = vector_version(&config.vector_bin).await;
    let token = match enroll::node_token(&config, &client, vector_version.clone(), &shutdown).await
    {
        Ok(token) => token,
        Err(enroll::EnrollError::Cancelled) => return Ok(Outcome::Stopped),
        Err(e) => return Err(e.into()),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let logs = Logs::default();
    let supervisor = Supervisor::new(
        config.vector_bin.clone(),
        config.pipelines_dir(),
        config.tuning.stop_grace,
        tx.clone(),
        logs.clone(),
    );
    supervisor
        .prepare()
        .with_context(|| format!("cannot prepare {}", config.pipelines_dir().display()))?;
    let identity = Identity {
        agent_version: crate::VERSION.to_owned(),
        vector_version: vector_version.clone(),
        labels: config.labels.clone(),
        // The server refuses self-updates to DOCKER nodes: their image is what to update.
        deployment_mode: Some(config.deployment_mode.clone().unwrap_or_else(|| {
            if Path::new("/.dockerenv").exists() {
                "DOCKER"
            } else {
                "STANDALONE"
            }
            .to_owned()
        })),
    };
    let exe = config.reexec.as_ref().map(|r| r.exe.as_path());
    let previous_update = update::previous_update(&config.data_dir, exe);
    let state = State::new(
        config.tuning.clone(),
        identity,
        config.url.clone(),
        config.poll_interval,
        previous_update,
        now(),
    );
    let client = client.with_token(token.clone());
    let tasks = TaskTracker::new();
    let tasks_cancel = CancellationToken::new();
    tasks.spawn(logs::ship(
        client.clone(),
        logs,
        config.tuning.log_flush,
        tasks_cancel.clone(),
    ));
    let vector_api = VectorApi::new(config.tuning.vector_api_timeout);
    let mut main = MainLoop {
        client,
        token,
        config,
        state,
        supervisor,
        vector_api,
        vector_version,
        tx,
        rx,
        push: None,
        push_cancel: CancellationToken::new(),
        live_taps: HashMap::new(),
        live_taps_cancel: CancellationToken::new(),
        tasks,
        tasks_cancel,
    };
    let reexec = main.run(&shutdown).await;
    main.stop().await;
    match reexec {
        None => {
            tracing::info!("flotilla-agent stopped");
            Ok(Outcome::Stopped)
        }
        Some(action) => {
            let target = main
                .config
                .reexec
                .clone()
                .expect("self-update runs only with a re-exec target");
            if let Err(e) = update::record_attempt(&main.config.data_dir, &action) {
                tracing::warn!(error = %e, "cannot record the self-update attempt");
            }
            tracing::info!(exe = %target.exe.display(), "re-executing the updated binary");
            Ok(Outcome::ReExec(target))
        }
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

struct MainLoop {
    config: Config,
    client: ApiClient,
    token: flotilla_shared::secret::Secret,
    state: State,
    supervisor: Supervisor,
    /// Reads each running pipeline's counters before a heartbeat.
    vector_api: VectorApi,
    /// `vector --version`, which decides the tap URL's form.
    vector_version: Option<String>,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    push: Option<(watch::Sender<PushTarget>, JoinHandle<()>)>,
    push_cancel: CancellationToken,
    /// The stop of each running live tap.
    live_taps: HashMap<String, CancellationToken>,
    /// Parent of every live tap's stop: cancelled at shutdown.
    live_taps_cancel: CancellationToken,
    tasks: TaskTracker,
    tasks_cancel: CancellationToken,
}

impl MainLoop {
    /// Loops until shutdown; returns the update action when a re-exec is due.
    async fn run(&mut self, shutdown: &CancellationToken) -> Option<PendingAction> {
        let mut queue: VecDeque<Event> = VecDeque::from([Event::Tick]);
        loop {
            while let Some(event) = queue.pop_front() {
                match &event {
                    Event::Exited {
                        pipeline_id,
                        generation,
                        ..
                    } => self.supervisor.reap(pipeline_id, *generation),
                    Event::LiveTapEnded { request_id } => {
                        self.live_taps.remove(request_id);
                    }
                    _ => {}
                }
                for command in self.state.handle(event, now()) {
                    if let Command::ReExec(action) = command {
                        return Some(action);
                    }
                    queue.extend(self.execute(command));
                }
            }
            let deadline = self
                .state
                .next_deadline()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                () = shutdown.cancelled() => return None,
                event = self.rx.recv() => queue.extend(event),
                () = sleep_until(deadline) => queue.push_back(Event::Tick),
            }
        }
    }

    /// Executes one command; events it produces synchronously are returned.
    fn execute(&mut self, command: Command) -> Option<Event> {
        match command {
            Command::Poll => {
                let client = self.client.clone();
                self.spawn(async move {
                    let result = client.config().await.map(Box::new).map_err(|e| match e {
                        ClientError::Unauthorized(_) => PollError::Unauthorized,
                        other => PollError::Other(other.to_string()),
                    });
                    Event::PollDone(result)
                });
            }
            Command::Heartbeat(mut body) => {
                let client = self.client.clone();
                let (vector_api, apis) = (self.vector_api.clone(), self.supervisor.apis());
                self.spawn(async move {
                    vector_api.fill(&mut body, &apis).await;
                    let result = client.heartbeat(&body).await;
                    if let Err(e) = &result {
                        tracing::warn!(error = %e, "heartbeat failed");
                    }
                    Event::HeartbeatDone { ok: result.is_ok() }
                });
            }
            Command::ConnectPush(target) => match &self.push {
                Some((sender, _)) => {
                    tracing::info!(?target, "push target changed");
                    let _ = sender.send(target);
                }
                None => {
                    tracing::info!(?target, "starting the push channel");
                    let (sender, receiver) = watch::channel(target);
                    let task = tokio::spawn(push::run(
                        receiver,
                        self.token.clone(),
                        self.config.tuning.clone(),
                        self.tx.clone(),
                        self.push_cancel.clone(),
                    ));
                    self.push = Some((sender, task));
                }
            },
            Command::Start {
                pipeline_id,
                generation,
                config_yaml,
                log_level,
            } => {
                let result = self.supervisor.start(
                    &pipeline_id,
                    generation,
                    &config_yaml,
                    log_level.as_deref(),
                );
                return Some(Event::Spawned {
                    pipeline_id,
                    generation,
                    result,
                });
            }
            Command::Stop {
                pipeline_id,
                generation,
            } => self.supervisor.stop(&pipeline_id, generation),
            Command::RemoveConfig { pipeline_id } => self.supervisor.remove_config(&pipeline_id),
            Command::Tap(request) => {
                let bin = self.config.vector_bin.clone();
                let api = self.tap_url(&request.pipeline_id);
                let timeout = self.config.tuning.tap_timeout;
                self.spawn(async move {
                    let results = samples::tap_all(&bin, api, &request, timeout).await;
                    Event::TapDone {
                        request_id: request.request_id.clone(),
                        results,
                    }
                });
            }
            Command::PostSamples {
                request_id,
                results,
            } => {
                let client = self.client.clone();
                self.spawn(async move {
                    let result = client.samples(&SamplesRequest { results }).await;
                    if let Err(e) = &result {
                        tracing::warn!(request = %request_id, error = %e, "posting sample results failed");
                    }
                    Event::SamplesPosted { request_id, ok: result.is_ok() }
                });
            }
            Command::SelfUpdate(action) => {
                let Some(target) = self.config.reexec.clone() else {
                    return Some(Event::UpdateFinished(Err(UpdateFailure::InstallFailed
                        .logged("self-update needs the agent to run as its own binary"))));
                };
                let url = action.download_url.unwrap_or_default();
                let checksum = action.checksum.unwrap_or_default();
                let tuning = self.config.tuning.clone();
                let allow_http = self.config.allow_http_updates;
                self.spawn(async move {
                    let result = update::download_and_replace(
                        &url,
                        &checksum,
                        &target.exe,
                        tuning.download_connect_timeout,
                        tuning.download_timeout,
                        allow_http,
                    )
                    .await;
                    Event::UpdateFinished(result)
                });
            }
            Command::StartLiveTap(tap) => self.start_live_tap(tap),
            Command::StopLiveTap { request_id } => {
                if let Some(stop) = self.live_taps.get(&request_id) {
                    stop.cancel();
                }
            }
            Command::RefuseLiveTap { tap, reason } => {
                let client = self.client.clone();
                self.spawn_detached(async move {
                    let body = flotilla_shared::protocol::TapEvents {
                        request_id: tap.request_id,
                        pipeline_id: tap.pipeline_id,
                        component_id: tap.component_id,
                        events: None,
                        status: Some("stopped".into()),
                        reason: Some(reason),
                    };
                    if let Err(e) = client.tap_events(&body).await {
                        tracing::warn!(tap = %body.request_id, error = %e, "posting a refused live tap failed");
                    }
                });
            }
            Command::ReExec(_) => unreachable!("handled by the loop"),
        }
        None
    }

    /// Runs a live tap in its own task; it posts its own end, even at shutdown.
    fn start_live_tap(&mut self, tap: LiveTap) {
        let stop = self.live_taps_cancel.child_token();
        self.live_taps.insert(tap.request_id.clone(), stop.clone());
        let stop = live_tap::Stop {
            stop,
            shutdown: self.live_taps_cancel.clone(),
        };
        let (client, tx) = (self.client.clone(), self.tx.clone());
        let bin = self.config.vector_bin.clone();
        let api = self.tap_url(&tap.pipeline_id);
        let (flush, max) = (
            self.config.tuning.live_tap_flush,
            self.config.tuning.live_tap_max,
        );
        self.tasks.spawn(async move {
            let request_id = tap.request_id.clone();
            live_tap::run(tap, &bin, api, &client, flush, max, stop).await;
            let _ = tx.send(Event::LiveTapEnded { request_id });
        });
    }

    /// Where `vector tap` reaches this pipeline's Vector, when it has an API of its own.
    fn tap_url(&self, pipeline_id: &str) -> Option<TapUrl> {
        let addr = self.supervisor.api_of(pipeline_id)?;
        Some(TapUrl::new(addr, self.vector_version.as_deref()))
    }

    /// Runs an I/O task that reports one event, cancelled at shutdown.
    fn spawn(&self, task: impl std::future::Future<Output = Event> + Send + 'static) {
        let tx = self.tx.clone();
        self.spawn_detached(async move {
            let _ = tx.send(task.await);
        });
    }

    /// Runs an I/O task that reports nothing, cancelled at shutdown.
    fn spawn_detached(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let cancel = self.tasks_cancel.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Closes the push socket (1000), ends live taps, stops every pipeline and ends the I/O
    /// tasks.
    async fn stop(&mut self) {
        self.push_cancel.cancel();
        // Before the pipelines, so each tap reports the shutdown rather than a lost vector.
        self.live_taps_cancel.cancel();
        if let Some((_, task)) = self.push.take() {
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
        self.supervisor.stop_all().await;
        self.tasks_cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.tasks.wait()).await;
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// `vector --version`, e.g. `0.41.1`; `None` when it cannot be run.
async fn vector_version(bin: &Path) -> Option<String> {
    let output = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new(bin)
            .arg("--version")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().next()?.trim();
    let version = line.strip_prefix("vector ").unwrap_or(line);
    Some(version.split_whitespace().next()?.to_owned())
}
