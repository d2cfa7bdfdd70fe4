//! `steady`: a fleet living on: N agents, each polling `GET /api/agent/config` every
//! `--poll-ms` and posting a heartbeat every `--heartbeat-ms`, for longer than every cache
//! lifetime in the api (the api gets `auth.cache_ttl_secs = --cache-ttl-secs`, short).
//!
//! Nothing is warmed first: the agents start from a freshly started api. The run is cut into
//! windows of `--window-secs`; each reports requests, the api's CPU seconds per 1,000 requests
//! and its bcrypt runs (from its metrics, when it exposes them). A fleet that costs the same in
//! its last window as in its first shows no growth over time.

use super::{agents_or_all, fleet, machine};
use crate::operator::Operator;
use crate::services::{self, bcrypt_count};
use crate::stats::Dist;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Time limit of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of `steady`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Agents taking part (0: the whole fleet).
    #[arg(long, default_value_t = 2000)]
    pub agents: usize,
    /// Each agent's poll interval, milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub poll_ms: u64,
    /// Each agent's heartbeat interval, milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub heartbeat_ms: u64,
    /// Length of the run, seconds.
    #[arg(long, default_value_t = 180)]
    pub secs: u64,
    /// Length of one reporting window, seconds.
    #[arg(long, default_value_t = 15)]
    pub window_secs: u64,
    /// The api's `auth.cache_ttl_secs` (the longest cache lifetime it has).
    #[arg(long, default_value_t = 10)]
    pub cache_ttl_secs: u64,
    #[command(flatten)]
    pub common: crate::Common,
}

/// Requests answered, shared by every agent task.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    latencies_us: Mutex<Vec<i64>>,
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<Value> {
    let common = &args.common;
    let fleet = fleet(common, args.agents)?;
    let agents = agents_or_all(args.agents, &fleet);
    let ttl = args.cache_ttl_secs.to_string();
    let api = services::api(common, &[("FLOTILLA__AUTH__CACHE_TTL_SECS", ttl.as_str())]).await?;
    let base = format!("http://{}", api.addr);
    let operator = Operator::new(api.addr)?;
    let pipeline = operator
        .create_pipeline(
            fleet.environment_id,
            &format!("steady-{}", uuid::Uuid::new_v4()),
            json!({}),
        )
        .await?;
    operator.deploy(pipeline).await?;
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(256)
        .build()?;

    let counts = Arc::new(Counts::default());
    let stop = CancellationToken::new();
    let poll = Duration::from_millis(args.poll_ms.max(1));
    let heartbeat = Duration::from_millis(args.heartbeat_ms.max(1));
    let tasks: Vec<_> = fleet.nodes[..agents]
        .iter()
        .enumerate()
        .map(|(i, node)| {
            // Spread the agents over one poll interval, as a fleet that enrolled over time.
            let offset = poll.mul_f64(i as f64 / agents as f64);
            let agent = Agent {
                http: http.clone(),
                base: base.clone(),
                token: node.token.clone(),
                counts: counts.clone(),
            };
            tokio::spawn(agent.live(offset, poll, heartbeat, stop.clone()))
        })
        .collect();

    let mut windows = Vec::new();
    let started = Instant::now();
    let mut cpu = api.cpu_seconds()?;
    let mut bcrypt = bcrypt_count(&http, &[&api]).await;
    let mut ok = 0;
    let mut failed = 0;
    let window = Duration::from_secs(args.window_secs.max(1));
    while started.elapsed() < Duration::from_secs(args.secs) {
        tokio::time::sleep(window).await;
        let (cpu_now, bcrypt_now) = (api.cpu_seconds()?, bcrypt_count(&http, &[&api]).await);
        let (ok_now, failed_now) = (
            counts.ok.load(Ordering::Relaxed),
            counts.failed.load(Ordering::Relaxed),
        );
        let requests = ok_now - ok;
        let latencies = std::mem::take(&mut *counts.latencies_us.lock().unwrap());
        windows.push(json!({
            "endSeconds": started.elapsed().as_secs_f64(),
            "requests": requests,
            "failed": failed_now - failed,
            "apiCpuSeconds": cpu_now - cpu,
            "apiCpuSecondsPer1000Requests": (cpu_now - cpu) * 1000.0 / requests.max(1) as f64,
            "bcrypt": bcrypt.zip(bcrypt_now).map(|(b, a)| a - b),
            "latencyMs": Dist::of_us(&latencies),
        }));
        (cpu, bcrypt, ok, failed) = (cpu_now, bcrypt_now, ok_now, failed_now);
    }
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    let per_1000 = |w: Option<&Value>| w.map(|w| w["apiCpuSecondsPer1000Requests"].clone());
    Ok(json!({
        "scenario": "steady",
        "agents": agents,
        "pollMs": args.poll_ms,
        "heartbeatMs": args.heartbeat_ms,
        "cacheTtlSecs": args.cache_ttl_secs,
        "seconds": started.elapsed().as_secs_f64(),
        "requests": ok,
        "failed": failed,
        "bcryptTotal": bcrypt_count(&http, &[&api]).await,
        "firstWindowCpuPer1000": per_1000(windows.first()),
        "lastWindowCpuPer1000": per_1000(windows.last()),
        "windows": windows,
        "machine": machine(),
    }))
}

/// One simulated agent's HTTP side.
struct Agent {
    http: reqwest::Client,
    base: String,
    token: String,
    counts: Arc<Counts>,
}

impl Agent {
    /// Polls every `poll` and heartbeats every `heartbeat` until `stop`.
    async fn live(
        self,
        offset: Duration,
        poll: Duration,
        heartbeat: Duration,
        stop: CancellationToken,
    ) {
        let start = tokio::time::Instant::now() + offset;
        let mut polls = tokio::time::interval_at(start, poll);
        let mut beats = tokio::time::interval_at(start + heartbeat.mul_f64(0.5), heartbeat);
        for timer in [&mut polls, &mut beats] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            let request = tokio::select! {
                _ = polls.tick() => self.http.get(format!("{}/api/agent/config", self.base)),
                _ = beats.tick() => self
                    .http
                    .post(format!("{}/api/agent/heartbeat", self.base))
                    .json(&json!({ "agentVersion": "bench", "pipelines": [] })),
                _ = stop.cancelled() => return,
            };
            let sent = Instant::now();
            let answered = match request.bearer_auth(&self.token).send().await {
                Ok(response) => {
                    let ok = response.status().is_success();
                    ok && response.bytes().await.is_ok()
                }
                Err(_) => false,
            };
            if answered {
                self.counts.ok.fetch_add(1, Ordering::Relaxed);
                let us = sent.elapsed().as_micros() as i64;
                self.counts.latencies_us.lock().unwrap().push(us);
            } else {
                self.counts.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
