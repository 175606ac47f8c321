//! `GET /api/v1/openapi.json`: the API described with utoipa, from the handlers' own annotations.
//!
//! The stand API is described on its handlers in `api.rs`. The webhook and health handlers carry no
//! annotations, so bodiless stand-ins here carry their descriptions; the `openapi` test checks every
//! documented operation against the real router either way. The dashboard (HTML) and `/metrics`
//! (Prometheus text) are left out: they are not JSON interfaces that scripts call.
//!
//! Served without the token: the document describes the API and reveals nothing about stands.

use std::sync::LazyLock;

use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::AppState;
use super::error::ErrorBody;
use crate::stand::{RunId, StandId};

/// The security scheme's name in the document; the operations in `api.rs` name it as a literal.
const BEARER: &str = "bearer";

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/openapi.json", get(document))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "draftd",
        version = env!("CARGO_PKG_VERSION"),
        description = "Draft stands: per-pull-request preview environments in Kubernetes. The stand API \
            (`/api/v1`) takes a bearer token, the one named by `[api] token_env`; webhooks are verified with \
            each project's secret instead.",
    ),
    paths(
        super::api::list,
        super::api::show,
        super::api::rerun,
        super::api::extend,
        super::api::destroy,
        super::api::wake,
        super::api::metrics_summary,
        document,
        github_webhook,
        gitlab_webhook,
        health,
        health_ready,
        health_startup,
    ),
    modifiers(&BearerToken, &OptionalBodies),
    tags(
        (name = "stands", description = "Draft stands: list, inspect, re-run, extend, destroy"),
        (name = "metrics", description = "Delivery figures per project"),
        (name = "webhooks", description = "Deliveries from GitHub and GitLab"),
        (name = "health", description = "Probes for Kubernetes"),
        (name = "meta", description = "This document"),
    ),
)]
struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The token named by `[api] token_env`"))
                    .build(),
            ),
        );
    }
}

/// Operations whose request body may be left out, which `#[utoipa::path]` cannot express.
struct OptionalBodies;

impl Modify for OptionalBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let extend = openapi.paths.paths.get_mut("/api/v1/stands/{id}/extend").and_then(|item| item.post.as_mut());
        if let Some(body) = extend.and_then(|op| op.request_body.as_mut()) {
            body.required = Some(utoipa::openapi::Required::False);
        }
    }
}

static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(ApiDoc::openapi);

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI document of draftd's HTTP interface", body = serde_json::Value)),
)]
async fn document() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(&DOCUMENT)
}

/// What a webhook delivery answers.
// The stand-ins below describe handlers that build these bodies with `json!`.
#[allow(dead_code)]
#[derive(Serialize, ToSchema)]
struct DeliveryAnswer {
    /// The delivery's id (GitHub's `X-GitHub-Delivery`; GitLab's `Idempotency-Key`, else `sha256:`
    /// and the body's digest).
    delivery: String,
    /// The stand the delivery concerns, when there is one.
    #[schema(nullable = false)]
    stand: Option<StandId>,
    /// The run it queued; present (and null when nothing was queued) whenever `stand` is.
    run: Option<RunId>,
    /// Why nothing was queued, when nothing was. A delivery the GitHub App's or GitLab group's secret
    /// verifies but that concerns no project draftd serves is not recorded and says `unknown_project`,
    /// `no_project`, `unreadable_payload` or `unsupported_content_type`.
    #[schema(nullable = false)]
    ignored: Option<String>,
}

/// What draftd reads of a GitHub payload before its signature: the repository picks the project,
/// whose secret then verifies the signature. The rest of the payload is the event's own.
#[allow(dead_code)]
#[derive(ToSchema)]
struct GithubPayload {
    repository: GithubRepository,
}

#[allow(dead_code)]
#[derive(ToSchema)]
struct GithubRepository {
    /// `owner/name`, matched without regard to case against each project's `repo`.
    #[schema(example = "acme/shop")]
    full_name: String,
}

/// What draftd reads of a GitLab payload before its token: the project picks draftd's project,
/// whose secret the token must match. The rest of the payload is the event's own.
#[allow(dead_code)]
#[derive(ToSchema)]
struct GitlabPayload {
    project: GitlabProject,
}

#[allow(dead_code)]
#[derive(ToSchema)]
struct GitlabProject {
    /// `group/…/name`, matched without regard to case against each project's `repo`.
    #[schema(example = "acme/platform/shop")]
    path_with_namespace: String,
}

/// GitHub's `ping` event, sent when a webhook is created.
#[allow(dead_code)]
#[derive(Serialize, ToSchema)]
struct Pong {
    pong: bool,
    /// The project the repository maps to.
    project: String,
}

#[allow(dead_code)]
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
enum GithubAnswer {
    Delivery(DeliveryAnswer),
    Pong(Pong),
}

// The health handlers build these bodies with `json!`.
#[allow(dead_code)]
#[derive(Serialize, ToSchema)]
struct Status {
    /// `ok`, or why not.
    status: String,
}

#[allow(dead_code)]
#[derive(Serialize, ToSchema)]
struct Readiness {
    /// `ok` or `unavailable`.
    status: String,
    /// The database answered within 2 s.
    database: bool,
    /// Migrations are applied.
    migrated: bool,
    /// Repositories a forge cannot serve until someone acts; a detail for operators, not a failed probe.
    forges: Vec<ForgeProblem>,
}

#[allow(dead_code)]
#[derive(Serialize, ToSchema)]
struct ForgeProblem {
    /// The project configured for the repository, when there is one.
    project: Option<String>,
    /// The repository as configured (GitHub `owner/name`, GitLab project path).
    repo: String,
    /// Stable, for programs: `app_not_installed` (the GitHub App is not installed on the repository).
    problem: String,
}

/// A GitHub webhook delivery (repository or GitHub App webhook, content type `application/json`).
/// Verified, recorded with the run it queues, and answered; the deploy happens later, in workers.
/// A redelivery (same `X-GitHub-Delivery`) queues nothing and gets the first answer again.
#[utoipa::path(
    post,
    path = "/webhooks/github",
    tag = "webhooks",
    // What the extractor takes: visible ASCII with inner spaces, at most 200 bytes; anything else is
    // answered 400 as missing.
    params(
        ("X-GitHub-Event" = String, Header, description = "The event name, e.g. `pull_request`",
            pattern = r"^[!-~]([ -~]*[!-~])?$", max_length = 200),
        ("X-GitHub-Delivery" = String, Header, description = "The delivery's id; deliveries are deduplicated by it",
            pattern = r"^[!-~]([ -~]*[!-~])?$", max_length = 200),
        ("X-Hub-Signature-256" = String, Header,
            description = "`sha256=` and the hex HMAC-SHA256 of the body, keyed with the GitHub App's secret or \
                the project's `webhook_secret_env`"),
    ),
    request_body(content = GithubPayload, content_type = "application/json",
        description = "The event's payload as GitHub sends it; its `repository.full_name` selects the project. A \
            webhook set to `application/x-www-form-urlencoded` sends it as the form's `payload` field, read alike"),
    responses(
        (status = 202, description = "Recorded; a run is queued unless `ignored` says why not. A verified delivery \
            draftd cannot read is recorded as ignored rather than refused; one the App's secret verifies for a \
            repository draftd does not serve is answered here too (`ignored`: `unknown_project`, …)",
            body = DeliveryAnswer),
        (status = 200, description = "A redelivery, answered as the first time; or the answer to `ping`",
            body = GithubAnswer),
        (status = 400, description = "A header is missing (`field` names it), or a delivery no secret verifies is \
            not JSON or not a repository event", body = ErrorBody),
        (status = 401, description = "The signature is missing or does not match", body = ErrorBody),
        (status = 404, description = "No project is configured for the repository, and the App's secret does not \
            verify the delivery", body = ErrorBody),
        (status = 413, description = "The body is larger than `[intake] max_body_bytes`", body = ErrorBody),
        (status = 415, description = "The content type is neither `application/json` nor a form with the JSON as \
            its `payload` field, and the App's secret does not verify the delivery", body = ErrorBody),
        (status = 500, description = "Internal error (logged; `code`: `internal`)", body = ErrorBody),
        (status = 503, description = "Starting (migrations not applied yet) or the database is unavailable. \
            GitHub does not redeliver a failed delivery by itself: the reaper's resync finds what was missed",
            body = ErrorBody),
    ),
)]
#[allow(dead_code)]
async fn github_webhook() {}

/// A GitLab webhook delivery (project or group webhook). Verified, recorded with the run it queues,
/// and answered; the deploy happens later, in workers. A retry or resend (same `Idempotency-Key`,
/// else the same body) queues nothing and gets the first answer again.
#[utoipa::path(
    post,
    path = "/webhooks/gitlab",
    tag = "webhooks",
    // As for GitHub; `Idempotency-Key` and `X-Gitlab-Event-UUID` that are not such text are ignored.
    params(
        ("X-Gitlab-Event" = String, Header, description = "The event name, e.g. `Merge Request Hook`",
            pattern = r"^[!-~]([ -~]*[!-~])?$", max_length = 200),
        ("X-Gitlab-Token" = String, Header,
            description = "The webhook's secret token: the group-wide secret or the project's `webhook_secret_env`"),
        ("Idempotency-Key" = Option<String>, Header,
            description = "Deduplicates retries and resends (GitLab 17.4 and later); without it, the body's digest does"),
        ("X-Gitlab-Event-UUID" = Option<String>, Header,
            description = "Not used: GitLab sends a new one with every request, retries and resends included"),
    ),
    request_body(content = GitlabPayload, content_type = "application/json",
        description = "The event's payload as GitLab sends it; its `project.path_with_namespace` selects the project"),
    responses(
        (status = 202, description = "Recorded; a run is queued unless `ignored` says why not. A verified delivery \
            draftd cannot read is recorded as ignored rather than refused (GitLab switches a hook off after four \
            failures); one the group's token verifies for a project draftd does not serve is answered here too \
            (`ignored`: `unknown_project`, …)", body = DeliveryAnswer),
        (status = 200, description = "A retry, answered as the first time", body = DeliveryAnswer),
        (status = 400, description = "A header is missing (`field` names it), or a delivery no token verifies is \
            not JSON or not a project event", body = ErrorBody),
        (status = 401, description = "The token is missing or does not match", body = ErrorBody),
        (status = 404, description = "No project is configured for the GitLab project, and the group's token does \
            not verify the delivery", body = ErrorBody),
        (status = 413, description = "The body is larger than `[intake] max_body_bytes`", body = ErrorBody),
        (status = 415, description = "The content type is not `application/json`, and the group's token does not \
            verify the delivery", body = ErrorBody),
        (status = 500, description = "Internal error (logged; `code`: `internal`)", body = ErrorBody),
        (status = 503, description = "Starting (migrations not applied yet) or the database is unavailable. \
            The reaper's resync finds what a failed delivery missed", body = ErrorBody),
    ),
)]
#[allow(dead_code)]
async fn gitlab_webhook() {}

/// Liveness: the process answers. Nothing else is checked, so a database outage never restarts draftd.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses((status = 200, description = "Alive (`status`: `ok`)", body = Status)),
)]
#[allow(dead_code)]
async fn health() {}

/// Readiness: migrations are applied and the database answers.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready; the flags say why", body = Readiness),
    ),
)]
#[allow(dead_code)]
async fn health_ready() {}

/// Start-up: migrations are applied.
#[utoipa::path(
    get,
    path = "/health/startup",
    tag = "health",
    responses(
        (status = 200, description = "Started (`status`: `ok`)", body = Status),
        (status = 503, description = "Still migrating (`status`: `migrating`)", body = Status),
    ),
)]
#[allow(dead_code)]
async fn health_startup() {}
