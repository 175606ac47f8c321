//! Talking back to the forge: the one sticky comment per PR/MR (DESIGN.md, "Sticky report").
//!
//! [`ForgeClient`] is the trait the reporter uses; [`GithubClient`] (octocrab) and [`GitlabClient`]
//! (the `gitlab` crate) are the real implementations, [`AnyForge`] picks one per outbox row. Tokens
//! never appear in a [`ForgeError`]: every message from a forge or an HTTP library is scrubbed of the
//! token before it is kept, and the clients' `Debug` output leaves the token out.

mod github;
mod gitlab;

use std::future::Future;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

pub use self::github::GithubClient;
pub use self::gitlab::GitlabClient;
use crate::config::{Config, ForgeKind};

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
pub fn marker(stand_id: i64) -> String {
    format!("<!-- draftd:stand:{stand_id} -->")
}

/// Reports on PRs/MRs. Implementations must keep exactly one comment per marker and PR.
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
}

impl ForgeError {
    /// May pass if tried again: 5xx, 408, 429, a rate-limited 403 (GitHub's primary limit), timeouts,
    /// connection failures. 401, 403, 404, 422 and the like will not.
    pub fn is_transient(&self) -> bool {
        match self {
            ForgeError::Status { status, retry_after, .. } => {
                *status >= 500 || *status == 408 || *status == 429 || (*status == 403 && retry_after.is_some())
            }
            ForgeError::Timeout { .. } | ForgeError::Connection { .. } => true,
            ForgeError::Response { .. } | ForgeError::Invalid { .. } => false,
        }
    }

    /// How long the forge asked to be left alone, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ForgeError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ForgeError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The comment (or the PR, or the repository) does not exist, or the token may not see it.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

/// Removes the token from text that came from a forge or an HTTP library, and bounds its length.
#[derive(Clone)]
pub(crate) struct Redactor(SecretString);

impl Redactor {
    pub(crate) fn new(token: &SecretString) -> Self {
        Self(token.clone())
    }

    pub(crate) fn scrub(&self, text: &str) -> String {
        let token = self.0.expose_secret();
        let mut out = if token.is_empty() { text.to_owned() } else { text.replace(token, "[redacted]") };
        crate::text::cut(&mut out, MAX_MESSAGE, "…");
        out
    }
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
    match tokio::time::timeout(after, call).await {
        Ok(result) => result,
        Err(_) => Err(ForgeError::Timeout { forge, operation, after }),
    }
}

/// Either real client, so one reporter serves GitHub and GitLab projects alike.
#[derive(Debug)]
pub enum AnyForge {
    Github(GithubClient),
    Gitlab(GitlabClient),
}

impl AnyForge {
    pub fn kind(&self) -> ForgeKind {
        match self {
            AnyForge::Github(_) => ForgeKind::Github,
            AnyForge::Gitlab(_) => ForgeKind::Gitlab,
        }
    }

    /// The clients the configuration allows: a forge whose `token_env` is set and names a non-empty
    /// variable. `Err` names the forge and variable (never the value) when a named variable is unset.
    /// Call within a Tokio runtime (octocrab's client needs one).
    pub fn from_config(config: &Config) -> Result<Vec<AnyForge>, ForgeError> {
        let mut forges = Vec::new();
        let token = |forge: ForgeKind, var: &str| -> Result<SecretString, ForgeError> {
            match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(SecretString::from(v)),
                _ => Err(ForgeError::Invalid {
                    forge,
                    message: format!("environment variable {var} (token_env) is not set or empty"),
                }),
            }
        };
        if let Some(var) = &config.github.token_env {
            let t = token(ForgeKind::Github, var)?;
            forges.push(AnyForge::Github(GithubClient::new(&config.github.api_url, &t, DEFAULT_CALL_TIMEOUT)?));
        }
        if let Some(var) = &config.gitlab.token_env {
            let t = token(ForgeKind::Gitlab, var)?;
            forges.push(AnyForge::Gitlab(GitlabClient::new(&config.gitlab.url, &t, DEFAULT_CALL_TIMEOUT)?));
        }
        Ok(forges)
    }
}

impl ForgeClient for AnyForge {
    async fn upsert_sticky_comment(
        &self,
        repo: &str,
        number: u64,
        marker: &str,
        body: &str,
    ) -> Result<CommentRef, ForgeError> {
        match self {
            AnyForge::Github(c) => c.upsert_sticky_comment(repo, number, marker, body).await,
            AnyForge::Gitlab(c) => c.upsert_sticky_comment(repo, number, marker, body).await,
        }
    }

    async fn edit_comment(
        &self,
        repo: &str,
        number: u64,
        comment_id: u64,
        body: &str,
    ) -> Result<CommentRef, ForgeError> {
        match self {
            AnyForge::Github(c) => c.edit_comment(repo, number, comment_id, body).await,
            AnyForge::Gitlab(c) => c.edit_comment(repo, number, comment_id, body).await,
        }
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
        assert_eq!(marker(42), "<!-- draftd:stand:42 -->");
    }
}
