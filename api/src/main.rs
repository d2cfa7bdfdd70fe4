//! `flotilla-api`: reads settings, binds, serves until SIGTERM/SIGINT.
//! `flotilla-api healthcheck` probes a running api's `/readyz` (for container health checks).
//! `flotilla-api ensure-environment` creates the bootstrap environment and its enrollment token,
//! then exits (the compose file's demo profile).

use anyhow::Context;
use flotilla_shared::settings::Settings;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    let command = std::env::args().nth(1);
    if command.as_deref() == Some("healthcheck") {
        flotilla_shared::healthcheck::run(settings.api.listen, "/readyz").await;
    }
    flotilla_shared::telemetry::init(&settings.log);
    if command.as_deref() == Some("ensure-environment") {
        return flotilla_api::ensure_environment(&settings).await;
    }
    let listener = flotilla_shared::http_server::listen(settings.api.listen)
        .with_context(|| format!("binding api.listen {}", settings.api.listen))?;
    let api = flotilla_api::Api::build(settings).await?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        flotilla_shared::shutdown::signal().await;
        tracing::info!("shutting down");
        trigger.cancel();
    });
    api.serve(listener, shutdown).await
}
