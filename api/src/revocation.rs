//! Live operator streams (fleet events, log lines, tap events) outlast the request that
//! authenticated them, so each watches its credential: it re-checks at once when any
//! credential is revoked (on this api or, through Redis, on another) and every
//! `api.live_recheck_ms` regardless, and ends when its token is revoked or its session ended.

use crate::auth::Operator;
use crate::state::AppState;
use std::future::Future;
use std::time::Duration;

/// Resolves once `op`'s credential no longer stands, or can no longer be checked (the viewer
/// reconnects and is authenticated again). Listens for revocations from the moment it is
/// called, before the stream starts, and checks once straight away, so a revocation between
/// the request's authentication and the stream's start is not missed.
pub fn lapsed(state: AppState, op: Operator) -> impl Future<Output = ()> + Send + 'static {
    let mut notices = state.fleet_events.revocations();
    async move {
        let period = Duration::from_millis(state.settings.api.live_recheck_ms);
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            match op.still_stands(&state).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "a live stream's credential cannot be checked; it ends");
                    return;
                }
            }
            tokio::select! {
                changed = notices.changed() => {
                    if changed.is_err() {
                        // The api is going away; the stream ends with it.
                        std::future::pending::<()>().await;
                    }
                }
                _ = recheck.tick() => {}
            }
        }
    }
}
