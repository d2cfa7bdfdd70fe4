//! The node calling an agent endpoint: its bearer token, checked against the node's stored
//! credentials within its address's failure budget (see [`flotilla_shared::auth::node`]).

use crate::error::ApiError;
use crate::extract::client_ip;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use flotilla_shared::auth::node::{self, AuthError, AuthedNode, BudgetedError, NodeCredentials};
use flotilla_shared::auth::{bearer, tokens};
use std::net::IpAddr;

/// The node calling an agent endpoint.
#[derive(Debug, Clone, Copy)]
pub struct NodeCaller(pub AuthedNode);

impl FromRequestParts<AppState> for NodeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let bearer = NodeBearer::from_request_parts(parts, state).await?;
        Ok(NodeCaller(bearer.check(state).await?))
    }
}

/// A node's bearer token, not yet checked, and where the request came from: for routes that
/// read the node's credentials together with their own data
/// ([`authenticate`](Self::authenticate)).
pub struct NodeBearer {
    token: String,
    ip: Option<IpAddr>,
}

impl FromRequestParts<AppState> for NodeBearer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or(ApiError::Unauthorized("Unauthorized"))?;
        Ok(NodeBearer {
            token: token.to_owned(),
            ip: client_ip(parts, state),
        })
    }
}

impl NodeBearer {
    /// For a well-formed token: its lookup id and the digest a valid token's row carries, so
    /// a statement on the row matching both proves the token as a full check would.
    pub fn lookup_and_digest(&self) -> Option<(&str, [u8; 32])> {
        let lookup = node::lookup_id(&self.token)?;
        Some((lookup, tokens::node_digest(&self.token)))
    }

    /// Authenticates the token against its stored credentials.
    pub async fn check(&self, state: &AppState) -> Result<AuthedNode, ApiError> {
        let auth = &state.node_auth;
        let (node, ()) = self
            .authenticate(state, |lookup| async move {
                let row = auth.read_lookup(&lookup).await?;
                Ok(row.map(|r| (r, ())))
            })
            .await?;
        Ok(node)
    }

    /// Authenticates the token against the credentials `read` returns for its lookup id, with
    /// whatever else `read` fetched in the same query (`None`: no such node). The data never
    /// leaves here unless the token is valid.
    pub async fn authenticate<T, F, Fut>(
        &self,
        state: &AppState,
        read: F,
    ) -> Result<(AuthedNode, T), ApiError>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<Option<(NodeCredentials, T)>, sqlx::Error>>,
    {
        // A malformed token reads nothing and fails (and counts) in the check.
        let row = match node::lookup_id(&self.token) {
            Some(lookup) => read(lookup.to_owned())
                .await
                .map_err(|e| ApiError::from(AuthError::Database(e)))?,
            None => None,
        };
        let (credentials, data) = row.unzip();
        let node = state
            .node_auth
            .verify_budgeted(
                &self.token,
                credentials.as_ref(),
                self.ip,
                &state.limits.auth_failures,
            )
            .await
            .map_err(|e| match e {
                BudgetedError::OverBudget(over) => ApiError::from(over),
                BudgetedError::Auth(e) => e.into(),
            })?;
        // A verified node was read with its data.
        let data = data.ok_or(ApiError::Unauthorized("Unauthorized"))?;
        Ok((node, data))
    }
}
