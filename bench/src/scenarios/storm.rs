//! `storm`: two gateways each holding N agents; one is killed with SIGKILL.
//!
//! Its agents reconnect to the survivor with the agent's backoff (full jitter, first ceiling
//! 1 s). The survivor then holds 2N sockets, so N is at most about 9,500 where a process may
//! hold 20,000 files. The scenario times how long until 99.9% of all agents are connected again, and until
//! 99.9% are shown `wsConnected` by the fleet API on a live gateway, the survivor's CPU time,
//! and the bcrypt runs of the survivor and the api during the storm (their metrics).

use super::{fleet, machine};
use crate::operator::Operator;
use crate::services::{self, bcrypt_count};
use crate::swarm::{Plan, Swarm};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Longest the storm may take to settle.
const STORM_LIMIT: Duration = Duration::from_secs(90);
/// Fraction of agents that counts as "back".
pub(crate) const BACK: f64 = 0.999;

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

    // The survivor's own agents stay connected; 99.9% of the victim's must come back.
    let needed = per_gateway + (per_gateway as f64 * BACK).ceil() as usize;
    let started = Instant::now();
    victim.kill().await;
    let back = recovery(
        &mut swarm,
        &operator,
        fleet.environment_id,
        &victim.name,
        needed,
        started,
    )
    .await?;
    let cpu_storm = survivor.cpu_seconds()? - cpu_before;
    let bcrypt_after = bcrypt_count(&http, &[&survivor, &api]).await;
    swarm.shutdown().await?;
    Ok(json!({
        "scenario": "storm",
        "transport": common.transport,
        "agentsPerGateway": per_gateway,
        "connect": connected,
        "shownConnectedBefore": shown_before,
        "killedGateway": victim.name,
        "agentsBackSeconds": back.agents,
        "shownConnectedSeconds": back.shown,
        "finalConnected": back.connected,
        "reconnects": back.reconnects,
        "lostForGood": back.lost,
        "notConnected": back.not_connected(),
        "survivorCpuSeconds": cpu_storm,
        "bcrypt": bcrypt_before.zip(bcrypt_after).map(|(b, a)| a - b),
        "machine": machine(),
    }))
}

/// How a swarm came back after losing its gateway.
pub(crate) struct Recovery {
    /// Seconds until the agents needed were connected, if they were within the limit.
    pub agents: Option<f64>,
    /// Seconds until as many were shown `wsConnected`, if they were.
    pub shown: Option<f64>,
    /// Agents connected once the stragglers had two more seconds.
    pub connected: usize,
    /// Reconnects made.
    pub reconnects: usize,
    /// Agents that gave up.
    pub lost: usize,
    /// Agents waiting for a handshake slot, handshaking and backing off at the end.
    pub phases: [usize; 3],
}

impl Recovery {
    /// The agents not connected at the end, by what they were doing.
    pub(crate) fn not_connected(&self) -> Value {
        json!({
            "waitingForSlot": self.phases[0],
            "handshaking": self.phases[1],
            "backingOff": self.phases[2],
        })
    }
}

/// Seconds from `started` until `needed` agents are connected, and until as many are shown
/// `wsConnected` (on a gateway other than `except_gateway`) by the fleet API (`None` for what
/// did not happen within [`STORM_LIMIT`]); then, after two more seconds for stragglers, where
/// every agent stands.
pub(crate) async fn recovery(
    swarm: &mut Swarm,
    operator: &Operator,
    environment: uuid::Uuid,
    except_gateway: &str,
    needed: usize,
    started: Instant,
) -> anyhow::Result<Recovery> {
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
            if operator.connected(environment, except_gateway).await? >= needed {
                shown_back = Some(started.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (connected, reconnects, lost, phases) = swarm.phases().await?;
    Ok(Recovery {
        agents: agents_back,
        shown: shown_back,
        connected,
        reconnects,
        lost,
        phases,
    })
}
