//! `GET /api/v1/stands`, `GET /api/v1/stands/{id}`, `POST /api/v1/stands/{id}/runs`,
//! `POST /api/v1/stands/{id}/extend`, `POST /api/v1/stands/{id}/wake`, `DELETE /api/v1/stands/{id}`,
//! `GET /api/v1/metrics/summary`;
//! bearer token from `[api] token_env`. Each handler carries its OpenAPI description
//! (`#[utoipa::path]`), which `openapi.rs` collects.
//!
//! Malformed paths, queries and bodies are answered through [`ApiError`] like every other refusal,
//! so a client only ever meets the one documented error body.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::token_matches;
use super::error::ErrorBody;
use super::schema::{StandDetail, StandSummary};
use super::{ApiError, AppState, RequestId};
use crate::forge::{Command, Trigger};
use crate::stand::{RunId, StandId, StandState};
use crate::store::manual::{self, ManualOutcome, ManualRequest, StandLookup};
use crate::store::stands::{self, StandRef};
use crate::store::summary::{self, MAX_WINDOW, Summary};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/stands", get(list))
        .route("/api/v1/stands/{id}", get(show).delete(destroy))
        .route("/api/v1/stands/{id}/runs", post(rerun))
        .route("/api/v1/stands/{id}/extend", post(extend))
        .route("/api/v1/stands/{id}/wake", post(wake))
        .route("/api/v1/metrics/summary", get(metrics_summary))
}

/// A request that carried the API token.
pub struct Caller {
    /// The request's id, stored with the runs it queues.
    request: RequestId,
}

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
        if token_matches(token, given) {
            // The router's middleware always sets it; a fresh id keeps a bare handler test working.
            let request = parts.extensions.get::<RequestId>().cloned().unwrap_or_else(RequestId::new);
            Ok(Caller { request })
        } else {
            Err(ApiError::Unauthorized("the API token does not match"))
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this project's stands.
    #[param(pattern = r"^[^\x00]*$")]
    project: Option<String>,
    #[param(schema_with = stand_state_schema)]
    state: Option<String>,
}

/// The states a client may filter by, from the type itself so the document cannot fall behind it.
fn stand_state_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(StandState::ALL.map(StandState::as_str)))
        // A parameter with its own schema loses the field's doc comment, so the schema carries it.
        .description(Some("Only stands in this state"))
        .build()
}

#[derive(Debug, Serialize, ToSchema)]
struct StandList {
    /// Sorted by project, then branch.
    stands: Vec<StandSummary>,
}

/// What a queued command answers: the stand and the run that will carry the command out.
#[derive(Debug, Serialize, ToSchema)]
struct Queued {
    stand: StandId,
    run: RunId,
}

/// Stands, each with the outcome of its newest run.
#[utoipa::path(
    get,
    path = "/api/v1/stands",
    tag = "stands",
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The stands that match", body = StandList),
        (status = 400, description = "`state` is not a stand state (`field`: `state`)", body = ErrorBody),
        (status = 401, description = "The bearer token is missing or wrong, or the API is disabled", body = ErrorBody),
        (status = 500, description = "Internal error (logged; `code`: `internal`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`code`: `database_unavailable`)", body = ErrorBody),
    ),
)]
async fn list(
    _: Caller,
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<StandList>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let wanted = match q.state.as_deref() {
        None => None,
        Some(text) => {
            Some(StandState::ALL.into_iter().find(|s| s.as_str() == text).ok_or_else(|| ApiError::BadRequest {
                field: Some("state".into()),
                message: format!("{text:?} is not a stand state (active, closing, removed)"),
            })?)
        }
    };
    let stands = stands::list(state.pool(), q.project.as_deref(), wanted.map(StandState::as_str)).await?;
    Ok(Json(StandList { stands: stands.into_iter().map(StandSummary::from).collect() }))
}

/// A stand with its newest 50 runs (newest first), each with its steps.
#[utoipa::path(
    get,
    path = "/api/v1/stands/{id}",
    tag = "stands",
    params(("id" = i64, Path, description = "The stand's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The stand", body = StandDetail),
        (status = 400, description = "`id` is not an integer (`field`: `id`)", body = ErrorBody),
        (status = 401, description = "The bearer token is missing or wrong, or the API is disabled", body = ErrorBody),
        (status = 404, description = "No such stand (`code`: `stand_not_found`)", body = ErrorBody),
        (status = 500, description = "Internal error (logged; `code`: `internal`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`code`: `database_unavailable`)", body = ErrorBody),
    ),
)]
async fn show(
    _: Caller,
    State(state): State<AppState>,
    id: Result<Path<StandId>, PathRejection>,
) -> Result<Json<StandDetail>, ApiError> {
    let id = stand_id(id)?;
    match stands::show(state.pool(), &StandRef::Id(id), 50).await? {
        Some(detail) => {
            let mut shown = StandDetail::from(detail);
            shown.cost = state.cost_of(id).await?;
            if let Some(gate) = state.access() {
                shown.access = gate.shown(id, &shown.stand.project).await?;
            }
            Ok(Json(shown))
        }
        None => Err(ApiError::StandNotFound { message: format!("no stand with id {id}") }),
    }
}

/// Queues a manual re-run: a deploy of the stand's head commit.
#[utoipa::path(
    post,
    path = "/api/v1/stands/{id}/runs",
    tag = "stands",
    params(("id" = i64, Path, description = "The stand's id")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The deploy run is queued", body = Queued),
        (status = 400, description = "`id` is not an integer (`field`: `id`)", body = ErrorBody),
        (status = 401, description = "The bearer token is missing or wrong, or the API is disabled", body = ErrorBody),
        (status = 404, description = "No such stand (`code`: `stand_not_found`)", body = ErrorBody),
        (status = 409, description = "The stand is closing or removed (`code`: `stand_not_active`), or has no commit \
            to deploy yet (`code`: `no_commit`)", body = ErrorBody),
        (status = 500, description = "Internal error (logged; `code`: `internal`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`code`: `database_unavailable`)", body = ErrorBody),
    ),
)]
async fn rerun(
    caller: Caller,
    State(state): State<AppState>,
    id: Result<Path<StandId>, PathRejection>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    queue(caller, &state, stand_id(id)?, Command::Rerun).await
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ExtendBody {
    /// A duration like `24h`: a whole number of seconds, minutes, hours, days or weeks (`s`, `m`, `h`,
    /// `d`, `w`), at least 1s. Longer spellings (`1h 30m`, `2days`) are taken too. `[stands] extend_by`
    /// when absent.
    #[schema(examples("24h"), pattern = r"^[1-9][0-9]{0,5}[smhdw]$")]
    by: Option<String>,
}

/// Queues an extend run: the stand's expiry moves `by` later (from now, if it has passed), never
/// beyond `[stands] max_expiry` from now.
#[utoipa::path(
    post,
    path = "/api/v1/stands/{id}/extend",
    tag = "stands",
    params(("id" = i64, Path, description = "The stand's id")),
    // Optional, though utoipa can only say so by allowing a JSON null, which the handler refuses;
    // openapi.rs marks it optional instead.
    request_body(
        content = ExtendBody,
        description = "Optional; without a body (or without `by`) the stand is extended by `[stands] extend_by`",
    ),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The extend run is queued", body = Queued),
        (status = 400, description = "`by` is not a duration (`field`: `by`), the body is not the JSON object \
            described, or `id` is not an integer (`field`: `id`)", body = ErrorBody),
        (status = 401, description = "The bearer token is missing or wrong, or the API is disabled", body = ErrorBody),
        (status = 404, description = "No such stand (`code`: `stand_not_found`)", body = ErrorBody),
        (status = 409, description = "The stand is closing or removed (`code`: `stand_not_active`)", body = ErrorBody),
        (status = 500, description = "Internal error (logged; `code`: `internal`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`code`: `database_unavailable`)", body = ErrorBody),
    ),
)]
async fn extend(
    caller: Caller,
    State(state): State<AppState>,
    id: Result<Path<StandId>, PathRejection>,
    body: Result<Option<Json<ExtendBody>>, JsonRejection>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    let id = stand_id(id)?;
    let body = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let by = match body.and_then(|Json(b)| b.by) {
        None => None,
        Some(text) => Some(crate::forge::command::extension(&text).ok_or_else(|| ApiError::BadRequest {
            field: Some("by".into()),
            message: format!("{text:?} is not a duration of at least 1s, like 24h"),
        })?),
    };
    queue(caller, &state, id, Command::Extend { by }).await
}

/// Queues the stand's teardown; the stand is `closing` at once and refuses further commands.
#[utoipa::path(
    delete,
    path = "/api/v1/stands/{id}",
    tag = "stands",
    params(("id" = i64, Path, description = "The stand's id")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The teardown run is queued", body = Queued),
        (status = 400, description = "`id` is not an integer (`field`: `id`)", body = ErrorBody),
        (status = 401, description = "The bearer token is missing or wrong, or the API is disabled", body = ErrorBody),
        (status = 404, description = "No such stand (`code`: `stand_not_found`)", body = ErrorBody),
        (status = 409, description = "The stand is closing or removed (`code`: `stand_not_active`)", body = ErrorBody),
        (status = 500, description = "Internal error (logged; `code`: `internal`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`code`: `database_unavailable`)", body = ErrorBody),
    ),
)]
async fn destroy(
    caller: Caller,
    State(state): State<AppState>,
    id: Result<Path<StandId>, PathRejection>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    queue(caller, &state, stand_id(id)?, Command::Destroy).await
}

/// Queues a wake of a sleeping stand: new logins, its workloads scaled back, then verified.
#[utoipa::path(
    post,
    path = "/api/v1/stands/{id}/wake",
    tag = "stands",
    params(("id" = i64, Path, description = "The stand's id")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The wake run is queued", body = Queued),
        (status = 400, description = "`id` is not an integer (`field`: `id`)", body = ErrorBody),
        (status = 401, description = "The bearer token is missing or wrong, or the API is disabled", body = ErrorBody),
        (status = 404, description = "No such stand (`code`: `stand_not_found`)", body = ErrorBody),
        (status = 409, description = "The stand is closing or removed (`code`: `stand_not_active`), or awake \
            (`code`: `stand_not_sleeping`)", body = ErrorBody),
        (status = 500, description = "Internal error (logged; `code`: `internal`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`code`: `database_unavailable`)", body = ErrorBody),
    ),
)]
async fn wake(
    caller: Caller,
    State(state): State<AppState>,
    id: Result<Path<StandId>, PathRejection>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    queue(caller, &state, stand_id(id)?, Command::Wake).await
}

async fn queue(
    caller: Caller,
    state: &AppState,
    id: StandId,
    command: Command,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    let (stand, run) = queue_command(state, id, command, Trigger::Api, "api", &caller.request).await?;
    Ok((StatusCode::ACCEPTED, Json(Queued { stand, run })))
}

/// A week: long enough to hold a few deploys of a quiet project, short enough to show a change.
const DEFAULT_WINDOW: Duration = Duration::from_secs(7 * 86_400);

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SummaryQuery {
    /// Only this project; otherwise every project that has stands.
    #[param(pattern = r"^[^\x00]*$")]
    project: Option<String>,
    /// How far back from now the figures reach, from 1s to 90d: whole days (`7d`, at most `90d`), weeks
    /// (at most `12w`), hours, minutes or seconds. Longer spellings (`36h 30m`, `2weeks`) are taken too.
    // Each alternative stays within 1s..=90d: a pattern cannot say "at most 90 days" of every
    // spelling humantime reads, so the document promises these and the handler takes more.
    #[param(
        default = "7d",
        example = "30d",
        pattern = r"^(([1-9]|[1-8][0-9]|90)d|([1-9]|1[0-2])w|[1-9][0-9]{0,2}h|[1-9][0-9]{0,4}m|[1-9][0-9]{0,5}s)$"
    )]
    window: Option<String>,
}

/// Delivery figures per project over `[now - window, now)`: deploy frequency, change failure rate,
/// mean time to restore and lead time.
#[utoipa::path(
    get,
    path = "/api/v1/metrics/summary",
    tag = "metrics",
    params(SummaryQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The figures, one entry per project, sorted by project", body = Summary),
        (status = 400, description = "`window` is not a duration from 1s to 90d (`field`: `window`)", body = ErrorBody),
        (status = 401, description = "The bearer token is missing or wrong, or the API is disabled", body = ErrorBody),
        (status = 500, description = "Internal error (logged; `code`: `internal`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`code`: `database_unavailable`)", body = ErrorBody),
    ),
)]
async fn metrics_summary(
    _: Caller,
    State(state): State<AppState>,
    query: Result<Query<SummaryQuery>, QueryRejection>,
) -> Result<Json<Summary>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let window = match q.window.as_deref() {
        None => DEFAULT_WINDOW,
        Some(text) => humantime::parse_duration(text)
            .ok()
            .filter(|d| (Duration::from_secs(1)..=MAX_WINDOW).contains(d))
            .ok_or_else(|| ApiError::BadRequest {
                field: Some("window".into()),
                message: format!("{text:?} is not a duration from 1s to 90d, like 7d"),
            })?,
    };
    // Whole seconds: the bounds are echoed back, and sub-second digits there would only be noise.
    let now = Utc::now().trunc_subsecs(0);
    Ok(Json(summary::summary(state.pool(), q.project.as_deref(), window, now, state.prices()).await?))
}

fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::bad_request(e.body_text())
}

fn stand_id(id: Result<Path<StandId>, PathRejection>) -> Result<StandId, ApiError> {
    id.map(|Path(id)| id).map_err(|e| ApiError::BadRequest { field: Some("id".into()), message: e.body_text() })
}

/// Queues a manual command for a stand and wakes the workers: the one path behind the API's
/// and the dashboard's buttons. Returns (stand id, run id).
pub(super) async fn queue_command(
    state: &AppState,
    id: StandId,
    command: Command,
    trigger: Trigger,
    requested_by: &str,
    request: &RequestId,
) -> Result<(StandId, RunId), ApiError> {
    let mut tx = state.pool().begin().await.map_err(crate::store::StoreError::from)?;
    let req = ManualRequest { command, trigger, requested_by, author_id: None, sha: None, authorised: true };
    let outcome = manual::queue(&mut tx, StandLookup::Id(id), &req).await?;
    if let ManualOutcome::Queued { run, .. } = &outcome {
        // The run's log lines carry the id of the request that queued it.
        crate::store::runs::set_request_id(&mut tx, *run, &request.0).await.map_err(crate::store::StoreError::from)?;
    }
    tx.commit().await.map_err(crate::store::StoreError::from)?;
    match outcome {
        ManualOutcome::Queued { stand, run } => {
            state.wake().wake();
            Ok((stand, run))
        }
        ManualOutcome::Refused { code: "stand_not_found", reason, .. } => {
            Err(ApiError::StandNotFound { message: reason })
        }
        ManualOutcome::Refused { code, reason, .. } => Err(ApiError::Conflict { code, message: reason }),
    }
}
