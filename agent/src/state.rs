//! The state machine of the main loop: events in, commands out, no I/O.
//!
//! [`State::handle`] takes an [`Event`] and the current instant and returns the
//! [`Command`]s the loop must execute (each I/O command reports back as a later event).
//! Timers are deadlines: [`State::next_deadline`] says when to deliver the next
//! [`Event::Tick`]. Tests drive it with explicit instants and never sleep.

use crate::config::Tuning;
use flotilla_shared::frames::PushMessage;
use flotilla_shared::protocol::{
    ConfigResponse, Heartbeat, Labels, PendingAction, PipelineConfig, PipelineState,
    PipelineStatus, SampleRequestConfig, SampleResult,
};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Shortest poll interval honoured, whatever the server or a push says.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A pipeline that ran this long before crashing restarts after the shortest backoff again.
const CRASH_RESET_AFTER: Duration = Duration::from_secs(60);
/// How long a finished sample request is remembered to ignore duplicates.
const SAMPLE_MEMORY: Duration = Duration::from_secs(3600);
/// Give up re-posting sample results after this many failures.
const SAMPLE_MAX_ATTEMPTS: u32 = 20;

/// Something the main loop learned.
#[derive(Debug, Clone)]
pub enum Event {
    /// A deadline from [`State::next_deadline`] passed (or just: check timers).
    Tick,
    /// A config poll finished.
    PollDone(Result<Box<ConfigResponse>, PollError>),
    /// A heartbeat finished.
    HeartbeatDone {
        /// Whether the api accepted it.
        ok: bool,
    },
    /// News from the push channel.
    Push(PushEvent),
    /// A pipeline process was started (`Ok(pid)`) or could not be (`Err(reason)`).
    Spawned {
        /// Pipeline.
        pipeline_id: Uuid,
        /// Which start of it.
        generation: u64,
        /// Pid or why it failed.
        result: Result<u32, String>,
    },
    /// A pipeline process exited.
    Exited {
        /// Pipeline.
        pipeline_id: Uuid,
        /// Which start of it.
        generation: u64,
        /// Exit status, for the log and the heartbeat.
        status: String,
    },
    /// `vector tap` finished for every component of a sample request.
    TapDone {
        /// The request.
        request_id: Uuid,
        /// One result per component.
        results: Vec<SampleResult>,
    },
    /// Posting sample results finished.
    SamplesPosted {
        /// The request.
        request_id: Uuid,
        /// Whether the api accepted them.
        ok: bool,
    },
    /// A self-update download finished: the binary was replaced, or why not.
    UpdateFinished(Result<(), String>),
}

/// Why a poll failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollError {
    /// The node token was rejected (revoked node?).
    Unauthorized,
    /// Anything else (network, 5xx); retried.
    Other(String),
}

/// What the push task reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushEvent {
    /// A socket is up.
    Connected,
    /// A frame arrived.
    Message(PushMessage),
    /// The socket went away; the task reconnects by itself.
    Disconnected,
    /// The gateway said the node was revoked; the task stopped.
    Revoked,
}

/// Something the main loop must do.
#[derive(Debug, Clone)]
pub enum Command {
    /// `GET /api/agent/config`, answered by [`Event::PollDone`].
    Poll,
    /// `POST /api/agent/heartbeat`, answered by [`Event::HeartbeatDone`].
    Heartbeat(Box<Heartbeat>),
    /// (Re)point the push task at this URL, starting it if needed.
    ConnectPush(String),
    /// Write the pipeline's config and start `vector`, answered by [`Event::Spawned`].
    Start {
        /// Pipeline.
        pipeline_id: Uuid,
        /// Which start of it.
        generation: u64,
        /// Config to write.
        config_yaml: String,
        /// Vector log level.
        log_level: Option<String>,
    },
    /// Stop the process of this generation; answered by [`Event::Exited`].
    Stop {
        /// Pipeline.
        pipeline_id: Uuid,
        /// Which start of it.
        generation: u64,
    },
    /// Delete the pipeline's config file.
    RemoveConfig {
        /// Pipeline.
        pipeline_id: Uuid,
    },
    /// Run `vector tap` for each component, answered by [`Event::TapDone`].
    Tap(SampleRequestConfig),
    /// `POST /api/agent/samples`, answered by [`Event::SamplesPosted`].
    PostSamples {
        /// The request.
        request_id: Uuid,
        /// Its results.
        results: Vec<SampleResult>,
    },
    /// Download, verify and replace the binary, answered by [`Event::UpdateFinished`].
    SelfUpdate(PendingAction),
    /// Stop everything and execute the replaced binary.
    ReExec(PendingAction),
}

/// The self-update this process was re-executed for.
#[derive(Debug, Clone)]
pub struct PreviousUpdate {
    /// The action.
    pub action: PendingAction,
    /// Why it did not take, if the binary found in place is not the one requested.
    pub error: Option<String>,
}

/// What the agent reports about itself in heartbeats.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// Agent version.
    pub agent_version: String,
    /// `vector --version`, when known.
    pub vector_version: Option<String>,
    /// Labels.
    pub labels: Labels,
    /// STANDALONE or DOCKER.
    pub deployment_mode: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Proc {
    /// Waiting for its first start.
    Idle,
    /// Start command issued.
    Starting { checksum: String, version: i32 },
    /// Running.
    Running {
        pid: u32,
        since: Instant,
        checksum: String,
        version: i32,
    },
    /// Stop command issued; start again after exit when `restart`.
    Stopping { restart: bool },
    /// Crashed or could not start; start again at `until`.
    Backoff { until: Instant },
}

#[derive(Debug, Clone)]
struct Pipeline {
    /// The config to run; `None` once removed (the entry lives until the process exits).
    desired: Option<PipelineConfig>,
    generation: u64,
    proc: Proc,
    crashes: u32,
    last_error: Option<String>,
}

#[derive(Debug, Clone)]
enum SampleJob {
    Tapping,
    Posting {
        results: Vec<SampleResult>,
        attempts: u32,
    },
    Waiting {
        results: Vec<SampleResult>,
        attempts: u32,
        at: Instant,
    },
    Done {
        at: Instant,
    },
}

/// Push channel status, reported in `agentHealth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushStatus {
    /// No URL yet.
    Idle,
    /// Connected.
    Connected,
    /// Reconnecting.
    Disconnected,
    /// The node was revoked; the channel is stopped.
    Revoked,
}

/// All state of the agent, owned by the main loop.
#[derive(Debug)]
pub struct State {
    tuning: Tuning,
    identity: Identity,
    poll_interval: Duration,
    next_poll: Instant,
    poll_in_flight: bool,
    poll_queued: bool,
    polls_started: u64,
    /// `polls_started` when a `poll_interval` push arrived: results of polls started up to
    /// then are older than the push and must not undo it.
    interval_pushed_at: Option<u64>,
    poll_failures: u32,
    websocket_url: Option<String>,
    push: PushStatus,
    pipelines: BTreeMap<Uuid, Pipeline>,
    samples: HashMap<Uuid, SampleJob>,
    handled_action: Option<PendingAction>,
    update_in_progress: bool,
    /// Reported in heartbeats until one carrying it is accepted (the api keeps it).
    update_error: Option<String>,
    /// The heartbeat in flight carries `update_error`.
    update_error_in_flight: bool,
    heartbeat_due: Option<Instant>,
    heartbeat_in_flight: bool,
}

impl State {
    /// A fresh state at `now`: the first poll is due immediately.
    ///
    /// `previous_update` is the self-update this process was re-executed for, if any: it
    /// counts as handled (so it is not downloaded again), and its error, if the replaced
    /// binary turned out wrong, is reported.
    pub fn new(
        tuning: Tuning,
        identity: Identity,
        poll_interval: Duration,
        previous_update: Option<PreviousUpdate>,
        now: Instant,
    ) -> Self {
        let (handled_action, update_error) = match previous_update {
            Some(PreviousUpdate { action, error }) => (Some(action), error),
            None => (None, None),
        };
        Self {
            tuning,
            identity,
            poll_interval: poll_interval.max(MIN_POLL_INTERVAL),
            next_poll: now,
            poll_in_flight: false,
            poll_queued: false,
            polls_started: 0,
            interval_pushed_at: None,
            poll_failures: 0,
            websocket_url: None,
            push: PushStatus::Idle,
            pipelines: BTreeMap::new(),
            samples: HashMap::new(),
            handled_action,
            update_in_progress: false,
            update_error,
            update_error_in_flight: false,
            heartbeat_due: None,
            heartbeat_in_flight: false,
        }
    }

    /// The current poll interval.
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// When the next poll is due (meaningless while one is in flight).
    pub fn next_poll(&self) -> Instant {
        self.next_poll
    }

    /// The push channel status.
    pub fn push_status(&self) -> PushStatus {
        self.push
    }

    /// The last self-update error.
    pub fn update_error(&self) -> Option<&str> {
        self.update_error.as_deref()
    }

    /// Sets the Vector version once known.
    pub fn set_vector_version(&mut self, version: Option<String>) {
        self.identity.vector_version = version;
    }

    /// When the loop must deliver the next [`Event::Tick`].
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut deadlines = vec![];
        if !self.poll_in_flight {
            deadlines.push(self.next_poll);
        }
        if !self.heartbeat_in_flight {
            deadlines.extend(self.heartbeat_due);
        }
        for p in self.pipelines.values() {
            if let Proc::Backoff { until } = p.proc {
                deadlines.push(until);
            }
        }
        for job in self.samples.values() {
            if let SampleJob::Waiting { at, .. } = job {
                deadlines.push(*at);
            }
        }
        deadlines.into_iter().min()
    }

    /// Handles one event; returns the commands to execute, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Command> {
        let mut out = vec![];
        match event {
            Event::Tick => {}
            Event::PollDone(result) => self.on_poll_done(result, now, &mut out),
            Event::HeartbeatDone { ok } => {
                self.heartbeat_in_flight = false;
                if ok && std::mem::take(&mut self.update_error_in_flight) {
                    self.update_error = None;
                }
                self.update_error_in_flight = false;
                if !ok {
                    tracing::debug!("heartbeat failed; the next poll sends another");
                }
            }
            Event::Push(push) => self.on_push(push, now, &mut out),
            Event::Spawned {
                pipeline_id,
                generation,
                result,
            } => self.on_spawned(pipeline_id, generation, result, now, &mut out),
            Event::Exited {
                pipeline_id,
                generation,
                status,
            } => self.on_exited(pipeline_id, generation, status, now, &mut out),
            Event::TapDone {
                request_id,
                results,
            } => {
                self.samples.insert(
                    request_id,
                    SampleJob::Posting {
                        results: results.clone(),
                        attempts: 1,
                    },
                );
                out.push(Command::PostSamples {
                    request_id,
                    results,
                });
            }
            Event::SamplesPosted { request_id, ok } => self.on_samples_posted(request_id, ok, now),
            Event::UpdateFinished(result) => {
                self.update_in_progress = false;
                match result {
                    Ok(()) => {
                        if let Some(action) = self.handled_action.clone() {
                            out.push(Command::ReExec(action));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "self-update failed");
                        self.update_error = Some(e);
                        self.changed(now);
                    }
                }
            }
        }
        self.fire_timers(now, &mut out);
        out
    }

    /// Asks for a poll now (coalesced with one in flight: another follows it).
    fn request_poll(&mut self, now: Instant) {
        if self.poll_in_flight {
            self.poll_queued = true;
        } else {
            self.next_poll = now;
        }
    }

    /// Schedules a debounced heartbeat.
    fn changed(&mut self, now: Instant) {
        let at = now + self.tuning.heartbeat_debounce;
        self.heartbeat_due = Some(self.heartbeat_due.map_or(at, |due| due.min(at)));
    }

    fn fire_timers(&mut self, now: Instant, out: &mut Vec<Command>) {
        if !self.poll_in_flight && self.next_poll <= now {
            self.poll_in_flight = true;
            self.poll_queued = false;
            self.polls_started += 1;
            out.push(Command::Poll);
        }
        // Report before restarting, so a crash shows up even when the restart is due too.
        if !self.heartbeat_in_flight && self.heartbeat_due.is_some_and(|due| due <= now) {
            self.heartbeat_due = None;
            self.heartbeat_in_flight = true;
            self.update_error_in_flight = self.update_error.is_some();
            out.push(Command::Heartbeat(Box::new(self.heartbeat(now))));
        }
        let due: Vec<Uuid> = self
            .pipelines
            .iter()
            .filter(|(_, p)| matches!(p.proc, Proc::Backoff { until } if until <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.start(id, out);
        }
        for (id, job) in self.samples.iter_mut() {
            if let SampleJob::Waiting {
                results,
                attempts,
                at,
            } = job
            {
                if *at <= now {
                    let results = std::mem::take(results);
                    let attempts = *attempts + 1;
                    out.push(Command::PostSamples {
                        request_id: *id,
                        results: results.clone(),
                    });
                    *job = SampleJob::Posting { results, attempts };
                }
            }
        }
        self.samples.retain(|_, job| !matches!(job, SampleJob::Done { at } if now.duration_since(*at) > SAMPLE_MEMORY));
    }

    fn on_poll_done(
        &mut self,
        result: Result<Box<ConfigResponse>, PollError>,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        self.poll_in_flight = false;
        let config = match result {
            Ok(config) => config,
            Err(e) => {
                self.poll_failures = self.poll_failures.saturating_add(1);
                let retry = self
                    .tuning
                    .push_backoff_base
                    .saturating_mul(1 << self.poll_failures.min(10))
                    .min(self.poll_interval);
                match e {
                    PollError::Unauthorized => {
                        tracing::error!("the api rejected the node token (was this node revoked?)")
                    }
                    PollError::Other(e) => {
                        tracing::warn!(error = %e, retry_in = ?retry, "config poll failed")
                    }
                }
                self.next_poll = if self.poll_queued { now } else { now + retry };
                return;
            }
        };
        self.poll_failures = 0;
        let started_before_push = self
            .interval_pushed_at
            .is_some_and(|at| self.polls_started <= at);
        if !started_before_push {
            self.interval_pushed_at = None;
            let interval = Duration::from_millis(config.poll_interval_ms).max(MIN_POLL_INTERVAL);
            if interval != self.poll_interval {
                tracing::info!(interval = ?interval, "poll interval set by the server");
                self.poll_interval = interval;
            }
        }
        self.next_poll = if self.poll_queued {
            now
        } else {
            now + self.poll_interval
        };

        let url = config.websocket_url.trim();
        if !url.is_empty()
            && self.websocket_url.as_deref() != Some(url)
            && self.push != PushStatus::Revoked
        {
            self.websocket_url = Some(url.to_owned());
            out.push(Command::ConnectPush(url.to_owned()));
        }
        self.apply_pipelines(&config.pipelines, now, out);
        for request in config.sample_requests.iter().flatten() {
            self.on_sample_request(request.clone(), out);
        }
        self.on_pending_action(config.pending_action.clone(), now, out);
        self.heartbeat_due = Some(now);
    }

    fn on_push(&mut self, push: PushEvent, now: Instant, out: &mut Vec<Command>) {
        match push {
            PushEvent::Connected => {
                tracing::info!("push channel connected");
                self.push = PushStatus::Connected;
                self.request_poll(now);
            }
            PushEvent::Disconnected => {
                if self.push == PushStatus::Connected {
                    self.push = PushStatus::Disconnected;
                }
            }
            PushEvent::Revoked => {
                tracing::error!("the gateway closed the push channel because this node was revoked; push stopped");
                self.push = PushStatus::Revoked;
                self.changed(now);
            }
            PushEvent::Message(message) => match message {
                PushMessage::ConfigChanged { .. } | PushMessage::Action { .. } => {
                    self.request_poll(now)
                }
                PushMessage::SampleRequest {
                    request_id,
                    pipeline_id,
                    component_keys,
                    limit,
                } => self.on_sample_request(
                    SampleRequestConfig {
                        request_id,
                        pipeline_id,
                        component_keys,
                        limit,
                    },
                    out,
                ),
                PushMessage::PollInterval { interval_ms } => {
                    let interval = Duration::from_millis(interval_ms).max(MIN_POLL_INTERVAL);
                    tracing::info!(interval = ?interval, "poll interval changed by push");
                    self.poll_interval = interval;
                    self.interval_pushed_at = Some(self.polls_started);
                    if !self.poll_in_flight {
                        self.next_poll = now + interval;
                    }
                }
                PushMessage::Unknown => tracing::debug!("ignoring a push of unknown type"),
            },
        }
    }

    fn apply_pipelines(
        &mut self,
        desired: &[PipelineConfig],
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        let mut changed = false;
        for config in desired {
            let id = config.pipeline_id;
            let p = self.pipelines.entry(id).or_insert_with(|| Pipeline {
                desired: None,
                generation: 0,
                proc: Proc::Idle,
                crashes: 0,
                last_error: None,
            });
            let new_checksum = p
                .desired
                .as_ref()
                .is_none_or(|d| d.checksum != config.checksum);
            p.desired = Some(config.clone());
            let start_now = match &mut p.proc {
                Proc::Idle => true,
                Proc::Running { checksum, .. } | Proc::Starting { checksum, .. }
                    if *checksum != config.checksum =>
                {
                    tracing::info!(pipeline = %id, version = config.version, "config changed; restarting");
                    out.push(Command::Stop {
                        pipeline_id: id,
                        generation: p.generation,
                    });
                    p.proc = Proc::Stopping { restart: true };
                    changed = true;
                    false
                }
                Proc::Stopping { restart } => {
                    *restart = true;
                    false
                }
                Proc::Backoff { .. } if new_checksum => {
                    p.crashes = 0;
                    true
                }
                _ => false,
            };
            if start_now {
                self.start(id, out);
                changed = true;
            }
        }
        let removed: Vec<Uuid> = self
            .pipelines
            .iter()
            .filter(|(id, p)| p.desired.is_some() && !desired.iter().any(|d| d.pipeline_id == **id))
            .map(|(id, _)| *id)
            .collect();
        for id in removed {
            tracing::info!(pipeline = %id, "pipeline removed; stopping");
            out.push(Command::RemoveConfig { pipeline_id: id });
            changed = true;
            let p = self.pipelines.get_mut(&id).expect("listed above");
            p.desired = None;
            match p.proc {
                Proc::Running { .. } | Proc::Starting { .. } => {
                    out.push(Command::Stop {
                        pipeline_id: id,
                        generation: p.generation,
                    });
                    p.proc = Proc::Stopping { restart: false };
                }
                Proc::Stopping { .. } => p.proc = Proc::Stopping { restart: false },
                Proc::Idle | Proc::Backoff { .. } => {
                    self.pipelines.remove(&id);
                }
            }
        }
        if changed {
            self.changed(now);
        }
    }

    fn start(&mut self, id: Uuid, out: &mut Vec<Command>) {
        let Some(p) = self.pipelines.get_mut(&id) else {
            return;
        };
        let Some(config) = &p.desired else { return };
        p.generation += 1;
        p.proc = Proc::Starting {
            checksum: config.checksum.clone(),
            version: config.version,
        };
        out.push(Command::Start {
            pipeline_id: id,
            generation: p.generation,
            config_yaml: config.config_yaml.clone(),
            log_level: config.log_level.clone(),
        });
    }

    fn on_spawned(
        &mut self,
        id: Uuid,
        generation: u64,
        result: Result<u32, String>,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        let crash_delay = |crashes: u32, tuning: &Tuning| {
            tuning
                .crash_backoff_base
                .saturating_mul(1 << crashes.min(16))
                .min(tuning.crash_backoff_max)
        };
        let Some(p) = self.pipelines.get_mut(&id) else {
            return;
        };
        if p.generation != generation {
            return;
        }
        let Proc::Starting { checksum, version } = p.proc.clone() else {
            return;
        };
        match result {
            Ok(pid) => {
                tracing::info!(pipeline = %id, pid, version, "pipeline started");
                p.proc = Proc::Running {
                    pid,
                    since: now,
                    checksum: checksum.clone(),
                    version,
                };
                p.last_error = None;
                match &p.desired {
                    None => {
                        out.push(Command::Stop {
                            pipeline_id: id,
                            generation,
                        });
                        p.proc = Proc::Stopping { restart: false };
                    }
                    Some(d) if d.checksum != checksum => {
                        out.push(Command::Stop {
                            pipeline_id: id,
                            generation,
                        });
                        p.proc = Proc::Stopping { restart: true };
                    }
                    Some(_) => {}
                }
            }
            Err(reason) => {
                let delay = crash_delay(p.crashes, &self.tuning);
                tracing::error!(pipeline = %id, reason = %reason, retry_in = ?delay, "pipeline could not start");
                p.crashes = p.crashes.saturating_add(1);
                p.last_error = Some(reason);
                p.proc = Proc::Backoff { until: now + delay };
                if p.desired.is_none() {
                    self.pipelines.remove(&id);
                }
            }
        }
        self.changed(now);
    }

    fn on_exited(
        &mut self,
        id: Uuid,
        generation: u64,
        status: String,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        let Some(p) = self.pipelines.get_mut(&id) else {
            return;
        };
        if p.generation != generation {
            return;
        }
        match p.proc.clone() {
            Proc::Stopping { restart } => {
                tracing::info!(pipeline = %id, status = %status, "pipeline stopped");
                if p.desired.is_none() {
                    self.pipelines.remove(&id);
                } else if restart {
                    p.crashes = 0;
                    self.start(id, out);
                } else {
                    p.proc = Proc::Idle;
                }
            }
            Proc::Running { since, .. } => {
                if now.duration_since(since) >= CRASH_RESET_AFTER {
                    p.crashes = 0;
                }
                let delay = self
                    .tuning
                    .crash_backoff_base
                    .saturating_mul(1 << p.crashes.min(16))
                    .min(self.tuning.crash_backoff_max);
                tracing::warn!(pipeline = %id, status = %status, retry_in = ?delay, "pipeline crashed; restarting after backoff");
                p.crashes = p.crashes.saturating_add(1);
                p.last_error = Some(format!("vector exited unexpectedly ({status})"));
                p.proc = Proc::Backoff { until: now + delay };
            }
            _ => return,
        }
        self.changed(now);
    }

    fn on_sample_request(&mut self, request: SampleRequestConfig, out: &mut Vec<Command>) {
        if self.samples.contains_key(&request.request_id) {
            return;
        }
        let running = self
            .pipelines
            .get(&request.pipeline_id)
            .is_some_and(|p| p.desired.is_some());
        if running {
            self.samples.insert(request.request_id, SampleJob::Tapping);
            out.push(Command::Tap(request));
        } else {
            let results: Vec<SampleResult> = request
                .component_keys
                .iter()
                .map(|key| SampleResult {
                    request_id: request.request_id,
                    component_key: key.clone(),
                    events: None,
                    schema: None,
                    error: Some(format!(
                        "pipeline {} is not deployed on this node",
                        request.pipeline_id
                    )),
                })
                .collect();
            self.samples.insert(
                request.request_id,
                SampleJob::Posting {
                    results: results.clone(),
                    attempts: 1,
                },
            );
            out.push(Command::PostSamples {
                request_id: request.request_id,
                results,
            });
        }
    }

    fn on_samples_posted(&mut self, id: Uuid, ok: bool, now: Instant) {
        let Some(job) = self.samples.get_mut(&id) else {
            return;
        };
        let SampleJob::Posting { results, attempts } = job else {
            return;
        };
        if ok {
            *job = SampleJob::Done { at: now };
        } else if *attempts >= SAMPLE_MAX_ATTEMPTS {
            tracing::error!(request = %id, "giving up posting sample results");
            *job = SampleJob::Done { at: now };
        } else {
            let at = now + self.tuning.sample_retry.saturating_mul((*attempts).min(6));
            tracing::warn!(request = %id, attempts = *attempts, "posting sample results failed; will retry");
            *job = SampleJob::Waiting {
                results: std::mem::take(results),
                attempts: *attempts,
                at,
            };
        }
    }

    fn on_pending_action(
        &mut self,
        action: Option<PendingAction>,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        let Some(action) = action else {
            self.handled_action = None;
            return;
        };
        // The api hands a restart out once (the poll consumes it), so each one is acted on;
        // a self-update stays pending until settled, so it is acted on once.
        if action.kind != "restart" {
            if self.handled_action.as_ref() == Some(&action) || self.update_in_progress {
                return;
            }
            self.handled_action = Some(action.clone());
        }
        match action.kind.as_str() {
            "restart" => {
                tracing::info!("restarting all pipelines (fleet action)");
                let ids: Vec<Uuid> = self.pipelines.keys().copied().collect();
                for id in ids {
                    let p = self.pipelines.get_mut(&id).expect("listed above");
                    if p.desired.is_none() {
                        continue;
                    }
                    match p.proc {
                        Proc::Running { .. } | Proc::Starting { .. } => {
                            out.push(Command::Stop {
                                pipeline_id: id,
                                generation: p.generation,
                            });
                            p.proc = Proc::Stopping { restart: true };
                        }
                        Proc::Backoff { .. } | Proc::Idle => {
                            p.crashes = 0;
                            self.start(id, out);
                        }
                        Proc::Stopping { .. } => p.proc = Proc::Stopping { restart: true },
                    }
                }
                self.changed(now);
            }
            "self_update" => {
                if action.target_version.as_deref() == Some(self.identity.agent_version.as_str()) {
                    tracing::info!(version = %self.identity.agent_version, "self-update target is the running version");
                    return;
                }
                match (&action.download_url, &action.checksum) {
                    (Some(url), Some(sum)) if !url.is_empty() && !sum.is_empty() => {
                        tracing::info!(target = ?action.target_version, "self-update requested; downloading");
                        self.update_in_progress = true;
                        self.update_error = None;
                        out.push(Command::SelfUpdate(action));
                    }
                    _ => {
                        self.update_error =
                            Some("self_update action without downloadUrl or checksum".into());
                        self.changed(now);
                    }
                }
            }
            other => tracing::warn!(action = other, "ignoring an unknown fleet action"),
        }
    }

    /// The heartbeat body for the current state.
    pub fn heartbeat(&self, now: Instant) -> Heartbeat {
        let pipelines = self
            .pipelines
            .iter()
            .filter_map(|(id, p)| {
                let desired = p.desired.as_ref()?;
                let mut status = PipelineStatus {
                    pipeline_id: *id,
                    version: desired.version,
                    status: PipelineState::Pending,
                    pid: None,
                    uptime_seconds: None,
                    events_in: None,
                    events_out: None,
                    errors_total: None,
                    bytes_in: None,
                    bytes_out: None,
                    events_discarded: None,
                    component_metrics: None,
                    utilization: None,
                    recent_logs: None,
                    config_checksum: None,
                };
                match &p.proc {
                    Proc::Idle => {}
                    Proc::Starting { .. } | Proc::Stopping { .. } => {
                        status.status = PipelineState::Starting
                    }
                    Proc::Running {
                        pid,
                        since,
                        checksum,
                        version,
                    } => {
                        status.status = PipelineState::Running;
                        status.version = *version;
                        status.pid = Some(i64::from(*pid));
                        status.uptime_seconds = Some(now.duration_since(*since).as_secs() as i64);
                        status.config_checksum = Some(checksum.clone());
                    }
                    Proc::Backoff { .. } => status.status = PipelineState::Crashed,
                }
                if status.status == PipelineState::Crashed {
                    status.recent_logs = p.last_error.as_ref().map(|e| serde_json::json!([e]));
                }
                Some(status)
            })
            .collect();
        let push = match self.push {
            PushStatus::Idle => "idle",
            PushStatus::Connected => "connected",
            PushStatus::Disconnected => "disconnected",
            PushStatus::Revoked => "revoked",
        };
        Heartbeat {
            agent_version: Some(self.identity.agent_version.clone()),
            vector_version: self.identity.vector_version.clone(),
            deployment_mode: self.identity.deployment_mode.clone(),
            labels: (!self.identity.labels.is_empty()).then(|| self.identity.labels.clone()),
            update_error: self.update_error.clone(),
            pipelines,
            agent_health: Some(serde_json::json!({ "pushChannel": push })),
            ..Heartbeat::default()
        }
    }
}

#[cfg(test)]
mod tests;
