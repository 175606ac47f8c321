//! Requests for sleeping stands. ingress-nginx sends a stand's requests here while its Service has
//! no endpoints: the stand's Ingress names draftd's wake Service as its `default-backend` with
//! `custom-http-errors: "503"` (see README "Sleep and wake"). On a listener of its own
//! (`[sleep] listen`), so no path of a stand's app can reach draftd's API.
//!
//! The first request wakes the stand (a `wake` run, trigger `visit`) and is held up to
//! `[sleep] hold` while it wakes; then a redirect to the same URL sends it to the app. A browser
//! that waited longer sees a small page that refreshes itself (no JavaScript), anything else a 503
//! with `Retry-After`. A stand that is awake and still lands here has an app answering 503 itself:
//! that is said, never answered with another wake.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::stand::StandState;
use crate::store::sleep::{self, Visited};

/// How often a held request looks whether its stand is awake.
const POLL: Duration = Duration::from_millis(200);
/// A stand woken this recently may still be unreachable for a moment (the ingress controller
/// reloads its configuration after the endpoints come back): send the request round again.
const JUST_WOKEN: f64 = 60.0;
/// What a browser's page waits before it asks again, and what `Retry-After` says.
const RETRY_SECS: u64 = 2;

pub fn router(state: AppState, hold: Duration) -> Router {
    Router::new().fallback(move |s: State<AppState>, h: HeaderMap, u: Uri| visit(s, h, u, hold)).with_state(state)
}

async fn visit(State(state): State<AppState>, headers: HeaderMap, uri: Uri, hold: Duration) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    // Set by the ingress controller on both ways a request gets here (a client's own is overwritten).
    let namespace = header("x-namespace");
    let host = header("host").to_owned();
    // The error-page way rewrites the path to `/` and keeps the original in X-Original-URI; the
    // direct way keeps the request's own. Only a path of this host is followed, never a URL.
    let original = Some(header("x-original-uri"))
        .filter(|p| p.starts_with('/') && !p.starts_with("//"))
        .map(str::to_owned)
        .unwrap_or_else(|| uri.path_and_query().map_or("/".to_owned(), |p| p.to_string()));
    let browser = header("accept").contains("text/html");
    let pool = state.pool();
    let found = match sleep::visited(pool, namespace).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, namespace, "wake: cannot look the stand up");
            return answer(StatusCode::SERVICE_UNAVAILABLE, &host, "draftd cannot reach its database");
        }
    };
    let Some(stand) = found.filter(|s| s.state.is_live()) else {
        return answer(StatusCode::NOT_FOUND, &host, "there is no draft stand here (it may have been removed)");
    };
    if stand.state == StandState::Active && !stand.waking && stand.awake_for.is_none_or(|s| s > JUST_WOKEN) {
        return answer(StatusCode::SERVICE_UNAVAILABLE, &host, "the stand is awake, and its app answered 503");
    }
    if stand.state == StandState::Sleeping {
        match sleep::wake_on_visit(pool, stand.stand_id).await {
            Ok(Some(run)) => {
                tracing::info!(stand = stand.stand_id.get(), run = run.get(), host, "a request wakes the stand");
                state.wake().wake();
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, stand = stand.stand_id.get(), "wake: cannot queue the wake"),
        }
    }
    match awake_within(&state, namespace, stand, hold).await {
        Ok(()) => redirect(&original),
        Err(waiting) => waking(browser, &host, waiting.as_deref()),
    }
}

/// Waits up to `hold` for the stand to be awake; when it is not, why it waits for a place, if it
/// does (`max_active`).
async fn awake_within(
    state: &AppState,
    namespace: &str,
    mut stand: Visited,
    hold: Duration,
) -> Result<(), Option<String>> {
    let started = Instant::now();
    loop {
        if stand.state == StandState::Active && !stand.waking {
            return Ok(());
        }
        if started.elapsed() + POLL > hold {
            return Err(stand.waiting_reason);
        }
        tokio::time::sleep(POLL).await;
        match sleep::visited(state.pool(), namespace).await {
            Ok(Some(now)) => stand = now,
            _ => return Err(None),
        }
    }
}

/// Sends the request round again, to the app now that it is there. 307 keeps the method and body.
fn redirect(path: &str) -> Response {
    let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
    if let Ok(location) = HeaderValue::from_str(path) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The status with `Retry-After`, and what happened in one line.
fn answer(status: StatusCode, host: &str, what: &str) -> Response {
    (status, retry_headers(), format!("{host}: {what}\n")).into_response()
}

fn retry_headers() -> [(header::HeaderName, HeaderValue); 2] {
    [
        (header::RETRY_AFTER, HeaderValue::from(RETRY_SECS)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ]
}

/// The stand is not up yet (and waits for a place first, when `waiting` says why): a browser gets a
/// page that asks again by itself, anything else a 503 with `Retry-After`.
fn waking(browser: bool, host: &str, waiting: Option<&str>) -> Response {
    if !browser {
        let what = waiting.map_or("waking up".to_owned(), |reason| format!("waiting for a place: {reason}"));
        return answer(StatusCode::SERVICE_UNAVAILABLE, host, &what);
    }
    let host = crate::text::escape_html(host);
    let why = match waiting {
        Some(reason) => format!(
            " It waits for a place first: {}. It starts when another stand goes to sleep or is removed.",
            crate::text::escape_html(reason)
        ),
        None => String::new(),
    };
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{RETRY_SECS}\">\
         <title>Waking up {host}</title></head><body><h1>Waking up</h1><p>The draft stand <b>{host}</b> was asleep \
         and is starting again.{why} This page reloads by itself and shows the stand as soon as it is up.</p></body></html>"
    );
    // 200, not 503: a 503 from here on the ingress controller's direct way would be sent back
    // here once more through its error page.
    let html = [(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"))];
    (StatusCode::OK, retry_headers(), html, page).into_response()
}
