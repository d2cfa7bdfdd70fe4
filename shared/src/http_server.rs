//! Serving an axum router over HTTP/1.1 with a header read timeout, and handing the
//! connections of one route to the service itself ([`RawRoute`]).
//!
//! `axum::serve` configures no timer, so hyper applies no header timeout there and a client
//! that sends its request head a byte at a time holds a connection forever. This server sets
//! one, hands every request its peer address as [`ConnectInfo`], keeps upgrades (WebSocket)
//! working, and stops gracefully: once `shutdown` resolves it accepts nothing more, lets each
//! connection finish its in-flight request, and waits for them (upgraded sockets are the
//! caller's to close).
//!
//! Connections are tracked with a [`TaskTracker`] and told to stop with a
//! [`CancellationToken`], not hyper-util's `GracefulShutdown`: that one only watches
//! connections without upgrades (or its `auto` connections, which also speak HTTP/2 and read
//! the protocol preface before any header read timeout applies), and it cannot track the
//! connections handed to a [`RawRoute`].

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Connections the kernel completes before they are accepted. The default (128) overflows in
/// a reconnect burst: the kernel then drops SYNs, and each dropped agent waits a full second
/// to retransmit. The kernel caps this at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Pause after a failed `accept` (out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Binds a listening socket on `addr` with a [`LISTEN_BACKLOG`]-deep accept queue.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std's and tokio's own `bind` do: a restarted service can take its port straight back.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Connections whose bytes start with `prefix` (a request line such as
/// `GET /api/agent/push`) are handed, unread, to `handler` instead of hyper: for long-lived
/// responses the service writes itself, without the buffers hyper keeps per connection. A
/// request for the same route later on a kept-alive connection still goes to the router.
#[derive(Clone)]
pub struct RawRoute {
    /// The first bytes of the connections to hand over.
    pub prefix: &'static [u8],
    /// Serves such a connection; what it returns is awaited in a task of its own (a
    /// long-lived connection should spawn its work and return, so nothing else stays
    /// allocated for it).
    pub handler: Arc<dyn Fn(TcpStream, SocketAddr) -> RawFuture + Send + Sync>,
}

/// Longest [`RawRoute::prefix`] compared (a longer one is compared on its first bytes).
const MAX_RAW_PREFIX: usize = 64;

/// What a [`RawRoute`] handler returns.
pub type RawFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

impl std::fmt::Debug for RawRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawRoute")
            .field("prefix", &String::from_utf8_lossy(self.prefix))
            .finish_non_exhaustive()
    }
}

/// How connections are served.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A connection whose request head has not fully arrived this long after it started is
    /// closed (hyper answers 408 when it can).
    pub header_read_timeout: Duration,
    /// Disable Nagle's algorithm on accepted sockets (small frames go out at once).
    pub nodelay: bool,
    /// TCP keepalive on accepted sockets: probes after this much idle time (then every 10 s,
    /// 3 unanswered end it), so a peer that vanished without a word is found even on a
    /// connection the server only writes to now and then.
    pub tcp_keepalive: Option<Duration>,
    /// Connections handed to the service itself.
    pub raw: Option<RawRoute>,
}

/// Whether the connection's first bytes are `prefix`, waiting at most `limit` for them;
/// `Err` for a connection that closed or sent too little in time.
async fn starts_with(tcp: &TcpStream, prefix: &[u8], limit: Duration) -> std::io::Result<bool> {
    let deadline = tokio::time::Instant::now() + limit;
    // On the stack: this runs for every connection.
    let mut space = [0u8; MAX_RAW_PREFIX];
    let buf = &mut space[..prefix.len().min(MAX_RAW_PREFIX)];
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.peek(buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if !prefix.starts_with(&buf[..n]) {
            return Ok(false);
        }
        if n == buf.len() {
            return Ok(true);
        }
        // Only part of the request line has arrived (rare: it comes in one segment).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then waits for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let connections = TaskTracker::new();
    let stopping = CancellationToken::new();
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
        if let Some(idle) = options.tcp_keepalive {
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval(Duration::from_secs(10))
                .with_retries(3);
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        }
        let service =
            router
                .clone()
                .map_request(move |mut request: axum::http::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                });
        let (stopping, tracker) = (stopping.clone(), connections.clone());
        let (http, raw) = (http.clone(), options.raw.clone());
        let header_read_timeout = options.header_read_timeout;
        connections.spawn(async move {
            if let Some(raw) = raw {
                match starts_with(&tcp, raw.prefix, header_read_timeout).await {
                    Ok(true) => {
                        // A task of its own: this one is sized for a hyper connection.
                        tracker.spawn(async move { (raw.handler)(tcp, peer).await });
                        return;
                    }
                    Ok(false) => {}
                    Err(_) => return,
                }
            }
            let connection = http
                .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service))
                .with_upgrades();
            let mut connection = pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stopping.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::{oneshot, Notify};

    const LIMIT: Duration = Duration::from_secs(5);

    fn options() -> ServeOptions {
        ServeOptions {
            header_read_timeout: LIMIT,
            nodelay: true,
            tcp_keepalive: None,
            raw: None,
        }
    }

    #[tokio::test]
    async fn shutdown_lets_an_in_flight_request_finish_before_serve_returns() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (e, r) = (entered.clone(), release.clone());
        let router = Router::new().route(
            "/slow",
            get(move || async move {
                e.notify_one();
                r.notified().await;
                "done"
            }),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let mut server = tokio::spawn(serve(listener, router, options(), async {
            let _ = stopped.await;
        }));
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::timeout(LIMIT, entered.notified())
            .await
            .expect("the request reached its handler");

        stop.send(()).unwrap();
        let early = tokio::time::timeout(Duration::from_millis(100), &mut server).await;
        assert!(early.is_err(), "serve returned with a request in flight");
        release.notify_one();
        let mut response = String::new();
        tokio::time::timeout(LIMIT, client.read_to_string(&mut response))
            .await
            .expect("the connection closed after its response")
            .unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("done"), "{response}");
        tokio::time::timeout(LIMIT, server)
            .await
            .expect("serve returned once the request finished")
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    }

    #[tokio::test]
    async fn shutdown_waits_for_connections_handed_to_a_raw_route() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (e, r) = (entered.clone(), release.clone());
        let raw = RawRoute {
            prefix: b"GET /raw",
            handler: Arc::new(move |_tcp, _peer| {
                let (e, r) = (e.clone(), r.clone());
                Box::pin(async move {
                    e.notify_one();
                    r.notified().await;
                })
            }),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let options = ServeOptions {
            raw: Some(raw),
            ..options()
        };
        let mut server = tokio::spawn(serve(listener, Router::new(), options, async {
            let _ = stopped.await;
        }));
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /raw HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        tokio::time::timeout(LIMIT, entered.notified())
            .await
            .expect("the connection reached the raw handler");

        stop.send(()).unwrap();
        let early = tokio::time::timeout(Duration::from_millis(100), &mut server).await;
        assert!(early.is_err(), "serve returned before the raw handler did");
        release.notify_one();
        tokio::time::timeout(LIMIT, server)
            .await
            .expect("serve returned once the raw handler did")
            .unwrap();
    }

    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_accept_queue_instead_of_being_dropped() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // Nobody accepts: every connection has to fit in the kernel's queue. Past the queue the
        // kernel drops the SYN and the client retries only after a second, so a connect that
        // does not finish within half of that was dropped.
        let connects = (0..600).map(|_| async move {
            tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr),
            )
            .await
        });
        let results = futures_util::future::join_all(connects).await;
        let dropped = results.iter().filter(|r| !matches!(r, Ok(Ok(_)))).count();
        assert_eq!(dropped, 0, "{dropped} of 600 connects were dropped");
        drop(listener);
    }
}
