//! `latency`: single pushes to random connected agents, then single-node deploys.
//!
//! Pushes are published by the bench as the api publishes them (`SPUBLISH` routed by slot on a
//! cluster), spaced `--gap-ms` apart, each stamped with the epoch microsecond of its publish
//! (`benchUs`; `sentAt` has only millisecond resolution), so the figure is publish → agent.
//! Deploys use pipelines that select one node each (label `bench=<index>`), timed from just
//! before the deploy call to the agent's receipt.

use super::{agents_or_all, fleet, machine};
use crate::operator::Operator;
use crate::servers::Servers;
use crate::services;
use crate::stats::{now_us, Dist};
use crate::swarm::{Plan, Swarm};
use flotilla_shared::channels::node_channel;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// How long to wait for the last frames.
const COLLECT_LIMIT: Duration = Duration::from_secs(15);

/// Options of `latency`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Agents to connect (0: the whole fleet).
    #[arg(long, default_value_t = 0)]
    pub agents: usize,
    /// Single pushes to random agents.
    #[arg(long, default_value_t = 1000)]
    pub pushes: usize,
    /// Pause between pushes, milliseconds.
    #[arg(long, default_value_t = 5)]
    pub gap_ms: u64,
    /// Single-node deploys through the api (each to a different node).
    #[arg(long, default_value_t = 200)]
    pub deploys: usize,
    /// Pause between deploys, milliseconds.
    #[arg(long, default_value_t = 20)]
    pub deploy_gap_ms: u64,
    #[command(flatten)]
    pub common: crate::Common,
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<Value> {
    let common = &args.common;
    let fleet = fleet(common, args.agents)?;
    let agents = agents_or_all(args.agents, &fleet);
    let servers = Servers::connect(common).await?;
    let api = services::api(common, &[]).await?;
    let gateway = services::gateway(common, "bench-gw-0", &[]).await?;
    let plan = Plan {
        range: 0..agents,
        gateways: vec![gateway.addr],
        reconnect: false,
        honour_retry_after: false,
    };
    let (mut swarm, connected) = Swarm::launch(common, &plan).await?;
    let channels: Vec<String> = fleet.nodes[..agents]
        .iter()
        .map(|n| node_channel(n.id))
        .collect();
    servers
        .await_subscribed(&channels, Duration::from_secs(30))
        .await?;
    let redis = common.redis()?;

    swarm.receipts().await?;
    for p in 0..args.pushes {
        let target = rand::thread_rng().gen_range(0..agents);
        let payload = super::fanout::frame(&format!("latency-{p}"));
        let mut publish = redis::cmd(redis.node_publish());
        publish
            .arg(node_channel(fleet.nodes[target].id))
            .arg(payload);
        redis.query::<()>(&publish).await?;
        tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
    }
    let receipts = swarm.await_receipts(args.pushes, COLLECT_LIMIT).await?;
    let push_latencies: Vec<i64> = receipts
        .iter()
        .filter(|r| r.3 > 0)
        .map(|r| r.1 as i64 - r.3 as i64)
        .collect();
    let pushes_received = push_latencies.len();

    let operator = Operator::new(api.addr)?;
    let mut targets: Vec<usize> = (0..agents).collect();
    targets.shuffle(&mut rand::thread_rng());
    targets.truncate(args.deploys);
    let mut pipelines = Vec::new();
    for &t in &targets {
        let name = format!("single-{t}-{}", Uuid::new_v4());
        pipelines.push(
            operator
                .create_pipeline(
                    fleet.environment_id,
                    &name,
                    json!({ "bench": t.to_string() }),
                )
                .await?,
        );
    }
    let mut started: HashMap<usize, u64> = HashMap::new();
    let mut calls = Vec::new();
    swarm.receipts().await?;
    for (&t, &pipeline) in targets.iter().zip(&pipelines) {
        let start = now_us();
        started.insert(t, start);
        let notified = operator.deploy(pipeline).await?;
        anyhow::ensure!(
            notified == 1,
            "a single-node deploy notified {notified} nodes"
        );
        calls.push(now_us() as i64 - start as i64);
        tokio::time::sleep(Duration::from_millis(args.deploy_gap_ms)).await;
    }
    let receipts = swarm.await_receipts(targets.len(), COLLECT_LIMIT).await?;
    let deploy_latencies: Vec<i64> = receipts
        .iter()
        .filter_map(|r| started.get(&r.0).map(|s| r.1 as i64 - *s as i64))
        .collect();
    swarm.shutdown().await?;
    Ok(json!({
        "scenario": "latency",
        "transport": common.transport,
        "agents": agents,
        "connect": connected,
        "push": {
            "sent": args.pushes,
            "received": pushes_received,
            "lost": args.pushes.saturating_sub(pushes_received),
            "publishToAgentMs": Dist::of_us(&push_latencies),
        },
        "deploy": {
            "sent": targets.len(),
            "received": deploy_latencies.len(),
            "lost": targets.len().saturating_sub(deploy_latencies.len()),
            "callToReceiptMs": Dist::of_us(&deploy_latencies),
            "callMs": Dist::of_us(&calls),
        },
        "machine": machine(),
    }))
}
