//! Signing people in with the forge: the OAuth 2.0 authorization-code flow (with PKCE) of GitHub
//! and GitLab, and the two API calls a sign-in needs with the person's own token (who am I, may I
//! read this repository), as the forges document them:
//!
//! - GitHub, "Authorizing OAuth apps" and "Generating a user access token for a GitHub App":
//!   `GET /login/oauth/authorize`, `POST /login/oauth/access_token` (on the web host, as GitHub
//!   Enterprise serves them), `GET /user` and `GET /repos/{owner}/{repo}` (also under `/api/v3`, where
//!   GitHub Enterprise serves its API). Token errors are HTTP 200 with an `error` field (GitHub's
//!   documented quirk); a private repository the person cannot read is 404, never 403.
//! - GitLab, "OAuth 2.0 identity provider API" (Doorkeeper): `GET /oauth/authorize`,
//!   `POST /oauth/token`, `GET /api/v4/user` and `GET /api/v4/projects/:id` with
//!   `Authorization: Bearer`. Token errors are 400 `invalid_grant`/`invalid_request` and 401
//!   `invalid_client`; a private project the person is no member of is 404.
//!
//! Person tokens (`gho_…`/`ghu_…` on GitHub, 64 hex characters on GitLab) are never the fake's
//! app/bot [`super::TOKEN`], and the bot token is not a person: `GET /user` with it is refused.
//! Nobody types a password: the test says who is signed in in the browser ([`Fake::oauth_sign_in`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use draftd::config::ForgeKind;
use serde_json::Value;
use sha2::{Digest, Sha256};
use url::Url;

use super::{Fake, Inner, failure, path_only, percent_decode};

mod api;
mod grant;

/// Both forges: an authorization code is good for ten minutes, and once.
const CODE_TTL: Duration = Duration::from_secs(600);
/// GitLab's access tokens live two hours; a GitHub App's user tokens eight.
const GITLAB_GRANT_TTL: u64 = 7200;
const GITHUB_APP_GRANT_TTL: u64 = 28_800;
/// The scopes a GitLab application may be given (those an identity provider's client asks for).
const GITLAB_SCOPES: [&str; 8] =
    ["api", "read_api", "read_user", "read_repository", "write_repository", "openid", "profile", "email"];

/// Which kind of GitHub client a registration is; GitLab has one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// A GitHub OAuth app (or a GitLab application): its tokens carry scopes, and on GitHub
    /// reading a private repository takes the `repo` scope.
    OauthApp,
    /// A GitHub App's client: no scopes, tokens that expire in eight hours with a refresh token.
    GithubApp,
}

#[derive(Debug, Clone)]
struct Client {
    id: String,
    secret: String,
    callback: Url,
    kind: ClientKind,
}

#[derive(Debug, Clone)]
struct Code {
    code: String,
    client_id: String,
    /// The `redirect_uri` the authorize request named (`None`: it left it out).
    redirect_uri: Option<String>,
    /// (method, challenge).
    challenge: Option<(String, String)>,
    login: String,
    scope: Vec<String>,
    expires: Instant,
    used: bool,
}

#[derive(Debug, Clone)]
struct PersonToken {
    token: String,
    login: String,
    scope: Vec<String>,
    kind: ClientKind,
    expires: Option<Instant>,
    revoked: bool,
}

/// One call of the token endpoint, as it arrived.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub content_type: Option<String>,
    pub accept: Option<String>,
    /// The client id of an `Authorization: Basic` header, when the client authenticated that way.
    pub basic_client_id: Option<String>,
    /// Query and body parameters (the body's win), `client_secret` and `code_verifier` included.
    pub params: BTreeMap<String, String>,
    pub status: u16,
    /// The `error` answered, if any.
    pub error: Option<String>,
}

/// What the fakes keep about sign-ins.
#[derive(Debug, Default)]
pub struct State {
    clients: Vec<Client>,
    signed_in: Option<String>,
    denies: bool,
    ids: BTreeMap<String, u64>,
    codes: Vec<Code>,
    tokens: Vec<PersonToken>,
    public: BTreeSet<String>,
    /// (repo, username) → access level inherited from the project's group (GitLab).
    group_access: HashMap<(String, String), u64>,
    authorizations: Vec<BTreeMap<String, String>>,
    token_requests: Vec<TokenRequest>,
    issued: u64,
}

impl State {
    fn client(&self, id: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.id == id)
    }
    fn secret(&mut self, prefix: &str, gitlab: bool) -> String {
        self.issued += 1;
        let digest = Sha256::digest(format!("{prefix}{}{:?}", self.issued, Instant::now()).as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        if gitlab { hex } else { format!("{prefix}{}", &hex[..36]) }
    }
    fn mint(&mut self, login: &str, scope: Vec<String>, kind: ClientKind, gitlab: bool) -> PersonToken {
        let prefix = if kind == ClientKind::GithubApp { "ghu_" } else { "gho_" };
        let ttl = match (gitlab, kind) {
            (true, _) => Some(GITLAB_GRANT_TTL),
            (false, ClientKind::GithubApp) => Some(GITHUB_APP_GRANT_TTL),
            (false, ClientKind::OauthApp) => None,
        };
        let t = PersonToken {
            token: self.secret(prefix, gitlab),
            login: login.to_owned(),
            scope,
            kind,
            expires: ttl.map(|s| Instant::now() + Duration::from_secs(s)),
            revoked: false,
        };
        self.tokens.push(t.clone());
        t
    }
}

impl Fake {
    /// Registers an OAuth client: a GitHub OAuth app, or a GitLab application (confidential, every
    /// scope allowed) whose one redirect URI is `callback`.
    pub fn register_oauth_app(&self, client_id: &str, secret: &str, callback: &str) {
        self.register(client_id, secret, callback, ClientKind::OauthApp);
    }
    /// Registers a GitHub App's client id and secret for user sign-in (no scopes; tokens see what
    /// the person can see).
    pub fn gh_register_app_client(&self, client_id: &str, secret: &str, callback: &str) {
        self.register(client_id, secret, callback, ClientKind::GithubApp);
    }
    fn register(&self, id: &str, secret: &str, callback: &str, kind: ClientKind) {
        let callback = Url::parse(callback).expect("callback URL");
        let mut s = self.0.lock().unwrap();
        s.oauth.clients.retain(|c| c.id != id);
        s.oauth.clients.push(Client { id: id.into(), secret: secret.into(), callback, kind });
    }
    /// `login` is signed in on the forge in "the browser": authorize answers for them at once.
    pub fn oauth_sign_in(&self, login: &str) {
        let mut s = self.0.lock().unwrap();
        user_id(&mut s, login);
        s.oauth.signed_in = Some(login.into());
    }
    /// Nobody is signed in: authorize shows the forge's sign-in page.
    pub fn oauth_sign_out(&self) {
        self.0.lock().unwrap().oauth.signed_in = None;
    }
    /// The person clicks "Cancel" instead of "Authorize" (`access_denied`) from now on, or not.
    pub fn oauth_deny(&self, deny: bool) {
        self.0.lock().unwrap().oauth.denies = deny;
    }
    /// The forge's numeric id of `login` (a GitLab member's own id when one is known by that name).
    pub fn oauth_user_id(&self, login: &str) -> u64 {
        user_id(&mut self.0.lock().unwrap(), login)
    }
    /// `repo` is public: any signed-in person may read it. Repositories are private otherwise.
    pub fn oauth_make_public(&self, repo: &str) {
        self.0.lock().unwrap().oauth.public.insert(repo.into());
    }
    /// GitLab: `username` reaches `repo` through its group with `access_level` (`group_access`).
    pub fn gl_grant_group(&self, repo: &str, username: &str, access_level: u64) {
        self.0.lock().unwrap().oauth.group_access.insert((repo.into(), username.into()), access_level);
    }
    /// A token for `login`, as a finished sign-in with `client_id` would have it (for tests that
    /// start past the browser).
    pub fn oauth_issue_token(&self, client_id: &str, login: &str, scope: &str) -> String {
        let mut s = self.0.lock().unwrap();
        let gitlab = s.kind == ForgeKind::Gitlab;
        let kind = s.oauth.client(client_id).expect("register the client first").kind;
        user_id(&mut s, login);
        s.oauth.mint(login, scopes(scope, kind), kind, gitlab).token
    }
    /// Every code given out so far has passed its ten minutes.
    pub fn oauth_expire_codes(&self) {
        let now = Instant::now();
        self.0.lock().unwrap().oauth.codes.iter_mut().for_each(|c| c.expires = now);
    }
    /// Every person token given out so far has expired (GitLab and GitHub App tokens expire; an
    /// OAuth app's on GitHub do not, so those are left alone).
    pub fn oauth_expire_tokens(&self) {
        let now = Instant::now();
        let mut s = self.0.lock().unwrap();
        s.oauth.tokens.iter_mut().filter(|t| t.expires.is_some()).for_each(|t| t.expires = Some(now));
    }
    /// `login` revoked every token they gave (GitHub: "Revoke access"; GitLab: revoked application).
    pub fn oauth_revoke_tokens(&self, login: &str) {
        let mut s = self.0.lock().unwrap();
        s.oauth.tokens.iter_mut().filter(|t| t.login == login).for_each(|t| t.revoked = true);
    }
    /// The query of every authorize request, in order.
    pub fn oauth_authorize_requests(&self) -> Vec<BTreeMap<String, String>> {
        self.0.lock().unwrap().oauth.authorizations.clone()
    }
    /// Every token request, in order.
    pub fn oauth_token_requests(&self) -> Vec<TokenRequest> {
        self.0.lock().unwrap().oauth.token_requests.clone()
    }
}

/// PKCE's S256: BASE64URL-NOPAD(SHA256(verifier)).
pub fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn user_id(s: &mut Inner, login: &str) -> u64 {
    if let Some(id) = s.oauth.ids.get(login) {
        return *id;
    }
    let member = s.gl.members.values().find(|m| m.username == login).map(|m| m.user_id);
    let first = if s.kind == ForgeKind::Github { 5_000_001 } else { 700 };
    let id = member.unwrap_or(first + s.oauth.ids.len() as u64);
    s.oauth.ids.insert(login.to_owned(), id);
    id
}

fn scopes(scope: &str, kind: ClientKind) -> Vec<String> {
    if kind == ClientKind::GithubApp {
        return vec![];
    }
    scope.split([' ', ',']).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

enum Route {
    Authorize,
    Token,
    User,
    Repo(String),
}

/// The answer when `path` is one of the sign-in routes; `None` leaves the request to the forge's
/// other routes.
pub fn route(s: &mut Inner, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Option<Response> {
    let seg: Vec<&str> = path_only(path).trim_start_matches('/').split('/').collect();
    let bearer = header(headers, "authorization").is_some_and(|a| a.starts_with("Bearer "));
    let which = match (s.kind, seg.as_slice()) {
        (ForgeKind::Github, ["login", "oauth", "authorize"]) | (ForgeKind::Gitlab, ["oauth", "authorize"]) => {
            Route::Authorize
        }
        (ForgeKind::Github, ["login", "oauth", "access_token"]) | (ForgeKind::Gitlab, ["oauth", "token"]) => {
            Route::Token
        }
        (ForgeKind::Github, ["user"] | ["api", "v3", "user"]) => Route::User,
        (ForgeKind::Github, ["repos", o, r] | ["api", "v3", "repos", o, r]) => Route::Repo(format!("{o}/{r}")),
        (ForgeKind::Gitlab, ["api", "v4", "user"]) if bearer => Route::User,
        (ForgeKind::Gitlab, ["api", "v4", "projects", p]) if bearer && !p.contains('/') => {
            Route::Repo(percent_decode(p))
        }
        _ => return None,
    };
    let mode = s.script.pop_front().unwrap_or(s.mode);
    if let Some(r) = failure(s.kind, mode) {
        return Some(r);
    }
    let expected = if matches!(which, Route::Token) { Method::POST } else { Method::GET };
    if *method != expected {
        s.violations.push(format!("{method} {path}: the forge documents {expected} only"));
        return Some(html(404, "Not Found", "<h1>Not Found</h1>"));
    }
    let q = query_params(path);
    Some(match (s.kind, which) {
        (ForgeKind::Github, Route::Authorize) => grant::gh_authorize(s, q),
        (ForgeKind::Gitlab, Route::Authorize) => grant::gl_authorize(s, q),
        (_, Route::Token) => grant::token(s, path, headers, body),
        (ForgeKind::Github, Route::User) => api::gh_user(s, path, headers),
        (ForgeKind::Gitlab, Route::User) => api::gl_user(s, headers),
        (ForgeKind::Github, Route::Repo(repo)) => api::gh_repo(s, path, headers, &repo),
        (ForgeKind::Gitlab, Route::Repo(repo)) => api::gl_project(s, headers, &repo),
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn query_params(path: &str) -> BTreeMap<String, String> {
    let q = path.split_once('?').map(|(_, q)| q).unwrap_or("");
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

/// A form-encoded body (what OAuth clients send), or a JSON object of strings.
fn body_params(headers: &HeaderMap, body: &[u8]) -> BTreeMap<String, String> {
    if header(headers, "content-type").is_some_and(|c| c.starts_with("application/json")) {
        let v: Value = serde_json::from_slice(body).unwrap_or_default();
        let o = v.as_object().cloned().unwrap_or_default();
        return o.into_iter().filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_owned()))).collect();
    }
    form_urlencoded::parse(body).into_owned().collect()
}

/// `Authorization: Basic base64(client_id:client_secret)`, each part form-encoded (RFC 6749 2.3.1).
fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let encoded = header(headers, "authorization")?.strip_prefix("Basic ")?.to_owned();
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    let (id, secret) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((percent_decode(id), percent_decode(secret)))
}

/// 302 to `to` with `params` added to its query, and `state` last, unchanged.
fn redirect(to: &Url, params: &[(&str, &str)], state: Option<&str>) -> Response {
    let mut u = to.clone();
    {
        let mut q = u.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
        if let Some(state) = state {
            q.append_pair("state", state);
        }
    }
    (StatusCode::FOUND, [("location", u.to_string())]).into_response()
}

fn html(status: u16, title: &str, body: &str) -> Response {
    let page = format!("<!DOCTYPE html><html><head><title>{title}</title></head><body>{body}</body></html>");
    (StatusCode::from_u16(status).unwrap(), [("content-type", "text/html; charset=utf-8")], page).into_response()
}

/// Doorkeeper's error page, for errors it cannot send back to the client.
fn gl_page(status: u16, error: &str, description: &str) -> Response {
    html(status, "An error has occurred", &format!("<h1>An error has occurred</h1><p id=\"{error}\">{description}</p>"))
}
