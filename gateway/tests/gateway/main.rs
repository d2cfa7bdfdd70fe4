//! The gateway's integration tests, one binary: gateways in-process and as real processes, over
//! real Postgres and Redis, alone and with the api.

mod cluster;
mod common;
mod database;
mod liveness_probe;
mod processes;
mod push_channel;
mod telemetry;
mod with_api;
