//! When a socket pings, sends an unsolicited pong, or gives up on a silent agent.
//!
//! The gateway pings every `ping_interval_ms` and drops a socket that sent nothing (any frame
//! counts, pongs included) for `pong_timeout_ms`. Legacy agents reset their read deadline only
//! on data and pong frames, so a pong goes out whenever no data or pong was sent for
//! `unsolicited_pong_interval_ms`. A session keeps one timer, armed at [`Keepalive::deadline`].

use flotilla_shared::settings::GatewaySettings;
use std::time::Duration;
use tokio::time::Instant;

/// What is due now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Nothing heard for the pong timeout: close the socket.
    Timeout,
    /// Send a ping.
    Ping,
    /// Send an unsolicited pong.
    Pong,
}

/// A socket's keepalive schedule.
#[derive(Debug)]
pub(crate) struct Keepalive {
    ping_every: Duration,
    pong_timeout: Duration,
    pong_every: Duration,
    heard: Instant,
    next_ping: Instant,
    next_pong: Instant,
}

impl Keepalive {
    pub(crate) fn new(settings: &GatewaySettings, now: Instant) -> Self {
        let ping_every = Duration::from_millis(settings.ping_interval_ms);
        let pong_every = Duration::from_millis(settings.unsolicited_pong_interval_ms);
        Self {
            ping_every,
            pong_timeout: Duration::from_millis(settings.pong_timeout_ms),
            pong_every,
            heard: now,
            next_ping: now + ping_every,
            next_pong: now + pong_every,
        }
    }

    /// The agent sent a frame.
    pub(crate) fn heard(&mut self, now: Instant) {
        self.heard = now;
    }

    /// A data frame or pong went out: a legacy agent's deadline was reset.
    pub(crate) fn sent_data(&mut self, now: Instant) {
        self.next_pong = now + self.pong_every;
    }

    /// The next thing due at `now`, advancing the schedule past it.
    pub(crate) fn due(&mut self, now: Instant) -> Option<Due> {
        if now >= self.heard + self.pong_timeout {
            Some(Due::Timeout)
        } else if now >= self.next_ping {
            self.next_ping = now + self.ping_every;
            Some(Due::Ping)
        } else if now >= self.next_pong {
            self.next_pong = now + self.pong_every;
            Some(Due::Pong)
        } else {
            None
        }
    }

    /// When something is next due.
    pub(crate) fn deadline(&self) -> Instant {
        (self.heard + self.pong_timeout)
            .min(self.next_ping)
            .min(self.next_pong)
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
        let mut k = Keepalive::new(&settings(), t0);
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
        let mut k = Keepalive::new(&settings(), t0);
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
        let mut k = Keepalive::new(&settings(), t0);
        let s = Duration::from_secs;
        k.sent_data(t0 + s(15));
        assert_eq!(k.due(t0 + s(20)), None);
        assert_eq!(k.deadline(), t0 + s(30));
    }
}
