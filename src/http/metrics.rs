//! `GET /metrics`: Prometheus text. Unauthenticated, like every Prometheus target: it carries counts
//! and labels (project names, step names), never secrets, branch names or URLs.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::{ApiError, AppState};

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let max_teardowns = crate::store::lifecycle::MAX_TEARDOWN_ATTEMPTS;
    let mut snapshot =
        crate::store::metrics::snapshot(state.pool(), max_teardowns).await.map_err(crate::store::StoreError::from)?;
    let rates = state.cost_rates();
    snapshot.cost = crate::store::usage::per_project(state.pool())
        .await?
        .into_iter()
        .map(|u| {
            let cost = u.cpu_core_hours * rates.cpu_hour
                + u.memory_gib_hours * rates.memory_gib_hour
                + u.storage_gib_hours * rates.storage_gib_hour;
            (u.project, cost)
        })
        .collect();
    let text = crate::metrics::render(&snapshot);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text))
}
