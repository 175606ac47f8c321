//! GitLab merge request notes through the `gitlab` crate's `api::` endpoints.
//!
//! The crate takes a host, not a URL: `[gitlab] url` `https://gitlab.example.com[/prefix]` becomes
//! host `gitlab.example.com[/prefix]`, and an `http://` URL (a local fake) switches the builder to
//! `.insecure()`. Building the async client checks the token with `GET /api/v4/user`; that happens
//! on first use, not at start, so draftd starts while GitLab is down. The token goes out as
//! `PRIVATE-TOKEN`. Notes are listed a page at a time (oldest first, 100 per page) with the crate's
//! plain query path rather than `api::paged`, so listing stops at the page holding the marker and a
//! 429 keeps its `Retry-After` (the crate's paged path drops it).

use std::time::Duration;

use ::gitlab::api::endpoint_prelude::{Cow, Endpoint, Method, QueryParams, UrlBase};
use ::gitlab::api::projects::merge_requests::notes::{
    CreateMergeRequestNote, EditMergeRequestNote, MergeRequestNotes, NoteOrderBy,
};
use ::gitlab::api::{ApiError, AsyncQuery, BodyError, common::SortOrder};
use ::gitlab::{AsyncGitlab, GitlabBuilder, GitlabError, RestError};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::{CommentRef, ForgeClient, ForgeError, Redactor, within};
use crate::config::ForgeKind;

const FORGE: ForgeKind = ForgeKind::Gitlab;
/// GitLab's maximum page size.
const PER_PAGE: u64 = 100;

#[derive(Debug, Deserialize)]
struct Note {
    id: u64,
    #[serde(default)]
    body: String,
    /// System notes ("added 1 commit") are GitLab's own; never ours.
    #[serde(default)]
    system: bool,
}

/// GitLab.com or a self-managed instance, with a personal, project or group access token.
pub struct GitlabClient {
    host: String,
    insecure: bool,
    token: SecretString,
    redact: Redactor,
    timeout: Duration,
    /// Boxed: the client with its three URLs is large, and `AnyForge` holds either client inline.
    api: OnceCell<Box<AsyncGitlab>>,
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
            api: OnceCell::new(),
        })
    }

    async fn api(&self) -> Result<&AsyncGitlab, ForgeError> {
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
            let notes: Vec<Note> = PageOf { inner, page }.query_async(api).await.map_err(|e| self.api_error(op, e))?;
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
            ApiError::GitlabRateLimited { retry_after, rl_name, .. } => status(
                429,
                format!("rate limited ({})", if rl_name.is_empty() { "unnamed limit" } else { &rl_name }),
                (!retry_after.is_zero()).then_some(retry_after),
            ),
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
            let op = "create note";
            let endpoint = CreateMergeRequestNote::builder()
                .project(repo)
                .merge_request(number)
                .body(body)
                .build()
                .map_err(|e| self.invalid(op, &e))?;
            let n: Note = endpoint.query_async(api).await.map_err(|e| self.api_error(op, e))?;
            Ok(CommentRef { id: n.id, created: true })
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str) -> Result<GitlabClient, ForgeError> {
        GitlabClient::new(url, &SecretString::from("glpat-zzz"), Duration::from_secs(1))
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
