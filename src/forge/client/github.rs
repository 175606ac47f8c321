//! GitHub through octocrab: sticky comments, check runs (or commit statuses), deployments, labels,
//! collaborator permissions and the pull requests resync compares with its stands, as a GitHub App
//! (installation tokens) or with a token.
//!
//! Requests are built with octocrab's `build_request` (its `X-GitHub-Api-Version` header) and sent
//! with `execute` (its connection pool, base URI and timeouts), but the bearer token and the answer
//! are handled here: octocrab's typed helpers drop the response headers, and the rate-limit headers
//! (`retry-after`, `x-ratelimit-remaining`, `x-ratelimit-reset`) are what tell this client to hold
//! off. Responses are read into small structs of the fields used, so a change in GitHub's user or
//! repository objects cannot break reporting.
//!
//! Lists follow pages differently: comments are read a page at a time until the one holding the
//! marker (or a short page); open pull requests follow the `Link` header's `next`, as GitHub
//! recommends, and any page that fails fails the whole listing.
//!
//! Check runs can only be created by GitHub Apps: with a token the `draftd` check is a commit status
//! instead, and re-runs are asked for with `/draft rerun`.

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
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::model::{
    CheckReport, CheckState, CommentRef, EnvironmentRef, EnvironmentReport, EnvironmentState, ForgeClient, ForgeError,
    ForgeProblems, ForgeUser, Hold, Permission, PullRequestInfo, PullRequestState, Redactor, clip, parse_retry_after,
    within,
};
use super::pace::{Pacer, Pacing};
use crate::config::ForgeKind;
use crate::forge::{CHECK_NAME, RERUN_ACTION};

const FORGE: ForgeKind = ForgeKind::Github;
/// GitHub's maximum page size (issue comments, pull requests).
const PER_PAGE: usize = 100;
/// "Wait at least one minute" after a secondary rate limit without `retry-after` (GitHub's docs).
const SECONDARY_WAIT: Duration = Duration::from_secs(60);
/// Installation tokens live an hour; a new one is fetched when less than this is left.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// GitHub's limits on check run output and on status and deployment descriptions.
const MAX_SUMMARY: usize = 65_535;
const MAX_TITLE: usize = 255;
const MAX_DESCRIPTION: usize = 140;
/// Redirects followed for one request: GitHub's names the repository by id, which never moves, so one
/// is all a rename needs; the bound only stops a loop.
const MAX_REDIRECTS: usize = 3;
/// Earlier deployments of an environment looked at when retiring them: each success retires the ones
/// before it, so only those since the last success are still active.
const RETIRE_PAGE: usize = 100;

/// A GitHub App's identity: the app id and its private key (PEM, as GitHub hands it out).
pub struct AppCredentials {
    pub app_id: u64,
    pub private_key_pem: Vec<u8>,
    /// When unset, the installation is looked up per repository owner.
    pub installation_id: Option<u64>,
}

struct App {
    app_id: u64,
    key: octocrab::EncodingKey,
    installation_id: Option<u64>,
    /// Installation token per repository owner; the lock makes one fetch serve every waiting call.
    tokens: tokio::sync::Mutex<HashMap<String, Installation>>,
}

struct Installation {
    id: u64,
    token: SecretString,
    expires_at: DateTime<Utc>,
}

#[derive(Clone)]
enum Auth {
    Token(SecretString),
    App(Arc<App>),
}

/// GitHub (or GitHub Enterprise: `api_url` = `https://host/api/v3`).
#[derive(Clone)]
pub struct GithubClient {
    crab: Octocrab,
    api_url: String,
    auth: Auth,
    redact: Redactor,
    hold: Hold,
    /// Each installation's requests in turn, writes spaced (see [`super::pace`]).
    pace: Arc<Pacer>,
    timeout: Duration,
    secondary_wait: Duration,
    /// App only: installation tokens with less than this left are replaced.
    refresh_before: Duration,
    /// Repositories this client cannot serve (an App not installed there), for `/health/ready`.
    problems: ForgeProblems,
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
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Debug, Deserialize)]
struct IssueComment {
    id: u64,
    #[serde(default)]
    body: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WithId {
    id: u64,
}

/// One status of a deployment, as `GET …/deployments/{id}/statuses` lists them (newest first).
#[derive(Debug, Deserialize)]
struct DeploymentState {
    state: String,
}

#[derive(Debug, Deserialize)]
struct AccessToken {
    token: SecretString,
    expires_at: DateTime<Utc>,
}

/// A pull request as `GET …/pulls` (the "simple" form) and `GET …/pulls/{number}` show it.
#[derive(Debug, Deserialize)]
struct PullRequest {
    number: u64,
    /// `open` or `closed`.
    state: String,
    /// Only in the single-PR answer; `merged_at` says the same in both.
    #[serde(default)]
    merged: Option<bool>,
    #[serde(default)]
    merged_at: Option<DateTime<Utc>>,
    #[serde(default)]
    draft: Option<bool>,
    updated_at: DateTime<Utc>,
    head: PullRequestEnd,
    base: PullRequestEnd,
    #[serde(default)]
    labels: Vec<PullRequestLabel>,
}

#[derive(Debug, Deserialize)]
struct PullRequestEnd {
    #[serde(rename = "ref")]
    branch: String,
    sha: String,
    /// `null` when the fork the PR came from was deleted.
    #[serde(default)]
    repo: Option<RepoName>,
}

#[derive(Debug, Deserialize)]
struct RepoName {
    full_name: String,
}

#[derive(Debug, Deserialize)]
struct PullRequestLabel {
    name: String,
}

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

#[derive(Debug, Deserialize)]
struct CollaboratorPermission {
    permission: String,
    #[serde(default)]
    role_name: Option<String>,
}

impl GithubClient {
    /// A client with a token (`[github] token_env`), sent as `Authorization: Bearer …`. Each call
    /// (with its pagination) is bounded by `timeout`. Needs a Tokio runtime.
    pub fn new(api_url: &str, token: &SecretString, timeout: Duration) -> Result<Self, ForgeError> {
        Self::build(api_url, Auth::Token(token.clone()), Redactor::new(token), timeout)
    }

    /// A client acting as a GitHub App installation: a JWT signed with the app's key buys an
    /// installation token, replaced before it expires.
    pub fn app(api_url: &str, app: AppCredentials, timeout: Duration) -> Result<Self, ForgeError> {
        let key = octocrab::EncodingKey::from_rsa_pem(&app.private_key_pem).map_err(|e| ForgeError::Invalid {
            forge: FORGE,
            message: format!("private key of app {} is not an RSA key in PEM: {e}", app.app_id),
        })?;
        let app = App {
            app_id: app.app_id,
            key,
            installation_id: app.installation_id,
            tokens: tokio::sync::Mutex::new(HashMap::new()),
        };
        Self::build(api_url, Auth::App(Arc::new(app)), Redactor::new(&SecretString::from(String::new())), timeout)
    }

    fn build(api_url: &str, auth: Auth, redact: Redactor, timeout: Duration) -> Result<Self, ForgeError> {
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

    fn is_app(&self) -> bool {
        matches!(self.auth, Auth::App(_))
    }

    /// A token that can only read `repo`'s contents and expires within the hour (GitHub's installation
    /// tokens last one hour), for a build to fetch the repository: an installation token narrowed to
    /// the one repository and `contents: read` ("Create an installation access token for an app").
    /// `None` with a personal token, which cannot be narrowed.
    pub async fn read_only_token(&self, repo: &str) -> Result<Option<(SecretString, DateTime<Utc>)>, ForgeError> {
        let app = match &self.auth {
            Auth::Token(_) => return Ok(None),
            Auth::App(app) => app,
        };
        let route = self.repo_route(repo)?;
        let name = repo.split_once('/').map(|(_, n)| n).unwrap_or(repo);
        // The installation of the repository's owner, found (and cached) as for every other call.
        self.token_for(repo, false).await?;
        let owner = repo.split('/').next().unwrap_or(repo);
        let id = match app.tokens.lock().await.get(owner).map(|i| i.id).or(app.installation_id) {
            Some(id) => id,
            None => {
                return Err(ForgeError::Invalid { forge: FORGE, message: format!("no app installation for {route}") });
            }
        };
        let jwt = octocrab::auth::create_jwt(octocrab::models::AppId(app.app_id), &app.key)
            .map_err(|e| ForgeError::Invalid { forge: FORGE, message: format!("signing the app's JWT: {e}") })?;
        let jwt = SecretString::from(jwt);
        self.redact.add(&jwt);
        let op = "create read-only installation token";
        let body = serde_json::json!({ "repositories": [name], "permissions": { "contents": "read" } });
        let answer =
            self.send(op, Method::POST, &format!("/app/installations/{id}/access_tokens"), Some(&body), &jwt).await?;
        if !answer.status.is_success() {
            return Err(self.status_error(op, &answer));
        }
        let fresh: AccessToken = self.json(op, &answer)?;
        self.redact.add(&fresh.token);
        Ok(Some((fresh.token, fresh.expires_at)))
    }

    /// `owner/name` → the `/repos/owner/name` prefix of every route, refusing anything that could
    /// change the path (GitHub names are ASCII letters, digits, `.`, `-`, `_`).
    fn repo_route(&self, repo: &str) -> Result<String, ForgeError> {
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
    async fn send(
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
    async fn call(
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
    async fn follow(
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

    /// The App is not installed on `repo`: recorded for `/health/ready`, logged when it is news.
    fn not_installed(&self, repo: &str) -> ForgeError {
        if self.problems.set(FORGE, repo, "app_not_installed") {
            tracing::error!(
                repo,
                "the GitHub App is not installed on this repository: install it there, or remove the project"
            );
        }
        ForgeError::AppNotInstalled { forge: FORGE, repo: repo.to_owned() }
    }

    async fn token_for(&self, repo: &str, renew: bool) -> Result<SecretString, ForgeError> {
        let app = match &self.auth {
            Auth::Token(t) => return Ok(t.clone()),
            Auth::App(app) => app,
        };
        let owner = repo.split('/').next().unwrap_or(repo).to_owned();
        let mut tokens = app.tokens.lock().await;
        if let Some(i) = tokens.get(&owner)
            && !renew
            && (i.expires_at - Utc::now()).to_std().is_ok_and(|left| left > self.refresh_before)
        {
            return Ok(i.token.clone());
        }
        let jwt = octocrab::auth::create_jwt(octocrab::models::AppId(app.app_id), &app.key)
            .map_err(|e| ForgeError::Invalid { forge: FORGE, message: format!("signing the app's JWT: {e}") })?;
        let jwt = SecretString::from(jwt);
        self.redact.add(&jwt);
        let id = match tokens.get(&owner).map(|i| i.id).or(app.installation_id) {
            Some(id) => id,
            None => {
                let op = "find app installation";
                let route = format!("{}/installation", self.repo_route(repo)?);
                // The JWT may not read `/repositories/{id}`: a move is named by the calls that follow.
                let answer = self.follow(op, None, Method::GET, &route, None, &jwt).await?;
                if answer.status == StatusCode::NOT_FOUND {
                    return Err(self.not_installed(repo));
                }
                if !answer.status.is_success() {
                    return Err(self.status_error(op, &answer));
                }
                self.problems.clear(FORGE, repo);
                self.json::<WithId>(op, &answer)?.id
            }
        };
        let op = "create installation token";
        let route = format!("/app/installations/{id}/access_tokens");
        let answer = self.send(op, Method::POST, &route, None, &jwt).await?;
        if !answer.status.is_success() {
            return Err(self.status_error(op, &answer));
        }
        let fresh: AccessToken = self.json(op, &answer)?;
        self.redact.add(&fresh.token);
        tracing::debug!(installation = id, expires_at = %fresh.expires_at, "GitHub App installation token fetched");
        let token = fresh.token.clone();
        tokens.insert(owner, Installation { id, token: fresh.token, expires_at: fresh.expires_at });
        Ok(token)
    }

    fn json<T: DeserializeOwned>(&self, op: &'static str, answer: &Answer) -> Result<T, ForgeError> {
        serde_json::from_slice(&answer.body).map_err(|e| ForgeError::Response {
            forge: FORGE,
            operation: op,
            message: self.redact.scrub(&format!("HTTP {}: {e}", answer.status.as_u16())),
        })
    }

    /// A non-2xx answer. 403 and 429 may be rate limits (GitHub's "Rate limits for the REST API"):
    /// primary (`x-ratelimit-remaining: 0` until `x-ratelimit-reset`) or secondary (`retry-after`,
    /// or "at least one minute" when it names no time); either holds every call of this client.
    fn status_error(&self, operation: &'static str, answer: &Answer) -> ForgeError {
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

    /// The route of the `next` page an answer's `Link` header names. GitHub's links are absolute
    /// (and may name the repository by id, `/repositories/{id}/…`): one that leaves `api_url` is
    /// refused rather than sent the token.
    fn next_page(&self, op: &'static str, answer: &Answer) -> Result<Option<String>, ForgeError> {
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

    /// The check run's fields for `check` (GitHub "Check runs": create and update take the same).
    fn check_run_body(check: &CheckReport) -> Value {
        let mut body = json!({
            "name": CHECK_NAME,
            "output": { "title": clip(&check.title, MAX_TITLE), "summary": clip(&check.summary, MAX_SUMMARY) },
            "actions": [{ "label": "Re-run", "description": "Deploy this draft stand again", "identifier": RERUN_ACTION }],
        });
        if let Some(url) = &check.details_url {
            body["details_url"] = json!(url);
        }
        match check.state {
            CheckState::Queued => body["status"] = json!("queued"),
            CheckState::InProgress => body["status"] = json!("in_progress"),
            done => {
                body["status"] = json!("completed");
                body["completed_at"] = json!(Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                body["conclusion"] = json!(match done {
                    CheckState::Success => "success",
                    CheckState::Failure => "failure",
                    _ => "cancelled",
                });
            }
        }
        body
    }

    async fn deployment_status(
        &self,
        repo: &str,
        prefix: &str,
        id: u64,
        env: &EnvironmentReport,
    ) -> Result<(), ForgeError> {
        let state = match env.state {
            EnvironmentState::InProgress => "in_progress",
            EnvironmentState::Success => "success",
            EnvironmentState::Failure => "failure",
            EnvironmentState::Inactive => "inactive",
        };
        let mut body = json!({
            "state": state,
            "environment": env.environment,
            "description": clip(&env.description, MAX_DESCRIPTION),
            "auto_inactive": true,
        });
        if let Some(url) = env.url.as_ref().filter(|_| env.state != EnvironmentState::Inactive) {
            body["environment_url"] = json!(url);
        }
        if let Some(url) = &env.log_url {
            body["log_url"] = json!(url);
        }
        let route = format!("{prefix}/deployments/{id}/statuses");
        self.call("create deployment status", Method::POST, repo, &route, Some(&body)).await.map(|_| ())
    }

    /// Marks inactive the deployments of `env`'s environment older than `newest` (all of them
    /// without one) that are not inactive yet. draftd's deployments are transient, which GitHub's
    /// `auto_inactive` leaves alone, so each older commit's deployment would otherwise stay
    /// `success` for ever, even after teardown.
    ///
    /// Deployments are listed newest first and each one's newest status read until one is already
    /// inactive: every success and teardown retires all before it, so the ones since the last are
    /// all that can still be active (usually one). They are marked oldest first, so a failure
    /// half-way leaves the same boundary for the retry.
    async fn retire(
        &self,
        repo: &str,
        prefix: &str,
        env: &EnvironmentReport,
        newest: Option<u64>,
    ) -> Result<(), ForgeError> {
        let op = "list deployments";
        let route =
            format!("{prefix}/deployments?environment={}&per_page={RETIRE_PAGE}", encode_segment(&env.environment));
        let listed: Vec<WithId> = self.json(op, &self.call(op, Method::GET, repo, &route, None).await?)?;
        let mut active = Vec::new();
        for d in listed.iter().filter(|d| newest.is_none_or(|n| d.id < n)) {
            let op = "list deployment statuses";
            let route = format!("{prefix}/deployments/{}/statuses?per_page=1", d.id);
            let newest_status: Vec<DeploymentState> =
                self.json(op, &self.call(op, Method::GET, repo, &route, None).await?)?;
            if newest_status.first().is_some_and(|s| s.state == "inactive") {
                break;
            }
            active.push(d.id);
        }
        let description = match newest {
            Some(_) => format!("Superseded by {}", env.sha.get(..7).unwrap_or(&env.sha)),
            None => env.description.clone(),
        };
        let retired = EnvironmentReport {
            state: EnvironmentState::Inactive,
            url: None,
            log_url: None,
            description,
            ..env.clone()
        };
        for id in active.into_iter().rev() {
            match self.deployment_status(repo, prefix, id, &retired).await {
                // Deleted meanwhile: nothing is left to mark.
                Err(e) if e.is_not_found() => {}
                other => other?,
            }
        }
        Ok(())
    }

    async fn create_deployment(&self, repo: &str, prefix: &str, env: &EnvironmentReport) -> Result<u64, ForgeError> {
        let op = "create deployment";
        let body = json!({
            "ref": env.sha,
            "task": "deploy",
            "auto_merge": false,
            // The stand is deployed whatever other checks say; GitHub would otherwise refuse.
            "required_contexts": [],
            "environment": env.environment,
            "description": clip(&env.description, MAX_DESCRIPTION),
            // The stand goes away with its PR: an inactive transient deployment shows as destroyed.
            // GitHub's `auto_inactive` skips transient ones, so `retire` marks them itself.
            "transient_environment": true,
            "production_environment": false,
        });
        let answer = self.call(op, Method::POST, repo, &format!("{prefix}/deployments"), Some(&body)).await?;
        if answer.status != StatusCode::CREATED {
            // 202 means GitHub merged the default branch instead of deploying (auto_merge): never asked.
            return Err(ForgeError::Response {
                forge: FORGE,
                operation: op,
                message: format!("HTTP {} where 201 was expected", answer.status.as_u16()),
            });
        }
        Ok(self.json::<WithId>(op, &answer)?.id)
    }
}

impl ForgeClient for GithubClient {
    async fn upsert_sticky_comment(
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

    async fn edit_comment(
        &self,
        repo: &str,
        _number: u64,
        comment_id: u64,
        body: &str,
    ) -> Result<CommentRef, ForgeError> {
        let prefix = self.repo_route(repo)?;
        within(FORGE, "edit comment", self.timeout, self.patch(repo, &prefix, comment_id, body)).await
    }

    async fn post_comment(&self, repo: &str, number: u64, body: &str) -> Result<CommentRef, ForgeError> {
        let prefix = self.repo_route(repo)?;
        within(FORGE, "create comment", self.timeout, self.create_comment(repo, &prefix, number, body)).await
    }

    async fn report_check(
        &self,
        repo: &str,
        check: &CheckReport,
        previous: Option<u64>,
    ) -> Result<Option<u64>, ForgeError> {
        let prefix = self.repo_route(repo)?;
        if !is_sha(&check.sha) {
            return Err(ForgeError::Invalid { forge: FORGE, message: format!("{:?} is not a commit sha", check.sha) });
        }
        within(FORGE, "report check", self.timeout, async {
            if !self.is_app() {
                let state = match check.state {
                    CheckState::Queued | CheckState::InProgress => "pending",
                    CheckState::Success => "success",
                    CheckState::Failure => "failure",
                    CheckState::Cancelled => "error",
                };
                let mut body = json!({
                    "state": state,
                    "description": clip(&check.title, MAX_DESCRIPTION),
                    "context": CHECK_NAME,
                });
                if let Some(url) = &check.details_url {
                    body["target_url"] = json!(url);
                }
                let route = format!("{prefix}/statuses/{}", check.sha);
                self.call("create commit status", Method::POST, repo, &route, Some(&body)).await?;
                return Ok(None);
            }
            let body = Self::check_run_body(check);
            if let Some(id) = previous {
                let op = "update check run";
                match self.call(op, Method::PATCH, repo, &format!("{prefix}/check-runs/{id}"), Some(&body)).await {
                    Ok(answer) => return Ok(Some(self.json::<WithId>(op, &answer)?.id)),
                    // Deleted, or completed: a completed check run is final (GitHub's checks guide:
                    // a re-run is a new check run), so a new one carries the new state.
                    Err(e) if e.is_not_found() || e.status() == Some(422) => {}
                    Err(e) => return Err(e),
                }
            }
            let op = "create check run";
            let mut body = body;
            body["head_sha"] = json!(check.sha);
            let answer = self.call(op, Method::POST, repo, &format!("{prefix}/check-runs"), Some(&body)).await?;
            Ok(Some(self.json::<WithId>(op, &answer)?.id))
        })
        .await
    }

    async fn report_environment(
        &self,
        repo: &str,
        env: &EnvironmentReport,
        previous: Option<&EnvironmentRef>,
    ) -> Result<Option<EnvironmentRef>, ForgeError> {
        let prefix = self.repo_route(repo)?;
        within(FORGE, "report deployment", self.timeout, async {
            if env.state == EnvironmentState::Inactive {
                // Every deployment of the environment, not only the last: they are transient, and
                // GitHub's `auto_inactive` never touches transient ones.
                self.retire(repo, &prefix, env, None).await?;
                return Ok(previous.cloned());
            }
            let mut made = None;
            if let Some(p) = previous.filter(|p| p.sha == env.sha) {
                match self.deployment_status(repo, &prefix, p.id, env).await {
                    Ok(()) => made = Some(p.clone()),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
            let made = match made {
                Some(made) => made,
                None => {
                    let id = self.create_deployment(repo, &prefix, env).await?;
                    self.deployment_status(repo, &prefix, id, env).await?;
                    EnvironmentRef { id, sha: env.sha.clone() }
                }
            };
            if env.state == EnvironmentState::Success {
                self.retire(repo, &prefix, env, Some(made.id)).await?;
            }
            Ok(Some(made))
        })
        .await
    }

    async fn set_label(&self, repo: &str, number: u64, label: &str, present: bool) -> Result<(), ForgeError> {
        let prefix = self.repo_route(repo)?;
        within(FORGE, "set label", self.timeout, async {
            if present {
                let route = format!("{prefix}/issues/{number}/labels");
                let body = json!({ "labels": [label] });
                self.call("add label", Method::POST, repo, &route, Some(&body)).await.map(|_| ())
            } else {
                let route = format!("{prefix}/issues/{number}/labels/{}", encode_segment(label));
                match self.call("remove label", Method::DELETE, repo, &route, None).await {
                    Err(e) if e.is_not_found() => Ok(()),
                    other => other.map(|_| ()),
                }
            }
        })
        .await
    }

    async fn permission(&self, repo: &str, user: ForgeUser<'_>) -> Result<Permission, ForgeError> {
        let prefix = self.repo_route(repo)?;
        let login = user.login;
        let valid = !login.is_empty()
            && login.trim_end_matches("[bot]").bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(ForgeError::Invalid { forge: FORGE, message: format!("{login:?} is not a GitHub login") });
        }
        let op = "read collaborator permission";
        within(FORGE, op, self.timeout, async {
            let route = format!("{prefix}/collaborators/{}/permission", encode_segment(login));
            match self.call(op, Method::GET, repo, &route, None).await {
                Ok(answer) => {
                    let p: CollaboratorPermission = self.json(op, &answer)?;
                    let write = matches!(p.permission.as_str(), "admin" | "write");
                    let level = match p.role_name {
                        Some(role) if role != p.permission => format!("{} ({role})", p.permission),
                        _ => p.permission,
                    };
                    Ok(Permission { level, write })
                }
                // Not a collaborator, or no such user.
                Err(e) if e.is_not_found() => Ok(Permission { level: "none".into(), write: false }),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// `GET /repos/{owner}/{repo}/pulls?state=open`, oldest first, 100 a page, following the
    /// `Link: <…>; rel="next"` header as GitHub recommends until an answer has none. Oldest first
    /// so a PR opened meanwhile lands on the last page instead of pushing one already read onto the
    /// next (read twice, kept once); a PR closed meanwhile can still hide one from this listing,
    /// which is why resync confirms with [`ForgeClient::pull_request`] before acting on an absence.
    async fn open_pull_requests(&self, repo: &str) -> Result<Vec<PullRequestInfo>, ForgeError> {
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
    async fn pull_request(&self, repo: &str, number: u64) -> Result<PullRequestInfo, ForgeError> {
        let prefix = self.repo_route(repo)?;
        let op = "read pull request";
        within(FORGE, op, self.timeout, async {
            let answer = self.call(op, Method::GET, repo, &format!("{prefix}/pulls/{number}"), None).await?;
            self.json::<PullRequest>(op, &answer)?.info(op)
        })
        .await
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

fn is_sha(s: &str) -> bool {
    (7..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A path segment: unreserved characters as they are, everything else percent-encoded.
fn encode_segment(s: &str) -> String {
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

    #[test]
    fn check_run_states() {
        let mut check = CheckReport {
            sha: "a".repeat(40),
            state: CheckState::InProgress,
            title: "t".into(),
            summary: "s".repeat(70_000),
            details_url: None,
            branch: None,
        };
        let b = GithubClient::check_run_body(&check);
        assert_eq!(b["status"], "in_progress");
        assert!(b.get("conclusion").is_none());
        assert!(b["output"]["summary"].as_str().unwrap().len() <= MAX_SUMMARY);
        assert_eq!(b["actions"][0]["identifier"], RERUN_ACTION);
        check.state = CheckState::Failure;
        let b = GithubClient::check_run_body(&check);
        assert_eq!((b["status"].as_str(), b["conclusion"].as_str()), (Some("completed"), Some("failure")));
    }
}
