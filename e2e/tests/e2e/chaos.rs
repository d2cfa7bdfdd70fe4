//! Convergence under faults: K reference agents behind nginx and two gateways, operators
//! changing things at random, while gateways are killed (`kill -9`) and drained (SIGTERM),
//! Redis restarts, Postgres becomes unreachable for a while, and agents restart (dropping
//! their connections). Afterwards every agent runs exactly what the api says, every sample
//! request has ended, presence matches the sockets, nothing panicked, and no operator request
//! got a 5xx except while Postgres was down. The seed is printed;
//! `FLOTILLA_CHAOS_SEED=<seed>` replays a run, and `FLOTILLA_CHAOS_AGENTS` /
//! `FLOTILLA_CHAOS_SECONDS` make it larger (defaults 20 and 20).

use flotilla_agent::{Config, Tuning};
use flotilla_e2e::{repo_root, Topology};
use flotilla_shared::secret::Secret;
use flotilla_testkit::proxy::Proxy;
use flotilla_testkit::redis_server::RedisServer;
use flotilla_testkit::{db, eventually};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const ADMIN: &str = flotilla_testkit::api::ADMIN_TOKEN;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Operator {
    http: reqwest::Client,
    base: String,
    server_errors: Vec<String>,
    /// Set while Postgres is deliberately unreachable: 5xx answers are expected then.
    pg_down: bool,
    /// 5xx answers while Postgres was down.
    expected_errors: u32,
}

impl Operator {
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (status, body, error) =
            match tokio::time::timeout(Duration::from_secs(10), req.send()).await {
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    let body = resp.json().await.unwrap_or(Value::Null);
                    let error = status
                        .is_server_error()
                        .then(|| format!("{method} {path} → {status} {body}"));
                    (status, body, error)
                }
                other => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Value::Null,
                    Some(format!("{method} {path} → no answer: {other:?}")),
                ),
            };
        match error {
            Some(_) if self.pg_down => self.expected_errors += 1,
            Some(e) => self.server_errors.push(e),
            None => {}
        }
        (status, body)
    }
}

fn tuning() -> Tuning {
    let ms = Duration::from_millis;
    Tuning {
        heartbeat_debounce: ms(100),
        read_deadline: ms(3000),
        push_backoff_base: ms(100),
        push_backoff_max: ms(1000),
        push_stable_after: ms(2000),
        drain_reconnect_max: ms(200),
        crash_backoff_base: ms(100),
        crash_backoff_max: ms(1000),
        tap_timeout: ms(3000),
        sample_retry: ms(300),
        ..Tuning::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_converges_under_faults() {
    let seed: u64 = env_or("FLOTILLA_CHAOS_SEED", rand::random());
    let agents: usize = env_or("FLOTILLA_CHAOS_AGENTS", 20);
    let chaos = Duration::from_secs(env_or("FLOTILLA_CHAOS_SECONDS", 20));
    println!("chaos seed: {seed} (replay with FLOTILLA_CHAOS_SEED={seed}); {agents} agents, {chaos:?} of faults");
    let mut rng = StdRng::seed_from_u64(seed);
    // The agents' own account of their push channels, shown when the test fails.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn,flotilla_agent=info")
        .try_init();

    let db = db::fresh().await;
    // The services reach Postgres through a proxy the test can cut.
    let (pg_target, pg_url) = Proxy::in_front_of(&db.url).await;
    let mut redis = RedisServer::start().await;
    let topo = Topology::start_with(
        &pg_url,
        &redis.url(),
        ADMIN,
        &[
            ("FLOTILLA__API__SAMPLE_REQUEST_TTL_SECS", "8"),
            ("FLOTILLA__API__HEALTH_SWEEP_INTERVAL_MS", "500"),
            ("FLOTILLA__API__ENROLL_PER_MINUTE", "1000"),
            ("FLOTILLA__REDIS__COMMAND_TIMEOUT_MS", "500"),
            ("FLOTILLA__GATEWAY__LIVENESS_TTL_MS", "3000"),
            ("FLOTILLA__GATEWAY__HEARTBEAT_INTERVAL_MS", "500"),
            ("FLOTILLA__GATEWAY__PING_INTERVAL_MS", "1000"),
            ("FLOTILLA__GATEWAY__PONG_TIMEOUT_MS", "2500"),
            ("FLOTILLA__GATEWAY__UNSOLICITED_PONG_INTERVAL_MS", "800"),
            ("FLOTILLA__GATEWAY__SHUTDOWN_GRACE_MS", "3000"),
            ("FLOTILLA__GATEWAY__DRAIN_PAUSE_MS", "20"),
            ("FLOTILLA__GATEWAY__RECONNECT_LIMIT", "1000"),
            ("FLOTILLA__AUTH__BCRYPT_COST", "4"),
        ],
    )
    .expect("topology starts");
    let lb = topo.get("LB_URL").to_owned();
    let mut op = Operator {
        http: reqwest::Client::new(),
        base: lb.clone(),
        server_errors: Vec::new(),
        pg_down: false,
        expected_errors: 0,
    };
    op.call(
        Method::PUT,
        "/api/v1/settings",
        Some(json!({"pollIntervalMs": 1000})),
    )
    .await;
    let (_, env) = op
        .call(
            Method::POST,
            "/api/v1/environments",
            Some(json!({"name": "chaos"})),
        )
        .await;
    let enrollment = env["enrollmentToken"]
        .as_str()
        .expect("environment created")
        .to_owned();

    // The agents, in this process, each with its own data dir and the stand-in Vector.
    let scratch =
        std::env::temp_dir().join(format!("flotilla-chaos-{seed}-{}", std::process::id()));
    let vector = repo_root().join("agent/tests/fixtures/vector");
    let stop_agents = CancellationToken::new();
    let mut data_dirs: Vec<PathBuf> = Vec::new();
    let mut configs = Vec::new();
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..agents {
        let data = scratch.join(format!("agent-{i}"));
        let mut config = Config::new(lb.parse().unwrap(), &data);
        config.enrollment_token = Some(Secret::new(enrollment.clone()));
        config.vector_bin = vector.clone();
        config.poll_interval = Duration::from_secs(1);
        config.tuning = tuning();
        data_dirs.push(data);
        let stop = stop_agents.child_token();
        tasks.push(tokio::spawn(flotilla_agent::run(
            config.clone(),
            stop.clone(),
        )));
        configs.push(config);
        stops.push(stop);
    }
    let tokens: Vec<String> =
        eventually("every agent enrolled", Duration::from_secs(30), || async {
            data_dirs
                .iter()
                .map(|d| {
                    std::fs::read_to_string(d.join("node-token"))
                        .ok()
                        .map(|t| t.trim().to_owned())
                })
                .collect::<Option<Vec<_>>>()
        })
        .await;
    let (_, fleet) = op.call(Method::GET, "/api/v1/fleet", None).await;
    let nodes: Vec<String> = fleet["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(nodes.len(), agents);

    let mut pipelines = Vec::new();
    for (name, selector) in [
        ("all", json!({})),
        ("tier-a", json!({"tier": "a"})),
        ("tier-b", json!({"tier": "b"})),
    ] {
        let (_, p) = op
            .call(
                Method::POST,
                "/api/v1/pipelines",
                Some(json!({"environmentId": env["id"], "name": name, "configYaml": flotilla_testkit::vector_config(&format!("{name} v1")), "nodeSelector": selector})),
            )
            .await;
        let id = p["id"].as_str().unwrap().to_owned();
        op.call(
            Method::POST,
            &format!("/api/v1/pipelines/{id}/deploy"),
            None,
        )
        .await;
        pipelines.push(id);
    }

    // Chaos: an operator change every ~150 ms, a fault every ~2 s.
    let started = Instant::now();
    let mut next_fault = Instant::now() + Duration::from_millis(rng.gen_range(500..1500));
    let mut faults: BTreeMap<&str, u32> = BTreeMap::new();
    let mut changes = 0u32;
    let mut pg_back: Option<Instant> = None;
    let mut first_faults: Vec<u8> = (0..5).collect();
    first_faults.shuffle(&mut rng);
    while started.elapsed() < chaos {
        if pg_back.is_some_and(|at| Instant::now() >= at) {
            pg_target.heal();
            op.pg_down = false;
            pg_back = None;
        }
        let p = &pipelines[rng.gen_range(0..pipelines.len())];
        let n = &nodes[rng.gen_range(0..nodes.len())];
        match rng.gen_range(0..10) {
            0..=2 => {
                let yaml = flotilla_testkit::vector_config(&format!("change {changes}"));
                op.call(
                    Method::PUT,
                    &format!("/api/v1/pipelines/{p}"),
                    Some(json!({"configYaml": yaml})),
                )
                .await;
                op.call(Method::POST, &format!("/api/v1/pipelines/{p}/deploy"), None)
                    .await;
            }
            3 => {
                let (_, shown) = op
                    .call(Method::GET, &format!("/api/v1/pipelines/{p}"), None)
                    .await;
                let latest = shown["latestVersion"].as_i64().unwrap_or(1);
                let version = rng.gen_range(1..=latest);
                op.call(
                    Method::POST,
                    &format!("/api/v1/pipelines/{p}/rollback"),
                    Some(json!({"version": version})),
                )
                .await;
            }
            4 => {
                op.call(
                    Method::POST,
                    &format!("/api/v1/pipelines/{p}/undeploy"),
                    None,
                )
                .await;
            }
            5 | 6 => {
                let tier = if rng.gen_bool(0.5) { "a" } else { "b" };
                op.call(
                    Method::PUT,
                    &format!("/api/v1/fleet/{n}/labels"),
                    Some(json!({"labels": {"tier": tier}})),
                )
                .await;
            }
            7 => {
                let on = rng.gen_bool(0.3);
                op.call(
                    Method::POST,
                    &format!("/api/v1/fleet/{n}/maintenance"),
                    Some(json!({"enabled": on})),
                )
                .await;
            }
            _ => {
                op.call(
                    Method::POST,
                    &format!("/api/v1/pipelines/{p}/samples"),
                    Some(json!({"componentKeys": ["in", "out"], "limit": 2})),
                )
                .await;
            }
        }
        changes += 1;
        if Instant::now() >= next_fault {
            let gw = rng.gen_range(1..=2u8);
            // Every kind of fault comes once, in random order, before any repeats.
            let kind = first_faults.pop().unwrap_or_else(|| rng.gen_range(0..5));
            match kind {
                0 => {
                    topo.stop_gateway(gw, "KILL").unwrap();
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1200))).await;
                    topo.start_gateway(gw).unwrap();
                    *faults.entry("gateway kill -9 + restart").or_default() += 1;
                }
                1 => {
                    topo.stop_gateway(gw, "TERM").unwrap();
                    topo.start_gateway(gw).unwrap();
                    *faults.entry("gateway SIGTERM drain + restart").or_default() += 1;
                }
                2 => {
                    redis.restart().await;
                    *faults.entry("redis restart (data lost)").or_default() += 1;
                }
                3 => {
                    // Agents restart: their sockets and HTTP connections drop, and they come
                    // back from their data dirs.
                    for _ in 0..rng.gen_range(1..=3) {
                        let i = rng.gen_range(0..agents);
                        stops[i].cancel();
                        let ended = tokio::time::timeout(Duration::from_secs(10), &mut tasks[i])
                            .await
                            .expect("agent stops")
                            .unwrap();
                        assert!(ended.is_ok(), "agent ended with {ended:?}");
                        stops[i] = stop_agents.child_token();
                        tasks[i] =
                            tokio::spawn(flotilla_agent::run(configs[i].clone(), stops[i].clone()));
                    }
                    *faults
                        .entry("agents restarted (connections dropped)")
                        .or_default() += 1;
                }
                _ if pg_back.is_none() => {
                    // Operator changes go on meanwhile and get 503.
                    pg_target.cut();
                    op.pg_down = true;
                    pg_back =
                        Some(Instant::now() + Duration::from_millis(rng.gen_range(500..2500)));
                    *faults.entry("postgres unreachable 0.5-2.5 s").or_default() += 1;
                }
                _ => {}
            }
            next_fault = Instant::now() + Duration::from_millis(rng.gen_range(1500..3000));
        } else {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(50..250))).await;
        }
    }
    pg_target.heal();
    op.pg_down = false;
    println!(
        "faults: {faults:?}; operator changes: {changes}, {} answered 5xx while Postgres was down",
        op.expected_errors
    );
    // A last deploy everyone must pick up, so convergence means "got the latest".
    for p in &pipelines {
        op.call(
            Method::PUT,
            &format!("/api/v1/pipelines/{p}"),
            Some(json!({"configYaml": flotilla_testkit::vector_config(&format!("final {p}"))})),
        )
        .await;
        op.call(Method::POST, &format!("/api/v1/pipelines/{p}/deploy"), None)
            .await;
    }
    let calm = Instant::now();

    // Every agent runs exactly what the api says (checksums match).
    let pool = &db.pool;
    let http = reqwest::Client::new();
    eventually("every agent runs what the api says", Duration::from_secs(30), || async {
        for token in &tokens {
            let resp = http.get(format!("{lb}/api/agent/config")).bearer_auth(token).send().await.ok()?;
            let config: Value = resp.json().await.ok()?;
            let expected: BTreeSet<(String, String)> = config["pipelines"]
                .as_array()?
                .iter()
                .map(|p| (p["pipelineId"].as_str().unwrap().to_owned(), p["checksum"].as_str().unwrap().to_owned()))
                .collect();
            let lookup = &token["vf_node_".len().."vf_node_".len() + 16];
            let running: Vec<(String, Option<String>)> = sqlx::query_as(
                "SELECT s.pipeline_id::text, s.config_checksum FROM node_pipeline_status s JOIN nodes n ON n.id = s.node_id
                 WHERE n.token_lookup = $1 AND s.status = 'RUNNING'",
            )
            .bind(lookup)
            .fetch_all(pool)
            .await
            .ok()?;
            let running: BTreeSet<(String, String)> = running.into_iter().filter_map(|(p, c)| Some((p, c?))).collect();
            if running != expected {
                return None;
            }
        }
        Some(())
    })
    .await;
    let converged = calm.elapsed();

    // Presence matches the sockets: every agent holds one, on a live gateway.
    let shown = |fleet: &Value| -> Vec<(String, Value, Value)> {
        fleet["nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .filter(|n| {
                        !(n["wsConnected"] == true
                            && matches!(n["gatewayId"].as_str(), Some("local-gw-1" | "local-gw-2")))
                    })
                    .map(|n| {
                        (
                            n["id"].as_str().unwrap_or_default().to_owned(),
                            n["wsConnected"].clone(),
                            n["gatewayId"].clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, fleet) = op.call(Method::GET, "/api/v1/fleet", None).await;
        let missing = shown(&fleet);
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not shown connected 15 s after convergence: {missing:?}\n{}",
            topo.log("gateway1.log")
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let presence_ok = calm.elapsed();

    // Every sample request ended (COMPLETED, ERROR or, past its 8 s TTL, EXPIRED).
    let statuses: BTreeMap<String, i64> = eventually(
        "every sample request ended",
        Duration::from_secs(20),
        || async {
            let rows: Vec<(String, i64)> =
                sqlx::query_as("SELECT status, count(*) FROM sample_requests GROUP BY status")
                    .fetch_all(pool)
                    .await
                    .ok()?;
            (!rows.iter().any(|(s, _)| s == "PENDING")).then(|| rows.into_iter().collect())
        },
    )
    .await;
    let incomplete: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sample_requests WHERE status IN ('COMPLETED', 'ERROR') AND (completed_at IS NULL OR completed_by IS NULL)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        incomplete, 0,
        "a finished request records when and by whom, once"
    );

    println!(
        "converged {converged:?} after the faults stopped; presence right after {presence_ok:?}; samples {statuses:?}"
    );
    assert!(
        op.server_errors.is_empty(),
        "operator requests answered 5xx: {:#?}",
        op.server_errors
    );
    for log in ["api.log", "gateway1.log", "gateway2.log"] {
        assert!(!topo.log(log).contains("panicked"), "{log} shows a panic");
    }

    stop_agents.cancel();
    for t in tasks {
        let outcome = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("agent stops")
            .unwrap();
        assert!(outcome.is_ok(), "agent ended with {outcome:?}");
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
