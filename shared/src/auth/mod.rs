//! Authentication shared by the api and the gateway: what a token looks like, how a node's is
//! checked, and the one cap on bcrypt work.
//!
//! - [`tokens`]: node, enrollment and operator token formats, generation and hashing.
//! - [`bearer`]: the bearer token of an `Authorization` header.
//! - [`node`]: node-token authentication: a row read and a digest, no cache.
//! - [`bcrypt_gate`]: the one cap on concurrent bcrypt work in a process.

pub mod bcrypt_gate;
pub mod bearer;
pub mod node;
pub mod tokens;

pub use bearer::bearer;
