use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::json;
use tracing::Span;

use super::webhook::{GithubWebhook, GitlabWebhook, Webhook};
use super::{ApiError, AppState, RequestId};
use crate::forge::{github, gitlab};
use crate::store::intake::{self, Delivery};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks/github", post(github_hook))
        .route("/webhooks/gitlab", post(gitlab_hook))
        .route_layer(middleware::from_fn(count_delivery))
}

/// What a verified delivery turned into, left on the response for [`count_delivery`]. Only verified
/// deliveries carry their event name into the metric: anyone can send a header, and label values
/// must stay few.
#[derive(Clone)]
struct Counted {
    event: String,
    outcome: &'static str,
}

fn counted(mut response: Response, event: &str, outcome: &'static str) -> Response {
    response.extensions_mut().insert(Counted { event: event.to_owned(), outcome });
    response
}

/// Every webhook request in the delivery counter and the intake latency histogram, refusals included.
async fn count_delivery(req: Request, next: Next) -> Response {
    let forge = if req.uri().path().ends_with("/github") { "github" } else { "gitlab" };
    let started = Instant::now();
    let response = next.run(req).await;
    let (event, outcome) = match response.extensions().get::<Counted>() {
        Some(c) => (c.event.clone(), c.outcome),
        None if response.status().is_server_error() => ("unknown".to_owned(), "error"),
        None => ("unknown".to_owned(), "refused"),
    };
    metrics::counter!(crate::metrics::WEBHOOK_DELIVERIES, "forge" => forge, "event" => event, "outcome" => outcome)
        .increment(1);
    metrics::histogram!(crate::metrics::INTAKE_DURATION, "forge" => forge).record(started.elapsed().as_secs_f64());
    response
}

async fn github_hook(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    GithubWebhook(hook): GithubWebhook,
) -> Result<Response, ApiError> {
    note_span(&hook);
    if hook.event == "ping" {
        tracing::info!("ping");
        let response = (StatusCode::OK, Json(json!({ "pong": true, "project": hook.project.name }))).into_response();
        return Ok(counted(response, &hook.event, "ping"));
    }
    let event = github::normalise(&hook.event, &hook.body, &hook.project)?;
    record(&state, &hook, &event, &id).await
}

async fn gitlab_hook(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    GitlabWebhook(hook): GitlabWebhook,
) -> Result<Response, ApiError> {
    note_span(&hook);
    let event = gitlab::normalise(&hook.event, &hook.body, &hook.project)?;
    record(&state, &hook, &event, &id).await
}

fn note_span(hook: &Webhook) {
    let span = Span::current();
    span.record("delivery", hook.delivery_id.as_str());
    span.record("project", hook.project.name.as_str());
}

/// Records the delivery, its stand and run in one transaction; 202 when recorded now, 200 with the
/// original answer for a redelivery.
async fn record(
    state: &AppState,
    hook: &Webhook,
    event: &crate::forge::Event,
    id: &RequestId,
) -> Result<Response, ApiError> {
    if !state.migrated() {
        return Err(ApiError::Unavailable("draftd is starting: migrations are not applied yet"));
    }
    let delivery = Delivery {
        forge: hook.forge,
        delivery_id: &hook.delivery_id,
        project: &hook.project.name,
        event_name: &hook.event,
        body_sha256: &hook.body_sha256,
        event,
        strip_branch_prefix: hook.project.settings.strip_branch_prefix,
        request_id: Some(&id.0),
    };
    let recorded = intake::record(state.pool(), &delivery).await?;
    if let Some(stand) = recorded.stand {
        Span::current().record("stand", stand);
    }
    if recorded.run.is_some() {
        state.wake().wake();
    }
    let status = if recorded.redelivery { StatusCode::OK } else { StatusCode::ACCEPTED };
    let outcome = if recorded.redelivery {
        "duplicate"
    } else if recorded.run.is_some() {
        "queued"
    } else {
        "ignored"
    };
    tracing::info!(
        event = %hook.event,
        redelivery = recorded.redelivery,
        run = recorded.run,
        ignored = recorded.response.get("ignored").and_then(|v| v.as_str()),
        "delivery recorded"
    );
    Ok(counted((status, Json(recorded.response)).into_response(), &hook.event, outcome))
}
