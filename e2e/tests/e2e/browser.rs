//! The operator console in real headless Chromium, against the local topology (api, two
//! gateways, nginx) and real agents:
//! - the WS badge appears and vanishes without reloading as an agent connects and disconnects
//!   through the balancer; a pipeline's log follows live; node actions are confirmed in the
//!   page's dialog; nothing trips the page's content security policy;
//! - an operator's day from the page: an environment and its enrollment token, the first agent
//!   (the reference agent binary over a stand-in Vector), a pipeline drafted with a validation
//!   error shown on its line, fixed, previewed, deployed and seen RUNNING on the node, a new
//!   version, a diff, a rollback, a sample of events from the node, bulk maintenance on a
//!   filter, and every step in the activity view under the operator's token name.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them) and nginx, and the
//! api, gateway and agent binaries built (`cargo build --bins`).

use flotilla_e2e::console::{Console, STEP};
use flotilla_e2e::webdriver::Session;
use flotilla_e2e::{bin_dir, call, repo_root, PushClient, Topology};
use flotilla_testkit::{db, eventually, redis_url};
use serde_json::{json, Value};
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

/// A headless Chromium session that keeps the browser's console log.
async fn browser(webdriver: &str) -> Session {
    let caps = json!({"goog:chromeOptions": {
        "binary": "/usr/bin/chromium",
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900"]
    }, "goog:loggingPrefs": {"browser": "ALL"}, "unhandledPromptBehavior": "ignore"});
    Session::new(webdriver, caps)
        .await
        .expect("a Chromium session")
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

/// Signs in on the sign-in page with `token`.
async fn sign_in(client: &Session, base: &str, token: &str) {
    client.goto(base).await.unwrap();
    client
        .find("#token")
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    client
        .find("button[type=submit]")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
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
        "edge-3.example.net",
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
    for ((_, t), s) in nodes
        .iter()
        .zip(["RUNNING", "CRASHED", "RUNNING", "RUNNING"])
    {
        http.post(format!("{lb}/api/agent/heartbeat"))
            .bearer_auth(t)
            .json(&status(s))
            .send()
            .await
            .unwrap();
    }
    // edge-3 stopped reporting: what it last said about its pipeline is no longer news.
    sqlx::query("UPDATE nodes SET status = 'UNREACHABLE' WHERE id = $1::uuid")
        .bind(&nodes[3].0)
        .execute(&db.pool)
        .await
        .unwrap();
    http.post(format!("{lb}/api/v1/fleet/{}/maintenance", nodes[2].0))
        .bearer_auth(ADMIN)
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap();

    let (_driver, webdriver) = start_chromedriver().await;
    let client = browser(&webdriver).await;
    let page = Console::new(&client, &lb);

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
    sign_in(&client, &lb, ADMIN).await;
    let row = format!(r#"tr[data-node-id="{node_id}"]"#);
    page.wait_for(&row).await;
    assert!(
        !badge_shown(&client, &node_id).await,
        "no badge before the agent connects"
    );
    let url = client.url().await.unwrap();
    assert!(!url.contains(ADMIN), "the token never appears in the URL");
    assert!(
        url.ends_with("#/fleet"),
        "the fleet is the first view: {url}"
    );

    // Cursor paging: two pages of two, forward and back.
    page.open("#/fleet?limit=2").await;
    let hosts = || page.texts("#nodes tbody th");
    eventually("the first page", STEP, || async {
        (hosts().await.len() == 2).then_some(())
    })
    .await;
    let first = hosts().await;
    page.click("#page-next").await;
    eventually("the second page", STEP, || async {
        let now = hosts().await;
        (now.len() == 2 && now != first).then_some(now)
    })
    .await;
    page.wait_for("#page-next:disabled").await;
    page.click("#page-prev").await;
    eventually("the first page again", STEP, || async {
        (hosts().await == first).then_some(())
    })
    .await;
    assert_eq!(
        first,
        ["edge-1.example.net", "edge-2.example.net"],
        "sorted by host"
    );
    page.open("#/fleet").await;
    page.wait_for(&row).await;
    // With no filter and every environment, the only scope a bulk action has is a selection
    // (the api refuses an empty filter).
    page.wait_for("#bulk-scope option[value=filter]:disabled")
        .await;
    page.wait_for("#bulk-apply:disabled").await;
    // A remembered environment that no longer exists is forgotten, not kept as a filter that
    // hides every node.
    client
        .execute(
            "localStorage.setItem('flotilla.env', '00000000-0000-4000-8000-000000000000'); location.reload()",
            json!([]),
        )
        .await
        .unwrap();
    page.wait_for(&row).await;
    let remembered = client
        .execute(
            "return [document.getElementById('fleet-env').value, localStorage.getItem('flotilla.env')]",
            json!([]),
        )
        .await
        .unwrap();
    assert_eq!(remembered, json!(["", null]));

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
    // Live events patch rows, so the badge is looked up again each try.
    let title = eventually("the badge's title", Duration::from_secs(5), || async {
        let badge = client.find(&format!("{row} .ws-badge")).await.ok()?;
        badge.attr("title").await.ok().flatten()
    })
    .await;
    assert_eq!(title, "WebSocket connected — real-time push enabled");

    // An unreachable node's pipeline reads as last known, not as running.
    let stale = format!(
        r#"tr[data-node-id="{}"] .pill[data-pipeline-id]"#,
        nodes[3].0
    );
    let said = page.wait_text(&stale, "last known running").await;
    println!("stale pill: {said}");
    let class = client
        .find(&stale)
        .await
        .unwrap()
        .attr("class")
        .await
        .unwrap();
    assert!(class.unwrap_or_default().contains("last-known"));

    // The summary bar follows live events too (re-read at most every few seconds).
    page.wait_text("#summary", "1push connected").await;
    // The summary bar counts the crashed pipeline.
    let summary = page.wait_text("#summary", "crashed pipelines").await;
    assert!(summary.contains("1crashed pipelines"), "{summary}");
    let shot = client.screenshot().await.unwrap();
    let out = repo_root().join("test-output");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("fleet-page.png"), &shot).unwrap();

    // A pipeline's pill opens its node, with what the node last reported: its logs included.
    page.click(&format!(
        r#"tr[data-node-id="{}"] .pill[data-pipeline-id]"#,
        nodes[1].0
    ))
    .await;
    let log = format!(
        r#"section.pipeline[data-pipeline-id="{}"] pre.log"#,
        pipeline["id"].as_str().unwrap()
    );
    let logs = page.wait_text(&log, "already in use").await;
    assert!(logs.starts_with("starting"), "{logs}");
    assert_eq!(
        page.text("#node-host").await.as_deref(),
        Some("edge-2.example.net")
    );
    // New lines the agent ships follow live.
    http.post(format!("{lb}/api/agent/logs"))
        .bearer_auth(&nodes[1].1)
        .json(&json!([{"pipelineId": pipeline["id"], "lines": ["retrying bind in 5s"]}]))
        .send()
        .await
        .unwrap();
    eventually("a shipped line shown live", STEP, || async {
        let text = page.text(&log).await?;
        text.ends_with("retrying bind in 5s").then_some(())
    })
    .await;
    page.open("#/fleet").await;
    page.wait_for(&row).await;

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

    // Events patch the rows they name: a heartbeat that changes what edge-1 shows re-reads
    // edge-1 alone (`?ids=`), and nothing reloads the fleet page.
    let fleet_reads = |which: &'static str| {
        let client = &client;
        async move {
            let script = format!(
                "return performance.getEntriesByType('resource').map(e => e.name)
                   .filter(n => n.includes('/api/v1/fleet?') && {which}).length"
            );
            client
                .execute(&script, json!([]))
                .await
                .unwrap()
                .as_u64()
                .unwrap()
        }
    };
    let full_before = fleet_reads("!n.includes('ids=')").await;
    let rows_before = fleet_reads("n.includes('ids=')").await;
    http.post(format!("{lb}/api/agent/heartbeat"))
        .bearer_auth(&token)
        .json(&status("STARTING"))
        .send()
        .await
        .unwrap();
    page.wait_text(&format!("{row} .pill[data-pipeline-id]"), "starting")
        .await;
    assert_eq!(
        fleet_reads("!n.includes('ids=')").await,
        full_before,
        "no full reload on an event"
    );
    assert!(fleet_reads("n.includes('ids=')").await > rows_before);

    // Actions from the page are confirmed in its dialog and sent as same-origin JSON. A
    // cancelled one does nothing; while one is open no second opens, so one Confirm runs one
    // action.
    let edge2 = format!(r#"tr[data-node-id="{}"]"#, nodes[1].0);
    page.click(&format!("{edge2} button.maintenance")).await;
    page.cancel().await;
    page.click(&format!("{edge2} button.maintenance")).await;
    page.wait_for("dialog#confirm[open]").await;
    // The modal keeps the mouse off the row, so the second click comes from script.
    client
        .execute(
            "document.querySelector(arguments[0]).click()",
            json!([format!("{edge2} button.restart")]),
        )
        .await
        .unwrap();
    page.confirm("Maintenance for edge-2.example.net").await;
    page.toast("Maintenance on for edge-2.example.net").await;
    page.wait_text(&format!("{edge2} .pill"), "MAINTENANCE")
        .await;
    let said = page.texts("#toasts .toast").await;
    assert_eq!(
        said.iter().filter(|t| t.contains("Maintenance on")).count(),
        1,
        "the cancelled dialog did nothing: {said:?}"
    );
    let (_, edge2_node) = call(
        &http,
        reqwest::Method::GET,
        format!("{lb}/api/v1/fleet/{}", nodes[1].0),
        Some(ADMIN),
        None,
    )
    .await;
    assert!(
        edge2_node["pendingAction"].is_null(),
        "no restart rode on the maintenance confirmation: {edge2_node}"
    );
    assert!(!said.iter().any(|t| t.contains("Restart sent")), "{said:?}");
    // A dialog left open when the operator leaves the view closes, confirming nothing.
    page.click(&format!("{edge2} button.maintenance")).await;
    page.wait_text("#confirm-title", "End maintenance of edge-2")
        .await;
    page.open("#/pipelines").await;
    assert!(!page.dialog_open().await, "the dialog outlived its view");
    page.open("#/fleet").await;
    page.wait_text(&format!("{edge2} .pill"), "MAINTENANCE")
        .await;
    let ingest = format!(r#"tr[data-node-id="{}"]"#, nodes[2].0);
    // A bulk action on a selection: the selected row only, counted in the confirmation.
    page.click(&format!("{edge2} td.select input")).await;
    page.click("#bulk-action option[value=maintenance_off]")
        .await;
    page.click("#bulk-scope option[value=selection]").await;
    page.click("#bulk-apply").await;
    page.confirm("End maintenance on 1 node").await;
    page.toast("End maintenance: 1 node affected").await;
    page.wait_text(&format!("{edge2} .pill"), "HEALTHY").await;
    page.wait_text(&format!("{ingest} .pill"), "MAINTENANCE")
        .await;
    page.click(&format!("{ingest} button.revoke")).await;
    let asked = page.confirm("Revoke ingest-1.example.net?").await;
    assert!(asked.contains("must enroll again"), "{asked}");
    page.toast("Revoked ingest-1.example.net").await;
    eventually("ingest-1's row gone", STEP, || async {
        client
            .find_all(&ingest)
            .await
            .ok()?
            .is_empty()
            .then_some(())
    })
    .await;
    let (status, _) = call(
        &http,
        reqwest::Method::GET,
        format!("{lb}/api/v1/fleet/{}", nodes[2].0),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND, "revoked for real");
    // A node revoked elsewhere leaves the page by its event.
    let edge3 = format!(r#"tr[data-node-id="{}"]"#, nodes[3].0);
    let (status, _) = call(
        &http,
        reqwest::Method::DELETE,
        format!("{lb}/api/v1/fleet/{}", nodes[3].0),
        Some(ADMIN),
        None,
    )
    .await;
    assert!(status.is_success(), "{status}");
    eventually("edge-3's row gone", STEP, || async {
        client.find_all(&edge3).await.ok()?.is_empty().then_some(())
    })
    .await;

    // A viewer gets the same live fleet without a single write button.
    let (_, viewer) = call(
        &http,
        reqwest::Method::POST,
        format!("{lb}/api/v1/tokens"),
        Some(ADMIN),
        Some(json!({"name": "watcher", "role": "viewer"})),
    )
    .await;
    page.click("header form button[type=submit]").await;
    page.wait_for("#token").await;
    sign_in(&client, &lb, viewer["token"].as_str().unwrap()).await;
    page.wait_for(&row).await;
    page.wait_for(r#"main[data-view="fleet"][aria-busy="false"]"#)
        .await;
    for write in ["td.actions", "#bulk-apply", "tbody input[type=checkbox]"] {
        assert!(
            client.find_all(write).await.unwrap().is_empty(),
            "a viewer sees {write}"
        );
    }
    let admin_links = client
        .execute(
            "return [...document.querySelectorAll('nav a')].filter(a => !a.hidden).map(a => a.textContent)",
            json!([]),
        )
        .await
        .unwrap();
    assert_eq!(admin_links, json!(["Fleet", "Pipelines"]));
    page.open(&format!("#/pipeline/{}", pipeline["id"].as_str().unwrap()))
        .await;
    page.wait_for("#versions").await;
    for write in ["#save:not([hidden])", "#deploy", "#rollback", "#delete"] {
        assert!(
            client.find_all(write).await.unwrap().is_empty(),
            "a viewer sees {write}"
        );
    }
    // Validating is an editor's right: a viewer's read-only config is not sent to be checked.
    assert_eq!(page.text("#validation").await.as_deref(), Some(""));
    // A viewer sent to the new-pipeline form lands on the list instead.
    page.open("#/pipeline/new").await;
    page.wait_for(r#"main[data-view="pipelines"] #pipelines"#)
        .await;
    page.open("#/fleet").await;

    // The console's styles applied, and nothing it did tripped its policy.
    let styled = client
        .execute(
            "return getComputedStyle(document.querySelector('section.panel')).borderRadius",
            json!([]),
        )
        .await
        .unwrap();
    assert_eq!(styled, "10px", "the console's stylesheet applies");
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

/// The reference agent binary over the stand-in Vector, killed when dropped.
struct Agent {
    child: tokio::process::Child,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A scratch directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Agent {
    fn start(url: &str, enrollment_token: &str, labels: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "flotilla-browser-agent-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(dir.join("vector")).unwrap();
        let child = tokio::process::Command::new(bin_dir().join("flotilla-agent"))
            .env("VF_URL", url)
            .env("VF_TOKEN", enrollment_token)
            .env("VF_DATA_DIR", dir.join("data"))
            .env(
                "VF_VECTOR_BIN",
                repo_root().join("agent/tests/fixtures/vector"),
            )
            .env("VF_LABELS", labels)
            .env("VF_POLL_INTERVAL", "1s")
            .env("VF_DEPLOYMENT_MODE", "STANDALONE")
            .env("FAKE_VECTOR_OUT", dir.join("vector"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the agent binary (cargo build -p flotilla-agent --bins)");
        Self {
            child,
            _dir: tempdir::Dir(dir),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The config the walk first types: a key indented out of line, so it is not valid YAML.
const BROKEN: &str = "sources:\n  in:\n    type: demo_logs\n   format: syslog\nsinks:\n  out:\n    type: blackhole\n    inputs: [in]\n";
const FIXED: &str = "sources:\n  in:\n    type: demo_logs\n    format: syslog\nsinks:\n  out:\n    type: blackhole\n    inputs: [in]\n";
const SECOND: &str = "sources:\n  in:\n    type: demo_logs\n    format: syslog\ntransforms:\n  tag:\n    type: remap\n    inputs: [in]\n    source: '.stage = \"two\"'\nsinks:\n  out:\n    type: blackhole\n    inputs: [tag]\n";
/// A third version: another stage name, and a YAML document marker first.
const THIRD: &str = "---\nsources:\n  in:\n    type: demo_logs\n    format: syslog\ntransforms:\n  tag:\n    type: remap\n    inputs: [in]\n    source: '.stage = \"three\"'\nsinks:\n  out:\n    type: blackhole\n    inputs: [tag]\n";

#[tokio::test]
async fn an_operator_runs_a_pipeline_from_the_console() {
    let db = db::fresh().await;
    let topo = Topology::start(&db.url, &redis_url(), ADMIN).expect("topology starts");
    let lb = topo.get("LB_URL").to_owned();
    let http = reqwest::Client::new();
    // The operator works under a token of their own, whose name the activity view shows.
    let (status, alice) = call(
        &http,
        reqwest::Method::POST,
        format!("{lb}/api/v1/tokens"),
        Some(ADMIN),
        Some(json!({"name": "alice", "role": "admin"})),
    )
    .await;
    assert!(status.is_success(), "{alice}");
    let alice = alice["token"].as_str().unwrap().to_owned();

    let (_driver, webdriver) = start_chromedriver().await;
    let client = browser(&webdriver).await;
    let page = Console::new(&client, &lb);
    sign_in(&client, &lb, &alice).await;
    page.wait_for(r#"main[data-view="fleet"][aria-busy="false"]"#)
        .await;

    // An environment, its enrollment token shown once with the command that starts an agent.
    page.open("#/admin").await;
    page.type_into("#env-name", "production").await;
    page.click("#env-create button[type=submit]").await;
    page.toast("Environment production created").await;
    let commands = page.wait_text("#enrollment-secret", "flotilla-agent").await;
    let enrollment = page
        .text("#enrollment-secret .command code")
        .await
        .expect("the token");
    assert!(enrollment.starts_with("vf_enroll_"), "{enrollment}");
    assert!(
        commands.contains(&format!("VF_URL={lb} VF_TOKEN={enrollment} flotilla-agent")),
        "{commands}"
    );

    let shot = client.screenshot().await.unwrap();
    let out = repo_root().join("test-output");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("admin.png"), &shot).unwrap();

    // Operator tokens: made (shown once) and revoked; the poll interval set for every agent.
    page.type_into("#token-name", "ci-reader").await;
    page.click("#token-create button[type=submit]").await;
    page.toast("Token ci-reader (viewer) created").await;
    let made = page.wait_text("#token-secret code", "").await;
    let (status, _) = call(
        &http,
        reqwest::Method::GET,
        format!("{lb}/api/v1/fleet"),
        Some(&made),
        None,
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::OK, "the token shown works");
    let revoke = eventually("ci-reader's revoke button", STEP, || async {
        let id = client
            .execute(
                "const row = [...document.querySelectorAll('#tokens tbody tr')].find(r => r.querySelector('th')?.textContent === 'ci-reader'); return row ? row.dataset.tokenId : null",
                json!([]),
            )
            .await
            .ok()?;
        id.as_str().map(|id| format!(r#"#tokens tr[data-token-id="{id}"] button.danger"#))
    })
    .await;
    page.click(&revoke).await;
    page.confirm("Revoke ci-reader").await;
    page.toast("Token ci-reader revoked").await;
    let (status, _) = call(
        &http,
        reqwest::Method::GET,
        format!("{lb}/api/v1/fleet"),
        Some(&made),
        None,
    )
    .await;
    assert_eq!(
        status,
        reqwest::StatusCode::UNAUTHORIZED,
        "revoked for real"
    );
    // A token shown once stays through the table's redraws until the operator hides it.
    assert_eq!(
        page.text("#token-secret code").await.as_deref(),
        Some(made.as_str())
    );
    page.click("#token-secret button.done").await;
    eventually("the token hidden", STEP, || async {
        client
            .find_all("#token-secret .secret")
            .await
            .ok()?
            .is_empty()
            .then_some(())
    })
    .await;
    page.type_into("#poll-interval", "2000").await;
    page.click("#settings button[type=submit]").await;
    page.toast("Poll interval set to 2000 ms").await;

    // The empty fleet tells a newcomer how to start; the first agent then shows up by itself.
    page.open("#/fleet").await;
    page.wait_text("#getting-started", "VF_TOKEN=").await;
    let _agent = Agent::start(&lb, &enrollment, "tier=edge");
    // Rows are redrawn as events arrive, so the id is read in one step.
    let node_id = eventually("the agent's row", STEP, || async {
        let id = client
            .execute(
                "const row = document.querySelector('#nodes tr[data-node-id]'); return row ? row.dataset.nodeId : null",
                json!([]),
            )
            .await
            .ok()?;
        id.as_str().map(str::to_owned)
    })
    .await;
    // Two more nodes, driven over the agent protocol, for the selector and the bulk action.
    for host in ["batch-1.example.net", "batch-2.example.net"] {
        let node: Value = http
            .post(format!("{lb}/api/agent/enroll"))
            .json(&json!({"token": enrollment, "hostname": host, "labels": {"tier": "batch"}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        http.post(format!("{lb}/api/agent/heartbeat"))
            .bearer_auth(node["nodeToken"].as_str().unwrap())
            .json(&json!({"pipelines": []}))
            .send()
            .await
            .unwrap();
    }

    // Draft a pipeline: the server's validation error is shown with its line.
    page.open("#/pipelines").await;
    page.click("#new-pipeline").await;
    page.wait_for(r#"main[data-view="pipeline"][aria-busy="false"]"#)
        .await;
    page.type_into("#pipeline-name", "web-logs").await;
    // Tab indents inside the editor instead of leaving it.
    page.type_into("#yaml", "a:\u{E004}b").await;
    let typed = client
        .execute("return document.getElementById('yaml').value", json!([]))
        .await
        .unwrap();
    assert_eq!(typed, "a:  b");
    page.type_into("#yaml", BROKEN).await;
    let (status, said) = call(
        &http,
        reqwest::Method::POST,
        format!("{lb}/api/v1/pipelines/validate"),
        Some(ADMIN),
        Some(json!({"configYaml": BROKEN})),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{said}");
    let line = said["details"]["line"].as_u64().expect("the error's line");
    // The column too, when the api knows it.
    let at = match said["details"]["column"].as_u64() {
        Some(column) => format!("Line {line}, column {column}:"),
        None => format!("Line {line}:"),
    };
    let shown = page.wait_text("#validation.bad", &at).await;
    println!("validation shown: {shown}");
    assert_eq!(
        page.texts(".gutter .error-line").await,
        vec![line.to_string()],
        "the gutter marks the line"
    );
    // Fixed, it is valid; the selector's preview shows the one node it matches.
    page.type_into("#yaml", FIXED).await;
    page.wait_text("#validation.ok", "Valid").await;
    assert!(page.texts(".gutter .error-line").await.is_empty());
    page.type_into("#selector", "tier=edge").await;
    let preview = page.wait_text("#selector-preview", "Matches 1 node").await;
    assert!(!preview.contains("batch-"), "{preview}");
    page.click("#save").await;
    page.toast("Pipeline web-logs created").await;
    let pipeline_id = eventually("the pipeline's page", STEP, || async {
        let url = client.url().await.ok()?;
        let id = url.split("#/pipeline/").nth(1)?.to_owned();
        (id != "new" && !id.is_empty()).then_some(id)
    })
    .await;
    page.wait_for("#deploy").await;

    // Deploy, after the preview of where it goes.
    page.click("#deploy").await;
    page.wait_text("#deploy-preview", "Matches 1 node").await;
    page.confirm("Deploy web-logs").await;
    page.toast("Deployed web-logs v1").await;

    // The node runs it.
    page.open(&format!("#/node/{node_id}")).await;
    let section = format!(r#"section.pipeline[data-pipeline-id="{pipeline_id}"]"#);
    page.wait_text(&format!("{section} .pill"), "RUNNING").await;

    // A new version, the diff between the two, the new one deployed and rolled back.
    page.open(&format!("#/pipeline/{pipeline_id}")).await;
    page.wait_text("#validation.ok", "Valid").await;
    page.type_into("#yaml", SECOND).await;
    page.wait_text("#validation.ok", "Valid").await;
    page.click("#save").await;
    page.toast("Saved web-logs v2").await;
    page.wait_for(r#"#versions tr[data-version="2"]"#).await;
    page.click("#show-diff").await;
    let added = page.wait_text("#diff", "remap").await;
    assert!(page
        .texts("#diff .add")
        .await
        .iter()
        .any(|l| l.contains("type: remap")));
    assert!(page
        .texts("#diff .del")
        .await
        .iter()
        .any(|l| l.contains("inputs: [in]")));
    println!("diff shown:\n{added}");
    let shot = client.screenshot().await.unwrap();
    let out = repo_root().join("test-output");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("pipeline.png"), &shot).unwrap();
    page.click("#deploy").await;
    page.confirm("Deploy web-logs").await;
    page.toast("Deployed web-logs v2").await;
    page.wait_text("#deployed-version", "v2 deployed").await;
    // A third version, saved but not deployed: a rollback never moves forward to it. From
    // v2 only v1 is offered; from v3 (deployed), v2 then v1.
    page.type_into("#yaml", THIRD).await;
    page.wait_text("#validation.ok", "Valid").await;
    page.click("#save").await;
    page.toast("Saved web-logs v3").await;
    page.wait_for(r#"#versions tr[data-version="3"]"#).await;
    // Only a diff's first two lines are its headers: v3's "---" document marker, removed on
    // the way back to v2, is a removed line like any other.
    page.click(r#"#diff-from option[value="3"]"#).await;
    page.click(r#"#diff-to option[value="2"]"#).await;
    page.click("#show-diff").await;
    page.wait_text("#diff", "version 3").await;
    assert_eq!(page.texts("#diff .meta").await.len(), 2);
    assert!(
        page.texts("#diff .del").await.iter().any(|l| l == "----\n"),
        "{:?}",
        page.texts("#diff .line").await
    );
    // Tab indents the selected lines and Shift+Tab outdents them, leaving the text otherwise.
    let yaml = "a: 1\nb: 2\nc: 3";
    client
        .execute(
            "const a = document.getElementById('yaml'); a.value = arguments[0]; a.focus(); a.setSelectionRange(2, 7);",
            json!([yaml]),
        )
        .await
        .unwrap();
    let area = client.find("#yaml").await.unwrap();
    let value = || async {
        client
            .execute("return document.getElementById('yaml').value", json!([]))
            .await
            .unwrap()
    };
    area.send_keys("\u{E004}").await.unwrap();
    assert_eq!(value().await, "  a: 1\n  b: 2\nc: 3");
    area.send_keys("\u{E008}\u{E004}").await.unwrap();
    assert_eq!(value().await, yaml);
    let offered = || async { page.texts("#rollback-version option").await };
    page.click("#rollback").await;
    page.wait_for("dialog#confirm[open] #rollback-version")
        .await;
    assert_eq!(
        offered().await,
        ["v1"],
        "only versions below the deployed v2"
    );
    page.cancel().await;
    page.click("#deploy").await;
    page.confirm("Deploy web-logs").await;
    page.toast("Deployed web-logs v3").await;
    page.wait_text("#deployed-version", "v3 deployed").await;
    page.click("#rollback").await;
    page.wait_for("dialog#confirm[open] #rollback-version")
        .await;
    assert_eq!(offered().await, ["v2", "v1"], "highest first");
    page.click(r#"#rollback-version option[value="1"]"#).await;
    page.confirm("Roll back web-logs").await;
    page.toast("Rolled web-logs back to v1").await;
    page.wait_text("#deployed-version", "v1 deployed").await;
    page.wait_for("#rollback[disabled]").await;

    // The node runs v1 again, and a sample of its events shows in the page.
    page.open(&format!("#/node/{node_id}")).await;
    page.wait_text(&format!("{section} h3"), "web-logs v1")
        .await;
    page.wait_text(&format!("{section} .pill"), "RUNNING").await;
    eventually("the component offered", STEP, || async {
        let v = client
            .execute(
                "return document.querySelector(arguments[0]).value",
                json!([format!("{section} input.component")]),
            )
            .await
            .ok()?;
        (v == "in").then_some(())
    })
    .await;
    page.click(&format!("{section} button.sample")).await;
    page.toast("Sample requested").await;
    let events = page
        .wait_text(
            &format!("{section} pre.sample-events"),
            "\"message\":\"event 1\"",
        )
        .await;
    println!("sample shown:\n{events}");
    // A live tap of the same component on this node streams until it is stopped.
    page.click(&format!("{section} button.tap")).await;
    page.toast("Live tap of in started").await;
    let tapped = page
        .wait_text(&format!("{section} pre.sample-events"), "Live tap of in:")
        .await;
    assert!(tapped.contains("\"component\":\"in\""), "{tapped}");
    page.click(&format!("{section} button.tap")).await;
    page.toast("Live tap stopped").await;
    // Labels: an admin edits the operator's labels, one per line (a value may hold a comma);
    // the agent's own label stays the agent's, not promoted to an operator label.
    page.wait_text("#node-reported-labels", "tier=edge").await;
    page.click("#labels-open").await;
    let editing = client
        .execute(
            "return document.getElementById('labels-edit').value",
            json!([]),
        )
        .await
        .unwrap();
    assert_eq!(editing, "", "only operator labels are edited");
    page.type_into("#labels-edit", "owner=web-team\nteams=web,ops")
        .await;
    page.click(".labels-form button[type=submit]").await;
    page.toast("saved").await;
    page.wait_text("#node-operator-labels", "owner=web-team")
        .await;
    let mut operator_shown = page.texts("#node-operator-labels li").await;
    operator_shown.sort();
    assert_eq!(operator_shown, ["owner=web-team", "teams=web,ops"]);
    let effective = page.wait_text("#node-labels", "owner=web-team").await;
    assert!(effective.contains("tier=edge"), "{effective}");
    let (_, labelled) = call(
        &http,
        reqwest::Method::GET,
        format!("{lb}/api/v1/fleet/{node_id}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(
        labelled["operatorLabels"],
        json!({"owner": "web-team", "teams": "web,ops"})
    );
    assert_eq!(labelled["reportedLabels"], json!({"tier": "edge"}));
    let shot = client.screenshot().await.unwrap();
    let out = repo_root().join("test-output");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("node.png"), &shot).unwrap();

    // Bulk maintenance on a filter: the confirmation counts the nodes it matches.
    page.open("#/fleet").await;
    page.type_into("#filter-host", "batch-").await;
    eventually("only the batch nodes listed", STEP, || async {
        let hosts = page.texts("#nodes tbody th").await;
        (hosts.len() == 2 && hosts.iter().all(|h| h.starts_with("batch-"))).then_some(())
    })
    .await;
    page.click("#bulk-action option[value=maintenance_on]")
        .await;
    page.click("#bulk-scope option[value=filter]").await;
    page.click("#bulk-apply").await;
    page.confirm("Start maintenance on 2 nodes").await;
    page.toast("2 nodes affected").await;
    eventually("both batch nodes in maintenance", STEP, || async {
        let pills = page.texts("#nodes tbody td .pill").await;
        (pills.iter().filter(|p| *p == "MAINTENANCE").count() == 2).then_some(())
    })
    .await;
    let (_, agent_node) = call(
        &http,
        reqwest::Method::GET,
        format!("{lb}/api/v1/fleet/{node_id}"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(agent_node["maintenanceMode"], false, "outside the filter");

    // The activity view lists every step, each under the operator's token name.
    page.open("#/activity").await;
    page.wait_for("#activity tbody tr[data-action]").await;
    let (_, audit) = call(
        &http,
        reqwest::Method::GET,
        format!("{lb}/api/v1/audit?limit=100"),
        Some(ADMIN),
        None,
    )
    .await;
    let entries = audit["entries"].as_array().expect("audit entries");
    let recorded: Vec<&Value> = entries
        .iter()
        .filter(|e| e["tokenName"] == "alice")
        .collect();
    let actions: Vec<&str> = recorded
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for step in [
        "environment.create",
        "pipeline.create",
        "pipeline.update",
        "pipeline.deploy",
        "pipeline.rollback",
        "sample",
    ] {
        assert!(
            actions.iter().any(|a| a.contains(step)),
            "{step} in {actions:?}"
        );
    }
    // The bulk change records what it did, and the page shows that too.
    let bulk = recorded
        .iter()
        .find(|e| e["detail"].to_string().contains("maintenance"))
        .unwrap_or_else(|| panic!("the bulk maintenance in {recorded:?}"));
    let bulk_action = bulk["action"].as_str().unwrap();
    let details = page.texts("#activity tbody td.detail").await;
    assert!(
        details.iter().any(|d| d.contains("maintenance")),
        "{details:?}"
    );
    assert!(page
        .texts("#activity tbody code.action")
        .await
        .iter()
        .any(|a| a == bulk_action));
    let shown_actions = page.texts("#activity tbody code.action").await;
    let shown_who = page.texts("#activity tbody td.who").await;
    let all_actions: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        shown_actions, all_actions,
        "the page shows the trail as recorded"
    );
    for (who, entry) in shown_who.iter().zip(entries) {
        assert_eq!(who, entry["tokenName"].as_str().unwrap());
    }
    let shot = client.screenshot().await.unwrap();
    std::fs::write(repo_root().join("test-output/activity.png"), &shot).unwrap();

    // The pipeline's history: its page links to the trail filtered on the server.
    page.open(&format!("#/pipeline/{pipeline_id}")).await;
    page.click("#pipeline-history").await;
    page.wait_for(r#"#activity-filters select#activity-target option[value="pipeline"]:checked"#)
        .await;
    page.wait_for("#activity tbody tr[data-action]").await;
    let (_, history) = call(
        &http,
        reqwest::Method::GET,
        format!("{lb}/api/v1/audit?targetType=pipeline&targetId={pipeline_id}"),
        Some(ADMIN),
        None,
    )
    .await;
    let expected: Vec<&str> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(expected.len() >= 5, "{expected:?}");
    assert_eq!(page.texts("#activity tbody code.action").await, expected);

    // Undeploy and delete, each confirmed: the node stops running it, the list forgets it.
    page.open(&format!("#/pipeline/{pipeline_id}")).await;
    page.click("#undeploy").await;
    page.confirm("Undeploy web-logs").await;
    page.toast("web-logs undeployed").await;
    page.wait_text("#deployed-version", "not deployed").await;
    page.click("#delete").await;
    page.confirm("Delete web-logs").await;
    page.toast("web-logs deleted").await;
    page.wait_for(r#"main[data-view="pipelines"][aria-busy="false"]"#)
        .await;
    assert!(client
        .find_all(&format!(r#"tr[data-pipeline-id="{pipeline_id}"]"#))
        .await
        .unwrap()
        .is_empty());
    page.open(&format!("#/node/{node_id}")).await;
    eventually("the pipeline gone from the node", STEP, || async {
        client
            .find_all(&section)
            .await
            .ok()?
            .is_empty()
            .then_some(())
    })
    .await;

    assert_eq!(csp_violations(&client).await, Vec::<String>::new());
    client.close().await.unwrap();
}
