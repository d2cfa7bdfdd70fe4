//! `poll`: agents polling `GET /api/agent/config` and posting heartbeats back to back.
//!
//! `--pipelines` pipelines selecting every node are deployed first, so each poll returns real
//! configs. A warm-up pass polls once with every token (connections open), then `--concurrency`
//! workers poll for `--secs` seconds, cycling through the tokens, every `--heartbeat-every`-th
//! request a heartbeat. No push sockets are involved, so no gateway runs.

use super::{agents_or_all, fleet, machine};
use crate::fleet::bar;
use crate::operator::Operator;
use crate::services;
use crate::stats::Dist;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Time limit of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of `poll`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Agents (tokens) taking part (0: the whole fleet).
    #[arg(long, default_value_t = 0)]
    pub agents: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Length of the measured phase, seconds.
    #[arg(long, default_value_t = 20)]
    pub secs: u64,
    /// Every n-th request is a heartbeat instead of a config poll.
    #[arg(long, default_value_t = 5)]
    pub heartbeat_every: usize,
    /// Pipelines deployed to every node before polling.
    #[arg(long, default_value_t = 1)]
    pub pipelines: usize,
    #[command(flatten)]
    pub common: crate::Common,
}

#[derive(Default)]
struct Tally {
    config_us: Vec<i64>,
    heartbeat_us: Vec<i64>,
    statuses: BTreeMap<String, u64>,
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<Value> {
    let common = &args.common;
    let fleet = fleet(common, args.agents)?;
    let agents = agents_or_all(args.agents, &fleet);
    let api = services::api(common, &[]).await?;
    let base = format!("http://{}", api.addr);
    let operator = Operator::new(api.addr)?;
    for i in 0..args.pipelines {
        let name = format!("poll-{i}-{}", uuid::Uuid::new_v4());
        let pipeline = operator
            .create_pipeline(fleet.environment_id, &name, json!({}))
            .await?;
        operator.deploy(pipeline).await?;
    }
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let tokens: Arc<Vec<String>> = Arc::new(
        fleet.nodes[..agents]
            .iter()
            .map(|n| n.token.clone())
            .collect(),
    );

    let warm = bar(agents as u64, "tokens warmed");
    let next = Arc::new(AtomicUsize::new(0));
    let warm_started = Instant::now();
    let warm_tally = workers(args.concurrency, || {
        let (http, base, tokens, next, warm) = (
            http.clone(),
            base.clone(),
            tokens.clone(),
            next.clone(),
            warm.clone(),
        );
        async move {
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tokens.len() {
                    return tally;
                }
                request(&http, &base, &tokens[i], false, &mut tally).await;
                warm.inc(1);
            }
        }
    })
    .await;
    warm.finish_and_clear();
    let warm_seconds = warm_started.elapsed().as_secs_f64();

    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let next = Arc::new(AtomicUsize::new(0));
    let every = args.heartbeat_every.max(1);
    let started = Instant::now();
    let tally = workers(args.concurrency, || {
        let (http, base, tokens, next) = (http.clone(), base.clone(), tokens.clone(), next.clone());
        async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let token = &tokens[i % tokens.len()];
                request(&http, &base, token, i % every == every - 1, &mut tally).await;
            }
            tally
        }
    })
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let requests = tally.config_us.len() + tally.heartbeat_us.len();
    Ok(json!({
        "scenario": "poll",
        "agents": agents,
        "concurrency": args.concurrency,
        "pipelines": args.pipelines,
        "warmup": {
            "seconds": warm_seconds,
            "statuses": warm_tally.statuses,
        },
        "seconds": seconds,
        "requestsPerSecond": requests as f64 / seconds,
        "configPollsPerSecond": tally.config_us.len() as f64 / seconds,
        "configMs": Dist::of_us(&tally.config_us),
        "heartbeatMs": Dist::of_us(&tally.heartbeat_us),
        "statuses": tally.statuses,
        "machine": machine(),
    }))
}

/// Runs `n` copies of a worker and merges their tallies.
async fn workers<F, Fut>(n: usize, make: F) -> Tally
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Tally> + Send + 'static,
{
    let handles: Vec<_> = (0..n.max(1)).map(|_| tokio::spawn(make())).collect();
    let mut all = Tally::default();
    for handle in handles {
        if let Ok(t) = handle.await {
            all.config_us.extend(t.config_us);
            all.heartbeat_us.extend(t.heartbeat_us);
            for (status, count) in t.statuses {
                *all.statuses.entry(status).or_default() += count;
            }
        }
    }
    all
}

async fn request(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    heartbeat: bool,
    tally: &mut Tally,
) {
    let started = Instant::now();
    let request = if heartbeat {
        http.post(format!("{base}/api/agent/heartbeat"))
            .json(&json!({ "agentVersion": "bench", "pipelines": [] }))
    } else {
        http.get(format!("{base}/api/agent/config"))
    };
    let status = match request.bearer_auth(token).send().await {
        Ok(response) => {
            let status = response.status();
            let _ = response.bytes().await;
            status.as_u16().to_string()
        }
        Err(e) if e.is_timeout() => "timeout".to_owned(),
        Err(_) => "error".to_owned(),
    };
    let us = started.elapsed().as_micros() as i64;
    if status == "200" {
        if heartbeat {
            tally.heartbeat_us.push(us);
        } else {
            tally.config_us.push(us);
        }
    }
    *tally.statuses.entry(status).or_default() += 1;
}
