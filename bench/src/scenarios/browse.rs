//! `browse`: the fleet API over a large fleet, as the fleet page reads it.
//!
//! On a `seed`ed fleet it first gives the nodes a realistic spread (statuses, reported and
//! operator labels, deployment modes, maintenance, last-seen times, two pipelines each with
//! varied statuses) and connects a share of them through presence, written in Redis as a
//! gateway writes it (`--connected`, half WebSocket, half SSE). Then it starts the api and
//! times, one request at a time, the first page, a page deep in the fleet (by cursor), the
//! summary and every filter; each figure is the client-side time of a whole request, body
//! read. Presence is released at the end.

use super::{fleet, machine};
use crate::services::{self, ADMIN_TOKEN};
use crate::stats::Dist;
use anyhow::Context;
use flotilla_shared::presence::{self, Presence, Transport};
use flotilla_shared::redis_conn::Redis;
use futures_util::StreamExt;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use std::time::Instant;
use uuid::Uuid;

/// The gateway id the bench's presence entries name.
const GATEWAY: &str = "bench-browse-gw";
/// Presence writes in flight at once.
const CONCURRENCY: usize = 64;

/// Options of `browse`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Nodes shown connected (spread evenly over the fleet).
    #[arg(long, default_value_t = 10_000)]
    pub connected: usize,
    /// Timed requests per query (after 3 untimed ones).
    #[arg(long, default_value_t = 30)]
    pub repeat: usize,
    /// How deep the deep page is, in nodes.
    #[arg(long, default_value_t = 50_000)]
    pub depth: usize,
    #[command(flatten)]
    pub common: crate::Common,
}

/// Gives the seeded nodes varied state and two pipelines each; returns the pipelines' ids.
pub(crate) async fn spread(db: &mut PgConnection, environment: Uuid) -> anyhow::Result<Vec<Uuid>> {
    sqlx::query(
        "UPDATE nodes SET
            status = CASE WHEN ord % 10 = 0 THEN 'UNREACHABLE' ELSE 'HEALTHY' END,
            labels = labels || jsonb_build_object('role', (ARRAY['web', 'db', 'cache', 'queue'])[ord % 4 + 1]),
            reported_labels = jsonb_build_object('zone', (ARRAY['eu', 'us', 'ap'])[ord % 3 + 1]),
            deployment_mode = CASE WHEN ord % 20 = 0 THEN 'DOCKER' ELSE 'STANDALONE' END,
            maintenance = ord % 100 = 0,
            agent_version = '1.4.2', vector_version = '0.47.0',
            last_seen = now() - (ord % 3600) * interval '1 second'
         FROM (SELECT id, row_number() OVER (ORDER BY id) AS ord FROM nodes WHERE environment_id = $1) o
         WHERE nodes.id = o.id",
    )
    .bind(environment)
    .execute(&mut *db)
    .await?;
    sqlx::query("DELETE FROM pipelines WHERE environment_id = $1")
        .bind(environment)
        .execute(&mut *db)
        .await?;
    let mut pipelines = Vec::new();
    for i in 0..4 {
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO pipelines (id, environment_id, name) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(environment)
            .bind(format!("browse-{i}"))
            .execute(&mut *db)
            .await?;
        pipelines.push(id);
    }
    // Each node runs two of the four; 2% CRASHED, 0.5% CRASH_LOOP, 1% STOPPED, else RUNNING.
    sqlx::query(
        "INSERT INTO node_pipeline_status (node_id, pipeline_id, version, status)
         SELECT o.id, ($2::uuid[])[(o.ord + k) % 4 + 1], 1,
                CASE WHEN (o.ord * 7 + k) % 200 < 4 THEN 'CRASHED'
                     WHEN (o.ord * 7 + k) % 200 = 4 THEN 'CRASH_LOOP'
                     WHEN (o.ord * 7 + k) % 200 < 7 THEN 'STOPPED'
                     ELSE 'RUNNING' END
         FROM (SELECT id, row_number() OVER (ORDER BY id) AS ord FROM nodes WHERE environment_id = $1) o,
              generate_series(0, 1) k",
    )
    .bind(environment)
    .bind(&pipelines)
    .execute(&mut *db)
    .await?;
    sqlx::query("ANALYZE").execute(&mut *db).await?;
    Ok(pipelines)
}

/// Claims (or, with `release`, releases) presence for `nodes` as gateway [`GATEWAY`].
async fn presence_of(redis: &Redis, nodes: &[Uuid], release: bool) -> anyhow::Result<()> {
    let results: Vec<_> = futures_util::stream::iter(nodes.iter().enumerate())
        .map(|(i, &node)| async move {
            let conn = format!("browse-{i}");
            if release {
                presence::release(redis, node, &conn, None).await.map(drop)
            } else {
                let p = Presence {
                    gateway_id: GATEWAY.into(),
                    conn_id: conn,
                    since_ms: 1,
                    transport: if i % 2 == 0 {
                        Transport::Websocket
                    } else {
                        Transport::Sse
                    },
                };
                presence::claim(redis, node, &p, None).await.map(drop)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect::<Result<(), _>>()?;
    Ok(())
}

/// Times `repeat` GETs of `path` (after 3 untimed); returns the distribution and the last
/// answer.
async fn time(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    repeat: usize,
) -> anyhow::Result<(Dist, Value)> {
    let mut samples = Vec::with_capacity(repeat);
    let mut last = Value::Null;
    for i in 0..repeat + 3 {
        let started = Instant::now();
        let response = http
            .get(format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?;
        let status = response.status();
        let body = response.bytes().await?;
        let elapsed = started.elapsed().as_micros() as i64;
        anyhow::ensure!(status.is_success(), "{path}: {status}");
        if i >= 3 {
            samples.push(elapsed);
        }
        if i == repeat + 2 {
            last = serde_json::from_slice(&body)?;
        }
    }
    Ok((Dist::of_us(&samples), last))
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<Value> {
    let common = &args.common;
    let fleet = fleet(common, args.connected.max(1))?;
    let env = fleet.environment_id;
    let mut db = PgConnection::connect(&common.database_url).await?;
    let prepared = Instant::now();
    let pipelines = spread(&mut db, env).await?;
    let redis = common.redis()?;
    let mut alive = redis::cmd("SET");
    alive
        .arg(flotilla_shared::presence::keys(&redis).alive(GATEWAY))
        .arg(1)
        .arg("EX")
        .arg(3600);
    redis.query::<()>(&alive).await?;
    // Spread over the fleet (every k-th node), as connections are in a real one.
    let step = (fleet.nodes.len() / args.connected.max(1)).max(1);
    let connected: Vec<Uuid> = fleet
        .nodes
        .iter()
        .step_by(step)
        .take(args.connected)
        .map(|n| n.id)
        .collect();
    presence_of(&redis, &connected, false).await?;
    let prepare_ms = prepared.elapsed().as_millis() as u64;

    // The spread's statuses stay as seeded: no agent heartbeats here, and the health sweep
    // would otherwise mark every node UNREACHABLE.
    let api = services::api(common, &[("FLOTILLA__API__UNHEALTHY_THRESHOLD", "1000000")]).await?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()?;
    let base = format!("http://{}", api.addr);

    // The deep page: walk to `depth` nodes by cursor, 1,000 at a time.
    let mut cursor = String::new();
    for _ in 0..args.depth / 1000 {
        let page: Value = http
            .get(format!(
                "{base}/api/v1/fleet?environmentId={env}&limit=1000{cursor}"
            ))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?
            .json()
            .await?;
        let next = page["nextCursor"]
            .as_str()
            .context("the fleet ended early")?;
        cursor = format!("&cursor={next}");
    }
    let ids: Vec<String> = fleet.nodes[fleet.nodes.len() / 2..][..100]
        .iter()
        .map(|n| n.id.to_string())
        .collect();
    let (p0, p1) = (pipelines[0], pipelines[1]);
    let queries: Vec<(&str, String)> = vec![
        ("first page (100)", String::new()),
        ("first page (1000)", "&limit=1000".into()),
        ("deep page (cursor)", cursor.clone()),
        ("sort=lastSeen", "&sort=lastSeen".into()),
        ("status=UNREACHABLE", "&status=UNREACHABLE".into()),
        ("connected=true", "&connected=true".into()),
        ("connected=false", "&connected=false".into()),
        ("transport=sse", "&transport=sse".into()),
        ("label=role=db (operator)", "&label=role%3Ddb".into()),
        ("label=zone=eu (reported)", "&label=zone%3Deu".into()),
        (
            "label=bench=77777 (one node)",
            "&label=bench%3D77777".into(),
        ),
        ("host prefix", "&host=BENCH-0777".into()),
        ("pipelineId", format!("&pipelineId={p0}")),
        (
            "pipelineId + CRASHED",
            format!("&pipelineId={p1}&pipelineStatus=CRASHED"),
        ),
        (
            "pipelineStatus=CRASH_LOOP",
            "&pipelineStatus=CRASH_LOOP".into(),
        ),
        ("crashed=true", "&crashed=true".into()),
        ("maintenance=true", "&maintenance=true".into()),
        ("ids (100)", format!("&ids={}", ids.join(","))),
        (
            "status + connected + label",
            "&status=HEALTHY&connected=true&label=role%3Dweb".into(),
        ),
        (
            "crashed + connected=false, lastSeen",
            "&crashed=true&connected=false&sort=lastSeen".into(),
        ),
    ];
    let mut results = Vec::new();
    for (name, query) in &queries {
        let path = format!("/api/v1/fleet?environmentId={env}{query}");
        let (dist, last) = time(&http, &base, &path, args.repeat).await?;
        results.push(json!({
            "query": name,
            "rows": last["nodes"].as_array().map_or(0, Vec::len),
            "more": last["nextCursor"].is_string(),
            "ms": dist,
        }));
    }
    let (summary_dist, summary) = time(
        &http,
        &base,
        &format!("/api/v1/fleet/summary?environmentId={env}"),
        args.repeat,
    )
    .await?;
    results.push(json!({ "query": "summary", "ms": summary_dist, "answer": summary }));

    presence_of(&redis, &connected, true).await?;
    let mut gone = redis::cmd("DEL");
    gone.arg(flotilla_shared::presence::keys(&redis).alive(GATEWAY));
    redis.query::<()>(&gone).await?;
    drop(api);
    Ok(json!({
        "scenario": "browse",
        "nodes": fleet.nodes.len(),
        "connected": args.connected,
        "repeat": args.repeat,
        "prepareMs": prepare_ms,
        "results": results,
        "machine": machine(),
    }))
}
