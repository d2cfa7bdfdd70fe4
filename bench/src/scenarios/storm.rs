//! `storm`: two gateways each holding N agents; one is killed with SIGKILL.
//!
//! Its agents reconnect to the survivor with the agent's backoff (full jitter, first ceiling
//! 1 s). The survivor then holds 2N sockets, so N is at most about 9,500 where a process may
//! hold 20,000 files. The scenario times how long until 99.9% of all agents are connected again, and until
//! 99.9% are shown `wsConnected` by the fleet API on a live gateway, and counts bcrypt runs
//! during the storm three ways: from the services' metrics when they expose one (a metric
//! whose name contains `bcrypt`); exactly, as the tokens whose shared verification record in
//! Redis was rewritten (its TTL went up), which a service does only after a bcrypt run; and as
//! an upper bound, the survivor's CPU time over the time of one bcrypt verification.

use super::{fleet, machine};
use crate::operator::Operator;
use crate::services::{self, metric_sum};
use crate::swarm::{Plan, Swarm};
use flotilla_shared::channels::verified_token_key;
use flotilla_shared::tokens;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Longest the storm may take to settle.
const STORM_LIMIT: Duration = Duration::from_secs(90);
/// Fraction of agents that counts as "back".
const BACK: f64 = 0.999;

/// Options of `storm`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Agents per gateway (0: half the fleet each).
    #[arg(long, default_value_t = 0)]
    pub agents_per_gateway: usize,
    /// Simulate agents before ec64b8f: every failed reconnect doubles the backoff, 503/429
    /// `Retry-After` ignored.
    #[arg(long)]
    pub old_agent_backoff: bool,
    #[command(flatten)]
    pub common: crate::Common,
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<Value> {
    let common = &args.common;
    let fleet = fleet(common, args.agents_per_gateway * 2)?;
    let per_gateway = if args.agents_per_gateway == 0 {
        fleet.nodes.len() / 2
    } else {
        args.agents_per_gateway
    };
    let total = per_gateway * 2;
    let api = services::api(common, &[]).await?;
    let mut victim = services::gateway(common, "bench-gw-victim", &[]).await?;
    let survivor = services::gateway(common, "bench-gw-survivor", &[]).await?;
    let plan = Plan {
        range: 0..total,
        gateways: vec![victim.addr, survivor.addr],
        reconnect: true,
        honour_retry_after: !args.old_agent_backoff,
    };
    let (mut swarm, connected) = Swarm::launch(common, &plan).await?;
    let operator = Operator::new(api.addr)?;
    let shown_before = operator.connected(fleet.environment_id, "").await?;
    let http = reqwest::Client::new();
    let bcrypt_before = bcrypt_count(&http, &[&survivor, &api]).await;
    let cpu_before = survivor.cpu_seconds()?;
    let bcrypt_seconds = one_bcrypt_seconds(common).await?;
    let keys: Vec<String> = fleet.nodes[..total]
        .iter()
        .map(|n| verified_token_key(&tokens::sha256(&n.token)))
        .collect();
    let mut redis = crate::redis_connection(&common.redis_url).await?;
    let ttl_before = ttls(&mut redis, &keys).await?;

    // The survivor's own agents stay connected; 99.9% of the victim's must come back.
    let needed = per_gateway + (per_gateway as f64 * BACK).ceil() as usize;
    let started = Instant::now();
    victim.kill().await?;
    let mut agents_back = None;
    let mut shown_back = None;
    let mut last_fleet_poll = Instant::now() - Duration::from_secs(1);
    while started.elapsed() < STORM_LIMIT && (agents_back.is_none() || shown_back.is_none()) {
        let (now_connected, _, _) = swarm.status().await?;
        if agents_back.is_none() && now_connected >= needed {
            agents_back = Some(started.elapsed().as_secs_f64());
        }
        if shown_back.is_none() && last_fleet_poll.elapsed() >= Duration::from_millis(500) {
            last_fleet_poll = Instant::now();
            if operator
                .connected(fleet.environment_id, &victim.name)
                .await?
                >= needed
            {
                shown_back = Some(started.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let stragglers finish before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (final_connected, reconnects, lost, phases) = swarm.phases().await?;
    let cpu_storm = survivor.cpu_seconds()? - cpu_before;
    let bcrypt_after = bcrypt_count(&http, &[&survivor, &api]).await;
    let ttl_after = ttls(&mut redis, &keys).await?;
    // A service records a verification (resetting its TTL) only right after a bcrypt run.
    let reverified = ttl_before
        .iter()
        .zip(&ttl_after)
        .filter(|(before, after)| after > before)
        .count();
    swarm.shutdown().await?;
    Ok(json!({
        "scenario": "storm",
        "agentsPerGateway": per_gateway,
        "connect": connected,
        "shownConnectedBefore": shown_before,
        "killedGateway": victim.name,
        "agentsBackSeconds": agents_back,
        "shownConnectedSeconds": shown_back,
        "finalConnected": final_connected,
        "reconnects": reconnects,
        "lostForGood": lost,
        "notConnected": {
            "waitingForSlot": phases[0],
            "handshaking": phases[1],
            "backingOff": phases[2],
        },
        "bcrypt": {
            "fromMetrics": bcrypt_before.zip(bcrypt_after).map(|(b, a)| a - b),
            "tokensReverifiedInRedis": reverified,
            "survivorCpuSeconds": cpu_storm,
            "oneVerificationSeconds": bcrypt_seconds,
            "upperBoundFromCpu": (cpu_storm / bcrypt_seconds).floor(),
            "reconnectedTokens": reconnects,
        },
        "machine": machine(),
    }))
}

/// TTLs (seconds) of `keys`.
async fn ttls(
    redis: &mut redis::aio::MultiplexedConnection,
    keys: &[String],
) -> anyhow::Result<Vec<i64>> {
    let mut all = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(5000) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("TTL").arg(key);
        }
        let got: Vec<i64> = pipe.query_async(redis).await?;
        all.extend(got);
    }
    Ok(all)
}

/// Sum of `bcrypt` metrics over `services`, if any exposes one.
async fn bcrypt_count(http: &reqwest::Client, services: &[&services::Service]) -> Option<f64> {
    let mut total = None;
    for s in services {
        if let Ok(metrics) = s.metrics(http).await {
            if let Some(v) = metric_sum(&metrics, "bcrypt") {
                total = Some(total.unwrap_or(0.0) + v);
            }
        }
    }
    total
}

/// Seconds of one bcrypt verification at the cost of the fleet's hash.
async fn one_bcrypt_seconds(common: &crate::Common) -> anyhow::Result<f64> {
    let url = &common.database_url;
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
    let hash: String = sqlx::query_scalar("SELECT token_hash FROM nodes LIMIT 1")
        .fetch_one(&mut db)
        .await?;
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let _ = bcrypt::verify("not-the-secret", &hash);
        started.elapsed().as_secs_f64()
    })
    .await
    .map_err(Into::into)
}
