//! The sticky comment on a merge request (a note): found by its marker among the notes, oldest
//! first, 100 a page, stopping at the page that holds it; then edited, or posted when there is none.
//! GitLab's own system notes are never taken for it.

use ::gitlab::AsyncGitlab;
use ::gitlab::api::AsyncQuery;
use ::gitlab::api::common::SortOrder;
use ::gitlab::api::projects::merge_requests::notes::{
    CreateMergeRequestNote, EditMergeRequestNote, MergeRequestNotes, NoteOrderBy,
};

use super::client::{FORGE, GitlabClient, PER_PAGE};
use super::wire::Note;
use crate::forge::client::model::{CommentRef, ForgeError, within};

impl GitlabClient {
    /// [`crate::forge::client::ForgeClient::upsert_sticky_comment`]: the note holding `marker`
    /// edited, or a new one.
    pub(super) async fn upsert_note(
        &self,
        repo: &str,
        number: u64,
        marker: &str,
        body: &str,
    ) -> Result<CommentRef, ForgeError> {
        let repo = self.repo(repo)?;
        within(FORGE, "upsert note", self.timeout, async {
            let api = self.api().await?;
            if let Some(id) = self.find(api, repo, number, marker).await? {
                return self.put(api, repo, number, id, body).await;
            }
            self.create_note(api, repo, number, body).await
        })
        .await
    }

    pub(super) async fn edit_note(
        &self,
        repo: &str,
        number: u64,
        comment_id: u64,
        body: &str,
    ) -> Result<CommentRef, ForgeError> {
        let repo = self.repo(repo)?;
        within(FORGE, "edit note", self.timeout, async {
            let api = self.api().await?;
            self.put(api, repo, number, comment_id, body).await
        })
        .await
    }

    pub(super) async fn post_note(&self, repo: &str, number: u64, body: &str) -> Result<CommentRef, ForgeError> {
        let repo = self.repo(repo)?;
        within(FORGE, "create note", self.timeout, async {
            let api = self.api().await?;
            self.create_note(api, repo, number, body).await
        })
        .await
    }

    async fn find(&self, api: &AsyncGitlab, repo: &str, iid: u64, marker: &str) -> Result<Option<u64>, ForgeError> {
        let op = "list notes";
        for page in 1.. {
            let inner = MergeRequestNotes::builder()
                .project(repo)
                .merge_request(iid)
                .order_by(NoteOrderBy::CreatedAt)
                .sort(SortOrder::Ascending)
                .build()
                .map_err(|e| self.invalid(op, &e))?;
            let notes: Vec<Note> = self.page(api, op, inner, page).await?;
            if let Some(n) = notes.iter().find(|n| !n.system && n.body.contains(marker)) {
                return Ok(Some(n.id));
            }
            if (notes.len() as u64) < PER_PAGE {
                break;
            }
        }
        Ok(None)
    }

    async fn put(
        &self,
        api: &AsyncGitlab,
        repo: &str,
        iid: u64,
        note: u64,
        body: &str,
    ) -> Result<CommentRef, ForgeError> {
        let op = "edit note";
        let endpoint = EditMergeRequestNote::builder()
            .project(repo)
            .merge_request(iid)
            .note(note)
            .body(body)
            .build()
            .map_err(|e| self.invalid(op, &e))?;
        let n: Note = endpoint.query_async(api).await.map_err(|e| self.api_error(op, e))?;
        Ok(CommentRef { id: n.id, created: false })
    }

    async fn create_note(&self, api: &AsyncGitlab, repo: &str, iid: u64, body: &str) -> Result<CommentRef, ForgeError> {
        let op = "create note";
        let endpoint = CreateMergeRequestNote::builder()
            .project(repo)
            .merge_request(iid)
            .body(body)
            .build()
            .map_err(|e| self.invalid(op, &e))?;
        let n: Note = endpoint.query_async(api).await.map_err(|e| self.api_error(op, e))?;
        Ok(CommentRef { id: n.id, created: true })
    }
}
