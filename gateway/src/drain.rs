//! Draining on shutdown: refuse new handshakes (503), close sockets in paced batches with
//! [`Close::Draining`] ("reconnect elsewhere"), and wait for their sessions to finish.
//!
//! Pacing spreads the agents' reconnects over the other gateways instead of one burst.

use crate::state::GatewayState;
use flotilla_shared::close_codes::Close;
use std::time::Duration;

/// Drains every socket; returns once all sessions ended.
pub async fn run(state: &GatewayState) {
    state.draining.cancel();
    let conns = state.registry.snapshot();
    tracing::info!(sockets = conns.len(), "draining");
    let pause = Duration::from_millis(state.settings.drain_pause_ms);
    for (i, batch) in conns.chunks(state.settings.drain_batch.max(1)).enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        for (_, conn) in batch {
            conn.outbox.close(Close::Draining);
        }
    }
    state.sessions.close();
    state.sessions.wait().await;
    tracing::info!("drained");
}
