//! The child side of the load generator: a process holding a slice of the fleet's sockets.
//!
//! The parent ([`crate::swarm`]) starts `flotilla-bench agents ...` and talks to it in JSON
//! lines: commands on stdin, [`Event`]s on stdout. Each simulated agent is one small task
//! over a tokio-tungstenite client with small buffers, or an SSE stream ([`crate::sse`]); it
//! records every text frame it receives
//! (receipt time in epoch microseconds beside the frame's `sentAt` and the bench's own
//! `benchUs` stamp) and, when told to, reconnects with the agent's backoff (full jitter from
//! 1 s up to 30 s) to the next gateway in the list.

use crate::fleet::Fleet;
use crate::sse::SseStream;
use crate::stats::now_us;
use futures_util::StreamExt;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

/// Handshake attempts of one agent in a connect phase (503 and 429 are retried).
const CONNECT_ATTEMPTS: u32 = 40;
/// Time limit of one TCP connect plus WebSocket handshake (the agent's default).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect backoff of the real agent: full jitter, ceiling doubling from 1 s to 30 s.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Kernel socket buffers of a simulated agent; frames are tiny.
const SOCKET_BUFFER: u32 = 16 * 1024;
/// How often progress is reported while connecting.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How often the end of a connect phase is checked for.
const READY_CHECK: Duration = Duration::from_millis(10);

/// Options of one child process.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentsArgs {
    /// Fleet file written by `seed`.
    #[arg(long)]
    pub fleet: std::path::PathBuf,
    /// First node index (inclusive) of this child's slice.
    #[arg(long)]
    pub from: usize,
    /// Last node index (exclusive).
    #[arg(long)]
    pub to: usize,
    /// Gateway addresses; node `i` connects first to `gateways[i % len]`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub gateways: Vec<SocketAddr>,
    /// Source addresses 127.0.0.1..=127.0.0.K used round-robin by node index.
    #[arg(long, default_value_t = 8)]
    pub sources: u8,
    /// Handshakes in flight at once in this child.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Reconnect (with backoff, to the next gateway) when a socket is lost.
    #[arg(long)]
    pub reconnect: bool,
    /// On 503/429 wait a random delay up to twice `Retry-After` without growing the backoff
    /// (the agent since ec64b8f); without it every failure doubles the backoff ceiling.
    #[arg(long)]
    pub honour_retry_after: bool,
    /// The push transport.
    #[arg(long, value_enum, default_value_t = crate::Transport::Websocket)]
    pub transport: crate::Transport,
}

/// A line the child writes on stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Connect phase in progress.
    Progress { connected: usize, failed: usize },
    /// Connect phase over: every agent connected (and maybe lost its socket again) or gave up.
    Ready {
        connected: usize,
        failed: usize,
        elapsed_us: u64,
    },
    /// Answer to `status`.
    Status {
        connected: usize,
        reconnects: usize,
        lost: usize,
        /// Agents waiting for a handshake slot, handshaking, or backing off.
        #[serde(default)]
        phases: [usize; 3],
    },
    /// Answer to `receipts`: `[node index, received (epoch µs), sentAt (ms), benchUs]`.
    Receipts { items: Vec<(usize, u64, i64, u64)> },
    /// Answer to `clear` and `close`.
    Done,
}

/// Frame fields the bench reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stamps {
    #[serde(default)]
    sent_at: i64,
    #[serde(default)]
    bench_us: u64,
}

struct Ctx {
    args: AgentsArgs,
    config: WebSocketConfig,
    handshakes: Semaphore,
    connected: AtomicUsize,
    failed: AtomicUsize,
    /// Agents that connected at least once in the current connect phase.
    settled: AtomicUsize,
    reconnects: AtomicUsize,
    lost: AtomicUsize,
    receipts: Mutex<Vec<(usize, u64, i64, u64)>>,
    /// Gateways that refused a connection: skipped from then on, as a balancer would.
    dead: Vec<AtomicBool>,
    /// Agents waiting for a handshake slot, handshaking, backing off.
    phases: [AtomicUsize; 3],
}

/// Runs the child until stdin closes.
pub async fn run(args: AgentsArgs) -> anyhow::Result<()> {
    crate::raise_nofile_limit();
    let fleet = Fleet::load(&args.fleet)?;
    anyhow::ensure!(
        args.from <= args.to && args.to <= fleet.nodes.len(),
        "slice {}..{} outside the fleet of {}",
        args.from,
        args.to,
        fleet.nodes.len()
    );
    let tokens: Vec<(usize, Arc<str>)> = (args.from..args.to)
        .map(|i| (i, Arc::from(fleet.nodes[i].token.as_str())))
        .collect();
    let ctx = Arc::new(Ctx {
        config: WebSocketConfig::default()
            .read_buffer_size(1024)
            .write_buffer_size(0)
            .max_message_size(Some(64 << 10))
            .max_frame_size(Some(64 << 10)),
        handshakes: Semaphore::new(args.concurrency.max(1)),
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        settled: AtomicUsize::new(0),
        reconnects: AtomicUsize::new(0),
        lost: AtomicUsize::new(0),
        receipts: Mutex::new(Vec::new()),
        dead: args
            .gateways
            .iter()
            .map(|_| AtomicBool::new(false))
            .collect(),
        phases: Default::default(),
        args,
    });
    let mut out = tokio::io::stdout();
    let (mut tasks, mut stop) = connect_all(&ctx, &tokens, &mut out).await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let event = match line.trim() {
            "status" => Event::Status {
                connected: ctx.connected.load(Ordering::Relaxed),
                reconnects: ctx.reconnects.load(Ordering::Relaxed),
                lost: ctx.lost.load(Ordering::Relaxed),
                phases: ctx.phases.each_ref().map(|p| p.load(Ordering::Relaxed)),
            },
            "receipts" => Event::Receipts {
                items: std::mem::take(&mut *ctx.receipts.lock().unwrap()),
            },
            "clear" => {
                ctx.receipts.lock().unwrap().clear();
                Event::Done
            }
            "close" => {
                close_all(&stop, &mut tasks).await;
                Event::Done
            }
            "connect" => {
                close_all(&stop, &mut tasks).await;
                (tasks, stop) = connect_all(&ctx, &tokens, &mut out).await?;
                continue;
            }
            other => anyhow::bail!("unknown command `{other}`"),
        };
        emit(&mut out, &event).await?;
    }
    close_all(&stop, &mut tasks).await;
    Ok(())
}

async fn emit(out: &mut tokio::io::Stdout, event: &Event) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(event)?;
    line.push(b'\n');
    out.write_all(&line).await?;
    out.flush().await?;
    Ok(())
}

/// Starts every agent and reports progress until each is connected or gave up.
async fn connect_all(
    ctx: &Arc<Ctx>,
    tokens: &[(usize, Arc<str>)],
    out: &mut tokio::io::Stdout,
) -> anyhow::Result<(JoinSet<()>, CancellationToken)> {
    ctx.failed.store(0, Ordering::SeqCst);
    ctx.settled.store(0, Ordering::SeqCst);
    let stop = CancellationToken::new();
    let started = now_us();
    let mut tasks = JoinSet::new();
    for (index, token) in tokens {
        tasks.spawn(agent(ctx.clone(), *index, token.clone(), stop.clone()));
    }
    let total = tokens.len();
    let mut last_progress = 0;
    loop {
        let connected = ctx.connected.load(Ordering::Relaxed);
        let failed = ctx.failed.load(Ordering::Relaxed);
        // Settled, not connected: a socket may already have been closed again.
        let settled = ctx.settled.load(Ordering::Relaxed);
        if settled + failed >= total {
            let event = Event::Ready {
                connected: settled,
                failed,
                elapsed_us: now_us() - started,
            };
            emit(out, &event).await?;
            return Ok((tasks, stop));
        }
        if now_us() - last_progress >= PROGRESS_EVERY.as_micros() as u64 {
            last_progress = now_us();
            emit(out, &Event::Progress { connected, failed }).await?;
        }
        tokio::time::sleep(READY_CHECK).await;
    }
}

async fn close_all(stop: &CancellationToken, tasks: &mut JoinSet<()>) {
    stop.cancel();
    while tasks.join_next().await.is_some() {}
}

/// One simulated agent: connect, read frames until the socket is lost, maybe reconnect.
async fn agent(ctx: Arc<Ctx>, index: usize, token: Arc<str>, stop: CancellationToken) {
    let gateways = &ctx.args.gateways;
    let mut gateway = index % gateways.len();
    let mut attempt = 0u32;
    let mut ever_connected = false;
    loop {
        let mut retry_after = None;
        let result = {
            let waiting = Phase::enter(&ctx, WAITING);
            let _permit = tokio::select! {
                permit = ctx.handshakes.acquire() => permit.expect("never closed"),
                _ = stop.cancelled() => return,
            };
            drop(waiting);
            let _handshaking = Phase::enter(&ctx, HANDSHAKING);
            tokio::time::timeout(
                CONNECT_TIMEOUT,
                connect(&ctx, index, gateways[gateway], &token),
            )
            .await
        };
        match result {
            Ok(Ok(ws)) => {
                if ever_connected {
                    ctx.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                if !ever_connected {
                    ctx.settled.fetch_add(1, Ordering::Relaxed);
                }
                ever_connected = true;
                attempt = 0;
                ctx.connected.fetch_add(1, Ordering::Relaxed);
                let stopped = serve(&ctx, index, ws, &stop).await;
                ctx.connected.fetch_sub(1, Ordering::Relaxed);
                if stopped || !ctx.args.reconnect {
                    if !stopped {
                        ctx.lost.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                // Lost its gateway: the real agent backs off, then tries again.
                gateway = next_gateway(&ctx, gateway);
                let _backing_off = Phase::enter(&ctx, BACKING_OFF);
                tokio::select! {
                    _ = tokio::time::sleep(jitter(BACKOFF_BASE)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
            Ok(Err(e)) if ever_connected && ctx.args.reconnect => {
                if ctx.args.honour_retry_after {
                    retry_after = retry_after_of(&e);
                }
                if refused(&e) {
                    ctx.dead[gateway].store(true, Ordering::Relaxed);
                } else if attempt >= 3 {
                    persistent_failure(index, attempt, &e);
                }
                gateway = next_gateway(&ctx, gateway);
            }
            Ok(Err(e)) if retryable(&e) && attempt < CONNECT_ATTEMPTS => {}
            Ok(Err(e)) => {
                tracing_free_log(index, &e);
                ctx.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(_) if attempt < CONNECT_ATTEMPTS => {}
            Err(_) => {
                ctx.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if retry_after.is_none() {
            attempt += 1;
        }
        let ceiling = if let Some(after) = retry_after {
            after.saturating_mul(2)
        } else if ever_connected {
            BACKOFF_BASE
                .saturating_mul(1 << attempt.min(5))
                .min(BACKOFF_MAX)
        } else {
            // Initial connects: a busy gateway (503) is retried soon.
            Duration::from_millis(200)
        };
        let _backing_off = Phase::enter(&ctx, BACKING_OFF);
        tokio::select! {
            _ = tokio::time::sleep(jitter(ceiling)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

const WAITING: usize = 0;
const HANDSHAKING: usize = 1;
const BACKING_OFF: usize = 2;

/// Counts an agent in one phase while alive.
struct Phase<'a>(&'a AtomicUsize);

impl<'a> Phase<'a> {
    fn enter(ctx: &'a Ctx, phase: usize) -> Self {
        ctx.phases[phase].fetch_add(1, Ordering::Relaxed);
        Self(&ctx.phases[phase])
    }
}

impl Drop for Phase<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Logs the first agents that keep failing to reconnect.
fn persistent_failure(index: usize, attempt: u32, e: &WsError) {
    static SHOWN: AtomicUsize = AtomicUsize::new(0);
    if SHOWN.fetch_add(1, Ordering::Relaxed) < 10 {
        eprintln!("agent {index}: reconnect attempt {attempt} failed: {e}");
    }
}

/// Logs the first failures of a child on stderr (the parent shows them).
fn tracing_free_log(index: usize, e: &WsError) {
    static SHOWN: AtomicUsize = AtomicUsize::new(0);
    if SHOWN.fetch_add(1, Ordering::Relaxed) < 5 {
        eprintln!("agent {index}: {e}");
    }
}

/// The gateway after `current` that has not refused a connection (else `current + 1`).
fn next_gateway(ctx: &Ctx, current: usize) -> usize {
    let n = ctx.args.gateways.len();
    (1..=n)
        .map(|step| (current + step) % n)
        .find(|g| !ctx.dead[*g].load(Ordering::Relaxed))
        .unwrap_or((current + 1) % n)
}

/// The `Retry-After` of a 503 or 429 handshake answer.
fn retry_after_of(e: &WsError) -> Option<Duration> {
    let WsError::Http(response) = e else {
        return None;
    };
    if !matches!(response.status().as_u16(), 429 | 503) {
        return None;
    }
    let secs: u64 = response
        .headers()
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(300)))
}

fn refused(e: &WsError) -> bool {
    matches!(e, WsError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused)
}

fn jitter(ceiling: Duration) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::thread_rng().gen_range(0..=nanos))
}

fn retryable(e: &WsError) -> bool {
    match e {
        WsError::Http(response) => matches!(
            response.status(),
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ),
        WsError::Io(_) => true,
        _ => false,
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// An agent's push connection.
enum Link {
    Ws(Box<Ws>),
    Sse(SseStream),
}

async fn connect(
    ctx: &Ctx,
    index: usize,
    gateway: SocketAddr,
    token: &str,
) -> Result<Link, WsError> {
    let source = Ipv4Addr::new(
        127,
        0,
        0,
        1 + (index % ctx.args.sources.max(1) as usize) as u8,
    );
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(SOCKET_BUFFER)?;
    socket.set_send_buffer_size(SOCKET_BUFFER)?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(gateway).await?;
    stream.set_nodelay(true)?;
    if ctx.args.transport == crate::Transport::Sse {
        let host = gateway.to_string();
        return SseStream::open(stream, &host, token).await.map(Link::Sse);
    }
    let mut request = format!("ws://{gateway}/api/agent/ws").into_client_request()?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|e| WsError::Io(std::io::Error::other(e)))?;
    request.headers_mut().insert(header::AUTHORIZATION, bearer);
    let (ws, _): (Ws, Response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(ctx.config)).await?;
    Ok(Link::Ws(Box::new(ws)))
}

/// Records a received frame's stamps.
fn record(ctx: &Ctx, index: usize, text: &str) {
    let received = now_us();
    let stamps = serde_json::from_str::<Stamps>(text).ok();
    let (sent_at, bench_us) = stamps.map_or((0, 0), |s| (s.sent_at, s.bench_us));
    ctx.receipts
        .lock()
        .unwrap()
        .push((index, received, sent_at, bench_us));
}

/// Reads until the connection closes (`false`) or the child is told to stop (`true`).
async fn serve(ctx: &Ctx, index: usize, link: Link, stop: &CancellationToken) -> bool {
    let mut ws = match link {
        Link::Ws(ws) => ws,
        Link::Sse(mut sse) => loop {
            tokio::select! {
                frame = sse.next_frame() => match frame {
                    Some(text) => record(ctx, index, text),
                    None => return stop.is_cancelled(),
                },
                _ = stop.cancelled() => {
                    sse.close().await;
                    return true;
                }
            }
        },
    };
    loop {
        let message = tokio::select! {
            m = ws.next() => m,
            _ = stop.cancelled() => {
                let _ = ws.close(None).await;
                return true;
            }
        };
        match message {
            Some(Ok(Message::Text(text))) => record(ctx, index, &text),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return stop.is_cancelled(),
            Some(Ok(_)) => {}
        }
    }
}
