//! Live taps: at most [`MAX_LIVE_TAPS`] at once, each only on a pipeline deployed here.

use super::*;

/// Live taps one agent runs at once; more are refused.
pub const MAX_LIVE_TAPS: usize = 3;

impl State {
    /// Starts a pushed `tap_start`, or refuses it (the refusal is posted as its end).
    pub(super) fn on_tap_start(&mut self, tap: LiveTap, out: &mut Vec<Command>) {
        if self.live_taps.contains(&tap.request_id) {
            return;
        }
        let deployed = self
            .pipelines
            .get(&tap.pipeline_id)
            .is_some_and(|p| p.desired.is_some());
        let refusal = if !deployed {
            Some(format!(
                "pipeline {} is not deployed on this node",
                tap.pipeline_id
            ))
        } else if self.live_taps.len() >= MAX_LIVE_TAPS {
            Some(format!("this node already runs {MAX_LIVE_TAPS} taps"))
        } else {
            None
        };
        match refusal {
            Some(reason) => {
                tracing::warn!(tap = %tap.request_id, reason = %reason, "refusing a live tap");
                out.push(Command::RefuseLiveTap { tap, reason });
            }
            None => {
                tracing::info!(tap = %tap.request_id, pipeline = %tap.pipeline_id, component = %tap.component_id, "starting a live tap");
                self.live_taps.insert(tap.request_id.clone());
                out.push(Command::StartLiveTap(tap));
            }
        }
    }

    /// Stops a live tap on `tap_stop`; its end is posted by the tap itself.
    pub(super) fn on_tap_stop(&mut self, request_id: String, out: &mut Vec<Command>) {
        if self.live_taps.contains(&request_id) {
            out.push(Command::StopLiveTap { request_id });
        }
    }

    /// Live taps running.
    pub fn live_taps(&self) -> usize {
        self.live_taps.len()
    }
}
