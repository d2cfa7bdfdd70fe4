//! When a connection pings, sends an unsolicited pong, or gives up on a silent agent.
//!
//! A WebSocket is pinged every `ping_interval_ms` and dropped when it sent nothing (any frame
//! counts, pongs included) for `pong_timeout_ms`. Legacy agents reset their read deadline only
//! on data and pong frames, so a pong goes out whenever no data or pong was sent for
//! `unsolicited_pong_interval_ms`. An SSE stream gets its keepalive comment (the "ping") every
//! `sse_keepalive_ms` and is never dropped for silence: its agent sends nothing. A session
//! keeps one timer, armed at [`Keepalive::deadline`].

use flotilla_shared::settings::GatewaySettings;
use std::time::Duration;
use tokio::time::Instant;

/// What is due now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Nothing heard for the pong timeout: close the socket.
    Timeout,
    /// Send a ping (an SSE stream: its keepalive comment).
    Ping,
    /// Send an unsolicited pong.
    Pong,
}

/// A connection's keepalive schedule.
#[derive(Debug)]
pub(crate) struct Keepalive {
    ping_every: Duration,
    /// `None`: silence never ends the connection.
    pong_timeout: Option<Duration>,
    /// `None`: no unsolicited pongs.
    pong_every: Option<Duration>,
    heard: Instant,
    next_ping: Instant,
    next_pong: Option<Instant>,
}

impl Keepalive {
    /// A WebSocket's schedule.
    pub(crate) fn websocket(settings: &GatewaySettings, now: Instant) -> Self {
        let ping_every = Duration::from_millis(settings.ping_interval_ms);
        let pong_every = Duration::from_millis(settings.unsolicited_pong_interval_ms);
        Self {
            ping_every,
            pong_timeout: Some(Duration::from_millis(settings.pong_timeout_ms)),
            pong_every: Some(pong_every),
            heard: now,
            next_ping: now + ping_every,
            next_pong: Some(now + pong_every),
        }
    }

    /// An SSE stream's schedule: a keepalive comment every `sse_keepalive_ms`, nothing else.
    pub(crate) fn sse(settings: &GatewaySettings, now: Instant) -> Self {
        let ping_every = Duration::from_millis(settings.sse_keepalive_ms);
        Self {
            ping_every,
            pong_timeout: None,
            pong_every: None,
            heard: now,
            next_ping: now + ping_every,
            next_pong: None,
        }
    }

    /// The agent sent a frame.
    pub(crate) fn heard(&mut self, now: Instant) {
        self.heard = now;
    }

    /// A data frame or pong went out: a legacy agent's deadline was reset.
    pub(crate) fn sent_data(&mut self, now: Instant) {
        self.next_pong = self.pong_every.map(|every| now + every);
    }

    /// The next thing due at `now`, advancing the schedule past it.
    pub(crate) fn due(&mut self, now: Instant) -> Option<Due> {
        if self.pong_timeout.is_some_and(|t| now >= self.heard + t) {
            Some(Due::Timeout)
        } else if now >= self.next_ping {
            self.next_ping = now + self.ping_every;
            Some(Due::Ping)
        } else if self.next_pong.is_some_and(|at| now >= at) {
            self.sent_data(now);
            Some(Due::Pong)
        } else {
            None
        }
    }

    /// When something is next due.
    pub(crate) fn deadline(&self) -> Instant {
        let timeout = self.pong_timeout.map(|t| self.heard + t);
        [timeout, self.next_pong]
            .into_iter()
            .flatten()
            .fold(self.next_ping, Instant::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GatewaySettings {
        let mut s = flotilla_shared::settings::Settings::load_from(None, Vec::new())
            .unwrap()
            .gateway;
        (
            s.ping_interval_ms,
            s.pong_timeout_ms,
            s.unsolicited_pong_interval_ms,
        ) = (30_000, 40_000, 20_000);
        s
    }

    #[test]
    fn an_answering_agent_is_pinged_and_ponged_but_never_dropped() {
        let t0 = Instant::now();
        let mut k = Keepalive::websocket(&settings(), t0);
        let s = Duration::from_secs;
        assert_eq!(k.deadline(), t0 + s(20));
        assert_eq!(k.due(t0 + s(19)), None);
        assert_eq!(k.due(t0 + s(20)), Some(Due::Pong));
        assert_eq!(k.due(t0 + s(20)), None);
        assert_eq!(k.deadline(), t0 + s(30));
        assert_eq!(k.due(t0 + s(30)), Some(Due::Ping));
        k.heard(t0 + s(30)); // the pong
        assert_eq!(k.due(t0 + s(40)), Some(Due::Pong));
        assert_eq!(k.due(t0 + s(60)), Some(Due::Ping));
        k.heard(t0 + s(60));
        assert_eq!(k.due(t0 + s(60)), Some(Due::Pong));
        assert_eq!(k.due(t0 + s(69)), None);
    }

    #[test]
    fn silence_for_the_pong_timeout_drops_the_socket() {
        let t0 = Instant::now();
        let mut k = Keepalive::websocket(&settings(), t0);
        let s = Duration::from_secs;
        assert_eq!(k.due(t0 + s(30)), Some(Due::Ping));
        assert_eq!(k.due(t0 + s(30)), Some(Due::Pong));
        assert_eq!(k.due(t0 + s(30)), None);
        assert_eq!(k.deadline(), t0 + s(40));
        assert_eq!(k.due(t0 + s(40)), Some(Due::Timeout));
    }

    #[test]
    fn data_postpones_the_unsolicited_pong() {
        let t0 = Instant::now();
        let mut k = Keepalive::websocket(&settings(), t0);
        let s = Duration::from_secs;
        k.sent_data(t0 + s(15));
        assert_eq!(k.due(t0 + s(20)), None);
        assert_eq!(k.deadline(), t0 + s(30));
    }

    #[test]
    fn an_sse_stream_gets_its_comment_on_schedule_and_is_never_dropped_for_silence() {
        let t0 = Instant::now();
        let mut s = settings();
        s.sse_keepalive_ms = 30_000;
        let mut k = Keepalive::sse(&s, t0);
        let secs = Duration::from_secs;
        assert_eq!(k.deadline(), t0 + secs(30));
        assert_eq!(k.due(t0 + secs(29)), None);
        assert_eq!(k.due(t0 + secs(30)), Some(Due::Ping));
        k.sent_data(t0 + secs(31));
        assert_eq!(k.due(t0 + secs(59)), None);
        assert_eq!(k.due(t0 + secs(3600)), Some(Due::Ping));
        assert_eq!(k.due(t0 + secs(3600)), None);
    }
}
