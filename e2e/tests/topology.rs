//! The local topology from `scripts/topology` (api + two gateways + nginx with the shipped
//! routes): a deploy through the balancer reaches agents on both gateways.

use flotilla_e2e::{PushClient, Topology};
use flotilla_testkit::{db, eventually, redis_url};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const ADMIN: &str = "topology-admin";

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = flotilla_testkit::within("request", req.send())
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_deploy_through_the_balancer_reaches_agents_on_both_gateways() {
    let db = db::fresh().await;
    let topo = Topology::start(&db.url, &redis_url(), ADMIN).expect("topology starts");
    let lb = topo.get("LB_URL").to_owned();
    let http = reqwest::Client::new();
    use reqwest::Method;

    let (s, env) = call(
        &http,
        Method::POST,
        format!("{lb}/api/v1/environments"),
        Some(ADMIN),
        Some(json!({"name": "e2e"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let enroll = env["enrollmentToken"].as_str().unwrap();
    // The config tells agents to use the balancer for the push channel.
    let mut agents = Vec::new();
    for i in 0..6 {
        let (s, node) = call(
            &http,
            Method::POST,
            format!("{lb}/api/agent/enroll"),
            None,
            Some(json!({"token": enroll, "hostname": format!("n{i}")})),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let token = node["nodeToken"].as_str().unwrap().to_owned();
        let (_, config) = call(
            &http,
            Method::GET,
            format!("{lb}/api/agent/config"),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(config["websocketUrl"], topo.get("WS_URL"));
        let push = PushClient::connect(topo.get("WS_URL"), &token)
            .await
            .expect("push channel through nginx");
        agents.push((node["nodeId"].as_str().unwrap().to_owned(), push));
    }
    // nginx spreads the sockets over both gateways; presence shows which holds each.
    let gateways = eventually("all six connected", Duration::from_secs(5), || async {
        let (_, fleet) = call(
            &http,
            Method::GET,
            format!("{lb}/api/v1/fleet"),
            Some(ADMIN),
            None,
        )
        .await;
        let nodes = fleet["nodes"].as_array()?.clone();
        nodes.iter().all(|n| n["wsConnected"] == true).then(|| {
            nodes
                .iter()
                .map(|n| n["gatewayId"].as_str().unwrap().to_owned())
                .collect::<BTreeSet<_>>()
        })
    })
    .await;
    assert_eq!(
        gateways,
        BTreeSet::from(["local-gw-1".to_owned(), "local-gw-2".to_owned()])
    );

    let (_, p) = call(
        &http,
        Method::POST,
        format!("{lb}/api/v1/pipelines"),
        Some(ADMIN),
        Some(json!({"environmentId": env["id"], "name": "p", "configYaml": "sources: {}\n"})),
    )
    .await;
    let pipeline = p["id"].as_str().unwrap();
    let (s, deployed) = call(
        &http,
        Method::POST,
        format!("{lb}/api/v1/pipelines/{pipeline}/deploy"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(deployed["notifiedNodes"], 6);
    for (_, push) in agents.iter_mut() {
        let frame: Value = serde_json::from_str(&push.next_text().await.unwrap()).unwrap();
        assert_eq!(frame["type"], "config_changed");
        assert_eq!(frame["pipelineId"], pipeline);
        assert_eq!(frame["reason"], "deploy");
    }
    for (_, push) in agents {
        push.close().await;
    }
    assert!(!topo.log("api.log").contains("panicked"));
}
