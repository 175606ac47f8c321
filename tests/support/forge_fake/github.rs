//! GitHub REST routes of the fake.

use axum::http::{HeaderMap, Method};
use axum::response::Response;
use serde_json::{Value, json};

use super::*;

/// What the fake GitHub keeps besides comments.
#[derive(Debug, Default)]
pub struct State {
    pub next_id: u64,
    pub check_runs: Vec<CheckRun>,
    /// Commit statuses: (repo, sha, state, description, target_url).
    pub statuses: Vec<(String, String, String, String, Option<String>)>,
    pub deployments: Vec<Deployment>,
    pub labels: HashMap<(String, u64), std::collections::BTreeSet<String>>,
    /// (repo, login) → `admin`, `maintain`, `write`, `triage` or `read`.
    pub roles: HashMap<(String, String), String>,
    pub app: Option<App>,
    /// Repositories by GitHub id (`FIRST_REPOSITORY_ID` + index), as pull listings' `Link` headers
    /// name them (`/repositories/{id}/pulls?…`).
    pub repositories: Vec<String>,
    /// Old name → new name of renamed or transferred repositories: their old paths answer 301 (GET)
    /// or 307 (any other method) to `/repositories/{id}/…`, as GitHub's repository redirects do.
    pub renamed: HashMap<String, String>,
    /// GitHub's documented secondary rate limits, enforced when set.
    pub limits: Option<Limits>,
    /// Requests being answered right now, and the secondary-limit answers given.
    pub concurrent: usize,
    pub max_concurrent: usize,
    pub limited: usize,
    /// Per bearer token: (when, endpoint, points, content-creating) of the last hour's requests.
    pub spent: HashMap<String, std::collections::VecDeque<(std::time::Instant, String, u32, bool)>>,
}

/// GitHub's secondary rate limits as "Rate limits for the REST API" documents them: at most 100
/// concurrent requests; at most 900 points a minute per endpoint (1 point for GET, HEAD and
/// OPTIONS, 5 for POST, PATCH, PUT and DELETE); in general at most 80 content-generating requests a
/// minute and 500 an hour. `scale` shortens the minute and the hour alike (0.05: a minute of 3 s).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub concurrent: usize,
    pub points_per_minute: u32,
    pub creates_per_minute: usize,
    pub creates_per_hour: usize,
    pub scale: f64,
}

impl Limits {
    pub fn github(scale: f64) -> Limits {
        Limits { concurrent: 100, points_per_minute: 900, creates_per_minute: 80, creates_per_hour: 500, scale }
    }
}

/// `/repos/o/r/issues/7/comments` → `/repos/o/r/issues/{}/comments`: what GitHub counts as one endpoint.
fn endpoint(method: &Method, seg: &[&str]) -> String {
    let parts: Vec<&str> =
        seg.iter().map(|s| if !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()) { "{}" } else { s }).collect();
    format!("{method} /{}", parts.join("/"))
}

/// [`endpoint`] of a request as [`Seen`] records it.
#[allow(dead_code)] // for benches/soak.rs's calls by endpoint
pub fn endpoint_of(method: &str, path: &str) -> String {
    let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
    endpoint(&method, &path.trim_start_matches('/').split('/').collect::<Vec<_>>())
}

/// The secondary-limit answer for a request over one of GitHub's limits, counting what it spends.
fn secondary_limit(s: &mut Inner, method: &Method, seg: &[&str], bearer: &str) -> Option<Response> {
    let limits = s.gh.limits?;
    let now = std::time::Instant::now();
    let minute = Duration::from_secs(60).mul_f64(limits.scale);
    let hour = Duration::from_secs(3600).mul_f64(limits.scale);
    let endpoint = endpoint(method, seg);
    let write = matches!(*method, Method::POST | Method::PATCH | Method::PUT | Method::DELETE);
    let points = if write { 5 } else { 1 };
    let creates = *method == Method::POST;
    let spent = s.gh.spent.entry(bearer.to_owned()).or_default();
    while spent.front().is_some_and(|(t, ..)| now.duration_since(*t) >= hour) {
        spent.pop_front();
    }
    let in_minute = |e: &&(std::time::Instant, String, u32, bool)| now.duration_since(e.0) < minute;
    let endpoint_points: u32 = spent.iter().filter(in_minute).filter(|e| e.1 == endpoint).map(|e| e.2).sum();
    let creates_minute = spent.iter().filter(in_minute).filter(|e| e.3).count();
    let creates_hour = spent.iter().filter(|e| e.3).count();
    let over = s.gh.concurrent > limits.concurrent
        || endpoint_points + points > limits.points_per_minute
        || (creates && (creates_minute >= limits.creates_per_minute || creates_hour >= limits.creates_per_hour));
    if over {
        s.gh.limited += 1;
        return failure(ForgeKind::Github, Mode::SecondaryLimit(Some(minute.as_secs().max(1))));
    }
    spent.push_back((now, endpoint, points, creates));
    None
}

/// The id of the first repository the fake names (the documented example's `octocat/Hello-World`).
pub const FIRST_REPOSITORY_ID: u64 = 1_296_269;

#[derive(Debug, Clone)]
pub struct CheckRun {
    pub id: u64,
    pub repo: String,
    pub name: String,
    pub head_sha: String,
    /// Every status/conclusion it was given, in order: `in_progress`, `completed/success`, …
    pub history: Vec<String>,
    pub title: String,
    pub summary: String,
    pub actions: Value,
    pub details_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Deployment {
    pub id: u64,
    pub repo: String,
    pub sha: String,
    pub environment: String,
    pub transient: bool,
    pub production: bool,
    /// (state, environment_url) in order.
    pub statuses: Vec<(String, Option<String>)>,
}

/// A GitHub App: JWTs are checked with its public key; installation tokens are issued with `ttl`.
#[derive(Debug, Clone)]
pub struct App {
    pub app_id: u64,
    pub public_pem: Vec<u8>,
    pub installation_id: u64,
    pub ttl: Duration,
    /// (token, expires_at) in the order issued.
    pub issued: Vec<(String, chrono::DateTime<chrono::Utc>)>,
    pub jwts_seen: usize,
    /// Installation lookups (`GET /repos/{o}/{r}/installation`).
    pub lookups: usize,
    /// The body each issued token was asked with (`None`: the installation's whole reach).
    pub narrowings: Vec<Option<Value>>,
    /// Repositories the App is not installed on: their installation lookup answers 404.
    pub not_installed: std::collections::BTreeSet<String>,
}

/// An RSA key pair as GitHub hands out App keys (PKCS#1 PEM), made fresh for the test.
pub fn app_key() -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("app.pem");
    let ok = std::process::Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048")
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl")
        .success();
    assert!(ok, "openssl genrsa");
    let public = std::process::Command::new("openssl").args(["rsa", "-pubout", "-in"]).arg(&key).output().unwrap();
    assert!(public.status.success());
    (std::fs::read(&key).unwrap(), public.stdout)
}

impl Fake {
    /// Enforces GitHub's documented secondary rate limits from now on (see [`Limits`]).
    pub fn gh_enforce_limits(&self, limits: Limits) {
        self.0.lock().unwrap().gh.limits = Some(limits);
    }
    /// How many secondary-limit answers the fake gave.
    pub fn gh_limited(&self) -> usize {
        self.0.lock().unwrap().gh.limited
    }
    /// The most requests it was answering at once.
    pub fn gh_max_concurrent(&self) -> usize {
        self.0.lock().unwrap().gh.max_concurrent
    }
    pub fn gh_grant(&self, repo: &str, login: &str, role: &str) {
        self.0.lock().unwrap().gh.roles.insert((repo.into(), login.into()), role.into());
    }
    pub fn gh_app(&self, app_id: u64, public_pem: Vec<u8>, ttl: Duration) {
        self.0.lock().unwrap().gh.app = Some(App {
            app_id,
            public_pem,
            installation_id: 4242,
            ttl,
            issued: vec![],
            jwts_seen: 0,
            lookups: 0,
            narrowings: vec![],
            not_installed: Default::default(),
        });
    }
    /// The App is not installed on `repo` (or was uninstalled from it).
    pub fn gh_uninstall(&self, repo: &str) {
        self.0.lock().unwrap().gh.app.as_mut().expect("gh_app first").not_installed.insert(repo.into());
    }
    /// `old` is renamed (or transferred) to `new`: what was stored under `old` moves with it, and the
    /// old path redirects.
    pub fn gh_rename(&self, old: &str, new: &str) {
        let mut s = self.0.lock().unwrap();
        let i = repository_id(&mut s, old) - FIRST_REPOSITORY_ID;
        s.gh.repositories[i as usize] = new.to_owned();
        s.gh.renamed.insert(old.to_owned(), new.to_owned());
        for c in s.comments.iter_mut().filter(|c| c.repo == old) {
            c.repo = new.to_owned();
        }
        for p in s.pulls.iter_mut().filter(|p| p.repo == old) {
            p.repo = new.to_owned();
        }
    }
    /// The `draftd` check of `sha` as GitHub shows it on the pull request: its newest check run's
    /// newest state (`completed/success`, …).
    pub fn gh_check_state(&self, repo: &str, sha: &str) -> Option<String> {
        let runs = self.gh_checks(repo, sha);
        runs.iter().filter(|c| c.name == "draftd").max_by_key(|c| c.id).and_then(|c| c.history.last().cloned())
    }
    pub fn gh_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.0.lock().unwrap().gh)
    }
    pub fn gh_checks(&self, repo: &str, sha: &str) -> Vec<CheckRun> {
        self.gh_state(|g| g.check_runs.iter().filter(|c| c.repo == repo && c.head_sha == sha).cloned().collect())
    }
    pub fn gh_deployments(&self, repo: &str) -> Vec<Deployment> {
        self.gh_state(|g| g.deployments.iter().filter(|d| d.repo == repo).cloned().collect())
    }
    pub fn gh_labels(&self, repo: &str, number: u64) -> Vec<String> {
        self.gh_state(|g| {
            g.labels.get(&(repo.to_owned(), number)).map(|l| l.iter().cloned().collect()).unwrap_or_default()
        })
    }
}

fn error(status: u16, message: &str) -> Response {
    json_response(status, &json!({"message": message, "documentation_url": "https://docs.github.com/rest"}), &[])
}

/// Checks `body` is a JSON object whose keys are all in `allowed` and that has every key in
/// `required`; records a violation and answers 422 otherwise.
#[allow(clippy::result_large_err)]
fn fields(s: &mut Inner, what: &str, body: &[u8], allowed: &[&str], required: &[&str]) -> Result<Value, Response> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            s.violations.push(format!("{what}: body is not a JSON object: {}", String::from_utf8_lossy(body)));
            return Err(error(422, "Invalid request."));
        }
    };
    let o = v.as_object().unwrap();
    let unknown: Vec<&String> = o.keys().filter(|k| !allowed.contains(&k.as_str())).collect();
    let missing: Vec<&&str> = required.iter().filter(|k| !o.contains_key(**k)).collect();
    if !unknown.is_empty() || !missing.is_empty() {
        s.violations.push(format!("{what}: unknown fields {unknown:?}, missing {missing:?}"));
        return Err(error(422, "Invalid request."));
    }
    Ok(v)
}

fn check_limit(s: &mut Inner, what: &str, v: &Value, max: usize) {
    if let Some(t) = v.as_str()
        && t.chars().count() > max
    {
        s.violations.push(format!("{what}: {} characters, at most {max}", t.chars().count()));
    }
}

/// The App's JWT: RS256, signed by the app's key, `iss` the app id, at most 10 minutes long.
fn valid_jwt(app: &App, token: &str) -> bool {
    use octocrab::jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
    #[derive(serde::Deserialize)]
    struct Claims {
        iss: Value,
        iat: i64,
        exp: i64,
    }
    let Ok(key) = DecodingKey::from_rsa_pem(&app.public_pem) else { return false };
    let mut v = Validation::new(Algorithm::RS256);
    v.required_spec_claims = ["exp", "iat"].iter().map(|s| s.to_string()).collect();
    match decode::<Claims>(token, &key, &v) {
        Ok(d) => {
            let iss = d.claims.iss.as_u64().or_else(|| d.claims.iss.as_str().and_then(|s| s.parse().ok()));
            iss == Some(app.app_id) && d.claims.exp - d.claims.iat <= 11 * 60
        }
        Err(e) => {
            eprintln!("fake GitHub: JWT refused: {e}");
            false
        }
    }
}

/// Routes only an App's JWT may call.
fn jwt_route(seg: &[&str]) -> bool {
    matches!(seg, ["app", ..] | ["repos", _, _, "installation"])
}

/// GitHub's App endpoints.
fn app_route(s: &mut Inner, method: &Method, seg: &[&str], body: &[u8]) -> Response {
    let base = s.base.clone();
    // "Create an installation access token for an app": an optional body narrowing the token to
    // `repositories` (names) or `repository_ids`, and to `permissions` (name → read|write), no wider
    // than the installation's own; anything else is refused with 422.
    let mut narrowed: Option<Value> = None;
    if matches!((method.as_str(), seg), ("POST", ["app", "installations", _, "access_tokens"])) && !body.is_empty() {
        let allowed = ["repositories", "repository_ids", "permissions"];
        let v = match fields(s, "create installation token", body, &allowed, &[]) {
            Ok(v) => v,
            Err(r) => return r,
        };
        let names_ok = v.get("repositories").is_none_or(|r| {
            r.as_array().is_some_and(|a| a.iter().all(|n| n.as_str().is_some_and(|n| !n.contains('/'))))
        });
        let permissions_ok = v
            .get("permissions")
            .is_none_or(|p| p.as_object().is_some_and(|o| o.values().all(|l| l == "read" || l == "write")));
        if !names_ok || !permissions_ok {
            s.violations.push(format!("create installation token: malformed narrowing {v}"));
            return error(422, "Invalid request.");
        }
        narrowed = Some(v);
    }
    let app = s.gh.app.as_mut().unwrap();
    match (method.as_str(), seg) {
        ("GET", ["repos", o, r, "installation"]) if app.not_installed.contains(&format!("{o}/{r}")) => {
            // "Get a repository installation for the authenticated app": 404 when it is not installed.
            app.lookups += 1;
            error(404, "Not Found")
        }
        ("GET", ["repos", o, r, "installation"]) => {
            app.lookups += 1;
            let mut v: Value =
                serde_json::from_str(include_str!("../../fixtures/forge/github/installation.json")).unwrap();
            v["id"] = json!(app.installation_id);
            v["app_id"] = json!(app.app_id);
            v["access_tokens_url"] = json!(format!("{base}/app/installations/{}/access_tokens", app.installation_id));
            v["account"]["login"] = json!(o);
            let _ = r;
            json_response(200, &v, &[])
        }
        ("POST", ["app", "installations", id, "access_tokens"]) if id.parse() == Ok(app.installation_id) => {
            let n = app.issued.len() + 1;
            let token = format!("ghs_fakeinstallationtoken{n:04}");
            let expires = chrono::Utc::now() + chrono::Duration::from_std(app.ttl).unwrap();
            app.issued.push((token.clone(), expires));
            app.narrowings.push(narrowed.clone());
            let mut v: Value =
                serde_json::from_str(include_str!("../../fixtures/forge/github/installation_token.json")).unwrap();
            v["token"] = json!(token);
            v["expires_at"] = json!(expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            if let Some(p) = narrowed.as_ref().and_then(|n| n.get("permissions")) {
                v["permissions"] = p.clone();
            }
            json_response(201, &v, &[])
        }
        _ => {
            s.violations.push(format!("undocumented App route {method} {}", seg.join("/")));
            error(404, "Not Found")
        }
    }
}

pub fn github_json(c: &Comment, base: &str) -> Value {
    let mut v: Value = serde_json::from_str(include_str!("../../fixtures/forge/github/issue_comment.json")).unwrap();
    v["id"] = json!(c.id);
    v["body"] = json!(c.body);
    v["url"] = json!(format!("{base}/repos/{}/issues/comments/{}", c.repo, c.id));
    v["issue_url"] = json!(format!("{base}/repos/{}/issues/{}", c.repo, c.number));
    v["html_url"] = json!(format!("https://github.com/{}/pull/{}#issuecomment-{}", c.repo, c.number, c.id));
    v
}

/// GitHub's `Link` header for page `page_no` of `pages` (none when there is one page): `url` is
/// the list's URL with its other query parameters, ending in `?` or `&`.
fn link_header(url: &str, page_no: usize, pages: usize) -> Vec<(&'static str, String)> {
    let link = |p: usize, rel: &str| format!("<{url}page={p}>; rel=\"{rel}\"");
    let mut links = Vec::new();
    if page_no < pages {
        links.push(link(page_no + 1, "next"));
        links.push(link(pages, "last"));
    }
    if page_no > 1 {
        links.push(link(page_no - 1, "prev"));
        links.push(link(1, "first"));
    }
    if links.is_empty() { vec![] } else { vec![("link", links.join(", "))] }
}

fn repository_id(s: &mut Inner, repo: &str) -> u64 {
    let i = match s.gh.repositories.iter().position(|r| r == repo) {
        Some(i) => i,
        None => {
            s.gh.repositories.push(repo.to_owned());
            s.gh.repositories.len() - 1
        }
    };
    FIRST_REPOSITORY_ID + i as u64
}

/// The documented repository object, renamed to `full_name`.
pub fn repository_json(template: &Value, full_name: &str) -> Value {
    let mut v = template.clone();
    let (owner, name) = full_name.split_once('/').unwrap();
    v["full_name"] = json!(full_name);
    v["name"] = json!(name);
    v["owner"]["login"] = json!(owner);
    v["html_url"] = json!(format!("https://github.com/{full_name}"));
    v["url"] = json!(format!("https://api.github.com/repos/{full_name}"));
    v["fork"] = json!(false);
    v
}

/// A PR as `GET …/pulls/{number}` (`detail`) or an item of `GET …/pulls` shows it.
pub fn pull_json(p: &Pull, detail: bool) -> Value {
    let mut v: Value = if detail {
        serde_json::from_str(include_str!("../../fixtures/forge/github/pull.json")).unwrap()
    } else {
        let list: Value = serde_json::from_str(include_str!("../../fixtures/forge/github/pulls.json")).unwrap();
        list[0].clone()
    };
    let (merged, closed) = (p.state == "merged", p.state == "closed" || p.state == "merged");
    let at = json!(p.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    v["number"] = json!(p.number);
    v["url"] = json!(format!("https://api.github.com/repos/{}/pulls/{}", p.repo, p.number));
    v["html_url"] = json!(format!("https://github.com/{}/pull/{}", p.repo, p.number));
    v["state"] = json!(if closed { "closed" } else { "open" });
    v["locked"] = json!(false);
    v["active_lock_reason"] = Value::Null;
    v["draft"] = json!(p.draft);
    v["updated_at"] = at.clone();
    v["closed_at"] = if closed { at.clone() } else { Value::Null };
    v["merged_at"] = if merged { at } else { Value::Null };
    v["merge_commit_sha"] = if merged { v["merge_commit_sha"].clone() } else { Value::Null };
    let label = v["labels"][0].clone();
    v["labels"] = p
        .labels
        .iter()
        .map(|name| {
            let mut l = label.clone();
            l["name"] = json!(name);
            l
        })
        .collect();
    let repo = v["base"]["repo"].clone();
    let owner = p.head_repo.as_deref().unwrap_or("ghost/deleted").split('/').next().unwrap().to_owned();
    v["head"]["label"] = json!(format!("{owner}:{}", p.branch));
    v["head"]["ref"] = json!(p.branch);
    v["head"]["sha"] = json!(p.sha);
    v["head"]["repo"] = p.head_repo.as_deref().map(|r| repository_json(&repo, r)).unwrap_or(Value::Null);
    v["base"]["ref"] = json!("main");
    v["base"]["repo"] = repository_json(&repo, &p.repo);
    if detail {
        v["merged"] = json!(merged);
        v["merged_by"] = if merged { v["merged_by"].clone() } else { Value::Null };
        v["mergeable"] = if closed { Value::Null } else { json!(true) };
    }
    v
}

/// `GET /repos/{owner}/{repo}/pulls` (or `/repositories/{id}/pulls`, where `Link` points): the
/// documented query parameters only, `state` `open` by default, `sort` `created` by default,
/// descending unless `direction=asc`.
fn list_pulls(s: &mut Inner, method: &Method, path: &str, repo: &str) -> Response {
    const PARAMS: [&str; 7] = ["state", "head", "base", "sort", "direction", "per_page", "page"];
    let q = query(path);
    let valid = |k: &str, ok: &[&str]| q.get(k).is_none_or(|v| ok.contains(&v.as_str()));
    let unknown: Vec<&String> = q.keys().filter(|k| !PARAMS.contains(&k.as_str())).collect();
    if !unknown.is_empty()
        || !valid("state", &["open", "closed", "all"])
        || !valid("sort", &["created", "updated", "popularity", "long-running"])
        || !valid("direction", &["asc", "desc"])
    {
        s.violations.push(format!("{method} {path}: query not as documented"));
        return error(422, "Validation Failed");
    }
    let state = q.get("state").map(String::as_str).unwrap_or("open");
    let mut all: Vec<&Pull> = s
        .pulls
        .iter()
        .filter(|p| p.repo == repo)
        .filter(|p| match state {
            "open" => p.state == "open" || p.state == "locked",
            "closed" => p.state == "closed" || p.state == "merged",
            _ => true,
        })
        .collect();
    match q.get("sort").map(String::as_str) {
        Some("updated") => all.sort_by_key(|p| p.updated_at),
        _ => all.sort_by_key(|p| p.number),
    }
    // GitHub: `desc` by default when sorting by creation (or not saying), `asc` otherwise.
    let default_desc = matches!(q.get("sort").map(String::as_str), None | Some("created"));
    if q.get("direction").map(String::as_str).map_or(default_desc, |d| d == "desc") {
        all.reverse();
    }
    let all: Vec<Pull> = all.into_iter().cloned().collect();
    let (items, page_no, pages) = page(&all, &q, 30);
    let others: String = path
        .split_once('?')
        .map(|(_, raw)| raw.split('&').filter(|kv| !kv.starts_with("page=")).map(|kv| format!("{kv}&")).collect())
        .unwrap_or_default();
    let id = repository_id(s, repo);
    let headers = link_header(&format!("{}/repositories/{id}/pulls?{others}", s.base), page_no, pages);
    json_response(200, &Value::Array(items.iter().map(|p| pull_json(p, false)).collect()), &headers)
}

/// `/repositories/{id}/rest…` is `/repos/{owner}/{name}/rest…` of the repository's current name.
fn by_id(s: &Inner, path: &str) -> Option<String> {
    let (only, query) = path.split_once('?').map(|(p, q)| (p, format!("?{q}"))).unwrap_or((path, String::new()));
    let seg: Vec<&str> = only.trim_start_matches('/').split('/').collect();
    let ["repositories", id, rest @ ..] = seg.as_slice() else { return None };
    let i = id.parse::<u64>().ok()?.checked_sub(FIRST_REPOSITORY_ID)?;
    let name = s.gh.repositories.get(i as usize)?;
    (!rest.is_empty()).then(|| format!("/repos/{name}/{}{query}", rest.join("/")))
}

/// Repository redirects ("Best practices for using the REST API", follow redirects): a renamed or
/// transferred repository's old path answers 301 for GET and 307 for other methods, `Location`
/// naming the repository by id, with a `Moved Permanently` body; `GET /repositories/{id}` shows
/// the repository under its current name.
fn moved(s: &mut Inner, method: &Method, path: &str, seg: &[&str]) -> Option<Response> {
    match seg {
        ["repositories", id] if method == Method::GET => {
            let i = id.parse::<u64>().ok()?.checked_sub(FIRST_REPOSITORY_ID)?;
            let name = s.gh.repositories.get(i as usize)?.clone();
            let template: Value = serde_json::from_str(include_str!("../../fixtures/forge/github/pull.json")).unwrap();
            let mut v = repository_json(&template["base"]["repo"], &name);
            v["id"] = json!(FIRST_REPOSITORY_ID + i);
            Some(json_response(200, &v, &[]))
        }
        ["repos", o, r, rest @ ..] => {
            let old = format!("{o}/{r}");
            let new = s.gh.renamed.get(&old)?.clone();
            let id = repository_id(s, &new);
            let query = path.split_once('?').map(|(_, q)| format!("?{q}")).unwrap_or_default();
            let tail = if rest.is_empty() { String::new() } else { format!("/{}", rest.join("/")) };
            let location = format!("{}/repositories/{id}{tail}{query}", s.base);
            let status = if method == Method::GET || method == Method::HEAD { 301 } else { 307 };
            let body = json!({
                "message": "Moved Permanently",
                "url": location,
                "documentation_url": "https://docs.github.com/rest/guides/best-practices-for-using-the-rest-api#follow-redirects",
            });
            Some(json_response(status, &body, &[("location", location.clone())]))
        }
        _ => None,
    }
}

pub fn route(s: &mut Inner, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    if let Some(canonical) = by_id(s, path) {
        return route(s, method, &canonical, headers, body);
    }
    let seg: Vec<&str> = path_only(path).trim_start_matches('/').split('/').collect();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    // What GitHub's REST docs ask of every request.
    if header("accept").as_deref() != Some("application/vnd.github+json") {
        s.violations.push(format!("{method} {path}: Accept {:?}", header("accept")));
    }
    if header("x-github-api-version").as_deref() != Some("2022-11-28") {
        s.violations.push(format!("{method} {path}: X-GitHub-Api-Version {:?}", header("x-github-api-version")));
    }
    if header("user-agent").is_none() {
        s.violations.push(format!("{method} {path}: no User-Agent"));
    }
    let auth = header("authorization");
    let bearer = auth.as_deref().and_then(|a| a.strip_prefix("Bearer ")).unwrap_or_default().to_owned();
    let authorised = match &mut s.gh.app {
        Some(app) if jwt_route(&seg) => {
            let ok = valid_jwt(app, &bearer);
            app.jwts_seen += usize::from(ok);
            ok
        }
        Some(app) => app.issued.iter().any(|(t, exp)| *t == bearer && *exp > chrono::Utc::now()),
        None => bearer == TOKEN,
    };
    if !authorised {
        if s.mode != Mode::Hostile {
            s.violations.push(format!("{method} {path}: Authorization {auth:?}"));
        }
        let message =
            if s.mode == Mode::Hostile { format!("Bad credentials: {TOKEN}") } else { "Bad credentials".into() };
        return json_response(
            401,
            &json!({"message": message, "documentation_url": "https://docs.github.com/rest"}),
            &[],
        );
    }
    if let Some(r) = moved(s, method, path, &seg) {
        return r;
    }
    if s.gh.app.is_some() && jwt_route(&seg) {
        return app_route(s, method, &seg, body);
    }
    if let Some(r) = secondary_limit(s, method, &seg, &bearer) {
        return r;
    }
    if let Some(r) = random_fault(s) {
        return r;
    }
    let mode = s.script.pop_front().unwrap_or(s.mode);
    if let Some(r) = failure(s.kind, mode) {
        return r;
    }
    let not_found = || {
        json_response(404, &json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}), &[])
    };
    let new_body = |s: &mut Inner| -> Result<String, Box<Response>> {
        let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        let v: Option<Value> = serde_json::from_slice(body).ok();
        match v.as_ref().and_then(|v| v.as_object()) {
            Some(o)
                if ct.starts_with("application/json")
                    && o.len() == 1
                    && o.get("body").is_some_and(Value::is_string) =>
            {
                Ok(o["body"].as_str().unwrap().to_owned())
            }
            _ => {
                s.violations
                    .push(format!("{method} {path}: content-type {ct:?}, body {}", String::from_utf8_lossy(body)));
                Err(Box::new(json_response(
                    422,
                    &json!({"message": "Invalid request.", "documentation_url": "https://docs.github.com/rest"}),
                    &[],
                )))
            }
        }
    };
    match (method.as_str(), seg.as_slice()) {
        ("GET", ["repos", o, r, "issues", n, "comments"]) => {
            let repo = format!("{o}/{r}");
            let number: u64 = n.parse().unwrap();
            let all: Vec<Comment> =
                s.comments.iter().filter(|c| c.repo == repo && c.number == number).cloned().collect();
            let q = query(path);
            let (items, page_no, pages) = page(&all, &q, 30);
            let per_page = q.get("per_page").cloned().unwrap_or_else(|| "30".into());
            let url = format!("{}/repos/{repo}/issues/{number}/comments?per_page={per_page}&", s.base);
            let v = Value::Array(items.iter().map(|c| github_json(c, &s.base)).collect());
            json_response(200, &v, &link_header(&url, page_no, pages))
        }
        ("GET", ["repos", o, r, "pulls"]) => list_pulls(s, method, path, &format!("{o}/{r}")),
        ("GET", ["repositories", id, "pulls"]) => {
            let known = id.parse::<u64>().ok().and_then(|id| id.checked_sub(FIRST_REPOSITORY_ID));
            match known.and_then(|i| s.gh.repositories.get(i as usize)).cloned() {
                Some(repo) => list_pulls(s, method, path, &repo),
                None => not_found(),
            }
        }
        ("GET", ["repos", o, r, "pulls", n]) => {
            if path.contains('?') {
                s.violations.push(format!("{method} {path}: no query parameters are documented"));
            }
            let repo = format!("{o}/{r}");
            match s.pulls.iter().find(|p| p.repo == repo && n.parse() == Ok(p.number)) {
                Some(p) => json_response(200, &pull_json(p, true), &[]),
                None => not_found(),
            }
        }
        ("POST", ["repos", o, r, "issues", n, "comments"]) => {
            let body = match new_body(s) {
                Ok(b) => b,
                Err(r) => return *r,
            };
            let id = s.next_id;
            s.next_id += 1;
            let c = Comment { id, repo: format!("{o}/{r}"), number: n.parse().unwrap(), body, system: false };
            s.comments.push(c.clone());
            json_response(
                201,
                &github_json(&c, &s.base),
                &[("location", format!("{}/repos/{o}/{r}/issues/comments/{id}", s.base))],
            )
        }
        ("PATCH", ["repos", o, r, "issues", "comments", id]) => {
            let body = match new_body(s) {
                Ok(b) => b,
                Err(r) => return *r,
            };
            let repo = format!("{o}/{r}");
            let id: u64 = id.parse().unwrap();
            let Some(c) = s.comments.iter_mut().find(|c| c.id == id && c.repo == repo) else { return not_found() };
            c.body = body;
            let c = c.clone();
            json_response(200, &github_json(&c, &s.base), &[])
        }
        ("POST", ["repos", o, r, "check-runs"]) | ("PATCH", ["repos", o, r, "check-runs", _]) => {
            if s.gh.app.is_none() {
                return error(403, "You must authenticate via a GitHub App.");
            }
            let what = format!("{method} {path}");
            let allowed = [
                "name",
                "head_sha",
                "details_url",
                "external_id",
                "status",
                "started_at",
                "conclusion",
                "completed_at",
                "output",
                "actions",
            ];
            let required: &[&str] = if method == "POST" { &["name", "head_sha"] } else { &[] };
            let v = match fields(s, &what, body, &allowed, required) {
                Ok(v) => v,
                Err(r) => return r,
            };
            let status = v.get("status").and_then(Value::as_str).unwrap_or("queued").to_owned();
            let conclusion = v.get("conclusion").and_then(Value::as_str).map(str::to_owned);
            if !["queued", "in_progress", "completed"].contains(&status.as_str())
                || (status == "completed") != conclusion.is_some()
            {
                s.violations.push(format!("{what}: status {status:?} with conclusion {conclusion:?}"));
            }
            if let Some(out) = v.get("output") {
                if !out.get("title").is_some_and(Value::is_string) || !out.get("summary").is_some_and(Value::is_string)
                {
                    s.violations.push(format!("{what}: output needs title and summary"));
                }
                check_limit(s, &format!("{what} output.summary"), &out["summary"], 65_535);
            }
            if let Some(actions) = v.get("actions").and_then(Value::as_array) {
                if actions.len() > 3 {
                    s.violations.push(format!("{what}: {} actions", actions.len()));
                }
                for a in actions {
                    check_limit(s, "action label", &a["label"], 20);
                    check_limit(s, "action description", &a["description"], 40);
                    check_limit(s, "action identifier", &a["identifier"], 20);
                }
            }
            let state = match &conclusion {
                Some(c) => format!("{status}/{c}"),
                None => status.clone(),
            };
            let repo = format!("{o}/{r}");
            let (id, head_sha) = if method == "POST" {
                s.gh.next_id += 1;
                let id = 7_000_000 + s.gh.next_id;
                let sha = v["head_sha"].as_str().unwrap_or_default().to_owned();
                s.gh.check_runs.push(CheckRun {
                    id,
                    repo: repo.clone(),
                    name: v["name"].as_str().unwrap_or_default().to_owned(),
                    head_sha: sha.clone(),
                    history: vec![],
                    title: String::new(),
                    summary: String::new(),
                    actions: json!([]),
                    details_url: None,
                });
                (id, sha)
            } else {
                let id: u64 = seg[4].parse().unwrap_or(0);
                match s.gh.check_runs.iter().find(|c| c.id == id && c.repo == repo) {
                    // A completed check run's status and conclusion are final: a re-run is a new
                    // check run (GitHub's checks guide), so an app cannot turn red back to green.
                    Some(c)
                        if c.history.last().is_some_and(|h| h.starts_with("completed"))
                            && (v.get("status").is_some() || v.get("conclusion").is_some()) =>
                    {
                        s.violations.push(format!("{what}: changes completed check run {id} ({:?})", c.history));
                        return error(422, "Validation Failed");
                    }
                    Some(c) => (id, c.head_sha.clone()),
                    None => return not_found(),
                }
            };
            let c = s.gh.check_runs.iter_mut().find(|c| c.id == id).unwrap();
            c.history.push(state);
            if let Some(out) = v.get("output") {
                c.title = out["title"].as_str().unwrap_or_default().to_owned();
                c.summary = out["summary"].as_str().unwrap_or_default().to_owned();
            }
            if let Some(a) = v.get("actions") {
                c.actions = a.clone();
            }
            if let Some(u) = v.get("details_url").and_then(Value::as_str) {
                c.details_url = Some(u.to_owned());
            }
            let mut answer: Value =
                serde_json::from_str(include_str!("../../fixtures/forge/github/check_run.json")).unwrap();
            answer["id"] = json!(id);
            answer["head_sha"] = json!(head_sha);
            answer["status"] = json!(status);
            answer["conclusion"] = json!(conclusion);
            json_response(if method == "POST" { 201 } else { 200 }, &answer, &[])
        }
        ("POST", ["repos", o, r, "statuses", sha]) => {
            let what = format!("{method} {path}");
            let v = match fields(s, &what, body, &["state", "target_url", "description", "context"], &["state"]) {
                Ok(v) => v,
                Err(r) => return r,
            };
            let state = v["state"].as_str().unwrap_or_default().to_owned();
            if !["error", "failure", "pending", "success"].contains(&state.as_str()) {
                s.violations.push(format!("{what}: state {state:?}"));
                return error(422, "Validation Failed");
            }
            check_limit(s, &format!("{what} description"), &v["description"], 140);
            let description = v["description"].as_str().unwrap_or_default().to_owned();
            let target = v.get("target_url").and_then(Value::as_str).map(str::to_owned);
            s.gh.statuses.push((format!("{o}/{r}"), (*sha).to_owned(), state.clone(), description, target));
            let mut answer: Value =
                serde_json::from_str(include_str!("../../fixtures/forge/github/commit_status.json")).unwrap();
            answer["state"] = json!(state);
            answer["context"] = v.get("context").cloned().unwrap_or(json!("default"));
            json_response(201, &answer, &[])
        }
        ("POST", ["repos", o, r, "deployments"]) => {
            let what = format!("{method} {path}");
            let allowed = [
                "ref",
                "task",
                "auto_merge",
                "required_contexts",
                "payload",
                "environment",
                "description",
                "transient_environment",
                "production_environment",
            ];
            let v = match fields(s, &what, body, &allowed, &["ref"]) {
                Ok(v) => v,
                Err(r) => return r,
            };
            if v.get("auto_merge") != Some(&json!(false)) || v.get("required_contexts") != Some(&json!([])) {
                // GitHub would merge the default branch in, or wait for every other check: not a preview.
                s.violations.push(format!("{what}: auto_merge/required_contexts {v}"));
            }
            s.gh.next_id += 1;
            let id = 9_000_000 + s.gh.next_id;
            let d = Deployment {
                id,
                repo: format!("{o}/{r}"),
                sha: v["ref"].as_str().unwrap_or_default().to_owned(),
                environment: v.get("environment").and_then(Value::as_str).unwrap_or("production").to_owned(),
                transient: v.get("transient_environment") == Some(&json!(true)),
                production: v.get("production_environment") == Some(&json!(true)),
                statuses: vec![],
            };
            let mut answer: Value =
                serde_json::from_str(include_str!("../../fixtures/forge/github/deployment.json")).unwrap();
            answer["id"] = json!(id);
            answer["sha"] = json!(d.sha);
            answer["ref"] = json!(d.sha);
            answer["environment"] = json!(d.environment);
            s.gh.deployments.push(d);
            json_response(201, &answer, &[])
        }
        ("POST", ["repos", o, r, "deployments", id, "statuses"]) => {
            let what = format!("{method} {path}");
            let allowed =
                ["state", "target_url", "log_url", "description", "environment", "environment_url", "auto_inactive"];
            let v = match fields(s, &what, body, &allowed, &["state"]) {
                Ok(v) => v,
                Err(r) => return r,
            };
            let state = v["state"].as_str().unwrap_or_default().to_owned();
            let states = ["error", "failure", "inactive", "in_progress", "queued", "pending", "success"];
            if !states.contains(&state.as_str()) {
                s.violations.push(format!("{what}: state {state:?}"));
                return error(422, "Validation Failed");
            }
            check_limit(s, &format!("{what} description"), &v["description"], 140);
            let repo = format!("{o}/{r}");
            let id: u64 = id.parse().unwrap_or(0);
            let Some(d) = s.gh.deployments.iter_mut().find(|d| d.id == id && d.repo == repo) else {
                return not_found();
            };
            let url = v.get("environment_url").and_then(Value::as_str).map(str::to_owned);
            d.statuses.push((state.clone(), url));
            let environment = d.environment.clone();
            // `auto_inactive` (default true), exactly as documented: a new `success` status adds an
            // `inactive` one to every prior deployment of the repository and environment that is
            // neither transient nor production and had a success state. Transient deployments only
            // go inactive when told so.
            if state == "success" && v.get("auto_inactive") != Some(&json!(false)) {
                for prior in s.gh.deployments.iter_mut().filter(|p| {
                    p.repo == repo && p.environment == environment && p.id < id && !p.transient && !p.production
                }) {
                    if prior.statuses.last().is_some_and(|(st, _)| st == "success") {
                        prior.statuses.push(("inactive".into(), None));
                    }
                }
            }
            let mut answer: Value =
                serde_json::from_str(include_str!("../../fixtures/forge/github/deployment_status.json")).unwrap();
            answer["state"] = json!(state);
            json_response(201, &answer, &[])
        }
        ("GET", ["repos", o, r, "deployments"]) => {
            // "List deployments": filters `sha`, `ref`, `task`, `environment`; newest first.
            let q = query(path);
            let unknown: Vec<&String> = q
                .keys()
                .filter(|k| !["sha", "ref", "task", "environment", "per_page", "page"].contains(&k.as_str()))
                .collect();
            if !unknown.is_empty() {
                s.violations.push(format!("{method} {path}: query not as documented"));
            }
            let repo = format!("{o}/{r}");
            let environment = q.get("environment").map(|e| percent_decode(e));
            let sha = q.get("sha").cloned();
            let mut all: Vec<Deployment> =
                s.gh.deployments
                    .iter()
                    .filter(|d| d.repo == repo)
                    .filter(|d| environment.as_ref().is_none_or(|e| *e == d.environment))
                    .filter(|d| sha.as_ref().is_none_or(|x| *x == d.sha))
                    .cloned()
                    .collect();
            all.reverse();
            let (items, page_no, pages) = page(&all, &q, 30);
            let template: Value =
                serde_json::from_str(include_str!("../../fixtures/forge/github/deployment.json")).unwrap();
            let list: Vec<Value> = items
                .iter()
                .map(|d| {
                    let mut v = template.clone();
                    v["id"] = json!(d.id);
                    v["sha"] = json!(d.sha);
                    v["ref"] = json!(d.sha);
                    v["environment"] = json!(d.environment);
                    v["original_environment"] = json!(d.environment);
                    v["transient_environment"] = json!(d.transient);
                    v["production_environment"] = json!(d.production);
                    v
                })
                .collect();
            let others: String = path
                .split_once('?')
                .map(|(_, raw)| {
                    raw.split('&').filter(|kv| !kv.starts_with("page=")).map(|kv| format!("{kv}&")).collect()
                })
                .unwrap_or_default();
            let url = format!("{}/repos/{repo}/deployments?{others}", s.base);
            json_response(200, &Value::Array(list), &link_header(&url, page_no, pages))
        }
        ("GET", ["repos", o, r, "deployments", id, "statuses"]) => {
            // "List deployment statuses": newest first.
            let q = query(path);
            if q.keys().any(|k| !["per_page", "page"].contains(&k.as_str())) {
                s.violations.push(format!("{method} {path}: query not as documented"));
            }
            let repo = format!("{o}/{r}");
            let id: u64 = id.parse().unwrap_or(0);
            let Some(d) = s.gh.deployments.iter().find(|d| d.id == id && d.repo == repo) else {
                return not_found();
            };
            let mut all = d.statuses.clone();
            all.reverse();
            let (items, page_no, pages) = page(&all, &q, 30);
            let template: Value =
                serde_json::from_str(include_str!("../../fixtures/forge/github/deployment_status.json")).unwrap();
            let list: Vec<Value> = items
                .iter()
                .map(|(state, url)| {
                    let mut v = template.clone();
                    v["state"] = json!(state);
                    v["environment"] = json!(d.environment);
                    v["environment_url"] = json!(url.clone().unwrap_or_default());
                    v
                })
                .collect();
            let url = format!("{}/repos/{repo}/deployments/{id}/statuses?", s.base);
            json_response(200, &Value::Array(list), &link_header(&url, page_no, pages))
        }
        ("POST", ["repos", o, r, "issues", n, "labels"]) => {
            let what = format!("{method} {path}");
            let v = match fields(s, &what, body, &["labels"], &["labels"]) {
                Ok(v) => v,
                Err(r) => return r,
            };
            let Some(names) = v["labels"].as_array().filter(|a| a.iter().all(Value::is_string)) else {
                s.violations.push(format!("{what}: labels is not an array of names"));
                return error(422, "Invalid request.");
            };
            let set = s.gh.labels.entry((format!("{o}/{r}"), n.parse().unwrap())).or_default();
            set.extend(names.iter().map(|l| l.as_str().unwrap().to_owned()));
            let template: Value =
                serde_json::from_str(include_str!("../../fixtures/forge/github/labels.json")).unwrap();
            let list: Vec<Value> = set
                .iter()
                .map(|name| {
                    let mut l = template[0].clone();
                    l["name"] = json!(name);
                    l
                })
                .collect();
            json_response(200, &Value::Array(list), &[])
        }
        ("DELETE", ["repos", o, r, "issues", n, "labels", name]) => {
            let name = percent_decode(name);
            let key = (format!("{o}/{r}"), n.parse().unwrap());
            if s.gh.labels.get_mut(&key).is_some_and(|set| set.remove(&name)) {
                json_response(200, &json!([]), &[])
            } else {
                error(404, "Label does not exist")
            }
        }
        ("GET", ["repos", o, r, "collaborators", login, "permission"]) => {
            let repo = format!("{o}/{r}");
            let login = percent_decode(login);
            let Some(role) = s.gh.roles.get(&(repo, login.clone())).cloned() else {
                return error(404, "Not Found");
            };
            // `permission` folds maintain into write and triage into read; role_name keeps the role.
            let permission = match role.as_str() {
                "maintain" => "write",
                "triage" => "read",
                other => other,
            };
            let mut answer: Value =
                serde_json::from_str(include_str!("../../fixtures/forge/github/collaborator_permission.json")).unwrap();
            answer["permission"] = json!(permission);
            answer["role_name"] = json!(role);
            answer["user"]["login"] = json!(login);
            json_response(200, &answer, &[])
        }
        _ => {
            s.violations.push(format!("undocumented route {method} {path}"));
            not_found()
        }
    }
}
