//! The fleet page in real headless Chromium: sign in, watch the WS badge appear and vanish
//! without reloading as an agent connects and disconnects through the balancer, act on nodes
//! from the page, and never trip the page's content security policy.
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them).

use flotilla_e2e::webdriver::Session;
use flotilla_e2e::{repo_root, PushClient, Topology};
use flotilla_testkit::{db, eventually, redis_url};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Strong enough to be a bootstrap admin token (`openssl rand -hex 32` makes such).
const ADMIN: &str = "browser-admin-5c1e9a7d3b2f4e6a8c0d1f3b5a7e9c2d4f6b8a0e1c3d5f7a";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_chromedriver() -> (Driver, String) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver is installed (apt-get install chromium chromium-driver)");
    let driver = Driver(child);
    eventually(
        "chromedriver listening",
        Duration::from_secs(10),
        || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    (driver, format!("http://127.0.0.1:{port}"))
}

/// What the browser's console said about the content security policy since the last look.
async fn csp_violations(client: &Session) -> Vec<String> {
    client
        .browser_log()
        .await
        .expect("the browser's log")
        .iter()
        .filter_map(|entry| entry["message"].as_str())
        .filter(|m| m.contains("Content Security Policy"))
        .map(str::to_owned)
        .collect()
}

/// Fails the test with what the page said, if it put up an alert (a failed action does).
async fn no_alert(client: &Session) {
    if let Some(text) = client.alert_text().await {
        panic!("the page alerted: {text}");
    }
}

async fn badge_shown(client: &Session, node_id: &str) -> bool {
    let row = format!(r#"tr[data-node-id="{node_id}"] .ws-badge"#);
    !client.find_all(&row).await.unwrap_or_default().is_empty()
}

#[tokio::test]
async fn the_ws_badge_follows_the_agent_live() {
    let db = db::fresh().await;
    let topo = Topology::start(&db.url, &redis_url(), ADMIN).expect("topology starts");
    let lb = topo.get("LB_URL").to_owned();
    let http = reqwest::Client::new();
    let env: serde_json::Value = http
        .post(format!("{lb}/api/v1/environments"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "production"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut nodes = Vec::new();
    for host in [
        "edge-1.example.net",
        "edge-2.example.net",
        "ingest-1.example.net",
    ] {
        let node: serde_json::Value = http
            .post(format!("{lb}/api/agent/enroll"))
            .json(&json!({"token": env["enrollmentToken"], "hostname": host, "agentVersion": "0.1.0", "vectorVersion": "0.43.1"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        nodes.push((
            node["nodeId"].as_str().unwrap().to_owned(),
            node["nodeToken"].as_str().unwrap().to_owned(),
        ));
    }
    let (node_id, token) = nodes[0].clone();
    // Some state worth looking at in the screenshot: a running and a crashed pipeline, and a
    // node in maintenance.
    let pipeline: serde_json::Value = http
        .post(format!("{lb}/api/v1/pipelines"))
        .bearer_auth(ADMIN)
        .json(&json!({"environmentId": env["id"], "name": "nginx-logs", "configYaml": flotilla_testkit::vector_config("base")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let status = |s: &str| {
        let logs = (s == "CRASHED")
            .then(|| json!(["starting", "error: address 0.0.0.0:9000 already in use"]));
        json!({"pipelines": [{"pipelineId": pipeline["id"], "version": 1, "status": s, "recentLogs": logs}]})
    };
    for ((_, t), s) in nodes.iter().zip(["RUNNING", "CRASHED", "RUNNING"]) {
        http.post(format!("{lb}/api/agent/heartbeat"))
            .bearer_auth(t)
            .json(&status(s))
            .send()
            .await
            .unwrap();
    }
    http.post(format!("{lb}/api/v1/fleet/{}/maintenance", nodes[2].0))
        .bearer_auth(ADMIN)
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap();

    let (_driver, webdriver) = start_chromedriver().await;
    let caps = json!({"goog:chromeOptions": {
        "binary": "/usr/bin/chromium",
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,720"]
    }, "goog:loggingPrefs": {"browser": "ALL"}, "unhandledPromptBehavior": "ignore"});
    let client = Session::new(&webdriver, caps)
        .await
        .expect("a Chromium session");

    client.goto(&lb).await.unwrap();
    // The sign-in page loads its styles from /assets/ and nothing trips its policy.
    let styled = client
        .execute(
            "return getComputedStyle(document.querySelector('main')).borderRadius",
            json!([]),
        )
        .await
        .unwrap();
    assert_eq!(styled, "12px", "the sign-in page's stylesheet applies");
    assert_eq!(csp_violations(&client).await, Vec::<String>::new());
    client
        .find("#token")
        .await
        .unwrap()
        .send_keys(ADMIN)
        .await
        .unwrap();
    client
        .find("button[type=submit]")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let row = format!(r#"tr[data-node-id="{node_id}"]"#);
    eventually("the node's row", Duration::from_secs(10), || async {
        (!client.find_all(&row).await.unwrap_or_default().is_empty()).then_some(())
    })
    .await;
    assert!(
        !badge_shown(&client, &node_id).await,
        "no badge before the agent connects"
    );
    let url = client.url().await.unwrap();
    assert!(!url.contains(ADMIN), "the token never appears in the URL");

    // Connect: the badge appears without a reload.
    let push = PushClient::connect(topo.get("WS_URL"), &token)
        .await
        .unwrap();
    let connected = Instant::now();
    eventually("the WS badge appears", Duration::from_secs(5), || async {
        badge_shown(&client, &node_id).await.then_some(())
    })
    .await;
    let appear = connected.elapsed();
    // The page re-renders its rows on live events, so the badge is looked up again each try.
    let title = eventually("the badge's title", Duration::from_secs(5), || async {
        let badge = client.find(&format!("{row} .ws-badge")).await.ok()?;
        badge.attr("title").await.ok().flatten()
    })
    .await;
    assert_eq!(title, "WebSocket connected — real-time push enabled");

    let shot = client.screenshot().await.unwrap();
    let out = repo_root().join("test-output");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("fleet-page.png"), &shot).unwrap();

    // The environment's heading counts its crashed pipelines.
    eventually("the crash count", Duration::from_secs(5), || async {
        let text = client.text_of("caption").await.ok()?;
        text.contains("1 crashed pipeline").then_some(())
    })
    .await;
    // A pipeline's pill opens what its node last reported, recent logs included.
    let crashed = format!(r#"tr[data-node-id="{}"] button.pill"#, nodes[1].0);
    eventually("the pill is clicked", Duration::from_secs(5), || async {
        client.find(&crashed).await.ok()?.click().await.ok()
    })
    .await;
    let logs = eventually(
        "the crashed pipeline's logs",
        Duration::from_secs(5),
        || async {
            let text = client.text_of("#pipeline-logs").await.ok()?;
            text.contains("already in use").then_some(text)
        },
    )
    .await;
    assert!(logs.starts_with("starting"), "{logs}");
    // New lines the agent ships follow live while the dialog is open.
    http.post(format!("{lb}/api/agent/logs"))
        .bearer_auth(&nodes[1].1)
        .json(&json!([{"pipelineId": pipeline["id"], "lines": ["retrying bind in 5s"]}]))
        .send()
        .await
        .unwrap();
    eventually(
        "a shipped line shown live",
        Duration::from_secs(5),
        || async {
            let text = client.text_of("#pipeline-logs").await.ok()?;
            text.ends_with("retrying bind in 5s").then_some(())
        },
    )
    .await;
    client
        .find("#pipeline button[type=submit]")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Disconnect cleanly: the badge vanishes.
    push.close().await;
    let closed = Instant::now();
    eventually("the WS badge vanishes", Duration::from_secs(5), || async {
        (!badge_shown(&client, &node_id).await).then_some(())
    })
    .await;
    let vanish = closed.elapsed();
    println!("badge appeared {appear:?} after connect and vanished {vanish:?} after close");
    assert!(
        appear < Duration::from_secs(2) && vanish < Duration::from_secs(2),
        "live within 2 s: {appear:?} / {vanish:?}"
    );

    // Actions from the page are cookie-authenticated writes, sent as same-origin JSON.
    let edge2 = format!(r#"tr[data-node-id="{}"]"#, nodes[1].0);
    eventually("Maintenance is clicked", Duration::from_secs(5), || async {
        let button = client
            .find(&format!("{edge2} td.actions button"))
            .await
            .ok()?;
        (button.text().await.ok()? == "Maintenance").then_some(())?;
        button.click().await.ok()
    })
    .await;
    // A failed action alerts; looking for the alert after the element catches one that opened
    // meanwhile.
    eventually("edge-2 in maintenance", Duration::from_secs(5), || async {
        let status = client.text_of(&format!("{edge2} .pill")).await;
        no_alert(&client).await;
        (status.ok()? == "MAINTENANCE").then_some(())
    })
    .await;
    let ingest = format!(r#"tr[data-node-id="{}"]"#, nodes[2].0);
    eventually("Revoke is clicked", Duration::from_secs(5), || async {
        client
            .find(&format!("{ingest} button.danger"))
            .await
            .ok()?
            .click()
            .await
            .ok()
    })
    .await;
    let asked = client.alert_text().await.expect("a confirmation");
    assert!(asked.starts_with("Revoke ingest-1.example.net?"), "{asked}");
    client.accept_alert().await.unwrap();
    eventually("ingest-1's row gone", Duration::from_secs(5), || async {
        let rows = client.find_all(&ingest).await;
        no_alert(&client).await;
        rows.ok()?.is_empty().then_some(())
    })
    .await;
    let said = client
        .execute(
            "return document.getElementById('status').textContent",
            json!([]),
        )
        .await
        .unwrap();
    assert_eq!(said, "Revoke sent to ingest-1.example.net");

    // The fleet page's styles applied, and nothing it did tripped its policy.
    let styled = client
        .execute(
            "return getComputedStyle(document.querySelector('section')).borderRadius",
            json!([]),
        )
        .await
        .unwrap();
    assert_eq!(styled, "10px", "the fleet page's stylesheet applies");
    assert_eq!(csp_violations(&client).await, Vec::<String>::new());
    // The check sees violations: a style attribute set from script is one.
    client
        .execute(
            "document.body.setAttribute('style', 'color: red')",
            json!([]),
        )
        .await
        .unwrap();
    let seen = eventually(
        "the deliberate violation logged",
        Duration::from_secs(5),
        || async {
            let seen = csp_violations(&client).await;
            (!seen.is_empty()).then_some(seen)
        },
    )
    .await;
    assert!(seen[0].contains("style-src"), "{seen:?}");
    client.close().await.unwrap();
}
