//! `restart`: one gateway holding N agents is killed with SIGKILL, Redis is flushed, and a new
//! gateway process starts on the same address.
//!
//! Nothing is pre-seeded: the new process has no state of its own, and the services' Redis
//! database is emptied (FLUSHDB, on a cluster on every master: point the bench at a Redis of its
//! own), as after a Redis that lost its data. The agents reconnect with the agent's backoff. The
//! scenario times how long until 99.9% of them are connected again and until 99.9% are shown
//! `wsConnected` by the fleet API, both from the kill and from the new process's start, and
//! counts the new gateway's and the api's bcrypt runs.

use super::storm::{recovery, BACK};
use super::{agents_or_all, fleet, machine};
use crate::operator::Operator;
use crate::services::{self, bcrypt_count};
use crate::swarm::{Plan, Swarm};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Options of `restart`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Agents on the gateway (0: the whole fleet; at most about 19,000 for one process).
    #[arg(long, default_value_t = 0)]
    pub agents: usize,
    /// How long the gateway stays down before the new process starts, milliseconds.
    #[arg(long, default_value_t = 500)]
    pub down_ms: u64,
    #[command(flatten)]
    pub common: crate::Common,
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<Value> {
    let common = &args.common;
    let fleet = fleet(common, args.agents)?;
    let agents = agents_or_all(args.agents, &fleet);
    let api = services::api(common, &[]).await?;
    let mut old = services::gateway(common, "bench-gw-old", &[]).await?;
    let plan = Plan {
        range: 0..agents,
        gateways: vec![old.addr],
        reconnect: true,
        honour_retry_after: true,
    };
    let (mut swarm, connected) = Swarm::launch(common, &plan).await?;
    let operator = Operator::new(api.addr)?;
    let http = reqwest::Client::new();
    let api_bcrypt_before = bcrypt_count(&http, &[&api]).await;

    let needed = (agents as f64 * BACK).ceil() as usize;
    let killed = Instant::now();
    old.kill().await;
    // On a cluster the handle sends it to every master.
    common.redis()?.query::<()>(&redis::cmd("FLUSHDB")).await?;
    tokio::time::sleep(Duration::from_millis(args.down_ms)).await;
    let listen = old.addr.to_string();
    let new = services::gateway(
        common,
        "bench-gw-new",
        &[("FLOTILLA__GATEWAY__LISTEN", listen.as_str())],
    )
    .await?;
    let serving = killed.elapsed().as_secs_f64();
    let back = recovery(
        &mut swarm,
        &operator,
        fleet.environment_id,
        &old.name,
        needed,
        killed,
    )
    .await?;
    let cpu = new.cpu_seconds()?;
    let gateway_bcrypt = bcrypt_count(&http, &[&new]).await;
    let api_bcrypt = api_bcrypt_before
        .zip(bcrypt_count(&http, &[&api]).await)
        .map(|(before, after)| after - before);
    swarm.shutdown().await?;
    let since_start = |t: Option<f64>| t.map(|t| t - serving);
    Ok(json!({
        "scenario": "restart",
        "transport": common.transport,
        "agents": agents,
        "connect": connected,
        "redisFlushed": true,
        "newGatewayServingSeconds": serving,
        "agentsBackSeconds": back.agents,
        "agentsBackSecondsAfterStart": since_start(back.agents),
        "shownConnectedSeconds": back.shown,
        "shownConnectedSecondsAfterStart": since_start(back.shown),
        "finalConnected": back.connected,
        "reconnects": back.reconnects,
        "lostForGood": back.lost,
        "notConnected": back.not_connected(),
        "newGatewayCpuSeconds": cpu,
        "bcrypt": {
            "newGateway": gateway_bcrypt,
            "api": api_bcrypt,
        },
        "machine": machine(),
    }))
}
