//! A TCP proxy a test can cut, to make a server unreachable without losing its data; re-route,
//! as a load balancer sends new connections elsewhere; or use to make a Redis subscription go
//! silently deaf. It counts the bytes it carries each way.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// A TCP proxy that can cut every connection through it and refuse new ones.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Where new connections go; none refuses them.
    target: Arc<Mutex<Option<SocketAddr>>>,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    deafen: Arc<Notify>,
    /// Client sides of deafened connections, kept open so their owners notice nothing.
    parked: Arc<Mutex<Vec<TcpStream>>>,
    bytes: Arc<Bytes>,
    task: JoinHandle<()>,
}

/// Bytes carried so far, each way.
#[derive(Debug, Default)]
struct Bytes {
    to_server: AtomicU64,
    to_client: AtomicU64,
}

impl Proxy {
    /// Proxies `127.0.0.1:<port 0>` to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        Self::listen(Some(target)).await
    }

    /// A proxy in front of the server `url` names (`postgres://…`, `redis://…`), and `url` with
    /// the proxy's address in place of the server's.
    pub async fn in_front_of(url: &str) -> (Self, String) {
        let mut url = reqwest::Url::parse(url).expect("a server URL");
        let host = url.host_str().expect("a host in the URL").to_owned();
        // Without a port: the default of Redis or of Postgres.
        let redis = matches!(url.scheme(), "redis" | "rediss");
        let port = url.port().unwrap_or(if redis { 6379 } else { 5432 });
        let target = tokio::net::lookup_host((host.as_str(), port))
            .await
            .expect("the server's host resolves")
            .next()
            .expect("an address for the server's host");
        let proxy = Self::start(target).await;
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(proxy.addr.port())).unwrap();
        (proxy, url.to_string())
    }

    /// A proxy with nowhere to go yet: it refuses connections until [`Proxy::route_to`].
    pub async fn unrouted() -> Self {
        Self::listen(None).await
    }

    async fn listen(target: Option<SocketAddr>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let deafen = Arc::new(Notify::new());
        let parked: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let bytes: Arc<Bytes> = Arc::default();
        let (t, c, k, d, p, b) = (
            target.clone(),
            cut.clone(),
            conns.clone(),
            deafen.clone(),
            parked.clone(),
            bytes.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let to = *t.lock().unwrap();
                // Dropped: the client sees the connection close at once.
                let Some(to) = to.filter(|_| !c.load(Ordering::SeqCst)) else {
                    continue;
                };
                // Connected in the connection's own task: a target that does not answer must not
                // hold up the next accept.
                let (d, p, b) = (d.clone(), p.clone(), b.clone());
                let mut conns = k.lock().unwrap();
                conns.retain(|c| !c.is_finished());
                conns.push(tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(to).await {
                        relay(inbound, outbound, d, p, b).await;
                    }
                }));
            }
        });
        Self {
            addr,
            target,
            cut,
            conns,
            deafen,
            parked,
            bytes,
            task,
        }
    }

    /// Bytes carried from servers to clients so far, on every connection.
    pub fn bytes_to_clients(&self) -> u64 {
        self.bytes.to_client.load(Ordering::Relaxed)
    }

    /// Bytes carried from clients to servers so far, on every connection.
    pub fn bytes_to_server(&self) -> u64 {
        self.bytes.to_server.load(Ordering::Relaxed)
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
        self.parked.lock().unwrap().clear();
    }

    /// Sends new connections to `target`; open ones stay where they are.
    pub fn route_to(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = Some(target);
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Closes the server side of every connection that has sent a Redis `SUBSCRIBE` and keeps
    /// the client side open and silent: the server drops the subscription, the client hears
    /// nothing. Later connections pass normally.
    pub fn deafen_subscribers(&self) {
        self.deafen.notify_waiters();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// Copies both ways until either side ends, or until deafened once the client subscribed.
async fn relay(
    inbound: TcpStream,
    outbound: TcpStream,
    deafen: Arc<Notify>,
    parked: Arc<Mutex<Vec<TcpStream>>>,
    bytes: Arc<Bytes>,
) {
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let subscribed = AtomicBool::new(false);
    let deafened = {
        let upstream = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = in_read.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                if buf[..n]
                    .windows(9)
                    .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
                {
                    subscribed.store(true, Ordering::SeqCst);
                }
                out_write.write_all(&buf[..n]).await?;
                bytes.to_server.fetch_add(n as u64, Ordering::Relaxed);
            }
        };
        let downstream = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = out_read.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                in_write.write_all(&buf[..n]).await?;
                bytes.to_client.fetch_add(n as u64, Ordering::Relaxed);
            }
        };
        let deaf = async {
            loop {
                deafen.notified().await;
                if subscribed.load(Ordering::SeqCst) {
                    return;
                }
            }
        };
        tokio::select! {
            _ = upstream => false,
            _ = downstream => false,
            () = deaf => true,
        }
    };
    if deafened {
        drop((out_read, out_write));
        let client = in_read.reunite(in_write).expect("halves of one stream");
        parked.lock().unwrap().push(client);
    }
}
