//! What every forge client speaks: the [`ForgeClient`] trait the reporter uses, the reports and
//! answers it carries, [`ForgeError`], and the pieces both clients share (the token scrubber, the
//! rate-limit hold, call bounds). Apart from the clients, so they import it without importing the
//! module that picks between them.

use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use secrecy::{ExposeSecret, SecretString};

use crate::config::ForgeKind;
use crate::stand::{Failure, StandId};

/// One forge API call (with its pagination) may take this long before it counts as a transient failure.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest message kept from a forge's error answer.
const MAX_MESSAGE: usize = 500;

/// The comment (GitHub issue comment) or note (GitLab MR note) that holds a stand's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommentRef {
    /// GitHub: the issue comment id (unique on the instance); GitLab: the note id.
    pub id: u64,
    /// True when this call posted the comment, false when it edited an existing one.
    pub created: bool,
}

/// The hidden first line of a stand's sticky comment, by which it is found again.
pub fn marker(stand_id: StandId) -> String {
    format!("<!-- draftd:stand:{stand_id} -->")
}

/// Where a stand's run stands, as a check: GitHub check run (App) or commit status (token), GitLab
/// commit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    Queued,
    InProgress,
    Success,
    Failure,
    Cancelled,
}

/// One state of the `draftd` check of a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    pub sha: String,
    pub state: CheckState,
    /// One line; commit statuses keep its first 140 characters as their description.
    pub title: String,
    /// Markdown (check runs only; GitHub keeps at most 65,535 characters).
    pub summary: String,
    /// The stand's page: the check's details link, the status's target.
    pub details_url: Option<String>,
    /// The PR's branch: GitLab puts the status on this ref (else on the first branch holding the commit).
    #[serde(default)]
    pub branch: Option<String>,
}

/// A deployment's (GitHub) or environment's (GitLab) state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvironmentState {
    InProgress,
    Success,
    Failure,
    /// The stand is gone: GitHub deployment status `inactive`, GitLab environment stopped.
    Inactive,
}

/// One state of a stand's environment `draft/<branch>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentReport {
    /// `draft/<branch>`.
    pub environment: String,
    pub branch: String,
    pub sha: String,
    pub state: EnvironmentState,
    /// The stand's address (GitHub `environment_url`, GitLab `external_url`).
    pub url: Option<String>,
    /// The run's page (GitHub `log_url`).
    pub log_url: Option<String>,
    /// One line; cut to 140 characters.
    pub description: String,
}

/// What the forge made of an environment report: GitHub's deployment (one per commit) or
/// GitLab's environment, by id, so the next report updates it without searching.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentRef {
    pub id: u64,
    /// The commit the GitHub deployment was made for; a new commit gets a new deployment.
    pub sha: String,
}

/// A forge user's access to a repository, as the forge states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Permission {
    /// GitHub: `admin`, `write`, `read` or `none` (with the role name when it differs); GitLab: the
    /// access level's name and number, e.g. `developer (30)`, or `none`.
    pub level: String,
    /// May push to the repository: GitHub `write`/`admin` (roles maintain and write included),
    /// GitLab Developer (30) or above.
    pub write: bool,
}

/// Who asked, as the forge's webhook named them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForgeUser<'a> {
    pub login: &'a str,
    /// GitLab's numeric user id (the member API takes it); GitHub works by login.
    pub id: Option<u64>,
}

/// Where a PR/MR is, as the forge states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullRequestState {
    Open,
    /// Closed without merging (GitLab `locked` counts as open: it is on its way to merged).
    Closed,
    Merged,
}

/// A PR/MR as the forge's API shows it: what resync of missed webhooks compares with its stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestInfo {
    /// GitHub PR number; GitLab MR iid.
    pub number: u64,
    pub state: PullRequestState,
    /// The source branch (GitHub `head.ref`, GitLab `source_branch`).
    pub branch: String,
    /// The head commit (GitHub `head.sha`, GitLab `sha`).
    pub sha: String,
    /// GitHub `updated_at`, GitLab `updated_at`: orders it against webhook events.
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// The source is another repository (GitHub head repo differs from the base repo or was deleted;
    /// GitLab `source_project_id` differs from `target_project_id`).
    pub fork: bool,
    /// GitHub `draft`; GitLab `draft` (or the older `work_in_progress`).
    pub draft: bool,
    /// Label names.
    pub labels: Vec<String>,
}

/// Reports on PRs/MRs and asks the forge who may do what. Every method is one idempotent
/// delivery: calling it again with the same arguments leaves the forge as one call would.
pub trait ForgeClient: Send + Sync + 'static {
    /// Finds the comment of PR/MR `number` in `repo` containing `marker` (listing every page) and
    /// replaces its body with `body`, or posts `body` as a new comment when there is none.
    fn upsert_sticky_comment(
        &self,
        repo: &str,
        number: u64,
        marker: &str,
        body: &str,
    ) -> impl Future<Output = Result<CommentRef, ForgeError>> + Send;

    /// Replaces the body of a comment whose id is known from an earlier upsert, without listing.
    /// A comment deleted since answers an error for which [`ForgeError::is_not_found`] is true.
    fn edit_comment(
        &self,
        repo: &str,
        number: u64,
        comment_id: u64,
        body: &str,
    ) -> impl Future<Output = Result<CommentRef, ForgeError>> + Send;

    /// Posts a new comment (a reply to a command). The one method that is not idempotent: a call
    /// that timed out after the forge took it and is then retried posts the reply twice.
    fn post_comment(
        &self,
        repo: &str,
        number: u64,
        body: &str,
    ) -> impl Future<Output = Result<CommentRef, ForgeError>> + Send;

    /// Sets the `draftd` check of `check.sha`. `previous` is the id an earlier call returned for the
    /// same commit (a GitHub check run is updated in place). Returns the id to pass next time.
    fn report_check(
        &self,
        repo: &str,
        check: &CheckReport,
        previous: Option<u64>,
    ) -> impl Future<Output = Result<Option<u64>, ForgeError>> + Send;

    /// Records the stand's environment state. `previous` is what an earlier call returned.
    /// `None` when there was nothing to record (an environment never created cannot be stopped).
    fn report_environment(
        &self,
        repo: &str,
        env: &EnvironmentReport,
        previous: Option<&EnvironmentRef>,
    ) -> impl Future<Output = Result<Option<EnvironmentRef>, ForgeError>> + Send;

    /// Adds (`present`) or removes a label of PR/MR `number`; removing a label it does not have is
    /// not an error.
    fn set_label(
        &self,
        repo: &str,
        number: u64,
        label: &str,
        present: bool,
    ) -> impl Future<Output = Result<(), ForgeError>> + Send;

    /// The user's access to `repo`. A user the forge does not know has level `none`.
    fn permission(
        &self,
        repo: &str,
        user: ForgeUser<'_>,
    ) -> impl Future<Output = Result<Permission, ForgeError>> + Send;

    /// Every open PR/MR of `repo`, all pages. A page that fails fails the whole call: a partial
    /// list is never returned, because resync reads what is missing from it.
    fn open_pull_requests(&self, repo: &str) -> impl Future<Output = Result<Vec<PullRequestInfo>, ForgeError>> + Send;

    /// One PR/MR, whatever its state: the positive "closed/merged" resync needs before a teardown.
    fn pull_request(&self, repo: &str, number: u64)
    -> impl Future<Output = Result<PullRequestInfo, ForgeError>> + Send;
}

/// Why a forge call failed. Never carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgeError {
    /// The forge answered with an error status.
    #[error("{} answered HTTP {status} to {operation}: {message}", .forge.as_str())]
    Status {
        forge: ForgeKind,
        operation: &'static str,
        status: u16,
        message: String,
        /// From `Retry-After` (or GitHub's rate-limit reset) when the forge said when to come back.
        retry_after: Option<Duration>,
    },
    #[error("{} {operation}: no answer within {after:?}", .forge.as_str())]
    Timeout { forge: ForgeKind, operation: &'static str, after: Duration },
    /// Refused, reset, DNS, TLS: nothing (or nothing whole) came back.
    #[error("{} {operation}: connection failed: {message}", .forge.as_str())]
    Connection { forge: ForgeKind, operation: &'static str, message: String },
    /// A success status with a body that is not what the API documents.
    #[error("{} {operation}: unexpected answer: {message}", .forge.as_str())]
    Response { forge: ForgeKind, operation: &'static str, message: String },
    /// Bad input or configuration (a malformed repo name, an unusable URL): retrying cannot help.
    #[error("{}: {message}", .forge.as_str())]
    Invalid { forge: ForgeKind, message: String },
    /// Not sent: the forge's rate limit asked this client to wait, and the wait is not over.
    #[error("{} {operation}: not sent, rate limited for another {wait:?}", .forge.as_str())]
    Held { forge: ForgeKind, operation: &'static str, wait: Duration },
    /// The GitHub App is not installed on the repository (its installation lookup answered 404):
    /// nothing can be read or written there until someone installs it. Not a "not found" of what
    /// was asked for, which callers would take as "nothing to do" or "no access".
    #[error("{}: the App is not installed on {repo}; install it there (or remove the project)", .forge.as_str())]
    AppNotInstalled { forge: ForgeKind, repo: String },
}

impl ForgeError {
    /// How long the forge asked to be left alone, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ForgeError::Status { retry_after, .. } => *retry_after,
            ForgeError::Held { wait, .. } => Some(*wait),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ForgeError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A stable label for metrics: the kind of failure, with the status class for HTTP errors.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ForgeError::Status { status: 401, .. } => "unauthorized",
            ForgeError::Status { status: 403, retry_after: Some(_), .. } => "rate_limited",
            ForgeError::Status { status: 403, .. } => "forbidden",
            ForgeError::Status { status: 404, .. } => "not_found",
            ForgeError::Status { status: 429, .. } => "rate_limited",
            ForgeError::Status { status, .. } if *status >= 500 => "server_error",
            ForgeError::Status { .. } => "client_error",
            ForgeError::Timeout { .. } => "timeout",
            ForgeError::Connection { .. } => "connection",
            ForgeError::Response { .. } => "bad_response",
            ForgeError::Invalid { .. } => "invalid",
            ForgeError::Held { .. } => "held",
            ForgeError::AppNotInstalled { .. } => "app_not_installed",
        }
    }

    /// The comment (or the PR, or the repository) does not exist, or the token may not see it.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

impl Failure for ForgeError {
    /// May pass if tried again: 5xx, 408, 429, a rate-limited 403 (GitHub's primary limit), timeouts,
    /// connection failures. 401, 403, 404, 422 and the like will not.
    fn is_transient(&self) -> bool {
        match self {
            ForgeError::Status { status, retry_after, .. } => {
                *status >= 500 || *status == 408 || *status == 429 || (*status == 403 && retry_after.is_some())
            }
            ForgeError::Timeout { .. } | ForgeError::Connection { .. } | ForgeError::Held { .. } => true,
            ForgeError::Response { .. } | ForgeError::Invalid { .. } | ForgeError::AppNotInstalled { .. } => false,
        }
    }

    fn label(&self) -> &'static str {
        self.metric_label()
    }
}

/// Repositories a forge client cannot serve until a person acts (a GitHub App not installed there),
/// by (forge, repository), with the problem's metric label. Clients record and clear them as their
/// calls find out; `/health/ready` lists them per project.
#[derive(Debug, Clone, Default)]
pub struct ForgeProblems(Arc<Mutex<std::collections::HashMap<(ForgeKind, String), &'static str>>>);

impl ForgeProblems {
    /// True when this is news (the repository had no problem, or another one).
    pub(crate) fn set(&self, forge: ForgeKind, repo: &str, problem: &'static str) -> bool {
        let mut problems = self.0.lock().unwrap_or_else(|e| e.into_inner());
        problems.insert((forge, repo.to_owned()), problem) != Some(problem)
    }

    pub(crate) fn clear(&self, forge: ForgeKind, repo: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&(forge, repo.to_owned()));
    }

    /// (forge, repository, problem), ordered by forge and repository.
    pub fn list(&self) -> Vec<(ForgeKind, String, &'static str)> {
        let problems = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = problems.iter().map(|((f, r), p)| (*f, r.clone(), *p)).collect();
        all.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
        all
    }
}

/// Removes tokens from text that came from a forge or an HTTP library, and bounds its length. Shared
/// by a client's clones, so a GitHub App's installation tokens are scrubbed as soon as they exist.
#[derive(Clone)]
pub(crate) struct Redactor(Arc<RwLock<Vec<SecretString>>>);

impl Redactor {
    pub(crate) fn new(token: &SecretString) -> Self {
        Self(Arc::new(RwLock::new(vec![token.clone()])))
    }

    /// Scrubs `token` too from now on.
    pub(crate) fn add(&self, token: &SecretString) {
        let mut tokens = self.0.write().unwrap_or_else(|e| e.into_inner());
        // Installation tokens are replaced hourly: the newest few are all that can still appear.
        if tokens.len() > 8 {
            tokens.remove(1);
        }
        tokens.push(token.clone());
    }

    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for token in self.0.read().unwrap_or_else(|e| e.into_inner()).iter() {
            let token = token.expose_secret();
            if !token.is_empty() {
                out = out.replace(token, "[redacted]");
            }
        }
        crate::text::cut(&mut out, MAX_MESSAGE, "…");
        out
    }
}

/// A client's rate-limit hold: once a forge says "wait" (`Retry-After`, an exhausted quota, a
/// secondary limit), every call of that client fails fast with [`ForgeError::Held`] until the time
/// is up, instead of spending more of the quota (GitHub may ban integrations that keep calling).
#[derive(Clone, Default)]
pub(crate) struct Hold(Arc<Mutex<Option<Instant>>>);

impl Hold {
    pub(crate) fn check(&self, forge: ForgeKind, operation: &'static str) -> Result<(), ForgeError> {
        let until = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        match until.and_then(|u| u.checked_duration_since(Instant::now())) {
            Some(wait) if !wait.is_zero() => Err(ForgeError::Held { forge, operation, wait }),
            _ => Ok(()),
        }
    }

    /// Holds calls for `wait` from now, unless a longer hold is in place.
    pub(crate) fn hold(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_none_or(|h| h < until) {
            *held = Some(until);
        }
    }
}

/// Cuts `text` to `max` characters, marking the cut.
pub(crate) fn clip(text: &str, max: usize) -> String {
    let mut out = text.to_owned();
    // `cut` counts bytes: at most `max` bytes is at most `max` characters, marker included.
    crate::text::cut(&mut out, max.saturating_sub('…'.len_utf8()), "…");
    out
}

/// Parses `Retry-After`: delay-seconds or an HTTP date.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// Runs `call` under `after`, turning the elapsed timer into [`ForgeError::Timeout`].
pub(crate) async fn within<T>(
    forge: ForgeKind,
    operation: &'static str,
    after: Duration,
    call: impl Future<Output = Result<T, ForgeError>>,
) -> Result<T, ForgeError> {
    let result = match tokio::time::timeout(after, call).await {
        Ok(result) => result,
        Err(_) => Err(ForgeError::Timeout { forge, operation, after }),
    };
    count_call(forge, operation, &result);
    result
}

/// Every forge operation in the call counter, and the ones a rate limit held back (or that the forge
/// told to wait) in the rate-limit counter.
fn count_call<T>(forge: ForgeKind, operation: &'static str, result: &Result<T, ForgeError>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.metric_label(),
    };
    metrics::counter!(crate::metrics::FORGE_CALLS, "forge" => forge.as_str(), "operation" => operation, "outcome" => outcome)
        .increment(1);
    if let Err(e) = result {
        if matches!(e, ForgeError::Held { .. }) || (e.retry_after().is_some() && matches!(e.status(), Some(403 | 429)))
        {
            metrics::counter!(crate::metrics::FORGE_RATE_LIMIT_WAITS, "forge" => forge.as_str()).increment(1);
        }
        crate::metrics::error("forge", outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, retry_after: Option<Duration>) -> ForgeError {
        ForgeError::Status {
            forge: ForgeKind::Github,
            operation: "edit comment",
            status,
            message: "x".into(),
            retry_after,
        }
    }

    #[test]
    fn transient_or_not() {
        assert!(status(502, None).is_transient());
        assert!(status(500, None).is_transient());
        assert!(status(429, None).is_transient());
        assert!(status(429, Some(Duration::from_secs(3))).is_transient());
        assert!(status(403, Some(Duration::from_secs(3))).is_transient(), "rate-limited 403");
        assert!(!status(403, None).is_transient());
        assert!(!status(404, None).is_transient());
        assert!(!status(401, None).is_transient());
        assert!(!status(422, None).is_transient());
        let t = ForgeError::Timeout { forge: ForgeKind::Gitlab, operation: "x", after: Duration::from_secs(1) };
        assert!(t.is_transient());
        assert!(status(404, None).is_not_found());
    }

    #[test]
    fn scrubs_token_and_bounds_length() {
        let r = Redactor::new(&SecretString::from("ghp_secret123"));
        assert_eq!(r.scrub("bad token ghp_secret123!"), "bad token [redacted]!");
        let long = "é".repeat(600);
        let s = r.scrub(&long);
        assert!(s.len() <= MAX_MESSAGE + '…'.len_utf8());
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn marker_is_a_hidden_html_comment() {
        assert_eq!(marker(crate::stand::StandId::new(42)), "<!-- draftd:stand:42 -->");
    }
}
