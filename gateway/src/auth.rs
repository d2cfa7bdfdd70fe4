//! Who is connecting: the node token of a push connection (`Authorization: Bearer`), checked
//! against the node's stored credentials within the source address's failure budget
//! ([`flotilla_shared::auth::node`]). The token is never logged.

use crate::error::Rejection;
use crate::state::GatewayState;
use axum::http::HeaderMap;
use flotilla_shared::auth::bearer;
use flotilla_shared::auth::node::{AuthError, AuthedNode, BudgetedError};
use std::net::IpAddr;

/// The node whose token the request carries: 401 for a missing, malformed, unknown or revoked
/// token; 429 when `ip` is over its failure budget and the token would need bcrypt; 503 when
/// bcrypt is saturated or the database cannot be asked.
pub(crate) async fn authenticate(
    state: &GatewayState,
    headers: &HeaderMap,
    ip: Option<IpAddr>,
) -> Result<AuthedNode, Rejection> {
    let token = bearer(headers).ok_or(Rejection::Unauthorized)?;
    state
        .auth
        .authenticate_budgeted(token, ip, &state.auth_failures)
        .await
        .map_err(|e| match e {
            BudgetedError::OverBudget(over) => Rejection::TooManyFailures(over),
            BudgetedError::Auth(AuthError::Invalid) => Rejection::Unauthorized,
            BudgetedError::Auth(AuthError::Busy) => Rejection::Busy,
            BudgetedError::Auth(AuthError::Database(e)) => {
                tracing::warn!(error = %e, "database unavailable during a handshake");
                Rejection::Unavailable
            }
        })
}
