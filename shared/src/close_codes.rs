//! WebSocket close codes, grouped by what the agent should do next.
//!
//! | code | name | agent does |
//! |---|---|---|
//! | 1000 | normal | reconnect with backoff |
//! | 1008 | policy violation | reconnect with backoff |
//! | 1009 | message too large | reconnect with backoff |
//! | 1011 | internal error | reconnect with backoff |
//! | 1012 | draining ("reconnect elsewhere") | reconnect now, after a short random delay |
//! | 4001 | revoked | never reconnect |
//! | 4100 | superseded (another socket of the node won) | back off; another agent may share the token |
//! | 4101 | too slow to take pushes | reconnect with backoff |
//! | 4102 | keepalive timeout | reconnect with backoff |
//!
//! Unknown codes in 4000–4099 mean "never", 4100–4199 "with backoff", 4200–4299 "now";
//! anything else reconnects with backoff.

/// Normal closure.
pub const NORMAL: u16 = 1000;
/// The peer broke a protocol rule (a binary or otherwise unacceptable frame).
pub const POLICY: u16 = 1008;
/// An incoming message exceeded the gateway's limit.
pub const TOO_LARGE: u16 = 1009;
/// The gateway hit an internal error.
pub const INTERNAL: u16 = 1011;
/// The gateway is draining; reconnect (to another gateway) right away.
pub const DRAINING: u16 = 1012;
/// The node was revoked; its token no longer works.
pub const REVOKED: u16 = 4001;
/// A newer socket of the same node took over.
pub const SUPERSEDED: u16 = 4100;
/// The agent did not read pushes fast enough.
pub const SLOW_CONSUMER: u16 = 4101;
/// No pong arrived within the keepalive timeout.
pub const KEEPALIVE_TIMEOUT: u16 = 4102;

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

/// Maps a close code to the agent's next step.
pub fn reconnect_policy(code: u16) -> Reconnect {
    match code {
        DRAINING | 1001 => Reconnect::Now,
        SUPERSEDED => Reconnect::Superseded,
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
        assert_eq!(reconnect_policy(REVOKED), Reconnect::Never);
        assert_eq!(reconnect_policy(SUPERSEDED), Reconnect::Superseded);
        assert_eq!(reconnect_policy(TOO_LARGE), Reconnect::WithBackoff);
        assert_eq!(reconnect_policy(SLOW_CONSUMER), Reconnect::WithBackoff);
        assert_eq!(reconnect_policy(4050), Reconnect::Never);
        assert_eq!(reconnect_policy(4250), Reconnect::Now);
        assert_eq!(reconnect_policy(NORMAL), Reconnect::WithBackoff);
    }
}
