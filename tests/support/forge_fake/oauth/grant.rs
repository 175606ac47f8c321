//! The grant: the authorize page (a code for the signed-in person, or the documented refusal)
//! and the token endpoint (the code, the client's secret and the PKCE verifier for a token).

use std::collections::BTreeMap;
use std::time::Instant;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use draftd::config::ForgeKind;
use serde_json::{Value, json};
use url::Url;

use super::super::{Inner, json_response};
use super::*;

pub(super) fn gh_authorize(s: &mut Inner, q: BTreeMap<String, String>) -> Response {
    s.oauth.authorizations.push(q.clone());
    let state = q.get("state").map(String::as_str);
    // An unknown client_id: GitHub's 404 page.
    let Some(client) = q.get("client_id").and_then(|id| s.oauth.client(id)).cloned() else {
        return html(
            404,
            "Page not found · GitHub",
            "<h1>404</h1><p>This is not the web page you are looking for.</p>",
        );
    };
    // "Troubleshooting authorization request errors": a mismatched redirect_uri sends the person
    // to the registered callback URL with the error.
    let to = match q.get("redirect_uri") {
        None => client.callback.clone(),
        Some(r) => match Url::parse(r).ok().filter(|u| gh_redirect_allowed(&client.callback, u)) {
            Some(u) => u,
            None => {
                let e = [
                    ("error", "redirect_uri_mismatch"),
                    (
                        "error_description",
                        "The redirect_uri MUST match the registered callback URL for this application.",
                    ),
                    (
                        "error_uri",
                        "/apps/managing-oauth-apps/troubleshooting-authorization-request-errors/#redirect-uri-mismatch",
                    ),
                ];
                return redirect(&client.callback, &e, state);
            }
        },
    };
    // PKCE: "Only the S256 code challenge method is accepted."
    let challenge = match (q.get("code_challenge"), q.get("code_challenge_method").map(String::as_str)) {
        (None, None) => None,
        (Some(c), Some("S256")) if !c.is_empty() => Some(("S256".to_owned(), c.clone())),
        _ => {
            let e = [
                ("error", "invalid_request"),
                ("error_description", "Only the S256 code challenge method is supported."),
            ];
            return redirect(&to, &e, state);
        }
    };
    let Some(login) = s.oauth.signed_in.clone() else {
        return html(200, "Sign in to GitHub · GitHub", "<h1>Sign in to GitHub</h1><p>to continue to the app</p>");
    };
    if s.oauth.denies {
        let e = [
            ("error", "access_denied"),
            ("error_description", "The user has denied your application access."),
            ("error_uri", "/apps/managing-oauth-apps/troubleshooting-authorization-request-errors/#access-denied"),
        ];
        return redirect(&to, &e, state);
    }
    let scope = scopes(q.get("scope").map(String::as_str).unwrap_or(""), client.kind);
    let code = new_code(s, &client, q.get("redirect_uri").cloned(), challenge, login, scope);
    redirect(&to, &[("code", code.as_str())], state)
}

/// GitHub's rule: same scheme; the host, or a subdomain of it; the same port (any port on a
/// loopback callback); the callback's path or a path below it.
fn gh_redirect_allowed(callback: &Url, asked: &Url) -> bool {
    let (Some(ch), Some(ah)) = (callback.host_str(), asked.host_str()) else { return false };
    let host = ah == ch || ah.ends_with(&format!(".{ch}"));
    let port = loopback(callback) || asked.port_or_known_default() == callback.port_or_known_default();
    let base = callback.path().trim_end_matches('/');
    let path = asked.path() == callback.path() || asked.path().starts_with(&format!("{base}/"));
    asked.scheme() == callback.scheme() && host && port && path
}

pub(super) fn gl_authorize(s: &mut Inner, q: BTreeMap<String, String>) -> Response {
    s.oauth.authorizations.push(q.clone());
    let state = q.get("state").map(String::as_str);
    // Doorkeeper's pre-authorization, in its order; the first errors cannot be redirected.
    let Some(id) = q.get("client_id") else {
        return gl_page(400, "invalid_request", "Missing required parameter: client_id.");
    };
    let Some(client) = s.oauth.client(id).cloned() else {
        return gl_page(
            401,
            "invalid_client",
            "Client authentication failed due to unknown client, no client authentication included, or unsupported authentication method.",
        );
    };
    let Some(to) =
        q.get("redirect_uri").and_then(|r| Url::parse(r).ok()).filter(|u| gl_redirect_allowed(&client.callback, u))
    else {
        return gl_page(
            400,
            "invalid_redirect_uri",
            "The requested redirect uri is malformed or doesn't match client redirect URI.",
        );
    };
    let fail =
        |error: &str, description: &str| redirect(&to, &[("error", error), ("error_description", description)], state);
    match q.get("response_type").map(String::as_str) {
        None => return fail("invalid_request", "Missing required parameter: response_type."),
        Some("code") => {}
        Some(_) => {
            return fail("unsupported_response_type", "The authorization server does not support this response type.");
        }
    }
    let scope = scopes(q.get("scope").map(String::as_str).unwrap_or("api"), ClientKind::OauthApp);
    if scope.is_empty() || scope.iter().any(|x| !GITLAB_SCOPES.contains(&x.as_str())) {
        return fail("invalid_scope", "The requested scope is invalid, unknown, or malformed.");
    }
    // Doorkeeper takes `plain` when a challenge comes without a method.
    let challenge = match (q.get("code_challenge"), q.get("code_challenge_method").map(String::as_str)) {
        (None, None) => None,
        (Some(c), m @ (None | Some("plain") | Some("S256"))) if !c.is_empty() => {
            Some((m.unwrap_or("plain").to_owned(), c.clone()))
        }
        (None, Some(_)) => return fail("invalid_request", "Missing required parameter: code_challenge."),
        _ => return fail("invalid_request", "The code challenge method must be plain or S256."),
    };
    let Some(login) = s.oauth.signed_in.clone() else {
        return html(200, "Sign in · GitLab", "<h1>Sign in</h1><p>GitLab</p>");
    };
    if s.oauth.denies {
        return fail("access_denied", "The resource owner or authorization server denied the request.");
    }
    let code = new_code(s, &client, q.get("redirect_uri").cloned(), challenge, login, scope);
    redirect(&to, &[("code", code.as_str())], state)
}

/// Doorkeeper's rule: exactly the registered URI, except that a loopback one may use any port
/// (RFC 8252).
fn gl_redirect_allowed(callback: &Url, asked: &Url) -> bool {
    if !loopback(callback) {
        return asked == callback;
    }
    let (mut a, mut c) = (asked.clone(), callback.clone());
    let _ = (a.set_port(None), c.set_port(None));
    a == c
}

fn loopback(u: &Url) -> bool {
    matches!(u.host_str(), Some("127.0.0.1" | "[::1]" | "localhost"))
}

fn new_code(
    s: &mut Inner,
    client: &Client,
    redirect_uri: Option<String>,
    challenge: Option<(String, String)>,
    login: String,
    scope: Vec<String>,
) -> String {
    let code = s.oauth.secret("", true)[..20].to_owned();
    s.oauth.codes.push(Code {
        code: code.clone(),
        client_id: client.id.clone(),
        redirect_uri,
        challenge,
        login,
        scope,
        expires: Instant::now() + CODE_TTL,
        used: false,
    });
    code
}

// ---------------------------------------------------------------------------------------------
// Token
// ---------------------------------------------------------------------------------------------

/// Why a token request was refused, before each forge words it.
enum Refusal {
    /// Unknown client or wrong secret.
    Client,
    /// Wrong, expired, reused or foreign code; a verifier that does not match.
    Code,
    RedirectMismatch,
    Missing(&'static str),
    GrantType,
}

pub(super) fn token(s: &mut Inner, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let gitlab = s.kind == ForgeKind::Gitlab;
    let mut params = query_params(path);
    params.extend(body_params(headers, body));
    let basic = basic_auth(headers);
    let mut request = TokenRequest {
        content_type: header(headers, "content-type"),
        accept: header(headers, "accept"),
        basic_client_id: basic.as_ref().map(|(id, _)| id.clone()),
        params: params.clone(),
        status: 200,
        error: None,
    };
    let outcome = exchange(s, &params, basic.filter(|_| gitlab));
    let json_wanted = gitlab || request.accept.as_deref().is_some_and(|a| a.contains("application/json"));
    let (status, value) = match outcome {
        Ok(t) => (200, token_json(s, &t)),
        Err(r) if gitlab => gl_token_error(r),
        Err(r) => (200, gh_token_error(r)),
    };
    request.status = status;
    request.error = value.get("error").and_then(Value::as_str).map(str::to_owned);
    s.oauth.token_requests.push(request);
    if json_wanted {
        return json_response(status, &value, &[]);
    }
    // GitHub's default answer is a form-encoded string.
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in value.as_object().unwrap() {
        form.append_pair(k, &v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()));
    }
    (StatusCode::OK, [("content-type", "application/x-www-form-urlencoded; charset=utf-8")], form.finish())
        .into_response()
}

fn exchange(
    s: &mut Inner,
    p: &BTreeMap<String, String>,
    basic: Option<(String, String)>,
) -> Result<PersonToken, Refusal> {
    let gitlab = s.kind == ForgeKind::Gitlab;
    let (id, secret) = match basic {
        Some((id, secret)) => (Some(id), Some(secret)),
        None => (p.get("client_id").cloned(), p.get("client_secret").cloned()),
    };
    let client = id.and_then(|id| s.oauth.client(&id).cloned()).ok_or(Refusal::Client)?;
    if secret.as_deref() != Some(client.secret.as_str()) {
        return Err(Refusal::Client);
    }
    if gitlab {
        match p.get("grant_type").map(String::as_str) {
            None => return Err(Refusal::Missing("grant_type")),
            Some("authorization_code") => {}
            Some(_) => return Err(Refusal::GrantType),
        }
    }
    let Some(code) = p.get("code") else {
        return Err(if gitlab { Refusal::Missing("code") } else { Refusal::Code });
    };
    let now = Instant::now();
    let i = s
        .oauth
        .codes
        .iter()
        .position(|c| c.code == *code && c.client_id == client.id && !c.used && c.expires > now)
        .ok_or(Refusal::Code)?;
    let c = s.oauth.codes[i].clone();
    // GitLab wants the authorize request's redirect_uri again, exactly; GitHub checks it when sent.
    let redirect = p.get("redirect_uri");
    if (gitlab && redirect != c.redirect_uri.as_ref())
        || (!gitlab && redirect.is_some() && c.redirect_uri.is_some() && redirect != c.redirect_uri.as_ref())
    {
        return Err(if gitlab { Refusal::Code } else { Refusal::RedirectMismatch });
    }
    if let Some((method, challenge)) = &c.challenge {
        let Some(verifier) = p.get("code_verifier") else {
            return Err(if gitlab { Refusal::Missing("code_verifier") } else { Refusal::Code });
        };
        let derived = if method == "S256" { s256(verifier) } else { verifier.clone() };
        if derived != *challenge {
            return Err(Refusal::Code);
        }
    }
    s.oauth.codes[i].used = true;
    Ok(s.oauth.mint(&c.login, c.scope, client.kind, gitlab))
}

fn token_json(s: &mut Inner, t: &PersonToken) -> Value {
    let scope = t.scope.join(if s.kind == ForgeKind::Gitlab { " " } else { "," });
    match (s.kind, t.kind) {
        (ForgeKind::Gitlab, _) => json!({
            "access_token": t.token,
            "token_type": "Bearer",
            "expires_in": GITLAB_GRANT_TTL,
            "refresh_token": s.oauth.secret("", true),
            "scope": scope,
            "created_at": chrono::Utc::now().timestamp(),
        }),
        (ForgeKind::Github, ClientKind::GithubApp) => json!({
            "access_token": t.token,
            "expires_in": GITHUB_APP_GRANT_TTL,
            "refresh_token": s.oauth.secret("ghr_", false),
            "refresh_token_expires_in": 15_897_600,
            "scope": "",
            "token_type": "bearer",
        }),
        (ForgeKind::Github, ClientKind::OauthApp) => {
            json!({"access_token": t.token, "scope": scope, "token_type": "bearer"})
        }
    }
}

/// "Troubleshooting OAuth app access token request errors".
fn gh_token_error(r: Refusal) -> Value {
    const DOCS: &str = "/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/";
    let (error, description, anchor) = match r {
        Refusal::Client => (
            "incorrect_client_credentials",
            "The client_id and/or client_secret passed are incorrect.",
            "#incorrect-client-credentials",
        ),
        Refusal::RedirectMismatch => (
            "redirect_uri_mismatch",
            "The redirect_uri MUST match the registered callback URL for this application.",
            "#redirect-uri-mismatch2",
        ),
        _ => ("bad_verification_code", "The code passed is incorrect or expired.", "#bad-verification-code"),
    };
    json!({"error": error, "error_description": description, "error_uri": format!("{DOCS}{anchor}")})
}

/// Doorkeeper's token errors, as GitLab answers them.
fn gl_token_error(r: Refusal) -> (u16, Value) {
    let (status, error, description) = match r {
        Refusal::Client => (
            401,
            "invalid_client",
            "Client authentication failed due to unknown client, no client authentication included, or unsupported authentication method.".to_owned(),
        ),
        Refusal::Missing(what) => (400, "invalid_request", format!("Missing required parameter: {what}.")),
        Refusal::GrantType => {
            (400, "unsupported_grant_type", "The authorization grant type is not supported by the authorization server.".to_owned())
        }
        Refusal::Code | Refusal::RedirectMismatch => (
            400,
            "invalid_grant",
            "The provided authorization grant is invalid, expired, revoked, does not match the redirection URI used in the authorization request, or was issued to another client.".to_owned(),
        ),
    };
    (status, json!({"error": error, "error_description": description}))
}
