//! Shared test harness: real fixtures, signing, an app over a per-test database, and request helpers;
//! and the servers and fakes the tests start, which the benches include by path too.

/// An OpenBao dev server per test.
pub mod bao;
/// The one GitHub fake and the one GitLab fake.
pub mod forge_fake;
/// Real nginx in front of one host, with ingress-nginx's external-auth (`auth-url`, `auth-signin`).
pub mod nginx_auth;
/// A real OCI registry (docker-registry) on loopback, with htpasswd or token auth.
pub mod registry;

use std::path::PathBuf;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use draftd::config::{Config, Projects};
use draftd::http::{AppState, router};
use draftd::stand::{RunId, StandId};
use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use serde_json::Value;
use sha2::Sha256;
use sqlx::PgPool;
use tower::ServiceExt;

pub const GITHUB_SECRET: &str = "gh-test-secret-5f0c9a1e";
pub const GITLAB_SECRET: &str = "gl-test-secret-8d2b7c44";
pub const API_TOKEN: &str = "api-test-token-31c9e0aa";

/// Projects matching the repositories of the recorded payloads.
pub const CONFIG: &str = r#"
[api]
token_env = "API_TOKEN"

[[projects]]
name = "hello-world"
forge = "github"
repo = "Codertocat/Hello-World"
webhook_secret_env = "GH_SECRET"

[[projects]]
name = "forks-welcome"
forge = "github"
repo = "Octocoders/Hello-World"
webhook_secret_env = "GH_SECRET"
forks = "allow"

[[projects]]
name = "gitlab-test"
forge = "gitlab"
repo = "gitlabhq/gitlab-test"
webhook_secret_env = "GL_SECRET"

[[projects]]
name = "woodpecker"
forge = "gitlab"
repo = "test/woodpecker"
webhook_secret_env = "GL_SECRET"
branches = ["next-*", "feature/**"]

[[projects]]
name = "gitlab-notes"
forge = "gitlab"
repo = "gitlab-org/gitlab-test"
webhook_secret_env = "GL_SECRET"
"#;

pub fn config() -> Config {
    Config::from_toml(CONFIG).expect("test config")
}

pub fn projects(config: &Config) -> Projects {
    Projects::resolve_with(config, |var| match var {
        "GH_SECRET" => Some(GITHUB_SECRET.into()),
        "GL_SECRET" => Some(GITLAB_SECRET.into()),
        "API_TOKEN" => Some(API_TOKEN.into()),
        // `[access]`, for configs with private stands (approved forks' stands are private).
        "ACCESS_KEY" => Some("access-test-key-8d1f0c3b5a7e9d2f4b6a8c0e1d3f5a7b".into()),
        "GH_CLIENT_SECRET" => Some("gh-client-secret-0b9a8c7d".into()),
        _ => None,
    })
    .expect("test secrets")
}

/// The router over `pool`, migrations taken as applied (sqlx::test applied them).
pub fn app(pool: PgPool) -> Router {
    let config = config();
    let state = AppState::new(&config, projects(&config), pool);
    state.set_migrated();
    router(state)
}

/// The router over `pool` with another configuration (secrets as [`projects`] resolves them).
pub fn app_with(pool: PgPool, config: &Config) -> Router {
    let state = AppState::new(config, projects(config), pool);
    state.set_migrated();
    router(state)
}

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks").join(name)
}

/// A recorded payload, e.g. `fixture("github/pull_request.opened.json")`.
pub fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub fn sha(n: u32) -> String {
    format!("{n:040x}")
}

/// A recorded GitHub `pull_request` payload with the fields a test varies replaced.
pub fn github_pr(action: &str, branch: &str, sha: &str, updated_at: &str) -> Value {
    let mut v = fixture(&format!("github/pull_request.{action}.json"));
    v["pull_request"]["head"]["ref"] = branch.into();
    v["pull_request"]["head"]["sha"] = sha.into();
    v["pull_request"]["updated_at"] = updated_at.into();
    v
}

/// A recorded GitLab merge request payload (the `open` one) with the varied fields replaced.
pub fn gitlab_mr(action: &str, branch: &str, sha: &str, updated_at: &str) -> Value {
    let mut v = fixture("gitlab/merge_request.open.json");
    let a = &mut v["object_attributes"];
    a["action"] = action.into();
    a["source_branch"] = branch.into();
    a["last_commit"]["id"] = sha.into();
    a["updated_at"] = updated_at.into();
    v
}

pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub struct Response {
    pub status: StatusCode,
    pub body: Value,
}

pub async fn send(app: &Router, req: Request<Body>) -> Response {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Response { status, body }
}

/// A correctly signed GitHub delivery.
pub async fn github(app: &Router, event: &str, delivery: &str, payload: &Value) -> Response {
    let body = serde_json::to_vec(payload).unwrap();
    let sig = sign(GITHUB_SECRET, &body);
    github_raw(app, event, delivery, body, Some(&sig), "application/json").await
}

pub async fn github_raw(
    app: &Router,
    event: &str,
    delivery: &str,
    body: Vec<u8>,
    signature: Option<&str>,
    content_type: &str,
) -> Response {
    let mut req = Request::post("/webhooks/github")
        .header("content-type", content_type)
        .header("x-github-event", event)
        .header("x-github-delivery", delivery);
    if let Some(sig) = signature {
        req = req.header("x-hub-signature-256", sig);
    }
    send(app, req.body(Body::from(body)).unwrap()).await
}

/// A GitLab delivery with the given extra headers (token, idempotency key, event UUID).
pub async fn gitlab_raw(app: &Router, event: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Response {
    let mut req =
        Request::post("/webhooks/gitlab").header("content-type", "application/json").header("x-gitlab-event", event);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(app, req.body(Body::from(body)).unwrap()).await
}

/// A GitLab delivery with the right token and a fresh event UUID.
pub async fn gitlab(app: &Router, event: &str, payload: &Value) -> Response {
    let uuid = uuid::Uuid::new_v4().to_string();
    gitlab_raw(
        app,
        event,
        &[("x-gitlab-token", GITLAB_SECRET), ("x-gitlab-event-uuid", &uuid)],
        serde_json::to_vec(payload).unwrap(),
    )
    .await
}

pub async fn count(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("select count(*) from {table}")).fetch_one(pool).await.unwrap()
}

#[derive(Debug, sqlx::FromRow)]
pub struct Run {
    pub run_id: RunId,
    #[allow(dead_code)] // shown through Debug when an assertion on the runs fails
    pub stand_id: StandId,
    pub number: i32,
    pub kind: String,
    pub trigger: String,
    pub automatic: bool,
    pub sha: Option<String>,
    pub requested_by: Option<String>,
    pub state: String,
    pub params: Value,
}

pub async fn runs(pool: &PgPool) -> Vec<Run> {
    sqlx::query_as(
        "select run_id, stand_id, number, kind, trigger, automatic, sha, requested_by, state, params from runs order by run_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[derive(Debug, sqlx::FromRow)]
pub struct Stand {
    pub stand_id: StandId,
    #[allow(dead_code)] // shown through Debug when an assertion on the stands fails
    pub project: String,
    #[allow(dead_code)] // shown through Debug when an assertion on the stands fails
    pub branch: String,
    pub namespace: String,
    pub state: String,
    pub head_sha: Option<String>,
    pub pr_number: Option<i64>,
}

pub async fn stand(pool: &PgPool, project: &str, branch: &str) -> Option<Stand> {
    sqlx::query_as(
        "select stand_id, project, branch, namespace, state, head_sha, pr_number from stands where project = $1 and branch = $2",
    )
    .bind(project)
    .bind(branch)
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// Queues a run straight in the database (creating the stand on first use), as intake would, for
/// engine tests that start from a queued run; returns its id.
pub async fn queue_run(pool: &PgPool, project: &str, branch: &str, namespace: &str, kind: &str, sha: &str) -> RunId {
    let stand: StandId = sqlx::query_scalar(
        "insert into stands (project, branch, namespace, runs_count) values ($1, $2, $3, 1)
         on conflict (project, branch) do update set runs_count = stands.runs_count + 1
         returning stand_id",
    )
    .bind(project)
    .bind(branch)
    .bind(namespace)
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query_scalar(
        "insert into runs (stand_id, number, kind, trigger, automatic, epoch, sha)
         values ($1, (select coalesce(max(number), 0) + 1 from runs where stand_id = $1), $2, 'pushed', true, 0, $3)
         returning run_id",
    )
    .bind(stand)
    .bind(kind)
    .bind(sha)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A stand whose every probe answers 200, for fake clusters.
pub struct Healthy;

impl draftd::cluster::verify::Prober for Healthy {
    async fn probe(&self, _: std::time::Duration) -> draftd::cluster::verify::ProbeResult {
        draftd::cluster::verify::ProbeResult::Status(200)
    }
    fn target(&self) -> String {
        "fake".into()
    }
}

/// A Helm release's history as helm keeps it, for fakes of the `Helm` trait: a new revision supersedes
/// the deployed one, and revision numbers start again after an uninstall.
#[derive(Default)]
pub struct FakeHistory(std::sync::Mutex<Vec<draftd::helm::Revision>>);

impl FakeHistory {
    /// Adds the next revision with `status`; returns it.
    pub fn add(&self, status: &str) -> draftd::helm::Revision {
        let mut revisions = self.0.lock().unwrap();
        if status == "deployed" {
            for r in revisions.iter_mut().filter(|r| r.status == "deployed") {
                r.status = "superseded".into();
            }
        }
        let revision = revisions.last().map_or(1, |r| r.revision + 1);
        revisions.push(draftd::helm::Revision {
            revision,
            status: status.into(),
            chart: "stand-0.1.0".into(),
            app_version: "0.0.0".into(),
            description: String::new(),
            updated: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        });
        revisions[revisions.len() - 1].clone()
    }
    pub fn get(&self) -> Vec<draftd::helm::Revision> {
        self.0.lock().unwrap().clone()
    }
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// A dry-run configuration with one project, `shop`, on the stand chart and draft values, its
/// stands' folders under `stands`; `top` goes first (e.g. a `[sleep]` table).
pub fn dry_run_shop(stands: &std::path::Path, top: &str) -> Config {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Config::from_toml(&format!(
        r#"{top}
[cluster]
mode = "dry-run"
dry_run_dir = "{stands}"
helm_path = "{root}/.tools/bin/helm"

[[projects]]
name = "shop"
forge = "github"
repo = "acme/shop"
webhook_secret_env = "X"
image = "registry.example.com/acme/shop"
chart = "{root}/charts/stand"
values = ["{root}/values/draft.yaml"]
"#,
        stands = stands.display(),
        root = root.display(),
    ))
    .unwrap()
}
