//! WebSocket close codes, grouped by what the agent should do next: [`Close`] is the one place
//! a close's code, reason text, metric label and reconnect policy are written down.
//!
//! | code | name | reason sent | metric label | agent does |
//! |---|---|---|---|---|
//! | 1000 | normal | | `normal` | reconnect with backoff |
//! | 1008 | policy violation | `unexpected frame` | `protocol` | reconnect with backoff |
//! | 1009 | message too large | `message too large` | `protocol` | reconnect with backoff |
//! | 1011 | internal error | | `internal` | reconnect with backoff |
//! | 1012 | draining | `gateway draining, reconnect elsewhere` | `draining` | reconnect now, after a short random delay |
//! | 4001 | revoked | `node revoked` | `revoked` | never reconnect |
//! | 4100 | superseded | `superseded by a newer connection` | `superseded` | back off; another agent may share the token |
//! | 4101 | too slow to take pushes | `too slow to read pushes` | `slow_consumer` | reconnect with backoff |
//! | 4102 | keepalive timeout | `keepalive timeout` | `keepalive_timeout` | reconnect with backoff |
//!
//! Unknown codes in 4000–4099 mean "never", 4100–4199 "with backoff", 4200–4299 "now";
//! 1001 (going away) "now"; anything else reconnects with backoff.

/// A close the gateway sends, and everything that follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Close {
    /// Normal closure.
    Normal,
    /// The peer broke a protocol rule (a binary or otherwise unacceptable frame).
    Policy,
    /// An incoming message exceeded the gateway's limit.
    TooLarge,
    /// The gateway hit an internal error.
    Internal,
    /// The gateway is draining; reconnect (to another gateway) right away.
    Draining,
    /// The node was revoked; its token no longer works.
    Revoked,
    /// A newer socket of the same node took over.
    Superseded,
    /// The agent did not read pushes fast enough.
    SlowConsumer,
    /// No pong arrived within the keepalive timeout.
    KeepaliveTimeout,
}

impl Close {
    /// Every close, in code order.
    pub const ALL: [Close; 9] = [
        Close::Normal,
        Close::Policy,
        Close::TooLarge,
        Close::Internal,
        Close::Draining,
        Close::Revoked,
        Close::Superseded,
        Close::SlowConsumer,
        Close::KeepaliveTimeout,
    ];

    /// The wire code.
    pub const fn code(self) -> u16 {
        match self {
            Close::Normal => 1000,
            Close::Policy => 1008,
            Close::TooLarge => 1009,
            Close::Internal => 1011,
            Close::Draining => 1012,
            Close::Revoked => 4001,
            Close::Superseded => 4100,
            Close::SlowConsumer => 4101,
            Close::KeepaliveTimeout => 4102,
        }
    }

    /// The close with this wire code, if it is one of ours.
    pub fn from_code(code: u16) -> Option<Close> {
        Close::ALL.into_iter().find(|c| c.code() == code)
    }

    /// The reason text sent in the close frame.
    pub const fn reason(self) -> &'static str {
        match self {
            Close::Normal | Close::Internal => "",
            Close::Policy => "unexpected frame",
            Close::TooLarge => "message too large",
            Close::Draining => "gateway draining, reconnect elsewhere",
            Close::Revoked => "node revoked",
            Close::Superseded => "superseded by a newer connection",
            Close::SlowConsumer => "too slow to read pushes",
            Close::KeepaliveTimeout => "keepalive timeout",
        }
    }

    /// The `reason` label of `flotilla_gateway_closes_total`; both protocol breaches share one.
    pub const fn metric_label(self) -> &'static str {
        match self {
            Close::Normal => "normal",
            Close::Policy | Close::TooLarge => "protocol",
            Close::Internal => "internal",
            Close::Draining => "draining",
            Close::Revoked => "revoked",
            Close::Superseded => "superseded",
            Close::SlowConsumer => "slow_consumer",
            Close::KeepaliveTimeout => "keepalive_timeout",
        }
    }

    /// What an agent should do after this close.
    pub const fn reconnect(self) -> Reconnect {
        match self {
            Close::Draining => Reconnect::Now,
            Close::Superseded => Reconnect::Superseded,
            Close::Revoked => Reconnect::Never,
            Close::Normal
            | Close::Policy
            | Close::TooLarge
            | Close::Internal
            | Close::SlowConsumer
            | Close::KeepaliveTimeout => Reconnect::WithBackoff,
        }
    }
}

/// Normal closure.
pub const NORMAL: u16 = Close::Normal.code();
/// The peer broke a protocol rule.
pub const POLICY: u16 = Close::Policy.code();
/// An incoming message exceeded the gateway's limit.
pub const TOO_LARGE: u16 = Close::TooLarge.code();
/// The gateway hit an internal error.
pub const INTERNAL: u16 = Close::Internal.code();
/// The gateway is draining.
pub const DRAINING: u16 = Close::Draining.code();
/// The node was revoked.
pub const REVOKED: u16 = Close::Revoked.code();
/// A newer socket of the same node took over.
pub const SUPERSEDED: u16 = Close::Superseded.code();
/// The agent did not read pushes fast enough.
pub const SLOW_CONSUMER: u16 = Close::SlowConsumer.code();
/// No pong arrived within the keepalive timeout.
pub const KEEPALIVE_TIMEOUT: u16 = Close::KeepaliveTimeout.code();

/// What an agent should do after a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Reconnect after a short random delay (the gateway is going away, others are fine).
    Now,
    /// Reconnect with the normal exponential backoff.
    WithBackoff,
    /// Reconnect with backoff and warn that another agent may use the same token.
    Superseded,
    /// Do not reconnect; the credentials are no longer valid.
    Never,
}

/// Maps any close code, ours or not, to the agent's next step.
pub fn reconnect_policy(code: u16) -> Reconnect {
    if let Some(close) = Close::from_code(code) {
        return close.reconnect();
    }
    match code {
        1001 => Reconnect::Now,
        4000..=4099 => Reconnect::Never,
        4200..=4299 => Reconnect::Now,
        _ => Reconnect::WithBackoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups() {
        assert_eq!(reconnect_policy(DRAINING), Reconnect::Now);
        assert_eq!(reconnect_policy(1001), Reconnect::Now);
        assert_eq!(reconnect_policy(REVOKED), Reconnect::Never);
        assert_eq!(reconnect_policy(SUPERSEDED), Reconnect::Superseded);
        assert_eq!(reconnect_policy(TOO_LARGE), Reconnect::WithBackoff);
        assert_eq!(reconnect_policy(SLOW_CONSUMER), Reconnect::WithBackoff);
        assert_eq!(reconnect_policy(4050), Reconnect::Never);
        assert_eq!(reconnect_policy(4150), Reconnect::WithBackoff);
        assert_eq!(reconnect_policy(4250), Reconnect::Now);
        assert_eq!(reconnect_policy(NORMAL), Reconnect::WithBackoff);
    }

    #[test]
    fn every_close_keeps_its_code_and_range() {
        for close in Close::ALL {
            assert_eq!(Close::from_code(close.code()), Some(close));
        }
        // Custom codes agree with the range an unknown code of theirs would fall in.
        for close in Close::ALL.into_iter().filter(|c| c.code() >= 4000) {
            let range = match close.code() {
                4000..=4099 => Reconnect::Never,
                4200..=4299 => Reconnect::Now,
                _ => Reconnect::WithBackoff,
            };
            let policy = match close.reconnect() {
                Reconnect::Superseded => Reconnect::WithBackoff,
                p => p,
            };
            assert_eq!(policy, range, "{close:?}");
        }
    }
}
