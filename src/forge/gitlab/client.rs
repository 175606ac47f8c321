//! The GitLab client itself: what it holds, how it signs in, and how one call goes out through the
//! `gitlab` crate's `api::` endpoints and its failure becomes a [`ForgeError`].
//!
//! The crate takes a host, not a URL: `[gitlab] url` `https://gitlab.example.com[/prefix]` becomes
//! host `gitlab.example.com[/prefix]`, and an `http://` URL (a local fake) switches the builder to
//! `.insecure()`. Building the async client checks the token with `GET /api/v4/user`; that happens
//! on first use, not at start, so draftd starts while GitLab is down. The token goes out as
//! `PRIVATE-TOKEN`. Lists are read a page at a time with the crate's plain query path rather than
//! `api::paged`, so a listing can stop at the page it needs and a 429 keeps its `Retry-After` (the
//! crate's paged path drops it).
//!
//! Calls whose answer draftd does not read (label changes, DELETEs) go through [`GitlabClient::send`]
//! rather than the crate's `ignore()`, which turns a 429 into a plain error without its
//! `Retry-After`. Endpoints the crate lacks are the small [`Raw`] endpoint below, on the same client.

use std::sync::Arc;
use std::time::Duration;

use ::gitlab::api::endpoint_prelude::{Cow, Endpoint, FormParams, Method, QueryParams, UrlBase};
use ::gitlab::api::{ApiError, AsyncQuery, BodyError};
use ::gitlab::{AsyncGitlab, GitlabBuilder, GitlabError, RestError};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::OnceCell;

use crate::config::ForgeKind;
use crate::forge::client::model::{ForgeError, Hold, Redactor};

pub(super) const FORGE: ForgeKind = ForgeKind::Gitlab;
/// GitLab's maximum page size.
pub(super) const PER_PAGE: u64 = 100;
/// How long to hold off after a 429 that named no time.
const RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// GitLab.com or a self-managed instance, with a personal, project or group access token.
#[derive(Clone)]
pub struct GitlabClient {
    host: String,
    insecure: bool,
    token: SecretString,
    pub(super) redact: Redactor,
    pub(super) timeout: Duration,
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
pub(super) struct Raw {
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) form: Vec<(&'static str, String)>,
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
pub(super) fn project_segment(repo: &str) -> String {
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

    /// The crate's client, built (and the token checked) on first use; refused while a rate limit
    /// holds.
    pub(super) async fn api(&self) -> Result<&AsyncGitlab, ForgeError> {
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

    /// `repo` as a project path, refusing one that could not be.
    pub(super) fn repo<'a>(&self, repo: &'a str) -> Result<&'a str, ForgeError> {
        if repo.is_empty() || repo.starts_with('/') || repo.ends_with('/') {
            return Err(ForgeError::Invalid { forge: FORGE, message: format!("repo {repo:?} is not a project path") });
        }
        Ok(repo)
    }

    /// Page `page` (1-based, [`PER_PAGE`] items) of a list endpoint.
    pub(super) async fn page<E: Endpoint + Sync, T: serde::de::DeserializeOwned + 'static>(
        &self,
        api: &AsyncGitlab,
        op: &'static str,
        inner: E,
        page: u64,
    ) -> Result<Vec<T>, ForgeError> {
        PageOf { inner, page }.query_async(api).await.map_err(|e| self.api_error(op, e))
    }

    /// A call whose answer is not read. The crate's own query path is used (not `ignore()`), so a
    /// 429 keeps its `Retry-After` and holds the client like any other call; a success with no JSON
    /// body (204 No Content) is the one "error" that path reports for it.
    pub(super) async fn send<E: Endpoint + Sync>(
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

    /// A call of an endpoint the crate lacks, its answer read as `T`.
    pub(super) async fn raw<T: serde::de::DeserializeOwned + 'static>(
        &self,
        api: &AsyncGitlab,
        op: &'static str,
        method: Method,
        path: String,
        form: Vec<(&'static str, String)>,
    ) -> Result<T, ForgeError> {
        Raw { method, path, form }.query_async(api).await.map_err(|e| self.api_error(op, e))
    }

    pub(super) fn invalid(&self, operation: &'static str, e: &dyn std::fmt::Display) -> ForgeError {
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

    pub(super) fn api_error(&self, operation: &'static str, e: ApiError<RestError>) -> ForgeError {
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
