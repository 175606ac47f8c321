//! Forges (GitHub, GitLab): webhook payloads normalised to one [`Event`].
//!
//! Normalisation is pure: payload bytes and a project's settings in, an event out. Filters that decide
//! whether a delivery can act at all (branch globs, forks, drafts, the opt-out label) live here too, so
//! the store only sees events that matter and the HTTP layer only verifies and records.

/// Reporting back: the `ForgeClient` trait, its DTOs, and [`client::AnyForge`] over both clients.
pub mod client;
pub mod command;
/// GitHub: the client (octocrab; App auth, wire types) and webhook parsing.
pub mod github;
/// GitLab: the client (the `gitlab` crate; deploy tokens, wire types) and webhook parsing.
pub mod gitlab;
/// Signing people in with their forge (OAuth with PKCE), and whether they can read a repository.
pub mod signin;

use chrono::{DateTime, Utc};

pub use command::{Command, CommandError};
// The domain's words now (the store records them), kept here for the paths that name them by forge.
pub use crate::stand::{Event, PullRequest, Trigger};

use crate::config::{ForkPolicy, Project};
use crate::stand::{BranchName, CommitSha};

/// The name of draftd's check run; re-run requests for any other check are not ours.
pub const CHECK_NAME: &str = "draftd";
/// The identifier of the check run's Re-run button (a GitHub requested action).
pub const RERUN_ACTION: &str = "rerun";

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
    /// Branches outside the project's globs never get a stand, whatever the action; nor do forks
    /// under `forks = "deny"` (under `approve`, intake holds their commits for approval).
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

/// Turns a `/draft …` comment into a command event, or says why it is ignored. An approval that
/// cannot be acted on is answered in `repo` (the maintainer waits for a stand otherwise).
pub(crate) fn command_event(
    repo: &str,
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
            answer_in: matches!(command, Command::Approve { .. }).then(|| repo.to_owned()),
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
