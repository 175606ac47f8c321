//! Local HTTP fakes of GitHub and GitLab for the reporter and forge tests: they check method, path,
//! auth and version headers and body as the REST documentation states them (tests/fixtures/forge/
//! SOURCES.md), keep what was written in memory, and can be taken down, slowed, garbled or rate
//! limited.

pub mod burst;
pub mod github;
pub mod gitlab;
pub mod oauth;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::TimeZone;
use draftd::config::ForgeKind;
use draftd::forge::client::{AnyForge, GithubClient, GitlabClient, marker};
use draftd::reporter::{
    CommentPayload, ReportView, Reporter, ReporterSettings, Status, StepLine, enqueue_comment, render,
};
use draftd::stand::{BranchName, Namespace, ProjectName, RunId, RunKind, StandId, StepState, Trigger};
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::PgPool;

pub const TOKEN: &str = "tok_9f8e7d6c5b4a3210fedcba";
pub const REPO: &str = "acme/shop";
pub const GITLAB_REPO: &str = "acme/platform/shop";
pub const PR: u64 = 7;

// ---------------------------------------------------------------------------------------------
// The fakes
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Comment {
    pub id: u64,
    pub repo: String,
    pub number: u64,
    pub body: String,
    pub system: bool,
}

/// A PR (GitHub) or MR (GitLab) as the fakes keep it.
#[derive(Debug, Clone)]
pub struct Pull {
    pub repo: String,
    pub number: u64,
    /// `open`, `closed` or `merged`; GitLab also `locked` (being merged). Rendered as each forge
    /// names it (GitLab `opened`; GitHub `closed` with `merged: true` for merged).
    pub state: String,
    pub branch: String,
    pub sha: String,
    /// Where the branch lives: `repo` itself, a fork (`someone/shop`), or `None` when the fork was
    /// deleted (GitHub then shows `head.repo: null`).
    pub head_repo: Option<String>,
    pub draft: bool,
    pub labels: Vec<String>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl Pull {
    /// An open PR of `repo` from a branch of the repo itself, updated `number` minutes after a fixed time.
    pub fn open(repo: &str, number: u64) -> Pull {
        Pull {
            repo: repo.into(),
            number,
            state: "open".into(),
            branch: format!("feature/pr-{number}"),
            sha: format!("{number:040x}"),
            head_repo: Some(repo.into()),
            draft: false,
            labels: vec![],
            updated_at: chrono::Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0).unwrap()
                + chrono::Duration::minutes(number as i64),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Up,
    /// Every request answers this status, with the body a real forge (or its proxy) would send.
    Down(u16),
    /// 429 with `Retry-After: secs`.
    RateLimited(u64),
    /// Error answers whose message echoes the token, to prove the clients scrub it.
    Hostile,
    /// GitHub's secondary rate limit: 403 "You have exceeded a secondary rate limit", with
    /// `Retry-After: secs` when given.
    SecondaryLimit(Option<u64>),
    /// A forge that is slow to answer: the answer waits this many milliseconds, then comes as
    /// with `Up` (script only: a request that stalls, among others that do not).
    Stall(u64),
    /// 200 with a body that is not JSON (a proxy's sign-in page).
    Garbled,
}

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// When the request arrived.
    pub arrived: std::time::Instant,
    /// When the answer went out.
    pub at: std::time::Instant,
}

pub struct Inner {
    pub kind: ForgeKind,
    pub base: String,
    pub mode: Mode,
    /// Each request waits this long before answering (for overlap checks).
    pub delay: Duration,
    pub comments: Vec<Comment>,
    /// PRs (GitHub) or MRs (GitLab), each fake rendering them in its forge's shape.
    pub pulls: Vec<Pull>,
    pub next_id: u64,
    pub seen: Vec<Seen>,
    pub violations: Vec<String>,
    /// Requests in flight per (repo, number), and the most ever seen at once.
    pub in_flight: HashMap<(String, u64), usize>,
    pub max_in_flight: usize,
    /// Answers for the next requests, before `mode` (a forge that fails a few times, then recovers).
    pub script: std::collections::VecDeque<Mode>,
    /// GitHub's checks, statuses, deployments, labels, permissions, App.
    pub gh: github::State,
    /// GitLab's statuses, environments, labels, members.
    pub gl: gitlab::State,
    /// Sign-ins: OAuth clients, codes, person tokens (both forges).
    pub oauth: oauth::State,
    /// A share of answers that are faults, drawn at random (benches/soak.rs), and those given.
    pub faults: Option<(f64, fastrand::Rng)>,
    pub fault_counts: std::collections::BTreeMap<u16, u64>,
}

#[derive(Clone)]
pub struct Fake(pub Arc<Mutex<Inner>>);

impl Fake {
    pub async fn start(kind: ForgeKind) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let fake = Fake(Arc::new(Mutex::new(Inner {
            kind,
            base,
            mode: Mode::Up,
            delay: Duration::ZERO,
            comments: Vec::new(),
            pulls: Vec::new(),
            next_id: if kind == ForgeKind::Github { 1_000_001 } else { 5001 },
            seen: Vec::new(),
            violations: Vec::new(),
            in_flight: HashMap::new(),
            max_in_flight: 0,
            script: Default::default(),
            gh: Default::default(),
            gl: Default::default(),
            oauth: Default::default(),
            faults: None,
            fault_counts: Default::default(),
        })));
        let app = axum::Router::new().fallback(handle).with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    pub fn url(&self) -> String {
        self.0.lock().unwrap().base.clone()
    }
    pub fn script(&self, modes: &[Mode]) {
        self.0.lock().unwrap().script.extend(modes.iter().copied());
    }
    pub fn set_mode(&self, mode: Mode) {
        self.0.lock().unwrap().mode = mode;
    }
    /// From now on a `rate` share of answers are faults, drawn with `seed`: 500, 502 or 429 with
    /// `Retry-After: 1`, in equal parts.
    #[allow(dead_code)] // for benches/soak.rs; the tests script their faults
    pub fn fail_at_random(&self, rate: f64, seed: u64) {
        self.0.lock().unwrap().faults = (rate > 0.0).then(|| (rate, fastrand::Rng::with_seed(seed)));
    }
    /// The faults given at random, by status.
    #[allow(dead_code)] // for benches/soak.rs, like fail_at_random
    pub fn fault_counts(&self) -> std::collections::BTreeMap<u16, u64> {
        self.0.lock().unwrap().fault_counts.clone()
    }
    pub fn set_delay(&self, delay: Duration) {
        self.0.lock().unwrap().delay = delay;
    }
    pub fn seed(&self, repo: &str, number: u64, body: &str, system: bool) -> u64 {
        let mut s = self.0.lock().unwrap();
        let id = s.next_id;
        s.next_id += 1;
        s.comments.push(Comment { id, repo: repo.into(), number, body: body.into(), system });
        id
    }
    pub fn seed_pull(&self, pull: Pull) {
        let mut s = self.0.lock().unwrap();
        s.pulls.retain(|p| !(p.repo == pull.repo && p.number == pull.number));
        s.pulls.push(pull);
    }
    /// Open PRs/MRs 1..=n of `repo`.
    pub fn seed_open_pulls(&self, repo: &str, n: u64) {
        for number in 1..=n {
            self.seed_pull(Pull::open(repo, number));
        }
    }
    pub fn delete(&self, id: u64) {
        self.0.lock().unwrap().comments.retain(|c| c.id != id);
    }
    /// Every comment of every PR, oldest first.
    pub fn all_comments(&self) -> Vec<Comment> {
        self.0.lock().unwrap().comments.clone()
    }
    pub fn comments(&self, repo: &str, number: u64) -> Vec<Comment> {
        self.0.lock().unwrap().comments.iter().filter(|c| c.repo == repo && c.number == number).cloned().collect()
    }
    pub fn marked(&self, repo: &str, number: u64, marker: &str) -> Vec<Comment> {
        self.comments(repo, number).into_iter().filter(|c| c.body.contains(marker)).collect()
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().seen.clone()
    }
    pub fn count(&self, method: &str, suffix: &str) -> usize {
        self.seen().iter().filter(|s| s.method == method && path_only(&s.path).ends_with(suffix)).count()
    }
    pub fn violations(&self) -> Vec<String> {
        self.0.lock().unwrap().violations.clone()
    }
    pub fn max_in_flight(&self) -> usize {
        self.0.lock().unwrap().max_in_flight
    }
}

pub fn path_only(p: &str) -> &str {
    p.split('?').next().unwrap_or(p)
}

pub fn json_response(status: u16, value: &Value, headers: &[(&str, String)]) -> Response {
    let mut r = (StatusCode::from_u16(status).unwrap(), axum::Json(value.clone())).into_response();
    for (k, v) in headers {
        r.headers_mut().insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    r
}

/// A fault drawn at random when [`Fake::fail_at_random`] asked for them.
pub fn random_fault(s: &mut Inner) -> Option<Response> {
    let (rate, rng) = s.faults.as_mut()?;
    if rng.f64() >= *rate {
        return None;
    }
    let status = [500u16, 502, 429][rng.usize(..3)];
    *s.fault_counts.entry(status).or_default() += 1;
    failure(s.kind, if status == 429 { Mode::RateLimited(1) } else { Mode::Down(status) })
}

/// The answer of a forge that is down, refusing, or rate limiting, per forge.
pub fn failure(kind: ForgeKind, mode: Mode) -> Option<Response> {
    let gh = kind == ForgeKind::Github;
    match mode {
        Mode::Up | Mode::Stall(_) => None,
        Mode::Down(502) => Some(
            (
                StatusCode::BAD_GATEWAY,
                [("content-type", "text/html")],
                "<html><body><h1>502 Bad Gateway</h1></body></html>",
            )
                .into_response(),
        ),
        Mode::Down(status) => {
            let message = match (gh, status) {
                (true, 404) => "Not Found",
                (true, 403) => "Resource not accessible by personal access token",
                (true, _) => "Server Error",
                (false, 404) => "404 Project Not Found",
                (false, 403) => "403 Forbidden",
                (false, _) => "500 Internal Server Error",
            };
            let body = if gh {
                json!({"message": message, "documentation_url": "https://docs.github.com/rest", "status": status.to_string()})
            } else {
                json!({"message": message})
            };
            Some(json_response(status, &body, &[]))
        }
        Mode::RateLimited(secs) => {
            let body = if gh {
                json!({"message": "You have exceeded a secondary rate limit.", "documentation_url": "https://docs.github.com/rest"})
            } else {
                json!({"message": "Retry later"})
            };
            Some(json_response(429, &body, &[("retry-after", secs.to_string())]))
        }
        Mode::SecondaryLimit(secs) => {
            let body = json!({
                "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"
            });
            let mut headers = vec![("x-ratelimit-remaining", "4987".to_owned())];
            if let Some(secs) = secs {
                headers.push(("retry-after", secs.to_string()));
            }
            Some(json_response(403, &body, &headers))
        }
        Mode::Garbled => Some(
            (StatusCode::OK, [("content-type", "text/html")], "<html><body>Sign in to continue</body></html>")
                .into_response(),
        ),
        Mode::Hostile => Some(json_response(502, &json!({"message": format!("upstream rejected token {TOKEN}")}), &[])),
    }
}

pub async fn handle(State(fake): State<Fake>, req: Request) -> Response {
    let arrived = std::time::Instant::now();
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let (kind, delay) = {
        let s = fake.0.lock().unwrap();
        (s.kind, s.delay)
    };
    let target = target_of(kind, path_only(&path));
    {
        let mut s = fake.0.lock().unwrap();
        s.gh.concurrent += 1;
        s.gh.max_concurrent = s.gh.max_concurrent.max(s.gh.concurrent);
    }
    if let Some(t) = &target {
        let mut s = fake.0.lock().unwrap();
        let n = s.in_flight.entry(t.clone()).or_default();
        *n += 1;
        let n = *n;
        s.max_in_flight = s.max_in_flight.max(n);
    }
    // A scripted stall is left in the script: the route takes it as its answer mode (`Up`).
    let stall = match fake.0.lock().unwrap().script.front() {
        Some(Mode::Stall(ms)) => Duration::from_millis(*ms),
        _ => Duration::ZERO,
    };
    if !(delay + stall).is_zero() {
        tokio::time::sleep(delay + stall).await;
    }
    {
        let mut s = fake.0.lock().unwrap();
        let r = match oauth::route(&mut s, &parts.method, &path, &parts.headers, &bytes) {
            Some(r) => r,
            None if kind == ForgeKind::Github => github::route(&mut s, &parts.method, &path, &parts.headers, &bytes),
            None => gitlab::route(&mut s, &parts.method, &path, &parts.headers, &bytes),
        };
        s.seen.push(Seen {
            method: parts.method.to_string(),
            path: path.clone(),
            status: r.status().as_u16(),
            arrived,
            at: std::time::Instant::now(),
        });
        if let Some(t) = &target {
            *s.in_flight.get_mut(t).unwrap() -= 1;
        }
        s.gh.concurrent -= 1;
        r
    }
}

/// The PR a request is about, for the overlap check (comment ids are looked up by the handlers).
pub fn target_of(kind: ForgeKind, path: &str) -> Option<(String, u64)> {
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (kind, seg.as_slice()) {
        (ForgeKind::Github, ["repos", o, r, "issues", n, "comments"]) => Some((format!("{o}/{r}"), n.parse().ok()?)),
        (ForgeKind::Gitlab, ["api", "v4", "projects", p, "merge_requests", n, "notes", ..]) => {
            Some((p.replace("%2F", "/"), n.parse().ok()?))
        }
        _ => None,
    }
}

pub fn query(path: &str) -> HashMap<String, String> {
    path.split_once('?')
        .map(|(_, q)| q.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect())
        .unwrap_or_default()
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// Pages as both APIs do: `per_page` (default 30 on GitHub, 20 on GitLab, at most 100) and `page`.
pub fn page<'a, T>(items: &'a [T], q: &HashMap<String, String>, default: usize) -> (&'a [T], usize, usize) {
    let per_page = q.get("per_page").and_then(|v| v.parse().ok()).unwrap_or(default).clamp(1, 100);
    let page: usize = q.get("page").and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
    let start = ((page - 1) * per_page).min(items.len());
    let end = (start + per_page).min(items.len());
    let pages = items.len().div_ceil(per_page).max(1);
    (&items[start..end], page, pages)
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

pub fn settings() -> ReporterSettings {
    ReporterSettings {
        batch: 16,
        poll: Duration::from_millis(10),
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(80),
        retry_after_max: Duration::from_secs(3600),
        max_attempts: 60,
        call_timeout: Duration::from_secs(10),
    }
}

pub fn client(kind: ForgeKind, url: &str, token: &str) -> AnyForge {
    let token = SecretString::from(token.to_owned());
    match kind {
        ForgeKind::Github => AnyForge::Github(GithubClient::new(url, &token, Duration::from_secs(5)).unwrap()),
        ForgeKind::Gitlab => AnyForge::Gitlab(GitlabClient::new(url, &token, Duration::from_secs(5)).unwrap()),
    }
}

pub fn reporter(pool: &PgPool, fake: &Fake, kind: ForgeKind) -> Reporter<AnyForge> {
    Reporter::new(pool.clone(), settings()).with_forge(kind, client(kind, &fake.url(), TOKEN))
}

pub fn repo_of(kind: ForgeKind) -> &'static str {
    match kind {
        ForgeKind::Github => REPO,
        ForgeKind::Gitlab => GITLAB_REPO,
    }
}

pub async fn stand(pool: &PgPool, branch: &str) -> i64 {
    sqlx::query_scalar(
        "insert into stands (project, branch, namespace, pr_number) values ('shop', $1, 'draft-' || replace($1, '/', '-'), $2)
         returning stand_id",
    )
    .bind(branch)
    .bind(PR as i64)
    .fetch_one(pool)
    .await
    .unwrap()
}

pub fn view(stand_id: StandId, run: i32, status: Status) -> ReportView {
    ReportView {
        stand_id,
        project: "shop".into(),
        branch: "feature/login".into(),
        namespace: "draft-feature-login".into(),
        url: Some("https://draft-feature-login.draft.example.com".into()),
        sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
        head_sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
        run_number: run,
        kind: RunKind::Deploy,
        trigger: Trigger::Pushed,
        requested_by: None,
        stand_link: Some(format!("http://127.0.0.1:8080/stands/{stand_id}")),
        run_link: Some(format!("http://127.0.0.1:8080/stands/{stand_id}/runs/{run}")),
        status,
        steps: vec![
            StepLine { name: "namespace".into(), state: StepState::Succeeded, duration_ms: Some(412), note: None },
            StepLine { name: "database".into(), state: StepState::Succeeded, duration_ms: Some(1_830), note: None },
            StepLine {
                name: "secrets".into(),
                state: StepState::Skipped,
                duration_ms: Some(3),
                note: Some("[vault] is not configured".into()),
            },
            StepLine { name: "deploy".into(), state: StepState::Succeeded, duration_ms: Some(74_250), note: None },
        ],
        mocks: vec!["payments".into(), "sms".into()],
        expires_at: Some(chrono::Utc.with_ymd_and_hms(2026, 11, 27, 14, 0, 0).unwrap()),
        expiry_warning: false,
        extended_by: None,
        error: None,
        cost: None,
        waiting: None,
        access: None,
        degraded: None,
        awaiting_approval: None,
    }
}

pub async fn enqueue(pool: &PgPool, kind: ForgeKind, stand_id: StandId, run: i32) -> (i64, String) {
    let body = render(&view(stand_id, run, Status::Ready));
    let payload = CommentPayload {
        forge: kind,
        repo: repo_of(kind).into(),
        number: PR,
        marker: marker(stand_id),
        body: body.clone(),
    };
    (enqueue_comment(pool, stand_id, None, &payload).await.unwrap(), body)
}

pub async fn states(pool: &PgPool, stand_id: StandId) -> Vec<(i64, String, i32, Option<String>)> {
    sqlx::query_as("select outbox_id, state, attempts, last_error from outbox where stand_id = $1 order by outbox_id")
        .bind(stand_id)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Passes until nothing is pending for `stand_id` or `deadline` passes.
pub async fn drain(r: &Reporter<AnyForge>, pool: &PgPool, stand_id: StandId, deadline: Duration) {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        r.pass().await.unwrap();
        let pending: i64 = sqlx::query_scalar("select count(*) from outbox where stand_id = $1 and state = 'pending'")
            .bind(stand_id)
            .fetch_one(pool)
            .await
            .unwrap();
        if pending == 0 || tokio::time::Instant::now() > end {
            return;
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// A run of `stand_id` asked for on the forge by `login`, inserted and returned as a worker claims it.
pub async fn command_run(
    pool: &PgPool,
    stand_id: StandId,
    kind: &str,
    trigger: &str,
    login: &str,
    sha: &str,
    params: Value,
) -> draftd::store::runs::ClaimedRun {
    let (run_id, number, kind, trigger): (RunId, i32, RunKind, Trigger) = sqlx::query_as(
        "insert into runs (stand_id, number, kind, trigger, automatic, epoch, sha, requested_by, params)
         values ($1, (select coalesce(max(number), 0) + 1 from runs where stand_id = $1), $2, $3, false, 0, $4, $5, $6)
         returning run_id, number, kind, trigger",
    )
    .bind(stand_id)
    .bind(kind)
    .bind(trigger)
    .bind(sha)
    .bind(login)
    .bind(&params)
    .fetch_one(pool)
    .await
    .unwrap();
    draftd::store::runs::ClaimedRun {
        run_id,
        stand_id,
        number,
        kind,
        trigger,
        sha: Some(sha.into()),
        epoch: 0,
        requested_by: Some(login.into()),
        params,
        attempt: 1,
        project: ProjectName::new("shop").unwrap(),
        branch: BranchName::new("feature/login").unwrap(),
        namespace: Namespace::parse("draft-feature-login").unwrap(),
    }
}
