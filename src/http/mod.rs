//! The HTTP surface on one listener: webhooks, the stand API, the dashboard, health and metrics.

/// The stand API: `/api/v1/stands…`, bearer token.
mod api;
/// The dashboard: server-rendered pages, a login form, buttons behind a session cookie and CSRF token.
mod dashboard;
mod error;
/// Health endpoints for Kubernetes probes.
mod health;
/// `/metrics`: Prometheus text.
mod metrics;
/// `/api/v1/openapi.json`: the API's OpenAPI description.
mod openapi;
/// Webhook extractors: verification before anything is read.
pub mod webhook;
/// Webhook handlers: normalise, record, answer.
mod webhooks;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::Request;
use secrecy::SecretString;
use sqlx::PgPool;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

pub use error::ApiError;

use crate::config::{Config, ForgeKind, Project, Projects};
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
}

impl AppState {
    pub fn new(config: &Config, projects: Projects, pool: PgPool) -> Self {
        let Projects { projects, github_secret, gitlab_secret, api_token } = projects;
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
        }))
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
