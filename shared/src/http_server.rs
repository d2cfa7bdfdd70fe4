//! Serving an axum router over HTTP/1.1 with a header read timeout.
//!
//! `axum::serve` configures no timer, so hyper applies no header timeout there and a client
//! that sends its request head a byte at a time holds a connection forever. This server sets
//! one, hands every request its peer address as [`ConnectInfo`], keeps upgrades (WebSocket)
//! working, and stops gracefully: once `shutdown` resolves it accepts nothing more and waits
//! for in-flight requests (upgraded sockets are the caller's to close).

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// Pause after a failed `accept` (out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How connections are served.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// A connection whose request head has not fully arrived this long after it started is
    /// closed (hyper answers 408 when it can).
    pub header_read_timeout: Duration,
    /// Disable Nagle's algorithm on accepted sockets (small frames go out at once).
    pub nodelay: bool,
}

/// Serves `router` on `listener` until `shutdown` resolves, then waits for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    // `stop` tells connections to finish; each holds an `alive` receiver, so the sender sees
    // them all gone.
    let (stop, stopping) = watch::channel(false);
    let (alive, alive_rx) = watch::channel(());
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if options.nodelay {
            let _ = tcp.set_nodelay(true);
        }
        let service =
            router
                .clone()
                .map_request(move |mut request: axum::http::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                });
        let connection = http
            .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service))
            .with_upgrades();
        let (mut stopping, held) = (stopping.clone(), alive_rx.clone());
        tokio::spawn(async move {
            let mut connection = pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = async { stopping.wait_for(|stop| *stop).await.map(|_| ()) } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(held);
        });
    }
    drop(listener);
    drop(alive_rx);
    let _ = stop.send(true);
    alive.closed().await;
}
