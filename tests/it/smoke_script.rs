//! scripts/smoke_draft.sh, the example smoke test, against a local stand-in for the app: it passes a
//! working app and stops at the first broken check with one line saying which and why.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq)]
enum Broken {
    Nothing,
    Login,
    Sync,
}

#[derive(Clone)]
struct App {
    broken: Broken,
    tasks: Arc<Mutex<HashSet<String>>>,
}

fn authorised(h: &HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer tok-123")
}

async fn start(broken: Broken) -> String {
    let app = App { broken, tasks: Arc::default() };
    let router = axum::Router::new()
        .route(
            "/api/login",
            post(|State(app): State<App>, Json(body): Json<Value>| async move {
                if app.broken == Broken::Login || body != json!({ "username": "demo", "password": "demo" }) {
                    return (StatusCode::UNAUTHORIZED, Json(json!({ "error": "bad credentials" })));
                }
                (StatusCode::OK, Json(json!({ "token": "tok-123", "expires_in": 3600 })))
            }),
        )
        .route(
            "/api/tasks",
            post(|h: HeaderMap, Json(body): Json<Value>| async move {
                if !authorised(&h) || body["title"].as_str().is_none() {
                    return (StatusCode::UNAUTHORIZED, Json(json!({})));
                }
                (StatusCode::CREATED, Json(json!({ "id": 41, "title": body["title"] })))
            }),
        )
        .route(
            "/api/sync",
            post(|State(app): State<App>, h: HeaderMap, Json(body): Json<Value>| async move {
                if !authorised(&h) {
                    return StatusCode::UNAUTHORIZED;
                }
                if app.broken != Broken::Sync {
                    for change in body["changes"].as_array().into_iter().flatten() {
                        app.tasks.lock().unwrap().insert(change["client_id"].as_str().unwrap().to_owned());
                    }
                }
                StatusCode::OK
            }),
        )
        .route(
            "/api/tasks/{id}",
            get(|State(app): State<App>, h: HeaderMap, UrlPath(id): UrlPath<String>| async move {
                if authorised(&h) && app.tasks.lock().unwrap().contains(&id) {
                    StatusCode::OK
                } else {
                    StatusCode::NOT_FOUND
                }
            }),
        )
        .with_state(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/")
}

/// Runs the script (with `sh`, as a slim image would) and returns (success, stdout, stderr).
async fn smoke(url: &str) -> (bool, String, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/smoke_draft.sh");
    let out = tokio::process::Command::new("sh")
        .arg(script)
        .env("STAND_URL", url)
        .env("SMOKE_TIMEOUT", "5")
        .output()
        .await
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[tokio::test]
async fn the_smoke_script_passes_a_working_stand() {
    let (ok, stdout, stderr) = smoke(&start(Broken::Nothing).await).await;
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("offline->online sync: ok"), "{stdout}");
}

#[tokio::test]
async fn the_smoke_script_stops_at_the_first_failure_with_one_line() {
    for (broken, expected) in [
        (Broken::Login, "smoke: login: HTTP 401"),
        (Broken::Sync, "smoke: sync offline->online: the offline task is not online (HTTP 404)"),
    ] {
        let (ok, _, stderr) = smoke(&start(broken).await).await;
        assert!(!ok);
        assert_eq!(stderr.trim_end(), expected);
    }
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let (ok, _, stderr) = smoke(&format!("http://{closed}")).await;
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("smoke: /api/login: curl: (7)"), "{stderr}");
}
