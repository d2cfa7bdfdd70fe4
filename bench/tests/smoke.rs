//! Every scenario at about 20 agents through the real binaries (target/debug): correctness
//! only — no frame lost, every agent back after the storm and the restart, no bcrypt run for a
//! node token, the JSON summary parses. No timing is asserted. The push scenarios run once more
//! on a private Redis Cluster.

use flotilla_testkit::redis_cluster::RedisCluster;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BENCH: &str = env!("CARGO_BIN_EXE_flotilla-bench");
/// Time limit of one scenario run.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// The api and gateway binaries beside the bench's. They are built by `scripts/test`
/// (`cargo build --workspace --bins`); building them from here would re-resolve features and
/// rebuild dependencies.
fn bin_dir() -> PathBuf {
    let dir = Path::new(BENCH)
        .parent()
        .expect("bench in a directory")
        .to_owned();
    for bin in ["flotilla-api", "flotilla-gateway"] {
        assert!(
            dir.join(bin).exists(),
            "{bin} is not built in {}: run `cargo build --workspace --bins` (scripts/test does)",
            dir.display()
        );
    }
    dir
}

/// A smoke database, on the server the other tests use; named per run and test so that runs
/// sharing one server (`seed` drops and recreates it) never meet. `scripts/test` drops old ones.
fn database_url(test: &str) -> String {
    let admin = std::env::var("FLOTILLA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (base, _) = admin.rsplit_once('/').expect("database URL has a path");
    format!("{base}/flotilla_bench_smoke_{test}_{}", std::process::id())
}

/// `--fleet` in a directory of the test's own, the smoke database, the binaries, small
/// children.
fn common(test: &str) -> (PathBuf, Vec<String>) {
    let dir = std::env::temp_dir().join(format!(
        "flotilla-bench-smoke-{test}-{}",
        std::process::id()
    ));
    let common = [
        "--fleet",
        &dir.join("fleet.txt").to_string_lossy(),
        "--database-url",
        &database_url(test),
        "--bin-dir",
        &bin_dir().to_string_lossy(),
        "--per-child",
        "15",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    (dir, common)
}

/// Runs `flotilla-bench <args> <common>` and parses its summary.
fn bench(args: &[&str], common: &[String]) -> Value {
    let mut child = Command::new(BENCH)
        .args(args)
        .args(common)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("bench starts");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            panic!(
                "`flotilla-bench {}` took longer than {RUN_LIMIT:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("output");
    assert!(
        output.status.success(),
        "`flotilla-bench {}` failed",
        args.join(" ")
    );
    serde_json::from_slice(&output.stdout).expect("a JSON summary on stdout")
}

#[test]
fn every_scenario_runs_at_small_n() {
    let (dir, common) = common("single");

    let seed = bench(&["seed", "--nodes", "40", "--bcrypt-cost", "4"], &common);
    assert_eq!(seed["nodes"], 40);

    // The push scenarios over both transports: the older agents' WebSocket and current
    // agents' SSE stream.
    for transport in ["websocket", "sse"] {
        let over = |args: &[&str]| {
            let mut args = args.to_vec();
            args.extend(["--transport", transport]);
            bench(&args, &common)
        };
        let idle = over(&["idle", "--agents", "20", "--idle-secs", "1"]);
        assert_eq!(idle["transport"], transport, "{idle}");
        assert_eq!(idle["connectedAfterIdle"], 20, "{idle}");
        assert_eq!(idle["heldByGateways"], 20, "{idle}");
        assert_eq!(idle["warmReconnect"]["connected"], 20, "{idle}");

        let fanout = over(&["fanout", "--agents", "20", "--rounds", "2"]);
        assert_eq!(fanout["gatewayOnly"]["lost"], 0, "{fanout}");
        assert_eq!(fanout["deploy"]["lost"], 0, "{fanout}");
        assert_eq!(fanout["deploy"]["rounds"][0]["received"], 20, "{fanout}");

        let latency = over(&[
            "latency",
            "--agents",
            "20",
            "--pushes",
            "40",
            "--deploys",
            "5",
        ]);
        assert_eq!(latency["push"]["lost"], 0, "{latency}");
        assert_eq!(latency["deploy"]["lost"], 0, "{latency}");
    }

    let storm = bench(&["storm", "--agents-per-gateway", "20"], &common);
    assert_eq!(storm["finalConnected"], 40, "{storm}");
    assert!(storm["agentsBackSeconds"].is_number(), "{storm}");
    assert!(storm["shownConnectedSeconds"].is_number(), "{storm}");
    assert_eq!(storm["reconnects"], 20, "{storm}");

    // The restart flushes its Redis database: one of its own, apart from the other tests'.
    let redis = std::env::var("FLOTILLA_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let own_redis = format!("{}/9", redis.trim_end_matches('/'));
    let restart = bench(
        &["restart", "--agents", "20", "--redis-url", &own_redis],
        &common,
    );
    assert_eq!(restart["finalConnected"], 20, "{restart}");
    assert!(restart["agentsBackSeconds"].is_number(), "{restart}");
    assert!(restart["shownConnectedSeconds"].is_number(), "{restart}");
    assert_eq!(restart["bcrypt"]["newGateway"], 0.0, "{restart}");
    assert_eq!(restart["bcrypt"]["api"], 0.0, "{restart}");

    let steady = bench(
        &[
            "steady",
            "--agents",
            "20",
            "--poll-ms",
            "200",
            "--heartbeat-ms",
            "500",
            "--secs",
            "3",
            "--window-secs",
            "1",
            "--cache-ttl-secs",
            "1",
        ],
        &common,
    );
    assert_eq!(steady["failed"], 0, "{steady}");
    assert!(steady["requests"].as_u64().unwrap() > 0, "{steady}");
    assert_eq!(steady["bcryptTotal"], 0.0, "{steady}");
    assert!(steady["windows"].as_array().unwrap().len() >= 3, "{steady}");

    let poll = bench(
        &[
            "poll",
            "--agents",
            "40",
            "--secs",
            "2",
            "--concurrency",
            "4",
        ],
        &common,
    );
    assert!(poll["configMs"]["count"].as_u64().unwrap() > 0, "{poll}");
    assert!(poll["heartbeatMs"]["count"].as_u64().unwrap() > 0, "{poll}");

    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn push_scenarios_run_on_a_cluster() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let cluster = runtime.block_on(RedisCluster::start());
    let (dir, mut common) = common("cluster");
    common.extend(["--redis-url".to_string(), cluster.setting()]);

    let seed = bench(&["seed", "--nodes", "20", "--bcrypt-cost", "4"], &common);
    assert_eq!(seed["nodes"], 20);

    let fanout = bench(
        &[
            "fanout",
            "--agents",
            "20",
            "--gateways",
            "2",
            "--rounds",
            "2",
        ],
        &common,
    );
    assert_eq!(fanout["redis"]["publish"], "SPUBLISH", "{fanout}");
    assert_eq!(fanout["redis"]["masters"], 3, "{fanout}");
    assert_eq!(fanout["gatewayOnly"]["lost"], 0, "{fanout}");
    assert_eq!(
        fanout["gatewayOnly"]["rounds"][0]["reachedSubscribers"], 20,
        "{fanout}"
    );
    assert_eq!(fanout["deploy"]["lost"], 0, "{fanout}");

    let latency = bench(
        &[
            "latency",
            "--agents",
            "20",
            "--pushes",
            "20",
            "--deploys",
            "3",
        ],
        &common,
    );
    assert_eq!(latency["push"]["lost"], 0, "{latency}");
    assert_eq!(latency["deploy"]["lost"], 0, "{latency}");

    let cpu = bench(
        &[
            "pubsub-cpu",
            "--agents",
            "20",
            "--gateways",
            "2",
            "--rounds",
            "2",
            "--idle-secs",
            "1",
        ],
        &common,
    );
    assert_eq!(cpu["commands"]["spublish"]["lost"], 0, "{cpu}");
    assert_eq!(cpu["commands"]["spublish"]["pushes"], 40, "{cpu}");
    assert_eq!(cpu["commands"]["publish"]["reachedSubscribers"], 0, "{cpu}");
    let servers = cpu["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 6, "{cpu}");
    for server in servers {
        for command in ["spublish", "publish"] {
            assert!(server[command]["cpuUsPerPush"].is_number(), "{cpu}");
        }
    }

    // Its processes are killed and reaped within the runtime.
    runtime.block_on(async move { drop(cluster) });
    let _ = std::fs::remove_dir_all(dir);
}
