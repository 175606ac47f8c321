//! The stand API against a real Postgres: bearer token, list and show, re-run, extend, destroy.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use serde_json::{Value, json};
use sqlx::PgPool;

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
