//! `pubsub-cpu`: Redis CPU per push on each server, sharded against classic pub/sub.
//!
//! N agents on G gateways, every agent's channel subscribed. Then, for each publish command,
//! `--rounds` fan-outs to every agent (rounds × N pushes, each round one pipeline per master
//! owning the channels, as in `fanout`), with every server's `INFO cpu` (`used_cpu_sys +
//! used_cpu_user`) read before and after:
//! - on a cluster, `SPUBLISH` (what the services use: a push goes to the master owning the
//!   channel's slot, which copies it to its replicas), then classic `PUBLISH` to the same
//!   channels through the same masters. The gateways subscribe sharded, so classic pushes reach
//!   no subscriber; they show what classic pub/sub costs each node, since a cluster copies
//!   every classic message to every node.
//! - on one Redis, `PUBLISH` (what the services use there).
//!
//! A round that reaches subscribers ends when every agent has its frame; a round of classic
//! pushes on a cluster ends when a marker published after it on each master has reached every
//! node (messages between two nodes keep their order), so each round's copies are processed
//! before the next. A server's CPU per push is its CPU over the rounds, less its idle CPU
//! (presence refreshes, cluster heartbeats; measured over `--idle-secs` just before), divided
//! by every push of the rounds, not only those its shard served; summed by role and over all
//! servers, it is what one push costs the cluster.

use super::fanout::{connect, frame, redis_summary, ROUND_LIMIT};
use super::{agents_or_all, distinct, fleet, machine};
use crate::servers::{Role, Servers};
use crate::services;
use crate::swarm::Swarm;
use anyhow::Context;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Prefix of the channels that mark the end of a classic round.
const MARKER: &str = "flotilla:bench:marker:";
/// How long a round's markers may take to reach every node.
const MARKER_LIMIT: Duration = Duration::from_secs(60);

/// Options of `pubsub-cpu`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Agents to connect (0: the whole fleet).
    #[arg(long, default_value_t = 0)]
    pub agents: usize,
    /// Gateways sharing them (node `i` connects to gateway `i % N`).
    #[arg(long, default_value_t = 1)]
    pub gateways: usize,
    /// Fan-outs to every agent per publish command: rounds × agents pushes each.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// Window over which each server's idle CPU is measured before each command's rounds,
    /// seconds.
    #[arg(long, default_value_t = 3)]
    pub idle_secs: u64,
    #[command(flatten)]
    pub common: crate::Common,
}

/// One command's rounds.
struct Measured {
    command: &'static str,
    subscribed: bool,
    pushes: usize,
    seconds: f64,
    reached: u64,
    received: usize,
    /// Per server: CPU seconds over the rounds, and the idle CPU seconds estimated for them.
    cpu: Vec<(f64, f64)>,
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<Value> {
    let common = &args.common;
    let fleet = fleet(common, args.agents)?;
    let agents = agents_or_all(args.agents, &fleet);
    let servers = Servers::connect(common).await?;
    let gateways = services::gateways(common, args.gateways).await?;
    let (mut swarm, connected, channels) =
        connect(common, &fleet, &gateways, agents, &servers).await?;
    let idle = Duration::from_secs(args.idle_secs.max(1));

    let mut measured = Vec::new();
    let node_publish = servers.node_publish();
    measured.push(
        measure(
            &servers,
            &channels,
            node_publish,
            args.rounds,
            idle,
            Rounds::Receipts(&mut swarm),
        )
        .await?,
    );
    if servers.is_cluster() {
        let markers = Markers::subscribe(&servers).await?;
        measured.push(
            measure(
                &servers,
                &channels,
                "PUBLISH",
                args.rounds,
                idle,
                Rounds::Markers(markers),
            )
            .await?,
        );
    }
    swarm.shutdown().await?;

    let per_server: Vec<Value> = servers
        .servers()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut entry = json!({ "addr": s.addr, "port": s.port, "role": s.role.name() });
            for m in &measured {
                let (cpu, idle) = m.cpu[i];
                entry[m.command.to_lowercase()] = json!({
                    "cpuMs": cpu * 1e3,
                    "idleCpuMs": idle * 1e3,
                    "cpuUsPerPush": (cpu - idle).max(0.0) * 1e6 / m.pushes.max(1) as f64,
                });
            }
            entry
        })
        .collect();
    let commands: serde_json::Map<String, Value> = measured
        .iter()
        .map(|m| {
            let per_push = |role: Option<Role>| {
                let servers = servers.servers().iter().zip(&m.cpu);
                let net: f64 = servers
                    .filter(|(s, _)| role.is_none_or(|r| s.role == r))
                    .map(|(_, (cpu, idle))| (cpu - idle).max(0.0))
                    .sum();
                net * 1e6 / m.pushes.max(1) as f64
            };
            let by_role: serde_json::Map<String, Value> =
                [Role::Single, Role::Master, Role::Replica]
                    .into_iter()
                    .filter(|r| servers.servers().iter().any(|s| s.role == *r))
                    .map(|r| (r.name().to_owned(), json!(per_push(Some(r)))))
                    .collect();
            let summary = json!({
                "subscribed": m.subscribed,
                "pushes": m.pushes,
                "seconds": m.seconds,
                "pushesPerSecond": m.pushes as f64 / m.seconds.max(1e-6),
                "reachedSubscribers": m.reached,
                "received": m.subscribed.then_some(m.received),
                "lost": m.subscribed.then(|| m.pushes.saturating_sub(m.received)),
                "cpuUsPerPush": per_push(None),
                "cpuUsPerPushByRole": by_role,
            });
            (m.command.to_lowercase(), summary)
        })
        .collect();
    Ok(json!({
        "scenario": "pubsub-cpu",
        "transport": common.transport,
        "agents": agents,
        "gateways": gateways.len(),
        "redis": redis_summary(&servers),
        "connect": connected,
        "rounds": args.rounds,
        "idleSecs": idle.as_secs(),
        "commands": commands,
        "servers": per_server,
        "machine": machine(),
    }))
}

/// How a round is known to be over.
enum Rounds<'a> {
    /// Every agent has its frame.
    Receipts(&'a mut Swarm),
    /// Every node has seen the round's markers.
    Markers(Markers),
}

/// Publishes `rounds` frames to every channel with `command`, reading every server's CPU time
/// before and after, and its idle CPU over `idle` just before.
async fn measure(
    servers: &Servers,
    channels: &[String],
    command: &'static str,
    rounds: usize,
    idle: Duration,
    mut ends: Rounds<'_>,
) -> anyhow::Result<Measured> {
    let idle_before = servers.cpu_secs().await?;
    let idle_started = Instant::now();
    tokio::time::sleep(idle).await;
    let idle_after = servers.cpu_secs().await?;
    let idle_elapsed = idle_started.elapsed().as_secs_f64();

    let before = servers.cpu_secs().await?;
    let started = Instant::now();
    let (mut reached, mut received) = (0, 0);
    for round in 0..rounds {
        let frames = channels
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), frame(&format!("cpu-{round}-{i}"))));
        let batch = servers.batch(command, frames);
        match &mut ends {
            Rounds::Receipts(swarm) => {
                swarm.receipts().await?;
                reached += servers.send(&batch).await?;
                let receipts = swarm.await_receipts(channels.len(), ROUND_LIMIT).await?;
                received += distinct(&receipts);
            }
            Rounds::Markers(markers) => {
                reached += servers.send(&batch).await?;
                // On the same connections, so after every frame of the round.
                let round = round as u64;
                let marks = markers
                    .channels
                    .iter()
                    .map(|c| (c.clone(), round.to_string()));
                servers.send(&servers.batch(command, marks)).await?;
                markers.await_round(round).await?;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = servers.cpu_secs().await?;
    let cpu = (0..after.len())
        .map(|i| {
            let idle_rate = (idle_after[i] - idle_before[i]) / idle_elapsed;
            (after[i] - before[i], idle_rate * seconds)
        })
        .collect();
    Ok(Measured {
        command,
        subscribed: matches!(ends, Rounds::Receipts(_)),
        pushes: rounds * channels.len(),
        seconds,
        reached,
        received,
        cpu,
    })
}

/// A marker channel owned by each master, and a classic subscription to all of them on every
/// server.
struct Markers {
    channels: Vec<String>,
    /// (server index, round) of each marker a server received.
    seen: mpsc::UnboundedReceiver<(usize, u64)>,
    servers: usize,
}

impl Markers {
    async fn subscribe(servers: &Servers) -> anyhow::Result<Self> {
        let mut owners = std::collections::BTreeMap::new();
        let masters = servers
            .servers()
            .iter()
            .filter(|s| s.role == Role::Master)
            .count();
        for k in 0.. {
            let channel = format!("{MARKER}{k}");
            owners.entry(servers.owner(&channel)).or_insert(channel);
            if owners.len() == masters {
                break;
            }
        }
        let channels: Vec<String> = owners.into_values().collect();
        let (tx, seen) = mpsc::unbounded_channel();
        for (i, server) in servers.servers().iter().enumerate() {
            let mut pubsub = server.pubsub().await?;
            pubsub.subscribe(&channels).await?;
            let mut messages = pubsub.into_on_message();
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(message) = messages.next().await {
                    if let Ok(round) = message.get_payload::<u64>() {
                        if tx.send((i, round)).is_err() {
                            return;
                        }
                    }
                }
            });
        }
        Ok(Self {
            channels,
            seen,
            servers: servers.servers().len(),
        })
    }

    /// Waits until every server received every marker of `round`.
    async fn await_round(&mut self, round: u64) -> anyhow::Result<()> {
        let expected = self.channels.len() * self.servers;
        let deadline = tokio::time::Instant::now() + MARKER_LIMIT;
        let mut got = 0;
        while got < expected {
            let (_, r) = tokio::time::timeout_at(deadline, self.seen.recv())
                .await
                .with_context(|| format!("round {round}'s markers did not reach every node"))?
                .context("a marker subscription ended")?;
            if r == round {
                got += 1;
            }
        }
        Ok(())
    }
}
