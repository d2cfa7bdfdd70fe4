//! `page`: the operator console in headless Chromium over a large fleet that lives on.
//!
//! On a `seed`ed fleet given `browse`'s spread of states, it starts the api and `--agents`
//! simulated agents that heartbeat every `--heartbeat-ms` (spread over one interval) reporting
//! one deployed pipeline; each heartbeat flips that pipeline's status with probability
//! `--churn`, so the page has real changes to follow. Chromium reaches the api through a
//! counting TCP proxy. Measured:
//! - first render: navigation start to the first fleet rows on screen, as the browser's clock
//!   says (`performance.now()`), on a page nobody opened before;
//! - the settling interval (every agent's first heartbeat changes its row) and then a steady
//!   window of `--secs`: Chromium's CPU (every process under chromedriver, from `/proc`) as a
//!   share of one core, and the bytes the page received per second.

use super::browse::spread;
use super::{fleet, machine};
use crate::operator::Operator;
use crate::services::{self, cpu_seconds, ADMIN_TOKEN};
use anyhow::Context;
use flotilla_testkit::proxy::Proxy;
use flotilla_testkit::webdriver::{headless_chromium, Chromedriver, Session};
use futures_util::StreamExt;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Time limit of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the first render may take before the run is called failed.
const RENDER_LIMIT: Duration = Duration::from_secs(30);

/// Options of `page`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Agents heartbeating (0: the whole fleet).
    #[arg(long, default_value_t = 10_000)]
    pub agents: usize,
    /// Each agent's heartbeat interval, milliseconds.
    #[arg(long, default_value_t = 15_000)]
    pub heartbeat_ms: u64,
    /// Probability that a heartbeat flips its pipeline's status (RUNNING ⇄ CRASHED).
    #[arg(long, default_value_t = 0.01)]
    pub churn: f64,
    /// Length of the steady window, seconds.
    #[arg(long, default_value_t = 60)]
    pub secs: u64,
    #[command(flatten)]
    pub common: crate::Common,
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<Value> {
    let common = &args.common;
    let fleet = fleet(common, args.agents.max(1))?;
    let agents = super::agents_or_all(args.agents, &fleet);
    let mut db = PgConnection::connect(&common.database_url).await?;
    spread(&mut db, fleet.environment_id).await?;
    db.close().await?;
    let api = services::api(common, &[]).await?;
    let operator = Operator::new(api.addr)?;
    let pipeline = operator
        .create_pipeline(fleet.environment_id, "page-bench", json!({}))
        .await?;
    operator.deploy(pipeline).await?;
    let proxy = Proxy::start(api.addr).await;
    let base = format!("http://{}", proxy.addr);

    // The agents go straight to the api: only the page's traffic crosses the proxy.
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(256)
        .build()?;
    let stop = CancellationToken::new();
    let heartbeat = Duration::from_millis(args.heartbeat_ms.max(1));
    let tasks: Vec<_> = fleet.nodes[..agents]
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let offset = heartbeat.mul_f64(i as f64 / agents as f64);
            tokio::spawn(beat(
                http.clone(),
                format!("http://{}", api.addr),
                node.token.clone(),
                pipeline.to_string(),
                offset,
                heartbeat,
                args.churn,
                stop.clone(),
            ))
        })
        .collect();

    let events = Arc::new(EventCounts::default());
    let follower = tokio::spawn(follow_events(
        format!("http://{}", api.addr),
        events.clone(),
        stop.clone(),
    ));
    let driver = Chromedriver::start().await?;
    let measured = measure(&driver, &proxy, &base, heartbeat, &args, &events).await;
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    let _ = follower.await;
    let (settling, settled) = measured?;
    Ok(json!({
        "scenario": "page",
        "fleetNodes": fleet.nodes.len(),
        "agents": agents,
        "heartbeatMs": args.heartbeat_ms,
        "churn": args.churn,
        "settling": settling,
        "settled": settled,
        "machine": machine(),
    }))
}

/// Fleet events the api sent one listener, and how many of them were `resync`.
#[derive(Default)]
struct EventCounts {
    events: AtomicU64,
    resyncs: AtomicU64,
}

impl EventCounts {
    fn read(&self) -> (u64, u64) {
        (
            self.events.load(Ordering::Relaxed),
            self.resyncs.load(Ordering::Relaxed),
        )
    }
}

/// Follows the fleet events stream as the page does (straight to the api), counting events.
async fn follow_events(base: String, counts: Arc<EventCounts>, stop: CancellationToken) {
    let http = reqwest::Client::new();
    let Ok(response) = http
        .get(format!("{base}/api/v1/fleet/events"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
    else {
        return;
    };
    let mut body = response.bytes_stream();
    let mut pending = Vec::new();
    loop {
        let chunk = tokio::select! {
            chunk = body.next() => chunk,
            _ = stop.cancelled() => return,
        };
        let Some(Ok(chunk)) = chunk else { return };
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if line.starts_with(b"data:") {
                counts.events.fetch_add(1, Ordering::Relaxed);
                if line.windows(6).any(|w| w == b"resync") {
                    counts.resyncs.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Opens the console while every agent's first heartbeat changes its row (as after a
/// restart of the api), then again in a new browser once the fleet has settled; each time
/// the first render, then the browser's cost over a window.
async fn measure(
    driver: &Chromedriver,
    proxy: &Proxy,
    base: &str,
    heartbeat: Duration,
    args: &Args,
    events: &EventCounts,
) -> anyhow::Result<(Value, Value)> {
    let browser = Session::new(&driver.url, headless_chromium()).await?;
    let first_render = open(&browser, base).await?;
    let mut settling = window(driver, proxy, heartbeat, events).await?;
    settling["firstRenderMs"] = json!(first_render);
    let _ = browser.close().await;
    let browser = Session::new(&driver.url, headless_chromium()).await?;
    let first_render = open(&browser, base).await?;
    let mut settled = window(driver, proxy, Duration::from_secs(args.secs.max(1)), events).await?;
    settled["firstRenderMs"] = json!(first_render);
    // The page is still alive and showing rows after all that.
    let rows = browser
        .execute(
            "return document.querySelectorAll('tr[data-node-id]').length",
            json!([]),
        )
        .await?;
    let _ = browser.close().await;
    anyhow::ensure!(rows.as_u64().unwrap_or(0) > 0, "the fleet rows vanished");
    Ok((settling, settled))
}

/// Signs in and opens the fleet; returns the first render: navigation start to the first
/// fleet rows on screen, by the browser's clock.
async fn open(browser: &Session, base: &str) -> anyhow::Result<f64> {
    browser.goto(&format!("{base}/")).await?;
    browser.find("#token").await?.send_keys(ADMIN_TOKEN).await?;
    browser.find("button[type=submit]").await?.click().await?;
    // A fresh navigation, so the clock starts at zero for the fleet page alone.
    browser.goto(&format!("{base}/#/fleet")).await?;
    let started = Instant::now();
    loop {
        let seen = browser
            .execute(
                "return [document.querySelectorAll('tr[data-node-id]').length, performance.now()]",
                json!([]),
            )
            .await?;
        if seen[0].as_u64().unwrap_or(0) > 0 {
            return seen[1].as_f64().context("performance.now()");
        }
        anyhow::ensure!(
            started.elapsed() < RENDER_LIMIT,
            "no fleet rows within {RENDER_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Chromium's CPU (share of one core), the page's received bytes per second and the fleet
/// events sent per second over `length`.
async fn window(
    driver: &Chromedriver,
    proxy: &Proxy,
    length: Duration,
    events: &EventCounts,
) -> anyhow::Result<Value> {
    let (cpu_before, bytes_before, up_before) = (
        browser_cpu(driver.pid()),
        proxy.bytes_to_clients(),
        proxy.bytes_to_server(),
    );
    let (events_before, resyncs_before) = events.read();
    let started = Instant::now();
    tokio::time::sleep(length).await;
    let secs = started.elapsed().as_secs_f64();
    let cpu = browser_cpu(driver.pid()) - cpu_before;
    let (events_after, resyncs_after) = events.read();
    Ok(json!({
        "seconds": secs,
        "browserCpuPercentOfOneCore": cpu / secs * 100.0,
        "receivedBytesPerSecond": (proxy.bytes_to_clients() - bytes_before) as f64 / secs,
        "sentBytesPerSecond": (proxy.bytes_to_server() - up_before) as f64 / secs,
        "fleetEventsPerSecond": (events_after - events_before) as f64 / secs,
        "resyncs": resyncs_after - resyncs_before,
    }))
}

/// CPU seconds of every process under `root` (Chromium's browser, renderer, GPU and utility
/// processes run under chromedriver).
fn browser_cpu(root: u32) -> f64 {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The fields after the command (which may hold spaces) start after the last ')'.
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
                parents.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    tree.iter().filter_map(|&pid| cpu_seconds(pid).ok()).sum()
}

/// One agent: a heartbeat every `interval` reporting `pipeline`, its status flipped with
/// probability `churn`.
#[allow(clippy::too_many_arguments)]
async fn beat(
    http: reqwest::Client,
    base: String,
    token: String,
    pipeline: String,
    offset: Duration,
    interval: Duration,
    churn: f64,
    stop: CancellationToken,
) {
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut running = true;
    loop {
        tokio::select! {
            _ = timer.tick() => {}
            _ = stop.cancelled() => return,
        }
        if rand::random::<f64>() < churn {
            running = !running;
        }
        let status = if running { "RUNNING" } else { "CRASHED" };
        let body = json!({"agentVersion": "bench", "vectorVersion": "0.47.0",
            "pipelines": [{"pipelineId": pipeline, "version": 1, "status": status}]});
        let _ = http
            .post(format!("{base}/api/agent/heartbeat"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await;
    }
}
