//! GitLab merge request notes, statuses, environments, labels, members and the merge requests
//! resync compares with its stands, through the `gitlab` crate's `api::` endpoints.
//!
//! The crate takes a host, not a URL: `[gitlab] url` `https://gitlab.example.com[/prefix]` becomes
//! host `gitlab.example.com[/prefix]`, and an `http://` URL (a local fake) switches the builder to
//! `.insecure()`. Building the async client checks the token with `GET /api/v4/user`; that happens
//! on first use, not at start, so draftd starts while GitLab is down. The token goes out as
//! `PRIVATE-TOKEN`. Notes are listed a page at a time (oldest first, 100 per page) with the crate's
//! plain query path rather than `api::paged`, so listing stops at the page holding the marker and a
//! 429 keeps its `Retry-After` (the crate's paged path drops it); open merge requests are read the
//! same way, every page, and any page that fails fails the whole listing.
//!
//! The `draftd` check is a commit status; the stand is an environment `draft/<branch>` with its
//! URL as external URL and its branch in the description, stopped at teardown (the crate has no
//! environment-writing endpoints, so those are the small [`Raw`] endpoint below, on the same
//! client). GitLab allows fewer characters in an environment's name than git does in a branch, so
//! the name is [`GitlabEnvironmentName`]'s: the same as before for every branch GitLab accepted.
//! Access is checked with the member API (`members/all`, so inherited group membership counts).
//!
//! Calls whose answer draftd does not read (label changes, DELETEs) go through [`GitlabClient::send`]
//! rather than the crate's `ignore()`, which turns a 429 into a plain error without its
//! `Retry-After`.

use std::collections::BTreeMap;
use std::time::Duration;

use ::gitlab::api::endpoint_prelude::{Cow, Endpoint, Method, QueryParams, UrlBase};
use std::sync::Arc;

use ::gitlab::api::endpoint_prelude::FormParams;
use ::gitlab::api::projects::environments::Environments;
use ::gitlab::api::projects::members::{AllProjectMember, AllProjectMembers};
use ::gitlab::api::projects::merge_requests::notes::{
    CreateMergeRequestNote, EditMergeRequestNote, MergeRequestNotes, NoteOrderBy,
};
use ::gitlab::api::projects::merge_requests::{
    EditMergeRequest, MergeRequest, MergeRequestOrderBy, MergeRequestState, MergeRequests,
};
use ::gitlab::api::projects::repository::commits::{CommitStatusState, CreateCommitStatus};
use ::gitlab::api::{ApiError, AsyncQuery, BodyError, common::SortOrder};
use ::gitlab::{AsyncGitlab, GitlabBuilder, GitlabError, RestError};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::model::{
    CheckReport, CheckState, CommentRef, EnvironmentRef, EnvironmentReport, EnvironmentState, ForgeClient, ForgeError,
    ForgeUser, Hold, Permission, PullRequestInfo, PullRequestState, Redactor, clip, within,
};
use crate::config::ForgeKind;
use crate::forge::CHECK_NAME;
use crate::stand::GitlabEnvironmentName;

const FORGE: ForgeKind = ForgeKind::Gitlab;
/// GitLab's maximum page size.
const PER_PAGE: u64 = 100;
/// Developer: may push, and so may ask for re-runs and teardowns.
const DEVELOPER: u64 = 30;
/// How long to hold off after a 429 that named no time.
const RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// Commit status descriptions are short in GitLab's UI; the same bound as GitHub's.
const MAX_DESCRIPTION: usize = 140;

#[derive(Debug, Deserialize)]
struct WithId {
    id: u64,
}

#[derive(Debug, Deserialize)]
struct GitlabEnvironment {
    id: u64,
    name: String,
    #[serde(default)]
    state: String,
}

#[derive(Debug, Deserialize)]
struct Member {
    #[serde(default)]
    username: String,
    access_level: u64,
}

#[derive(Debug, Deserialize)]
struct Note {
    id: u64,
    #[serde(default)]
    body: String,
    /// System notes ("added 1 commit") are GitLab's own; never ours.
    #[serde(default)]
    system: bool,
}

/// A merge request as `GET /projects/:id/merge_requests[/:iid]` shows it.
#[derive(Debug, Deserialize)]
struct GitlabMergeRequest {
    iid: u64,
    /// `opened`, `closed`, `locked` (being merged) or `merged`.
    state: String,
    source_branch: String,
    /// The source branch's head; `null` while GitLab has no diff for the MR.
    #[serde(default)]
    sha: Option<String>,
    updated_at: chrono::DateTime<chrono::Utc>,
    #[serde(default)]
    source_project_id: Option<u64>,
    target_project_id: u64,
    #[serde(default)]
    draft: Option<bool>,
    /// What `draft` was called before GitLab 13.x; still sent, deprecated.
    #[serde(default)]
    work_in_progress: Option<bool>,
    /// Names (the default; `with_labels_details` would make them objects).
    #[serde(default)]
    labels: Vec<String>,
}

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

/// GitLab.com or a self-managed instance, with a personal, project or group access token.
#[derive(Clone)]
pub struct GitlabClient {
    host: String,
    insecure: bool,
    token: SecretString,
    redact: Redactor,
    timeout: Duration,
    hold: Hold,
    /// Boxed: the client with its three URLs is large, and `AnyForge` holds either client inline.
    api: Arc<OnceCell<Box<AsyncGitlab>>>,
}

impl std::fmt::Debug for GitlabClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitlabClient")
            .field("host", &self.host)
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

/// One page of an endpoint's results, with the page parameters GitLab documents.
struct PageOf<E> {
    inner: E,
    page: u64,
}

impl<E: Endpoint> Endpoint for PageOf<E> {
    fn method(&self) -> Method {
        self.inner.method()
    }
    fn endpoint(&self) -> Cow<'static, str> {
        self.inner.endpoint()
    }
    fn url_base(&self) -> UrlBase {
        self.inner.url_base()
    }
    fn parameters(&self) -> QueryParams<'_> {
        let mut params = self.inner.parameters();
        params.push("per_page", PER_PAGE).push("page", self.page);
        params
    }
    fn body(&self) -> Result<Option<(&'static str, Vec<u8>)>, BodyError> {
        self.inner.body()
    }
}

/// An endpoint the crate lacks (environment create, edit, stop, delete): method, path under
/// `/api/v4`, form fields.
struct Raw {
    method: Method,
    path: String,
    form: Vec<(&'static str, String)>,
}

impl Endpoint for Raw {
    fn method(&self) -> Method {
        self.method.clone()
    }
    fn endpoint(&self) -> Cow<'static, str> {
        self.path.clone().into()
    }
    fn body(&self) -> Result<Option<(&'static str, Vec<u8>)>, BodyError> {
        if self.form.is_empty() {
            return Ok(None);
        }
        let mut params = FormParams::default();
        for (k, v) in &self.form {
            params.push(*k, v.as_str());
        }
        params.into_body()
    }
}

/// `group/project` as one path segment, the way GitLab wants project paths in URLs.
fn project_segment(repo: &str) -> String {
    ::gitlab::api::common::path_escaped(repo).to_string()
}

impl GitlabClient {
    /// `url` is `[gitlab] url`. Each call (with its pagination) is bounded by `timeout`.
    pub fn new(url: &str, token: &SecretString, timeout: Duration) -> Result<Self, ForgeError> {
        let (insecure, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (true, rest)
        } else {
            return Err(ForgeError::Invalid { forge: FORGE, message: format!("url {url:?} is not http(s)://host") });
        };
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains(['?', '#', '@']) {
            return Err(ForgeError::Invalid { forge: FORGE, message: format!("url {url:?} is not http(s)://host") });
        }
        Ok(Self {
            host: host.to_owned(),
            insecure,
            token: token.clone(),
            redact: Redactor::new(token),
            timeout,
            hold: Hold::default(),
            api: Arc::new(OnceCell::new()),
        })
    }

    async fn api(&self) -> Result<&AsyncGitlab, ForgeError> {
        self.hold.check(FORGE, "call")?;
        self.api
            .get_or_try_init(|| async {
                let mut builder = GitlabBuilder::new(self.host.as_str(), self.token.expose_secret());
                if self.insecure {
                    builder.insecure();
                }
                builder.user_agent(concat!("draftd/", env!("CARGO_PKG_VERSION")));
                builder.build_async().await.map(Box::new).map_err(|e| self.client_error("sign in", e))
            })
            .await
            .map(|api| &**api)
    }

    fn repo<'a>(&self, repo: &'a str) -> Result<&'a str, ForgeError> {
        if repo.is_empty() || repo.starts_with('/') || repo.ends_with('/') {
            return Err(ForgeError::Invalid { forge: FORGE, message: format!("repo {repo:?} is not a project path") });
        }
        Ok(repo)
    }

    /// Page `page` (1-based, [`PER_PAGE`] items) of a list endpoint.
    async fn page<E: Endpoint + Sync, T: serde::de::DeserializeOwned + 'static>(
        &self,
        api: &AsyncGitlab,
        op: &'static str,
        inner: E,
        page: u64,
    ) -> Result<Vec<T>, ForgeError> {
        PageOf { inner, page }.query_async(api).await.map_err(|e| self.api_error(op, e))
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

    /// The project's environment called `name`, if any (`name` filters exactly).
    async fn environment_named(
        &self,
        api: &AsyncGitlab,
        repo: &str,
        name: &GitlabEnvironmentName,
    ) -> Result<Option<GitlabEnvironment>, ForgeError> {
        let op = "find environment";
        let name = name.as_str();
        let endpoint = Environments::builder().project(repo).name(name).build().map_err(|e| self.invalid(op, &e))?;
        let found: Vec<GitlabEnvironment> = endpoint.query_async(api).await.map_err(|e| self.api_error(op, e))?;
        Ok(found.into_iter().find(|e| e.name == name))
    }

    /// A deploy token that can only read `repo` and expires within the hour, for a build to fetch the
    /// repository ("Create a project deploy token": scope `read_repository`, `expires_at` a
    /// timestamp). Needs the Maintainer role on the project. Returns `(id, username, token,
    /// expires_at)`; revoke it with [`Self::revoke_deploy_token`] once the build is over.
    pub async fn read_only_token(
        &self,
        repo: &str,
        name: &str,
    ) -> Result<(u64, String, SecretString, chrono::DateTime<chrono::Utc>), ForgeError> {
        #[derive(Deserialize)]
        struct DeployToken {
            id: u64,
            username: String,
            token: SecretString,
        }
        let api = self.api().await?;
        let op = "create deploy token";
        let expires = chrono::Utc::now() + chrono::Duration::hours(1);
        let form = vec![
            ("name", name.to_owned()),
            ("scopes[]", "read_repository".to_owned()),
            ("expires_at", expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        ];
        let path = format!("projects/{}/deploy_tokens", project_segment(repo));
        let made: DeployToken = self.raw(api, op, Method::POST, path, form).await?;
        self.redact.add(&made.token);
        Ok((made.id, made.username, made.token, expires))
    }

    /// Revokes a deploy token made by [`Self::read_only_token`]; one already gone is not an error.
    pub async fn revoke_deploy_token(&self, repo: &str, id: u64) -> Result<(), ForgeError> {
        let api = self.api().await?;
        let op = "revoke deploy token";
        let path = format!("projects/{}/deploy_tokens/{id}", project_segment(repo));
        match self.send(api, op, Raw { method: Method::DELETE, path, form: vec![] }).await {
            Err(e) if e.is_not_found() => Ok(()),
            done => done,
        }
    }

    /// A call whose answer is not read. The crate's own query path is used (not `ignore()`), so a
    /// 429 keeps its `Retry-After` and holds the client like any other call; a success with no JSON
    /// body (204 No Content) is the one "error" that path reports for it.
    async fn send<E: Endpoint + Sync>(
        &self,
        api: &AsyncGitlab,
        op: &'static str,
        endpoint: E,
    ) -> Result<(), ForgeError> {
        match AsyncQuery::<serde::de::IgnoredAny, _>::query_async(&endpoint, api).await {
            Ok(_) => Ok(()),
            Err(ApiError::GitlabService { status, .. }) if status.is_success() => Ok(()),
            Err(e) => Err(self.api_error(op, e)),
        }
    }

    async fn raw<T: serde::de::DeserializeOwned + 'static>(
        &self,
        api: &AsyncGitlab,
        op: &'static str,
        method: Method,
        path: String,
        form: Vec<(&'static str, String)>,
    ) -> Result<T, ForgeError> {
        Raw { method, path, form }.query_async(api).await.map_err(|e| self.api_error(op, e))
    }

    /// Creates the environment, or points an existing one at `url`. A stopped environment cannot be
    /// started through the API, so one left over from an earlier life of the stand is replaced.
    async fn upsert_environment(
        &self,
        api: &AsyncGitlab,
        repo: &str,
        env: &EnvironmentReport,
        previous: Option<&EnvironmentRef>,
    ) -> Result<u64, ForgeError> {
        let project = project_segment(repo);
        let name = GitlabEnvironmentName::new(&env.environment);
        let url = env.url.clone().unwrap_or_default();
        let description = environment_description(env);
        let known = previous.map(|p| p.id);
        let existing = match known {
            Some(id) => {
                let op = "read environment";
                match self
                    .raw::<GitlabEnvironment>(
                        api,
                        op,
                        Method::GET,
                        format!("projects/{project}/environments/{id}"),
                        vec![],
                    )
                    .await
                {
                    Ok(e) => Some(e),
                    Err(e) if e.is_not_found() => self.environment_named(api, repo, &name).await?,
                    Err(e) => return Err(e),
                }
            }
            None => self.environment_named(api, repo, &name).await?,
        };
        if let Some(e) = existing {
            if e.state != "stopped" {
                let op = "edit environment";
                let path = format!("projects/{project}/environments/{}", e.id);
                let form = vec![("external_url", url), ("description", description)];
                let edited: WithId = self.raw(api, op, Method::PUT, path, form).await?;
                return Ok(edited.id);
            }
            let op = "delete environment";
            let path = format!("projects/{project}/environments/{}", e.id);
            self.send(api, op, Raw { method: Method::DELETE, path, form: vec![] }).await?;
        }
        let op = "create environment";
        let form = vec![
            ("name", name.to_string()),
            ("external_url", url),
            ("tier", "development".to_owned()),
            ("description", description),
        ];
        let created: WithId = self.raw(api, op, Method::POST, format!("projects/{project}/environments"), form).await?;
        Ok(created.id)
    }

    fn is_transition_refusal(e: &ForgeError) -> bool {
        matches!(e, ForgeError::Status { status: 400, message, .. } if message.contains("Cannot transition status"))
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

    fn invalid(&self, operation: &'static str, e: &dyn std::fmt::Display) -> ForgeError {
        ForgeError::Invalid { forge: FORGE, message: self.redact.scrub(&format!("{operation}: {e}")) }
    }

    fn client_error(&self, operation: &'static str, e: GitlabError) -> ForgeError {
        match e {
            GitlabError::Api { source } => self.api_error(operation, source),
            GitlabError::Communication { source } => self.communication(operation, &source),
            GitlabError::Http { status } => ForgeError::Status {
                forge: FORGE,
                operation,
                status: status.as_u16(),
                message: status.canonical_reason().unwrap_or("error").to_owned(),
                retry_after: None,
            },
            GitlabError::DataType { .. } => {
                ForgeError::Response { forge: FORGE, operation, message: self.redact.scrub(&e.to_string()) }
            }
            e => self.invalid(operation, &e),
        }
    }

    fn communication(&self, operation: &'static str, e: &(dyn std::error::Error + 'static)) -> ForgeError {
        let mut message = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            message.push_str(": ");
            message.push_str(&c.to_string());
            cause = c.source();
        }
        ForgeError::Connection { forge: FORGE, operation, message: self.redact.scrub(&message) }
    }

    fn api_error(&self, operation: &'static str, e: ApiError<RestError>) -> ForgeError {
        let status = |status: u16, message: String, retry_after: Option<Duration>| ForgeError::Status {
            forge: FORGE,
            operation,
            status,
            message: self.redact.scrub(&message),
            retry_after,
        };
        match e {
            ApiError::Client { source: RestError::Communication { source } } => self.communication(operation, &source),
            ApiError::GitlabService { status: s, data } => {
                let text = String::from_utf8_lossy(&data).trim().to_owned();
                let text = if text.is_empty() { s.canonical_reason().unwrap_or("error").to_owned() } else { text };
                status(s.as_u16(), text, None)
            }
            ApiError::GitlabWithStatus { status: s, msg } => status(s.as_u16(), msg, None),
            ApiError::GitlabObjectWithStatus { status: s, obj } => status(s.as_u16(), obj.to_string(), None),
            ApiError::GitlabUnrecognizedWithStatus { status: s, obj } => status(s.as_u16(), obj.to_string(), None),
            ApiError::GitlabRateLimited { retry_after, rl_name, .. } => {
                let wait = if retry_after.is_zero() { RATE_LIMIT_WAIT } else { retry_after };
                self.hold.hold(wait);
                status(
                    429,
                    format!("rate limited ({})", if rl_name.is_empty() { "unnamed limit" } else { &rl_name }),
                    Some(wait),
                )
            }
            ApiError::MovedPermanently { location } => {
                status(301, format!("moved permanently to {}", location.as_deref().unwrap_or("?")), None)
            }
            e @ (ApiError::Json { .. } | ApiError::DataType { .. }) => {
                ForgeError::Response { forge: FORGE, operation, message: self.redact.scrub(&e.to_string()) }
            }
            e => self.invalid(operation, &e),
        }
    }
}

impl ForgeClient for GitlabClient {
    async fn upsert_sticky_comment(
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

    async fn edit_comment(
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
    async fn post_comment(&self, repo: &str, number: u64, body: &str) -> Result<CommentRef, ForgeError> {
        let repo = self.repo(repo)?;
        within(FORGE, "create note", self.timeout, async {
            let api = self.api().await?;
            self.create_note(api, repo, number, body).await
        })
        .await
    }

    async fn report_check(
        &self,
        repo: &str,
        check: &CheckReport,
        _previous: Option<u64>,
    ) -> Result<Option<u64>, ForgeError> {
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

    async fn report_environment(
        &self,
        repo: &str,
        env: &EnvironmentReport,
        previous: Option<&EnvironmentRef>,
    ) -> Result<Option<EnvironmentRef>, ForgeError> {
        let repo = self.repo(repo)?;
        within(FORGE, "report environment", self.timeout, async {
            let api = self.api().await?;
            if env.state != EnvironmentState::Inactive {
                let id = self.upsert_environment(api, repo, env, previous).await?;
                return Ok(Some(EnvironmentRef { id, sha: env.sha.clone() }));
            }
            let found = match previous {
                Some(p) => Some(p.id),
                None => {
                    let name = GitlabEnvironmentName::new(&env.environment);
                    self.environment_named(api, repo, &name).await?.map(|e| e.id)
                }
            };
            let Some(id) = found else { return Ok(None) };
            let op = "stop environment";
            let path = format!("projects/{}/environments/{id}/stop", project_segment(repo));
            match self.raw::<WithId>(api, op, Method::POST, path, vec![]).await {
                Ok(_) => Ok(Some(EnvironmentRef { id, sha: env.sha.clone() })),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn set_label(&self, repo: &str, number: u64, label: &str, present: bool) -> Result<(), ForgeError> {
        let repo = self.repo(repo)?;
        let op = if present { "add label" } else { "remove label" };
        within(FORGE, op, self.timeout, async {
            let api = self.api().await?;
            let mut builder = EditMergeRequest::builder();
            builder.project(repo).merge_request(number);
            if present {
                builder.add_label(label);
            } else {
                builder.remove_label(label);
            }
            let endpoint = builder.build().map_err(|e| self.invalid(op, &e))?;
            self.send(api, op, endpoint).await
        })
        .await
    }

    async fn permission(&self, repo: &str, user: ForgeUser<'_>) -> Result<Permission, ForgeError> {
        let repo = self.repo(repo)?;
        let op = "read member";
        within(FORGE, op, self.timeout, async {
            let api = self.api().await?;
            let member = match user.id {
                Some(id) => {
                    let endpoint =
                        AllProjectMember::builder().project(repo).user(id).build().map_err(|e| self.invalid(op, &e))?;
                    let found: Result<Member, _> = endpoint.query_async(api).await;
                    match found.map_err(|e| self.api_error(op, e)) {
                        Ok(m) => Some(m),
                        Err(e) if e.is_not_found() => None,
                        Err(e) => Err(e)?,
                    }
                }
                None => {
                    // Without the id, the login is searched for and must match exactly.
                    let endpoint = AllProjectMembers::builder()
                        .project(repo)
                        .query(user.login)
                        .build()
                        .map_err(|e| self.invalid(op, &e))?;
                    // The search matches parts of names: read 100 a page until the exact login shows.
                    let mut exact = None;
                    for page in 1..=20 {
                        let found: Vec<Member> = self.page(api, op, endpoint.clone(), page).await?;
                        let last = (found.len() as u64) < PER_PAGE;
                        exact = found.into_iter().find(|m| m.username == user.login);
                        if exact.is_some() || last {
                            break;
                        }
                    }
                    exact
                }
            };
            Ok(match member {
                Some(m) => Permission { level: access_level_name(m.access_level), write: m.access_level >= DEVELOPER },
                None => Permission { level: "none".into(), write: false },
            })
        })
        .await
    }

    /// `GET /projects/:id/merge_requests?state=opened`, then `state=locked` (an MR being merged
    /// still counts as open), each oldest first, 100 a page, until a page comes back short. Oldest
    /// first so an MR opened meanwhile lands on the last page; one closed meanwhile can still hide
    /// another from this listing, which is why resync confirms an absence with
    /// [`ForgeClient::pull_request`].
    async fn open_pull_requests(&self, repo: &str) -> Result<Vec<PullRequestInfo>, ForgeError> {
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
    async fn pull_request(&self, repo: &str, number: u64) -> Result<PullRequestInfo, ForgeError> {
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
}

/// The environment's description (Markdown, GitLab 17.8+; older versions ignore it): the branch,
/// which the name may no longer show as it is, then the stand's state.
fn environment_description(env: &EnvironmentReport) -> String {
    format!("Draft stand of branch {}: {}", code_span(&env.branch), env.description)
}

/// `text` as a Markdown code span, fenced with more backticks than it holds in a row, so whatever git
/// allowed in a branch name shows as written.
fn code_span(text: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    // A space keeps a backtick at either end from joining the fence; Markdown strips one of each.
    let pad = if text.starts_with('`') || text.ends_with('`') { " " } else { "" };
    format!("{fence}{pad}{text}{pad}{fence}")
}

/// GitLab's access levels by name, as its member API documents them.
fn access_level_name(level: u64) -> String {
    let name = match level {
        0 => "no access",
        5 => "minimal access",
        10 => "guest",
        15 => "planner",
        20 => "reporter",
        30 => "developer",
        40 => "maintainer",
        50 => "owner",
        _ => "access",
    };
    format!("{name} ({level})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str) -> Result<GitlabClient, ForgeError> {
        GitlabClient::new(url, &SecretString::from("glpat-zzz"), Duration::from_secs(1))
    }

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

    #[test]
    fn branches_show_as_written_in_code_spans() {
        assert_eq!(code_span("feature/a+b"), "`feature/a+b`");
        assert_eq!(code_span("a`b"), "``a`b``");
        assert_eq!(code_span("`x``"), "``` `x`` ```");
    }

    #[test]
    fn url_becomes_host_and_scheme() {
        let c = client("https://gitlab.example.com/").unwrap();
        assert_eq!((c.host.as_str(), c.insecure), ("gitlab.example.com", false));
        let c = client("http://127.0.0.1:8929").unwrap();
        assert_eq!((c.host.as_str(), c.insecure), ("127.0.0.1:8929", true));
        let c = client("https://example.com/gitlab").unwrap();
        assert_eq!(c.host, "example.com/gitlab");
        assert!(client("gitlab.com").is_err());
        assert!(client("https://").is_err());
        assert!(!format!("{c:?}").contains("glpat-zzz"));
    }
}
