//! The gateway's liveness: every `gateway.heartbeat_interval_ms` a beat refreshes its liveness
//! key, probes its subscription, and does the housekeeping that rides along.
//!
//! Presence counts only while the liveness key exists, so a crashed gateway's sockets read as
//! gone within `liveness_ttl_ms`. A beat that finds the key missing (Redis restarted and lost
//! its data, or the gateway stalled), or that follows a failed claim, restores the presence of
//! every held socket; releases that failed are retried. After a burst of connects or closes it
//! hands freed memory back (see [`crate::memory`]).

use crate::memory::Trimmer;
use crate::state::GatewayState;
use flotilla_shared::channels::ControlMessage;
use flotilla_shared::presence;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Beats between two reconciliations of the gateway's node sets.
const RECONCILE_EVERY: u64 = 60;

/// Runs a beat every `heartbeat_interval_ms` until `stop` is cancelled.
pub(crate) async fn run(state: GatewayState, stop: CancellationToken) {
    let mut interval =
        tokio::time::interval(Duration::from_millis(state.settings.heartbeat_interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let seq = AtomicU64::new(0);
    let mut trimmer = Trimmer::new(state.settings.trim_after_churn, tokio::time::Instant::now());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {
                beat(&state, seq.fetch_add(1, Ordering::Relaxed)).await;
                trimmer.tick(&state).await;
                crate::presence::flush_subscribe_timeouts(&state);
            }
        }
    }
}

/// One beat: refresh the liveness key (restoring presence if it had vanished or a claim
/// failed, retrying releases that failed, reconciling the node sets every
/// [`RECONCILE_EVERY`] beats — on a cluster after re-indexing the sockets held), probe each
/// subscription connection.
pub async fn beat(state: &GatewayState, seq: u64) {
    // Probed first: the presence work below can take a while after a failover.
    probe(state, seq).await;
    let mut set = redis::cmd("SET");
    set.arg(presence::keys(&state.redis).alive(&state.id))
        .arg(&state.id)
        .arg("PX")
        .arg(state.settings.liveness_ttl_ms)
        .arg("GET");
    match state.redis.query::<Option<String>>(&set).await {
        Ok(previous) => {
            let stale = state.presence_stale.swap(false, Ordering::Relaxed);
            if previous.is_none() || stale {
                crate::presence::restore_all(state).await;
            }
            crate::presence::retry_releases(state).await;
            // At start and now and then: forget nodes left in this gateway's node sets that
            // it no longer holds (see `presence::reconcile`).
            if seq.is_multiple_of(RECONCILE_EVERY) {
                if state.redis.is_cluster() {
                    // A cluster's node sets follow the hashes in a later step and can miss a
                    // node a race took out; put back every socket held that still holds.
                    let held = state
                        .registry
                        .snapshot()
                        .into_iter()
                        .map(|(n, c)| (n, c.id.to_string(), c.transport));
                    if let Err(e) = presence::reindex(&state.redis, &state.id, held).await {
                        tracing::warn!(error = %e, "cannot re-index the node sets");
                    }
                }
                let registry = &state.registry;
                let holds = |node| registry.contains(node);
                match presence::reconcile(&state.redis, &state.id, holds).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(forgotten = n, "node sets reconciled"),
                    Err(e) => tracing::warn!(error = %e, "cannot reconcile the node sets"),
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot refresh the gateway's liveness key"),
    }
}

/// Publishes a probe on each subscription connection's channel; one nobody received makes
/// its connection reconnect.
async fn probe(state: &GatewayState, seq: u64) {
    // On a single Redis only a live connection is probed; a cluster's list holds its live
    // shard connections only, and one shard down must not stop the others' probes.
    if !state.redis.is_cluster() && !state.subscriptions.is_up() {
        return;
    }
    let payload = ControlMessage::Probe { seq }.to_payload();
    let probes = state
        .subscriptions
        .probe_channels()
        .into_iter()
        .map(|channel| {
            let mut publish = redis::cmd(state.redis.node_publish());
            publish.arg(&channel).arg(&payload);
            async move { (state.redis.query::<i64>(&publish).await, channel) }
        });
    for (reached, channel) in futures_util::future::join_all(probes).await {
        // Redis counts the subscribers that got it; none means that subscription is gone.
        if let Ok(0) = reached {
            state.subscriptions.probe_unheard(&channel);
        }
    }
}

/// Deletes the liveness key (after a drain), so any presence left behind reads as gone.
pub(crate) async fn retire(state: &GatewayState) {
    if let Err(e) = state
        .redis
        .query::<()>(redis::cmd("DEL").arg(presence::keys(&state.redis).alive(&state.id)))
        .await
    {
        tracing::warn!(error = %e, "cannot delete the gateway's liveness key");
    }
}
