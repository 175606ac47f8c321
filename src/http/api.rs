//! `GET /api/v1/stands`, `GET /api/v1/stands/{id}`, `POST /api/v1/stands/{id}/runs`,
//! `POST /api/v1/stands/{id}/extend`, `DELETE /api/v1/stands/{id}`; bearer token from `[api] token_env`.

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::forge::{Command, Trigger};
use crate::stand::StandState;
use crate::store::manual::{self, ManualOutcome, ManualRequest, StandLookup};
use crate::store::stands::{self, StandRef};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/stands", get(list))
        .route("/api/v1/stands/{id}", get(show).delete(destroy))
        .route("/api/v1/stands/{id}/runs", post(rerun))
        .route("/api/v1/stands/{id}/extend", post(extend))
}

/// A request that carried the API token.
pub struct Caller;

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(token) = state.api_token() else {
            return Err(ApiError::Unauthorized("the API is disabled: set [api] token_env"));
        };
        let given = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized("Authorization: Bearer <token> is missing"))?;
        // Digests, so neither content nor length leaks through timing.
        let ok: bool =
            Sha256::digest(given.trim().as_bytes()).ct_eq(&Sha256::digest(token.expose_secret().as_bytes())).into();
        if ok { Ok(Caller) } else { Err(ApiError::Unauthorized("the API token does not match")) }
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    project: Option<String>,
    state: Option<StandState>,
}

async fn list(_: Caller, State(state): State<AppState>, Query(q): Query<ListQuery>) -> Result<Json<Value>, ApiError> {
    let rows = stands::list(state.pool(), q.project.as_deref(), q.state.map(StandState::as_str)).await?;
    Ok(Json(json!({ "stands": rows })))
}

async fn show(_: Caller, State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<Value>, ApiError> {
    match stands::show(state.pool(), &StandRef::Id(id), 50).await? {
        Some(detail) => Ok(Json(serde_json::to_value(detail).expect("stands serialise"))),
        None => Err(ApiError::StandNotFound { message: format!("no stand with id {id}") }),
    }
}

async fn rerun(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    queue(caller, &state, id, Command::Rerun).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendBody {
    /// A duration like `24h`; the configured default when absent.
    by: Option<String>,
}

async fn extend(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<i64>,
    body: Option<Json<ExtendBody>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let by = match body.and_then(|Json(b)| b.by) {
        None => None,
        Some(text) => Some(humantime::parse_duration(&text).ok().filter(|d| !d.is_zero()).ok_or_else(|| {
            ApiError::BadRequest { field: Some("by".into()), message: format!("{text:?} is not a duration like 24h") }
        })?),
    };
    queue(caller, &state, id, Command::Extend { by }).await
}

async fn destroy(
    caller: Caller,
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    queue(caller, &state, id, Command::Destroy).await
}

async fn queue(_: Caller, state: &AppState, id: i64, command: Command) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut tx = state.pool().begin().await.map_err(crate::store::StoreError::from)?;
    let req = ManualRequest {
        command,
        trigger: Trigger::Api,
        requested_by: "api",
        author_id: None,
        sha: None,
        authorised: true,
    };
    let outcome = manual::queue(&mut tx, StandLookup::Id(id), &req).await?;
    tx.commit().await.map_err(crate::store::StoreError::from)?;
    match outcome {
        ManualOutcome::Queued { stand, run } => {
            state.wake().wake();
            Ok((StatusCode::ACCEPTED, Json(json!({ "stand": stand, "run": run }))))
        }
        ManualOutcome::Refused { code: "stand_not_found", reason, .. } => {
            Err(ApiError::StandNotFound { message: reason })
        }
        ManualOutcome::Refused { code, reason, .. } => Err(ApiError::Conflict { code, message: reason }),
    }
}
