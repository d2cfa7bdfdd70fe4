//! `seed`: a bench database with one environment and N nodes, and the fleet file naming them.
//!
//! Nodes go straight into Postgres, each with a token of its own stored as its digest, exactly
//! as enrollment stores it; nothing is written to Redis, so every scenario starts from what a
//! fleet has after any restart. Each node carries the label `bench=<index>`, so a pipeline can
//! select a single node.

use anyhow::Context;
use flotilla_shared::auth::tokens::{self, ENROLL_PREFIX};
use flotilla_testkit::seed;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sqlx::{Connection, PgConnection};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;
use uuid::Uuid;

/// Rows inserted per round trip.
const BATCH: usize = 5000;

/// Options of `seed`.
#[derive(Debug, Clone, clap::Args)]
pub struct SeedArgs {
    /// Nodes to create.
    #[arg(long)]
    pub nodes: usize,
    /// bcrypt cost of the enrollment token's hash (the services' default is 12).
    #[arg(long, default_value_t = 12)]
    pub bcrypt_cost: u32,
    #[command(flatten)]
    pub common: crate::Common,
}

/// One simulated node.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its id.
    pub id: Uuid,
    /// Its node token.
    pub token: String,
}

/// What `seed` wrote: read by every scenario and by the agent processes.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// The environment holding every node.
    pub environment_id: Uuid,
    /// Nodes in index order.
    pub nodes: Vec<Node>,
}

impl Fleet {
    /// Reads a fleet file (`environment <id>`, then `<node id> <token>` per line).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot read {} (run `seed` first)", path.display()))?;
        let mut lines = std::io::BufReader::new(file).lines();
        let header = lines.next().context("empty fleet file")??;
        let environment_id = header
            .strip_prefix("environment ")
            .context("fleet file header")?
            .parse()?;
        let mut nodes = Vec::new();
        for line in lines {
            let line = line?;
            let (id, token) = line.split_once(' ').context("fleet file line")?;
            nodes.push(Node {
                id: id.parse()?,
                token: token.to_owned(),
            });
        }
        Ok(Self {
            environment_id,
            nodes,
        })
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(out, "environment {}", self.environment_id)?;
        for node in &self.nodes {
            writeln!(out, "{} {}", node.id, node.token)?;
        }
        out.flush()?;
        Ok(())
    }
}

/// Recreates the bench database and fills it; returns the JSON summary.
pub async fn seed(args: SeedArgs) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let common = &args.common;
    recreate_database(&common.database_url).await?;
    let mut db = PgConnection::connect(&common.database_url).await?;
    flotilla_shared::db::MIGRATOR.run(&mut db).await?;

    let environment_id = Uuid::new_v4();
    let enroll = tokens::issue(ENROLL_PREFIX);
    let hash = bcrypt::hash(&enroll.secret, args.bcrypt_cost)?;
    sqlx::query(
        "INSERT INTO environments (id, name, enrollment_token_lookup, enrollment_token_hash, enrollment_token_hint)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(environment_id)
    .bind(format!("bench-{}", &environment_id.simple().to_string()[..8]))
    .bind(&enroll.lookup)
    .bind(&hash)
    .bind(tokens::hint(&enroll.token, ENROLL_PREFIX))
    .execute(&mut db)
    .await?;

    let bar = bar(args.nodes as u64, "nodes");
    let mut fleet = Fleet {
        environment_id,
        nodes: Vec::with_capacity(args.nodes),
    };
    for start in (0..args.nodes).step_by(BATCH) {
        let end = (start + BATCH).min(args.nodes);
        let hosts: Vec<String> = (start..end).map(|i| format!("bench-{i:06}")).collect();
        let labels: Vec<serde_json::Value> = (start..end)
            .map(|i| json!({ "bench": i.to_string() }))
            .collect();
        let seeded = seed::nodes(&mut db, environment_id, &hosts, &labels, true).await?;
        fleet
            .nodes
            .extend(seeded.into_iter().map(|(id, token)| Node { id, token }));
        bar.set_position(end as u64);
    }
    bar.finish_and_clear();
    fleet.save(&common.fleet)?;
    Ok(json!({
        "scenario": "seed",
        "nodes": args.nodes,
        "environmentId": environment_id,
        "fleetFile": common.fleet,
        "elapsedMs": started.elapsed().as_millis() as u64,
    }))
}

/// Drops and creates the database named in `url` (connecting to `postgres` to do it).
async fn recreate_database(url: &str) -> anyhow::Result<()> {
    let (server, name) = url
        .rsplit_once('/')
        .context("database URL without a database name")?;
    let name = name.split('?').next().unwrap_or(name);
    anyhow::ensure!(
        name.starts_with("flotilla_bench")
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "refusing to recreate `{name}`: the bench database name must start with flotilla_bench"
    );
    let mut admin = PgConnection::connect(&format!("{server}/postgres")).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    Ok(())
}

/// A progress bar on stderr.
pub fn bar(len: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let template =
        format!("{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {unit} ({{per_sec}}) {{msg}}");
    bar.set_style(
        ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// The default fleet file.
pub fn default_fleet_path() -> PathBuf {
    PathBuf::from("target/bench/fleet.txt")
}
