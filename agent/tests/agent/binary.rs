//! The real `flotilla-agent` binary: self-update (replace and re-execute), a rejected update,
//! fleet restart, SIGTERM, the enrolled hostname and the log formats.

use crate::common::*;
use flotilla_shared::frames::{ActionKind, PushMessage};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

/// The agent binary started as a process, with its output captured.
struct AgentProcess {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl AgentProcess {
    fn start(exe: &Path, stack: &Stack, sandbox: &Sandbox, enrollment: &str) -> Self {
        Self::start_with(exe, stack, sandbox, enrollment, &[("NO_COLOR", "1")])
    }

    /// Starts it with more environment variables (`NO_COLOR` is set only if given).
    fn start_with(
        exe: &Path,
        stack: &Stack,
        sandbox: &Sandbox,
        enrollment: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let mut child = Command::new(exe)
            .env("VF_URL", stack.api.url("/"))
            .env("VF_TOKEN", enrollment)
            .env("VF_DATA_DIR", &sandbox.data)
            .env("VF_VECTOR_BIN", &sandbox.vector)
            .env("VF_LOG_LEVEL", "info")
            // The tests may run in a container; the self-update under test is standalone.
            .env("VF_DEPLOYMENT_MODE", "STANDALONE")
            // The stand-in download server speaks plain http.
            .env("VF_ALLOW_HTTP_UPDATES", "true")
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("agent binary starts");
        let output = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = output.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut out = sink.lock().unwrap();
                out.push_str(&line);
                out.push('\n');
            }
        });
        Self { child, output }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn count(&self, needle: &str) -> usize {
        self.output().matches(needle).count()
    }
}

/// Serves `body` to every request on a local port; returns the URL.
async fn serve_file(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Arc::new(body);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}/downloads/flotilla-agent")
}

fn installed_copy(sandbox: &Sandbox) -> PathBuf {
    let bin = sandbox.dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("flotilla-agent");
    std::fs::copy(env!("CARGO_BIN_EXE_flotilla-agent"), &exe).unwrap();
    exe
}

/// Hands the node a self-update as the api would (stored as its pending action, announced by a
/// push), but past the api's URL policy: the api rightly refuses the stand-in server's
/// `http://127.0.0.1` URL, and what these tests check is the agent's side.
async fn stage_update(stack: &Stack, node: &str, version: &str, url: &str, checksum: &str) {
    let action = json!({ "type": "self_update", "targetVersion": version, "downloadUrl": url, "checksum": checksum });
    sqlx::query("UPDATE nodes SET pending_action = $2 WHERE id = $1::uuid")
        .bind(node)
        .bind(&action)
        .execute(&stack.db.pool)
        .await
        .unwrap();
    let push = PushMessage::Action {
        action: ActionKind::SelfUpdate,
        target_version: Some(version.to_owned()),
        download_url: Some(url.to_owned()),
        checksum: Some(checksum.to_owned()),
        signature: None,
        pipeline_id: None,
    };
    let node = node.parse().unwrap();
    assert_eq!(stack.api.state.notifier.push(&[node], push).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_update_replaces_and_reexecutes_and_a_bad_checksum_is_reported() {
    let stack = Stack::start().await;
    let (env, enrollment) = stack.environment().await;
    let sandbox = Sandbox::new();
    let exe = installed_copy(&sandbox);
    let mut agent = AgentProcess::start(&exe, &stack, &sandbox, &enrollment);
    let pid = agent.child.id().unwrap();
    let node_id = stack.node_of(&env).await["id"].as_str().unwrap().to_owned();
    stack.wait_connected(&node_id).await;
    let yaml = "sources:\n  in:\n    type: demo_logs\nsinks:\n  out:\n    type: blackhole\n    inputs: [in]\n";
    stack.deploy_new(&env, yaml).await;
    let first = eventually("the pipeline runs", Duration::from_secs(5), || async {
        sandbox.running().first().map(|(pid, _)| *pid)
    })
    .await;

    // The "new version": the same program with bytes appended (an ELF runs unchanged).
    let mut new_binary = std::fs::read(&exe).unwrap();
    new_binary.extend_from_slice(
        format!("\nflotilla self-update test {}\n", uuid::Uuid::new_v4()).as_bytes(),
    );
    let checksum = flotilla_shared::auth::tokens::sha256_hex(&new_binary);
    let url = serve_file(new_binary.clone()).await;
    stage_update(&stack, &node_id, "9.9.9", &url, &checksum).await;
    eventually(
        "the agent re-executes the new binary",
        Duration::from_secs(15),
        || async { (agent.count("running the self-updated binary") == 1).then_some(()) },
    )
    .await;
    assert_eq!(
        std::fs::read(&exe).unwrap(),
        new_binary,
        "the binary was replaced"
    );
    assert_eq!(
        agent.count("flotilla-agent starting"),
        2,
        "{}",
        agent.output()
    );
    assert_eq!(agent.child.id(), Some(pid), "re-exec keeps the process");
    assert!(agent.child.try_wait().unwrap().is_none());
    assert!(
        !alive(first),
        "the old pipeline process was stopped before the re-exec"
    );
    stack.wait_connected(&node_id).await;
    eventually(
        "the re-executed agent runs the pipeline again",
        Duration::from_secs(5),
        || async {
            sandbox
                .running()
                .into_iter()
                .any(|(_, c)| runs(&c, yaml))
                .then_some(())
        },
    )
    .await;

    // A wrong checksum: nothing is replaced, the agent keeps running and reports the error.
    let wrong = flotilla_shared::auth::tokens::sha256_hex(b"something else");
    stage_update(&stack, &node_id, "9.9.10", &url, &wrong).await;
    let error = eventually(
        "the update error is reported",
        Duration::from_secs(10),
        || async {
            stack.node(&node_id).await["lastUpdateError"]
                .as_str()
                .map(str::to_owned)
        },
    )
    .await;
    // Only the failure's class reaches the server; the detail stays in the agent's log.
    assert_eq!(error, "checksum_mismatch");
    assert!(
        agent.output().contains("downloaded file has"),
        "the detail is logged locally"
    );
    assert_eq!(
        std::fs::read(&exe).unwrap(),
        new_binary,
        "the binary is unchanged"
    );
    assert_eq!(agent.count("flotilla-agent starting"), 2, "no re-exec");
    assert!(agent.child.try_wait().unwrap().is_none(), "still running");
    let output = agent.output();
    assert!(
        !output.contains(&enrollment),
        "the enrollment token is never logged"
    );
    let token = std::fs::read_to_string(sandbox.data.join("node-token")).unwrap();
    assert!(
        !output.contains(token.trim()),
        "the node token is never logged"
    );

    // SIGTERM: socket closed, pipelines stopped, clean exit.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let status = within("the agent exits", agent.child.wait()).await.unwrap();
    assert!(status.success(), "{status}\n{}", agent.output());
    assert!(sandbox.running().is_empty(), "pipelines stopped");
    eventually(
        "the socket closed cleanly",
        Duration::from_secs(2),
        || async { (stack.node(&node_id).await["wsConnected"] == json!(false)).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
        .env_remove("VF_URL")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("VF_URL"));
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
        .args(["--url", "http://127.0.0.1:9", "--poll-interval", "often"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("VF_POLL_INTERVAL"));
    let dir = std::env::temp_dir().join(format!(
        "flotilla-agent-noenroll-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
        .args(["--url", "http://127.0.0.1:9", "--data-dir"])
        .arg(&dir)
        .env_remove("VF_TOKEN")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("VF_TOKEN"),
        "{output:?}"
    );
    // A flag wins over its variable, even over one that would not parse.
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
        .args([
            "--url",
            "http://127.0.0.1:9",
            "--poll-interval",
            "5s",
            "--data-dir",
        ])
        .arg(&dir)
        .env("VF_POLL_INTERVAL", "often")
        .env_remove("VF_TOKEN")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("VF_TOKEN") && !stderr.contains("VF_POLL_INTERVAL"),
        "{output:?}"
    );
    // An empty hostname is refused, not sent as a node's name.
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
        .args(["--url", "http://127.0.0.1:9"])
        .env("VF_HOSTNAME", "")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("VF_HOSTNAME"),
        "{output:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Stops the agent with SIGTERM and waits for a clean exit.
async fn terminate(agent: &mut AgentProcess) {
    let pid = agent.child.id().expect("running");
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let status = within("the agent exits", agent.child.wait()).await.unwrap();
    assert!(status.success(), "{status}\n{}", agent.output());
}

/// The fleet view of the node enrolled as `host` in `env`, once it exists.
async fn node_named(stack: &Stack, env: &str, host: &str) -> Value {
    eventually("the node enrolled", Duration::from_secs(10), || async {
        let nodes = stack.fleet(env).await;
        nodes.into_iter().find(|n| n["host"] == json!(host))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostname_is_the_one_configured_and_logs_suit_a_pipe() {
    let stack = Stack::start().await;
    let (env, enrollment) = stack.environment().await;

    // Text logs into a pipe, with a terminal type that would invite colours: none are written.
    let sandbox = Sandbox::new();
    let exe = env!("CARGO_BIN_EXE_flotilla-agent");
    let mut agent = AgentProcess::start_with(
        Path::new(exe),
        &stack,
        &sandbox,
        &enrollment,
        &[
            ("VF_HOSTNAME", "edge-text.example"),
            ("TERM", "xterm-256color"),
        ],
    );
    let node = node_named(&stack, &env, "edge-text.example").await;
    stack.wait_connected(node["id"].as_str().unwrap()).await;
    terminate(&mut agent).await;
    let output = agent.output();
    assert!(output.contains("enrolled; node token stored"), "{output}");
    assert!(output.contains(" INFO "), "text lines: {output}");
    assert!(
        !output.contains('\x1b'),
        "no escape codes in a pipe: {output:?}"
    );

    // JSON logs, and the hostname given as a flag, which wins over the environment.
    let sandbox = Sandbox::new();
    let mut child = Command::new(exe)
        .args(["--hostname", "edge-json.example", "--log-format", "json"])
        .env("VF_URL", stack.api.url("/"))
        .env("VF_TOKEN", &enrollment)
        .env("VF_DATA_DIR", &sandbox.data)
        .env("VF_VECTOR_BIN", &sandbox.vector)
        .env("VF_HOSTNAME", "ignored-for-the-flag")
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let node = node_named(&stack, &env, "edge-json.example").await;
    stack.wait_connected(node["id"].as_str().unwrap()).await;
    let pid = child.id().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await
        .unwrap();
    let mut text = String::new();
    within("the agent's log", stderr.read_to_string(&mut text))
        .await
        .unwrap();
    assert!(within("the agent exits", child.wait())
        .await
        .unwrap()
        .success());
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{text}");
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["message"].is_string(), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("enrolled; node token stored")),
        "{text}"
    );
    assert!(
        !text.contains("ignored-for-the-flag"),
        "the flag's hostname was used"
    );
}
