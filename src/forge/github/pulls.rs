//! Pull requests as resync compares them with its stands: the open ones, every page following the
//! `Link` header's `next` as GitHub recommends (any page that fails fails the whole listing), and
//! one by number.

use http::Method;

use super::client::{FORGE, GithubClient, PER_PAGE};
use super::wire::PullRequest;
use crate::forge::client::model::{ForgeError, PullRequestInfo, PullRequestState, within};

impl PullRequest {
    fn info(self, op: &'static str) -> Result<PullRequestInfo, ForgeError> {
        let state = match self.state.as_str() {
            "open" => PullRequestState::Open,
            "closed" if self.merged == Some(true) || self.merged_at.is_some() => PullRequestState::Merged,
            "closed" => PullRequestState::Closed,
            other => {
                return Err(ForgeError::Response {
                    forge: FORGE,
                    operation: op,
                    message: format!("pull request {} has state {other:?}", self.number),
                });
            }
        };
        // GitHub names repositories case-insensitively; a deleted fork leaves no head repo.
        let fork = match (&self.head.repo, &self.base.repo) {
            (Some(head), Some(base)) => !head.full_name.eq_ignore_ascii_case(&base.full_name),
            _ => true,
        };
        Ok(PullRequestInfo {
            number: self.number,
            state,
            branch: self.head.branch,
            sha: self.head.sha,
            updated_at: self.updated_at,
            fork,
            draft: self.draft.unwrap_or(false),
            labels: self.labels.into_iter().map(|l| l.name).collect(),
        })
    }
}

impl GithubClient {
    /// `GET /repos/{owner}/{repo}/pulls?state=open`, oldest first, 100 a page, following the
    /// `Link: <…>; rel="next"` header as GitHub recommends until an answer has none. Oldest first
    /// so a PR opened meanwhile lands on the last page instead of pushing one already read onto the
    /// next (read twice, kept once); a PR closed meanwhile can still hide one from this listing,
    /// which is why resync confirms with [`crate::forge::client::ForgeClient::pull_request`] before acting on an absence.
    pub(super) async fn list_open_pulls(&self, repo: &str) -> Result<Vec<PullRequestInfo>, ForgeError> {
        let prefix = self.repo_route(repo)?;
        let op = "list pull requests";
        within(FORGE, op, self.timeout, async {
            let mut all = Vec::new();
            let mut route =
                Some(format!("{prefix}/pulls?state=open&sort=created&direction=asc&per_page={PER_PAGE}&page=1"));
            while let Some(r) = route {
                let answer = self.call(op, Method::GET, repo, &r, None).await?;
                let page: Vec<PullRequest> = self.json(op, &answer)?;
                for pr in page {
                    all.push(pr.info(op)?);
                }
                route = self.next_page(op, &answer)?;
            }
            all.sort_by_key(|p: &PullRequestInfo| p.number);
            all.dedup_by_key(|p| p.number);
            Ok(all)
        })
        .await
    }

    /// `GET /repos/{owner}/{repo}/pulls/{number}`: closed with `merged` (or `merged_at`) is merged.
    pub(super) async fn read_pull(&self, repo: &str, number: u64) -> Result<PullRequestInfo, ForgeError> {
        let prefix = self.repo_route(repo)?;
        let op = "read pull request";
        within(FORGE, op, self.timeout, async {
            let answer = self.call(op, Method::GET, repo, &format!("{prefix}/pulls/{number}"), None).await?;
            self.json::<PullRequest>(op, &answer)?.info(op)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn pull_request_states_forks_and_drafts() {
        let pr = |state: &str, extra: Value| {
            let mut v = json!({
                "number": 5, "state": state, "updated_at": "2026-11-20T09:00:00Z",
                "head": {"ref": "feature/a", "sha": "ab12", "repo": {"full_name": "Acme/Shop"}},
                "base": {"ref": "main", "sha": "cd34", "repo": {"full_name": "acme/shop"}},
                "labels": [{"name": "bug"}],
            });
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            serde_json::from_value::<PullRequest>(v).unwrap().info("x")
        };
        let open = pr("open", json!({"draft": true})).unwrap();
        assert_eq!((open.state, open.fork, open.draft), (PullRequestState::Open, false, true));
        assert_eq!(
            (open.branch.as_str(), open.sha.as_str(), open.labels),
            ("feature/a", "ab12", vec!["bug".to_owned()])
        );
        assert_eq!(pr("closed", json!({"merged": false, "merged_at": null})).unwrap().state, PullRequestState::Closed);
        assert_eq!(pr("closed", json!({"merged": true})).unwrap().state, PullRequestState::Merged);
        // The list's simple form has no `merged`: `merged_at` tells.
        assert_eq!(pr("closed", json!({"merged_at": "2026-11-21T10:00:00Z"})).unwrap().state, PullRequestState::Merged);
        let gone = pr("closed", json!({"head": {"ref": "x", "sha": "ef56", "repo": null}})).unwrap();
        assert!(gone.fork, "a deleted fork is a fork");
        let fork = pr("open", json!({"head": {"ref": "x", "sha": "ef56", "repo": {"full_name": "mallory/shop"}}}));
        assert!(fork.unwrap().fork);
        assert!(pr("draft", json!({})).is_err());
    }
}
