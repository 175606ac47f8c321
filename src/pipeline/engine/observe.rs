//! What the engine tells the metrics: step durations, finished runs, time to a working URL.

use crate::metrics;
use crate::stand::{RunState, StepState};
use crate::store::runs::{self, ClaimedRun};

use super::Engine;

impl<R> Engine<R> {
    /// The stand URL answers (verify passed): how long since the event that queued the run. The
    /// run's `queued_at` is written in the same transaction as the delivery that asked for it.
    pub(super) async fn observe_time_to_url(&self, run: &ClaimedRun) {
        if !run.kind.deploys() {
            return;
        }
        match runs::since_queued(&self.pool, run.run_id).await {
            Ok(secs) => {
                ::metrics::histogram!(metrics::TIME_TO_URL, "project" => run.project.to_string()).record(secs.max(0.0))
            }
            // A figure, not a reason to fail the step.
            Err(e) => tracing::debug!(error = %e, "time to URL not recorded"),
        }
    }
}

/// Records a step's duration under its end state, once.
pub(super) struct StepTimer {
    step: &'static str,
    started: std::time::Instant,
}

impl StepTimer {
    pub(super) fn start(step: &'static str) -> Self {
        StepTimer { step, started: std::time::Instant::now() }
    }

    pub(super) fn finish(&self, outcome: StepState) {
        ::metrics::histogram!(metrics::STEP_DURATION, "step" => self.step, "outcome" => outcome.as_str())
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// A finished run in the run and teardown counters, and its failure under its stable label.
pub(super) fn count_run(run: &ClaimedRun, outcome: RunState, error: Option<&serde_json::Value>) {
    let (kind, trigger, outcome) = (run.kind.as_str(), run.trigger.as_str(), outcome.as_str());
    if run.kind.tears_down() {
        ::metrics::counter!(metrics::TEARDOWNS, "reason" => trigger, "outcome" => outcome).increment(1);
    }
    ::metrics::counter!(metrics::RUNS, "kind" => kind, "trigger" => trigger, "outcome" => outcome).increment(1);
    // A step's failure was counted when the step ended; this counts the others (an access check).
    if let Some(e) = error.filter(|e| e.get("step").is_none())
        && let Some(label) = e.get("label").and_then(|l| l.as_str())
    {
        metrics::error("run", label);
    }
}
