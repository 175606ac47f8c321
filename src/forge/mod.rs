//! Forges (GitHub, GitLab): webhook payloads normalised to one [`Event`].
//!
//! Normalisation is pure: payload bytes and a project's settings in, an event out. Filters that decide
//! whether a delivery can act at all (branch globs, forks, drafts, the opt-out label) live here too, so
//! the store only sees events that matter and the HTTP layer only verifies and records.

/// Who may act through the forge: write access, checked per command, audited.
pub mod authorise;
/// Reporting back: the `ForgeClient` trait, its DTOs, and [`client::AnyForge`] over both clients.
pub mod client;
pub mod command;
/// GitHub: the client (octocrab; App auth, wire types) and webhook parsing.
pub mod github;
/// GitLab: the client (the `gitlab` crate; deploy tokens, wire types) and webhook parsing.
pub mod gitlab;
/// Checks, environments and labels: what a run's state says on the forge besides the comment.
pub mod publish;
/// The sticky comment's Markdown, rendered from a stand, its newest run and its steps.
pub mod report;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use command::{Command, CommandError};

use crate::config::{ForkPolicy, Project};
use crate::stand::{BranchName, CommitSha};

/// The name of draftd's check run; re-run requests for any other check are not ours.
pub const CHECK_NAME: &str = "draftd";
/// The identifier of the check run's Re-run button (a GitHub requested action).
pub const RERUN_ACTION: &str = "rerun";

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

/// A payload that is not JSON or not of the documented shape; `field` is the dotted path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct PayloadError {
    pub field: String,
    pub message: String,
}

impl PayloadError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Deserialises `body` as `T`, naming the offending field on failure.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, PayloadError> {
    // Tracking the path costs on every field; only a payload that fails needs it.
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value =
        serde_path_to_error::deserialize(&mut de).map_err(|e: serde_path_to_error::Error<serde_json::Error>| {
            let field = e.path().to_string();
            let field = if field == "." { "(body)".to_string() } else { field };
            PayloadError::new(field, e.inner().to_string())
        })?;
    // A body that is a whole payload followed by more (found by fuzzing): refused like any bad body,
    // as the strict parse above does.
    de.end().map_err(|e| PayloadError::new("(body)", e.to_string()))?;
    Ok(value)
}

pub(crate) fn branch(field: &str, name: &str) -> Result<BranchName, PayloadError> {
    BranchName::new(name).map_err(|e| PayloadError::new(field, e.to_string()))
}

pub(crate) fn sha(field: &str, sha: &str) -> Result<CommitSha, PayloadError> {
    CommitSha::new(sha).map_err(|e| PayloadError::new(field, e.to_string()))
}

/// The filters shared by both forges, applied to a PR event before it may act.
pub(crate) struct Gate<'a> {
    pub project: &'a Project,
}

// The `Err` is the delivery's one event, made once and returned as it is: boxing it would only move it.
#[allow(clippy::result_large_err)]
impl Gate<'_> {
    /// Forks and branches outside the project's globs never get a stand, whatever the action.
    pub fn admits(&self, branch: &BranchName, fork: bool) -> Result<(), Event> {
        if fork && self.project.settings.forks == ForkPolicy::Deny {
            return Err(Event::ignored("fork"));
        }
        if !self.project.branches.is_match(branch.as_str()) {
            return Err(Event::ignored(format!(
                "branch {:?} matches none of {:?}",
                branch.as_str(),
                self.project.settings.branches
            )));
        }
        Ok(())
    }

    /// A deploy is held back by the opt-out label and, unless the project says otherwise, by draft status.
    pub fn may_deploy<'l>(&self, draft: bool, mut labels: impl Iterator<Item = &'l str>) -> Result<(), Event> {
        let opt_out = &self.project.settings.opt_out_label;
        if labels.any(|l| l == opt_out) {
            return Err(Event::ignored(format!("opted out with label {opt_out:?}")));
        }
        if draft && self.project.settings.skip_draft {
            return Err(Event::ignored("draft"));
        }
        Ok(())
    }
}

/// Turns a `/draft …` comment into a command event, or says why it is ignored.
pub(crate) fn command_event(
    body: &str,
    pr_number: u64,
    branch: Option<BranchName>,
    sha: Option<CommitSha>,
    author: &str,
    author_id: Option<u64>,
) -> Event {
    match command::parse(body) {
        None => Event::ignored("comment is not a /draft command"),
        Some(Err(e)) => Event::ignored(e.to_string()),
        Some(Ok(command)) => Event::Command {
            pr_number: Some(pr_number),
            branch,
            sha,
            answer_in: None,
            command,
            author: author.to_owned(),
            author_id,
        },
    }
}

/// GitLab sends RFC 3339 in newer versions and `2021-09-27 05:01:21 UTC` in older ones; GitHub RFC 3339.
pub fn parse_time(field: &str, s: &str) -> Result<DateTime<Utc>, PayloadError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S UTC") {
        return Ok(t.and_utc());
    }
    if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S %z") {
        return Ok(t.with_timezone(&Utc));
    }
    Err(PayloadError::new(field, format!("{s:?} is not a timestamp")))
}
