//! The dashboard: stands, their runs and steps, their pods' logs, and the Re-run, Extend, Destroy
//! and Wake buttons.
//!
//! Server-rendered HTML (minijinja, auto-escaped), readable without its one inline stylesheet and
//! without JavaScript. The buttons queue runs through the API's own path ([`api::queue_command`]), so a
//! dashboard run is recorded, authorised and reported like an API one, with trigger `dashboard`.
//! Every page but the login form needs a session ([`session`]); every POST its CSRF token.

/// Inline SVG charts for the front page.
mod chart;
mod figures;
/// The stand's pods' logs, read on request.
mod logs;
/// The session cookie, CSRF tokens and the `Origin` check.
mod page;
mod session;
/// Templates and the display values they are given.
mod view;

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, SET_COOKIE, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use chrono::Utc;
use minijinja::context;

pub use self::page::Page;
use self::session::{CsrfError, Session};
use self::view::{RunView, StandRow, StandView};
use super::api;
use super::auth::token_matches;
use super::{ApiError, AppState, RequestId};
use crate::forge::{Command, Trigger};
use crate::stand::{RunId, StandId, StandState};
use crate::store::stands::{self, StandRef};

pub(super) use self::view::error_html as error_page;

/// What the Extend button adds; the API and `/draft extend` take any duration, the button one step.
const EXTEND_BY: Duration = Duration::from_secs(24 * 3600);
/// Runs (with their steps) on a stand's page; older ones stay reachable at `/stands/{id}/runs/{n}`.
const STAND_PAGE_RUNS: i64 = 20;
/// Who the runs queued here are recorded as: the dashboard has one shared login, the API token.
const REQUESTED_BY: &str = "dashboard";

/// No scripts, no external anything; the one inline stylesheet is the only thing a page loads, and
/// forms post only to draftd itself.
const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/stands") }))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/stands", get(list))
        .route("/stands/{id}", get(stand))
        .route("/stands/{id}/runs/{number}", get(run))
        .route("/stands/{id}/logs", get(logs::logs))
        .route("/stands/{id}/rerun", post(rerun))
        .route("/stands/{id}/extend", post(extend))
        .route("/stands/{id}/destroy", post(destroy))
        .route("/stands/{id}/wake", post(wake))
        .layer(middleware::from_fn(security_headers))
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    protect(res.headers_mut());
    res
}

/// The dashboard's headers on a page; the router's fallbacks put them on its error pages too.
pub(super) fn protect(headers: &mut HeaderMap) {
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    // Pages show live state and carry CSRF tokens: never from a cache, never kept on disk.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// A form body, parsed leniently: a missing field is the handler's to judge, not a rejection.
struct FormFields(Vec<(String, String)>);

impl FormFields {
    fn parse(body: &[u8]) -> FormFields {
        FormFields(url::form_urlencoded::parse(body).into_owned().collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The first value of `name` in a query string; empty counts as absent (a form's "any" choice).
fn query_param(raw: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

async fn login_form(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let next = query_param(query.as_deref(), "next");
    login_page(&state, StatusCode::OK, next.as_deref(), None)
}

fn login_page(state: &AppState, status: StatusCode, next: Option<&str>, error: Option<&str>) -> Response {
    let next = next.map(|n| session::safe_next(Some(n)));
    let context = context! {
        current => "",
        csrf => Option::<String>::None,
        enabled => state.api_token().is_some(),
        next,
        error,
    };
    view::render(status, "login.html", context)
}

async fn login(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if session::check_origin(&headers, state.public_url()).is_err() {
        return Page(ApiError::Forbidden("the login form was posted from another site")).into_response();
    }
    let form = FormFields::parse(&body);
    let Some(token) = state.api_token() else {
        return login_page(&state, StatusCode::UNAUTHORIZED, None, None);
    };
    let next = form.get("next");
    let given = form.get("token").unwrap_or_default();
    if given.is_empty() || !token_matches(token, given) {
        tracing::info!("dashboard login refused: the token does not match");
        return login_page(&state, StatusCode::UNAUTHORIZED, next, Some("That is not the API token."));
    }
    let cookie = session::set_cookie(&session::issue(token, Utc::now()), session::secure_for(state.public_url()));
    let mut res = Redirect::to(session::safe_next(next)).into_response();
    res.headers_mut().insert(SET_COOKIE, cookie);
    res
}

async fn logout(State(state): State<AppState>, session: Session, headers: HeaderMap, body: Bytes) -> Response {
    let form = FormFields::parse(&body);
    if let Err(e) = session.check_post(&state, &headers, form.get("csrf")) {
        return refused(e).into_response();
    }
    let mut res = Redirect::to("/login").into_response();
    res.headers_mut().insert(SET_COOKIE, session::clear_cookie(session::secure_for(state.public_url())));
    res
}

fn refused(e: CsrfError) -> Page {
    tracing::info!(reason = %e, "dashboard POST refused");
    Page(ApiError::Forbidden(match e {
        CsrfError::Missing | CsrfError::Mismatch => {
            "the form's security token is missing or stale: reload the page and try again"
        }
        CsrfError::CrossOrigin => "the form was posted from another site",
    }))
}

async fn list(State(state): State<AppState>, session: Session, RawQuery(query): RawQuery) -> Result<Response, Page> {
    let project = query_param(query.as_deref(), "project");
    let wanted = query_param(query.as_deref(), "state");
    let filter = match &wanted {
        None => None,
        Some(w) => Some(StandState::ALL.into_iter().find(|s| s.as_str() == w).ok_or_else(|| ApiError::BadRequest {
            field: Some("state".into()),
            message: format!("{w:?} is not a stand state (active, closing, removed)"),
        })?),
    };
    let rows = stands::list(state.pool(), project.as_deref(), filter.map(StandState::as_str)).await?;
    let now = Utc::now();
    let stands: Vec<StandRow> =
        rows.iter().map(|s| StandRow::of(s, stand_url(&state, &s.project, &s.namespace), now)).collect();
    let projects: BTreeSet<&str> = state.0.projects.values().map(|p| p.settings.name.as_str()).collect();
    let charts = figures::front_page(&state, now).await?;
    let context = context! {
        current => "stands",
        csrf => session.csrf(),
        charts,
        stands,
        projects,
        states => StandState::ALL.map(StandState::as_str),
        project,
        state => wanted,
    };
    Ok(view::render(StatusCode::OK, "stands.html", context))
}

async fn stand(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, Page> {
    let id = stand_id(&id)?;
    let detail = stands::show(state.pool(), &StandRef::Id(id), STAND_PAGE_RUNS).await?.ok_or_else(|| not_found(id))?;
    let mut view =
        StandView::of(&detail, stand_url(&state, &detail.stand.project, &detail.stand.namespace), Utc::now());
    if let Some(priced) = crate::store::usage::priced(state.pool(), id, state.prices(), Utc::now()).await? {
        let sleeping = detail.stand.state == crate::stand::StandState::Sleeping;
        let line = crate::reporter::CostLine {
            cost: priced.cost,
            sleeping_since: priced.last_awake_until.filter(|_| sleeping),
        };
        view.cost = Some(crate::reporter::cost_text(&line));
    }
    // The run a button just queued, by id: the redirect knows the id, people know the number.
    let queued = query_param(query.as_deref(), "queued").and_then(|q| q.parse::<RunId>().ok()).map(|run| {
        match view.runs.iter().find(|r| r.id == run) {
            Some(r) => format!("Run #{} ({}) queued.", r.number, r.kind),
            None => "Run queued.".to_owned(),
        }
    });
    let context = context! { current => "", csrf => session.csrf(), stand => view, queued };
    Ok(view::render(StatusCode::OK, "stand.html", context))
}

async fn run(
    State(state): State<AppState>,
    session: Session,
    Path((id, number)): Path<(String, String)>,
) -> Result<Response, Page> {
    let id = stand_id(&id)?;
    let missing = || ApiError::NotFound(format!("stand {id} has no run #{number}"));
    let wanted: i32 = number.parse().map_err(|_| missing())?;
    // Runs are numbered 1, 2, … per stand: the wanted one is among the newest (last - wanted + 1).
    let summary = stands::show(state.pool(), &StandRef::Id(id), 0).await?.ok_or_else(|| not_found(id))?;
    let last = summary.stand.last_run.unwrap_or(0);
    if wanted < 1 || wanted > last {
        return Err(missing().into());
    }
    let detail = stands::show(state.pool(), &StandRef::Id(id), i64::from(last - wanted + 1))
        .await?
        .ok_or_else(|| not_found(id))?;
    let run = detail.runs.iter().find(|r| r.number == wanted).ok_or_else(missing)?;
    let stand = StandRow::of(&detail.stand, None, Utc::now());
    let context = context! { current => "", csrf => session.csrf(), stand, run => RunView::of(id, run) };
    Ok(view::render(StatusCode::OK, "run.html", context))
}

async fn rerun(
    State(state): State<AppState>,
    session: Session,
    Extension(request): Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Redirect, Page> {
    button(&state, &session, (&headers, &request), &id, &body, Command::Rerun).await
}

async fn extend(
    State(state): State<AppState>,
    session: Session,
    Extension(request): Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Redirect, Page> {
    button(&state, &session, (&headers, &request), &id, &body, Command::Extend { by: Some(EXTEND_BY) }).await
}

async fn destroy(
    State(state): State<AppState>,
    session: Session,
    Extension(request): Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Redirect, Page> {
    button(&state, &session, (&headers, &request), &id, &body, Command::Destroy).await
}

async fn wake(
    State(state): State<AppState>,
    session: Session,
    Extension(request): Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Redirect, Page> {
    button(&state, &session, (&headers, &request), &id, &body, Command::Wake).await
}

/// A button: the CSRF checks, then the API's own queueing; back to the stand's page, which says what
/// was queued. A refusal (the stand is not active) is an error page with the API's status.
async fn button(
    state: &AppState,
    session: &Session,
    (headers, request): (&HeaderMap, &RequestId),
    id: &str,
    body: &[u8],
    command: Command,
) -> Result<Redirect, Page> {
    session.check_post(state, headers, FormFields::parse(body).get("csrf")).map_err(refused)?;
    let id = stand_id(id)?;
    let (stand, run) = api::queue_command(state, id, command, Trigger::Dashboard, REQUESTED_BY, request).await?;
    Ok(Redirect::to(&format!("/stands/{stand}?queued={run}")))
}

fn stand_id(text: &str) -> Result<StandId, ApiError> {
    text.parse().map_err(|_| ApiError::StandNotFound { message: format!("no stand with id {text:?}") })
}

fn not_found(id: StandId) -> ApiError {
    ApiError::StandNotFound { message: format!("no stand with id {id}") }
}

/// The stand's address as its runs deploy it (`StandPlan`: `https://` + the project's `host` with
/// `{stand}` replaced by the namespace); `None` when the project has no host or is no longer configured.
fn stand_url(state: &AppState, project: &str, namespace: &str) -> Option<String> {
    let project = state.0.projects.values().find(|p| p.settings.name == project)?;
    let host = project.settings.host.as_deref()?;
    Some(crate::pipeline::plan::stand_url(&crate::pipeline::plan::stand_host(host, namespace)))
}
