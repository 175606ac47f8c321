//! Merge requests as resync compares them with its stands: the open ones (opened, then locked: an
//! MR being merged still counts as open), every page, any page that fails failing the whole
//! listing; and one by iid.

use std::collections::BTreeMap;

use ::gitlab::AsyncGitlab;
use ::gitlab::api::AsyncQuery;
use ::gitlab::api::common::SortOrder;
use ::gitlab::api::projects::merge_requests::{MergeRequest, MergeRequestOrderBy, MergeRequestState, MergeRequests};

use super::client::{FORGE, GitlabClient, PER_PAGE};
use super::wire::GitlabMergeRequest;
use crate::forge::client::model::{ForgeError, PullRequestInfo, PullRequestState, within};

impl GitlabMergeRequest {
    fn info(self, op: &'static str) -> Result<PullRequestInfo, ForgeError> {
        let state = match self.state.as_str() {
            "opened" | "locked" => PullRequestState::Open,
            "closed" => PullRequestState::Closed,
            "merged" => PullRequestState::Merged,
            other => {
                return Err(ForgeError::Response {
                    forge: FORGE,
                    operation: op,
                    message: format!("merge request !{} has state {other:?}", self.iid),
                });
            }
        };
        Ok(PullRequestInfo {
            number: self.iid,
            state,
            branch: self.source_branch,
            sha: self.sha.unwrap_or_default(),
            updated_at: self.updated_at,
            // A deleted source project leaves no id: it was not the target.
            fork: self.source_project_id != Some(self.target_project_id),
            draft: self.draft.or(self.work_in_progress).unwrap_or(false),
            labels: self.labels,
        })
    }
}

impl GitlabClient {
    /// `GET /projects/:id/merge_requests?state=opened`, then `state=locked` (an MR being merged
    /// still counts as open), each oldest first, 100 a page, until a page comes back short. Oldest
    /// first so an MR opened meanwhile lands on the last page; one closed meanwhile can still hide
    /// another from this listing, which is why resync confirms an absence with
    /// [`crate::forge::client::ForgeClient::pull_request`].
    pub(super) async fn list_open_merge_requests(&self, repo: &str) -> Result<Vec<PullRequestInfo>, ForgeError> {
        let repo = self.repo(repo)?;
        let op = "list merge requests";
        within(FORGE, op, self.timeout, async {
            let api = self.api().await?;
            let mut all = BTreeMap::new();
            // Opened first: an MR that turns locked between the two listings is in one of them.
            for state in [MergeRequestState::Opened, MergeRequestState::Locked] {
                self.merge_requests(api, op, repo, state, &mut all).await?;
            }
            Ok(all.into_values().collect())
        })
        .await
    }

    /// `GET /projects/:id/merge_requests/:iid`.
    pub(super) async fn read_merge_request(&self, repo: &str, number: u64) -> Result<PullRequestInfo, ForgeError> {
        let repo = self.repo(repo)?;
        let op = "read merge request";
        within(FORGE, op, self.timeout, async {
            let api = self.api().await?;
            let endpoint = MergeRequest::builder()
                .project(repo)
                .merge_request(number)
                .build()
                .map_err(|e| self.invalid(op, &e))?;
            let mr: GitlabMergeRequest = endpoint.query_async(api).await.map_err(|e| self.api_error(op, e))?;
            mr.info(op)
        })
        .await
    }

    /// Every MR of `repo` in `state`, oldest first, page after page until a short one.
    async fn merge_requests(
        &self,
        api: &AsyncGitlab,
        op: &'static str,
        repo: &str,
        state: MergeRequestState,
        into: &mut BTreeMap<u64, PullRequestInfo>,
    ) -> Result<(), ForgeError> {
        let endpoint = MergeRequests::builder()
            .project(repo)
            .state(state)
            .order_by(MergeRequestOrderBy::CreatedAt)
            .sort(SortOrder::Ascending)
            .build()
            .map_err(|e| self.invalid(op, &e))?;
        for page in 1.. {
            let mrs: Vec<GitlabMergeRequest> = self.page(api, op, endpoint.clone(), page).await?;
            let last = (mrs.len() as u64) < PER_PAGE;
            for mr in mrs {
                // Read twice when an MR opened meanwhile pushed it onto the next page: kept once.
                into.entry(mr.iid).or_insert(mr.info(op)?);
            }
            if last {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_request_states_forks_and_drafts() {
        let mr = |state: &str, extra: serde_json::Value| {
            let mut v = serde_json::json!({
                "iid": 9, "state": state, "source_branch": "feature/a", "sha": "ab12",
                "updated_at": "2026-11-20T09:00:00.123Z", "source_project_id": 3, "target_project_id": 3,
                "labels": ["bug"],
            });
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            serde_json::from_value::<GitlabMergeRequest>(v).unwrap().info("x")
        };
        let open = mr("opened", serde_json::json!({"draft": true})).unwrap();
        assert_eq!((open.number, open.state, open.fork, open.draft), (9, PullRequestState::Open, false, true));
        assert_eq!(mr("locked", serde_json::json!({})).unwrap().state, PullRequestState::Open);
        assert_eq!(mr("closed", serde_json::json!({})).unwrap().state, PullRequestState::Closed);
        assert_eq!(mr("merged", serde_json::json!({})).unwrap().state, PullRequestState::Merged);
        // Before `draft`, GitLab called it `work_in_progress`.
        assert!(mr("opened", serde_json::json!({"work_in_progress": true})).unwrap().draft);
        assert!(mr("opened", serde_json::json!({"source_project_id": 4})).unwrap().fork);
        assert!(mr("opened", serde_json::json!({"source_project_id": null})).unwrap().fork);
        assert!(mr("reopened", serde_json::json!({})).is_err());
    }
}
