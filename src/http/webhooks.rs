use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use tracing::Span;

use super::webhook::{GithubWebhook, GitlabWebhook, Webhook};
use super::{ApiError, AppState};
use crate::forge::{github, gitlab};
use crate::store::intake::{self, Delivery};

pub fn router() -> Router<AppState> {
    Router::new().route("/webhooks/github", post(github_hook)).route("/webhooks/gitlab", post(gitlab_hook))
}

async fn github_hook(State(state): State<AppState>, GithubWebhook(hook): GithubWebhook) -> Result<Response, ApiError> {
    note_span(&hook);
    if hook.event == "ping" {
        tracing::info!("ping");
        return Ok((StatusCode::OK, Json(json!({ "pong": true, "project": hook.project.name }))).into_response());
    }
    let event = github::normalise(&hook.event, &hook.body, &hook.project)?;
    record(&state, &hook, &event).await
}

async fn gitlab_hook(State(state): State<AppState>, GitlabWebhook(hook): GitlabWebhook) -> Result<Response, ApiError> {
    note_span(&hook);
    let event = gitlab::normalise(&hook.event, &hook.body, &hook.project)?;
    record(&state, &hook, &event).await
}

fn note_span(hook: &Webhook) {
    let span = Span::current();
    span.record("delivery", hook.delivery_id.as_str());
    span.record("project", hook.project.name.as_str());
}

/// Records the delivery, its stand and run in one transaction; 202 when recorded now, 200 with the
/// original answer for a redelivery.
async fn record(state: &AppState, hook: &Webhook, event: &crate::forge::Event) -> Result<Response, ApiError> {
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
    };
    let recorded = intake::record(state.pool(), &delivery).await?;
    if let Some(stand) = recorded.stand {
        Span::current().record("stand", stand);
    }
    if recorded.run.is_some() {
        state.wake().wake();
    }
    let status = if recorded.redelivery { StatusCode::OK } else { StatusCode::ACCEPTED };
    tracing::info!(
        event = %hook.event,
        redelivery = recorded.redelivery,
        run = recorded.run,
        ignored = recorded.response.get("ignored").and_then(|v| v.as_str()),
        "delivery recorded"
    );
    Ok((status, Json(recorded.response)).into_response())
}
