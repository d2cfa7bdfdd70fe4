//! Types and contracts shared by every Flotilla binary.
//!
//! # Layout
//! - [`settings`]: typed configuration (defaults → `FLOTILLA_CONFIG` file → `FLOTILLA__*` env).
//! - [`secret`]: a string wrapper that never shows up in `Debug` output or logs.
//! - [`telemetry`]: tracing subscriber set-up (text or JSON).
//! - [`tokens`]: node, enrollment and operator token formats, generation and hashing.
//! - [`bcrypt_gate`]: the one cap on concurrent bcrypt work in a process.
//! - [`node_auth`]: node-token authentication: a row read and a digest, no cache.
//! - [`batched_reads`]: concurrent reads of rows by key, coalesced into one query a round.
//! - [`frames`]: the JSON frames pushed to agents over the WebSocket.
//! - [`fuzzing`]: the checks the fuzz targets and their regression replays run.
//! - `http_server` (feature `server`): HTTP/1.1 serving with a header read timeout.
//! - [`healthcheck`]: the `healthcheck` subcommand container health checks run.
//! - [`close_codes`]: [`close_codes::Close`], every close's code, reason, metric label and
//!   reconnect policy.
//! - [`metrics`]: Prometheus text exposition of a service's registry; node-auth counters.
//! - `request_tracing` (feature `server`): request ids and a span per HTTP request.
//! - [`channels`]: Redis channel and key names, and gateway control messages.
//! - [`protocol`]: request and response bodies of the agent HTTP API (VectorFlow v1).
//! - [`db`]: Postgres pool construction and the embedded migrations.
//! - [`redis_conn`]: a lazily connected Redis handle with per-command timeouts.
//! - [`presence`]: which gateway holds each node's socket (Redis, atomic Lua scripts).
//! - [`rate_limit`]: per-source-address budgets (enrollment, failed authentications).

pub mod batched_reads;
pub mod bcrypt_gate;
pub mod channels;
pub mod close_codes;
pub mod db;
pub mod frames;
pub mod fuzzing;
pub mod healthcheck;
#[cfg(feature = "server")]
pub mod http_server;
pub mod metrics;
pub mod node_auth;
pub mod presence;
pub mod protocol;
pub mod rate_limit;
pub mod redis_conn;
#[cfg(feature = "server")]
pub mod request_tracing;
pub mod secret;
pub mod settings;
pub mod telemetry;
pub mod tokens;
