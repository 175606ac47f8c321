//! GitHub's answers as the client reads them: small structs of the fields used, so a change in
//! GitHub's user or repository objects cannot break reporting.

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub(super) struct IssueComment {
    pub(super) id: u64,
    #[serde(default)]
    pub(super) body: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WithId {
    pub(super) id: u64,
}

/// One status of a deployment, as `GET …/deployments/{id}/statuses` lists them (newest first).
#[derive(Debug, Deserialize)]
pub(super) struct DeploymentState {
    pub(super) state: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct AccessToken {
    pub(super) token: SecretString,
    pub(super) expires_at: DateTime<Utc>,
}

/// A pull request as `GET …/pulls` (the "simple" form) and `GET …/pulls/{number}` show it.
#[derive(Debug, Deserialize)]
pub(super) struct PullRequest {
    pub(super) number: u64,
    /// `open` or `closed`.
    pub(super) state: String,
    /// Only in the single-PR answer; `merged_at` says the same in both.
    #[serde(default)]
    pub(super) merged: Option<bool>,
    #[serde(default)]
    pub(super) merged_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub(super) draft: Option<bool>,
    pub(super) updated_at: DateTime<Utc>,
    pub(super) head: PullRequestEnd,
    pub(super) base: PullRequestEnd,
    #[serde(default)]
    pub(super) labels: Vec<PullRequestLabel>,
}

#[derive(Debug, Deserialize)]
pub(super) struct PullRequestEnd {
    #[serde(rename = "ref")]
    pub(super) branch: String,
    pub(super) sha: String,
    /// `null` when the fork the PR came from was deleted.
    #[serde(default)]
    pub(super) repo: Option<RepoName>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RepoName {
    pub(super) full_name: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct PullRequestLabel {
    pub(super) name: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct CollaboratorPermission {
    pub(super) permission: String,
    #[serde(default)]
    pub(super) role_name: Option<String>,
}
