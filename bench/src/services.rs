//! The services under test, started as real processes against the bench database.
//!
//! A [`Service`] is the harness's [`Process`] (killed when dropped, its last output lines
//! kept for error messages) with a name; its RSS and CPU time come from `/proc/<pid>`.

use anyhow::Context;
use flotilla_testkit::process::{self, Limits, Process};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// How long a service may take to log its `listening on` line, and the output kept of it.
const LIMITS: Limits = Limits {
    start_timeout: Duration::from_secs(60),
    kept_lines: 40,
};
/// The operator token the bench's api is started with.
pub const ADMIN_TOKEN: &str = "bench-admin-5b7d9f1a3c5e7092b4d6f8a1c3e5b7d9f0a2c4e6b8d1f3a5";
/// Linux clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`).
const CLOCK_TICKS: f64 = 100.0;

/// A running service process.
pub struct Service {
    process: Process,
    /// Its name, for messages.
    pub name: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its process id.
    pub pid: u32,
}

/// The database, Redis (one URL, or a cluster's seeds) and log level, then `--service-env`.
fn base_env(common: &crate::Common) -> Vec<(String, String)> {
    let redis = if common.redis_cluster() {
        "FLOTILLA__REDIS__CLUSTER_NODES"
    } else {
        "FLOTILLA__REDIS__URL"
    };
    [
        ("FLOTILLA__DATABASE__URL", common.database_url.clone()),
        (redis, common.redis_urls().join(",")),
        ("FLOTILLA__LOG__LEVEL", "info".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
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

/// Starts `n` gateways (`bench-gw-0`, …) on free ports, their pools sized so that together,
/// with an api's 20, they stay within Postgres's 100 connections.
pub async fn gateways(common: &crate::Common, n: usize) -> anyhow::Result<Vec<Service>> {
    let pool = (80 / n.max(1)).clamp(4, 20).to_string();
    let extra = [("FLOTILLA__DATABASE__MAX_CONNECTIONS", pool.as_str())];
    let mut gateways = Vec::new();
    for g in 0..n.max(1) {
        gateways.push(gateway(common, &format!("bench-gw-{g}"), &extra).await?);
    }
    Ok(gateways)
}

async fn start(name: &str, program: &Path, env: Vec<(String, String)>) -> anyhow::Result<Service> {
    let process = process::try_start(program, &env, LIMITS)
        .await
        .with_context(|| format!("{name} did not start (build it, or pass --bin-dir)"))?;
    Ok(Service {
        name: name.to_owned(),
        addr: process.addr,
        pid: process.pid(),
        process,
    })
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
        self.process.output()
    }

    /// `kill -9`, then reaps it.
    pub async fn kill(&mut self) {
        self.process.kill().await;
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
