//! Announcing and withdrawing this gateway's sockets in Redis (see
//! [`flotilla_shared::presence`]), and telling other gateways to close older sockets.

use crate::metrics::Counters;
use crate::registry::Conn;
use crate::state::GatewayState;
use flotilla_shared::channels::{node_channel, ControlMessage, PresenceEvent};
use flotilla_shared::close_codes::Close;
use flotilla_shared::presence::{self, Presence};
use futures_util::StreamExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Restores and retried releases run this many at once.
const CONCURRENCY: usize = 64;

fn presence_of(state: &GatewayState, conn: &Conn) -> Presence {
    Presence {
        gateway_id: state.id.clone(),
        conn_id: conn.id.to_string(),
        since_ms: conn.since_ms,
        transport: conn.transport,
    }
}

fn fleet_event(state: &GatewayState, node_id: Uuid, connected: bool) -> String {
    let event = PresenceEvent {
        node_id,
        connected,
        gateway_id: state.id.clone(),
    };
    serde_json::to_string(&event).expect("presence events serialise")
}

/// How often subscription timeouts are logged at most: one line per connection would flood
/// the log in a connect burst on a saturated Redis, and the metric counts every one.
pub(crate) const SUBSCRIBE_TIMEOUT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Logs the subscription timeouts counted since the last such line.
fn warn_subscribe_timeouts(count: u64) {
    tracing::warn!(
        count,
        "subscribing node channels timed out as their connections opened; the subscriptions \
         go on (sent again by a resync or reconnect if never confirmed), and pushes published \
         before they are confirmed reach those agents with their next poll"
    );
}

/// Logs subscription timeouts held back since the last line, once one is due (called by the
/// liveness beat, so a burst's last ones are not left unreported).
pub(crate) fn flush_subscribe_timeouts(state: &GatewayState) {
    if let Some(count) = state.subscribe_timeouts.flush(Instant::now()) {
        warn_subscribe_timeouts(count);
    }
}

/// A new socket of `node_id` opened: subscribe its channel, claim its presence, and close the
/// older socket wherever it is.
pub(crate) async fn announce(state: &GatewayState, node_id: Uuid, conn: &Conn) {
    // Subscribed before presence is claimed: once the node reads as connected, pushes arrive.
    if tokio::time::timeout(
        state.redis.timeout(),
        state.subscriptions.subscribe(node_id),
    )
    .await
    .is_err()
    {
        Counters::inc(&state.counters.subscribe_timeouts);
        if let Some(count) = state.subscribe_timeouts.note(Instant::now()) {
            warn_subscribe_timeouts(count);
        }
    }
    let me = presence_of(state, conn);
    let event = fleet_event(state, node_id, true);
    match presence::claim(&state.redis, node_id, &me, Some(&event)).await {
        // An older socket on this gateway was already closed through the registry.
        Ok(Some(previous)) if previous.gateway_id != state.id => {
            let supersede = ControlMessage::Supersede {
                conn: me.conn_id.clone(),
            };
            let mut cmd = redis::cmd(state.redis.node_publish());
            cmd.arg(node_channel(node_id)).arg(supersede.to_payload());
            if let Err(e) = state.redis.query::<()>(&cmd).await {
                tracing::warn!(%node_id, error = %e, "could not tell the older socket's gateway");
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(%node_id, error = %e, "could not record the node's presence; retrying later");
            state.presence_stale.store(true, Ordering::Relaxed);
        }
    }
}

/// A socket closed: release its presence unless a newer socket holds it. If Redis cannot be
/// asked, the release is kept and retried by the liveness beat, so the node does not read as
/// connected through a socket that is gone.
pub(crate) async fn withdraw(state: &GatewayState, node_id: Uuid, conn: &Conn) {
    if !release(state, node_id, conn.id).await {
        state.unreleased.lock().unwrap().push((node_id, conn.id));
    }
}

/// Retries the releases that failed while Redis was unreachable.
pub(crate) async fn retry_releases(state: &GatewayState) {
    let pending = std::mem::take(&mut *state.unreleased.lock().unwrap());
    if pending.is_empty() {
        return;
    }
    let failed: Vec<_> = futures_util::stream::iter(pending)
        .map(|(node_id, conn_id)| async move {
            (node_id, conn_id, release(state, node_id, conn_id).await)
        })
        .buffer_unordered(CONCURRENCY)
        .filter_map(|(node_id, conn_id, done)| async move { (!done).then_some((node_id, conn_id)) })
        .collect()
        .await;
    state.unreleased.lock().unwrap().extend(failed);
}

/// Releases the presence and announces the disconnect; false when Redis could not be asked.
async fn release(state: &GatewayState, node_id: Uuid, conn_id: Uuid) -> bool {
    let event = fleet_event(state, node_id, false);
    match presence::release(&state.redis, node_id, &conn_id.to_string(), Some(&event)).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(%node_id, error = %e, "could not release the node's presence; retrying later");
            false
        }
    }
}

/// Re-asserts every held socket's presence (after Redis lost its data, or a claim failed); a
/// socket whose node another socket took in the meantime is closed as superseded.
pub(crate) async fn restore_all(state: &GatewayState) {
    let conns = state.registry.snapshot();
    if conns.is_empty() {
        return;
    }
    let results = futures_util::stream::iter(conns)
        .map(|(node_id, conn)| async move {
            let held = presence::restore(&state.redis, node_id, &presence_of(state, &conn)).await;
            (node_id, conn, held)
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let (mut restored, mut failed) = (0usize, 0usize);
    for (node_id, conn, held) in results {
        match held {
            // A socket that closed while its restore was in flight may have been released
            // before the restore wrote it back; the registry forgets a socket before its release,
            // so checking after the write catches every such case.
            Ok(true) if state.registry.with(node_id, |c| c.id) != Some(conn.id) => {
                withdraw(state, node_id, &conn).await;
            }
            Ok(true) => restored += 1,
            Ok(false) => conn.outbox.close(Close::Superseded),
            Err(_) => failed += 1,
        }
    }
    if failed > 0 {
        state.presence_stale.store(true, Ordering::Relaxed);
    }
    tracing::info!(restored, failed, "restored presence");
}
