//! Pipeline processes: one `vector --config <file>` child per pipeline.
//!
//! The main loop owns the [`Supervisor`]; each child has a watcher task that owns the
//! [`tokio::process::Child`], stops it on request (SIGTERM, then SIGKILL after a grace period)
//! and reports its exit as an [`Event::Exited`] over the loop's channel.

use crate::logs::Logs;
use crate::state::Event;
use crate::vector_api;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Child {
    generation: u64,
    /// Where its Vector API listens, if it has one.
    api: Option<SocketAddr>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Starts, stops and watches pipeline processes.
pub struct Supervisor {
    vector_bin: PathBuf,
    dir: PathBuf,
    grace: Duration,
    events: UnboundedSender<Event>,
    logs: Logs,
    children: HashMap<String, Child>,
}

impl Supervisor {
    /// A supervisor writing configs under `dir` and capturing output into `logs`.
    pub fn new(
        vector_bin: PathBuf,
        dir: PathBuf,
        grace: Duration,
        events: UnboundedSender<Event>,
        logs: Logs,
    ) -> Self {
        Self {
            vector_bin,
            dir,
            grace,
            events,
            logs,
            children: HashMap::new(),
        }
    }

    /// Creates the config directory and deletes configs left by an earlier run (the first poll
    /// writes the current ones again).
    pub fn prepare(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "tmp") {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Where a pipeline's config is written (see [`file_stem`]).
    pub fn config_path(&self, pipeline_id: &str) -> PathBuf {
        self.dir.join(format!("{}.yaml", file_stem(pipeline_id)))
    }

    /// The pipeline's own Vector data directory (checkpoints, disk buffers), kept across
    /// restarts of the agent and removed with the pipeline.
    pub fn data_dir(&self, pipeline_id: &str) -> PathBuf {
        self.dir.join(format!("{}.data", file_stem(pipeline_id)))
    }

    /// Writes the config (with its own API address, see [`vector_api::prepare`]) and starts
    /// `vector --config <file>`; returns its pid or why it could not start.
    pub fn start(
        &mut self,
        pipeline_id: &str,
        generation: u64,
        config_yaml: &str,
        log_level: Option<&str>,
    ) -> Result<u32, String> {
        let path = self.config_path(pipeline_id);
        let data_dir = self.data_dir(pipeline_id);
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
        let prepared = vector_api::prepare(config_yaml, &data_dir);
        write_atomically(&path, prepared.yaml.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let mut cmd = tokio::process::Command::new(&self.vector_bin);
        cmd.arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(level) = log_level {
            cmd.env("VECTOR_LOG", level.to_ascii_lowercase());
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.vector_bin.display()))?;
        let pid = child.id().ok_or("the process exited at once")?;
        if let Some(out) = child.stdout.take() {
            self.logs.capture(pipeline_id, out);
        }
        if let Some(err) = child.stderr.take() {
            self.logs.capture(pipeline_id, err);
        }
        let pipeline = pipeline_id.to_owned();
        let stop = CancellationToken::new();
        let events = self.events.clone();
        let grace = self.grace;
        let stop_rx = stop.clone();
        let task = tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                () = stop_rx.cancelled() => {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                    match tokio::time::timeout(grace, child.wait()).await {
                        Ok(status) => status,
                        Err(_) => {
                            tracing::warn!(pipeline = %pipeline, pid, "vector ignored SIGTERM; killing it");
                            let _ = child.start_kill();
                            child.wait().await
                        }
                    }
                }
            };
            let status = describe(status);
            let _ = events.send(Event::Exited {
                pipeline_id: pipeline,
                generation,
                status,
            });
        });
        if let Some(old) = self.children.insert(
            pipeline_id.to_owned(),
            Child {
                generation,
                api: prepared.api,
                stop,
                task,
            },
        ) {
            // The state machine starts a pipeline only after its previous process exited.
            old.stop.cancel();
        }
        Ok(pid)
    }

    /// Asks the process of this generation to stop; its exit is reported as an event.
    pub fn stop(&mut self, pipeline_id: &str, generation: u64) {
        if let Some(child) = self.children.get(pipeline_id) {
            if child.generation == generation {
                child.stop.cancel();
            }
        }
    }

    /// Forgets a child whose exit was reported.
    pub fn reap(&mut self, pipeline_id: &str, generation: u64) {
        if self
            .children
            .get(pipeline_id)
            .is_some_and(|c| c.generation == generation)
        {
            self.children.remove(pipeline_id);
        }
    }

    /// Deletes a pipeline's config file.
    pub fn remove_config(&self, pipeline_id: &str) {
        let path = self.config_path(pipeline_id);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete pipeline config");
            }
        }
        let data = self.data_dir(pipeline_id);
        if let Err(e) = std::fs::remove_dir_all(&data) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %data.display(), error = %e, "cannot delete pipeline data");
            }
        }
    }

    /// Stops every process and waits for them (each gets the grace period).
    pub async fn stop_all(&mut self) {
        let children: Vec<Child> = self.children.drain().map(|(_, c)| c).collect();
        for child in &children {
            child.stop.cancel();
        }
        for child in children {
            let _ = child.task.await;
        }
    }

    /// Where the running process of a pipeline serves its Vector API.
    pub fn api_of(&self, pipeline_id: &str) -> Option<SocketAddr> {
        self.children.get(pipeline_id)?.api
    }

    /// `(pipeline id, API address)` of every running process that has an API.
    pub fn apis(&self) -> Vec<(String, SocketAddr)> {
        self.children
            .iter()
            .filter_map(|(id, c)| Some((id.clone(), c.api?)))
            .collect()
    }

    /// Pipelines with a live process.
    pub fn running(&self) -> usize {
        self.children.len()
    }
}

/// A file name for a pipeline id, which is opaque (VectorFlow issues cuids, Flotilla UUIDs):
/// the id itself when it is plain (`[A-Za-z0-9_-]`, at most 64 bytes), else `id-` and its
/// SHA-256 in hex, which no plain id can equal (too long).
pub fn file_stem(pipeline_id: &str) -> String {
    let plain = !pipeline_id.is_empty()
        && pipeline_id.len() <= 64
        && pipeline_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        pipeline_id.to_owned()
    } else {
        format!("id-{}", hex::encode(Sha256::digest(pipeline_id.as_bytes())))
    }
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("unknown exit status: {e}"),
    }
}

/// Writes a file through a temporary sibling and a rename.
pub fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn temp_dir() -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("flotilla-sup-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn a_missing_binary_is_an_error_not_a_panic() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let dir = temp_dir();
        let mut s = Supervisor::new(
            dir.join("no-such-vector"),
            dir.clone(),
            Duration::from_secs(1),
            tx,
            Logs::default(),
        );
        let err = s
            .start("clx9k2v0b0000abcd", 1, "sources: {}", None)
            .unwrap_err();
        assert!(err.contains("no-such-vector"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn start_stop_and_crash_are_reported() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let dir = temp_dir();
        let script = dir.join("vector");
        std::fs::write(
            &script,
            "#!/bin/sh\necho \"starting $2\"\necho oops >&2\n[ -f \"$2.crash\" ] && exit 3\nexec sleep 30\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let logs = Logs::default();
        let mut s = Supervisor::new(
            script,
            dir.clone(),
            Duration::from_secs(2),
            tx,
            logs.clone(),
        );
        let id = "clx9k2v0b0000abcd";
        let pid = s.start(id, 1, "a: 1", None).unwrap();
        assert!(pid > 0);
        let written = std::fs::read_to_string(s.config_path(id)).unwrap();
        assert!(vector_api::is_prepared_from(&written, "a: 1"), "{written}");
        assert!(s.api_of(id).is_some_and(|a| a.ip().is_loopback()));
        // The output is read by its own tasks: wait for both lines.
        let mut lines: Vec<String> = vec![];
        tokio::time::timeout(Duration::from_secs(5), async {
            while lines.len() < 2 {
                lines.extend(logs.take(10).into_iter().flat_map(|b| b.lines));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("both lines captured");
        lines.sort();
        assert_eq!(
            lines,
            [
                "oops".to_owned(),
                format!("starting {}", s.config_path(id).display())
            ]
        );
        s.stop(id, 1);
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(ev, Event::Exited { generation: 1, .. }), "{ev:?}");
        s.reap(id, 1);
        assert_eq!(s.running(), 0);

        std::fs::write(dir.join(format!("{id}.yaml.crash")), "").unwrap();
        s.start(id, 2, "a: 2", None).unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        match ev {
            Event::Exited {
                generation: 2,
                status,
                ..
            } => assert!(status.contains('3'), "{status}"),
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn any_id_is_a_safe_file_name() {
        assert_eq!(file_stem("clx9k2v0b0000abcd"), "clx9k2v0b0000abcd");
        assert_eq!(
            file_stem("0b9a7c1e-5f7d-4c1e-9a51-0d2f8c3e7b11"),
            "0b9a7c1e-5f7d-4c1e-9a51-0d2f8c3e7b11"
        );
        for id in [
            "../../etc/passwd",
            "a/b",
            "",
            ".",
            "x y",
            "é",
            &"a".repeat(65),
        ] {
            let stem = file_stem(id);
            assert!(
                stem.starts_with("id-") && stem.len() == 67,
                "{id:?} → {stem}"
            );
            assert!(stem[3..].bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(file_stem("a/b"), file_stem("a/c"));
    }
}
