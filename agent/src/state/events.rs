//! What the main loop learns ([`Event`]) and what it must do ([`Command`]).

use crate::live_tap::LiveTap;
use crate::push::PushTarget;
use flotilla_shared::frames::PushMessage;
use flotilla_shared::protocol::{
    ConfigResponse, Heartbeat, PendingAction, SampleRequestConfig, SampleResult,
};

/// Something the main loop learned.
#[derive(Debug, Clone)]
pub enum Event {
    /// A deadline from [`State::next_deadline`](super::State::next_deadline) passed (or just: check timers).
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
        pipeline_id: String,
        /// Which start of it.
        generation: u64,
        /// Pid or why it failed.
        result: Result<u32, String>,
    },
    /// A pipeline process exited.
    Exited {
        /// Pipeline.
        pipeline_id: String,
        /// Which start of it.
        generation: u64,
        /// Exit status, for the log and the heartbeat.
        status: String,
    },
    /// `vector tap` finished for every component of a sample request.
    TapDone {
        /// The request.
        request_id: String,
        /// One result per component.
        results: Vec<SampleResult>,
    },
    /// Posting sample results finished.
    SamplesPosted {
        /// The request.
        request_id: String,
        /// Whether the api accepted them.
        ok: bool,
    },
    /// A self-update download finished: the binary was replaced, or why not.
    UpdateFinished(Result<(), crate::update::UpdateFailure>),
    /// A live tap ended (its end was posted).
    LiveTapEnded {
        /// The tap.
        request_id: String,
    },
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
    /// (Re)point the push task at this target, starting it if needed.
    ConnectPush(PushTarget),
    /// Write the pipeline's config and start `vector`, answered by [`Event::Spawned`].
    Start {
        /// Pipeline.
        pipeline_id: String,
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
        pipeline_id: String,
        /// Which start of it.
        generation: u64,
    },
    /// Delete the pipeline's config file.
    RemoveConfig {
        /// Pipeline.
        pipeline_id: String,
    },
    /// Run `vector tap` for each component, answered by [`Event::TapDone`].
    Tap(SampleRequestConfig),
    /// `POST /api/agent/samples`, answered by [`Event::SamplesPosted`].
    PostSamples {
        /// The request.
        request_id: String,
        /// Its results.
        results: Vec<SampleResult>,
    },
    /// Download, verify and replace the binary, answered by [`Event::UpdateFinished`].
    SelfUpdate(PendingAction),
    /// Stop everything and execute the replaced binary.
    ReExec(PendingAction),
    /// Run a live tap until stopped or timed out, answered by [`Event::LiveTapEnded`].
    StartLiveTap(LiveTap),
    /// Stop a live tap (it posts its end and reports [`Event::LiveTapEnded`]).
    StopLiveTap {
        /// The tap.
        request_id: String,
    },
    /// Post the end of a live tap that was not started.
    RefuseLiveTap {
        /// The tap.
        tap: LiveTap,
        /// Why.
        reason: String,
    },
}
