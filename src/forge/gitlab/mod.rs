//! GitLab: the client draftd reports through (the `gitlab` crate), with a personal, project or group
//! access token, and the webhook payloads it receives (`X-Gitlab-Event`), normalised to [`Event`]s.
//!
//! The client keeps merge request notes, commit statuses, environments and labels, reads members'
//! access and the merge requests resync compares with its stands. Notes are listed a page at a time
//! (oldest first, 100 per page) so listing stops at the page holding the marker; open merge
//! requests are read the same way, every page, and any page that fails fails the whole listing.
//!
//! The `draftd` check is a commit status; the stand is an environment `draft/<branch>` with its
//! URL as external URL and its branch in the description, stopped at teardown. Access is checked
//! with the member API (`members/all`, so inherited group membership counts).
//!
//! [`Event`]: crate::forge::Event

/// Members' access levels: who may act through the forge.
mod access;
/// Deploy tokens: a build's read-only access to the project.
mod auth;
/// The client's state, sign-in, calls and their errors, rate limits.
mod client;
/// The stand as an environment.
mod environments;
/// Labels on the merge request.
mod labels;
/// Open merge requests and one by iid, for resync.
mod merge_requests;
/// The sticky comment, a merge request note.
mod notes;
/// The `draftd` check, a commit status.
mod statuses;
/// Webhook payloads to events.
mod webhook;
/// GitLab's answers, the fields read.
mod wire;

pub use client::GitlabClient;
pub use webhook::{ProjectOnly, ProjectRef, normalise};

use crate::forge::client::model::{
    CheckReport, CommentRef, EnvironmentRef, EnvironmentReport, ForgeClient, ForgeError, ForgeUser, Permission,
    PullRequestInfo,
};

impl ForgeClient for GitlabClient {
    async fn upsert_sticky_comment(
        &self,
        repo: &str,
        number: u64,
        marker: &str,
        body: &str,
    ) -> Result<CommentRef, ForgeError> {
        self.upsert_note(repo, number, marker, body).await
    }

    async fn edit_comment(
        &self,
        repo: &str,
        number: u64,
        comment_id: u64,
        body: &str,
    ) -> Result<CommentRef, ForgeError> {
        self.edit_note(repo, number, comment_id, body).await
    }

    async fn post_comment(&self, repo: &str, number: u64, body: &str) -> Result<CommentRef, ForgeError> {
        self.post_note(repo, number, body).await
    }

    async fn report_check(
        &self,
        repo: &str,
        check: &CheckReport,
        _previous: Option<u64>,
    ) -> Result<Option<u64>, ForgeError> {
        self.set_commit_status(repo, check).await
    }

    async fn report_environment(
        &self,
        repo: &str,
        env: &EnvironmentReport,
        previous: Option<&EnvironmentRef>,
    ) -> Result<Option<EnvironmentRef>, ForgeError> {
        self.set_environment(repo, env, previous).await
    }

    async fn set_label(&self, repo: &str, number: u64, label: &str, present: bool) -> Result<(), ForgeError> {
        self.set_merge_request_label(repo, number, label, present).await
    }

    async fn permission(&self, repo: &str, user: ForgeUser<'_>) -> Result<Permission, ForgeError> {
        self.member_permission(repo, user).await
    }

    async fn open_pull_requests(&self, repo: &str) -> Result<Vec<PullRequestInfo>, ForgeError> {
        self.list_open_merge_requests(repo).await
    }

    async fn pull_request(&self, repo: &str, number: u64) -> Result<PullRequestInfo, ForgeError> {
        self.read_merge_request(repo, number).await
    }
}
