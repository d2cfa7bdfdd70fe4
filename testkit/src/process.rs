//! Services started as real processes, for tests that kill or signal them.
//!
//! [`start`] runs a binary with the given environment, captures its output, and returns once it
//! logged `listening on <addr>`. Integration tests of the binary's own crate find it with
//! `env!("CARGO_BIN_EXE_<name>")`.

use anyhow::Context as _;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// A running service process; killed when dropped.
pub struct Process {
    child: Child,
    /// The address it logged as listening on.
    pub addr: SocketAddr,
    output: Arc<Mutex<Output>>,
}

/// How long a process may take to listen, and how much of its output is kept.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time allowed until its `listening on` line.
    pub start_timeout: Duration,
    /// Output lines kept, the latest ones.
    pub kept_lines: usize,
}

impl Default for Limits {
    /// A test's: [`crate::STEP`] to start, every line kept.
    fn default() -> Self {
        Self {
            start_timeout: crate::STEP,
            kept_lines: usize::MAX,
        }
    }
}

/// The latest lines a process printed.
struct Output {
    lines: VecDeque<String>,
    kept: usize,
}

/// Starts `program` with `env` added to the test's environment, and waits for its
/// `listening on <addr>` line; panics, with its output, if it does not come.
pub async fn start(program: impl AsRef<Path>, env: &[(String, String)]) -> Process {
    try_start(program, env, Limits::default())
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Like [`start`] within `limits`; an error, with the output so far, if the program cannot
/// be started or exits or stays silent before listening.
pub async fn try_start(
    program: impl AsRef<Path>,
    env: &[(String, String)],
    limits: Limits,
) -> anyhow::Result<Process> {
    let program = program.as_ref();
    let mut child = Command::new(program)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let output = Arc::new(Mutex::new(Output {
        lines: VecDeque::new(),
        kept: limits.kept_lines,
    }));
    let (addr_tx, mut addr_rx) = watch::channel(None);
    let addr_tx = Arc::new(addr_tx);
    let stdout = child.stdout.take().expect("stdout piped");
    let stderr = child.stderr.take().expect("stderr piped");
    tokio::spawn(capture(stdout, output.clone(), addr_tx.clone()));
    tokio::spawn(capture(stderr, output.clone(), addr_tx));
    let started = tokio::time::timeout(limits.start_timeout, addr_rx.wait_for(Option::is_some));
    let addr = match started.await {
        Ok(Ok(addr)) => addr.expect("checked above"),
        Ok(Err(_)) | Err(_) => {
            let _ = child.start_kill();
            anyhow::bail!(
                "{} did not log `listening on` within {:?}; output:\n{}",
                program.display(),
                limits.start_timeout,
                output.lock().unwrap().text()
            );
        }
    };
    Ok(Process {
        child,
        addr,
        output,
    })
}

async fn capture(
    stream: impl AsyncRead + Unpin,
    output: Arc<Mutex<Output>>,
    addr: Arc<watch::Sender<Option<SocketAddr>>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(found) = listening_addr(&line) {
            addr.send_replace(Some(found));
        }
        output.lock().unwrap().push(line);
    }
}

impl Output {
    fn push(&mut self, line: String) {
        if self.lines.len() == self.kept {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// The kept lines, each ended by a newline.
    fn text(&self) -> String {
        self.lines.iter().flat_map(|l| [l.as_str(), "\n"]).collect()
    }
}

/// The address in a `listening on <addr>` log line (colour codes and fields around it allowed).
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl Process {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("process still running")
    }

    /// What it printed so far (every line, unless [`Limits::kept_lines`] said fewer).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().text()
    }

    /// Sends SIGKILL and reaps it.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL sent");
        crate::within("the killed process to exit", self.child.wait())
            .await
            .expect("process reaped");
    }

    /// Sends SIGTERM without waiting.
    pub async fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .await
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits (at most [`crate::STEP`]) for it to exit.
    pub async fn wait(&mut self) -> ExitStatus {
        crate::within("the process to exit", self.child.wait())
            .await
            .expect("process reaped")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_address_in_text_and_json_lines() {
        let text = "2026-01-01T00:00:00Z  INFO flotilla_gateway: listening on 127.0.0.1:4567 gateway_id=gw-1";
        assert_eq!(
            listening_addr(text),
            Some("127.0.0.1:4567".parse().unwrap())
        );
        let json = r#"{"level":"INFO","message":"listening on [::1]:80","gateway_id":"g"}"#;
        assert_eq!(listening_addr(json), Some("[::1]:80".parse().unwrap()));
        assert_eq!(listening_addr("ready"), None);
    }
}
