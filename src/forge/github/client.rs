//! The GitHub client itself: what it holds, and how one call goes out and its answer comes back.
//!
//! Requests are built with octocrab's `build_request` (its `X-GitHub-Api-Version` header) and sent
//! with `execute` (its connection pool, base URI and timeouts), but the bearer token and the answer
//! are handled here: octocrab's typed helpers drop the response headers, and the rate-limit headers
//! (`retry-after`, `x-ratelimit-remaining`, `x-ratelimit-reset`) are what tell this client to hold
//! off. A renamed repository's redirects are followed here too, and a next page or a redirect that
//! leaves `api_url` is refused rather than sent the token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use octocrab::Octocrab;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::wire::RepoName;
use crate::config::ForgeKind;
use crate::forge::client::model::{ForgeError, ForgeProblems, Hold, Redactor, parse_retry_after};
use crate::forge::client::pace::{Pacer, Pacing};

pub(super) const FORGE: ForgeKind = ForgeKind::Github;
/// GitHub's maximum page size (issue comments, pull requests).
pub(super) const PER_PAGE: usize = 100;
/// "Wait at least one minute" after a secondary rate limit without `retry-after` (GitHub's docs).
const SECONDARY_WAIT: Duration = Duration::from_secs(60);
/// Installation tokens live an hour; a new one is fetched when less than this is left.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// GitHub's limit on commit status and deployment descriptions.
pub(super) const MAX_DESCRIPTION: usize = 140;
/// Redirects followed for one request: GitHub's names the repository by id, which never moves, so one
/// is all a rename needs; the bound only stops a loop.
const MAX_REDIRECTS: usize = 3;

/// A GitHub App acting through its installations (see [`super::auth`]).
pub(super) struct App {
    pub(super) app_id: u64,
    pub(super) key: octocrab::EncodingKey,
    pub(super) installation_id: Option<u64>,
    /// Installation token per repository owner; the lock makes one fetch serve every waiting call.
    pub(super) tokens: tokio::sync::Mutex<HashMap<String, Installation>>,
}

pub(super) struct Installation {
    pub(super) id: u64,
    pub(super) token: SecretString,
    pub(super) expires_at: DateTime<Utc>,
}

/// How the client signs its requests: a token as it is, or an App's installation tokens.
#[derive(Clone)]
pub(super) enum Auth {
    Token(SecretString),
    App(Arc<App>),
}

/// GitHub (or GitHub Enterprise: `api_url` = `https://host/api/v3`).
#[derive(Clone)]
pub struct GithubClient {
    crab: Octocrab,
    api_url: String,
    pub(super) auth: Auth,
    pub(super) redact: Redactor,
    hold: Hold,
    /// Each installation's requests in turn, writes spaced (see [`crate::forge::client::Pacing`]).
    pace: Arc<Pacer>,
    pub(super) timeout: Duration,
    secondary_wait: Duration,
    /// App only: installation tokens with less than this left are replaced.
    pub(super) refresh_before: Duration,
    /// Repositories this client cannot serve (an App not installed there), for `/health/ready`.
    pub(super) problems: ForgeProblems,
    /// Renamed or transferred repositories seen through GitHub's redirects: configured name → new name.
    moved: Arc<std::sync::Mutex<HashMap<String, String>>>,
}

impl std::fmt::Debug for GithubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.auth {
            Auth::Token(_) => "token".to_owned(),
            Auth::App(app) => format!("app {}", app.app_id),
        };
        f.debug_struct("GithubClient").field("api_url", &self.api_url).field("auth", &auth).finish_non_exhaustive()
    }
}

/// What came back, whole.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

impl GithubClient {
    /// A client with a token (`[github] token_env`), sent as `Authorization: Bearer …`. Each call
    /// (with its pagination) is bounded by `timeout`. Needs a Tokio runtime.
    pub fn new(api_url: &str, token: &SecretString, timeout: Duration) -> Result<Self, ForgeError> {
        Self::build(api_url, Auth::Token(token.clone()), Redactor::new(token), timeout)
    }

    /// What both constructors make: octocrab's client on `api_url`, with the call bounds.
    pub(super) fn build(api_url: &str, auth: Auth, redact: Redactor, timeout: Duration) -> Result<Self, ForgeError> {
        let invalid = |e: octocrab::Error| ForgeError::Invalid {
            forge: FORGE,
            message: redact.scrub(&format!("api_url {api_url:?}: {}", chain(&e))),
        };
        let crab = Octocrab::builder()
            .base_uri(api_url)
            .map_err(invalid)?
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(timeout))
            .set_write_timeout(Some(timeout))
            .build()
            .map_err(invalid)?;
        Ok(Self {
            crab,
            api_url: api_url.to_owned(),
            auth,
            redact,
            hold: Hold::default(),
            // Unpaced until told: `AnyForge::from_config` always sets the configured pacing.
            pace: Arc::new(Pacer::new(Pacing::OFF)),
            timeout,
            secondary_wait: SECONDARY_WAIT,
            refresh_before: REFRESH_BEFORE,
            problems: ForgeProblems::default(),
            moved: Arc::default(),
        })
    }

    /// Problems found (an App not installed on a repository) go to `problems`, which `/health/ready`
    /// reads, instead of this client's own list.
    pub fn watch_problems(mut self, problems: ForgeProblems) -> Self {
        self.problems = problems;
        self
    }

    /// (configured name, current name) of every repository GitHub redirected this client from.
    pub fn moved_repositories(&self) -> Vec<(String, String)> {
        let moved = self.moved.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<(String, String)> = moved.iter().map(|(o, n)| (o.clone(), n.clone())).collect();
        all.sort();
        all
    }

    /// How long to hold off after a secondary rate limit that named no time (tests shorten it).
    pub fn with_secondary_wait(mut self, wait: Duration) -> Self {
        self.secondary_wait = wait;
        self
    }

    /// How this client paces each installation's requests ([`Pacing::GITHUB`] is GitHub's guidance).
    pub fn with_pacing(mut self, pacing: Pacing) -> Self {
        self.pace = Arc::new(Pacer::new(pacing));
        self
    }

    /// Replace installation tokens when less than this is left of their hour (tests lengthen it).
    pub fn with_token_refresh(mut self, before: Duration) -> Self {
        self.refresh_before = before;
        self
    }

    /// Whether the client acts as an App (and so may create check runs).
    pub(super) fn is_app(&self) -> bool {
        matches!(self.auth, Auth::App(_))
    }

    /// `owner/name` → the `/repos/owner/name` prefix of every route, refusing anything that could
    /// change the path (GitHub names are ASCII letters, digits, `.`, `-`, `_`).
    pub(super) fn repo_route(&self, repo: &str) -> Result<String, ForgeError> {
        let ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        match repo.split_once('/') {
            Some((owner, name)) if ok(owner) && ok(name) => Ok(format!("/repos/{owner}/{name}")),
            _ => Err(ForgeError::Invalid { forge: FORGE, message: format!("repo {repo:?} is not owner/name") }),
        }
    }

    /// One request with `token`, read whole. Rate-limit headers of any answer set the hold.
    pub(super) async fn send(
        &self,
        op: &'static str,
        method: Method,
        route: &str,
        body: Option<&Value>,
        token: &SecretString,
    ) -> Result<Answer, ForgeError> {
        self.hold.check(FORGE, op)?;
        let _turn = self.pace.turn(FORGE, op, &method, token).await?;
        let builder = http::Request::builder().method(method).uri(route);
        let mut req = self.crab.build_request(builder, body).map_err(|e| self.error(op, e))?;
        let mut bearer = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret())).map_err(|_| {
            ForgeError::Invalid { forge: FORGE, message: "the token is not a valid header value".into() }
        })?;
        bearer.set_sensitive(true);
        req.headers_mut().insert(AUTHORIZATION, bearer);
        req.headers_mut().insert(ACCEPT, HeaderValue::from_static("application/vnd.github+json"));
        let response = self.crab.execute(req).await.map_err(|e| self.error(op, e))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| self.error(op, e))?.to_bytes();
        let answer = Answer { status: parts.status, headers: parts.headers, body };
        if answer.status.is_success() && header(&answer.headers, "x-ratelimit-remaining") == Some("0") {
            // The quota is spent: the next call would be refused, so none is made until the reset.
            self.hold.hold(reset_wait(&answer.headers));
        }
        Ok(answer)
    }

    /// A call on `repo`'s behalf: with the token, or the installation token of the repo's owner
    /// (fetched again once when GitHub answers 401, as a revoked token would). Errors for non-2xx.
    pub(super) async fn call(
        &self,
        op: &'static str,
        method: Method,
        repo: &str,
        route: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ForgeError> {
        let token = self.token_for(repo, false).await?;
        let mut answer = self.follow(op, Some(repo), method.clone(), route, body, &token).await?;
        if answer.status == StatusCode::UNAUTHORIZED && self.is_app() {
            let token = self.token_for(repo, true).await?;
            answer = self.follow(op, Some(repo), method, route, body, &token).await?;
        }
        if answer.status.is_success() { Ok(answer) } else { Err(self.status_error(op, &answer)) }
    }

    /// [`Self::send`], following GitHub's repository redirects: a renamed or transferred repository
    /// answers 301 (GET) or 307 (other methods) with a `Location` naming it by id
    /// (`/repositories/{id}/…`), and the request goes there again as it was, method and body
    /// included. A target off `api_url` is refused rather than sent the token. With `repo`, the
    /// first redirect of that repository also finds and logs its new name.
    pub(super) async fn follow(
        &self,
        op: &'static str,
        repo: Option<&str>,
        method: Method,
        route: &str,
        body: Option<&Value>,
        token: &SecretString,
    ) -> Result<Answer, ForgeError> {
        let mut route = route.to_owned();
        for _ in 0..=MAX_REDIRECTS {
            let answer = self.send(op, method.clone(), &route, body, token).await?;
            let redirect = matches!(answer.status.as_u16(), 301 | 302 | 307 | 308);
            let Some(location) = header(&answer.headers, "location").filter(|_| redirect) else { return Ok(answer) };
            route = self.route_of(op, location)?;
            if let Some(repo) = repo {
                self.note_move(repo, &route, token).await;
            }
        }
        Err(ForgeError::Response {
            forge: FORGE,
            operation: op,
            message: format!("more than {MAX_REDIRECTS} redirects, the last to {route}"),
        })
    }

    /// Logs, once per repository, the name GitHub now knows a redirected repository by, so the
    /// project's `repo` can be corrected: redirects cost a request each, and end when someone
    /// creates a repository under the old name.
    async fn note_move(&self, repo: &str, route: &str, token: &SecretString) {
        if self.moved.lock().unwrap_or_else(|e| e.into_inner()).contains_key(repo) {
            return;
        }
        let by_id = route.split('/').take(3).collect::<Vec<_>>().join("/");
        let new = match route.starts_with("/repositories/") {
            true => match self.send("find moved repository", Method::GET, &by_id, None, token).await {
                Ok(answer) if answer.status.is_success() => {
                    self.json::<RepoName>("find moved repository", &answer).ok().map(|r| r.full_name)
                }
                _ => None,
            },
            false => None,
        };
        let new = new.unwrap_or_else(|| by_id.trim_start_matches('/').to_owned());
        tracing::warn!(
            configured = repo,
            current = %new,
            "GitHub repository was renamed or transferred; requests follow its redirects, but set the project's repo to its new name"
        );
        self.moved.lock().unwrap_or_else(|e| e.into_inner()).insert(repo.to_owned(), new);
    }

    pub(super) fn json<T: DeserializeOwned>(&self, op: &'static str, answer: &Answer) -> Result<T, ForgeError> {
        serde_json::from_slice(&answer.body).map_err(|e| ForgeError::Response {
            forge: FORGE,
            operation: op,
            message: self.redact.scrub(&format!("HTTP {}: {e}", answer.status.as_u16())),
        })
    }

    /// A non-2xx answer. 403 and 429 may be rate limits (GitHub's "Rate limits for the REST API"):
    /// primary (`x-ratelimit-remaining: 0` until `x-ratelimit-reset`) or secondary (`retry-after`,
    /// or "at least one minute" when it names no time); either holds every call of this client.
    pub(super) fn status_error(&self, operation: &'static str, answer: &Answer) -> ForgeError {
        let status = answer.status.as_u16();
        let message = serde_json::from_slice::<Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(&answer.body).trim().to_owned();
                if text.is_empty() { answer.status.canonical_reason().unwrap_or("error").to_owned() } else { text }
            });
        let headers = &answer.headers;
        let retry_after = header(headers, "retry-after").and_then(parse_retry_after);
        let retry_after = if status == 403 || status == 429 {
            let limited = retry_after
                .or_else(|| (header(headers, "x-ratelimit-remaining") == Some("0")).then(|| reset_wait(headers)))
                .or_else(|| message.to_ascii_lowercase().contains("rate limit").then_some(self.secondary_wait))
                .or_else(|| (status == 429).then_some(self.secondary_wait));
            if let Some(wait) = limited {
                self.hold.hold(wait);
            }
            limited
        } else {
            retry_after
        };
        ForgeError::Status { forge: FORGE, operation, status, message: self.redact.scrub(&message), retry_after }
    }

    /// A failure before any answer: connection, TLS, a request that could not be built.
    fn error(&self, operation: &'static str, e: octocrab::Error) -> ForgeError {
        let message = self.redact.scrub(&chain(&e));
        match e {
            octocrab::Error::Hyper { .. } | octocrab::Error::Service { .. } => {
                ForgeError::Connection { forge: FORGE, operation, message }
            }
            _ => ForgeError::Invalid { forge: FORGE, message: format!("{operation}: {message}") },
        }
    }

    /// The route of the `next` page an answer's `Link` header names. GitHub's links are absolute
    /// (and may name the repository by id, `/repositories/{id}/…`): one that leaves `api_url` is
    /// refused rather than sent the token.
    pub(super) fn next_page(&self, op: &'static str, answer: &Answer) -> Result<Option<String>, ForgeError> {
        let Some(url) = header(&answer.headers, "link").and_then(next_link) else { return Ok(None) };
        self.route_of(op, url).map(Some)
    }

    /// The route of an absolute URL GitHub handed out (a next page, a redirect), refused when it is
    /// not under `api_url`: the token goes nowhere else.
    fn route_of(&self, op: &'static str, url: &str) -> Result<String, ForgeError> {
        match url.strip_prefix(self.api_url.trim_end_matches('/')) {
            Some(route) if route.starts_with('/') => Ok(route.to_owned()),
            _ => Err(ForgeError::Response {
                forge: FORGE,
                operation: op,
                message: self.redact.scrub(&format!("{url:?} is not under {:?}", self.api_url)),
            }),
        }
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The target of the `rel="next"` link of a `Link` header (RFC 8288: `<url>; rel="next", <url>; …`).
fn next_link(value: &str) -> Option<&str> {
    let mut rest = value;
    while let Some(start) = rest.find('<') {
        let end = start + rest[start..].find('>')?;
        let url = &rest[start + 1..end];
        rest = &rest[end + 1..];
        // This link's parameters run to the next `<` (URLs may hold commas, parameters may not hold `<`).
        let params = rest.split('<').next().unwrap_or_default();
        let next = params
            .split([';', ','])
            .filter_map(|p| p.trim().strip_prefix("rel="))
            .any(|rel| rel.trim_matches('"').split_ascii_whitespace().any(|r| r.eq_ignore_ascii_case("next")));
        if next {
            return Some(url);
        }
    }
    None
}

/// Until `x-ratelimit-reset` (epoch seconds), at least a second; a minute when it is missing.
fn reset_wait(headers: &HeaderMap) -> Duration {
    let reset = header(headers, "x-ratelimit-reset").and_then(|v| v.parse::<i64>().ok());
    let wait = reset.map(|r| r - Utc::now().timestamp()).unwrap_or(60).max(1);
    Duration::from_secs(wait as u64)
}

/// A path segment: unreserved characters as they are, everything else percent-encoded.
pub(super) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error with its causes, `: `-separated (octocrab's own `Display` omits the cause for some variants).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn repo_names_cannot_change_the_path() {
        let c = GithubClient::new("http://127.0.0.1:9", &SecretString::from("t"), Duration::from_secs(1)).unwrap();
        assert_eq!(c.repo_route("acme/shop.web").unwrap(), "/repos/acme/shop.web");
        for bad in ["acme", "acme/", "/shop", "acme/shop/x", "acme/..", "acme/sh op", "acme/shop?x=1"] {
            assert!(c.repo_route(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn debug_leaves_the_token_out() {
        let c =
            GithubClient::new("http://127.0.0.1:9", &SecretString::from("ghp_zzz"), Duration::from_secs(1)).unwrap();
        assert!(!format!("{c:?}").contains("ghp_zzz"));
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("draft-tested"), "draft-tested");
        assert_eq!(encode_segment("needs review/2"), "needs%20review%2F2");
        assert_eq!(encode_segment("dependabot[bot]"), "dependabot%5Bbot%5D");
    }

    #[test]
    fn the_next_link_is_found_among_the_others() {
        let link = r#"<https://api.github.com/repositories/1296269/pulls?state=open&page=2>; rel="next", <https://api.github.com/repositories/1296269/pulls?state=open&page=5>; rel="last""#;
        assert_eq!(next_link(link), Some("https://api.github.com/repositories/1296269/pulls?state=open&page=2"));
        let last = r#"<https://x/r?labels=a,b&page=1>; rel="first", <https://x/r?labels=a,b&page=4>; rel="prev""#;
        assert_eq!(next_link(last), None);
        assert_eq!(next_link(r#"<https://x/r?page=3>; rel="next""#), Some("https://x/r?page=3"));
    }

    #[tokio::test]
    async fn a_next_page_off_api_url_is_refused() {
        let c = GithubClient::new("https://ghe.example.com/api/v3/", &SecretString::from("t"), Duration::from_secs(1))
            .unwrap();
        let answer = |link: &str| {
            let mut headers = HeaderMap::new();
            if !link.is_empty() {
                headers.insert("link", HeaderValue::from_str(link).unwrap());
            }
            Answer { status: StatusCode::OK, headers, body: Bytes::new() }
        };
        let next = r#"<https://ghe.example.com/api/v3/repositories/7/pulls?page=2>; rel="next""#;
        assert_eq!(c.next_page("x", &answer(next)).unwrap().as_deref(), Some("/repositories/7/pulls?page=2"));
        assert_eq!(c.next_page("x", &answer("")).unwrap(), None);
        let away = r#"<https://ghe.example.com.evil.net/api/v3/repositories/7/pulls?page=2>; rel="next""#;
        assert!(matches!(c.next_page("x", &answer(away)), Err(ForgeError::Response { .. })));
    }
}
