//! Admitting a push connection of either transport ([`admit`]), and `GET /api/agent/ws`:
//! admit, then upgrade.
//!
//! Admission happens before the upgrade: 503 while the gateway is draining or too many
//! handshakes are in flight; then the token ([`crate::auth`]: 401, 429, 503); then 429 when
//! the node reconnects too often.

use crate::error::Rejection;
use crate::metrics::Counters;
use crate::session::Link;
use crate::state::GatewayState;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use flotilla_shared::auth::node::AuthedNode;
use flotilla_shared::client_address::client_address;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A socket's read buffer: agents send little more than pongs (6 bytes); a larger frame grows it.
const READ_BUFFER: usize = 64;
/// Bound on bytes buffered for a socket that cannot take them (the outbox bounds the rest).
const MAX_WRITE_BUFFER: usize = 1 << 20;

/// The upgrade handler.
pub(crate) async fn upgrade(
    State(state): State<GatewayState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let node = match admit(&state, peer, &headers).await {
        Ok(node) => node,
        Err(refusal) => return refusal,
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    let max_message = state.settings.max_message_bytes;
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |ws| {
            let sessions = state.sessions.clone();
            sessions.track_future(crate::session::run(state, node, Link::Ws(Box::new(ws))))
        })
}

/// Admits a push connection of either transport from `peer` (see [`accept`]); a refusal is
/// counted and answered as the response to send.
#[tracing::instrument(name = "handshake", skip_all)]
pub(crate) async fn admit(
    state: &GatewayState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<AuthedNode, Response> {
    let ip = client_ip(state, peer, headers);
    accept(state, headers, ip).await.map_err(|rejection| {
        Counters::inc(&state.counters.handshakes_rejected);
        rejection.into_response()
    })
}

/// The client's address: the peer, or the last `X-Forwarded-For` hop behind a trusted
/// balancer (`gateway.trust_forwarded_for`).
fn client_ip(state: &GatewayState, peer: SocketAddr, headers: &HeaderMap) -> Option<IpAddr> {
    client_address(Some(peer.ip()), headers, state.settings.trust_forwarded_for)
}

/// Admits a push connection: not draining, a handshake slot, a valid token within the
/// address's failure budget, and the node within its reconnect limit.
async fn accept(
    state: &GatewayState,
    headers: &HeaderMap,
    ip: Option<IpAddr>,
) -> Result<AuthedNode, Rejection> {
    if state.draining.is_cancelled() {
        return Err(Rejection::Draining);
    }
    // A burst (a gateway died, its agents arrive at once) queues briefly; only a sustained
    // overload is refused.
    let queue = Duration::from_millis(state.settings.handshake_queue_ms);
    let _permit = tokio::time::timeout(queue, state.handshakes.acquire())
        .await
        .map_err(|_| Rejection::Busy)?
        .map_err(|_| Rejection::Busy)?;
    let node = crate::auth::authenticate(state, headers, ip).await?;
    if let Some(reconnects) = &state.reconnects {
        reconnects.hit(node.node_id).map_err(|over| {
            tracing::info!(node_id = %node.node_id, "refused a reconnect over the limit");
            Rejection::TooManyReconnects(over)
        })?;
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;
    use flotilla_shared::settings::Settings;

    async fn state(max_pending: &str) -> GatewayState {
        let env = [
            ("FLOTILLA__GATEWAY__MAX_PENDING_HANDSHAKES", max_pending),
            ("FLOTILLA__GATEWAY__HANDSHAKE_QUEUE_MS", "20"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let settings = Settings::load_from(None, env).unwrap();
        crate::Gateway::build(settings)
            .await
            .unwrap()
            .state()
            .clone()
    }

    fn with_token() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer vf_node_x".parse().unwrap());
        h
    }

    #[tokio::test]
    async fn handshakes_over_the_cap_and_while_draining_get_503_before_any_database_work() {
        let state = state("2").await;
        let held = state.handshakes.try_acquire_many(2).unwrap();
        assert!(matches!(
            accept(&state, &with_token(), None).await,
            Err(Rejection::Busy)
        ));
        drop(held);
        // Within the cap, a malformed token is refused without asking the database.
        assert!(matches!(
            accept(&state, &with_token(), None).await,
            Err(Rejection::Unauthorized)
        ));
        state.draining.cancel();
        assert!(matches!(
            accept(&state, &with_token(), None).await,
            Err(Rejection::Draining)
        ));
    }
}
