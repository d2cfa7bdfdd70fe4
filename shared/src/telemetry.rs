//! Tracing set-up shared by the binaries.

use crate::settings::{LogFormat, LogSettings};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `RUST_LOG` overrides the configured level.
pub fn init(log: &LogSettings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(log.level.as_str()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // A second init (tests starting several services in one process) is harmless.
    let _ = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
