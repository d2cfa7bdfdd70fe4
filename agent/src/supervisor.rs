//! Pipeline processes: one `vector --config <file>` child per pipeline.
//!
//! The main loop owns the [`Supervisor`]; each child has a watcher task that owns the
//! [`tokio::process::Child`], stops it on request (SIGTERM, then SIGKILL after a grace period)
//! and reports its exit as an [`Event::Exited`] over the loop's channel.

use crate::state::Event;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Child {
    generation: u64,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Starts, stops and watches pipeline processes.
pub struct Supervisor {
    vector_bin: PathBuf,
    dir: PathBuf,
    grace: Duration,
    events: UnboundedSender<Event>,
    children: HashMap<Uuid, Child>,
}

impl Supervisor {
    /// A supervisor writing configs under `dir`.
    pub fn new(
        vector_bin: PathBuf,
        dir: PathBuf,
        grace: Duration,
        events: UnboundedSender<Event>,
    ) -> Self {
        Self {
            vector_bin,
            dir,
            grace,
            events,
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

    /// Where a pipeline's config is written.
    pub fn config_path(&self, pipeline_id: Uuid) -> PathBuf {
        self.dir.join(format!("{pipeline_id}.yaml"))
    }

    /// Writes the config and starts `vector --config <file>`; returns its pid or why it could not start.
    pub fn start(
        &mut self,
        pipeline_id: Uuid,
        generation: u64,
        config_yaml: &str,
        log_level: Option<&str>,
    ) -> Result<u32, String> {
        let path = self.config_path(pipeline_id);
        write_atomically(&path, config_yaml.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let mut cmd = tokio::process::Command::new(&self.vector_bin);
        cmd.arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(level) = log_level {
            cmd.env("VECTOR_LOG", level.to_ascii_lowercase());
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.vector_bin.display()))?;
        let pid = child.id().ok_or("the process exited at once")?;
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
                            tracing::warn!(pipeline = %pipeline_id, pid, "vector ignored SIGTERM; killing it");
                            let _ = child.start_kill();
                            child.wait().await
                        }
                    }
                }
            };
            let status = describe(status);
            let _ = events.send(Event::Exited {
                pipeline_id,
                generation,
                status,
            });
        });
        if let Some(old) = self.children.insert(
            pipeline_id,
            Child {
                generation,
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
    pub fn stop(&mut self, pipeline_id: Uuid, generation: u64) {
        if let Some(child) = self.children.get(&pipeline_id) {
            if child.generation == generation {
                child.stop.cancel();
            }
        }
    }

    /// Forgets a child whose exit was reported.
    pub fn reap(&mut self, pipeline_id: Uuid, generation: u64) {
        if self
            .children
            .get(&pipeline_id)
            .is_some_and(|c| c.generation == generation)
        {
            self.children.remove(&pipeline_id);
        }
    }

    /// Deletes a pipeline's config file.
    pub fn remove_config(&self, pipeline_id: Uuid) {
        let path = self.config_path(pipeline_id);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete pipeline config");
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

    /// Pipelines with a live process.
    pub fn running(&self) -> usize {
        self.children.len()
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
        let d = std::env::temp_dir().join(format!("flotilla-sup-{}", Uuid::new_v4().simple()));
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
        );
        let err = s.start(Uuid::new_v4(), 1, "sources: {}", None).unwrap_err();
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
            "#!/bin/sh\n[ -f \"$2.crash\" ] && exit 3\nexec sleep 30\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut s = Supervisor::new(script, dir.clone(), Duration::from_secs(2), tx);
        let id = Uuid::new_v4();
        let pid = s.start(id, 1, "a: 1", None).unwrap();
        assert!(pid > 0);
        assert_eq!(std::fs::read_to_string(s.config_path(id)).unwrap(), "a: 1");
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
}
