//! The sticky comment on a pull request (an issue comment): found by its marker, a page of 100 at a
//! time until the page holding it (or a short page), then edited; posted when there is none.

use http::Method;
use serde_json::json;

use super::client::{FORGE, GithubClient, PER_PAGE};
use super::wire::{IssueComment, WithId};
use crate::forge::client::model::{CommentRef, ForgeError, within};

impl GithubClient {
    /// [`crate::forge::client::ForgeClient::upsert_sticky_comment`]: the comment holding `marker`
    /// edited, or a new one.
    pub(super) async fn upsert_issue_comment(
        &self,
        repo: &str,
        number: u64,
        marker: &str,
        body: &str,
    ) -> Result<CommentRef, ForgeError> {
        let prefix = self.repo_route(repo)?;
        within(FORGE, "upsert comment", self.timeout, async {
            if let Some(id) = self.find(repo, &prefix, number, marker).await? {
                return self.patch(repo, &prefix, id, body).await;
            }
            self.create_comment(repo, &prefix, number, body).await
        })
        .await
    }

    /// [`crate::forge::client::ForgeClient::edit_comment`]: the comment `comment_id`, by its id.
    pub(super) async fn edit_issue_comment(
        &self,
        repo: &str,
        comment_id: u64,
        body: &str,
    ) -> Result<CommentRef, ForgeError> {
        let prefix = self.repo_route(repo)?;
        within(FORGE, "edit comment", self.timeout, self.patch(repo, &prefix, comment_id, body)).await
    }

    /// [`crate::forge::client::ForgeClient::post_comment`]: a new comment on the pull request.
    pub(super) async fn post_issue_comment(
        &self,
        repo: &str,
        number: u64,
        body: &str,
    ) -> Result<CommentRef, ForgeError> {
        let prefix = self.repo_route(repo)?;
        within(FORGE, "create comment", self.timeout, self.create_comment(repo, &prefix, number, body)).await
    }

    async fn find(&self, repo: &str, prefix: &str, number: u64, marker: &str) -> Result<Option<u64>, ForgeError> {
        for page in 1.. {
            let route = format!("{prefix}/issues/{number}/comments?per_page={PER_PAGE}&page={page}");
            let answer = self.call("list comments", Method::GET, repo, &route, None).await?;
            let comments: Vec<IssueComment> = self.json("list comments", &answer)?;
            if let Some(c) = comments.iter().find(|c| c.body.as_deref().is_some_and(|b| b.contains(marker))) {
                return Ok(Some(c.id));
            }
            if comments.len() < PER_PAGE {
                break;
            }
        }
        Ok(None)
    }

    async fn patch(&self, repo: &str, prefix: &str, comment_id: u64, body: &str) -> Result<CommentRef, ForgeError> {
        let op = "edit comment";
        let route = format!("{prefix}/issues/comments/{comment_id}");
        let answer = self.call(op, Method::PATCH, repo, &route, Some(&json!({ "body": body }))).await?;
        Ok(CommentRef { id: self.json::<WithId>(op, &answer)?.id, created: false })
    }

    async fn create_comment(
        &self,
        repo: &str,
        prefix: &str,
        number: u64,
        body: &str,
    ) -> Result<CommentRef, ForgeError> {
        let op = "create comment";
        let route = format!("{prefix}/issues/{number}/comments");
        let answer = self.call(op, Method::POST, repo, &route, Some(&json!({ "body": body }))).await?;
        Ok(CommentRef { id: self.json::<WithId>(op, &answer)?.id, created: true })
    }
}
