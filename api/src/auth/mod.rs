//! Who is calling: agents by node token, operators by operator token or by the fleet page's
//! session cookie. The token formats, node-token checks and the bcrypt cap they share with the
//! gateway are in [`flotilla_shared::auth`].
//!
//! - [`node`]: the [`NodeCaller`] and [`NodeBearer`] extractors of the agent endpoints.
//! - [`operator`]: roles, operator-token verification, issuing tokens, the [`Operator`]
//!   extractor.
//! - [`session`]: fleet-page sessions: the server-side record, the cookie, the operator it
//!   stands for.
//! - [`bootstrap`]: the bootstrap admin token, or the first admin token shown once.

pub mod bootstrap;
pub mod node;
pub mod operator;
pub mod session;

pub use node::{NodeBearer, NodeCaller};
pub use operator::{Operator, Role};
