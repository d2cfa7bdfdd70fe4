//! Sample requests: tapped once however often they arrive, results posted until accepted.

use super::*;

#[derive(Debug, Clone)]
pub(super) enum SampleJob {
    Tapping,
    Posting {
        results: Vec<SampleResult>,
        attempts: u32,
    },
    Waiting {
        results: Vec<SampleResult>,
        attempts: u32,
        at: Instant,
    },
    Done {
        at: Instant,
    },
}

/// How long a finished sample request is remembered to ignore duplicates.
pub(super) const SAMPLE_MEMORY: Duration = Duration::from_secs(3600);

/// Give up re-posting sample results after this many failures.
pub(super) const SAMPLE_MAX_ATTEMPTS: u32 = 20;

impl State {
    pub(super) fn on_sample_request(
        &mut self,
        request: SampleRequestConfig,
        out: &mut Vec<Command>,
    ) {
        if self.samples.contains_key(&request.request_id) {
            return;
        }
        let running = self
            .pipelines
            .get(&request.pipeline_id)
            .is_some_and(|p| p.desired.is_some());
        if running {
            self.samples
                .insert(request.request_id.clone(), SampleJob::Tapping);
            out.push(Command::Tap(request));
        } else {
            let results: Vec<SampleResult> = request
                .component_keys
                .iter()
                .map(|key| SampleResult {
                    request_id: request.request_id.clone(),
                    component_key: key.clone(),
                    events: None,
                    schema: None,
                    error: Some(format!(
                        "pipeline {} is not deployed on this node",
                        request.pipeline_id
                    )),
                })
                .collect();
            self.samples.insert(
                request.request_id.clone(),
                SampleJob::Posting {
                    results: results.clone(),
                    attempts: 1,
                },
            );
            out.push(Command::PostSamples {
                request_id: request.request_id,
                results,
            });
        }
    }

    pub(super) fn on_samples_posted(&mut self, id: &str, ok: bool, now: Instant) {
        let Some(job) = self.samples.get_mut(id) else {
            return;
        };
        let SampleJob::Posting { results, attempts } = job else {
            return;
        };
        if ok {
            *job = SampleJob::Done { at: now };
        } else if *attempts >= SAMPLE_MAX_ATTEMPTS {
            tracing::error!(request = %id, "giving up posting sample results");
            *job = SampleJob::Done { at: now };
        } else {
            let at = now + self.tuning.sample_retry.saturating_mul((*attempts).min(6));
            tracing::warn!(request = %id, attempts = *attempts, "posting sample results failed; will retry");
            *job = SampleJob::Waiting {
                results: std::mem::take(results),
                attempts: *attempts,
                at,
            };
        }
    }

    /// Re-posts results whose retry is due; forgets finished requests after a while.
    pub(super) fn retry_due_samples(&mut self, now: Instant, out: &mut Vec<Command>) {
        for (id, job) in self.samples.iter_mut() {
            if let SampleJob::Waiting {
                results,
                attempts,
                at,
            } = job
            {
                if *at <= now {
                    let results = std::mem::take(results);
                    let attempts = *attempts + 1;
                    out.push(Command::PostSamples {
                        request_id: id.clone(),
                        results: results.clone(),
                    });
                    *job = SampleJob::Posting { results, attempts };
                }
            }
        }
        self.samples.retain(|_, job| {
            !matches!(job, SampleJob::Done { at } if now.duration_since(*at) > SAMPLE_MEMORY)
        });
    }
}
