//! Enrollment against the real api: retried while the api is unreachable, refused for a bad
//! enrollment token.

use crate::common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_waits_for_an_unreachable_api() {
    init_logs();
    let stack = Stack::start().await;
    let (env, enrollment) = stack.environment().await;
    let sandbox = Sandbox::new();
    let api_proxy = Proxy::unrouted().await;
    let mut config = TestAgent::config(&stack, &sandbox, &enrollment);
    config.url = reqwest::Url::parse(&format!("http://{}/", api_proxy.addr)).unwrap();
    let agent = TestAgent::start(config);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!sandbox.data.join("node-token").exists());
    api_proxy.route_to(stack.api.addr);
    let node_id = stack.node_of(&env).await["id"].as_str().unwrap().to_owned();
    stack.wait_connected(&node_id).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_enrollment_token_stops_the_agent_with_a_clear_error() {
    init_logs();
    let stack = Stack::start().await;
    let sandbox = Sandbox::new();
    let config = TestAgent::config(
        &stack,
        &sandbox,
        "vf_enroll_0123456789abcdef_not-a-real-secret",
    );
    let result = within(
        "the agent gives up",
        flotilla_agent::run(config, Default::default()),
    )
    .await;
    let error = format!("{:#}", result.unwrap_err());
    assert!(error.contains("enrollment failed"), "{error}");
    assert!(
        !error.contains("not-a-real-secret"),
        "the token is not echoed: {error}"
    );
    assert!(!sandbox.data.join("node-token").exists());
}
