//! A TCP proxy a test can cut, to make a server unreachable without losing its data, or use to
//! make a Redis subscription go silently deaf. It counts the bytes it carries each way.

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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let deafen = Arc::new(Notify::new());
        let parked: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let bytes: Arc<Bytes> = Arc::default();
        let (c, k, d, p, b) = (
            cut.clone(),
            conns.clone(),
            deafen.clone(),
            parked.clone(),
            bytes.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close at once
                }
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let mut conns = k.lock().unwrap();
                conns.retain(|c| !c.is_finished());
                conns.push(tokio::spawn(relay(
                    inbound,
                    outbound,
                    d.clone(),
                    p.clone(),
                    b.clone(),
                )));
            }
        });
        Self {
            addr,
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
