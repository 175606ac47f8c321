//! The steps a run is made of, and the plan of each run kind: pure data, shared by the pipeline
//! (which runs them) and the reporter and dashboard (which show how far a run got).

use serde::Serialize;

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
    /// Sleep: the workloads' replicas recorded, each scaled to zero, the app's logins revoked.
    Sleep,
    /// Wake: the workloads scaled back to what the sleep recorded.
    Wake,
}

impl StepName {
    pub const ALL: [StepName; 19] = [
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
        StepName::Sleep,
        StepName::Wake,
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
            StepName::Sleep => "sleep",
            StepName::Wake => "wake",
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
