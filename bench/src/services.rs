//! The services under test, started as real processes against the bench database.
//!
//! A [`Service`] is killed when dropped. Its output is kept (last lines) for error messages;
//! its RSS and CPU time come from `/proc/<pid>`.

use anyhow::Context;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// How long a service may take to log its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Output lines kept per service.
const KEPT_LINES: usize = 40;
/// The operator token the bench's api is started with.
pub const ADMIN_TOKEN: &str = "bench-admin-5b7d9f1a3c5e7092b4d6f8a1c3e5b7d9f0a2c4e6b8d1f3a5";
/// Linux clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`).
const CLOCK_TICKS: f64 = 100.0;

/// A running service process.
pub struct Service {
    child: Child,
    /// Its name, for messages.
    pub name: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its process id.
    pub pid: u32,
    output: Arc<Mutex<VecDeque<String>>>,
}

fn base_env(common: &crate::Common) -> Vec<(String, String)> {
    [
        ("FLOTILLA__DATABASE__URL", common.database_url.as_str()),
        ("FLOTILLA__REDIS__URL", common.redis_url.as_str()),
        ("FLOTILLA__LOG__LEVEL", "info"),
        ("NO_COLOR", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain(common.service_env.iter().cloned())
    .collect()
}

/// Starts the api on a free port.
pub async fn api(common: &crate::Common, extra: &[(&str, &str)]) -> anyhow::Result<Service> {
    let mut env = base_env(common);
    env.push(("FLOTILLA__API__LISTEN".into(), "127.0.0.1:0".into()));
    env.push((
        "FLOTILLA__API__BOOTSTRAP_ADMIN_TOKEN".into(),
        ADMIN_TOKEN.into(),
    ));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    start("api", &common.bin_dir.join("flotilla-api"), env).await
}

/// Starts a gateway with id `id` on a free port.
pub async fn gateway(
    common: &crate::Common,
    id: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<Service> {
    let mut env = base_env(common);
    env.push(("FLOTILLA__GATEWAY__LISTEN".into(), "127.0.0.1:0".into()));
    env.push(("FLOTILLA__GATEWAY__ID".into(), id.into()));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    start(id, &common.bin_dir.join("flotilla-gateway"), env).await
}

async fn start(name: &str, program: &Path, env: Vec<(String, String)>) -> anyhow::Result<Service> {
    let mut child = Command::new(program)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (build it, or pass --bin-dir)",
                program.display()
            )
        })?;
    let pid = child.id().context("no pid")?;
    let output = Arc::new(Mutex::new(VecDeque::new()));
    let (tx, mut rx) = watch::channel(None);
    let tx = Arc::new(tx);
    tokio::spawn(capture(
        child.stdout.take().context("stdout")?,
        output.clone(),
        tx.clone(),
    ));
    tokio::spawn(capture(
        child.stderr.take().context("stderr")?,
        output.clone(),
        tx,
    ));
    let started = tokio::time::timeout(START_TIMEOUT, rx.wait_for(Option::is_some)).await;
    let addr = match started {
        Ok(Ok(addr)) => addr.expect("checked"),
        _ => {
            let _ = child.start_kill();
            let lines: Vec<String> = output.lock().unwrap().iter().cloned().collect();
            anyhow::bail!("{name} did not start; output:\n{}", lines.join("\n"));
        }
    };
    Ok(Service {
        child,
        name: name.to_owned(),
        addr,
        pid,
        output,
    })
}

async fn capture(
    stream: impl AsyncRead + Unpin,
    output: Arc<Mutex<VecDeque<String>>>,
    addr: Arc<watch::Sender<Option<SocketAddr>>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(found) = listening_addr(&line) {
            addr.send_replace(Some(found));
        }
        let mut out = output.lock().unwrap();
        if out.len() == KEPT_LINES {
            out.pop_front();
        }
        out.push_back(line);
    }
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl Service {
    /// Resident set size in bytes (`VmRSS`).
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        rss_bytes(self.pid)
    }

    /// User plus system CPU time so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds(self.pid)
    }

    /// The last lines it printed.
    pub fn output(&self) -> String {
        let lines: Vec<String> = self.output.lock().unwrap().iter().cloned().collect();
        lines.join("\n")
    }

    /// `kill -9`, then reaps it.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await??;
        Ok(())
    }

    /// Its `/metrics` as name → value (label sets are part of the name).
    pub async fn metrics(&self, http: &reqwest::Client) -> anyhow::Result<HashMap<String, f64>> {
        let text = http
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect())
    }
}

/// `VmRSS` of a process, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kib * 1024)
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').context("stat format")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / CLOCK_TICKS)
}

/// The machine's load averages (1, 5, 15 minutes), recorded beside every figure.
pub fn load_average() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// bcrypt runs so far, summed over `services` (their metrics named `…bcrypt…`); `None` when
/// none exposes one.
pub async fn bcrypt_count(http: &reqwest::Client, services: &[&Service]) -> Option<f64> {
    let mut total = None;
    for s in services {
        if let Ok(metrics) = s.metrics(http).await {
            if let Some(v) = metric_sum(&metrics, "bcrypt") {
                total = Some(total.unwrap_or(0.0) + v);
            }
        }
    }
    total
}

/// Sum of the metric lines whose name contains `needle` (e.g. `bcrypt`), if any.
pub fn metric_sum(metrics: &HashMap<String, f64>, needle: &str) -> Option<f64> {
    let matching: Vec<f64> = metrics
        .iter()
        .filter(|(k, _)| k.contains(needle) && !k.contains("_bucket"))
        .map(|(_, v)| *v)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}
