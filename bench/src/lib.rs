//! `flotilla-bench`: the Flotilla load generator.
//!
//! One command reproduces one figure: the bench seeds a database of its own, starts the real
//! `flotilla-api` and `flotilla-gateway` binaries against it, connects simulated agents from
//! several child processes (each process may hold at most 20,000 files), runs bounded phases
//! and prints a JSON summary on stdout. Progress bars go to stderr. See `BENCHMARKS.md`.
//!
//! # Layout
//! - [`fleet`]: `seed` (database, nodes and their token digests) and the fleet file.
//! - [`services`]: starting the api and gateways, their RSS, CPU time and metrics.
//! - [`swarm`]: the parent side of the agent processes (spawn, commands, progress).
//! - [`agents`]: the child side: simulated agents over tokio-tungstenite or [`sse`].
//! - [`sse`]: a simulated current agent's SSE stream.
//! - [`operator`]: the few operator API calls the scenarios make.
//! - [`stats`]: clocks and percentiles.
//! - [`scenarios`]: `idle`, `fanout`, `latency`, `storm`, `restart`, `poll`, `steady`,
//!   `browse`.

pub mod agents;
pub mod fleet;
pub mod operator;
pub mod scenarios;
pub mod services;
pub mod sse;
pub mod stats;
pub mod swarm;

use std::path::PathBuf;

/// Options every subcommand shares.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// The fleet file written by `seed`.
    #[arg(long, default_value = "target/bench/fleet.txt")]
    pub fleet: PathBuf,
    /// The bench database (recreated by `seed`; its name must start with `flotilla_bench`).
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/flotilla_bench"
    )]
    pub database_url: String,
    /// Redis.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Directory holding `flotilla-api` and `flotilla-gateway`.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Source addresses 127.0.0.1..=127.0.0.K for agent sockets (about 28k sockets each).
    #[arg(long, default_value_t = 8)]
    pub sources: u8,
    /// Simulated agents per child process.
    #[arg(long, default_value_t = 5000)]
    pub per_child: usize,
    /// The agents' push transport: `websocket` (the older agents) or `sse` (current ones).
    #[arg(long, value_enum, default_value_t = Transport::Websocket)]
    pub transport: Transport,
    /// Extra environment for the api and gateways, `KEY=VALUE` (repeatable), e.g.
    /// `FLOTILLA__GATEWAY__MAX_PENDING_HANDSHAKES=1024` or `MALLOC_ARENA_MAX=2`.
    #[arg(long = "service-env", value_parser = parse_env_pair)]
    pub service_env: Vec<(String, String)>,
}

/// A simulated agent's push transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `GET /api/agent/ws`.
    Websocket,
    /// `GET /api/agent/push` (Server-Sent Events).
    Sse,
}

fn parse_env_pair(pair: &str) -> Result<(String, String), String> {
    pair.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{pair}` is not KEY=VALUE"))
}

/// Raises this process's soft open-files limit to its hard limit.
pub fn raise_nofile_limit() {
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
}

/// A multiplexed Redis connection.
pub async fn redis_connection(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

/// Waits until every channel has a subscriber: a gateway subscribes a node's channel just
/// after accepting its socket (agents re-poll on connect for what they missed meanwhile), so
/// frames the bench publishes itself must wait for that, or they measure the race, not the
/// fan-out.
pub async fn await_subscribed(
    redis: &mut redis::aio::MultiplexedConnection,
    channels: &[String],
    limit: std::time::Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut waiting: Vec<&String> = channels.iter().collect();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for chunk in waiting.chunks(1000) {
            let counts: Vec<(String, u64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(chunk)
                .query_async(redis)
                .await?;
            still.extend(
                chunk
                    .iter()
                    .zip(&counts)
                    .filter(|(_, (_, n))| *n == 0)
                    .map(|(c, _)| *c),
            );
        }
        if still.is_empty() {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{} of {} channels still had no subscriber after {limit:?}",
            still.len(),
            channels.len()
        );
        waiting = still;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}
