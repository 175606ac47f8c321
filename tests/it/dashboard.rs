//! The dashboard against a real Postgres: login and session cookie, CSRF and origin checks, the
//! buttons queueing runs through the API's path, error pages, escaping, and the pages' content.

use axum::Router;
use axum::body::Body;
use axum::http::header::{CONTENT_TYPE, SET_COOKIE};
use axum::http::{HeaderMap, Request, StatusCode};
use chrono::Utc;
use draftd::config::Config;
use draftd::reporter::ReportView;
use draftd::store::stands::{self, StandRef};
use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use serde_json::json;
use sha2::Sha256;
use sqlx::PgPool;
use tower::ServiceExt;

use crate::support::*;
use draftd::stand::StandId;

const T1: &str = "2019-05-15T15:20:33Z";
const PUBLIC_URL: &str = "http://127.0.0.1:8080";

struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or_default()
    }

    /// The `csrf` hidden input's value on this page.
    fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + 19;
        self.body[at..].split('"').next().unwrap().to_owned()
    }
}

async fn request(app: &Router, req: Request<Body>) -> Page {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Page { status, headers, body }
}

async fn get(app: &Router, path: &str, cookie: Option<&str>) -> Page {
    let mut req = Request::get(path);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    request(app, req.body(Body::empty()).unwrap()).await
}

/// A form POST; `extra` adds headers (Origin, Host).
async fn post(app: &Router, path: &str, cookie: Option<&str>, form: &[(&str, &str)], extra: &[(&str, &str)]) -> Page {
    let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let mut req = Request::post(path).header(CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    request(app, req.body(Body::from(body)).unwrap()).await
}

/// Logs in with the API token; returns the `Cookie` header to send.
async fn login(app: &Router) -> String {
    let page = post(app, "/login", None, &[("token", API_TOKEN)], &[]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let set = page.header("set-cookie");
    set.split(';').next().unwrap().to_owned()
}

/// A stand from the recorded `pull_request` opened webhook; its id.
async fn seed(app: &Router, branch: &str) -> i64 {
    let res =
        github(app, "pull_request", &uuid::Uuid::new_v4().to_string(), &github_pr("opened", branch, &sha(1), T1)).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    res.body["stand"].as_i64().unwrap()
}

fn config_with(top: &str, hello_world_extra: &str) -> Config {
    let text = format!("{top}\n{CONFIG}").replace(
        "repo = \"Codertocat/Hello-World\"\n",
        &format!("repo = \"Codertocat/Hello-World\"\n{hello_world_extra}"),
    );
    Config::from_toml(&text).unwrap()
}

/// A cookie value as the dashboard documents it: `<expiry>.<nonce>.<hex HMAC(token, "session|expiry|nonce")>`.
fn forge_cookie(token: &str, expiry: i64, nonce: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(format!("session|{expiry}|{nonce}").as_bytes());
    format!("draftd_session={expiry}.{nonce}.{}", hex::encode(mac.finalize().into_bytes()))
}

/// Text as the templates escape it (minijinja escapes `/` too).
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#x27;")
        .replace('/', "&#x2f;")
}

fn assert_security_headers(page: &Page) {
    let csp = page.header("content-security-policy");
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("form-action 'self'"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    assert_eq!(page.header("referrer-policy"), "same-origin");
    assert_eq!(page.header("cache-control"), "no-store");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn login_with_the_token_sets_a_strict_session_cookie_and_goes_next(pool: PgPool) {
    let app = app(pool);
    let form = get(&app, "/login?next=%2Fstands%2F7", None).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains(r#"<input type="password" id="token" name="token""#), "{}", form.body);
    assert!(form.body.contains(r#"<label for="token">"#));
    let next = format!(r#"<input type="hidden" name="next" value="{}">"#, esc("/stands/7"));
    assert!(form.body.contains(&next), "{}", form.body);
    assert!(form.body.contains(r#"<html lang="en">"#) && form.body.contains("<main>"));
    assert_security_headers(&form);

    let ok = post(&app, "/login", None, &[("token", API_TOKEN), ("next", "/stands/7")], &[]).await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER);
    assert_eq!(ok.header("location"), "/stands/7");
    let cookie = ok.header("set-cookie");
    assert!(cookie.starts_with("draftd_session="), "{cookie}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200", "Secure"] {
        assert!(cookie.split("; ").any(|f| f == flag), "{flag} missing in {cookie}");
    }
    assert!(!cookie.contains(API_TOKEN), "the token is never in the cookie");
    assert_security_headers(&ok);

    for evil in ["//evil.example/x", "https://evil.example/", "/\\evil.example"] {
        let res = post(&app, "/login", None, &[("token", API_TOKEN), ("next", evil)], &[]).await;
        assert_eq!((res.status, res.header("location")), (StatusCode::SEE_OTHER, "/stands"), "{evil}");
    }
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_wrong_token_gets_the_form_again_with_a_401(pool: PgPool) {
    let app = app(pool);
    for token in ["wrong", "", GITHUB_SECRET] {
        let res = post(&app, "/login", None, &[("token", token), ("next", "/stands")], &[]).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert!(res.headers.get(SET_COOKIE).is_none());
        assert!(res.header("content-type").starts_with("text/html"), "{}", res.header("content-type"));
        assert!(res.body.contains("role=\"alert\">That is not the API token."), "{}", res.body);
        assert!(res.body.contains(r#"name="token""#), "the form is shown again");
        assert!(!res.body.contains(token) || token.is_empty() || token == "wrong", "the given token is not echoed");
    }
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn without_an_api_token_the_dashboard_says_nobody_can_log_in(pool: PgPool) {
    let config = Config::from_toml(&CONFIG.replace("[api]\ntoken_env = \"API_TOKEN\"\n", "")).unwrap();
    let app = app_with(pool, &config);
    let page = get(&app, "/login", None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("The dashboard is disabled: no API token is configured"), "{}", page.body);
    assert!(!page.body.contains(r#"name="token""#), "no login form");
    let refused = post(&app, "/login", None, &[("token", API_TOKEN)], &[]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.headers.get(SET_COOKIE).is_none());
    let stands = get(&app, "/stands", None).await;
    assert_eq!((stands.status, stands.header("location")), (StatusCode::SEE_OTHER, "/login?next=%2Fstands"));
    // A cookie signed with any key is worthless without a token to check it against.
    let cookie = forge_cookie("", Utc::now().timestamp() + 60, "00");
    assert_eq!(get(&app, "/stands", Some(&cookie)).await.status, StatusCode::SEE_OTHER);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn pages_without_a_session_redirect_to_login_and_posts_are_refused(pool: PgPool) {
    let app = app(pool.clone());
    let id = seed(&app, "feature/dash").await;
    let root = get(&app, "/", None).await;
    assert_eq!((root.status, root.header("location")), (StatusCode::SEE_OTHER, "/stands"));
    let cases = [
        ("/stands".to_string(), "/login?next=%2Fstands".to_string()),
        ("/stands?state=active".to_string(), "/login?next=%2Fstands%3Fstate%3Dactive".to_string()),
        (format!("/stands/{id}"), format!("/login?next=%2Fstands%2F{id}")),
        (format!("/stands/{id}/runs/1"), format!("/login?next=%2Fstands%2F{id}%2Fruns%2F1")),
    ];
    for (path, login) in &cases {
        let res = get(&app, path, None).await;
        assert_eq!((res.status, res.header("location")), (StatusCode::SEE_OTHER, login.as_str()), "{path}");
        assert_security_headers(&res);
    }
    for action in ["rerun", "extend", "destroy"] {
        let res = post(&app, &format!("/stands/{id}/{action}"), None, &[("csrf", "x")], &[]).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{action}");
        assert!(res.header("content-type").starts_with("text/html"));
        assert!(res.body.contains("<h1>401 Unauthorized</h1>"), "{}", res.body);
    }
    assert_eq!(post(&app, "/logout", None, &[], &[]).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(count(&pool, "runs").await, 1, "nothing queued");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_cookie_is_secure_on_https_and_loopback_only(pool: PgPool) {
    for (public_url, secure) in [
        ("https://draftd.example.com", true),
        ("http://localhost:8080", true),
        ("http://[::1]:8080", true),
        ("http://draftd.internal:8080", false),
    ] {
        let app = app_with(pool.clone(), &config_with(&format!("public_url = \"{public_url}\""), ""));
        let res = post(&app, "/login", None, &[("token", API_TOKEN)], &[]).await;
        assert_eq!(res.status, StatusCode::SEE_OTHER);
        let cookie = res.header("set-cookie");
        assert_eq!(cookie.split("; ").any(|f| f == "Secure"), secure, "{public_url}: {cookie}");
    }
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn tampered_expired_and_foreign_cookies_are_rejected(pool: PgPool) {
    let app = app(pool.clone());
    seed(&app, "feature/dash").await;
    let good = login(&app).await;
    assert_eq!(get(&app, "/stands", Some(&good)).await.status, StatusCode::OK);
    // Cookies in the documented format: the format itself is what another replica checks.
    let now = Utc::now().timestamp();
    let forged = forge_cookie(API_TOKEN, now + 600, "0123abcd");
    assert_eq!(get(&app, "/stands", Some(&forged)).await.status, StatusCode::OK, "documented format");

    let value = good.strip_prefix("draftd_session=").unwrap();
    let (expiry, rest) = value.split_once('.').unwrap();
    let flipped_mac = {
        let mut v = value.to_owned();
        let last = v.pop().unwrap();
        v.push(if last == '0' { '1' } else { '0' });
        v
    };
    let bad = [
        format!("draftd_session={}.{rest}", expiry.parse::<i64>().unwrap() + 86_400),
        format!("draftd_session={flipped_mac}"),
        forge_cookie(API_TOKEN, now - 1, "0123abcd"),
        forge_cookie("another-token", now + 600, "0123abcd"),
        "draftd_session=garbage".to_owned(),
        "draftd_session=".to_owned(),
    ];
    for cookie in &bad {
        let res = get(&app, "/stands", Some(cookie)).await;
        assert_eq!((res.status, res.header("location")), (StatusCode::SEE_OTHER, "/login?next=%2Fstands"), "{cookie}");
        let post = post(&app, "/stands/1/rerun", Some(cookie), &[("csrf", "x")], &[]).await;
        assert_eq!(post.status, StatusCode::UNAUTHORIZED, "{cookie}");
    }
    assert_eq!(count(&pool, "runs").await, 1);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_missing_or_wrong_csrf_token_is_a_403_and_queues_nothing(pool: PgPool) {
    let app = app(pool.clone());
    let id = seed(&app, "feature/dash").await;
    let cookie = login(&app).await;
    let other_session = login(&app).await;
    let other_csrf = get(&app, &format!("/stands/{id}"), Some(&other_session)).await.csrf();
    let csrf = get(&app, &format!("/stands/{id}"), Some(&cookie)).await.csrf();
    assert_ne!(csrf, other_csrf, "each session has its own token");
    for action in ["rerun", "extend", "destroy"] {
        let path = format!("/stands/{id}/{action}");
        for form in [vec![], vec![("csrf", "")], vec![("csrf", "deadbeef")], vec![("csrf", other_csrf.as_str())]] {
            let res = post(&app, &path, Some(&cookie), &form, &[]).await;
            assert_eq!(res.status, StatusCode::FORBIDDEN, "{action} {form:?}");
            assert!(res.body.contains("<h1>403 Forbidden</h1>"), "{}", res.body);
            assert_security_headers(&res);
        }
    }
    let logout = post(&app, "/logout", Some(&cookie), &[], &[]).await;
    assert_eq!(logout.status, StatusCode::FORBIDDEN);
    assert_eq!(count(&pool, "runs").await, 1, "nothing queued");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_post_from_another_origin_is_a_403(pool: PgPool) {
    let app = app(pool.clone());
    let id = seed(&app, "feature/dash").await;
    let cookie = login(&app).await;
    let csrf = get(&app, &format!("/stands/{id}"), Some(&cookie)).await.csrf();
    let path = format!("/stands/{id}/extend");
    let evil = [("origin", "https://evil.example"), ("host", "127.0.0.1:8080")];
    let res = post(&app, &path, Some(&cookie), &[("csrf", &csrf)], &evil).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert!(res.body.contains("posted from another site"), "{}", res.body);
    let login = post(&app, "/login", None, &[("token", API_TOKEN)], &evil).await;
    assert_eq!(login.status, StatusCode::FORBIDDEN);
    assert!(login.headers.get(SET_COOKIE).is_none());
    assert_eq!(count(&pool, "runs").await, 1, "nothing queued");

    let same = [("origin", "http://127.0.0.1:8080"), ("host", "127.0.0.1:8080")];
    let res = post(&app, &path, Some(&cookie), &[("csrf", &csrf)], &same).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(count(&pool, "runs").await, 2);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_buttons_queue_runs_like_the_api_with_trigger_dashboard(pool: PgPool) {
    let app = app(pool.clone());
    let id = seed(&app, "feature/dash").await;
    let cookie = login(&app).await;
    let page = get(&app, &format!("/stands/{id}"), Some(&cookie)).await;
    for (action, label) in [("rerun", "Re-run"), ("extend", "Extend 24h"), ("destroy", "Destroy")] {
        let form = format!(
            "<form method=\"post\" action=\"/stands/{id}/{action}\">\n<input type=\"hidden\" name=\"csrf\" value=\"{}\">\n<button type=\"submit\">{label}</button>",
            page.csrf()
        );
        assert!(page.body.contains(&form), "{action}: {}", page.body);
    }
    let csrf = page.csrf();
    let mut locations = Vec::new();
    for action in ["rerun", "extend", "destroy"] {
        let res = post(&app, &format!("/stands/{id}/{action}"), Some(&cookie), &[("csrf", &csrf)], &[]).await;
        assert_eq!(res.status, StatusCode::SEE_OTHER, "{action}: {}", res.body);
        locations.push(res.header("location").to_owned());
    }
    let runs = runs(&pool).await;
    let manual: Vec<(&str, &str, Option<&str>)> =
        runs[1..].iter().map(|r| (r.kind.as_str(), r.trigger.as_str(), r.requested_by.as_deref())).collect();
    assert_eq!(
        manual,
        vec![
            ("deploy", "dashboard", Some("dashboard")),
            ("extend", "dashboard", Some("dashboard")),
            ("teardown", "dashboard", Some("dashboard"))
        ]
    );
    assert_eq!(runs[1].sha.as_deref(), Some(sha(1).as_str()), "re-run at the head commit");
    assert_eq!(runs[2].params, json!({ "by_seconds": 86400 }));
    assert_eq!(locations[0], format!("/stands/{id}?queued={}", runs[1].run_id));
    assert_eq!(locations[2], format!("/stands/{id}?queued={}", runs[3].run_id));
    assert_eq!(stand(&pool, "hello-world", "feature/dash").await.unwrap().state, "closing");

    let after = get(&app, &locations[2], Some(&cookie)).await;
    assert_eq!(after.status, StatusCode::OK);
    assert!(after.body.contains(r#"<p class="message" role="status">Run #4 (teardown) queued.</p>"#), "{}", after.body);
    assert!(after.body.contains("None: the stand is closing."), "no buttons once closing");
    assert!(!after.body.contains("action=\"/stands/"), "no button forms");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_sleeping_stand_offers_wake_and_the_button_queues_a_wake(pool: PgPool) {
    let app = app(pool.clone());
    let id = seed(&app, "feature/nap").await;
    let cookie = login(&app).await;
    let awake = get(&app, &format!("/stands/{id}"), Some(&cookie)).await;
    assert!(!awake.body.contains("/wake\""), "no Wake while awake: {}", awake.body);
    sqlx::query("update stands set state = 'sleeping' where stand_id = $1").bind(id).execute(&pool).await.unwrap();
    let page = get(&app, &format!("/stands/{id}"), Some(&cookie)).await;
    let form = format!(
        "<form method=\"post\" action=\"/stands/{id}/wake\">\n<input type=\"hidden\" name=\"csrf\" value=\"{}\">\n<button type=\"submit\">Wake</button>",
        page.csrf()
    );
    assert!(page.body.contains(&form), "{}", page.body);
    let res = post(&app, &format!("/stands/{id}/wake"), Some(&cookie), &[("csrf", &page.csrf())], &[]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    let newest = runs(&pool).await.pop().unwrap();
    assert_eq!((newest.kind.as_str(), newest.trigger.as_str()), ("wake", "dashboard"));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn destroying_a_removed_stand_is_a_409_page(pool: PgPool) {
    let app = app(pool.clone());
    let id = seed(&app, "feature/dash").await;
    let cookie = login(&app).await;
    let csrf = get(&app, &format!("/stands/{id}"), Some(&cookie)).await.csrf();
    sqlx::query("update stands set state = 'removed', state_reason = 'merged' where stand_id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let res = post(&app, &format!("/stands/{id}/destroy"), Some(&cookie), &[("csrf", &csrf)], &[]).await;
    assert_eq!(res.status, StatusCode::CONFLICT);
    assert!(res.header("content-type").starts_with("text/html"), "{}", res.header("content-type"));
    assert!(res.body.contains("<h1>409 Conflict</h1>"), "{}", res.body);
    assert!(res.body.contains("stand is removed") && res.body.contains("<code>stand_not_active</code>"));
    assert!(serde_json::from_str::<serde_json::Value>(&res.body).is_err(), "not JSON");
    assert_security_headers(&res);
    let missing = post(&app, "/stands/999999/rerun", Some(&cookie), &[("csrf", &csrf)], &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("<code>stand_not_found</code>"), "{}", missing.body);
    assert_eq!(count(&pool, "runs").await, 1);
    // The API's own errors stay JSON.
    let api = send(
        &app,
        Request::delete(format!("/api/v1/stands/{id}"))
            .header("authorization", format!("Bearer {API_TOKEN}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!((api.status, api.body["error"]["code"].clone()), (StatusCode::CONFLICT, json!("stand_not_active")));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_hostile_branch_name_is_escaped_everywhere(pool: PgPool) {
    let app = app(pool.clone());
    let branch = "feature/<script>alert(\"x\")</script>&'<img src=x onerror=alert(1)>";
    let id = seed(&app, branch).await;
    sqlx::query(
        "insert into steps (run_id, name, state, error, started_at, finished_at)
         select run_id, 'verify', 'failed', $2, now(), now() from runs where stand_id = $1",
    )
    .bind(id)
    .bind(json!({ "kind": "permanent", "label": "probe_failed", "message": "</pre><script>alert(2)</script>" }))
    .execute(&pool)
    .await
    .unwrap();
    let cookie = login(&app).await;
    for path in ["/stands".to_string(), format!("/stands/{id}"), format!("/stands/{id}/runs/1")] {
        let page = get(&app, &path, Some(&cookie)).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert!(!page.body.contains("<script>") && !page.body.contains("<img"), "{path}: {}", page.body);
        assert!(page.body.contains(&esc(branch)), "{path}: {}", page.body);
    }
    let run = get(&app, &format!("/stands/{id}/runs/1"), Some(&cookie)).await;
    let pre = format!("<pre>{}</pre>", esc("</pre><script>alert(2)</script>"));
    assert!(run.body.contains(&pre), "{}", run.body);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_list_and_the_stand_pages_show_the_data(pool: PgPool) {
    let config = config_with("", "host = \"{stand}.draft.example.com\"\n");
    let app = app_with(pool.clone(), &config);
    let id = seed(&app, "feature/dash").await;
    seed(&app, "feature/other").await;
    sqlx::query("update stands set expires_at = now() + interval '47 hours 12 minutes 30 seconds' where stand_id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "update runs set state = 'failed', started_at = now() - interval '125 seconds', finished_at = now()
         where stand_id = $1",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    let steps = [
        ("namespace", "succeeded", json!({}), None, 850),
        ("deploy", "succeeded", json!({ "note": "dry-run: helm template, nothing installed" }), None, 12_300),
        ("migrate", "skipped", json!({ "skipped": "the project has no migrate command" }), None, 0),
        (
            "verify",
            "failed",
            json!({}),
            Some(json!({
                "kind": "permanent",
                "label": "rollout_timeout",
                "message": "rollout of web timed out after 5m\npod web-1 not ready: CrashLoopBackOff\n  last log: panic at 'db'",
            })),
            300_000,
        ),
        (
            "smoke",
            "succeeded",
            json!({ "job": "smoke-r1", "exit_code": 0, "log_tail": "login ok\nsync ok" }),
            None,
            4_000,
        ),
    ];
    for (name, state, detail, error, ms) in steps {
        sqlx::query(
            "insert into steps (run_id, name, state, detail, error, started_at, finished_at)
             select run_id, $2, $3, $4, $5, now(), now() + make_interval(secs => $6::float8 / 1000)
             from runs where stand_id = $1",
        )
        .bind(id)
        .bind(name)
        .bind(state)
        .bind(detail)
        .bind(error)
        .bind(ms as f64)
        .execute(&pool)
        .await
        .unwrap();
    }
    let cookie = login(&app).await;

    let list = get(&app, "/stands", Some(&cookie)).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_security_headers(&list);
    let body = &list.body;
    assert!(body.contains("<caption>2 stands</caption>"), "{body}");
    let link = format!(r#"<th scope="row"><a href="/stands/{id}">{}</a></th>"#, esc("feature/dash"));
    assert!(body.contains(&link), "{body}");
    assert!(body.contains(r#"<th scope="col">Expires</th>"#));
    let url = esc("https://draft-feature-dash.draft.example.com");
    assert!(body.contains(&format!(r#"<a href="{url}">{url}</a>"#)), "{body}");
    assert!(body.contains("(in 47h 12m)"), "{body}");
    assert!(body.contains("<time datetime=\""), "{body}");
    assert!(body.contains("#1 deploy: failed"), "{body}");
    assert!(body.contains("#1 deploy: queued"), "the other stand: {body}");
    assert!(body.contains(r#"<nav aria-label="Main">"#) && body.contains(r#"aria-current="page""#));
    assert!(body.contains(r#"<label for="state">State</label>"#) && body.contains(r#"<label for="project">"#));

    let filtered = get(&app, "/stands?project=hello-world&state=closing", Some(&cookie)).await;
    assert!(filtered.body.contains("<caption>0 stands of project hello-world, closing</caption>"), "{}", filtered.body);
    let by_project = get(&app, "/stands?project=hello-world&state=", Some(&cookie)).await;
    assert!(by_project.body.contains("<caption>2 stands of project hello-world</caption>"), "{}", by_project.body);
    let bogus = get(&app, "/stands?state=%3Cb%3E", Some(&cookie)).await;
    assert_eq!(bogus.status, StatusCode::BAD_REQUEST);
    assert!(bogus.body.contains("&quot;&lt;b&gt;&quot; is not a stand state"), "{}", bogus.body);

    let page = get(&app, &format!("/stands/{id}"), Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    let body = &page.body;
    assert!(body.contains(&format!("<h1>hello-world / {}</h1>", esc("feature/dash"))), "{body}");
    assert!(body.contains("<dt>Status</dt><dd>Draft stand failed</dd>"), "the report's headline: {body}");
    assert!(body.contains("<code>draft-feature-dash</code>"), "{body}");
    assert!(body.contains("#1</a></th>") && body.contains("<td>opened</td>"), "{body}");
    assert!(body.contains("<td>2 m 05 s</td>"), "run duration: {body}");
    assert!(body.contains("<caption>Steps of run #1</caption>"));
    let deploy = format!(
        "<th scope=\"row\">deploy</th>\n<td class=\"state-succeeded\">succeeded</td>\n<td>12.3 s</td>\n<td>{}</td>",
        esc("dry-run: helm template, nothing installed")
    );
    assert!(body.contains(&deploy), "{body}");
    assert!(body.contains("<td>the project has no migrate command</td>"), "{body}");
    assert!(body.contains("<td>rollout_timeout</td>\n<td>rollout of web timed out after 5m</td>"), "{body}");
    assert!(body.contains("<h4>Diagnostics</h4>"), "{body}");
    let diagnostics =
        "rollout of web timed out after 5m\npod web-1 not ready: CrashLoopBackOff\n  last log: panic at 'db'";
    assert!(body.contains(&format!("<pre>{}</pre>", esc(diagnostics))), "{body}");
    assert!(body.contains("<h4>Output of smoke (last lines)</h4>\n<pre>login ok\nsync ok</pre>"), "{body}");

    let run = get(&app, &format!("/stands/{id}/runs/1"), Some(&cookie)).await;
    assert_eq!(run.status, StatusCode::OK);
    assert!(run.body.contains(&format!("<h1>Run #1 of hello-world / {}</h1>", esc("feature/dash"))), "{}", run.body);
    assert!(run.body.contains("<h3>Diagnostics</h3>") && run.body.contains("<h3>Output of smoke (last lines)</h3>"));
    for missing in [format!("/stands/{id}/runs/2"), format!("/stands/{id}/runs/0"), format!("/stands/{id}/runs/x")] {
        let res = get(&app, &missing, Some(&cookie)).await;
        assert_eq!(res.status, StatusCode::NOT_FOUND, "{missing}");
        assert!(res.body.contains("<h1>404 Not Found</h1>"), "{}", res.body);
    }
    assert_eq!(get(&app, "/stands/999999", Some(&cookie)).await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&app, "/stands/abc", Some(&cookie)).await.status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_links_in_the_sticky_comment_open_after_login(pool: PgPool) {
    let app = app(pool.clone());
    let id = seed(&app, "feature/dash").await;
    let cookie = login(&app).await;
    let csrf = get(&app, &format!("/stands/{id}"), Some(&cookie)).await.csrf();
    post(&app, &format!("/stands/{id}/rerun"), Some(&cookie), &[("csrf", &csrf)], &[]).await;
    let detail = stands::show(&pool, &StandRef::Id(StandId::new(id)), 10).await.unwrap().unwrap();
    let view = ReportView::from_detail(&detail, None, vec![], Some(PUBLIC_URL)).unwrap();
    let links = [view.stand_link.unwrap(), view.run_link.unwrap()];
    assert_eq!(links[1], format!("{PUBLIC_URL}/stands/{id}/runs/2"));
    for link in links {
        let path = link.strip_prefix(PUBLIC_URL).unwrap();
        let before = get(&app, path, None).await;
        assert_eq!(before.status, StatusCode::SEE_OTHER, "{path}");
        let after_login = post(&app, "/login", None, &[("token", API_TOKEN), ("next", path)], &[]).await;
        assert_eq!(after_login.header("location"), path);
        let page = get(&app, path, Some(&cookie)).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
    }
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn logout_clears_the_cookie(pool: PgPool) {
    let app = app(pool);
    let cookie = login(&app).await;
    let page = get(&app, "/stands", Some(&cookie)).await;
    assert!(page.body.contains(r#"<form method="post" action="/logout">"#), "{}", page.body);
    let res = post(&app, "/logout", Some(&cookie), &[("csrf", &page.csrf())], &[]).await;
    assert_eq!((res.status, res.header("location")), (StatusCode::SEE_OTHER, "/login"));
    let cleared = res.header("set-cookie");
    assert!(cleared.starts_with("draftd_session=;") && cleared.contains("Max-Age=0"), "{cleared}");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_stand_page_shows_its_cost_and_what_it_waits_for(pool: PgPool) {
    let app = app(pool.clone());
    let id = seed(&app, "feature/priced").await;
    let cookie = login(&app).await;
    let before = get(&app, &format!("/stands/{id}"), Some(&cookie)).await;
    assert!(!before.body.contains("<dt>Cost</dt>"), "no cost before it was awake: {}", before.body);
    // Awake for two hours at 1 core and 1 GiB, at the default prices (0.04 + 0.005 per hour).
    sqlx::query(
        "insert into stand_usage (stand_id, cpu_millis, memory_bytes, started_at)
         values ($1, 1000, 1073741824, now() - interval '2 hours')",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("update stands set state = 'waiting', waiting_reason = '2 of 2 stands ([stands] max_active) are up' where stand_id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let page = get(&app, &format!("/stands/{id}"), Some(&cookie)).await;
    assert!(page.body.contains("<dt>Cost</dt><dd>≈ 0.09 USD so far · 0.04&#x2f;h awake</dd>"), "{}", page.body);
    assert!(
        page.body.contains("<dt>Waiting for</dt><dd>a place: 2 of 2 stands ([stands] max_active) are up</dd>"),
        "{}",
        page.body
    );
}

/// Fourteen days of figures for the front page's charts, ending `now`: the sweeps' counts (a stand
/// more awake each day, one asleep from the eighth), a deploy whose verify passed after 40 s and a
/// wake after 12 s each day, and one stand awake for the last two weeks. The stand's id.
pub(crate) async fn seed_figures(pool: &PgPool, now: chrono::DateTime<Utc>) -> StandId {
    let stand: StandId = sqlx::query_scalar(
        "insert into stands (project, branch, namespace, created_at) values ('hello-world', 'feature/figures',
         'draft-feature-figures', $1 - interval '14 days') returning stand_id",
    )
    .bind(now)
    .fetch_one(pool)
    .await
    .unwrap();
    for day in 0..14i32 {
        let at = now - chrono::Duration::days(i64::from(13 - day));
        let sweep: i64 =
            sqlx::query_scalar("insert into sweeps (holder, started_at) values ('test', $1) returning sweep_id")
                .bind(at)
                .fetch_one(pool)
                .await
                .unwrap();
        let counts = [("active", 1 + day), ("sleeping", i32::from(day >= 7))];
        for (state, stands) in counts {
            sqlx::query("insert into stand_counts values ($1, $2, 'hello-world', $3, $4)")
                .bind(sweep)
                .bind(at)
                .bind(state)
                .bind(stands)
                .execute(pool)
                .await
                .unwrap();
        }
        for (number, kind, seconds) in [(2 * day + 1, "deploy", 40), (2 * day + 2, "wake", 12)] {
            let run: i64 = sqlx::query_scalar(
                "insert into runs (stand_id, number, kind, trigger, automatic, epoch, state, queued_at, finished_at)
                 values ($1, $2, $3, 'pushed', true, 0, 'succeeded', $4 - make_interval(secs => $5), $4)
                 returning run_id",
            )
            .bind(stand)
            .bind(number)
            .bind(kind)
            .bind(at)
            .bind(f64::from(seconds))
            .fetch_one(pool)
            .await
            .unwrap();
            sqlx::query("insert into steps (run_id, name, state, finished_at) values ($1, 'verify', 'succeeded', $2)")
                .bind(run)
                .bind(at)
                .execute(pool)
                .await
                .unwrap();
        }
    }
    sqlx::query(
        "insert into stand_usage (stand_id, cpu_millis, memory_bytes, started_at) values ($1, 1000, 1073741824, $2)",
    )
    .bind(stand)
    .bind(now - chrono::Duration::days(14))
    .execute(pool)
    .await
    .unwrap();
    stand
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_front_page_draws_the_figures_as_svg_with_their_tables(pool: PgPool) {
    let app = app(pool.clone());
    seed_figures(&pool, Utc::now()).await;
    let cookie = login(&app).await;
    let page = get(&app, "/stands", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_security_headers(&page);
    assert_eq!(page.body.matches("<svg xmlns=\"http://www.w3.org/2000/svg\"").count(), 4, "{}", page.body);
    for id in ["states", "time-to-url", "wake-time", "cost"] {
        assert!(page.body.contains(&format!("<figure id=\"chart-{id}\">")), "{id}");
    }
    assert!(!page.body.contains("<script"), "no JavaScript");
    // The figures beside each chart: today 14 stands awake and one asleep, 40 s to a URL, 12 s to
    // wake; a week of 1 core and 1 GiB at the default prices is 168 × 0.045 = 7.56 USD.
    assert!(page.body.contains("<td>14</td><td>1</td><td>—</td><td>—</td></tr>"), "{}", page.body);
    assert!(page.body.contains("<td>40</td><td>40</td></tr>"), "{}", page.body);
    assert!(page.body.contains("<td>12</td><td>12</td></tr>"), "{}", page.body);
    assert!(page.body.contains("<td>7.56</td></tr>"), "{}", page.body);
}
