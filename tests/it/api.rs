//! The stand API against a real Postgres: bearer token, list and show, re-run, extend, destroy.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

use crate::support::*;

const T1: &str = "2019-05-15T15:20:33Z";

fn call(method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    match body {
        Some(b) => req.header("content-type", "application/json").body(Body::from(b.to_string())).unwrap(),
        None => req.body(Body::empty()).unwrap(),
    }
}

async fn seed(app: &axum::Router) -> i64 {
    let res = github(
        app,
        "pull_request",
        &uuid::Uuid::new_v4().to_string(),
        &github_pr("opened", "feature/api", &sha(1), T1),
    )
    .await;
    res.body["stand"].as_i64().unwrap()
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn every_route_wants_the_token(pool: PgPool) {
    let app = app(pool.clone());
    let id = seed(&app).await;
    let routes = [
        ("GET", "/api/v1/stands".to_string()),
        ("GET", format!("/api/v1/stands/{id}")),
        ("POST", format!("/api/v1/stands/{id}/runs")),
        ("POST", format!("/api/v1/stands/{id}/extend")),
        ("POST", format!("/api/v1/stands/{id}/wake")),
        ("DELETE", format!("/api/v1/stands/{id}")),
    ];
    for (method, path) in &routes {
        for token in [None, Some("wrong"), Some(GITHUB_SECRET)] {
            let res = send(&app, call(method, path, token, None)).await;
            assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{method} {path} with {token:?}");
            assert_eq!(res.body["error"]["code"], json!("unauthorized"));
        }
    }
    assert_eq!(count(&pool, "runs").await, 1, "nothing queued by refused calls");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn list_and_show_stands_with_runs_and_steps(pool: PgPool) {
    let app = app(pool.clone());
    let id = seed(&app).await;
    let res = send(&app, call("GET", "/api/v1/stands", Some(API_TOKEN), None)).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body["stands"][0]["stand_id"], json!(id));
    assert_eq!(res.body["stands"][0]["namespace"], json!("draft-feature-api"));
    let filtered = send(&app, call("GET", "/api/v1/stands?state=closing", Some(API_TOKEN), None)).await;
    assert_eq!(filtered.body["stands"], json!([]));
    let res = send(&app, call("GET", &format!("/api/v1/stands/{id}"), Some(API_TOKEN), None)).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body["runs"][0]["state"], json!("queued"));
    assert_eq!(res.body["runs"][0]["steps"], json!([]));
    let missing = send(&app, call("GET", "/api/v1/stands/999999", Some(API_TOKEN), None)).await;
    assert_eq!(
        (missing.status, missing.body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("stand_not_found"))
    );
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn rerun_extend_and_destroy_queue_runs(pool: PgPool) {
    let app = app(pool.clone());
    let id = seed(&app).await;
    let rerun = send(&app, call("POST", &format!("/api/v1/stands/{id}/runs"), Some(API_TOKEN), None)).await;
    assert_eq!(rerun.status, StatusCode::ACCEPTED, "{}", rerun.body);
    let extend =
        send(&app, call("POST", &format!("/api/v1/stands/{id}/extend"), Some(API_TOKEN), Some(json!({ "by": "24h" }))))
            .await;
    assert_eq!(extend.status, StatusCode::ACCEPTED, "{}", extend.body);
    let bad = send(
        &app,
        call("POST", &format!("/api/v1/stands/{id}/extend"), Some(API_TOKEN), Some(json!({ "by": "soon" }))),
    )
    .await;
    assert_eq!((bad.status, bad.body["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("by")));
    let destroy = send(&app, call("DELETE", &format!("/api/v1/stands/{id}"), Some(API_TOKEN), None)).await;
    assert_eq!(destroy.status, StatusCode::ACCEPTED);

    let runs = runs(&pool).await;
    let manual: Vec<(&str, &str, Option<&str>)> =
        runs[1..].iter().map(|r| (r.kind.as_str(), r.trigger.as_str(), r.requested_by.as_deref())).collect();
    assert_eq!(
        manual,
        vec![("deploy", "api", Some("api")), ("extend", "api", Some("api")), ("teardown", "api", Some("api"))]
    );
    assert_eq!(runs[1].sha.as_deref(), Some(sha(1).as_str()), "re-run at the head commit");
    assert_eq!(runs[2].params, json!({ "by_seconds": 86400 }));
    // The token holder is authorised: the stand closes at once, and later requests are refused.
    assert_eq!(stand(&pool, "hello-world", "feature/api").await.unwrap().state, "closing");
    let again = send(&app, call("POST", &format!("/api/v1/stands/{id}/runs"), Some(API_TOKEN), None)).await;
    assert_eq!((again.status, again.body["error"]["code"].clone()), (StatusCode::CONFLICT, json!("stand_not_active")));
    let gone = send(&app, call("DELETE", "/api/v1/stands/999999", Some(API_TOKEN), None)).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

/// Postgres text cannot hold NUL: wherever input would carry one to SQL, the answer is a 400 naming
/// the field (or, for a verified delivery, a recorded and ignored event), never a 500.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_nul_byte_is_refused_naming_the_field_never_a_500(pool: PgPool) {
    let app = app(pool.clone());
    let id = seed(&app).await;
    let refused = [
        ("GET", "/api/v1/stands?project=hello%00world".to_string(), None, "project"),
        ("GET", "/api/v1/stands?state=active%00".to_string(), None, "state"),
        ("GET", "/api/v1/metrics/summary?project=%00".to_string(), None, "project"),
        ("GET", "/api/v1/metrics/summary?window=7d%00".to_string(), None, "window"),
        ("GET", "/api/v1/stands/1%00".to_string(), None, "id"),
        ("DELETE", format!("/api/v1/stands/{id}%00"), None, "id"),
        ("POST", format!("/api/v1/stands/{id}/extend"), Some(json!({ "by": "24h\u{0}" })), "by"),
    ];
    for (method, path, body, field) in refused {
        let res = send(&app, call(method, &path, Some(API_TOKEN), body)).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{method} {path}: {}", res.body);
        assert_eq!(res.body["error"]["field"], json!(field), "{method} {path}: {}", res.body);
    }
    // The dashboard's filter meets the same SQL.
    let page = send(&app, Request::get("/stands?project=%00").body(Body::empty()).unwrap()).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);

    // A verified comment whose author holds NUL is recorded, and queues nothing.
    let mut comment = fixture("github/issue_comment.created.json");
    comment["issue"]["number"] = 2.into();
    comment["issue"]["pull_request"] = json!({ "url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/2" });
    comment["comment"]["body"] = "/draft rerun".into();
    comment["comment"]["user"]["login"] = "Coder\u{0}tocat".into();
    comment["sender"]["login"] = "Coder\u{0}tocat".into();
    let res = github(&app, "issue_comment", &uuid::Uuid::new_v4().to_string(), &comment).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    assert!(res.body["ignored"].as_str().is_some_and(|r| r.contains("NUL")), "{}", res.body);
    // A pull request whose state holds NUL is quoted, escaped, in the recorded reason.
    let mut pr = github_pr("opened", "feature/nul", &sha(2), T1);
    pr["pull_request"]["state"] = "open\u{0}".into();
    let res = github(&app, "pull_request", &uuid::Uuid::new_v4().to_string(), &pr).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    assert_eq!(res.body["ignored"], json!("pull request is open\\0"));
    assert_eq!(count(&pool, "runs").await, 1, "nothing queued");
}

/// Unknown paths and wrong methods under the JSON interfaces answer the one documented error body,
/// not axum's empty 404/405; a wrong method keeps its `Allow` header.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn unknown_paths_and_wrong_methods_answer_the_error_body(pool: PgPool) {
    let app = app(pool.clone());
    let cases = [
        ("GET", "/api/v1/nothing", StatusCode::NOT_FOUND, "not_found", None),
        ("GET", "/api/v2/stands", StatusCode::NOT_FOUND, "not_found", None),
        ("POST", "/webhooks/bitbucket", StatusCode::NOT_FOUND, "not_found", None),
        ("GET", "/health/nothing", StatusCode::NOT_FOUND, "not_found", None),
        ("PUT", "/api/v1/stands", StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", Some("GET,HEAD")),
        ("PATCH", "/api/v1/stands/1", StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", Some("GET,HEAD,DELETE")),
        ("GET", "/api/v1/stands/1/runs", StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", Some("POST")),
        ("GET", "/webhooks/github", StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", Some("POST")),
        ("DELETE", "/webhooks/gitlab", StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", Some("POST")),
        ("POST", "/health", StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", Some("GET,HEAD")),
    ];
    for (method, path, status, code, allow) in cases {
        let req = Request::builder().method(method).uri(path).header("authorization", format!("Bearer {API_TOKEN}"));
        let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(res.status(), status, "{method} {path}");
        let content_type = res.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(content_type.as_deref(), Some("application/json"), "{method} {path}");
        let allowed = res.headers().get("allow").and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(allowed.as_deref(), allow, "{method} {path}: Allow");
        let body: Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["error"]["code"], json!(code), "{method} {path}: {body}");
        assert!(body["error"]["message"].is_string(), "{method} {path}: {body}");
    }
    // The dashboard's own paths get its error page.
    let res = app.clone().oneshot(Request::get("/nothing").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(res.headers().contains_key("content-security-policy"));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn wake_queues_a_wake_of_a_sleeping_stand_and_refuses_an_awake_one(pool: PgPool) {
    let app = app(pool.clone());
    let id = seed(&app).await;
    let awake = send(&app, call("POST", &format!("/api/v1/stands/{id}/wake"), Some(API_TOKEN), None)).await;
    assert_eq!(
        (awake.status, awake.body["error"]["code"].clone()),
        (StatusCode::CONFLICT, json!("stand_not_sleeping")),
        "{}",
        awake.body
    );
    sqlx::query("update stands set state = 'sleeping' where stand_id = $1").bind(id).execute(&pool).await.unwrap();
    let woken = send(&app, call("POST", &format!("/api/v1/stands/{id}/wake"), Some(API_TOKEN), None)).await;
    assert_eq!(woken.status, StatusCode::ACCEPTED, "{}", woken.body);
    let newest = runs(&pool).await.pop().unwrap();
    assert_eq!((newest.kind.as_str(), newest.trigger.as_str()), ("wake", "api"));
}
