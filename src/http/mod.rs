//! The HTTP surface on one listener: webhooks, the stand API, the dashboard, health and metrics.

/// Private stands: ingress-nginx's auth check, and signing in with the forge.
pub mod access;
/// The stand API: `/api/v1/stands…`, bearer token.
mod api;
mod auth;
/// The dashboard: server-rendered pages, a login form, buttons behind a session cookie and CSRF token.
mod dashboard;
mod error;
/// Health endpoints for Kubernetes probes.
mod health;
/// `/metrics`: Prometheus text.
mod metrics;
/// `/api/v1/openapi.json`: the API's OpenAPI description.
mod openapi;
/// The stand API's JSON, apart from the store's rows.
pub mod schema;
/// Requests for sleeping stands, on a listener of their own: wake the stand, hold, send round again.
pub mod wake;
/// Webhooks: extractors that verify before anything is read, and handlers that normalise, record, answer.
mod webhooks;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use sqlx::PgPool;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

pub use error::ApiError;

use crate::cluster::dry_run::DryRunLogs;
use crate::cluster::logs::LogReader;
use crate::config::{ClusterMode, Config, ForgeKind, Project, Projects};
use crate::forge::client::ForgeProblems;
use crate::pipeline::Wake;

/// Shared by every request; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    pool: PgPool,
    /// (forge, lowercased repository path) → project.
    projects: HashMap<(ForgeKind, String), Arc<Project>>,
    github_secret: Option<SecretString>,
    gitlab_secret: Option<SecretString>,
    api_token: Option<SecretString>,
    /// Links and cookie settings (the dashboard's session cookie is `Secure` on https).
    public_url: String,
    max_body_bytes: usize,
    /// Set once migrations are applied; until then webhooks answer 503 and the startup probe fails.
    migrated: AtomicBool,
    /// Wakes this process's workers when a request queues a run.
    wake: Wake,
    /// What the forge clients found they cannot do per repository (an App not installed there).
    forge_problems: ForgeProblems,
    /// `[cost]`: the stands' cost in the API.
    cost: crate::config::CostConfig,
    /// `[access]`: the check, its key and the forges' sign-in; `None` when every stand is public.
    access: Option<Arc<access::Gate>>,
    /// Where the stand page reads its pods' logs; `None` in kubernetes mode until `serve` hands over
    /// its cluster client ([`AppState::with_logs`]).
    logs: Option<Arc<dyn LogReader>>,
    /// The whole configuration, for the sticky comment of a fork's commit held for approval.
    config: Arc<Config>,
}

impl AppState {
    pub fn new(config: &Config, projects: Projects, pool: PgPool) -> Self {
        let Projects { projects, github_secret, gitlab_secret, api_token, access } = projects;
        let access = access.and_then(|secrets| access::Gate::from_config(config, secrets, pool.clone()));
        let projects =
            projects.into_iter().map(|p| ((p.settings.forge, p.settings.repo.to_lowercase()), Arc::new(p))).collect();
        AppState(Arc::new(Inner {
            pool,
            projects,
            github_secret,
            gitlab_secret,
            api_token,
            public_url: config.public_url.clone(),
            max_body_bytes: config.intake.max_body_bytes,
            migrated: AtomicBool::new(false),
            wake: Wake::default(),
            forge_problems: ForgeProblems::default(),
            cost: config.cost.clone(),
            access,
            config: Arc::new(config.clone()),
            logs: match config.cluster.mode {
                ClusterMode::DryRun => Some(Arc::new(DryRunLogs)),
                ClusterMode::Kubernetes => None,
            },
        }))
    }

    /// The stand page's logs come from `reader` (the cluster's client in kubernetes mode). Called
    /// while composing, before the state is shared.
    pub fn with_logs(mut self, reader: Arc<dyn LogReader>) -> Self {
        match Arc::get_mut(&mut self.0) {
            Some(inner) => inner.logs = Some(reader),
            None => panic!("AppState::with_logs after the state was shared: call it right after AppState::new"),
        }
        self
    }

    fn logs(&self) -> Option<&Arc<dyn LogReader>> {
        self.0.logs.as_ref()
    }

    /// The access check, when `[access]` is configured.
    pub fn access(&self) -> Option<&Arc<access::Gate>> {
        self.0.access.as_ref()
    }

    /// The configuration `serve` was started with.
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    pub fn cost_rates(&self) -> crate::stand::Rates {
        self.0.cost.rates()
    }

    /// `[cost]`: prices and currency.
    pub fn prices(&self) -> &crate::config::CostConfig {
        &self.0.cost
    }

    /// What a stand has cost so far, once it was awake; `None` before.
    pub async fn cost_of(
        &self,
        stand: crate::stand::StandId,
    ) -> Result<Option<crate::stand::Cost>, crate::store::StoreError> {
        let priced = crate::store::usage::priced(self.pool(), stand, &self.0.cost, chrono::Utc::now()).await?;
        Ok(priced.map(|p| p.cost))
    }

    /// Hand it to the forge clients ([`crate::forge::client::AnyForge::watch_problems`]), and
    /// `/health/ready` lists what they find per project.
    pub fn forge_problems(&self) -> &ForgeProblems {
        &self.0.forge_problems
    }

    /// Every configured project (for health details).
    fn projects(&self) -> impl Iterator<Item = &Arc<Project>> {
        self.0.projects.values()
    }

    /// The engine of this process shares it, so a run queued here starts without waiting for a poll.
    pub fn wake(&self) -> &Wake {
        &self.0.wake
    }

    pub fn pool(&self) -> &PgPool {
        &self.0.pool
    }

    pub fn project(&self, forge: ForgeKind, repo: &str) -> Option<Arc<Project>> {
        self.0.projects.get(&(forge, repo.to_lowercase())).cloned()
    }

    fn github_secret(&self) -> Option<&SecretString> {
        self.0.github_secret.as_ref()
    }

    fn gitlab_secret(&self) -> Option<&SecretString> {
        self.0.gitlab_secret.as_ref()
    }

    pub(crate) fn api_token(&self) -> Option<&SecretString> {
        self.0.api_token.as_ref()
    }

    fn public_url(&self) -> &str {
        &self.0.public_url
    }

    fn max_body_bytes(&self) -> usize {
        self.0.max_body_bytes
    }

    pub fn set_migrated(&self) {
        self.0.migrated.store(true, Ordering::Release);
    }

    pub fn migrated(&self) -> bool {
        self.0.migrated.load(Ordering::Acquire)
    }
}

/// The request's id: the caller's `x-request-id` when it is a plausible id, else a new UUID. It is
/// on the request span (so on every log line of the request), in the answer's `x-request-id`, and
/// stored with what the request queued, so the run's log lines carry it too.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn new() -> Self {
        RequestId(uuid::Uuid::new_v4().to_string())
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

const REQUEST_ID: &str = "x-request-id";

async fn request_id(mut req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let given = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).filter(|v| {
        // Anyone can send the header: only short ids of safe characters are kept.
        !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    });
    let id = given.map_or_else(|| RequestId::new().0, str::to_owned);
    tracing::Span::current().record("request_id", id.as_str());
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(req).await;
    if let Ok(value) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Paths where programs call and read JSON; everything else is the dashboard's, for people.
const JSON_PREFIXES: [&str; 4] = ["/api", "/webhooks", "/health", "/metrics"];

/// A refusal before any handler: the API's JSON error body where programs call, the dashboard's
/// error page (with its headers) elsewhere.
fn refuse(path: &str, error: ApiError) -> Response {
    let json =
        JSON_PREFIXES.iter().any(|p| path.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')));
    if json {
        return error.into_response();
    }
    let mut page = dashboard::Page(error).into_response();
    dashboard::protect(page.headers_mut());
    page
}

/// axum's own answer to an unknown path is an empty 404; clients are promised the error body.
async fn no_route(uri: Uri) -> Response {
    refuse(uri.path(), ApiError::NotFound("nothing is served at this path".into()))
}

/// axum's own answer to a wrong method is an empty 405; its `Allow` header is kept.
async fn wrong_method(method: Method, uri: Uri) -> Response {
    refuse(uri.path(), ApiError::MethodNotAllowed(method.to_string()))
}

/// Postgres text cannot hold NUL: a query parameter carrying one (`?project=a%00b`) is refused
/// here, naming it, for every route at once, instead of failing as a 500 where it meets SQL. Path
/// parameters are ids parsed into integers, and JSON bodies are parsed into typed values, before
/// anything reaches SQL.
async fn refuse_nul(req: Request<Body>, next: Next) -> Response {
    let query = req.uri().query().unwrap_or_default();
    let nul = url::form_urlencoded::parse(query.as_bytes()).find(|(k, v)| k.contains('\0') || v.contains('\0'));
    if let Some((name, _)) = nul {
        let field = name.replace('\0', "\\0");
        let message =
            format!("query parameter {field:?} holds a NUL character (%00), which draftd cannot store or look up");
        return refuse(req.uri().path(), ApiError::BadRequest { field: Some(field), message });
    }
    next.run(req).await
}

/// The whole router; tests drive it with `tower::ServiceExt::oneshot`, `serve` binds it.
pub fn router(state: AppState) -> Router {
    // Before anything records: counts made without a recorder are lost.
    crate::metrics::install();
    Router::new()
        .merge(health::router())
        .merge(webhooks::router())
        .merge(api::router())
        .merge(openapi::router())
        .merge(dashboard::router())
        .merge(metrics::router())
        .merge(access::router())
        // After every route is in: it applies to the routes present when it is called.
        .method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
        .layer(axum::middleware::from_fn(refuse_nul))
        // Inside the trace layer, so the id lands on its span.
        .layer(axum::middleware::from_fn(request_id))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    // Headers are deliberately not recorded: X-Gitlab-Token is a secret.
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = %req.uri().path(),
                        request_id = tracing::field::Empty,
                        delivery = tracing::field::Empty,
                        project = tracing::field::Empty,
                        stand = tracing::field::Empty,
                    )
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                // A 503 from a probe during start-up is not an error; real failures are logged
                // where they happen (ApiError), with their cause.
                .on_failure(()),
        )
        .with_state(state)
}

/// How long in-flight requests get to finish after SIGTERM before the process exits anyway;
/// Kubernetes' default grace period is 30 s, so finish well inside it.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
