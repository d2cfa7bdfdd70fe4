//! The Flotilla agent: enrolls once, polls the api, holds the push channel and supervises one
//! `vector` process per deployed pipeline.
//!
//! The api is the authority; pushes only remove latency. Every push makes the agent re-poll
//! (or, for samples, post to the authenticated samples endpoint), and the agent polls on its
//! interval regardless, so nothing published while the socket was down is missed.
//!
//! # Layout
//! - [`config`]: flags and `VF_*` environment variables into a typed [`Config`], plus the
//!   [`Tuning`] knobs (timeouts, debounce, backoff) tests shorten.
//! - [`client`]: the agent HTTP API (enroll, config, heartbeat, samples, logs, tap events)
//!   with timeouts.
//! - [`enroll`]: the node token in `<data dir>/node-token` (mode 0600); enrolls when missing.
//! - [`state`]: the pure state machine of the main loop: [`state::Event`]s in,
//!   [`state::Command`]s out, deadlines exposed, no I/O — unit-tested without sleeping.
//! - [`agent`]: the main loop: one task owning the state machine, a `select!` over events,
//!   timers and shutdown, executing commands by spawning I/O tasks that report back.
//! - [`push`]: the push task: picks WebSocket or SSE from the config, connects, reads with a
//!   deadline, honours close codes, reconnects.
//! - [`sse`]: the push channel over server-sent events (servers without a WebSocket).
//! - [`supervisor`]: one `vector --config <file>` child per pipeline; exits are reported as events.
//! - [`vector_api`]: each child's own Vector API port, and the counters read from it before
//!   every heartbeat.
//! - [`logs`]: each child's output lines in a bounded buffer, shipped to the api every 2 s.
//! - [`samples`]: `vector tap` for sample requests, with a limit and a timeout.
//! - [`live_tap`]: `vector tap` for live taps, events posted every second until stopped.
//! - [`update`]: self-update: download with timeouts, verify SHA-256, atomic replace.

pub mod agent;
pub mod client;
pub mod config;
pub mod enroll;
pub mod live_tap;
pub mod logs;
pub mod push;
pub mod samples;
pub mod sse;
pub mod state;
pub mod supervisor;
pub mod update;
pub mod vector_api;

pub use agent::{run, Outcome};
pub use config::{Config, Tuning};

/// This agent's version, reported in enrollment and heartbeats.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
