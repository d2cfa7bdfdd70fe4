//! Live operator streams (fleet events, log lines, tap events) outlast the request that
//! authenticated them, so each watches its credential: it re-checks at once when any
//! credential is revoked (on this api or, through Redis, on another) and every
//! `api.live_recheck_ms` regardless, and ends when its token is revoked or its session ended.

use crate::extract::Operator;
use crate::state::AppState;
use std::time::Duration;

/// Resolves once `op`'s credential no longer stands. A database that cannot be asked keeps
/// the stream going (the next check decides).
pub async fn lapsed(state: AppState, op: Operator) {
    let mut notices = state.fleet_events.revocations();
    let mut recheck =
        tokio::time::interval(Duration::from_millis(state.settings.api.live_recheck_ms));
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    recheck.tick().await;
    loop {
        tokio::select! {
            changed = notices.changed() => {
                if changed.is_err() {
                    // The api is going away; the stream ends with it.
                    std::future::pending::<()>().await;
                }
            }
            _ = recheck.tick() => {}
        }
        match op.still_stands(&state).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => tracing::debug!(error = %e, "could not re-check a live stream's credential"),
        }
    }
}
