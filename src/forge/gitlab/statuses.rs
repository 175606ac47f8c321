//! The `draftd` check on GitLab: a commit status on the merge request's head commit, on its branch.

use ::gitlab::api::AsyncQuery;
use ::gitlab::api::projects::repository::commits::{CommitStatusState, CreateCommitStatus};

use super::client::{FORGE, GitlabClient};
use super::wire::WithId;
use crate::forge::CHECK_NAME;
use crate::forge::client::model::{CheckReport, CheckState, ForgeError, clip, within};

/// Commit status descriptions are short in GitLab's UI; the same bound as GitHub's.
const MAX_DESCRIPTION: usize = 140;

impl GitlabClient {
    /// [`crate::forge::client::ForgeClient::report_check`]; a status already in the state asked for
    /// is delivered already.
    pub(super) async fn set_commit_status(&self, repo: &str, check: &CheckReport) -> Result<Option<u64>, ForgeError> {
        let repo = self.repo(repo)?;
        let op = "set commit status";
        within(FORGE, op, self.timeout, async {
            let api = self.api().await?;
            let state = match check.state {
                CheckState::Queued => CommitStatusState::Pending,
                CheckState::InProgress => CommitStatusState::Running,
                CheckState::Success => CommitStatusState::Success,
                CheckState::Failure => CommitStatusState::Failed,
                CheckState::Cancelled => CommitStatusState::Canceled,
            };
            let description = clip(&check.title, MAX_DESCRIPTION);
            let mut builder = CreateCommitStatus::builder();
            builder.project(repo).commit(check.sha.as_str()).state(state).name(CHECK_NAME).description(description);
            if let Some(url) = &check.details_url {
                builder.target_url(url.as_str());
            }
            if let Some(branch) = &check.branch {
                builder.ref_(branch.as_str());
            }
            let endpoint = builder.build().map_err(|e| self.invalid(op, &e))?;
            let set: Result<WithId, _> = endpoint.query_async(api).await;
            match set.map_err(|e| self.api_error(op, e)) {
                Ok(s) => Ok(Some(s.id)),
                // GitLab refuses to set a status to the state it is in: delivered already.
                Err(e) if Self::is_transition_refusal(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    fn is_transition_refusal(e: &ForgeError) -> bool {
        matches!(e, ForgeError::Status { status: 400, message, .. } if message.contains("Cannot transition status"))
    }
}
