//! Postgres pool construction.

use crate::settings::DatabaseSettings;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use std::str::FromStr;
use std::time::Duration;

/// Builds a pool without connecting, so a service starts (and answers 503) while Postgres is down.
pub fn pool(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(settings.url.expose())?;
    let ping_idle = Duration::from_millis(settings.ping_idle_ms);
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        // sqlx would ping every connection it hands out: a round trip per query. A connection
        // that answered within `ping_idle_ms` is alive; an outage or restart takes longer than
        // that, so a connection that lived through one is still checked.
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            Box::pin(async move {
                if meta.idle_for < ping_idle {
                    return Ok(true);
                }
                match conn.ping().await {
                    Ok(()) => Ok(true),
                    Err(error) => {
                        tracing::info!(%error, "dropped a pooled connection that failed its ping");
                        Ok(false)
                    }
                }
            })
        })
        .connect_lazy_with(options))
}

/// The schema migrations, embedded at build time (no database needed to build).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Whether an error means the database cannot be reached or cannot serve now (an outage, a
/// restart, no connection to spare), rather than something wrong with the statement: the
/// request may succeed if retried later.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        // The conversation broke off: e.g. a proxy in front of Postgres closed the connection.
        | sqlx::Error::Protocol(_) => true,
        // SQLSTATE classes 08 (connection exception), 53 (insufficient resources, e.g. too
        // many connections) and 57P (shutting down, starting up).
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("53") || code.starts_with("57P")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_unavailable_and_statement_errors_are_not() {
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::Io(std::io::Error::other("connection reset")),
            sqlx::Error::Protocol("unexpected response from SSLRequest".into()),
        ] {
            assert!(is_unavailable(&e), "{e}");
        }
        for e in [
            sqlx::Error::RowNotFound,
            sqlx::Error::ColumnNotFound("id".into()),
            sqlx::Error::InvalidArgument("x".into()),
        ] {
            assert!(!is_unavailable(&e), "{e}");
        }
    }
}
