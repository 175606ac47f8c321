//! Waking a sleeping stand by opening its URL, through real nginx configured like ingress-nginx
//! for an Ingress with `custom-http-errors: "503"` and `default-backend` (scripts/nginx-dev.sh), in
//! headless Chromium. While the stand sleeps its app's port is closed (no endpoints), so nginx
//! sends the request to draftd's wake listener; draftd queues a wake, holds the request, shows
//! "waking up", and the page lands on the app once the wake has run (dry-run mode's wake here; the
//! scale itself is tested against the control plane in tests/it/k8s.rs).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use draftd::config::Projects;
use draftd::helm::HelmCli;
use draftd::http::{AppState, wake};
use draftd::pipeline::steps::DryRunSteps;
use draftd::pipeline::{Engine, EngineSettings};
use fantoccini::Locator;
use sqlx::PgPool;

use super::dashboard_browser::{Chromedriver, artifacts, chromedriver, connect};
use crate::support;

const NAMESPACE: &str = "draft-test";
const APP_TEXT: &str = "Hello from the stand";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// nginx on loopback, stopped on drop.
struct Nginx {
    dir: tempfile::TempDir,
    url: String,
}

impl Nginx {
    fn start(app: u16, draftd: u16) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(root().join("scripts/nginx-dev.sh"))
            .args(["start", dir.path().to_str().unwrap()])
            .env("UPSTREAM", format!("127.0.0.1:{app}"))
            .env("BACKEND", format!("127.0.0.1:{draftd}"))
            .env("STAND_NAMESPACE", NAMESPACE)
            .output()
            .unwrap();
        assert!(out.status.success(), "nginx-dev.sh: {}", String::from_utf8_lossy(&out.stderr));
        let exports = String::from_utf8(out.stdout).unwrap();
        let url = exports.split_whitespace().find_map(|w| w.strip_prefix("NGINX_URL=")).unwrap().to_owned();
        Nginx { dir, url }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/nginx-dev.sh"))
            .args(["stop", self.dir.path().to_str().unwrap()])
            .status();
    }
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_sleeping_stands_url_shows_waking_up_then_the_app_in_chromium(pool: PgPool) {
    if std::env::var("DRAFTD_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("skipped: DRAFTD_SKIP_BROWSER=1 (the wake path's browser test did not run)");
        return;
    }
    let driver_path = chromedriver();
    let dir = tempfile::tempdir().unwrap();
    let config = support::dry_run_shop(&dir.path().join("stands"), "[sleep]\nhold = \"1s\"\n");
    sqlx::query(
        "insert into stands (project, branch, namespace, state, sleep_record)
         values ('shop', 'feature/nap', $1, 'sleeping', '[{\"kind\": \"Deployment\", \"name\": \"app\", \"replicas\": 1}]')",
    )
    .bind(NAMESPACE)
    .execute(&pool)
    .await
    .unwrap();

    // draftd's wake listener, and a worker that runs the wake it queues only once the browser has
    // the "waking up" page (the first request's hold, 1 s, ran out): a timer instead would race a
    // cold Chromium's start.
    let state = AppState::new(&config, Projects::resolve_with(&config, |_| Some("x".into())).unwrap(), pool.clone());
    state.set_migrated();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let draftd_port = listener.local_addr().unwrap().port();
    let hold = config.sleep.hold;
    tokio::spawn(async move { axum::serve(listener, wake::router(state, hold)).await });
    let steps = DryRunSteps::new(
        pool.clone(),
        Arc::new(config.clone()),
        Arc::new(HelmCli::from_config(&config.cluster, &root()).unwrap()),
    );
    let engine = Engine::new(pool.clone(), Arc::new(steps), EngineSettings::default(), "wake-test");
    let app_port = free_port();
    let (shown, first_page_shown) = tokio::sync::oneshot::channel::<()>();
    let worker = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let _ = first_page_shown.await;
            while engine.run_one().await.unwrap().is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // The wake ran: the app's pods are back, its port answers.
            let state: String = sqlx::query_scalar("select state from stands").fetch_one(&pool).await.unwrap();
            assert_eq!(state, "active");
            let app = tokio::net::TcpListener::bind(("127.0.0.1", app_port)).await.unwrap();
            axum::serve(app, axum::Router::new().fallback(|| async { APP_TEXT })).await.unwrap();
        })
    };
    let nginx = Nginx::start(app_port, draftd_port);

    let driver = Chromedriver::start(&driver_path, dir.path()).await;
    let client = connect(&driver, &dir.path().join("profile")).await;
    let started = Instant::now();
    client.goto(&format!("{}/orders/42?tab=items", nginx.url)).await.unwrap();
    let first = client.find(Locator::Css("body")).await.unwrap().text().await.unwrap();
    assert!(first.contains("Waking up"), "the first page: {first:?}");
    std::fs::write(artifacts().join("wake-waking-up.png"), client.screenshot().await.unwrap()).unwrap();
    let runs: Vec<(String, String)> = sqlx::query_as("select kind, trigger from runs").fetch_all(&pool).await.unwrap();
    assert_eq!(runs, [("wake".to_owned(), "visit".to_owned())], "one request, one wake");
    let _ = shown.send(());

    // The page refreshes itself (no JavaScript) until the stand answers.
    loop {
        let body = client.find(Locator::Css("body")).await.unwrap().text().await.unwrap_or_default();
        if body.contains(APP_TEXT) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never reached the app; last page: {body:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let url = client.current_url().await.unwrap();
    assert_eq!(url.path(), "/orders/42", "the same URL: {url}");
    assert_eq!(url.query(), Some("tab=items"));
    std::fs::write(artifacts().join("wake-landed.png"), client.screenshot().await.unwrap()).unwrap();
    let runs: i64 = sqlx::query_scalar("select count(*) from runs").fetch_one(&pool).await.unwrap();
    assert_eq!(runs, 1, "the refreshes queued no second wake");
    client.close().await.unwrap();
    worker.abort();
}
