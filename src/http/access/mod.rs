//! Private stands: ingress-nginx's external auth asks `/access/check` before every request to a
//! stand whose project is `access = "forge"`; a person without a valid cookie is sent to
//! `/access/start`, signs in with the project's forge, and comes back through `/access/callback`
//! with a cookie for the stands' parent domain.
//!
//! - `check` answers from memory: 200 (in), 401 (sign in; ingress-nginx redirects to `auth-signin`)
//!   or 403 (a token that is not the current run's, or a host that is no stand).
//! - `start` only redirects to hosts of stands draftd knows, so it cannot be used to send people
//!   elsewhere; the sign-in's state and PKCE verifier stay in the database, and a cookie ties the
//!   flow to the browser that started it.
//! - `callback` asks the forge, with the person's own token, whether they can read the repository;
//!   the token is used for that and dropped, never stored.

mod gate;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::header::{CACHE_CONTROL, COOKIE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

pub use gate::{Entry, Gate, Verdict};

use super::dashboard::Page;
use super::{ApiError, AppState};
use crate::credentials::access::Grant;
use crate::forge::signin::{SignInError, pkce, random_token};
use crate::store::access::{self, AccessEvent, Flow};

/// The header programs put the stand's access token in.
pub const TOKEN_HEADER: &str = "x-draftd-access";
/// The header the check answers a person's login in (ingress-nginx passes it on with
/// `auth-response-headers`), so the app can greet them.
pub const USER_HEADER: &str = "x-draftd-user";
/// Ties a sign-in to the browser that started it.
const STATE_COOKIE: &str = "draftd_access_state";
/// Long enough to sign in at the forge (and perhaps through its own two-factor step).
const FLOW_TTL: Duration = Duration::from_secs(600);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/access/check", get(check))
        .route("/access/start", get(start))
        .route("/access/callback", get(callback))
}

fn gate(state: &AppState) -> Result<&Arc<Gate>, ApiError> {
    state.access().ok_or_else(|| ApiError::NotFound("[access] is not configured: every stand is public".into()))
}

/// One cookie's value from the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// The host of a URL as ingress-nginx hands it over (`X-Original-URL`), or of `rd`.
fn host_of(url: &str) -> Option<String> {
    url::Url::parse(url).ok()?.host_str().map(str::to_ascii_lowercase)
}

fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// ingress-nginx's auth subrequest: no body, the original URL in a header, the browser's cookies.
async fn check(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let gate = gate(&state)?;
    let original = headers.get("x-original-url").and_then(|v| v.to_str().ok());
    let host = original.and_then(host_of).ok_or_else(|| ApiError::missing_header("X-Original-URL"))?;
    let Some(entry) = gate.entry(&host).await else {
        return Ok(no_store(StatusCode::FORBIDDEN.into_response()));
    };
    let token = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
    let verdict = gate.decide(&entry, cookie(&headers, &gate.config.cookie_name), token, Utc::now().timestamp()).await;
    crate::metrics::access_check(verdict_label(&verdict));
    let response = match verdict {
        Verdict::Allowed { login } => {
            let mut response = StatusCode::OK.into_response();
            if let Some(value) = login.and_then(|l| HeaderValue::from_str(&l).ok()) {
                response.headers_mut().insert(USER_HEADER, value);
            }
            response
        }
        Verdict::SignIn => StatusCode::UNAUTHORIZED.into_response(),
        Verdict::Refused(why) => {
            tracing::info!(stand = entry.stand_id.get(), why, "access refused");
            StatusCode::FORBIDDEN.into_response()
        }
    };
    Ok(no_store(response))
}

fn verdict_label(v: &Verdict) -> &'static str {
    match v {
        Verdict::Allowed { login: Some(_) } => "person",
        Verdict::Allowed { login: None } => "allowed",
        Verdict::SignIn => "sign_in",
        Verdict::Refused(_) => "refused",
    }
}

#[derive(Deserialize)]
struct StartQuery {
    rd: Option<String>,
}

/// Begins a sign-in for the stand `rd` points into.
async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<StartQuery>,
) -> Result<Response, Page> {
    let gate = gate(&state)?;
    let rd = q.rd.filter(|rd| rd.starts_with("https://") || rd.starts_with("http://")).ok_or_else(|| {
        ApiError::BadRequest { field: Some("rd".into()), message: "rd must be the stand URL to return to".into() }
    })?;
    let entry = match host_of(&rd) {
        Some(host) => gate.entry(&host).await,
        None => None,
    };
    let Some(entry) = entry else {
        return Err(ApiError::BadRequest {
            field: Some("rd".into()),
            message: "rd is not the URL of a stand draftd serves, so draftd will not send you there".into(),
        }
        .into());
    };
    let now = Utc::now();
    if gate.decide(&entry, cookie(&headers, &gate.config.cookie_name), None, now.timestamp()).await != Verdict::SignIn {
        return Ok(redirect(&rd, Vec::new()));
    }
    let (verifier, challenge) = pkce();
    let flow_state = random_token();
    let flow = Flow { stand_id: entry.stand_id, verifier, rd };
    access::begin(gate.pool(), &flow_state, &flow, now + FLOW_TTL).await.map_err(ApiError::from)?;
    let to = gate
        .signin
        .authorize_url(entry.forge, &flow_state, &challenge, &gate.config.callback_url())
        .map_err(|e| ApiError::ForgeUnavailable(e.to_string()))?;
    let state_cookie = format!(
        "{STATE_COOKIE}={flow_state}; Path=/access/; Max-Age={}; HttpOnly; Secure; SameSite=Lax",
        FLOW_TTL.as_secs()
    );
    Ok(redirect(&to, vec![state_cookie]))
}

fn redirect(to: &str, cookies: Vec<String>) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(location) = HeaderValue::from_str(to) {
        response.headers_mut().insert(LOCATION, location);
    }
    for c in cookies {
        if let Ok(value) = HeaderValue::from_str(&c) {
            response.headers_mut().append(SET_COOKIE, value);
        }
    }
    no_store(response)
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// The forge sends the person back: the code becomes a token, the token says who they are and
/// whether they can read the repository, and the answer becomes a cookie or a refusal.
async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Result<Response, Page> {
    let gate = gate(&state)?;
    let bad = |message: &str| ApiError::BadRequest { field: None, message: message.to_owned() };
    let given = q.state.as_deref().unwrap_or_default();
    let ours = cookie(&headers, STATE_COOKIE).unwrap_or_default();
    if given.is_empty() || !bool::from(given.as_bytes().ct_eq(ours.as_bytes())) {
        return Err(bad(
            "this sign-in was not started in this browser (or it was already used): open the stand's URL again",
        )
        .into());
    }
    let Some(flow) = access::take(gate.pool(), given).await.map_err(ApiError::from)? else {
        return Err(bad("this sign-in expired or was already used: open the stand's URL again").into());
    };
    let entry = match gate.host_of(flow.stand_id).await {
        Some(host) => gate.entry(&host).await,
        None => None,
    }
    .ok_or_else(|| ApiError::NotFound("the stand of this sign-in is gone".into()))?;
    if let Some(error) = q.error {
        let forge = entry.forge.as_str();
        return Err(ApiError::AccessRefused(format!(
            "the sign-in was not completed at {forge} ({error}), so the stand stays closed"
        ))
        .into());
    }
    let code = q.code.ok_or_else(|| bad("the forge sent no code"))?;
    let forge_err = |e: SignInError| match e {
        SignInError::Refused { .. } => {
            ApiError::BadRequest { field: None, message: format!("{e}: open the stand's URL again") }
        }
        other => ApiError::ForgeUnavailable(other.to_string()),
    };
    let callback = gate.config.callback_url();
    let token = gate.signin.exchange(entry.forge, &code, &flow.verifier, &callback).await.map_err(forge_err)?;
    let person = gate.signin.person(entry.forge, &token).await.map_err(forge_err)?;
    let readable = gate.signin.can_read(entry.forge, &token, &entry.repo).await.map_err(forge_err)?;
    drop(token);
    let actor = format!("{}:{}", entry.forge.as_str(), person.login);
    let detail = json!({ "forge": entry.forge, "repo": entry.repo, "login": person.login, "forge_user_id": person.id });
    let event = if readable { AccessEvent::SignedIn } else { AccessEvent::Refused };
    access::record(gate.pool(), event, &actor, entry.stand_id, None, &detail).await.map_err(ApiError::from)?;
    let clear_state = format!("{STATE_COOKIE}=; Path=/access/; Max-Age=0; HttpOnly; Secure; SameSite=Lax");
    if !readable {
        tracing::info!(stand = entry.stand_id.get(), login = %person.login, "access refused: cannot read the repository");
        return Err(ApiError::AccessRefused(format!(
            "You are signed in to {} as {}, who cannot read {}. This stand shows unreleased work of that repository, \
             so only people who can read it may open it. Ask its maintainers for access, then open the stand's URL again.",
            entry.forge.name(),
            person.login,
            entry.repo
        ))
        .into());
    }
    let now = Utc::now().timestamp();
    let recheck = gate.config.recheck.as_secs();
    let grant =
        Grant { forge: entry.forge, repo: entry.repo.clone(), login: person.login, until: now + recheck as i64 };
    let grants = gate.grants_in(cookie(&headers, &gate.config.cookie_name)).with(grant, now);
    let access_cookie = format!(
        "{}={}; Domain={}; Path=/; Max-Age={recheck}; HttpOnly; Secure; SameSite=Lax",
        gate.config.cookie_name,
        gate.key.seal(&grants),
        gate.config.cookie_domain.trim_start_matches('.'),
    );
    Ok(redirect(&flow.rd, vec![access_cookie, clear_state]))
}
