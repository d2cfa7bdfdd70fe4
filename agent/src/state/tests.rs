//! The main loop's state machine, driven with explicit instants.

use super::*;
use crate::live_tap::LiveTap;
use crate::update::UpdateFailure;
use flotilla_shared::frames::{ActionKind, ConfigChangeReason, PushFrame};

fn server() -> Url {
    Url::parse("https://vf.example:8443/base").unwrap()
}

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

fn tuning() -> Tuning {
    Tuning {
        heartbeat_debounce: S,
        crash_backoff_base: S,
        crash_backoff_max: 8 * S,
        sample_retry: 5 * S,
        ..Tuning::default()
    }
}

struct Harness {
    state: State,
    t0: Instant,
    /// Answer every heartbeat at once (the in-flight rule has its own test).
    auto_ack: bool,
}

impl Harness {
    fn new() -> Self {
        let t0 = Instant::now();
        let identity = Identity {
            agent_version: "1.0.0".into(),
            ..Identity::default()
        };
        Self {
            state: State::new(tuning(), identity, server(), 15 * S, None, t0),
            t0,
            auto_ack: true,
        }
    }

    fn at(&self, d: Duration) -> Instant {
        self.t0 + d
    }

    fn send(&mut self, event: Event, at: Duration) -> Vec<Command> {
        let mut out = self.state.handle(event, self.t0 + at);
        if self.auto_ack && heartbeat(&out).is_some() {
            out.extend(
                self.state
                    .handle(Event::HeartbeatDone { ok: true }, self.t0 + at),
            );
        }
        out
    }

    fn push(&mut self, message: PushMessage, at: Duration) -> Vec<Command> {
        self.send(Event::Push(PushEvent::Message(message)), at)
    }

    /// Starts with the first poll answered by `config`.
    fn polled(config: ConfigResponse) -> (Self, Vec<Command>) {
        let mut h = Self::new();
        let first = h.send(Event::Tick, Duration::ZERO);
        assert!(matches!(first.as_slice(), [Command::Poll]), "{first:?}");
        let out = h.send(Event::PollDone(Ok(Box::new(config))), 10 * MS);
        (h, out)
    }
}

fn pipeline(id: &str, checksum: &str) -> PipelineConfig {
    PipelineConfig {
        pipeline_id: id.into(),
        pipeline_name: "p".into(),
        version: 1,
        config_yaml: format!("# {checksum}"),
        checksum: checksum.into(),
        log_level: None,
        secrets: None,
        cert_files: None,
    }
}

fn config(pipelines: Vec<PipelineConfig>) -> ConfigResponse {
    ConfigResponse {
        push_url: None,
        pipelines,
        poll_interval_ms: 15_000,
        websocket_url: Some("ws://gw/api/agent/ws".into()),
        secret_backend: "BUILTIN".into(),
        sample_requests: None,
        pending_action: None,
    }
}

fn polls(out: &[Command]) -> usize {
    out.iter().filter(|c| matches!(c, Command::Poll)).count()
}

fn starts(out: &[Command]) -> Vec<(&str, u64)> {
    out.iter()
        .filter_map(|c| match c {
            Command::Start {
                pipeline_id,
                generation,
                ..
            } => Some((pipeline_id.as_str(), *generation)),
            _ => None,
        })
        .collect()
}

fn stops(out: &[Command]) -> Vec<(&str, u64)> {
    out.iter()
        .filter_map(|c| match c {
            Command::Stop {
                pipeline_id,
                generation,
            } => Some((pipeline_id.as_str(), *generation)),
            _ => None,
        })
        .collect()
}

fn heartbeat(out: &[Command]) -> Option<&Heartbeat> {
    out.iter().find_map(|c| match c {
        Command::Heartbeat(h) => Some(h.as_ref()),
        _ => None,
    })
}

#[test]
fn first_poll_starts_push_pipelines_and_heartbeats() {
    let id = "clx9k2v0b0000abcd";
    let (h, out) = Harness::polled(config(vec![pipeline(id, "a")]));
    assert!(out
        .iter()
        .any(|c| matches!(c, Command::ConnectPush(PushTarget::WebSocket(u)) if u == "ws://gw/api/agent/ws")));
    assert_eq!(starts(&out), [(id, 1)]);
    let hb = heartbeat(&out).expect("heartbeat after every poll");
    assert_eq!(hb.pipelines[0].status, PipelineState::Starting);
    assert_eq!(hb.agent_version.as_deref(), Some("1.0.0"));
    assert_eq!(h.state.next_poll(), h.at(10 * MS + 15 * S));
}

#[test]
fn a_failed_first_poll_retries_soon_and_push_starts_with_the_first_success() {
    let mut h = Harness::new();
    h.send(Event::Tick, Duration::ZERO);
    let out = h.send(
        Event::PollDone(Err(PollError::Other("connection refused".into()))),
        5 * MS,
    );
    assert!(out.is_empty(), "{out:?}");
    let retry = h.state.next_deadline().unwrap();
    assert!(
        retry <= h.at(5 * MS + 2 * S),
        "a failed poll is retried with a short backoff"
    );
    let out = h.send(Event::Tick, retry - h.t0);
    assert_eq!(polls(&out), 1);
    let out = h.send(
        Event::PollDone(Ok(Box::new(config(vec![])))),
        retry - h.t0 + 5 * MS,
    );
    assert!(out.iter().any(|c| matches!(c, Command::ConnectPush(_))));
    // The same URL again does not reconnect; a new one does.
    let out = h.send(Event::Tick, 20 * S);
    assert_eq!(polls(&out), 1);
    let out = h.send(Event::PollDone(Ok(Box::new(config(vec![])))), 20 * S);
    assert!(!out.iter().any(|c| matches!(c, Command::ConnectPush(_))));
    h.send(Event::Tick, 40 * S);
    let mut moved = config(vec![]);
    moved.websocket_url = Some("ws://elsewhere/ws".into());
    let out = h.send(Event::PollDone(Ok(Box::new(moved))), 40 * S);
    assert!(out.iter().any(
        |c| matches!(c, Command::ConnectPush(PushTarget::WebSocket(u)) if u == "ws://elsewhere/ws")
    ));
}

#[test]
fn pushes_and_reconnects_poll_now_and_coalesce_with_an_in_flight_poll() {
    let (mut h, _) = Harness::polled(config(vec![]));
    let out = h.send(Event::Push(PushEvent::Connected), S);
    assert_eq!(polls(&out), 1, "re-poll on every (re)connect");
    // A push while that poll is in flight: one more poll right after it.
    let out = h.push(
        PushMessage::ConfigChanged {
            pipeline_id: None,
            reason: ConfigChangeReason::Deploy,
        },
        S + MS,
    );
    assert_eq!(polls(&out), 0);
    let out = h.push(
        PushMessage::ConfigChanged {
            pipeline_id: None,
            reason: ConfigChangeReason::Delete,
        },
        S + 2 * MS,
    );
    assert_eq!(polls(&out), 0);
    let out = h.send(Event::PollDone(Ok(Box::new(config(vec![])))), S + 3 * MS);
    assert_eq!(
        polls(&out),
        1,
        "the queued pushes cause exactly one more poll"
    );
    let out = h.send(Event::PollDone(Ok(Box::new(config(vec![])))), S + 4 * MS);
    assert_eq!(polls(&out), 0);
    // An action push polls too; unknown pushes do nothing.
    let out = h.push(
        PushMessage::Action {
            action: ActionKind::Restart,
            target_version: None,
            download_url: None,
            checksum: None,
            signature: None,
            pipeline_id: None,
        },
        2 * S,
    );
    assert_eq!(polls(&out), 1);
    h.send(Event::PollDone(Ok(Box::new(config(vec![])))), 2 * S);
    let out = h.push(PushMessage::Unknown, 3 * S);
    assert!(out.is_empty());
}

#[test]
fn poll_interval_push_changes_the_period_and_an_older_poll_does_not_undo_it() {
    let (mut h, _) = Harness::polled(config(vec![]));
    // A poll is in flight when the push arrives; its (older) answer keeps the pushed interval.
    h.send(Event::Push(PushEvent::Connected), S);
    h.push(PushMessage::PollInterval { interval_ms: 2000 }, S + MS);
    assert_eq!(h.state.poll_interval(), 2 * S);
    h.send(Event::PollDone(Ok(Box::new(config(vec![])))), S + 2 * MS);
    assert_eq!(
        h.state.poll_interval(),
        2 * S,
        "a poll started before the push does not undo it"
    );
    assert_eq!(h.state.next_poll(), h.at(S + 2 * MS + 2 * S));
    // Polls started after the push are the authority again.
    let out = h.send(Event::Tick, S + 2 * MS + 2 * S);
    assert_eq!(polls(&out), 1);
    let mut c = config(vec![]);
    c.poll_interval_ms = 2000;
    h.send(Event::PollDone(Ok(Box::new(c))), 4 * S);
    assert_eq!(h.state.poll_interval(), 2 * S);
    // Idle push: reschedules the next poll from now.
    h.push(PushMessage::PollInterval { interval_ms: 500 }, 5 * S);
    assert_eq!(h.state.next_poll(), h.at(5 * S + 500 * MS));
    // Nonsense intervals are clamped.
    h.push(PushMessage::PollInterval { interval_ms: 0 }, 5 * S);
    assert_eq!(h.state.poll_interval(), MIN_POLL_INTERVAL);
}

#[test]
fn checksum_change_restarts_after_the_old_process_exits() {
    let id = "clx9k2v0b0000abcd";
    let (mut h, _) = Harness::polled(config(vec![pipeline(id, "a")]));
    h.send(
        Event::Spawned {
            pipeline_id: id.into(),
            generation: 1,
            result: Ok(42),
        },
        20 * MS,
    );
    let hb = h.state.heartbeat(h.at(3 * S));
    assert_eq!(hb.pipelines[0].status, PipelineState::Running);
    assert_eq!(hb.pipelines[0].pid, Some(42));
    assert_eq!(hb.pipelines[0].uptime_seconds, Some(2));
    assert_eq!(hb.pipelines[0].config_checksum.as_deref(), Some("a"));

    // Same checksum: nothing happens.
    h.send(Event::Push(PushEvent::Connected), 4 * S);
    let out = h.send(
        Event::PollDone(Ok(Box::new(config(vec![pipeline(id, "a")])))),
        4 * S,
    );
    assert!(starts(&out).is_empty() && stops(&out).is_empty(), "{out:?}");

    h.send(Event::Push(PushEvent::Connected), 5 * S);
    let out = h.send(
        Event::PollDone(Ok(Box::new(config(vec![pipeline(id, "b")])))),
        5 * S,
    );
    assert_eq!(stops(&out), [(id, 1)]);
    assert!(starts(&out).is_empty(), "waits for the old process to exit");
    let out = h.send(
        Event::Exited {
            pipeline_id: id.into(),
            generation: 1,
            status: "signal: 15".into(),
        },
        5 * S + MS,
    );
    assert_eq!(starts(&out), [(id, 2)]);
    let out = h.send(
        Event::Spawned {
            pipeline_id: id.into(),
            generation: 2,
            result: Ok(43),
        },
        5 * S + 2 * MS,
    );
    assert!(stops(&out).is_empty());
    // A late exit of an old generation is ignored.
    let out = h.send(
        Event::Exited {
            pipeline_id: id.into(),
            generation: 1,
            status: "x".into(),
        },
        6 * S,
    );
    assert!(starts(&out).is_empty());
    assert_eq!(h.state.heartbeat(h.at(6 * S)).pipelines[0].pid, Some(43));
}

#[test]
fn removed_pipelines_are_stopped_and_their_files_deleted() {
    let id = "clx9k2v0b0000abcd";
    let (mut h, _) = Harness::polled(config(vec![pipeline(id, "a")]));
    h.send(
        Event::Spawned {
            pipeline_id: id.into(),
            generation: 1,
            result: Ok(42),
        },
        20 * MS,
    );
    h.send(Event::Push(PushEvent::Connected), S);
    let out = h.send(Event::PollDone(Ok(Box::new(config(vec![])))), S);
    assert_eq!(stops(&out), [(id, 1)]);
    assert!(out
        .iter()
        .any(|c| matches!(c, Command::RemoveConfig { pipeline_id } if *pipeline_id == id)));
    assert!(h.state.heartbeat(h.at(S)).pipelines.is_empty());
    let out = h.send(
        Event::Exited {
            pipeline_id: id.into(),
            generation: 1,
            status: "signal: 15".into(),
        },
        2 * S,
    );
    assert!(starts(&out).is_empty());
    assert!(h.state.heartbeat(h.at(2 * S)).pipelines.is_empty());
}

#[test]
fn crashes_restart_with_growing_backoff_and_are_reported() {
    let id = "clx9k2v0b0000abcd";
    let (mut h, _) = Harness::polled(config(vec![pipeline(id, "a")]));
    h.send(
        Event::Spawned {
            pipeline_id: id.into(),
            generation: 1,
            result: Ok(42),
        },
        Duration::ZERO,
    );
    let out = h.send(
        Event::Exited {
            pipeline_id: id.into(),
            generation: 1,
            status: "exit status: 78".into(),
        },
        2 * S,
    );
    assert!(starts(&out).is_empty());
    let hb = h.state.heartbeat(h.at(2 * S));
    assert_eq!(hb.pipelines[0].status, PipelineState::Crashed);
    assert!(hb.pipelines[0]
        .recent_logs
        .as_ref()
        .unwrap()
        .to_string()
        .contains("78"));
    assert_eq!(
        h.state.next_deadline(),
        Some(h.at(3 * S)),
        "first restart after 1 s"
    );
    assert!(starts(&h.send(Event::Tick, 2 * S + 900 * MS)).is_empty());
    let out = h.send(Event::Tick, 3 * S);
    assert_eq!(starts(&out), [(id, 2)]);
    h.send(
        Event::Spawned {
            pipeline_id: id.into(),
            generation: 2,
            result: Ok(43),
        },
        3 * S,
    );
    h.send(
        Event::Exited {
            pipeline_id: id.into(),
            generation: 2,
            status: "exit status: 78".into(),
        },
        4 * S,
    );
    assert_eq!(
        h.state.next_deadline(),
        Some(h.at(6 * S)),
        "second restart after 2 s"
    );
}

#[test]
fn a_missing_vector_binary_is_a_crashed_pipeline_with_the_reason() {
    let id = "clx9k2v0b0000abcd";
    let (mut h, _) = Harness::polled(config(vec![pipeline(id, "a")]));
    let reason = "cannot start /usr/bin/vector: No such file or directory (os error 2)";
    h.send(
        Event::Spawned {
            pipeline_id: id.into(),
            generation: 1,
            result: Err(reason.into()),
        },
        20 * MS,
    );
    let out = h.send(Event::Tick, 20 * MS + S);
    let hb = heartbeat(&out).expect("debounced heartbeat after the state change");
    assert_eq!(hb.pipelines[0].status, PipelineState::Crashed);
    assert_eq!(
        hb.pipelines[0].recent_logs,
        Some(serde_json::json!([reason]))
    );
    assert_eq!(starts(&out), [(id, 2)], "retried after the backoff");
}

#[test]
fn heartbeats_are_debounced_and_never_overlap() {
    let id = "clx9k2v0b0000abcd";
    let mut h = Harness::new();
    h.auto_ack = false;
    h.send(Event::Tick, Duration::ZERO);
    let out = h.send(
        Event::PollDone(Ok(Box::new(config(vec![pipeline(id, "a")])))),
        10 * MS,
    );
    assert!(heartbeat(&out).is_some());
    // A state change while that heartbeat is in flight.
    let out = h.send(
        Event::Spawned {
            pipeline_id: id.into(),
            generation: 1,
            result: Ok(42),
        },
        100 * MS,
    );
    assert!(heartbeat(&out).is_none());
    let out = h.send(Event::Tick, 100 * MS + S);
    assert!(
        heartbeat(&out).is_none(),
        "the previous heartbeat is still in flight"
    );
    let out = h.send(Event::HeartbeatDone { ok: true }, 1200 * MS);
    let hb = heartbeat(&out).expect("the change is reported once the previous heartbeat finished");
    assert_eq!(hb.pipelines[0].status, PipelineState::Running);
    h.send(Event::HeartbeatDone { ok: true }, 1300 * MS);
    // Two changes within the debounce window give one heartbeat.
    h.send(
        Event::Exited {
            pipeline_id: id.into(),
            generation: 1,
            status: "x".into(),
        },
        2 * S,
    );
    let out = h.send(Event::Tick, 2 * S + 500 * MS);
    assert!(heartbeat(&out).is_none());
    let out = h.send(Event::Tick, 3 * S);
    assert!(heartbeat(&out).is_some());
}

#[test]
fn sample_requests_are_tapped_once_and_failed_posts_retried() {
    let id = "clx9k2v0b0000abcd";
    let (mut h, _) = Harness::polled(config(vec![pipeline(id, "a")]));
    let request_id = "clxreq00000001";
    let push = PushMessage::SampleRequest {
        request_id: request_id.into(),
        pipeline_id: id.into(),
        component_keys: vec!["in".into()],
        limit: 3,
    };
    let out = h.push(push.clone(), S);
    assert!(
        matches!(out.as_slice(), [Command::Tap(r)] if r.request_id == request_id && r.limit == 3)
    );
    assert!(h.push(push, S).is_empty(), "duplicate push");
    let mut c = config(vec![pipeline(id, "a")]);
    c.sample_requests = Some(vec![SampleRequestConfig {
        request_id: request_id.into(),
        pipeline_id: id.into(),
        component_keys: vec!["in".into()],
        limit: 3,
    }]);
    h.send(Event::Push(PushEvent::Connected), S);
    let out = h.send(Event::PollDone(Ok(Box::new(c.clone()))), S);
    assert!(
        !out.iter().any(|c| matches!(c, Command::Tap(_))),
        "duplicate from the poll"
    );

    let result = SampleResult {
        request_id: request_id.into(),
        component_key: "in".into(),
        events: Some(vec![serde_json::json!({"a":1})]),
        schema: None,
        error: None,
    };
    let out = h.send(
        Event::TapDone {
            request_id: request_id.into(),
            results: vec![result.clone()],
        },
        2 * S,
    );
    assert!(
        matches!(out.as_slice(), [Command::PostSamples { results, .. }] if results == &vec![result.clone()])
    );
    let out = h.send(
        Event::SamplesPosted {
            request_id: request_id.into(),
            ok: false,
        },
        2 * S,
    );
    assert!(out.is_empty());
    let out = h.send(Event::Tick, 7 * S);
    assert!(
        matches!(out.as_slice(), [Command::PostSamples { results, .. }] if results == &vec![result.clone()])
    );
    h.send(
        Event::SamplesPosted {
            request_id: request_id.into(),
            ok: true,
        },
        7 * S,
    );
    h.send(Event::Push(PushEvent::Connected), 8 * S);
    let out = h.send(Event::PollDone(Ok(Box::new(c))), 8 * S);
    assert!(!out
        .iter()
        .any(|c| matches!(c, Command::Tap(_) | Command::PostSamples { .. })));
}

#[test]
fn sample_requests_for_unknown_pipelines_get_error_results() {
    let (mut h, _) = Harness::polled(config(vec![]));
    let request_id = "clxreq00000001";
    let out = h.push(
        PushMessage::SampleRequest {
            request_id: request_id.into(),
            pipeline_id: "clxnotdeployed".into(),
            component_keys: vec!["a".into(), "b".into()],
            limit: 1,
        },
        S,
    );
    match out.as_slice() {
        [Command::PostSamples { results, .. }] => {
            assert_eq!(results.len(), 2);
            assert!(results.iter().all(|r| r
                .error
                .as_deref()
                .is_some_and(|e| e.contains("not deployed"))));
        }
        other => panic!("{other:?}"),
    }
}

fn action(kind: &str, checksum: &str) -> PendingAction {
    PendingAction {
        kind: kind.into(),
        target_version: Some("2.0.0".into()),
        download_url: Some("https://dl/agent".into()),
        checksum: Some(checksum.into()),
        signature: None,
        pipeline_id: None,
    }
}

#[test]
fn restart_action_restarts_every_pipeline_once() {
    let (a, b) = ("clxpipea000001", "clxpipeb000001");
    let (mut h, _) = Harness::polled(config(vec![pipeline(a, "a"), pipeline(b, "b")]));
    h.send(
        Event::Spawned {
            pipeline_id: a.into(),
            generation: 1,
            result: Ok(1),
        },
        20 * MS,
    );
    h.send(
        Event::Spawned {
            pipeline_id: b.into(),
            generation: 1,
            result: Ok(2),
        },
        20 * MS,
    );
    let mut c = config(vec![pipeline(a, "a"), pipeline(b, "b")]);
    c.pending_action = Some(PendingAction {
        kind: "restart".into(),
        target_version: None,
        download_url: None,
        checksum: None,
        signature: None,
        pipeline_id: None,
    });
    h.send(Event::Push(PushEvent::Connected), S);
    let out = h.send(Event::PollDone(Ok(Box::new(c.clone()))), S);
    assert_eq!(stops(&out).len(), 2);
    let out = h.send(
        Event::Exited {
            pipeline_id: a.into(),
            generation: 1,
            status: "signal: 15".into(),
        },
        S,
    );
    assert_eq!(starts(&out), [(a, 2)]);
    // The api hands each restart out once, so a restart in a later poll is a new one.
    h.send(
        Event::Spawned {
            pipeline_id: a.into(),
            generation: 2,
            result: Ok(3),
        },
        S,
    );
    h.send(Event::Push(PushEvent::Connected), 2 * S);
    let out = h.send(Event::PollDone(Ok(Box::new(c))), 2 * S);
    assert_eq!(
        stops(&out),
        [(a, 2)],
        "b is still stopping and restarts after its exit"
    );
}

#[test]
fn self_update_downloads_once_reexecs_on_success_and_reports_failures() {
    let (mut h, _) = Harness::polled(config(vec![]));
    let mut c = config(vec![]);
    c.pending_action = Some(action("self_update", "abc"));
    h.send(Event::Push(PushEvent::Connected), S);
    let out = h.send(Event::PollDone(Ok(Box::new(c.clone()))), S);
    assert!(
        matches!(out.as_slice(), [Command::SelfUpdate(a), Command::Heartbeat(_)] if a.checksum.as_deref() == Some("abc")),
        "{out:?}"
    );
    // Failure: reported, not retried for the same action.
    let out = h.send(
        Event::UpdateFinished(Err(UpdateFailure::ChecksumMismatch)),
        2 * S,
    );
    assert!(out.is_empty());
    assert_eq!(
        h.state.update_error(),
        Some(UpdateFailure::ChecksumMismatch)
    );
    // Reported until a heartbeat carrying it is accepted (the api keeps it from then on).
    h.auto_ack = false;
    let out = h.send(Event::Tick, 3 * S);
    let reported = |out: &[Command]| heartbeat(out).unwrap().update_error.clone();
    assert_eq!(reported(&out).as_deref(), Some("checksum_mismatch"));
    h.send(Event::HeartbeatDone { ok: false }, 3 * S);
    assert_eq!(
        h.state.update_error(),
        Some(UpdateFailure::ChecksumMismatch)
    );
    h.send(Event::Push(PushEvent::Connected), 3 * S);
    let out = h.send(Event::PollDone(Ok(Box::new(c.clone()))), 3 * S);
    assert!(
        !out.iter().any(|c| matches!(c, Command::SelfUpdate(_))),
        "not retried"
    );
    assert_eq!(reported(&out).as_deref(), Some("checksum_mismatch"));
    h.send(Event::HeartbeatDone { ok: true }, 3 * S);
    assert_eq!(h.state.update_error(), None);
    h.auto_ack = true;
    h.send(Event::Push(PushEvent::Connected), 4 * S);
    let out = h.send(Event::PollDone(Ok(Box::new(c))), 4 * S);
    assert!(!out.iter().any(|c| matches!(c, Command::SelfUpdate(_))));
    // A corrected action is tried; success re-executes.
    let mut c = config(vec![]);
    c.pending_action = Some(action("self_update", "def"));
    h.send(Event::Push(PushEvent::Connected), 5 * S);
    let out = h.send(Event::PollDone(Ok(Box::new(c))), 5 * S);
    assert!(out.iter().any(|c| matches!(c, Command::SelfUpdate(_))));
    let out = h.send(Event::UpdateFinished(Ok(())), 6 * S);
    assert!(matches!(out.as_slice(), [Command::ReExec(a)] if a.checksum.as_deref() == Some("def")));
}

#[test]
fn a_self_update_without_url_or_checksum_reports_its_class() {
    let (mut h, _) = Harness::polled(config(vec![]));
    let mut c = config(vec![]);
    c.pending_action = Some(PendingAction {
        download_url: None,
        ..action("self_update", "abc")
    });
    h.auto_ack = false;
    h.send(Event::Push(PushEvent::Connected), S);
    let out = h.send(Event::PollDone(Ok(Box::new(c))), S);
    assert!(!out.iter().any(|c| matches!(c, Command::SelfUpdate(_))));
    assert_eq!(h.state.update_error(), Some(UpdateFailure::InvalidAction));
    assert_eq!(
        heartbeat(&out).unwrap().update_error.as_deref(),
        Some("invalid_action")
    );
}

#[test]
fn a_reexecuted_agent_does_not_repeat_its_update() {
    let t0 = Instant::now();
    let identity = Identity {
        agent_version: "1.0.0".into(),
        ..Identity::default()
    };
    let previous = PreviousUpdate {
        action: action("self_update", "abc"),
        error: Some(UpdateFailure::InstallFailed),
    };
    let mut state = State::new(tuning(), identity, server(), 15 * S, Some(previous), t0);
    assert_eq!(state.update_error(), Some(UpdateFailure::InstallFailed));
    state.handle(Event::Tick, t0);
    let mut c = config(vec![]);
    c.pending_action = Some(action("self_update", "abc"));
    let out = state.handle(Event::PollDone(Ok(Box::new(c))), t0);
    assert!(!out.iter().any(|c| matches!(c, Command::SelfUpdate(_))));
    // Already at the target version: nothing to do.
    let identity = Identity {
        agent_version: "2.0.0".into(),
        ..Identity::default()
    };
    let mut state = State::new(tuning(), identity, server(), 15 * S, None, t0);
    state.handle(Event::Tick, t0);
    let mut c = config(vec![]);
    c.pending_action = Some(action("self_update", "abc"));
    let out = state.handle(Event::PollDone(Ok(Box::new(c))), t0);
    assert!(!out.iter().any(|c| matches!(c, Command::SelfUpdate(_))));
}

#[test]
fn revocation_is_reported_and_stops_push_reconnects() {
    let (mut h, _) = Harness::polled(config(vec![]));
    h.send(Event::Push(PushEvent::Revoked), S);
    assert_eq!(h.state.push_status(), PushStatus::Revoked);
    let out = h.send(Event::Tick, 2 * S);
    // Never `agentHealth`: a Flotilla api would then send restarts only as pushes.
    assert_eq!(heartbeat(&out).unwrap().agent_health, None);
    let mut moved = config(vec![]);
    moved.websocket_url = Some("ws://elsewhere/ws".into());
    h.send(Event::Tick, 20 * S);
    let out = h.send(Event::PollDone(Ok(Box::new(moved))), 20 * S);
    assert!(!out.iter().any(|c| matches!(c, Command::ConnectPush(_))));
}

/// Every frame in DESIGN.md, as the agent receives it, maps to the event the loop expects.
#[test]
fn every_design_frame_parses_into_a_push_message() {
    let p = "clxpipe0000001";
    let r = "clxreq00000002";
    let cases = [
        format!(r#"{{"type":"config_changed","pipelineId":"{p}","reason":"deploy","id":"1","sentAt":1}}"#),
        r#"{"type":"config_changed","reason":"undeploy","id":"2","sentAt":1}"#.to_string(),
        r#"{"type":"config_changed","reason":"rollback","id":"2","sentAt":1}"#.to_string(),
        r#"{"type":"config_changed","reason":"delete","id":"2","sentAt":1}"#.to_string(),
        r#"{"type":"config_changed","reason":"maintenance_on","id":"2","sentAt":1}"#.to_string(),
        r#"{"type":"config_changed","reason":"maintenance_off","id":"2","sentAt":1}"#.to_string(),
        r#"{"type":"config_changed","reason":"labels","id":"2","sentAt":1}"#.to_string(),
        format!(r#"{{"type":"sample_request","requestId":"{r}","pipelineId":"{p}","componentKeys":["in","out"],"limit":5,"id":"3","sentAt":1}}"#),
        r#"{"type":"action","action":"self_update","targetVersion":"2.0.0","downloadUrl":"http://d/a","checksum":"ab","id":"4","sentAt":1}"#.to_string(),
        r#"{"type":"action","action":"restart","id":"5","sentAt":1}"#.to_string(),
        r#"{"type":"poll_interval","intervalMs":5000,"id":"6","sentAt":1}"#.to_string(),
        r#"{"type":"something_new","whatever":[1,2],"id":"7","sentAt":1}"#.to_string(),
        r#"{"type":"config_changed","reason":"deploy","futureField":{"x":1}}"#.to_string(),
    ];
    let mut polls_seen = 0;
    let mut taps = 0;
    for text in &cases {
        let frame = PushFrame::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let (mut h, _) = Harness::polled(config(vec![pipeline(p, "a")]));
        let out = h.push(frame.message.clone(), S);
        polls_seen += polls(&out);
        taps += out
            .iter()
            .filter(|c| matches!(c, Command::Tap(r) if r.component_keys == ["in", "out"]))
            .count();
        match frame.message {
            PushMessage::PollInterval { interval_ms } => {
                assert_eq!(interval_ms, 5000);
                assert_eq!(h.state.poll_interval(), 5 * S);
            }
            PushMessage::Unknown => assert!(out.is_empty()),
            _ => {}
        }
    }
    assert_eq!(polls_seen, 10, "config_changed ×8 and action ×2 poll");
    assert_eq!(taps, 1);
}

#[test]
fn a_failed_heartbeat_is_retried() {
    let mut h = Harness::new();
    h.auto_ack = false;
    h.send(Event::Tick, Duration::ZERO);
    let out = h.send(
        Event::PollDone(Ok(Box::new(config(vec![])))),
        Duration::ZERO,
    );
    assert!(heartbeat(&out).is_some());
    assert!(h.send(Event::HeartbeatDone { ok: false }, S).is_empty());
    assert!(heartbeat(&h.send(Event::Tick, 5 * S)).is_none());
    assert!(heartbeat(&h.send(Event::Tick, 6 * S)).is_some());
}

#[test]
fn a_new_version_with_the_same_config_is_reported_without_a_restart() {
    let id = "clx9k2v0b0000abcd";
    let (mut h, _) = Harness::polled(config(vec![pipeline(id, "a")]));
    h.send(
        Event::Spawned {
            pipeline_id: id.into(),
            generation: 1,
            result: Ok(42),
        },
        20 * MS,
    );
    let mut v2 = pipeline(id, "a");
    v2.version = 2;
    h.send(Event::Push(PushEvent::Connected), S);
    let out = h.send(Event::PollDone(Ok(Box::new(config(vec![v2])))), S);
    assert!(stops(&out).is_empty() && starts(&out).is_empty(), "{out:?}");
    let hb = h.state.heartbeat(h.at(2 * S));
    assert_eq!(
        (hb.pipelines[0].version, hb.pipelines[0].pid),
        (2, Some(42))
    );
}

/// Both pipelines of `polled` running (generation 1, pids 1 and 2).
fn two_running(config: ConfigResponse) -> (Harness, &'static str, &'static str) {
    let (a, b) = ("clxpipea000001", "clxpipeb000001");
    let mut c = config;
    c.pipelines = vec![pipeline(a, "a"), pipeline(b, "b")];
    let (mut h, _) = Harness::polled(c);
    for (id, pid) in [(a, 1), (b, 2)] {
        h.send(
            Event::Spawned {
                pipeline_id: id.into(),
                generation: 1,
                result: Ok(pid),
            },
            20 * MS,
        );
    }
    (h, a, b)
}

fn restart_of(pipeline_id: Option<&str>) -> PendingAction {
    PendingAction {
        kind: "restart".into(),
        target_version: None,
        download_url: None,
        checksum: None,
        signature: None,
        pipeline_id: pipeline_id.map(Into::into),
    }
}

#[test]
fn a_restart_with_a_pipeline_id_restarts_only_that_pipeline() {
    let (mut h, a, b) = two_running(config(vec![]));
    let mut c = config(vec![pipeline(a, "a"), pipeline(b, "b")]);
    c.pending_action = Some(restart_of(Some(b)));
    h.send(Event::Push(PushEvent::Connected), S);
    let out = h.send(Event::PollDone(Ok(Box::new(c.clone()))), S);
    assert_eq!(stops(&out), [(b, 1)]);
    // One not deployed here: nothing.
    c.pending_action = Some(restart_of(Some("clxunknown")));
    h.send(Event::Push(PushEvent::Connected), 2 * S);
    let out = h.send(Event::PollDone(Ok(Box::new(c))), 2 * S);
    assert!(stops(&out).is_empty(), "{out:?}");
}

fn pushed_restart(pipeline_id: &str) -> PushMessage {
    PushMessage::Action {
        action: ActionKind::Restart,
        target_version: None,
        download_url: None,
        checksum: None,
        signature: None,
        pipeline_id: Some(pipeline_id.into()),
    }
}

#[test]
fn a_pushed_restart_is_a_hint_over_the_websocket_and_acted_on_over_sse() {
    let (mut h, _, b) = two_running(config(vec![]));
    let out = h.push(pushed_restart(b), S);
    assert!(stops(&out).is_empty(), "{out:?}");
    assert_eq!(polls(&out), 1, "a hint to poll");

    // A current VectorFlow server: no WebSocket; its stream is the api itself.
    let mut sse = config(vec![]);
    sse.websocket_url = None;
    let (mut h, _, b) = two_running(sse);
    let out = h.push(pushed_restart(b), S);
    assert_eq!(stops(&out), [(b, 1)]);
}

#[test]
fn without_a_websocket_url_the_push_channel_is_sse_on_the_agents_own_server() {
    let mut c = config(vec![]);
    c.websocket_url = None;
    c.push_url = Some("https://vf.example:8443/base/api/agent/push".into());
    let (_, out) = Harness::polled(c);
    let target = out.iter().find_map(|c| match c {
        Command::ConnectPush(t) => Some(t.clone()),
        _ => None,
    });
    assert_eq!(
        target,
        Some(PushTarget::Sse {
            url: "https://vf.example:8443/base/api/agent/push".into(),
            fallback: "https://vf.example:8443/base/api/agent/push".into(),
        })
    );
}

fn tap(request_id: &str, pipeline_id: &str) -> PushMessage {
    PushMessage::TapStart {
        request_id: request_id.into(),
        pipeline_id: pipeline_id.into(),
        component_id: "parse".into(),
    }
}

#[test]
fn live_taps_run_three_at_most_only_on_deployed_pipelines_and_stop_on_request() {
    let (mut h, a, _) = two_running(config(vec![]));
    let started = |out: &[Command]| {
        out.iter()
            .filter_map(|c| match c {
                Command::StartLiveTap(LiveTap { request_id, .. }) => Some(request_id.clone()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let refused = |out: &[Command]| {
        out.iter()
            .filter_map(|c| match c {
                Command::RefuseLiveTap { tap, reason } => {
                    Some((tap.request_id.clone(), reason.clone()))
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    for t in ["t1", "t2", "t3"] {
        assert_eq!(started(&h.push(tap(t, a), S)), [t]);
    }
    assert!(h.push(tap("t1", a), S).is_empty(), "a duplicate tap_start");
    let out = h.push(tap("t4", a), S);
    assert!(started(&out).is_empty());
    assert!(refused(&out)[0].1.contains("3 taps"), "{out:?}");
    let out = h.push(tap("t5", "clxnotdeployed"), S);
    assert!(refused(&out)[0].1.contains("not deployed"), "{out:?}");

    let out = h.push(
        PushMessage::TapStop {
            request_id: "t2".into(),
        },
        2 * S,
    );
    assert!(out
        .iter()
        .any(|c| matches!(c, Command::StopLiveTap { request_id } if request_id == "t2")));
    let out = h.push(
        PushMessage::TapStop {
            request_id: "nope".into(),
        },
        2 * S,
    );
    assert!(!out.iter().any(|c| matches!(c, Command::StopLiveTap { .. })));
    h.send(
        Event::LiveTapEnded {
            request_id: "t2".into(),
        },
        3 * S,
    );
    assert_eq!(h.state.live_taps(), 2);
    assert_eq!(started(&h.push(tap("t6", a), 3 * S)), ["t6"]);
}
