//! Why a run was queued and what a person asked for: the domain's words, shared by intake, the
//! store, the API and the pipeline. Parsing them from a forge's comment stays in `forge`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a run was queued; stored with the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
        }
    }

    /// Triggers that may bring back a stand that is closing or removed: the PR is open again.
    pub fn revives(self) -> bool {
        matches!(self, Trigger::Opened | Trigger::Reopened | Trigger::OptIn)
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
}
