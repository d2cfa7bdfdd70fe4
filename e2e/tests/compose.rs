//! The compose file's routing and scaling rules, checked by parsing what ships.

use flotilla_e2e::repo_root;
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

#[test]
fn every_service_is_there_and_health_gated() {
    let c = compose();
    for name in ["postgres", "redis", "api", "gateway", "lb", "demo-agent"] {
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
