//! `flotilla-agent`: parse flags and environment, run the agent until SIGTERM, re-execute
//! after a self-update.

use flotilla_agent::config::{ConfigError, LogFormat};
use flotilla_agent::{Config, Outcome};
use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let config = match Config::from_process() {
        Ok(config) => config,
        // `--help` and `--version` (status 0), or a malformed command line (status 2).
        Err(ConfigError::Usage(e)) => e.exit(),
        Err(e) => {
            eprintln!("flotilla-agent: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            flotilla_shared::shutdown::signal().await;
            tracing::info!("shutting down");
            trigger.cancel();
        });
        flotilla_agent::run(config, shutdown).await
    });
    drop(runtime);
    match outcome {
        Ok(Outcome::Stopped) => ExitCode::SUCCESS,
        Ok(Outcome::ReExec(target)) => {
            let err = std::process::Command::new(&target.exe)
                .args(&target.args)
                .exec();
            tracing::error!(exe = %target.exe.display(), error = %err, "re-exec failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("flotilla-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr: text, coloured only on a terminal (and without `NO_COLOR`), or one JSON
/// object per line.
fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(colour).init()
        }
    }
}
