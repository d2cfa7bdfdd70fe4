//! The scenarios; each returns its JSON summary.
//!
//! # Layout
//! - [`idle`]: RSS per agent, idle CPU and connect rates.
//! - [`fanout`], [`latency`]: one frame to every agent; single pushes and single-node deploys.
//! - [`pubsub_cpu`]: Redis CPU per push on each server, sharded against classic pub/sub.
//! - [`storm`], [`restart`]: a gateway killed under its agents; a restart with Redis flushed.
//! - [`poll`], [`steady`]: config polls back to back; a fleet polling on its interval.
//! - [`browse`], [`page`]: the fleet API and the console over a large fleet.

pub mod browse;
pub mod fanout;
pub mod idle;
pub mod latency;
pub mod page;
pub mod poll;
pub mod pubsub_cpu;
pub mod restart;
pub mod steady;
pub mod storm;

use crate::fleet::Fleet;
use crate::swarm::Receipt;
use std::collections::HashSet;

/// Loads the fleet and checks it holds at least `needed` nodes.
pub(crate) fn fleet(common: &crate::Common, needed: usize) -> anyhow::Result<Fleet> {
    let fleet = Fleet::load(&common.fleet)?;
    anyhow::ensure!(
        fleet.nodes.len() >= needed,
        "the fleet has {} nodes, the scenario needs {needed}: run `seed --nodes {needed}`",
        fleet.nodes.len()
    );
    Ok(fleet)
}

/// `--agents` or, when 0, the whole fleet.
pub(crate) fn agents_or_all(agents: usize, fleet: &Fleet) -> usize {
    if agents == 0 {
        fleet.nodes.len()
    } else {
        agents
    }
}

/// Distinct agents among `receipts`.
pub(crate) fn distinct(receipts: &[Receipt]) -> usize {
    receipts.iter().map(|r| r.0).collect::<HashSet<_>>().len()
}

/// The machine and its load, recorded in every summary.
pub(crate) fn machine() -> serde_json::Value {
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadAverage": crate::services::load_average(),
    })
}
