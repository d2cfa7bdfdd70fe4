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
//! - [`servers`]: the Redis servers behind `--redis-url` (one, or a cluster's nodes): the
//!   frames the bench publishes itself, one pipeline per master; subscriptions; CPU time.
//! - [`swarm`]: the parent side of the agent processes (spawn, commands, progress).
//! - [`agents`]: the child side: simulated agents over tokio-tungstenite or [`sse`].
//! - [`sse`]: a simulated current agent's SSE stream.
//! - [`operator`]: the few operator API calls the scenarios make.
//! - [`stats`]: clocks and percentiles.
//! - [`scenarios`]: `idle`, `fanout`, `pubsub-cpu`, `latency`, `storm`, `restart`, `poll`,
//!   `steady`, `browse`, `page`.
//!
//! `--redis-url` names one Redis or, comma-separated, a Redis Cluster's seeds (more than one
//! URL: cluster mode, `scripts/redis-cluster` starts one locally). On a cluster the services
//! get `FLOTILLA__REDIS__CLUSTER_NODES` and node channels use sharded pub/sub.

pub mod agents;
pub mod fleet;
pub mod operator;
pub mod scenarios;
pub mod servers;
pub mod services;
pub mod sse;
pub mod stats;
pub mod swarm;

use flotilla_shared::redis_conn::Redis;
use flotilla_shared::secret::Secret;
use flotilla_shared::settings::RedisSettings;
use std::path::PathBuf;
use std::time::Duration;

/// Timeout of one Redis command or pipeline the bench sends (a pipeline may carry a frame for
/// each of 100,000 agents).
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Redis: one URL, or a Redis Cluster's seed URLs, comma-separated.
    ///
    /// More than one URL means a cluster (name at least two of its nodes;
    /// `scripts/redis-cluster start` prints all six): the services then get
    /// `FLOTILLA__REDIS__CLUSTER_NODES` instead of `FLOTILLA__REDIS__URL`, and the bench
    /// publishes node channels with `SPUBLISH`, one pipeline per master.
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

impl Common {
    /// The URLs in `--redis-url`: one Redis's, or a cluster's seeds.
    pub fn redis_urls(&self) -> Vec<String> {
        self.redis_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Whether `--redis-url` names a Redis Cluster (more than one URL).
    pub fn redis_cluster(&self) -> bool {
        self.redis_urls().len() > 1
    }

    /// The services' Redis settings for `--redis-url`, with `command_timeout` per command.
    pub fn redis_settings(&self, command_timeout: Duration) -> RedisSettings {
        let cluster = self.redis_cluster();
        let urls = self.redis_urls();
        RedisSettings {
            // Not used in cluster mode.
            url: Secret::new(urls.first().cloned().unwrap_or_default()),
            cluster_nodes: cluster.then(|| Secret::new(urls.join(","))),
            command_timeout_ms: command_timeout.as_millis() as u64,
        }
    }

    /// A command handle on the services' Redis, as the api holds one: routed by slot on a
    /// cluster.
    pub fn redis(&self) -> anyhow::Result<Redis> {
        Ok(Redis::new(&self.redis_settings(REDIS_TIMEOUT))?)
    }
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
