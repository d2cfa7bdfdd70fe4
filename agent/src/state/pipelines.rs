//! Pipeline processes: desired configs, starts, stops, crashes and their backoff.

use super::*;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Proc {
    /// Waiting for its first start.
    Idle,
    /// Start command issued.
    Starting { checksum: String, version: i32 },
    /// Running.
    Running {
        pid: u32,
        since: Instant,
        checksum: String,
        version: i32,
    },
    /// Stop command issued; start again after exit when `restart`.
    Stopping { restart: bool },
    /// Crashed or could not start; start again at `until`.
    Backoff { until: Instant },
}

#[derive(Debug, Clone)]
pub(super) struct Pipeline {
    /// The config to run; `None` once removed (the entry lives until the process exits).
    pub(super) desired: Option<PipelineConfig>,
    pub(super) generation: u64,
    pub(super) proc: Proc,
    pub(super) crashes: u32,
    pub(super) last_error: Option<String>,
}

/// A pipeline that ran this long before crashing restarts after the shortest backoff again.
pub(super) const CRASH_RESET_AFTER: Duration = Duration::from_secs(60);

impl State {
    pub(super) fn apply_pipelines(
        &mut self,
        desired: &[PipelineConfig],
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        let mut changed = false;
        for config in desired {
            let id = config.pipeline_id.as_str();
            let p = self
                .pipelines
                .entry(id.to_owned())
                .or_insert_with(|| Pipeline {
                    desired: None,
                    generation: 0,
                    proc: Proc::Idle,
                    crashes: 0,
                    last_error: None,
                });
            let new_checksum = p
                .desired
                .as_ref()
                .is_none_or(|d| d.checksum != config.checksum);
            p.desired = Some(config.clone());
            let start_now = match &mut p.proc {
                Proc::Idle => true,
                Proc::Running { checksum, .. } | Proc::Starting { checksum, .. }
                    if *checksum != config.checksum =>
                {
                    tracing::info!(pipeline = %id, version = config.version, "config changed; restarting");
                    out.push(Command::Stop {
                        pipeline_id: id.to_owned(),
                        generation: p.generation,
                    });
                    p.proc = Proc::Stopping { restart: true };
                    changed = true;
                    false
                }
                Proc::Stopping { restart } => {
                    *restart = true;
                    false
                }
                // A new version with the same config: nothing to restart, only to report.
                Proc::Running { version, .. } | Proc::Starting { version, .. }
                    if *version != config.version =>
                {
                    *version = config.version;
                    changed = true;
                    false
                }
                Proc::Backoff { .. } if new_checksum => {
                    p.crashes = 0;
                    true
                }
                _ => false,
            };
            if start_now {
                self.start(id, out);
                changed = true;
            }
        }
        let removed: Vec<String> = self
            .pipelines
            .iter()
            .filter(|(id, p)| p.desired.is_some() && !desired.iter().any(|d| d.pipeline_id == **id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in removed {
            tracing::info!(pipeline = %id, "pipeline removed; stopping");
            out.push(Command::RemoveConfig {
                pipeline_id: id.clone(),
            });
            changed = true;
            let p = self.pipelines.get_mut(&id).expect("listed above");
            p.desired = None;
            match p.proc {
                Proc::Running { .. } | Proc::Starting { .. } => {
                    out.push(Command::Stop {
                        pipeline_id: id.clone(),
                        generation: p.generation,
                    });
                    p.proc = Proc::Stopping { restart: false };
                }
                Proc::Stopping { .. } => p.proc = Proc::Stopping { restart: false },
                Proc::Idle | Proc::Backoff { .. } => {
                    self.pipelines.remove(&id);
                }
            }
        }
        if changed {
            self.changed(now);
        }
    }

    pub(super) fn start(&mut self, id: &str, out: &mut Vec<Command>) {
        let Some(p) = self.pipelines.get_mut(id) else {
            return;
        };
        let Some(config) = &p.desired else { return };
        p.generation += 1;
        p.proc = Proc::Starting {
            checksum: config.checksum.clone(),
            version: config.version,
        };
        out.push(Command::Start {
            pipeline_id: id.to_owned(),
            generation: p.generation,
            config_yaml: config.config_yaml.clone(),
            log_level: config.log_level.clone(),
        });
    }

    pub(super) fn on_spawned(
        &mut self,
        id: &str,
        generation: u64,
        result: Result<u32, String>,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        let crash_delay = |crashes: u32, tuning: &Tuning| {
            tuning
                .crash_backoff_base
                .saturating_mul(1 << crashes.min(16))
                .min(tuning.crash_backoff_max)
        };
        let Some(p) = self.pipelines.get_mut(id) else {
            return;
        };
        if p.generation != generation {
            return;
        }
        let Proc::Starting { checksum, version } = p.proc.clone() else {
            return;
        };
        match result {
            Ok(pid) => {
                tracing::info!(pipeline = %id, pid, version, "pipeline started");
                p.proc = Proc::Running {
                    pid,
                    since: now,
                    checksum: checksum.clone(),
                    version,
                };
                p.last_error = None;
                match &p.desired {
                    None => {
                        out.push(Command::Stop {
                            pipeline_id: id.to_owned(),
                            generation,
                        });
                        p.proc = Proc::Stopping { restart: false };
                    }
                    Some(d) if d.checksum != checksum => {
                        out.push(Command::Stop {
                            pipeline_id: id.to_owned(),
                            generation,
                        });
                        p.proc = Proc::Stopping { restart: true };
                    }
                    Some(_) => {}
                }
            }
            Err(reason) => {
                let delay = crash_delay(p.crashes, &self.tuning);
                tracing::error!(pipeline = %id, reason = %reason, retry_in = ?delay, "pipeline could not start");
                p.crashes = p.crashes.saturating_add(1);
                p.last_error = Some(reason);
                p.proc = Proc::Backoff { until: now + delay };
                if p.desired.is_none() {
                    self.pipelines.remove(id);
                }
            }
        }
        self.changed(now);
    }

    pub(super) fn on_exited(
        &mut self,
        id: &str,
        generation: u64,
        status: String,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        let Some(p) = self.pipelines.get_mut(id) else {
            return;
        };
        if p.generation != generation {
            return;
        }
        match p.proc.clone() {
            Proc::Stopping { restart } => {
                tracing::info!(pipeline = %id, status = %status, "pipeline stopped");
                if p.desired.is_none() {
                    self.pipelines.remove(id);
                } else if restart {
                    p.crashes = 0;
                    self.start(id, out);
                } else {
                    p.proc = Proc::Idle;
                }
            }
            Proc::Running { since, .. } => {
                if now.duration_since(since) >= CRASH_RESET_AFTER {
                    p.crashes = 0;
                }
                let delay = self
                    .tuning
                    .crash_backoff_base
                    .saturating_mul(1 << p.crashes.min(16))
                    .min(self.tuning.crash_backoff_max);
                tracing::warn!(pipeline = %id, status = %status, retry_in = ?delay, "pipeline crashed; restarting after backoff");
                p.crashes = p.crashes.saturating_add(1);
                p.last_error = Some(format!("vector exited unexpectedly ({status})"));
                p.proc = Proc::Backoff { until: now + delay };
            }
            _ => return,
        }
        self.changed(now);
    }

    /// Starts pipelines whose crash backoff is over.
    pub(super) fn restart_due_pipelines(&mut self, now: Instant, out: &mut Vec<Command>) {
        let due: Vec<String> = self
            .pipelines
            .iter()
            .filter(|(_, p)| matches!(p.proc, Proc::Backoff { until } if until <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.start(&id, out);
        }
    }

    /// Restarts one deployed pipeline, or every one (a fleet `restart`); returns how many.
    pub(super) fn restart(&mut self, only: Option<&str>, out: &mut Vec<Command>) -> usize {
        let ids: Vec<String> = match only {
            Some(id) => self
                .pipelines
                .contains_key(id)
                .then(|| id.to_owned())
                .into_iter()
                .collect(),
            None => self.pipelines.keys().cloned().collect(),
        };
        let mut restarted = 0;
        for id in ids {
            let p = self.pipelines.get_mut(&id).expect("listed above");
            if p.desired.is_none() {
                continue;
            }
            restarted += 1;
            match p.proc {
                Proc::Running { .. } | Proc::Starting { .. } => {
                    out.push(Command::Stop {
                        pipeline_id: id,
                        generation: p.generation,
                    });
                    p.proc = Proc::Stopping { restart: true };
                }
                Proc::Backoff { .. } | Proc::Idle => {
                    p.crashes = 0;
                    self.start(&id, out);
                }
                Proc::Stopping { .. } => p.proc = Proc::Stopping { restart: true },
            }
        }
        restarted
    }
}
