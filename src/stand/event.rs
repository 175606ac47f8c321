//! What a forge delivery asks of draftd, once normalised: the one [`Event`] that intake records
//! and acts on. Here, below the store, because the store records events and must not reach up to
//! the forge adapters that parse them (forge/ builds them from payloads).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{BranchName, Command, CommitSha, Trigger};

/// What a delivery asks of draftd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// Build or update the stand of a PR at its head commit.
    Deploy { pr: PullRequest, trigger: Trigger },
    /// Remove the stand of a PR.
    Teardown { pr: PullRequest, trigger: Trigger },
    /// A person asked for something by comment or button; authorised later, before anything acts.
    Command {
        /// `None` for a check run or suite of a fork's pull request: GitHub leaves their
        /// `pull_requests` empty, and the stand is found by commit instead.
        pr_number: Option<u64>,
        /// Known for check-run buttons; comments carry only the PR number.
        branch: Option<BranchName>,
        /// Check-run and check-suite re-runs: the commit whose check was asked to run again.
        sha: Option<CommitSha>,
        /// The project's repository, for a reply when the request cannot be acted on (check-run
        /// buttons and re-runs, which otherwise leave the person's check waiting with no word).
        #[serde(skip_serializing_if = "Option::is_none")]
        answer_in: Option<String>,
        command: Command,
        author: String,
        /// The forge's numeric id of the author (GitLab's member API takes it).
        author_id: Option<u64>,
    },
    /// Recorded for audit, acted on never.
    Ignored { reason: String },
}

impl Event {
    pub fn ignored(reason: impl Into<String>) -> Self {
        Event::Ignored { reason: reason.into() }
    }

    /// The event as Postgres can store it: text there cannot hold NUL, and a verified delivery is
    /// recorded rather than refused, so the forge has nothing to retry. Branches and commits are
    /// refused NUL by their types; a reason quoting the payload gets it escaped; a command whose
    /// author holds NUL (no forge login does) is recorded as ignored.
    pub fn into_storable(self) -> Self {
        match self {
            Event::Ignored { reason } if reason.contains('\0') => Event::ignored(reason.replace('\0', "\\0")),
            Event::Command { author, .. } if author.contains('\0') => {
                Event::ignored("the command's author holds a NUL character, which no forge login has")
            }
            other => other,
        }
    }
}

/// The parts of a PR/MR that draftd acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequest {
    /// GitHub PR number; GitLab MR iid.
    pub number: u64,
    pub branch: BranchName,
    pub sha: CommitSha,
    /// The payload's own update time: orders events that arrive out of order.
    pub updated_at: DateTime<Utc>,
    /// From a fork (`forks = "allow"`): its stand gets no secrets or logins, and it never shares a
    /// stand with the repository's own branch of the same name.
    #[serde(default)]
    pub fork: bool,
}
