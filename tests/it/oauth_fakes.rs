//! The sign-in fakes themselves (tests/support/forge_fake/oauth.rs), driven with reqwest as draftd
//! and a browser would drive GitHub and GitLab: the whole authorization-code flow with PKCE, the
//! person's own API calls, and each refusal the forges document.

use std::collections::BTreeMap;

use draftd::config::ForgeKind;
use reqwest::StatusCode;
use serde_json::Value;
use url::Url;

use crate::support::forge_fake::oauth::s256;
use crate::support::forge_fake::{Fake, GITLAB_REPO, REPO, TOKEN};

const CLIENT_ID: &str = "Iv1.8a61f9b3a7aba766";
const SECRET: &str = "oauth-test-secret-2f7c1d";
const CALLBACK: &str = "http://draftd.stands.test:8080/access/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const STATE: &str = "st/ate+with=odd&chars";

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn encode(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

async fn get(url: &str) -> reqwest::Response {
    client().get(url).send().await.unwrap()
}

/// The query of a redirect's `Location`, and the URL without it.
fn location(r: &reqwest::Response) -> (String, BTreeMap<String, String>) {
    assert_eq!(r.status(), StatusCode::FOUND, "expected a redirect");
    let mut u = Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let q = u.query_pairs().into_owned().collect();
    u.set_query(None);
    (u.to_string(), q)
}

/// Authorize with `extra` parameters over a standard PKCE request for `fake`'s forge.
async fn authorize(fake: &Fake, kind: ForgeKind, extra: &[(&str, &str)]) -> reqwest::Response {
    let challenge = s256(VERIFIER);
    let mut p: BTreeMap<&str, &str> = [
        ("client_id", CLIENT_ID),
        ("redirect_uri", CALLBACK),
        ("state", STATE),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ]
    .into();
    if kind == ForgeKind::Github {
        p.insert("scope", "repo");
    } else {
        p.extend([("response_type", "code"), ("scope", "read_user read_api")]);
    }
    for (k, v) in extra {
        if v.is_empty() {
            p.remove(k);
        } else {
            p.insert(k, v);
        }
    }
    let path = if kind == ForgeKind::Github { "login/oauth/authorize" } else { "oauth/authorize" };
    get(&format!("{}/{path}?{}", fake.url(), encode(&p.into_iter().collect::<Vec<_>>()))).await
}

async fn code(fake: &Fake, kind: ForgeKind) -> String {
    let (_, q) = location(&authorize(fake, kind, &[]).await);
    assert_eq!(q["state"], STATE, "state comes back unchanged");
    q["code"].clone()
}

/// The token endpoint, form-encoded, asking for JSON: (status, body).
async fn exchange(fake: &Fake, kind: ForgeKind, pairs: &[(&str, &str)]) -> (StatusCode, Value) {
    let path = if kind == ForgeKind::Github { "login/oauth/access_token" } else { "oauth/token" };
    let r = client()
        .post(format!("{}/{path}", fake.url()))
        .header("accept", "application/json")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(pairs))
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

fn token_params(code: &str, kind: ForgeKind) -> Vec<(&str, &str)> {
    let mut p = vec![
        ("client_id", CLIENT_ID),
        ("client_secret", SECRET),
        ("code", code),
        ("redirect_uri", CALLBACK),
        ("code_verifier", VERIFIER),
    ];
    if kind == ForgeKind::Gitlab {
        p.push(("grant_type", "authorization_code"));
    }
    p
}

fn with<'a>(mut p: Vec<(&'a str, &'a str)>, key: &'a str, value: &'a str) -> Vec<(&'a str, &'a str)> {
    p.retain(|(k, _)| *k != key);
    if !value.is_empty() {
        p.push((key, value));
    }
    p
}

/// A GitHub API GET with the person's token and the headers GitHub's REST docs ask for.
async fn gh_api(fake: &Fake, path: &str, token: &str) -> (StatusCode, Value) {
    let r = client()
        .get(format!("{}{path}", fake.url()))
        .header("accept", "application/vnd.github+json")
        .header("x-github-api-version", "2022-11-28")
        .header("user-agent", "draftd-test")
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

async fn gl_api(fake: &Fake, path: &str, token: &str) -> (StatusCode, Value) {
    let r = client().get(format!("{}{path}", fake.url())).bearer_auth(token).send().await.unwrap();
    (r.status(), r.json().await.unwrap())
}

async fn github() -> Fake {
    let fake = Fake::start(ForgeKind::Github).await;
    fake.register_oauth_app(CLIENT_ID, SECRET, CALLBACK);
    fake
}

async fn gitlab() -> Fake {
    let fake = Fake::start(ForgeKind::Gitlab).await;
    fake.register_oauth_app(CLIENT_ID, SECRET, CALLBACK);
    fake
}

#[tokio::test]
async fn github_signs_a_person_in_with_state_and_pkce_and_shows_what_they_may_do() {
    let fake = github().await;
    fake.oauth_sign_in("alice");
    fake.gh_grant(REPO, "alice", "read");
    let r = authorize(&fake, ForgeKind::Github, &[]).await;
    let (to, q) = location(&r);
    assert_eq!(to, CALLBACK);
    assert_eq!(q["state"], STATE);
    let (status, v) = exchange(&fake, ForgeKind::Github, &token_params(&q["code"], ForgeKind::Github)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((v["token_type"].as_str(), v["scope"].as_str()), (Some("bearer"), Some("repo")));
    let token = v["access_token"].as_str().unwrap();
    assert!(token.starts_with("gho_") && token != TOKEN);

    let (status, user) = gh_api(&fake, "/user", token).await;
    assert_eq!((status, user["login"].as_str()), (StatusCode::OK, Some("alice")));
    assert_eq!(user["id"].as_u64(), Some(fake.oauth_user_id("alice")));
    let (status, same) = gh_api(&fake, "/api/v3/user", token).await;
    assert_eq!((status, same["login"].as_str()), (StatusCode::OK, Some("alice")), "GitHub Enterprise's API path");
    let (status, repo) = gh_api(&fake, &format!("/repos/{REPO}"), token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(repo["full_name"], REPO);
    assert_eq!(repo["private"], true);
    let p = &repo["permissions"];
    assert_eq!(
        (p["pull"].as_bool(), p["triage"].as_bool(), p["push"].as_bool()),
        (Some(true), Some(false), Some(false))
    );

    let seen = fake.oauth_token_requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].params.get("code_verifier").map(String::as_str), Some(VERIFIER));
    assert_eq!(seen[0].params.get("client_secret").map(String::as_str), Some(SECRET), "the secret goes in the body");
    assert_eq!(seen[0].basic_client_id, None);
    assert_eq!(seen[0].content_type.as_deref(), Some("application/x-www-form-urlencoded"));
    assert_eq!(seen[0].accept.as_deref(), Some("application/json"));
    let asked = &fake.oauth_authorize_requests()[0];
    assert_eq!(asked["code_challenge_method"], "S256");
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test]
async fn github_answers_the_token_form_encoded_unless_json_is_asked_for() {
    let fake = github().await;
    fake.oauth_sign_in("alice");
    let code = code(&fake, ForgeKind::Github).await;
    let r = client()
        .post(format!("{}/login/oauth/access_token", fake.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&token_params(&code, ForgeKind::Github)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/x-www-form-urlencoded"));
    let body = r.text().await.unwrap();
    let fields: BTreeMap<String, String> = form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    assert!(fields["access_token"].starts_with("gho_"));
    assert_eq!(fields["token_type"], "bearer");
}

#[tokio::test]
async fn github_authorize_refuses_unknown_clients_foreign_redirects_and_plain_pkce() {
    let fake = github().await;
    fake.oauth_sign_in("alice");
    let r = authorize(&fake, ForgeKind::Github, &[("client_id", "Iv1.unknown")]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Elsewhere: GitHub sends the person to the registered callback with the error.
    for foreign in [
        "http://evil.test:8080/access/callback",
        "http://draftd.stands.test:9090/access/callback",
        "http://draftd.stands.test:8080/elsewhere",
    ] {
        let (to, q) = location(&authorize(&fake, ForgeKind::Github, &[("redirect_uri", foreign)]).await);
        assert_eq!((to.as_str(), q["error"].as_str()), (CALLBACK, "redirect_uri_mismatch"), "{foreign}");
        assert_eq!(q["state"], STATE);
        assert!(!q.contains_key("code"));
    }
    // Below the callback's path, or on a subdomain of its host: allowed.
    for nested in
        ["http://draftd.stands.test:8080/access/callback/github", "http://a.draftd.stands.test:8080/access/callback"]
    {
        let (to, q) = location(&authorize(&fake, ForgeKind::Github, &[("redirect_uri", nested)]).await);
        assert_eq!(to, nested);
        assert!(q.contains_key("code"), "{nested}");
    }
    let (_, q) = location(&authorize(&fake, ForgeKind::Github, &[("code_challenge_method", "plain")]).await);
    assert_eq!(q["error"], "invalid_request");
    assert!(!q.contains_key("code"));
}

#[tokio::test]
async fn github_authorize_shows_sign_in_to_nobody_and_access_denied_when_the_person_cancels() {
    let fake = github().await;
    let r = authorize(&fake, ForgeKind::Github, &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("Sign in to GitHub"));

    fake.oauth_sign_in("alice");
    fake.oauth_deny(true);
    let (to, q) = location(&authorize(&fake, ForgeKind::Github, &[]).await);
    assert_eq!((to.as_str(), q["error"].as_str(), q["state"].as_str()), (CALLBACK, "access_denied", STATE));
    assert!(q["error_description"].contains("denied"));
    fake.oauth_sign_out();
    assert_eq!(authorize(&fake, ForgeKind::Github, &[]).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn github_token_refuses_wrong_secrets_verifiers_redirects_and_spent_or_old_codes_with_http_200() {
    let fake = github().await;
    fake.oauth_sign_in("alice");
    let gh = ForgeKind::Github;
    let refused = |v: &Value, error: &str| {
        assert_eq!(v["error"], error, "{v}");
        assert!(v["error_description"].is_string() && v["error_uri"].is_string() && v.get("access_token").is_none());
    };
    let c = code(&fake, gh).await;
    let (status, v) = exchange(&fake, gh, &with(token_params(&c, gh), "client_secret", "wrong")).await;
    assert_eq!(status, StatusCode::OK, "GitHub answers token errors with 200");
    refused(&v, "incorrect_client_credentials");
    refused(
        &exchange(&fake, gh, &with(token_params(&c, gh), "code_verifier", "x".repeat(43).as_str())).await.1,
        "bad_verification_code",
    );
    refused(&exchange(&fake, gh, &with(token_params(&c, gh), "code_verifier", "")).await.1, "bad_verification_code");
    refused(
        &exchange(
            &fake,
            gh,
            &with(token_params(&c, gh), "redirect_uri", "http://draftd.stands.test:8080/access/callback/x"),
        )
        .await
        .1,
        "redirect_uri_mismatch",
    );
    // The refusals spent nothing: the right request still works, once.
    assert!(exchange(&fake, gh, &token_params(&c, gh)).await.1["access_token"].is_string());
    refused(&exchange(&fake, gh, &token_params(&c, gh)).await.1, "bad_verification_code");
    refused(&exchange(&fake, gh, &token_params("not-a-code", gh)).await.1, "bad_verification_code");

    let old = code(&fake, gh).await;
    fake.oauth_expire_codes();
    refused(&exchange(&fake, gh, &token_params(&old, gh)).await.1, "bad_verification_code");
    let errors: Vec<Option<String>> = fake.oauth_token_requests().into_iter().map(|r| r.error).collect();
    assert_eq!(errors.iter().filter(|e| e.is_none()).count(), 1);
}

#[tokio::test]
async fn github_hides_private_repositories_from_people_who_cannot_read_them() {
    let fake = github().await;
    fake.gh_grant(REPO, "alice", "write");
    let alice = fake.oauth_issue_token(CLIENT_ID, "alice", "repo");
    let bob = fake.oauth_issue_token(CLIENT_ID, "bob", "repo");
    let alice_unscoped = fake.oauth_issue_token(CLIENT_ID, "alice", "read:user");
    let path = format!("/repos/{REPO}");

    let (status, v) = gh_api(&fake, &path, &alice).await;
    assert_eq!((status, v["permissions"]["push"].as_bool()), (StatusCode::OK, Some(true)));
    let (status, v) = gh_api(&fake, &path, &bob).await;
    assert_eq!((status, v["message"].as_str()), (StatusCode::NOT_FOUND, Some("Not Found")), "not 403: GitHub hides it");
    let (status, _) = gh_api(&fake, &path, &alice_unscoped).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "an OAuth app's token reads private repositories only with `repo`");

    fake.oauth_make_public(REPO);
    let (status, v) = gh_api(&fake, &path, &bob).await;
    assert_eq!(
        (status, v["permissions"]["pull"].as_bool(), v["permissions"]["push"].as_bool()),
        (StatusCode::OK, Some(true), Some(false))
    );

    for token in [TOKEN, "gho_forged0000000000000000000000000000"] {
        let (status, v) = gh_api(&fake, "/user", token).await;
        assert_eq!((status, v["message"].as_str()), (StatusCode::UNAUTHORIZED, Some("Bad credentials")), "{token}");
    }
    fake.oauth_revoke_tokens("alice");
    assert_eq!(gh_api(&fake, &path, &alice).await.0, StatusCode::UNAUTHORIZED);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test]
async fn a_github_apps_client_gets_expiring_tokens_that_need_no_scope() {
    let fake = Fake::start(ForgeKind::Github).await;
    fake.gh_register_app_client(CLIENT_ID, SECRET, CALLBACK);
    fake.gh_grant(REPO, "alice", "read");
    fake.oauth_sign_in("alice");
    let c = code(&fake, ForgeKind::Github).await;
    let (_, v) = exchange(&fake, ForgeKind::Github, &token_params(&c, ForgeKind::Github)).await;
    let token = v["access_token"].as_str().unwrap();
    assert!(token.starts_with("ghu_"));
    assert_eq!((v["expires_in"].as_u64(), v["scope"].as_str()), (Some(28_800), Some("")));
    assert!(v["refresh_token"].as_str().unwrap().starts_with("ghr_"));
    assert_eq!(gh_api(&fake, &format!("/repos/{REPO}"), token).await.0, StatusCode::OK);
    fake.oauth_expire_tokens();
    assert_eq!(gh_api(&fake, "/user", token).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn gitlab_signs_a_person_in_with_pkce_and_shows_their_project_access() {
    let fake = gitlab().await;
    fake.gl_add_member(GITLAB_REPO, 42, "carol", 30);
    fake.oauth_sign_in("carol");
    let (to, q) = location(&authorize(&fake, ForgeKind::Gitlab, &[]).await);
    assert_eq!((to.as_str(), q["state"].as_str()), (CALLBACK, STATE));
    let (status, v) = exchange(&fake, ForgeKind::Gitlab, &token_params(&q["code"], ForgeKind::Gitlab)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!((v["token_type"].as_str(), v["expires_in"].as_u64()), (Some("Bearer"), Some(7200)));
    assert_eq!(v["scope"], "read_user read_api");
    assert!(v["refresh_token"].is_string() && v["created_at"].is_i64());
    let token = v["access_token"].as_str().unwrap();
    assert_eq!(token.len(), 64);

    let (status, user) = gl_api(&fake, "/api/v4/user", token).await;
    assert_eq!((status, user["username"].as_str(), user["id"].as_u64()), (StatusCode::OK, Some("carol"), Some(42)));
    assert_eq!(user["state"], "active");
    let (status, project) = gl_api(&fake, "/api/v4/projects/acme%2Fplatform%2Fshop", token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(project["path_with_namespace"], GITLAB_REPO);
    assert_eq!(project["permissions"]["project_access"]["access_level"], 30);
    assert_eq!(project["permissions"]["group_access"], Value::Null);
    // The bot's own token still reaches the fake's other routes.
    let r = client().get(format!("{}/api/v4/user", fake.url())).header("private-token", TOKEN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test]
async fn gitlab_authorize_shows_errors_it_cannot_send_back_and_redirects_the_others() {
    let fake = gitlab().await;
    let gl = ForgeKind::Gitlab;
    let r = authorize(&fake, gl, &[("client_id", "unknown")]).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().contains("invalid_client"));
    for foreign in ["http://evil.test/access/callback", "http://draftd.stands.test:8080/access/callback/sub", ""] {
        let r = authorize(&fake, gl, &[("redirect_uri", foreign)]).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{foreign:?}: a page, no redirect");
        assert!(r.text().await.unwrap().contains("invalid_redirect_uri"));
    }
    for (extra, error) in [
        (("response_type", ""), "invalid_request"),
        (("response_type", "token"), "unsupported_response_type"),
        (("scope", "sudo"), "invalid_scope"),
        (("code_challenge_method", "S512"), "invalid_request"),
    ] {
        let (to, q) = location(&authorize(&fake, gl, &[extra]).await);
        assert_eq!((to.as_str(), q["error"].as_str(), q["state"].as_str()), (CALLBACK, error, STATE), "{extra:?}");
    }
    let r = authorize(&fake, gl, &[]).await;
    assert_eq!(r.status(), StatusCode::OK, "nobody signed in: GitLab's sign-in page");
    fake.oauth_sign_in("carol");
    fake.oauth_deny(true);
    let (_, q) = location(&authorize(&fake, gl, &[]).await);
    assert_eq!((q["error"].as_str(), q["state"].as_str()), ("access_denied", STATE));
}

#[tokio::test]
async fn gitlab_token_refuses_bad_clients_with_401_and_bad_grants_with_400() {
    let fake = gitlab().await;
    fake.oauth_sign_in("carol");
    let gl = ForgeKind::Gitlab;
    let c = code(&fake, gl).await;
    let refused = |(status, v): (StatusCode, Value), want: StatusCode, error: &str| {
        assert_eq!((status, v["error"].as_str()), (want, Some(error)), "{v}");
        assert!(v["error_description"].is_string());
    };
    refused(
        exchange(&fake, gl, &with(token_params(&c, gl), "client_secret", "wrong")).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    refused(
        exchange(&fake, gl, &with(token_params(&c, gl), "client_id", "unknown")).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    refused(
        exchange(&fake, gl, &with(token_params(&c, gl), "code_verifier", "")).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    refused(
        exchange(&fake, gl, &with(token_params(&c, gl), "code_verifier", "y".repeat(43).as_str())).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    refused(
        exchange(&fake, gl, &with(token_params(&c, gl), "redirect_uri", "http://draftd.stands.test:8080/other")).await,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
    );
    refused(
        exchange(&fake, gl, &with(token_params(&c, gl), "grant_type", "password")).await,
        StatusCode::BAD_REQUEST,
        "unsupported_grant_type",
    );

    // Client authentication by HTTP Basic instead of the body works too, once per code.
    let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{CLIENT_ID}:{SECRET}"));
    let body = with(with(token_params(&c, gl), "client_secret", ""), "client_id", "");
    let r = client()
        .post(format!("{}/oauth/token", fake.url()))
        .header("authorization", format!("Basic {basic}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(fake.oauth_token_requests().last().unwrap().basic_client_id.as_deref(), Some(CLIENT_ID));
    refused(exchange(&fake, gl, &token_params(&c, gl)).await, StatusCode::BAD_REQUEST, "invalid_grant");

    let old = code(&fake, gl).await;
    fake.oauth_expire_codes();
    refused(exchange(&fake, gl, &token_params(&old, gl)).await, StatusCode::BAD_REQUEST, "invalid_grant");
}

#[tokio::test]
async fn gitlab_hides_private_projects_from_non_members_and_refuses_expired_or_narrow_tokens() {
    let fake = gitlab().await;
    fake.gl_add_member(GITLAB_REPO, 42, "carol", 40);
    fake.gl_grant_group(GITLAB_REPO, "erin", 20);
    let path = "/api/v4/projects/acme%2Fplatform%2Fshop";
    let dave = fake.oauth_issue_token(CLIENT_ID, "dave", "read_api");
    let (status, v) = gl_api(&fake, path, &dave).await;
    assert_eq!((status, v["message"].as_str()), (StatusCode::NOT_FOUND, Some("404 Project Not Found")));
    let erin = fake.oauth_issue_token(CLIENT_ID, "erin", "read_api");
    let (status, v) = gl_api(&fake, path, &erin).await;
    assert_eq!((status, v["permissions"]["group_access"]["access_level"].as_u64()), (StatusCode::OK, Some(20)));
    assert_eq!(v["permissions"]["project_access"], Value::Null);

    let narrow = fake.oauth_issue_token(CLIENT_ID, "carol", "read_user");
    let (status, v) = gl_api(&fake, path, &narrow).await;
    assert_eq!((status, v["error"].as_str()), (StatusCode::FORBIDDEN, Some("insufficient_scope")));
    assert_eq!(gl_api(&fake, "/api/v4/user", &narrow).await.0, StatusCode::OK);

    let (status, v) = gl_api(&fake, "/api/v4/user", "0".repeat(64).as_str()).await;
    assert_eq!((status, v["message"].as_str()), (StatusCode::UNAUTHORIZED, Some("401 Unauthorized")));
    fake.oauth_expire_tokens();
    let (status, v) = gl_api(&fake, path, &erin).await;
    assert_eq!((status, v["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_token")));
    assert!(v["error_description"].as_str().unwrap().contains("expired"));
}
