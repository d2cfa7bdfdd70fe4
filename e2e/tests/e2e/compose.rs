//! The compose file's routing, scaling and safe defaults, checked by parsing what ships; and
//! its demo-setup service, run as compose runs it.

use flotilla_e2e::{bin_dir, repo_root};
use flotilla_testkit::api::ADMIN_TOKEN;
use flotilla_testkit::{db, redis_url, within};
use serde_json::json;
use serde_norway::Value;

fn compose() -> Value {
    let text = std::fs::read_to_string(repo_root().join("docker-compose.yml")).unwrap();
    serde_norway::from_str(&text).unwrap()
}

fn service<'a>(c: &'a Value, name: &str) -> &'a Value {
    &c["services"][name]
}

fn env<'a>(svc: &'a Value, key: &str) -> &'a str {
    svc["environment"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} set"))
}

/// What compose makes of a value when the operator sets no variable: `${VAR:-default}` and
/// `${VAR-default}` become their default, `${VAR}` becomes empty.
fn with_defaults(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = start + rest[start..].find('}').expect("a closing brace");
        let inner = &rest[start + 2..end];
        if let Some((_, default)) = inner.split_once(":-").or_else(|| inner.split_once('-')) {
            out.push_str(default);
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn defaults_are_read_as_compose_reads_them() {
    assert_eq!(with_defaults("${A:-x}:${B-y}:${C}:8000"), "x:y::8000");
    assert_eq!(with_defaults("plain"), "plain");
}

fn services(c: &Value) -> impl Iterator<Item = (&str, &Value)> {
    c["services"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap(), v))
}

/// Every `(key, string value)` pair anywhere under `v` (anchored blocks and merges included).
fn pairs<'a>(v: &'a Value, out: &mut Vec<(&'a str, &'a str)>) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                if let (Some(k), Some(s)) = (k.as_str(), v.as_str()) {
                    out.push((k, s));
                }
                pairs(v, out);
            }
        }
        Value::Sequence(s) => s.iter().for_each(|v| pairs(v, out)),
        Value::Tagged(t) => pairs(&t.value, out),
        _ => {}
    }
}

fn mentions_demo_environment(v: &Value) -> bool {
    let mut found = Vec::new();
    pairs(v, &mut found);
    found.iter().any(|(k, s)| {
        k.contains("BOOTSTRAP_ENVIRONMENT")
            || k.contains("BOOTSTRAP_ENROLLMENT_TOKEN")
            || s.contains("vf_enroll_")
    })
}

#[test]
fn no_service_has_a_default_admin_token() {
    let c = compose();
    let mut found = Vec::new();
    pairs(&c, &mut found);
    let admin: Vec<_> = found
        .iter()
        .filter(|(k, _)| k.contains("ADMIN_TOKEN"))
        .collect();
    assert!(!admin.is_empty(), "the api reads FLOTILLA_ADMIN_TOKEN");
    for (key, value) in admin {
        assert_eq!(
            with_defaults(value),
            "",
            "{key}: {value} has a default; unset, the api makes one and prints it once"
        );
    }
}

#[test]
fn the_demo_environment_exists_only_with_the_demo_profile() {
    let c = compose();
    for (name, svc) in services(&c) {
        if mentions_demo_environment(svc) {
            assert_eq!(
                svc["profiles"],
                json_value(&["demo"]),
                "{name} is demo-only"
            );
        }
    }
    for (key, block) in c.as_mapping().unwrap() {
        if key.as_str() != Some("services") {
            assert!(!mentions_demo_environment(block), "{key:?} is shared");
        }
    }
    let setup = service(&c, "demo-setup");
    assert_eq!(setup["build"]["target"], "api");
    assert_eq!(setup["command"], json_value(&["ensure-environment"]));
    let agent = service(&c, "demo-agent");
    assert_eq!(
        agent["depends_on"]["demo-setup"]["condition"], "service_completed_successfully",
        "the agents enroll once the environment exists"
    );
    assert_eq!(
        env(agent, "VF_TOKEN"),
        env(setup, "FLOTILLA__API__BOOTSTRAP_ENROLLMENT_TOKEN"),
        "the agents enroll with the token the setup installs"
    );
}

fn json_value(items: &[&str]) -> Value {
    Value::Sequence(items.iter().map(|s| Value::from(*s)).collect())
}

#[test]
fn published_ports_bind_loopback_unless_told_otherwise() {
    let c = compose();
    let mut published = 0;
    for (name, svc) in services(&c) {
        for port in svc["ports"].as_sequence().into_iter().flatten() {
            let port = port.as_str().expect("ports are written as strings");
            assert!(
                with_defaults(port).starts_with("127.0.0.1:"),
                "{name} publishes {port} beyond this machine by default"
            );
            // The monitoring profile's Prometheus and Grafana publish theirs, loopback too.
            if svc["profiles"].is_null() {
                published += 1;
            }
        }
    }
    assert_eq!(
        published, 1,
        "only the balancer publishes a port by default"
    );
    let lb = service(&c, "lb")["ports"][0].as_str().unwrap();
    assert_eq!(with_defaults(lb), "127.0.0.1:8000:8000");
    assert!(
        lb.starts_with("${FLOTILLA_BIND:-127.0.0.1}:"),
        "FLOTILLA_BIND exposes it"
    );
}

/// `path` inside `svc`'s container as a path on this machine, through the service's bind
/// mounts (`./host:/container[:ro]`); other values unchanged.
fn on_host(svc: &Value, path: &str) -> String {
    for volume in svc["volumes"].as_sequence().into_iter().flatten() {
        let mut parts = volume.as_str().unwrap_or_default().split(':');
        if let (Some(host), Some(inside)) = (parts.next(), parts.next()) {
            if let Some(rest) = path.strip_prefix(inside) {
                return format!("{}{rest}", repo_root().join(host).display());
            }
        }
    }
    path.to_owned()
}

/// Runs the api binary as the demo-setup service runs it, against `database_url`.
async fn run_demo_setup(database_url: &str, keep_settings: bool) -> std::process::Output {
    let c = compose();
    let setup = service(&c, "demo-setup");
    let args: Vec<&str> = setup["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let mut cmd = tokio::process::Command::new(bin_dir().join("flotilla-api"));
    cmd.args(&args)
        .env_remove("FLOTILLA__API__BOOTSTRAP_ENVIRONMENT")
        .env_remove("FLOTILLA__API__BOOTSTRAP_ENROLLMENT_TOKEN")
        .env_remove("FLOTILLA__API__BOOTSTRAP_ADMIN_TOKEN");
    if keep_settings {
        let mut found = Vec::new();
        pairs(&setup["environment"], &mut found);
        for (key, value) in found {
            cmd.env(key, on_host(setup, &with_defaults(value)));
        }
    }
    cmd.env("FLOTILLA__DATABASE__URL", database_url)
        .env("FLOTILLA__REDIS__URL", redis_url())
        .env("FLOTILLA__AUTH__BCRYPT_COST", "4")
        .kill_on_drop(true);
    within("flotilla-api ensure-environment", cmd.output())
        .await
        .expect("the api binary runs (cargo build --bins first)")
}

#[tokio::test]
async fn the_demo_setup_service_creates_an_environment_its_token_enrolls_into() {
    let db = db::fresh().await;
    // Twice: a second demo start finds the environment and keeps it.
    for run in 1..=2 {
        let out = run_demo_setup(&db.url, true).await;
        assert!(
            out.status.success(),
            "run {run}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let api = flotilla_testkit::api::spawn(flotilla_testkit::settings(&db.url, &redis_url())).await;
    let listed = api
        .call(
            reqwest::Method::GET,
            "/api/v1/environments",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    let names: Vec<&str> = listed.body["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["demo"]);
    let c = compose();
    let token = with_defaults(env(service(&c, "demo-agent"), "VF_TOKEN"));
    let enrolled = api
        .call(
            reqwest::Method::POST,
            "/api/agent/enroll",
            None,
            Some(json!({"token": token, "hostname": "demo-1", "agentVersion": "0.1.0", "vectorVersion": "0.43.1"})),
        )
        .await;
    assert_eq!(
        enrolled.status,
        reqwest::StatusCode::OK,
        "{}",
        enrolled.text
    );
    assert!(enrolled.body["nodeId"].is_string(), "{}", enrolled.text);

    // The demo pipeline was created and deployed once, and the enrolled node is handed it.
    let pipelines = api
        .call(
            reqwest::Method::GET,
            "/api/v1/pipelines",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    let pipelines = pipelines.body["pipelines"].as_array().unwrap();
    assert_eq!(pipelines.len(), 1, "{pipelines:?}");
    assert_eq!(pipelines[0]["name"], "demo-logs");
    assert_eq!(pipelines[0]["deployedVersion"], 1);
    let node_token = enrolled.body["nodeToken"].as_str().unwrap();
    let config = api
        .call(
            reqwest::Method::GET,
            "/api/agent/config",
            Some(node_token),
            None,
        )
        .await;
    let handed = config.body["pipelines"].as_array().unwrap();
    assert_eq!(handed.len(), 1, "{}", config.text);
    let shipped = std::fs::read_to_string(repo_root().join("deploy/agent/demo-logs.yaml")).unwrap();
    assert_eq!(handed[0]["configYaml"], shipped.as_str(), "{}", config.text);

    // Without the settings it names what is missing and fails.
    let out = run_demo_setup(&db.url, false).await;
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("api.bootstrap_environment"), "{said}");
}

#[test]
fn every_service_is_there_and_health_gated() {
    let c = compose();
    for name in [
        "postgres",
        "redis",
        "api",
        "gateway",
        "lb",
        "demo-setup",
        "demo-agent",
    ] {
        assert!(!service(&c, name).is_null(), "service {name}");
    }
    for name in ["postgres", "redis", "api", "gateway", "lb"] {
        assert!(
            !service(&c, name)["healthcheck"]["test"].is_null(),
            "{name} has a health check"
        );
    }
    for (svc, deps) in [
        ("api", vec!["postgres", "redis"]),
        ("gateway", vec!["postgres", "redis", "api"]),
        ("lb", vec!["api", "gateway"]),
    ] {
        for dep in deps {
            assert_eq!(
                service(&c, svc)["depends_on"][dep]["condition"],
                "service_healthy",
                "{svc} waits for {dep}"
            );
        }
    }
    assert_eq!(service(&c, "demo-agent")["profiles"][0], "demo");
}

#[test]
fn gateways_scale_behind_the_balancer() {
    let c = compose();
    let gw = service(&c, "gateway");
    assert!(gw["container_name"].is_null(), "no fixed container name");
    assert!(
        gw["ports"].is_null(),
        "no host ports: reached only through the balancer"
    );
    assert_eq!(gw["build"]["target"], "gateway");
    let lb = service(&c, "lb");
    assert_eq!(
        lb["ports"].as_sequence().unwrap().len(),
        1,
        "one public port"
    );
    // websocketUrl points at the balancer's public port.
    let api = service(&c, "api");
    assert!(env(api, "FLOTILLA__API__PUBLIC_WS_URL").contains("localhost:8000/api/agent/ws"));
    assert!(
        env(api, "FLOTILLA__API__PUBLIC_PUSH_URL").contains("http://localhost:8000/api/agent/push")
    );
    assert!(env(api, "FLOTILLA__API__BOOTSTRAP_ADMIN_TOKEN").contains("FLOTILLA_ADMIN_TOKEN"));
    // Demo agents reach the balancer at the public URL from inside its network namespace.
    assert_eq!(service(&c, "demo-agent")["network_mode"], "service:lb");
    assert_eq!(
        env(service(&c, "demo-agent"), "VF_URL"),
        "http://localhost:8000"
    );
}

#[test]
fn the_balancer_routes_the_push_channel_to_gateways_and_the_rest_to_the_api() {
    let routes = std::fs::read_to_string(repo_root().join("deploy/nginx/routes.conf")).unwrap();
    let ws = routes
        .split("location = /api/agent/ws")
        .nth(1)
        .unwrap()
        .split('}')
        .next()
        .unwrap();
    assert!(ws.contains("proxy_pass http://flotilla_gateways;"));
    assert!(ws.contains("proxy_set_header Upgrade $http_upgrade;"));
    assert!(ws.contains("proxy_set_header Connection \"upgrade\";"));
    assert!(
        ws.contains("proxy_read_timeout 1h;"),
        "long timeouts for idle sockets"
    );
    let sse = routes
        .split("location = /api/agent/push")
        .nth(1)
        .unwrap()
        .split('}')
        .next()
        .unwrap();
    for line in [
        "proxy_pass http://flotilla_gateways;",
        "proxy_buffering off;",
        "proxy_read_timeout 1h;",
        "proxy_next_upstream error timeout http_503;",
    ] {
        assert!(sse.contains(line), "the SSE route has `{line}`");
    }
    let rest = routes.split("location / {").nth(1).unwrap();
    assert!(rest.contains("proxy_pass http://flotilla_api;"));
    let conf = std::fs::read_to_string(repo_root().join("deploy/nginx/compose.conf")).unwrap();
    assert!(
        conf.contains("server gateway:8081 resolve max_fails=0;"),
        "scaled gateways are re-resolved and never marked down"
    );
    assert!(conf.contains("resolver 127.0.0.11"));
    assert!(conf.contains("listen 8000;"));
}
