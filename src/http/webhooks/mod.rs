//! `/webhooks/github` and `/webhooks/gitlab`: the extractors ([`extract`]) verify a delivery before
//! anything of it is read; the handlers here normalise it, record it, and answer.

mod extract;

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::json;
use tracing::Span;

use self::extract::{GithubWebhook, GitlabWebhook, NotServed, Verified, Webhook};
use super::{ApiError, AppState, RequestId};
use crate::forge::{Event, PayloadError, github, gitlab};
use crate::stand::RunId;
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
    GithubWebhook(verified): GithubWebhook,
) -> Result<Response, ApiError> {
    let hook = match verified {
        Verified::Served(hook) => hook,
        Verified::NotServed(n) => return Ok(not_served(&n)),
    };
    note_span(&hook);
    if hook.event == "ping" {
        tracing::info!("ping");
        let response = (StatusCode::OK, Json(json!({ "pong": true, "project": hook.project.name }))).into_response();
        return Ok(counted(response, &hook.event, "ping"));
    }
    let event = readable(&hook, github::normalise(&hook.event, &hook.body, &hook.project));
    record(&state, &hook, &event, &id).await
}

async fn gitlab_hook(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    GitlabWebhook(verified): GitlabWebhook,
) -> Result<Response, ApiError> {
    let hook = match verified {
        Verified::Served(hook) => hook,
        Verified::NotServed(n) => return Ok(not_served(&n)),
    };
    note_span(&hook);
    let event = readable(&hook, gitlab::normalise(&hook.event, &hook.body, &hook.project));
    record(&state, &hook, &event, &id).await
}

/// A verified delivery of a shape draftd does not know is recorded as ignored, saying where the
/// shape differs: a refusal would only be sent again with every such event, and count towards the
/// forge switching the hook off.
fn readable(hook: &Webhook, normalised: Result<Event, PayloadError>) -> Event {
    normalised.unwrap_or_else(|e| {
        tracing::warn!(
            event = %hook.event,
            field = %e.field,
            error = %e.message,
            "verified delivery has a shape draftd does not read; recorded as ignored"
        );
        Event::ignored(format!("unexpected payload: {e}"))
    })
}

/// 202 for a delivery a forge-wide secret verified that concerns no served project.
fn not_served(n: &NotServed) -> Response {
    let span = Span::current();
    span.record("delivery", n.delivery_id.as_str());
    tracing::info!(
        forge = n.forge.as_str(),
        event = %n.event,
        repo = n.repo.as_deref(),
        ignored = n.reason.as_str(),
        "verified delivery for no project draftd serves; not recorded"
    );
    let body = json!({ "delivery": n.delivery_id, "ignored": n.reason.as_str() });
    counted((StatusCode::ACCEPTED, Json(body)).into_response(), &n.event, "ignored")
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
    let event = &event.clone().into_storable();
    let delivery = Delivery {
        forge: hook.forge,
        delivery_id: &hook.delivery_id,
        project: &hook.project.name,
        event_name: &hook.event,
        body_sha256: &hook.body_sha256,
        event,
        strip_branch_prefix: hook.project.settings.strip_branch_prefix,
        forks: hook.project.settings.forks,
        request_id: Some(&id.0),
        origin: intake::Origin::Webhook,
    };
    let recorded = intake::record(state.pool(), &delivery).await?;
    if let Some(stand) = recorded.stand {
        Span::current().record("stand", stand.get());
        if recorded.awaits_approval {
            // Not in intake's transaction (the store cannot render a report): should this fail, the
            // error makes the forge deliver again, and the redelivery queues it.
            crate::reporter::queue_unrun(state.pool(), state.config(), stand).await?;
        }
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
        run = recorded.run.map(RunId::get),
        ignored = recorded.response.get("ignored").and_then(|v| v.as_str()),
        "delivery recorded"
    );
    Ok(counted((status, Json(recorded.response)).into_response(), &hook.event, outcome))
}
