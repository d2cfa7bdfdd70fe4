//! The parent side of the load generator: child processes of simulated agents.
//!
//! Node indices `range` are cut into slices of `per_child`; each slice runs in its own
//! `flotilla-bench agents` process (each may hold at most 20,000 files). Commands go to every
//! child's stdin; their [`Event`]s come back through one channel.

use crate::agents::Event;
use crate::fleet::bar;
use anyhow::Context;
use std::net::SocketAddr;
use std::ops::Range;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// Longest a connect phase may take.
const CONNECT_PHASE: Duration = Duration::from_secs(300);
/// Longest a child may take to answer a command.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Handshakes in flight per gateway, summed over children (the gateway allows 256).
const HANDSHAKES_PER_GATEWAY: usize = 192;

/// What a swarm is asked to do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Node indices to simulate.
    pub range: Range<usize>,
    /// Gateways; node `i` connects first to `gateways[i % len]`.
    pub gateways: Vec<SocketAddr>,
    /// Reconnect lost sockets with the agent's backoff.
    pub reconnect: bool,
    /// Honour `Retry-After` on 503/429 instead of doubling the backoff.
    pub honour_retry_after: bool,
}

/// The outcome of a connect phase.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Connected {
    /// Agents connected.
    pub connected: usize,
    /// Agents that gave up.
    pub failed: usize,
    /// Wall time of the phase (the slowest child), seconds.
    pub seconds: f64,
    /// Connected agents per second.
    pub per_second: f64,
}

/// One receipt: node index, receipt time (epoch µs), `sentAt` (ms), `benchUs`.
pub type Receipt = (usize, u64, i64, u64);

/// Running agent processes.
pub struct Swarm {
    children: Vec<(Child, ChildStdin)>,
    events: mpsc::UnboundedReceiver<(usize, Event)>,
    total: usize,
}

impl Swarm {
    /// Starts the children and waits until every agent connected or gave up.
    pub async fn launch(common: &crate::Common, plan: &Plan) -> anyhow::Result<(Self, Connected)> {
        let exe = std::env::current_exe()?;
        let total = plan.range.len();
        let per_child = common.per_child.max(1);
        let count = total.div_ceil(per_child).max(1);
        let concurrency = (HANDSHAKES_PER_GATEWAY * plan.gateways.len() / count).max(8);
        let gateways: Vec<String> = plan.gateways.iter().map(|g| g.to_string()).collect();
        let (tx, events) = mpsc::unbounded_channel();
        let mut children = Vec::new();
        for (k, from) in plan.range.clone().step_by(per_child).enumerate() {
            let to = (from + per_child).min(plan.range.end);
            let mut command = Command::new(&exe);
            command
                .arg("agents")
                .arg("--fleet")
                .arg(&common.fleet)
                .args(["--from", &from.to_string(), "--to", &to.to_string()])
                .args(["--gateways", &gateways.join(",")])
                .args(["--sources", &common.sources.to_string()])
                .args(["--concurrency", &concurrency.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            if plan.reconnect {
                command.arg("--reconnect");
            }
            if plan.honour_retry_after {
                command.arg("--honour-retry-after");
            }
            if common.transport == crate::Transport::Sse {
                command.args(["--transport", "sse"]);
            }
            let mut child = command.spawn().context("cannot start an agent process")?;
            let stdin = child.stdin.take().context("stdin")?;
            let stdout = child.stdout.take().context("stdout")?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<Event>(&line) {
                        Ok(event) => {
                            if tx.send((k, event)).is_err() {
                                return;
                            }
                        }
                        Err(e) => eprintln!("agent process {k}: unreadable line ({e}): {line}"),
                    }
                }
            });
            children.push((child, stdin));
        }
        let mut swarm = Self {
            children,
            events,
            total,
        };
        let connected = swarm.await_connected().await?;
        Ok((swarm, connected))
    }

    /// Agents simulated.
    pub fn total(&self) -> usize {
        self.total
    }

    async fn await_connected(&mut self) -> anyhow::Result<Connected> {
        let n = self.children.len();
        let progress = bar(self.total as u64, "agents connected");
        let mut latest = vec![(0usize, 0usize); n];
        let mut ready = vec![None; n];
        let deadline = tokio::time::Instant::now() + CONNECT_PHASE;
        while ready.iter().any(Option::is_none) {
            let (k, event) = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .context("connect phase timed out")?
                .context("an agent process exited")?;
            match event {
                Event::Progress { connected, failed } => latest[k] = (connected, failed),
                Event::Ready {
                    connected,
                    failed,
                    elapsed_us,
                } => {
                    latest[k] = (connected, failed);
                    ready[k] = Some(elapsed_us);
                }
                other => anyhow::bail!("unexpected event while connecting: {other:?}"),
            }
            let connected: usize = latest.iter().map(|l| l.0).sum();
            let failed: usize = latest.iter().map(|l| l.1).sum();
            progress.set_position(connected as u64);
            progress.set_message(format!("{failed} failed"));
        }
        progress.finish_and_clear();
        let connected: usize = latest.iter().map(|l| l.0).sum();
        let failed: usize = latest.iter().map(|l| l.1).sum();
        let seconds = ready.iter().flatten().max().copied().unwrap_or(0) as f64 / 1e6;
        Ok(Connected {
            connected,
            failed,
            seconds,
            per_second: connected as f64 / seconds.max(1e-6),
        })
    }

    async fn broadcast(&mut self, command: &str) -> anyhow::Result<Vec<Event>> {
        for (_, stdin) in &mut self.children {
            stdin.write_all(format!("{command}\n").as_bytes()).await?;
            stdin.flush().await?;
        }
        let mut answers: Vec<Option<Event>> = (0..self.children.len()).map(|_| None).collect();
        while answers.iter().any(Option::is_none) {
            let (k, event) = tokio::time::timeout(ANSWER_TIMEOUT, self.events.recv())
                .await
                .with_context(|| format!("no answer to `{command}`"))?
                .context("an agent process exited")?;
            if !matches!(event, Event::Progress { .. }) {
                answers[k] = Some(event);
            }
        }
        Ok(answers.into_iter().flatten().collect())
    }

    /// Connected agents, reconnects so far, sockets lost for good.
    pub async fn status(&mut self) -> anyhow::Result<(usize, usize, usize)> {
        let (connected, reconnects, lost, _) = self.phases().await?;
        Ok((connected, reconnects, lost))
    }

    /// Like [`Swarm::status`], plus agents waiting for a handshake slot, handshaking and
    /// backing off.
    pub async fn phases(&mut self) -> anyhow::Result<(usize, usize, usize, [usize; 3])> {
        let mut sum = (0, 0, 0, [0; 3]);
        for event in self.broadcast("status").await? {
            if let Event::Status {
                connected,
                reconnects,
                lost,
                phases,
            } = event
            {
                sum.0 += connected;
                sum.1 += reconnects;
                sum.2 += lost;
                for (total, p) in sum.3.iter_mut().zip(phases) {
                    *total += p;
                }
            }
        }
        Ok(sum)
    }

    /// Takes every receipt recorded since the last call.
    pub async fn receipts(&mut self) -> anyhow::Result<Vec<Receipt>> {
        let mut all = Vec::new();
        for event in self.broadcast("receipts").await? {
            if let Event::Receipts { items } = event {
                all.extend(items);
            }
        }
        Ok(all)
    }

    /// Collects receipts until `expected` arrived or `limit` passed.
    pub async fn await_receipts(
        &mut self,
        expected: usize,
        limit: Duration,
    ) -> anyhow::Result<Vec<Receipt>> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut all = Vec::new();
        loop {
            all.extend(self.receipts().await?);
            if all.len() >= expected || tokio::time::Instant::now() >= deadline {
                return Ok(all);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Closes every socket, then connects every agent again.
    pub async fn reconnect_all(&mut self) -> anyhow::Result<Connected> {
        self.broadcast("close").await?;
        for (_, stdin) in &mut self.children {
            stdin.write_all(b"connect\n").await?;
            stdin.flush().await?;
        }
        self.await_connected().await
    }

    /// Closes every socket and ends the children.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.broadcast("close").await?;
        for (mut child, stdin) in self.children {
            drop(stdin);
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
        Ok(())
    }
}
