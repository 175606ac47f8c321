use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;

/// A probe that waits longer than this is a failed probe anyway.
const DB_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new().route("/health", get(alive)).route("/health/ready", get(ready)).route("/health/startup", get(startup))
}

/// The process answers: nothing else is checked, so a database outage never restarts draftd.
async fn alive() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Migrations applied and the database answers: safe to route webhooks here.
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let db = tokio::time::timeout(DB_PROBE_TIMEOUT, sqlx::query("select 1").execute(state.pool())).await;
    let db_ok = matches!(db, Ok(Ok(_)));
    let ok = db_ok && state.migrated();
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (
        status,
        Json(json!({
            "status": if ok { "ok" } else { "unavailable" },
            "database": db_ok,
            "migrated": state.migrated(),
            "forges": forge_problems(&state),
        })),
    )
}

/// Projects their forge cannot serve until someone acts (an App not installed on the repository).
/// A detail for operators, not a failed probe: the other projects still work, and a restart would
/// not help.
fn forge_problems(state: &AppState) -> Vec<Value> {
    state
        .forge_problems()
        .list()
        .into_iter()
        .map(|(forge, repo, problem)| {
            let project = state
                .projects()
                .find(|p| p.settings.forge == forge && p.settings.repo.eq_ignore_ascii_case(&repo))
                .map(|p| p.name.as_str().to_owned());
            json!({ "project": project, "repo": repo, "problem": problem })
        })
        .collect()
}

/// Migrations applied: start-up is over.
async fn startup(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.migrated() {
        (StatusCode::OK, Json(json!({ "status": "ok" })))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "migrating" })))
    }
}
