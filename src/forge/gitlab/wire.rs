//! GitLab's answers as the client reads them: the fields used, each defaulted where GitLab may
//! leave it out.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub(super) struct WithId {
    pub(super) id: u64,
}

#[derive(Debug, Deserialize)]
pub(super) struct GitlabEnvironment {
    pub(super) id: u64,
    pub(super) name: String,
    #[serde(default)]
    pub(super) state: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct Member {
    #[serde(default)]
    pub(super) username: String,
    pub(super) access_level: u64,
}

#[derive(Debug, Deserialize)]
pub(super) struct Note {
    pub(super) id: u64,
    #[serde(default)]
    pub(super) body: String,
    /// System notes ("added 1 commit") are GitLab's own; never ours.
    #[serde(default)]
    pub(super) system: bool,
}

/// A merge request as `GET /projects/:id/merge_requests[/:iid]` shows it.
#[derive(Debug, Deserialize)]
pub(super) struct GitlabMergeRequest {
    pub(super) iid: u64,
    /// `opened`, `closed`, `locked` (being merged) or `merged`.
    pub(super) state: String,
    pub(super) source_branch: String,
    /// The source branch's head; `null` while GitLab has no diff for the MR.
    #[serde(default)]
    pub(super) sha: Option<String>,
    pub(super) updated_at: chrono::DateTime<chrono::Utc>,
    #[serde(default)]
    pub(super) source_project_id: Option<u64>,
    pub(super) target_project_id: u64,
    #[serde(default)]
    pub(super) draft: Option<bool>,
    /// What `draft` was called before GitLab 13.x; still sent, deprecated.
    #[serde(default)]
    pub(super) work_in_progress: Option<bool>,
    /// Names (the default; `with_labels_details` would make them objects).
    #[serde(default)]
    pub(super) labels: Vec<String>,
}
