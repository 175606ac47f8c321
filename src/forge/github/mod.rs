//! GitHub: the client draftd reports through (octocrab), as a GitHub App (installation tokens) or
//! with a token, and the webhook payloads it receives (`X-GitHub-Event`), normalised to [`Event`]s.
//!
//! The client posts sticky comments, check runs (or commit statuses), deployments and labels, reads
//! collaborator permissions and the pull requests resync compares with its stands. Lists follow
//! pages differently: comments are read a page at a time until the one holding the marker (or a
//! short page); open pull requests follow the `Link` header's `next`, as GitHub recommends, and any
//! page that fails fails the whole listing.
//!
//! Check runs can only be created by GitHub Apps: with a token the `draftd` check is a commit status
//! instead, and re-runs are asked for with `/draft rerun`.
//!
//! [`Event`]: crate::forge::Event

/// Collaborator permissions: who may act through the forge.
mod access;
/// App authentication: the JWT, installation tokens, a build's read-only token.
mod auth;
/// The `draftd` check: a check run, or a commit status.
mod checks;
/// The client's state, its requests and answers, rate limits and redirects.
mod client;
/// The sticky comment.
mod comments;
/// The stand as a deployment in a transient environment.
mod deployments;
/// Labels on the pull request.
mod labels;
/// Open pull requests and one by number, for resync.
mod pulls;
/// Webhook payloads to events.
mod webhook;
/// GitHub's answers, the fields read.
mod wire;

pub use auth::AppCredentials;
pub use client::GithubClient;
pub use webhook::{Repo, RepositoryOnly, normalise};

use crate::forge::client::model::{
    CheckReport, CommentRef, EnvironmentRef, EnvironmentReport, ForgeClient, ForgeError, ForgeUser, Permission,
    PullRequestInfo,
};

impl ForgeClient for GithubClient {
    async fn upsert_sticky_comment(
        &self,
        repo: &str,
        number: u64,
        marker: &str,
        body: &str,
    ) -> Result<CommentRef, ForgeError> {
        self.upsert_issue_comment(repo, number, marker, body).await
    }

    async fn edit_comment(
        &self,
        repo: &str,
        _number: u64,
        comment_id: u64,
        body: &str,
    ) -> Result<CommentRef, ForgeError> {
        self.edit_issue_comment(repo, comment_id, body).await
    }

    async fn post_comment(&self, repo: &str, number: u64, body: &str) -> Result<CommentRef, ForgeError> {
        self.post_issue_comment(repo, number, body).await
    }

    async fn report_check(
        &self,
        repo: &str,
        check: &CheckReport,
        previous: Option<u64>,
    ) -> Result<Option<u64>, ForgeError> {
        self.set_check(repo, check, previous).await
    }

    async fn report_environment(
        &self,
        repo: &str,
        env: &EnvironmentReport,
        previous: Option<&EnvironmentRef>,
    ) -> Result<Option<EnvironmentRef>, ForgeError> {
        self.set_deployment(repo, env, previous).await
    }

    async fn set_label(&self, repo: &str, number: u64, label: &str, present: bool) -> Result<(), ForgeError> {
        self.set_issue_label(repo, number, label, present).await
    }

    async fn permission(&self, repo: &str, user: ForgeUser<'_>) -> Result<Permission, ForgeError> {
        self.collaborator_permission(repo, user).await
    }

    async fn open_pull_requests(&self, repo: &str) -> Result<Vec<PullRequestInfo>, ForgeError> {
        self.list_open_pulls(repo).await
    }

    async fn pull_request(&self, repo: &str, number: u64) -> Result<PullRequestInfo, ForgeError> {
        self.read_pull(repo, number).await
    }
}
