//! The termination signals every Flotilla binary stops on.

use std::future::Future;
use tokio::signal::unix::{signal as listen, SignalKind};

/// Resolves on the next SIGTERM or SIGINT, logging which arrived. The handlers are installed
/// when this is called, so a signal that arrives before the first poll is not missed.
///
/// # Panics
/// Outside a tokio runtime with signals enabled, or if the handlers cannot be installed.
pub fn signal() -> impl Future<Output = ()> {
    let mut term = listen(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = listen(SignalKind::interrupt()).expect("SIGINT handler installs");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn send(name: &str) {
        let status = tokio::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(std::process::id().to_string())
            .status()
            .await
            .expect("kill runs");
        assert!(status.success());
    }

    #[tokio::test]
    async fn resolves_on_sigterm_and_on_sigint_and_not_before() {
        for name in ["TERM", "INT"] {
            let mut received = std::pin::pin!(signal());
            tokio::select! {
                biased;
                () = &mut received => panic!("resolved before any signal"),
                () = std::future::ready(()) => {}
            }
            send(name).await;
            tokio::time::timeout(Duration::from_secs(5), received)
                .await
                .unwrap_or_else(|_| panic!("SIG{name} was not noticed"));
        }
    }
}
