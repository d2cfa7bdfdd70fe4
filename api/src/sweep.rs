//! Background upkeep: node health, sample-request expiry and expired sessions, with no caller
//! needed.

use crate::state::AppState;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What one sweep changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Nodes newly marked UNREACHABLE.
    pub unreachable: u64,
    /// Sample requests newly EXPIRED.
    pub expired: u64,
}

/// Runs [`sweep_once`] on the configured interval until shutdown.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(
        state.settings.api.health_sweep_interval_ms,
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = sweep_once(&state).await {
                    tracing::warn!(error = %e, "health sweep failed; will retry");
                }
            }
        }
    }
}

/// One sweep: nodes silent for longer than poll interval × threshold become UNREACHABLE,
/// pending sample requests past their expiry become EXPIRED.
#[tracing::instrument(name = "sweep", skip_all)]
pub async fn sweep_once(state: &AppState) -> Result<SweepReport, sqlx::Error> {
    let threshold = i64::from(state.settings.api.unhealthy_threshold);
    // Bound as int8 (Postgres would infer int4 from the column), so a large threshold cannot
    // overflow the product.
    let turned: Vec<uuid::Uuid> = sqlx::query_scalar!(
        "UPDATE nodes SET status = 'UNREACHABLE'
         WHERE status = 'HEALTHY'
           AND coalesce(last_seen, enrolled_at)
               < now() - make_interval(secs => (SELECT poll_interval_ms FROM settings) * $1 / 1000.0)
         RETURNING id",
        threshold as _
    )
    .fetch_all(&state.pool)
    .await?;
    // Heartbeats announce only visible changes, so the page learns of these from here.
    crate::fleet_events::nodes_changed(&state.redis, &turned, "status");
    let unreachable = turned.len() as u64;
    let expired = sqlx::query!(
        "UPDATE sample_requests SET status = 'EXPIRED', completed_at = now()
         WHERE status = 'PENDING' AND expires_at <= now()"
    )
    .execute(&state.pool)
    .await?
    .rows_affected();
    // Expired sessions already fail every check; this only keeps the table small.
    crate::auth::session::purge_expired(&state.pool).await?;
    if unreachable > 0 {
        tracing::info!(count = unreachable, "nodes marked UNREACHABLE");
    }
    Ok(SweepReport {
        unreachable,
        expired,
    })
}
