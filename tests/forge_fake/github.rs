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
}

/// The id of the first repository the fake names (the documented example's `octocat/Hello-World`).
pub const FIRST_REPOSITORY_ID: u64 = 1_296_269;

#[derive(Debug, Clone)]
pub struct CheckRun {
    pub id: u64,
    pub repo: String,
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
}

impl Fake {
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
        });
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
        ("GET", ["repos", o, r, "installation"]) => {
            app.lookups += 1;
            let mut v: Value =
                serde_json::from_str(include_str!("../fixtures/forge/github/installation.json")).unwrap();
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
                serde_json::from_str(include_str!("../fixtures/forge/github/installation_token.json")).unwrap();
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
    let mut v: Value = serde_json::from_str(include_str!("../fixtures/forge/github/issue_comment.json")).unwrap();
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
fn repository_json(template: &Value, full_name: &str) -> Value {
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
        serde_json::from_str(include_str!("../fixtures/forge/github/pull.json")).unwrap()
    } else {
        let list: Value = serde_json::from_str(include_str!("../fixtures/forge/github/pulls.json")).unwrap();
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

pub fn route(s: &mut Inner, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
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
    if s.gh.app.is_some() && jwt_route(&seg) {
        return app_route(s, method, &seg, body);
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
                serde_json::from_str(include_str!("../fixtures/forge/github/check_run.json")).unwrap();
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
                serde_json::from_str(include_str!("../fixtures/forge/github/commit_status.json")).unwrap();
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
                serde_json::from_str(include_str!("../fixtures/forge/github/deployment.json")).unwrap();
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
            let mut answer: Value =
                serde_json::from_str(include_str!("../fixtures/forge/github/deployment_status.json")).unwrap();
            answer["state"] = json!(state);
            json_response(201, &answer, &[])
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
            let template: Value = serde_json::from_str(include_str!("../fixtures/forge/github/labels.json")).unwrap();
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
                serde_json::from_str(include_str!("../fixtures/forge/github/collaborator_permission.json")).unwrap();
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
