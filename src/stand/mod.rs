//! Stands: the draft environment of one (project, branch).

mod address;
mod event;
mod failure;
mod naming;
mod run;
mod steps;

pub use address::{stand_host, stand_url};
pub use event::{Event, PullRequest};
pub use failure::Failure;
pub use naming::{BranchName, CommitSha, GitlabEnvironmentName, NameError, Namespace, ProjectName, is_dns_label, slug};
pub use run::{Command, RunKind, RunState, StepState, Trigger};
pub use steps::StepName;

use serde::{Deserialize, Serialize};

/// Where a stand is in its life. Intake only moves stands between these; workers do the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, clap::ValueEnum)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum StandState {
    /// Deploys are accepted.
    Active,
    /// A teardown was asked for; deploy events are recorded but never queue, until a reopen.
    Closing,
    /// Gone (or never built); kept as a tombstone so a late webhook cannot recreate it.
    Removed,
}

impl StandState {
    pub const ALL: [StandState; 3] = [StandState::Active, StandState::Closing, StandState::Removed];

    pub fn as_str(self) -> &'static str {
        match self {
            StandState::Active => "active",
            StandState::Closing => "closing",
            StandState::Removed => "removed",
        }
    }
}

impl std::fmt::Display for StandState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
