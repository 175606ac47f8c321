//! GitLab REST routes of the fake: MR notes, commit statuses, environments, MR labels and project
//! members, checked as the REST documentation states them (tests/fixtures/forge/SOURCES.md) and
//! answered with the documented example bodies (ids and fields patched per request).
//!
//! GitLab's rules that draftd must live with are mimicked: a commit status is a small state machine
//! (a `running`/`pending` status of the same name and ref is found again and moved on, a finished
//! one is replaced by a new status, and an event the state does not allow answers 400 "Cannot
//! transition status via :run from :running …"); an environment can only be deleted once stopped
//! (403 otherwise) and cannot be renamed, and its name must match GitLab's exact ASCII pattern;
//! `add_labels` creates a missing label; a throttled request gets Rack::Attack's plain-text 429 with
//! `Retry-After`, whatever the route.

use std::collections::BTreeSet;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::*;

/// What the fake GitLab keeps besides comments.
#[derive(Debug)]
pub struct State {
    pub next_id: u64,
    /// Every commit status GitLab holds, oldest first (a finished one is never changed again).
    pub statuses: Vec<CommitStatus>,
    /// Every state a status was set to, in order: (repo, sha, name, state).
    pub status_log: Vec<(String, String, String, String)>,
    /// Environments that exist now (deleted ones are gone).
    pub environments: Vec<Environment>,
    /// (repo, MR iid) → its labels.
    pub labels: HashMap<(String, u64), BTreeSet<String>>,
    /// repo → the project's labels (`add_labels` creates missing ones).
    pub project_labels: HashMap<String, BTreeSet<String>>,
    /// (repo, user id) → effective membership.
    pub members: HashMap<(String, u64), Member>,
    /// Project deploy tokens made so far, revoked ones included.
    pub deploy_tokens: Vec<DeployToken>,
}

/// A project deploy token as GitLab keeps it.
#[derive(Debug, Clone)]
pub struct DeployToken {
    pub id: u64,
    pub repo: String,
    pub name: String,
    pub username: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub token: String,
    pub revoked: bool,
}

impl Default for State {
    fn default() -> Self {
        Self {
            next_id: 9001,
            statuses: Vec::new(),
            status_log: Vec::new(),
            environments: Vec::new(),
            labels: HashMap::new(),
            project_labels: HashMap::new(),
            members: HashMap::new(),
            deploy_tokens: Vec::new(),
        }
    }
}

impl State {
    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

#[derive(Debug, Clone)]
pub struct CommitStatus {
    pub id: u64,
    pub repo: String,
    pub sha: String,
    pub name: String,
    pub git_ref: Option<String>,
    /// `created`, `pending`, `running`, `success`, `failed`, `canceled`, `skipped`.
    pub state: String,
    pub target_url: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Environment {
    pub id: u64,
    pub repo: String,
    pub name: String,
    pub external_url: Option<String>,
    /// Markdown shown on the environment's page (GitLab 17.8+).
    pub description: Option<String>,
    pub tier: String,
    /// `available` or `stopped`.
    pub state: String,
}

#[derive(Debug, Clone)]
pub struct Member {
    pub user_id: u64,
    pub username: String,
    pub access_level: u64,
}

impl Fake {
    /// The deploy tokens of `repo` made so far, revoked ones included.
    pub fn gl_deploy_tokens(&self, repo: &str) -> Vec<DeployToken> {
        self.0.lock().unwrap().gl.deploy_tokens.iter().filter(|t| t.repo == repo).cloned().collect()
    }
    /// Every state set on `sha`'s statuses (any name), in order.
    pub fn gl_statuses(&self, repo: &str, sha: &str) -> Vec<String> {
        let s = self.0.lock().unwrap();
        s.gl.status_log.iter().filter(|(r, h, _, _)| r == repo && h == sha).map(|(_, _, _, st)| st.clone()).collect()
    }
    /// The newest status of `sha` called `name`.
    pub fn gl_status(&self, repo: &str, sha: &str, name: &str) -> Option<CommitStatus> {
        let s = self.0.lock().unwrap();
        s.gl.statuses.iter().rev().find(|c| c.repo == repo && c.sha == sha && c.name == name).cloned()
    }
    /// Every status record of `sha` (a finished status set again is a new record).
    pub fn gl_status_records(&self, repo: &str, sha: &str) -> Vec<CommitStatus> {
        let s = self.0.lock().unwrap();
        s.gl.statuses.iter().filter(|c| c.repo == repo && c.sha == sha).cloned().collect()
    }
    pub fn gl_environment(&self, repo: &str, name: &str) -> Option<Environment> {
        let s = self.0.lock().unwrap();
        s.gl.environments.iter().find(|e| e.repo == repo && e.name == name).cloned()
    }
    pub fn gl_environments(&self, repo: &str) -> Vec<Environment> {
        let s = self.0.lock().unwrap();
        s.gl.environments.iter().filter(|e| e.repo == repo).cloned().collect()
    }
    /// Deletes an environment behind draftd's back (whatever its state).
    pub fn gl_delete_environment(&self, repo: &str, name: &str) {
        self.0.lock().unwrap().gl.environments.retain(|e| !(e.repo == repo && e.name == name));
    }
    pub fn gl_labels(&self, repo: &str, iid: u64) -> Vec<String> {
        let s = self.0.lock().unwrap();
        s.gl.labels.get(&(repo.to_owned(), iid)).map(|l| l.iter().cloned().collect()).unwrap_or_default()
    }
    pub fn gl_set_labels(&self, repo: &str, iid: u64, labels: &[&str]) {
        let mut s = self.0.lock().unwrap();
        s.gl.labels.insert((repo.to_owned(), iid), labels.iter().map(|l| l.to_string()).collect());
    }
    pub fn gl_project_labels(&self, repo: &str) -> Vec<String> {
        let s = self.0.lock().unwrap();
        s.gl.project_labels.get(repo).map(|l| l.iter().cloned().collect()).unwrap_or_default()
    }
    /// Makes `username` (id `user_id`) a member of `repo` with `access_level` (30 = Developer).
    pub fn gl_add_member(&self, repo: &str, user_id: u64, username: &str, access_level: u64) {
        let mut s = self.0.lock().unwrap();
        s.gl.members.insert((repo.to_owned(), user_id), Member { user_id, username: username.into(), access_level });
    }
}

fn fixture(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

pub fn gitlab_json(c: &Comment) -> Value {
    let mut v = fixture(include_str!("../../fixtures/forge/gitlab/note.json"));
    v["id"] = json!(c.id);
    v["body"] = json!(c.body);
    v["noteable_iid"] = json!(c.number);
    v["system"] = json!(c.system);
    v
}

pub fn status_json(c: &CommitStatus) -> Value {
    let mut v = fixture(include_str!("../../fixtures/forge/gitlab/commit_status.json"));
    v["id"] = json!(c.id);
    v["sha"] = json!(c.sha);
    v["name"] = json!(c.name);
    v["status"] = json!(c.state);
    v["ref"] = json!(c.git_ref);
    v["target_url"] = json!(c.target_url);
    v["description"] = json!(c.description);
    v["coverage"] = Value::Null;
    if !matches!(c.state.as_str(), "success" | "failed" | "canceled" | "skipped") {
        v["finished_at"] = Value::Null;
    }
    v
}

/// GitLab's environment slug: lowercase, `[a-z0-9-]`, at most 24 characters.
fn slug(name: &str) -> String {
    let mut s: String = name.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    s.truncate(24);
    s.trim_matches('-').to_owned()
}

pub fn environment_json(e: &Environment) -> Value {
    let mut v = fixture(include_str!("../../fixtures/forge/gitlab/environment.json"));
    v["id"] = json!(e.id);
    v["name"] = json!(e.name);
    v["slug"] = json!(slug(&e.name));
    v["external_url"] = json!(e.external_url);
    v["description"] = json!(e.description);
    v["state"] = json!(e.state);
    v["tier"] = json!(e.tier);
    // Not given by draftd: GitLab leaves them empty.
    v["kubernetes_namespace"] = Value::Null;
    v["flux_resource_path"] = Value::Null;
    v
}

pub fn member_json(m: &Member) -> Value {
    let mut v = fixture(include_str!("../../fixtures/forge/gitlab/member.json"));
    v["id"] = json!(m.user_id);
    v["username"] = json!(m.username);
    v["name"] = json!(m.username);
    v["access_level"] = json!(m.access_level);
    v
}

pub fn merge_request_json(repo: &str, iid: u64, labels: &BTreeSet<String>) -> Value {
    let mut v = fixture(include_str!("../../fixtures/forge/gitlab/merge_request.json"));
    v["iid"] = json!(iid);
    v["state"] = json!("opened");
    v["labels"] = json!(labels.iter().collect::<Vec<_>>());
    v["references"]["full"] = json!(format!("{repo}!{iid}"));
    v
}

/// The project id the fake gives every project; a fork's MRs come from `FORK_PROJECT_ID`.
pub const PROJECT_ID: u64 = 3;
pub const FORK_PROJECT_ID: u64 = 2;

/// An MR as `GET /projects/:id/merge_requests/:iid` (`detail`) or an item of the list shows it.
pub fn pull_json(p: &Pull, detail: bool) -> Value {
    let mut v = if detail {
        fixture(include_str!("../../fixtures/forge/gitlab/merge_request.json"))
    } else {
        fixture(include_str!("../../fixtures/forge/gitlab/merge_requests.json"))[0].clone()
    };
    let at = |t: chrono::DateTime<chrono::Utc>| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    v["id"] = json!(100_000 + p.number);
    v["iid"] = json!(p.number);
    v["project_id"] = json!(PROJECT_ID);
    v["target_project_id"] = json!(PROJECT_ID);
    let own = p.head_repo.as_deref() == Some(p.repo.as_str());
    v["source_project_id"] = json!(if own { PROJECT_ID } else { FORK_PROJECT_ID });
    v["state"] = json!(if p.state == "open" { "opened" } else { p.state.as_str() });
    v["source_branch"] = json!(p.branch);
    v["sha"] = json!(p.sha);
    v["updated_at"] = at(p.updated_at);
    v["draft"] = json!(p.draft);
    v["work_in_progress"] = json!(p.draft);
    v["labels"] = json!(p.labels);
    let merged = p.state == "merged";
    v["merged_at"] = if merged { at(p.updated_at) } else { Value::Null };
    v["closed_at"] = if p.state == "closed" { at(p.updated_at) } else { Value::Null };
    for who in ["merged_by", "merge_user"] {
        v[who] = if merged { v[who].clone() } else { Value::Null };
    }
    v["detailed_merge_status"] = json!(if p.state == "open" { "mergeable" } else { "not_open" });
    v["web_url"] = json!(format!("https://gitlab.example.com/{}/-/merge_requests/{}", p.repo, p.number));
    v["references"]["full"] = json!(format!("{}!{}", p.repo, p.number));
    v
}

/// GitLab's answer to a parameter that fails validation (Grape's shape).
fn param_error(message: impl Into<String>) -> Response {
    json_response(400, &json!({"error": message.into()}), &[])
}

/// The request body's fields: form-encoded (as the `gitlab` crate sends them) or a JSON object of
/// strings; an empty body without a content type is no fields. Anything else is a violation.
fn fields(
    s: &mut Inner,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<HashMap<String, String>, Box<Response>> {
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    let parsed: Option<HashMap<String, String>> = if ct.starts_with("application/x-www-form-urlencoded") {
        let text = std::str::from_utf8(body).unwrap_or("");
        let pairs: Vec<(String, String)> = text
            .split('&')
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (percent_decode(k), percent_decode(v)))
            .collect();
        let n = pairs.len();
        let map: HashMap<String, String> = pairs.into_iter().collect();
        // A field sent twice is not something GitLab documents.
        (map.len() == n).then_some(map)
    } else if ct.starts_with("application/json") {
        serde_json::from_slice::<HashMap<String, Value>>(body).ok().and_then(|m| {
            let n = m.len();
            let map: HashMap<String, String> =
                m.into_iter().filter_map(|(k, v)| Some((k, v.as_str()?.to_owned()))).collect();
            (map.len() == n).then_some(map)
        })
    } else if ct.is_empty() && body.is_empty() {
        Some(HashMap::new())
    } else {
        None
    };
    parsed.ok_or_else(|| {
        s.violations.push(format!("{method} {path}: content-type {ct:?}, body {}", String::from_utf8_lossy(body)));
        Box::new(param_error("body is not valid"))
    })
}

/// Fields outside `allowed` are recorded as violations and answered 400.
fn only(
    s: &mut Inner,
    method: &Method,
    path: &str,
    f: &HashMap<String, String>,
    allowed: &[&str],
) -> Result<(), Box<Response>> {
    let mut extra: Vec<&String> = f.keys().filter(|k| !allowed.contains(&k.as_str())).collect();
    if extra.is_empty() {
        return Ok(());
    }
    extra.sort();
    s.violations.push(format!("{method} {path}: undocumented fields {extra:?}"));
    Err(Box::new(param_error(format!("{} does not have a valid value", extra[0]))))
}

/// Query parameters outside `allowed` are recorded as violations.
fn only_query(s: &mut Inner, method: &Method, path: &str, allowed: &[&str]) -> Result<(), Box<Response>> {
    let q = query(path);
    let mut extra: Vec<String> =
        q.keys().map(|k| percent_decode(k)).filter(|k| !allowed.contains(&k.as_str())).collect();
    if extra.is_empty() {
        return Ok(());
    }
    extra.sort();
    s.violations.push(format!("{method} {path}: undocumented query parameters {extra:?}"));
    Err(Box::new(param_error(format!("{} does not have a valid value", extra[0]))))
}

fn decoded_query(path: &str) -> HashMap<String, String> {
    query(path).into_iter().map(|(k, v)| (percent_decode(&k), percent_decode(&v))).collect()
}

fn is_url(u: &str) -> bool {
    (u.starts_with("https://") || u.starts_with("http://"))
        && u.len() > "https://".len()
        && !u.contains(char::is_whitespace)
}

/// Lists as GitLab does: `per_page` (default 20, at most 100) and `page`, with the page headers.
fn paged(items: Vec<Value>, q: &HashMap<String, String>) -> Response {
    let per_page = q.get("per_page").and_then(|v| v.parse().ok()).unwrap_or(20usize).clamp(1, 100);
    let page_no: usize = q.get("page").and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
    let start = ((page_no - 1) * per_page).min(items.len());
    let end = (start + per_page).min(items.len());
    let pages = items.len().div_ceil(per_page).max(1);
    let mut headers = vec![
        ("x-page", page_no.to_string()),
        ("x-per-page", per_page.to_string()),
        ("x-total", items.len().to_string()),
        ("x-total-pages", pages.to_string()),
    ];
    if page_no < pages {
        headers.push(("x-next-page", (page_no + 1).to_string()));
    }
    json_response(200, &Value::Array(items[start..end].to_vec()), &headers)
}

/// GitLab's commit status events: the state a `state` parameter asks for, the event it fires, and
/// the states that event may leave (app/models/commit_status.rb).
fn event_for(state: &str) -> (&'static str, &'static [&'static str]) {
    match state {
        "pending" => ("enqueue", &["created", "skipped", "manual", "scheduled"]),
        "running" => ("run", &["pending"]),
        "success" => ("success", &["created", "pending", "running"]),
        "failed" => ("drop", &["created", "pending", "running"]),
        "canceled" => ("cancel", &["created", "pending", "running"]),
        _ => ("skip", &["created", "pending"]),
    }
}

/// `POST /projects/:id/statuses/:sha`, as `Ci::CreateCommitStatusService` does it.
fn set_status(s: &mut Inner, repo: String, sha: &str, f: &HashMap<String, String>) -> Response {
    const STATES: [&str; 6] = ["pending", "running", "success", "failed", "canceled", "skipped"];
    let Some(state) = f.get("state") else { return param_error("state is missing") };
    if !STATES.contains(&state.as_str()) {
        s.violations.push(format!("commit status: state {state:?}"));
        return param_error("state does not have a valid value");
    }
    if sha.len() != 40 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        s.violations.push(format!("commit status: sha {sha:?} is not a commit"));
        return json_response(404, &json!({"message": "404 Commit Not Found"}), &[]);
    }
    for key in ["ref", "target_url", "description"] {
        if f.get(key).is_some_and(|v| v.chars().count() > 255) {
            s.violations.push(format!("commit status: {key} longer than 255 characters"));
            return json_response(400, &json!({"message": {key: ["is too long (maximum is 255 characters)"]}}), &[]);
        }
    }
    if let Some(u) = f.get("target_url").filter(|u| !is_url(u)) {
        s.violations.push(format!("commit status: target_url {u:?}"));
        return json_response(
            400,
            &json!({"message": {"target_url": ["is blocked: Only allowed schemes are http, https"]}}),
            &[],
        );
    }
    let name = f.get("name").or(f.get("context")).cloned().unwrap_or_else(|| "default".into());
    let git_ref = f.get("ref").cloned();
    // A running or pending status of the same name and ref is found again; otherwise a new one.
    let found = s.gl.statuses.iter().position(|c| {
        c.repo == repo
            && c.sha == sha
            && c.name == name
            && c.git_ref == git_ref
            && matches!(c.state.as_str(), "running" | "pending")
    });
    let from = found.map(|i| s.gl.statuses[i].state.clone()).unwrap_or_else(|| "created".into());
    // `running` fires `enqueue` first (not raising), so a created status gets to pending.
    let before = if state == "running" && from == "created" { "pending".to_owned() } else { from.clone() };
    let (event, allowed) = event_for(state);
    if !allowed.contains(&before.as_str()) {
        let message = format!(
            "Cannot transition status via :{event} from :{before} (Reason(s): Status cannot transition via \"{event}\")"
        );
        return json_response(400, &json!({"message": message}), &[]);
    }
    let index = match found {
        Some(i) => i,
        None => {
            let id = s.gl.id();
            s.gl.statuses.push(CommitStatus {
                id,
                repo: repo.clone(),
                sha: sha.to_owned(),
                name: name.clone(),
                git_ref,
                state: "created".into(),
                target_url: None,
                description: None,
            });
            s.gl.statuses.len() - 1
        }
    };
    let c = &mut s.gl.statuses[index];
    c.state = state.clone();
    if let Some(u) = f.get("target_url") {
        c.target_url = Some(u.clone());
    }
    if let Some(d) = f.get("description") {
        c.description = Some(d.clone());
    }
    let c = c.clone();
    s.gl.status_log.push((repo, sha.to_owned(), name, state.clone()));
    json_response(201, &status_json(&c), &[])
}

const ENV_FIELDS: [&str; 7] = [
    "external_url",
    "tier",
    "description",
    "cluster_agent_id",
    "kubernetes_namespace",
    "flux_resource_path",
    "auto_stop_setting",
];

/// Checks the editable attributes of an environment; `Err` is GitLab's 400.
fn environment_attributes(s: &mut Inner, f: &HashMap<String, String>) -> Result<(), Box<Response>> {
    if let Some(t) = f.get("tier")
        && !["production", "staging", "testing", "development", "other"].contains(&t.as_str())
    {
        s.violations.push(format!("environment: tier {t:?}"));
        return Err(Box::new(param_error("tier does not have a valid value")));
    }
    if let Some(u) = f.get("external_url").filter(|u| !u.is_empty()) {
        if !is_url(u) || u.len() > 255 {
            s.violations.push(format!("environment: external_url {u:?}"));
            return Err(Box::new(json_response(
                400,
                &json!({"message": {"external_url": ["is blocked: Only allowed schemes are http, https"]}}),
                &[],
            )));
        }
    }
    if f.get("description").is_some_and(|d| d.chars().count() > 10_000) {
        s.violations.push("environment: description longer than 10000 characters".into());
        return Err(Box::new(json_response(
            400,
            &json!({"message": {"description": ["is too long (maximum is 10000 characters)"]}}),
            &[],
        )));
    }
    Ok(())
}

/// GitLab's environment name rule, exactly (lib/gitlab/regex.rb `environment_name_regex` and
/// app/models/environment.rb): at most 255 characters of ASCII `[a-zA-Z0-9_/${}. -]`, not starting
/// or ending with `/`. ASCII only: `é` or `日` are refused like `+`, `#`, `@`, `,`, `'` and `=`.
pub fn valid_environment_name(name: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_/${}. -".contains(c);
    !name.is_empty()
        && name.chars().count() <= 255
        && !name.starts_with('/')
        && !name.ends_with('/')
        && name.chars().all(allowed)
}

fn environments(
    s: &mut Inner,
    method: &Method,
    path: &str,
    repo: String,
    rest: &[&str],
    f: HashMap<String, String>,
) -> Response {
    let not_found = || json_response(404, &json!({"message": "404 Not found"}), &[]);
    let find = |s: &Inner, id: &str| -> Option<usize> {
        let id: u64 = id.parse().ok()?;
        s.gl.environments.iter().position(|e| e.id == id && e.repo == repo)
    };
    match (method.as_str(), rest) {
        ("GET", []) => {
            if let Err(r) = only_query(s, method, path, &["name", "search", "states", "page", "per_page"]) {
                return *r;
            }
            let q = decoded_query(path);
            if q.contains_key("name") && q.contains_key("search") {
                return param_error("name, search are mutually exclusive");
            }
            let items: Vec<Value> =
                s.gl.environments
                    .iter()
                    .filter(|e| e.repo == repo)
                    .filter(|e| q.get("name").is_none_or(|n| *n == e.name))
                    .filter(|e| q.get("search").is_none_or(|n| e.name.contains(n.as_str())))
                    .filter(|e| q.get("states").is_none_or(|st| *st == e.state))
                    .map(environment_json)
                    .collect();
            paged(items, &q)
        }
        ("POST", []) => {
            let mut allowed = vec!["name"];
            allowed.extend(ENV_FIELDS);
            if let Err(r) = only(s, method, path, &f, &allowed) {
                return *r;
            }
            let Some(name) = f.get("name") else { return param_error("name is missing") };
            if !valid_environment_name(name) {
                s.violations.push(format!("environment: name {name:?}"));
                return json_response(
                    400,
                    &json!({"message": {"name": ["can contain only letters, digits, '-', '_', '/', '$', '{', '}', '.', and spaces, but it cannot start or end with '/'"]}}),
                    &[],
                );
            }
            if let Err(r) = environment_attributes(s, &f) {
                return *r;
            }
            if s.gl.environments.iter().any(|e| e.repo == repo && e.name == *name) {
                return json_response(400, &json!({"message": {"name": ["has already been taken"]}}), &[]);
            }
            let id = s.gl.id();
            let e = Environment {
                id,
                repo,
                name: name.clone(),
                external_url: f.get("external_url").filter(|u| !u.is_empty()).cloned(),
                description: f.get("description").cloned(),
                tier: f.get("tier").cloned().unwrap_or_else(|| "other".into()),
                state: "available".into(),
            };
            s.gl.environments.push(e.clone());
            json_response(201, &environment_json(&e), &[])
        }
        ("GET", [id]) => match find(s, id) {
            Some(i) => json_response(200, &environment_json(&s.gl.environments[i]), &[]),
            None => not_found(),
        },
        ("PUT", [id]) => {
            if f.contains_key("name") {
                s.violations.push(format!("{method} {path}: an environment's name cannot be changed (GitLab 16.0+)"));
                return param_error("name does not have a valid value");
            }
            if let Err(r) = only(s, method, path, &f, &ENV_FIELDS) {
                return *r;
            }
            if f.is_empty() {
                s.violations.push(format!("{method} {path}: no attribute"));
                return param_error(format!(
                    "{}, are missing, at least one parameter must be provided",
                    ENV_FIELDS.join(", ")
                ));
            }
            if let Err(r) = environment_attributes(s, &f) {
                return *r;
            }
            let Some(i) = find(s, id) else { return not_found() };
            let e = &mut s.gl.environments[i];
            if let Some(u) = f.get("external_url") {
                e.external_url = (!u.is_empty()).then(|| u.clone());
            }
            if let Some(t) = f.get("tier") {
                e.tier = t.clone();
            }
            if let Some(d) = f.get("description") {
                e.description = Some(d.clone());
            }
            let e = e.clone();
            json_response(200, &environment_json(&e), &[])
        }
        ("POST", [id, "stop"]) => {
            if let Err(r) = only(s, method, path, &f, &["force"]) {
                return *r;
            }
            let Some(i) = find(s, id) else { return not_found() };
            // No on_stop action: the environment is stopped at once (stopping a stopped one is a no-op).
            s.gl.environments[i].state = "stopped".into();
            json_response(200, &environment_json(&s.gl.environments[i]), &[])
        }
        ("DELETE", [id]) => {
            if let Err(r) = only(s, method, path, &f, &[]) {
                return *r;
            }
            let Some(i) = find(s, id) else { return not_found() };
            if s.gl.environments[i].state != "stopped" {
                return json_response(403, &json!({"message": "403 Forbidden"}), &[]);
            }
            s.gl.environments.remove(i);
            StatusCode::NO_CONTENT.into_response()
        }
        _ => {
            s.violations.push(format!("undocumented route {method} {path}"));
            not_found()
        }
    }
}

/// GitLab's throttled answer (Rack::Attack's responder in lib/gitlab/rack_attack.rb): 429, plain
/// text `Retry later`, and the `RateLimit-*` headers with `Retry-After` in seconds. Whatever the
/// request was (a GET, a PUT that answers JSON, a DELETE that answers 204), this is what comes back.
fn rate_limited(secs: u64) -> Response {
    let reset = chrono::Utc::now() + chrono::Duration::seconds(secs as i64);
    let headers = [
        ("ratelimit-name", "throttle_authenticated_api".to_owned()),
        ("ratelimit-limit", "2000".to_owned()),
        ("ratelimit-observed", "2001".to_owned()),
        ("ratelimit-remaining", "0".to_owned()),
        ("ratelimit-reset", reset.timestamp().to_string()),
        ("ratelimit-resettime", reset.format("%a, %d %b %Y %H:%M:%S GMT").to_string()),
        ("retry-after", secs.to_string()),
    ];
    let mut r = (StatusCode::TOO_MANY_REQUESTS, [("content-type", "text/plain")], "Retry later\n").into_response();
    for (k, v) in headers {
        r.headers_mut().insert(k, v.parse().unwrap());
    }
    r
}

fn comma_list(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

pub fn route(s: &mut Inner, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let token = headers.get("private-token").and_then(|v| v.to_str().ok());
    if token != Some(TOKEN) {
        if s.mode != Mode::Hostile {
            s.violations.push(format!("{method} {path}: PRIVATE-TOKEN {token:?}"));
        }
        let message =
            if s.mode == Mode::Hostile { format!("401 Unauthorized {TOKEN}") } else { "401 Unauthorized".into() };
        return json_response(401, &json!({"message": message}), &[]);
    }
    let mode = s.script.pop_front().unwrap_or(s.mode);
    if let Mode::RateLimited(secs) = mode {
        return rate_limited(secs);
    }
    if let Some(r) = failure(s.kind, mode) {
        return r;
    }
    let not_found = || json_response(404, &json!({"message": "404 Not found"}), &[]);
    let seg: Vec<&str> = path_only(path).trim_start_matches('/').split('/').collect();
    let new_body = |s: &mut Inner| -> Result<String, Box<Response>> {
        let f = fields(s, method, path, headers, body)?;
        match f.get("body") {
            Some(b) if f.len() == 1 => Ok(b.clone()),
            _ => {
                s.violations.push(format!("{method} {path}: body {}", String::from_utf8_lossy(body)));
                Err(Box::new(json_response(400, &json!({"error": "body is missing"}), &[])))
            }
        }
    };
    let project = |p: &str| -> Option<String> {
        // The path must arrive URL-encoded: one segment, `/` as %2F.
        (!p.contains('/')).then(|| p.replace("%2F", "/").replace("%2f", "/"))
    };
    match (method.as_str(), seg.as_slice()) {
        ("GET", ["api", "v4", "user"]) => {
            let v = fixture(include_str!("../../fixtures/forge/gitlab/user.json"));
            json_response(200, &v, &[])
        }
        ("GET", ["api", "v4", "projects", p, "merge_requests", n, "notes"]) => {
            let Some(repo) = project(p) else { return not_found() };
            let number: u64 = n.parse().unwrap();
            let q = query(path);
            let mut all: Vec<Comment> =
                s.comments.iter().filter(|c| c.repo == repo && c.number == number).cloned().collect();
            // Default order: created_at desc (GitLab's default); ids stand for creation order.
            if q.get("sort").map(String::as_str) != Some("asc") {
                all.reverse();
            }
            let (items, page_no, pages) = page(&all, &q, 20);
            let mut headers = vec![
                ("x-page", page_no.to_string()),
                ("x-total", all.len().to_string()),
                ("x-total-pages", pages.to_string()),
            ];
            if page_no < pages {
                headers.push(("x-next-page", (page_no + 1).to_string()));
            }
            let v = Value::Array(items.iter().map(gitlab_json).collect());
            json_response(200, &v, &headers)
        }
        ("POST", ["api", "v4", "projects", p, "merge_requests", n, "notes"]) => {
            let Some(repo) = project(p) else { return not_found() };
            let body = match new_body(s) {
                Ok(b) => b,
                Err(r) => return *r,
            };
            let id = s.next_id;
            s.next_id += 1;
            let c = Comment { id, repo, number: n.parse().unwrap(), body, system: false };
            s.comments.push(c.clone());
            json_response(201, &gitlab_json(&c), &[])
        }
        ("PUT", ["api", "v4", "projects", p, "merge_requests", n, "notes", id]) => {
            let Some(repo) = project(p) else { return not_found() };
            let body = match new_body(s) {
                Ok(b) => b,
                Err(r) => return *r,
            };
            let (number, id): (u64, u64) = (n.parse().unwrap(), id.parse().unwrap());
            let Some(c) = s.comments.iter_mut().find(|c| c.id == id && c.repo == repo && c.number == number) else {
                return not_found();
            };
            c.body = body;
            let c = c.clone();
            json_response(200, &gitlab_json(&c), &[])
        }
        ("POST", ["api", "v4", "projects", p, "statuses", sha]) => {
            let Some(repo) = project(p) else { return not_found() };
            let f = match fields(s, method, path, headers, body) {
                Ok(f) => f,
                Err(r) => return *r,
            };
            let allowed = ["state", "ref", "name", "context", "target_url", "description", "coverage", "pipeline_id"];
            if let Err(r) = only(s, method, path, &f, &allowed) {
                return *r;
            }
            set_status(s, repo, sha, &f)
        }
        // "Create a project deploy token": name and scopes required, expires_at an ISO 8601 time
        // (none: it never expires), username optional (GitLab makes one up).
        ("POST", ["api", "v4", "projects", p, "deploy_tokens"]) => {
            let Some(repo) = project(p) else { return not_found() };
            let f = match fields(s, method, path, headers, body) {
                Ok(f) => f,
                Err(r) => return *r,
            };
            if let Err(r) = only(s, method, path, &f, &["name", "scopes[]", "expires_at", "username"]) {
                return *r;
            }
            let Some(name) = f.get("name").filter(|n| !n.is_empty()) else { return param_error("name is missing") };
            const SCOPES: [&str; 5] = [
                "read_repository",
                "read_registry",
                "write_registry",
                "read_package_registry",
                "write_package_registry",
            ];
            let Some(scope) = f.get("scopes[]").filter(|sc| SCOPES.contains(&sc.as_str())) else {
                return param_error("scopes does not have a valid value");
            };
            let expires_at = match f.get("expires_at") {
                None => None,
                Some(t) => match chrono::DateTime::parse_from_rfc3339(t) {
                    Ok(t) => Some(t.with_timezone(&chrono::Utc)),
                    Err(_) => return param_error("expires_at is invalid"),
                },
            };
            let id = s.next_id;
            s.next_id += 1;
            let t = DeployToken {
                id,
                repo,
                name: name.clone(),
                username: f.get("username").cloned().unwrap_or_else(|| format!("gitlab+deploy-token-{id}")),
                scopes: vec![scope.clone()],
                expires_at,
                token: format!("gldt-fakedeploytoken{id:06}"),
                revoked: false,
            };
            s.gl.deploy_tokens.push(t.clone());
            let v = json!({
                "id": t.id,
                "name": t.name,
                "username": t.username,
                "expires_at": t.expires_at.map(|e| e.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                "token": t.token,
                "revoked": false,
                "expired": false,
                "scopes": t.scopes,
            });
            json_response(201, &v, &[])
        }
        ("DELETE", ["api", "v4", "projects", p, "deploy_tokens", id]) => {
            let Some(repo) = project(p) else { return not_found() };
            let id: u64 = id.parse().unwrap_or(0);
            match s.gl.deploy_tokens.iter_mut().find(|t| t.id == id && t.repo == repo && !t.revoked) {
                Some(t) => {
                    t.revoked = true;
                    StatusCode::NO_CONTENT.into_response()
                }
                None => not_found(),
            }
        }
        (_, ["api", "v4", "projects", p, "environments", rest @ ..]) => {
            let Some(repo) = project(p) else { return not_found() };
            let f = match fields(s, method, path, headers, body) {
                Ok(f) => f,
                Err(r) => return *r,
            };
            environments(s, method, path, repo, rest, f)
        }
        ("GET", ["api", "v4", "projects", p, "merge_requests"]) => {
            let Some(repo) = project(p) else { return not_found() };
            let allowed = [
                "state",
                "order_by",
                "sort",
                "page",
                "per_page",
                "iids[]",
                "labels",
                "milestone",
                "view",
                "source_branch",
                "target_branch",
                "created_after",
                "created_before",
                "updated_after",
                "updated_before",
                "wip",
            ];
            if let Err(r) = only_query(s, method, path, &allowed) {
                return *r;
            }
            let q = decoded_query(path);
            let one_of = |k: &str, ok: &[&str]| q.get(k).is_none_or(|v| ok.contains(&v.as_str()));
            if !one_of("state", &["opened", "closed", "locked", "merged", "all"])
                || !one_of("order_by", &["created_at", "updated_at", "merged_at", "title"])
                || !one_of("sort", &["asc", "desc"])
            {
                s.violations.push(format!("{method} {path}: a value GitLab does not document"));
                return param_error("state, order_by or sort does not have a valid value");
            }
            let state = match q.get("state").map(String::as_str) {
                Some("opened") => "open",
                Some(other) => other,
                None => "all",
            };
            let mut mrs: Vec<&Pull> =
                s.pulls.iter().filter(|m| m.repo == repo && (state == "all" || m.state == state)).collect();
            // Default: created_at, newest first; iids stand for creation order.
            match q.get("order_by").map(String::as_str) {
                Some("updated_at") => mrs.sort_by_key(|m| m.updated_at),
                _ => mrs.sort_by_key(|m| m.number),
            }
            if q.get("sort").map(String::as_str) != Some("asc") {
                mrs.reverse();
            }
            paged(mrs.into_iter().map(|m| pull_json(m, false)).collect(), &q)
        }
        ("GET", ["api", "v4", "projects", p, "merge_requests", n]) => {
            let Some(repo) = project(p) else { return not_found() };
            let allowed = ["render_html", "include_diverged_commits_count", "include_rebase_in_progress"];
            if let Err(r) = only_query(s, method, path, &allowed) {
                return *r;
            }
            match s.pulls.iter().find(|m| m.repo == repo && n.parse() == Ok(m.number)) {
                Some(m) => json_response(200, &pull_json(m, true), &[]),
                None => not_found(),
            }
        }
        ("PUT", ["api", "v4", "projects", p, "merge_requests", n]) => {
            let Some(repo) = project(p) else { return not_found() };
            let f = match fields(s, method, path, headers, body) {
                Ok(f) => f,
                Err(r) => return *r,
            };
            // draftd only ever changes labels; any other attribute would be a surprise.
            if let Err(r) = only(s, method, path, &f, &["add_labels", "remove_labels"]) {
                return *r;
            }
            if f.is_empty() {
                s.violations.push(format!("{method} {path}: no attribute"));
                return param_error(
                    "assignee_id, assignee_ids, ..., add_labels, remove_labels are missing, at least one parameter must be provided",
                );
            }
            let Ok(iid) = n.parse::<u64>() else { return not_found() };
            let add = f.get("add_labels").map(|v| comma_list(v)).unwrap_or_default();
            let remove = f.get("remove_labels").map(|v| comma_list(v)).unwrap_or_default();
            s.gl.project_labels.entry(repo.clone()).or_default().extend(add.iter().cloned());
            let labels = s.gl.labels.entry((repo.clone(), iid)).or_default();
            labels.extend(add);
            for l in &remove {
                labels.remove(l);
            }
            let labels = labels.clone();
            json_response(200, &merge_request_json(&repo, iid, &labels), &[])
        }
        ("GET", ["api", "v4", "projects", p, "members", "all", user]) => {
            let Some(repo) = project(p) else { return not_found() };
            let Ok(user_id) = user.parse::<u64>() else {
                s.violations.push(format!("{method} {path}: user id {user:?} is not a number"));
                return not_found();
            };
            match s.gl.members.get(&(repo, user_id)) {
                Some(m) => json_response(200, &member_json(m), &[]),
                None => not_found(),
            }
        }
        ("GET", ["api", "v4", "projects", p, "members", "all"]) => {
            let Some(repo) = project(p) else { return not_found() };
            let allowed = ["query", "user_ids[]", "skip_users[]", "show_seat_info", "state", "page", "per_page"];
            if let Err(r) = only_query(s, method, path, &allowed) {
                return *r;
            }
            let q = decoded_query(path);
            let needle = q.get("query").map(|v| v.to_lowercase());
            let mut found: Vec<&Member> =
                s.gl.members
                    .iter()
                    .filter(|((r, _), _)| *r == repo)
                    .map(|(_, m)| m)
                    .filter(|m| needle.as_ref().is_none_or(|n| m.username.to_lowercase().contains(n.as_str())))
                    .collect();
            found.sort_by_key(|m| m.user_id);
            paged(found.into_iter().map(member_json).collect(), &q)
        }
        _ => {
            s.violations.push(format!("undocumented route {method} {path}"));
            not_found()
        }
    }
}
