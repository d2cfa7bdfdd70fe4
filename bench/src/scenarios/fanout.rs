//! `fanout`: one frame to every connected agent.
//!
//! Agents are spread over `--gateways` gateways. Gateway alone: the bench publishes N frames
//! (one per node channel) itself — on one Redis in one pipeline of `PUBLISH`es, on a cluster in
//! one pipeline of `SPUBLISH`es per master, all masters at once ([`Servers`]) — and times from
//! just before the pipelines are sent to the last receipt. Through the api: one
//! `POST /api/v1/pipelines/{id}/deploy` to a pipeline selecting every node, timed from just
//! before the call to the last receipt. Each is repeated `--rounds` times.

use super::{agents_or_all, distinct, fleet, machine};
use crate::fleet::Fleet;
use crate::operator::Operator;
use crate::servers::{Role, Servers};
use crate::services::{self, Service};
use crate::stats::{now_us, Dist, Spread};
use crate::swarm::{Connected, Plan, Receipt, Swarm};
use flotilla_shared::channels::node_channel;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

/// How long the gateway may take to subscribe every connected agent's channel.
const SUBSCRIBE_LIMIT: Duration = Duration::from_secs(30);
/// How long to wait for a round's frames.
pub(crate) const ROUND_LIMIT: Duration = Duration::from_secs(15);
/// Pause between rounds, so rounds do not overlap.
const ROUND_GAP: Duration = Duration::from_secs(1);

/// Options of `fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Agents to connect (0: the whole fleet).
    #[arg(long, default_value_t = 0)]
    pub agents: usize,
    /// Gateways sharing them (node `i` connects to gateway `i % N`).
    #[arg(long, default_value_t = 1)]
    pub gateways: usize,
    /// Repetitions of each measurement.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    #[command(flatten)]
    pub common: crate::Common,
}

/// A frame as the api would publish it, plus the bench's microsecond stamp.
pub(crate) fn frame(id: &str) -> String {
    let us = now_us();
    format!(
        r#"{{"type":"config_changed","reason":"deploy","id":"{id}","sentAt":{},"benchUs":{us}}}"#,
        us / 1000
    )
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<Value> {
    let common = &args.common;
    let fleet = fleet(common, args.agents)?;
    let agents = agents_or_all(args.agents, &fleet);
    let servers = Servers::connect(common).await?;
    let api = services::api(common, &[]).await?;
    let gateways = services::gateways(common, args.gateways).await?;
    let (mut swarm, connected, channels) =
        connect(common, &fleet, &gateways, agents, &servers).await?;

    let mut direct = Vec::new();
    for round in 0..args.rounds {
        swarm.receipts().await?;
        let frames = channels
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, c)| (c, frame(&format!("fanout-{round}-{i}"))));
        let batch = servers.batch(servers.node_publish(), frames);
        let start = now_us();
        let reached = servers.send(&batch).await?;
        let published = now_us();
        let receipts = swarm.await_receipts(agents, ROUND_LIMIT).await?;
        let mut summary = round_summary(&receipts, agents, start, Some(published));
        summary["reachedSubscribers"] = json!(reached);
        direct.push(summary);
        tokio::time::sleep(ROUND_GAP).await;
    }

    let operator = Operator::new(api.addr)?;
    let pipeline = operator
        .create_pipeline(
            fleet.environment_id,
            &format!("fanout-{}", Uuid::new_v4()),
            json!({}),
        )
        .await?;
    let mut deploys = Vec::new();
    for _ in 0..args.rounds {
        swarm.receipts().await?;
        let start = now_us();
        let notified = operator.deploy(pipeline).await?;
        let answered = now_us();
        let receipts = swarm.await_receipts(agents, ROUND_LIMIT).await?;
        let mut summary = round_summary(&receipts, agents, start, None);
        summary["notifiedNodes"] = json!(notified);
        summary["callMs"] = json!((answered - start) as f64 / 1000.0);
        deploys.push(summary);
        tokio::time::sleep(ROUND_GAP).await;
    }
    swarm.shutdown().await?;

    let spread = |rounds: &[Value], key: &str| {
        Spread::of(
            &rounds
                .iter()
                .filter_map(|r| r[key].as_f64())
                .collect::<Vec<_>>(),
        )
    };
    Ok(json!({
        "scenario": "fanout",
        "transport": common.transport,
        "agents": agents,
        "gateways": gateways.len(),
        "redis": redis_summary(&servers),
        "connect": connected,
        "gatewayOnly": {
            "lastReceiptMs": spread(&direct, "lastReceiptMs"),
            "lost": direct.iter().map(|r| r["lost"].as_u64().unwrap_or(0)).sum::<u64>(),
            "rounds": direct,
        },
        "deploy": {
            "lastReceiptMs": spread(&deploys, "lastReceiptMs"),
            "lost": deploys.iter().map(|r| r["lost"].as_u64().unwrap_or(0)).sum::<u64>(),
            "rounds": deploys,
        },
        "machine": machine(),
    }))
}

/// Connects agents `0..agents` spread over `gateways` and waits until every agent's channel
/// has a subscriber; returns the swarm, its connect phase and the channels.
pub(crate) async fn connect(
    common: &crate::Common,
    fleet: &Fleet,
    gateways: &[Service],
    agents: usize,
    servers: &Servers,
) -> anyhow::Result<(Swarm, Connected, Vec<String>)> {
    let plan = Plan {
        range: 0..agents,
        gateways: gateways.iter().map(|g| g.addr).collect(),
        reconnect: false,
        honour_retry_after: false,
    };
    let (swarm, connected) = Swarm::launch(common, &plan).await?;
    let channels: Vec<String> = fleet.nodes[..agents]
        .iter()
        .map(|n| node_channel(n.id))
        .collect();
    servers.await_subscribed(&channels, SUBSCRIBE_LIMIT).await?;
    Ok((swarm, connected, channels))
}

/// Which Redis the frames went through.
pub(crate) fn redis_summary(servers: &Servers) -> Value {
    json!({
        "cluster": servers.is_cluster(),
        "masters": servers
            .servers()
            .iter()
            .filter(|s| s.role != Role::Replica)
            .count(),
        "publish": servers.node_publish(),
    })
}

/// Last receipt and per-agent latency, both from `start` (epoch µs).
fn round_summary(
    receipts: &[Receipt],
    expected: usize,
    start: u64,
    published: Option<u64>,
) -> Value {
    let latencies: Vec<i64> = receipts.iter().map(|r| r.1 as i64 - start as i64).collect();
    let last = receipts.iter().map(|r| r.1).max().unwrap_or(start);
    let received = distinct(receipts);
    json!({
        "received": received,
        "duplicates": receipts.len() - received,
        "lost": expected.saturating_sub(received),
        "lastReceiptMs": (last - start) as f64 / 1000.0,
        "publishMs": published.map(|p| (p - start) as f64 / 1000.0),
        "perAgentMs": Dist::of_us(&latencies),
    })
}
