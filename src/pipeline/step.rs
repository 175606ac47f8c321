//! Steps: what a run is made of, and the one trait through which the engine executes them.

use std::future::Future;

use serde::Serialize;
use serde_json::Value;

use crate::stand::Failure;
use crate::store::runs::ClaimedRun;

// Pure data, kept in stand/ so the reporter (below the pipeline) can show how far a run got.
pub use crate::stand::StepName;

/// What a step did, recorded as its `detail`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOutcome {
    pub detail: Value,
    /// The step's system is not configured (DESIGN.md: recorded as `skipped` with the reason).
    pub skipped: bool,
}

impl StepOutcome {
    pub fn done(detail: Value) -> Self {
        Self { detail, skipped: false }
    }
    pub fn skipped(reason: &str) -> Self {
        Self { detail: serde_json::json!({ "skipped": reason }), skipped: true }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepErrorKind {
    /// May pass if tried again (timeouts, 5xx, connection refused): retried with backoff.
    Transient,
    /// Will not pass by retrying (bad chart, image missing, smoke failed): fails the run at once.
    Permanent,
}

/// A step's failure, typed so the engine knows whether to retry; recorded as the step's `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{kind:?} failure ({label}): {message}")]
pub struct StepError {
    pub kind: StepErrorKind,
    /// A stable label for metrics and reports, e.g. `helm_timeout`.
    pub label: String,
    pub message: String,
}

impl StepError {
    pub fn transient(label: &str, message: impl Into<String>) -> Self {
        Self { kind: StepErrorKind::Transient, label: label.into(), message: message.into() }
    }
    pub fn permanent(label: &str, message: impl Into<String>) -> Self {
        Self { kind: StepErrorKind::Permanent, label: label.into(), message: message.into() }
    }
}

/// The one conversion from an adapter's error (helm, cluster, registry, credentials, …): its own
/// classification and label decide, so `?` in a step keeps both.
impl<E: Failure> From<E> for StepError {
    fn from(e: E) -> Self {
        if e.is_transient() {
            StepError::transient(e.label(), e.to_string())
        } else {
            StepError::permanent(e.label(), e.to_string())
        }
    }
}

/// What a step sees of its run.
pub type RunContext = ClaimedRun;

/// Executes steps. The engine never talks to helm, Kubernetes, Vault or a forge itself: the real
/// runner composes their traits; tests use a fake that can fail, stall or answer slowly.
pub trait StepRunner: Send + Sync + 'static {
    /// Must be idempotent: a step interrupted by a crash is executed again on resume.
    fn run(&self, step: StepName, run: &RunContext) -> impl Future<Output = Result<StepOutcome, StepError>> + Send;

    /// Called when a worker starts (or resumes) a run, before its steps: where the report of the
    /// new state ("deploying") is queued. Best effort: a failure here must not stop the run.
    fn started(&self, run: &RunContext) -> impl Future<Output = ()> + Send {
        let _ = run;
        async {}
    }
}
