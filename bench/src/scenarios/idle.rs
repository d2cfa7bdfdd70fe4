//! `idle`: N agents on G gateways; RSS per agent, idle CPU, connect rates.
//!
//! The first connect pass meets a freshly started gateway; after the idle window every socket
//! is closed and reconnected, which measures upgrades on a gateway that has served them once.

use super::{agents_or_all, fleet, machine};
use crate::services::{self, Service};
use crate::stats::Spread;
use crate::swarm::{Plan, Swarm};
use serde_json::json;
use std::time::Duration;

/// Options of `idle`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Agents to connect (0: the whole fleet).
    #[arg(long, default_value_t = 0)]
    pub agents: usize,
    /// Gateways sharing them.
    #[arg(long, default_value_t = 1)]
    pub gateways: usize,
    /// Idle window over which gateway CPU is measured, seconds.
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,
    /// Skip the second connect pass.
    #[arg(long)]
    pub no_reconnect_pass: bool,
    #[command(flatten)]
    pub common: crate::Common,
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let common = &args.common;
    let fleet = fleet(common, args.agents)?;
    let agents = agents_or_all(args.agents, &fleet);
    let gateways = services::gateways(common, args.gateways).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before: Vec<u64> = gateways
        .iter()
        .map(Service::rss_bytes)
        .collect::<Result<_, _>>()?;
    let plan = Plan {
        range: 0..agents,
        gateways: gateways.iter().map(|g| g.addr).collect(),
        reconnect: false,
        honour_retry_after: false,
    };
    let (mut swarm, first) = Swarm::launch(common, &plan).await?;
    // Let allocations settle (presence writes, subscription batches) before reading RSS.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu_before: Vec<f64> = gateways
        .iter()
        .map(Service::cpu_seconds)
        .collect::<Result<_, _>>()?;
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let cpu_after: Vec<f64> = gateways
        .iter()
        .map(Service::cpu_seconds)
        .collect::<Result<_, _>>()?;
    let after: Vec<u64> = gateways
        .iter()
        .map(Service::rss_bytes)
        .collect::<Result<_, _>>()?;
    let (still_connected, _, _) = swarm.status().await?;
    let http = reqwest::Client::new();
    let mut held = Vec::new();
    for g in &gateways {
        let metrics = g.metrics(&http).await?;
        held.push(
            metrics
                .get("flotilla_gateway_connections")
                .copied()
                .unwrap_or(0.0) as u64,
        );
    }
    let per_gateway: Vec<serde_json::Value> = gateways
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let delta = after[i].saturating_sub(before[i]);
            let n = held[i].max(1);
            json!({
                "id": g.name,
                "connections": held[i],
                "rssBeforeBytes": before[i],
                "rssAfterBytes": after[i],
                "rssPerAgentBytes": delta as f64 / n as f64,
                "rssPerAgentKiB": delta as f64 / n as f64 / 1024.0,
                "idleCpuPercentOfOneCore":
                    (cpu_after[i] - cpu_before[i]) / args.idle_secs.max(1) as f64 * 100.0,
            })
        })
        .collect();
    let per_agent: Vec<f64> = per_gateway
        .iter()
        .filter_map(|g| g["rssPerAgentKiB"].as_f64())
        .collect();
    let second = if args.no_reconnect_pass {
        None
    } else {
        Some(swarm.reconnect_all().await?)
    };
    swarm.shutdown().await?;
    Ok(json!({
        "scenario": "idle",
        "transport": common.transport,
        "agents": agents,
        "gateways": gateways.len(),
        "connectedAfterIdle": still_connected,
        "heldByGateways": held.iter().sum::<u64>(),
        "rssPerAgentKiB": Spread::of(&per_agent),
        "firstConnect": first,
        "warmReconnect": second,
        "perGateway": per_gateway,
        "machine": machine(),
    }))
}
