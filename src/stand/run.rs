//! Why a run was queued and what a person asked for: the domain's words, shared by intake, the
//! store, the API and the pipeline. Parsing them from a forge's comment stays in `forge`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::StepName;

/// What a run does to its stand; stored as `runs.kind`. Owns its step plan and the engine's
/// per-kind policy, so nothing outside compares kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    Deploy,
    Teardown,
    Extend,
    /// An idle stand's workloads scaled to zero and its app logins revoked.
    Sleep,
    /// A sleeping stand's logins issued again and its workloads scaled back, then verified.
    Wake,
}

impl RunKind {
    pub const ALL: [RunKind; 5] = [RunKind::Deploy, RunKind::Teardown, RunKind::Extend, RunKind::Sleep, RunKind::Wake];

    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Deploy => "deploy",
            RunKind::Teardown => "teardown",
            RunKind::Extend => "extend",
            RunKind::Sleep => "sleep",
            RunKind::Wake => "wake",
        }
    }

    /// The steps of the kind, as groups: the steps of a group run concurrently, groups in order.
    /// `report` is not listed: the engine runs it last whatever happened, unless the run gave way.
    pub fn plan(self) -> &'static [&'static [StepName]] {
        use StepName::*;
        match self {
            // Secrets puts its Secret in the namespace and issues a login that joins the database's
            // owner role, so it waits for both; the image check needs neither.
            RunKind::Deploy => &[&[Namespace, Database], &[Secrets, Image], &[Deploy], &[Migrate], &[Verify], &[Smoke]],
            // Logins go before the namespace and the database (Vault issue 3410), so no pod still
            // holding one outlives its revocation unnoticed; the database goes last, once nothing
            // can reach it.
            RunKind::Teardown => &[&[Cancel], &[Deactivate], &[Revoke], &[Uninstall], &[Drop]],
            RunKind::Extend => &[&[Extend]],
            RunKind::Sleep => &[&[Sleep]],
            // New logins (and the Secret that carries them) before a pod starts with the old ones.
            RunKind::Wake => &[&[Secrets], &[Wake], &[Verify]],
        }
    }

    /// Builds (or rebuilds) the stand: its TTL restarts when the run starts, a newer deploy or a
    /// teardown of the stand overtakes it, a failed release step is rolled back, and a working URL
    /// is what it is timed by.
    pub fn deploys(self) -> bool {
        matches!(self, RunKind::Deploy)
    }

    /// Removes the stand.
    pub fn tears_down(self) -> bool {
        matches!(self, RunKind::Teardown)
    }

    /// The stand's expiry restarts from the run's start (DESIGN.md's TTL contract).
    pub fn resets_expiry(self) -> bool {
        self.deploys()
    }

    /// A newer deploy or a teardown of the stand queued meanwhile stops the run at a step boundary.
    pub fn gives_way_to_newer_runs(self) -> bool {
        self.deploys()
    }

    /// Shows that someone uses the stand, so it is not idle: everything but the sleep itself.
    pub fn is_activity(self) -> bool {
        !matches!(self, RunKind::Sleep)
    }

    /// A failure at a release step rolls the release back.
    pub fn rolls_back_on_failure(self) -> bool {
        self.deploys()
    }

    /// Brings the stand up, so it needs one of `max_active`'s places before its first step.
    pub fn needs_place(self) -> bool {
        matches!(self, RunKind::Deploy | RunKind::Wake)
    }
}

impl std::fmt::Display for RunKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a run is; stored as `runs.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Running,
    Succeeded,
    Failed,
    /// A newer deploy of the stand was queued.
    Superseded,
    /// The stand's teardown was queued.
    Cancelled,
    /// The requester may not ask for it.
    Rejected,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Superseded => "superseded",
            RunState::Cancelled => "cancelled",
            RunState::Rejected => "rejected",
        }
    }

    /// Ended: a worker will not pick it up again.
    pub fn is_done(self) -> bool {
        !matches!(self, RunState::Queued | RunState::Running)
    }

    /// Ended without doing what it was queued for, by its own fault or the requester's.
    pub fn is_failure(self) -> bool {
        matches!(self, RunState::Failed | RunState::Rejected)
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a step of a run is; stored as `steps.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
            StepState::Cancelled => "cancelled",
        }
    }

    /// Done for good: a resumed run does not execute it again.
    pub fn is_done(self) -> bool {
        matches!(self, StepState::Succeeded | StepState::Skipped)
    }
}

impl std::fmt::Display for StepState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a run was queued; stored with the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Opened,
    Pushed,
    Reopened,
    ReadyForReview,
    /// The opt-out label was removed.
    OptIn,
    Closed,
    Merged,
    /// The opt-out label was added.
    OptOut,
    Command,
    CheckRun,
    /// `POST /api/v1/stands/{id}/…` or `DELETE` with the API token.
    Api,
    /// `draftd stands rerun|extend|destroy`.
    Cli,
    /// The dashboard's Re-run, Extend and Destroy buttons, behind its login.
    Dashboard,
    /// The reaper's resync found an open PR/MR whose head commit has no run (a missed webhook).
    Resync,
    /// The reaper: no new deploy within the stand's TTL.
    Expired,
    /// The reaper: an earlier teardown failed.
    Retry,
    /// The reaper: no activity for `[sleep] idle_after`.
    Idle,
    /// A request for a sleeping stand's URL.
    Visit,
    /// Put to sleep to make room for another stand past `max_active` (`on_cap = "sleep_idlest"`).
    Cap,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Opened => "opened",
            Trigger::Pushed => "pushed",
            Trigger::Reopened => "reopened",
            Trigger::ReadyForReview => "ready_for_review",
            Trigger::OptIn => "opt_in",
            Trigger::Closed => "closed",
            Trigger::Merged => "merged",
            Trigger::OptOut => "opt_out",
            Trigger::Command => "command",
            Trigger::CheckRun => "check_run",
            Trigger::Api => "api",
            Trigger::Cli => "cli",
            Trigger::Dashboard => "dashboard",
            Trigger::Resync => "resync",
            Trigger::Expired => "expired",
            Trigger::Retry => "retry",
            Trigger::Idle => "idle",
            Trigger::Visit => "visit",
            Trigger::Cap => "cap",
        }
    }

    /// Triggers that may bring back a stand that is closing or removed: the PR is open again.
    pub fn revives(self) -> bool {
        matches!(self, Trigger::Opened | Trigger::Reopened | Trigger::OptIn)
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a person asked for (by `/draft` comment, the API, the CLI or the dashboard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    Rerun,
    /// Move the stand's expiry; `None` means the configured default extension.
    Extend {
        #[serde(with = "humantime_serde")]
        by: Option<Duration>,
    },
    Destroy,
    /// Scale a sleeping stand back.
    Wake,
    /// Run a fork's commit that waits for approval (`forks = "approve"`); `commit` pins which one,
    /// so a push made while the maintainer reviewed is not approved unseen.
    Approve {
        commit: Option<super::ShaPrefix>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `as_str` is what serde writes and what the columns' check constraints allow.
    #[test]
    fn as_str_is_the_serialised_name() {
        let json = |v: serde_json::Value| v.as_str().unwrap().to_owned();
        for k in RunKind::ALL {
            assert_eq!(json(serde_json::to_value(k).unwrap()), k.as_str());
            assert!(!k.plan().is_empty(), "{k} runs no steps");
        }
        use RunState::*;
        for s in [Queued, Running, Succeeded, Failed, Superseded, Cancelled, Rejected] {
            assert_eq!(json(serde_json::to_value(s).unwrap()), s.as_str());
        }
        use StepState as S;
        for s in [S::Pending, S::Running, S::Succeeded, S::Failed, S::Skipped, S::Cancelled] {
            assert_eq!(json(serde_json::to_value(s).unwrap()), s.as_str());
        }
        assert_eq!(json(serde_json::to_value(Trigger::ReadyForReview).unwrap()), "ready_for_review");
    }
}
