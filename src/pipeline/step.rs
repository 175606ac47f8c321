//! Steps: what a run is made of, and the one trait through which the engine executes them.

use std::future::Future;

use serde::Serialize;
use serde_json::Value;

use crate::store::runs::ClaimedRun;

/// One idempotent part of a run (DESIGN.md's vocabulary). Names match the `steps.name` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepName {
    Namespace,
    Database,
    Secrets,
    Image,
    Deploy,
    Migrate,
    Verify,
    Smoke,
    Report,
    Rollback,
    /// Recorded by teardown runs before the lifecycle issue split teardown into the steps below.
    Teardown,
    /// Teardown: deploys of the stand still in flight are stopped (they stop themselves, at once).
    Cancel,
    /// Teardown: the forge's deployment goes inactive, its environment stops, an open check ends.
    Deactivate,
    /// Teardown: every credential of the stand revoked, before anything it opens is removed.
    Revoke,
    /// Teardown: the release uninstalled and the namespace (Secrets, volume claims) deleted and gone.
    Uninstall,
    /// Teardown: the database and its owner role dropped; the stand becomes a tombstone.
    Drop,
    /// Extend: the stand's expiry moved.
    Extend,
}

impl StepName {
    pub const ALL: [StepName; 17] = [
        StepName::Namespace,
        StepName::Database,
        StepName::Secrets,
        StepName::Image,
        StepName::Deploy,
        StepName::Migrate,
        StepName::Verify,
        StepName::Smoke,
        StepName::Report,
        StepName::Rollback,
        StepName::Teardown,
        StepName::Cancel,
        StepName::Deactivate,
        StepName::Revoke,
        StepName::Uninstall,
        StepName::Drop,
        StepName::Extend,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StepName::Namespace => "namespace",
            StepName::Database => "database",
            StepName::Secrets => "secrets",
            StepName::Image => "image",
            StepName::Deploy => "deploy",
            StepName::Migrate => "migrate",
            StepName::Verify => "verify",
            StepName::Smoke => "smoke",
            StepName::Report => "report",
            StepName::Rollback => "rollback",
            StepName::Teardown => "teardown",
            StepName::Cancel => "cancel",
            StepName::Deactivate => "deactivate",
            StepName::Revoke => "revoke",
            StepName::Uninstall => "uninstall",
            StepName::Drop => "drop",
            StepName::Extend => "extend",
        }
    }

    /// Steps that only wait for something outside (the image in the registry) and change nothing
    /// while they wait: stopped at once when a newer deploy of the stand is queued.
    pub fn gives_way_while_running(self) -> bool {
        matches!(self, StepName::Image)
    }

    /// A failure at or after `deploy` leaves a release that may be unhealthy: roll it back.
    pub fn needs_rollback_on_failure(self) -> bool {
        matches!(self, StepName::Deploy | StepName::Migrate | StepName::Verify | StepName::Smoke)
    }
}

/// The steps of a run kind, as groups: the steps of a group run concurrently, groups in order.
/// `report` is not listed: the engine runs it last whatever happened, unless the run gave way.
pub fn plan(kind: &str) -> &'static [&'static [StepName]] {
    use StepName::*;
    match kind {
        // Secrets puts its Secret in the namespace and issues a login that joins the database's
        // owner role, so it waits for both; the image check needs neither.
        "deploy" => &[&[Namespace, Database], &[Secrets, Image], &[Deploy], &[Migrate], &[Verify], &[Smoke]],
        // Logins go before the namespace and the database (Vault issue 3410), so no pod still holding
        // one outlives its revocation unnoticed; the database goes last, once nothing can reach it.
        "teardown" => &[&[Cancel], &[Deactivate], &[Revoke], &[Uninstall], &[Drop]],
        "extend" => &[&[Extend]],
        _ => &[],
    }
}

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
