//! The state machine of the main loop: events in, commands out, no I/O.
//!
//! [`State::handle`] takes an [`Event`] and the current instant and returns the
//! [`Command`]s the loop must execute (each I/O command reports back as a later event).
//! Timers are deadlines: [`State::next_deadline`] says when to deliver the next
//! [`Event::Tick`]. Tests drive it with explicit instants and never sleep.
//!
//! The [`State`] methods are grouped by concern: `pipelines` (desired configs, starts, stops,
//! crash backoff), `samples` (tap once, post until accepted), `live_taps` (which taps run),
//! `actions` (restart, self-update), `heartbeat` (the report); polls and pushes live here.

use crate::config::Tuning;
use crate::live_tap::LiveTap;
use crate::push::PushTarget;
use crate::update::UpdateFailure;
use flotilla_shared::frames::{ActionKind, PushMessage};
use flotilla_shared::protocol::{
    ConfigResponse, Heartbeat, Labels, PendingAction, PipelineConfig, PipelineState,
    PipelineStatus, SampleRequestConfig, SampleResult,
};
use reqwest::Url;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

mod actions;
mod events;
mod heartbeat;
mod live_taps;
mod pipelines;
mod samples;

pub use actions::PreviousUpdate;
pub use events::{Command, Event, PollError, PushEvent};
use pipelines::{Pipeline, Proc};
use samples::SampleJob;

/// Delay before re-sending a heartbeat that failed.
const HEARTBEAT_RETRY: Duration = Duration::from_secs(5);
/// Shortest poll interval honoured, whatever the server or a push says.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);
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

/// Push channel status.
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
    /// The api base URL (`VF_URL`): where an SSE push channel may connect.
    server: Url,
    /// Where the push channel was last pointed.
    push_target: Option<PushTarget>,
    push: PushStatus,
    pipelines: BTreeMap<String, Pipeline>,
    samples: HashMap<String, SampleJob>,
    /// Live taps running (their `requestId`s).
    live_taps: HashSet<String>,
    handled_action: Option<PendingAction>,
    update_in_progress: bool,
    /// Reported in heartbeats until one carrying it is accepted (the api keeps it).
    update_error: Option<UpdateFailure>,
    /// The heartbeat in flight carries `update_error`.
    update_error_in_flight: bool,
    heartbeat_due: Option<Instant>,
    heartbeat_in_flight: bool,
}

impl State {
    /// A fresh state at `now` for the api at `server`: the first poll is due immediately.
    ///
    /// `previous_update` is the self-update this process was re-executed for, if any: it
    /// counts as handled (so it is not downloaded again), and its error, if the replaced
    /// binary turned out wrong, is reported.
    pub fn new(
        tuning: Tuning,
        identity: Identity,
        server: Url,
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
            server,
            push_target: None,
            push: PushStatus::Idle,
            pipelines: BTreeMap::new(),
            samples: HashMap::new(),
            live_taps: HashSet::new(),
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

    /// The last self-update failure.
    pub fn update_error(&self) -> Option<UpdateFailure> {
        self.update_error
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
                    // Retry, so a state change is not left unreported until the next poll.
                    let retry = now + HEARTBEAT_RETRY;
                    self.heartbeat_due = Some(self.heartbeat_due.map_or(retry, |d| d.min(retry)));
                }
            }
            Event::Push(push) => self.on_push(push, now, &mut out),
            Event::Spawned {
                pipeline_id,
                generation,
                result,
            } => self.on_spawned(&pipeline_id, generation, result, now, &mut out),
            Event::Exited {
                pipeline_id,
                generation,
                status,
            } => self.on_exited(&pipeline_id, generation, status, now, &mut out),
            Event::TapDone {
                request_id,
                results,
            } => {
                self.samples.insert(
                    request_id.clone(),
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
            Event::SamplesPosted { request_id, ok } => self.on_samples_posted(&request_id, ok, now),
            Event::LiveTapEnded { request_id } => {
                self.live_taps.remove(&request_id);
            }
            Event::UpdateFinished(result) => {
                self.update_in_progress = false;
                match result {
                    Ok(()) => {
                        if let Some(action) = self.handled_action.clone() {
                            out.push(Command::ReExec(action));
                        }
                    }
                    // The update task logged the detail; the class is what is reported.
                    Err(failure) => {
                        self.update_error = Some(failure);
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
        self.restart_due_pipelines(now, out);
        self.retry_due_samples(now, out);
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

        let target = PushTarget::from_config(&config, &self.server);
        if self.push_target.as_ref() != Some(&target) && self.push != PushStatus::Revoked {
            self.push_target = Some(target.clone());
            out.push(Command::ConnectPush(target));
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
                tracing::error!("the push channel was refused because this node was revoked (or its token is invalid); push stopped");
                self.push = PushStatus::Revoked;
                self.changed(now);
            }
            PushEvent::Message(message) => match message {
                PushMessage::ConfigChanged { .. } => self.request_poll(now),
                PushMessage::Action {
                    action,
                    pipeline_id,
                    ..
                } => {
                    // A VectorFlow server that pushes over SSE hands out a pipeline restart
                    // only as this push (never in `pendingAction`); its stream is the api
                    // itself (same origin, node token), so it is acted on. Over the
                    // WebSocket a restart is a hint: the poll carries the authoritative one.
                    let over_sse = matches!(self.push_target, Some(PushTarget::Sse { .. }));
                    if let (ActionKind::Restart, Some(id), true) = (action, &pipeline_id, over_sse)
                    {
                        self.restart_pipelines(Some(id), now, out);
                    }
                    self.request_poll(now)
                }
                PushMessage::TapStart {
                    request_id,
                    pipeline_id,
                    component_id,
                } => self.on_tap_start(
                    LiveTap {
                        request_id,
                        pipeline_id,
                        component_id,
                    },
                    out,
                ),
                PushMessage::TapStop { request_id } => self.on_tap_stop(request_id, out),
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
}

#[cfg(test)]
mod tests;
