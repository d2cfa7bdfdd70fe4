//! Types and contracts shared by every Flotilla binary.
//!
//! # Layout
//! - [`backoff`]: exponential backoff with full jitter, for every reconnect loop.
//! - [`shutdown`]: the termination signals (SIGTERM, SIGINT) every binary stops on.
//! - [`settings`]: typed configuration (defaults → `FLOTILLA_CONFIG` file → `FLOTILLA__*` env).
//! - [`secret`]: a string wrapper that never shows up in `Debug` output or logs.
//! - [`telemetry`]: tracing subscriber set-up (text or JSON).
//! - [`auth`]: authentication both services share: token formats and hashing
//!   (`auth::tokens`), the `Authorization: Bearer` parser (`auth::bearer`), node-token
//!   authentication (`auth::node`) and the one cap on bcrypt work (`auth::bcrypt_gate`).
//! - [`limiter`]: one fixed-window rate limiter per key (address budgets, node reconnects).
//! - [`client_address`]: which address a request counts against (peer or trusted hop).
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
//! - [`slots`]: Redis Cluster key slots (CRC16 of a key or its hash tag).

pub mod auth;
pub mod backoff;
pub mod batched_reads;
pub mod channels;
pub mod client_address;
pub mod close_codes;
pub mod db;
pub mod frames;
pub mod fuzzing;
pub mod healthcheck;
#[cfg(feature = "server")]
pub mod http_server;
pub mod limiter;
pub mod metrics;
pub mod presence;
pub mod protocol;
pub mod redis_conn;
#[cfg(feature = "server")]
pub mod request_tracing;
pub mod secret;
pub mod settings;
pub mod shutdown;
pub mod slot_router;
pub mod slots;
pub mod telemetry;
