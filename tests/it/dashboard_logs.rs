//! The stand page's logs (`/stands/{id}/logs`) against a real Postgres, with the cluster's answer
//! played by a reader that records what it was asked: a session required, never cached, escaped,
//! bounded as asked, every kind of missing log explained, dry-run and removed stands read nothing.
//! tests/it/k8s_logs.rs reads real logs through the real API server.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use draftd::cluster::ClusterError;
use draftd::cluster::logs::{ContainerLog, LogBounds, LogReader, LogText, LogsFuture, PodLog};
use draftd::config::Config;
use draftd::http::{AppState, router};
use http_body_util::BodyExt;
use sqlx::PgPool;
use tower::ServiceExt;

use crate::support::*;

const T1: &str = "2019-05-15T15:20:33Z";

/// Plays the cluster: answers `pods` (or fails as told) and records each call's namespace and bounds.
#[derive(Clone, Default)]
struct Reader {
    pods: Vec<PodLog>,
    fail: Option<u16>,
    calls: Arc<Mutex<Vec<(String, LogBounds)>>>,
}

impl LogReader for Reader {
    fn pod_logs<'a>(&'a self, namespace: &'a str, bounds: LogBounds) -> LogsFuture<'a> {
        self.calls.lock().unwrap().push((namespace.to_owned(), bounds));
        let answer = match self.fail {
            None => Ok(self.pods.clone()),
            Some(code) => Err(ClusterError::Api(kube::Error::Api(
                kube::core::Status::failure("pods is forbidden", "Forbidden").with_code(code).boxed(),
            ))),
        };
        Box::pin(async move { answer })
    }
}

fn app_with_reader(pool: PgPool, reader: Option<Reader>) -> Router {
    let config = config();
    let mut state = AppState::new(&config, projects(&config), pool);
    if let Some(r) = reader {
        state = state.with_logs(Arc::new(r));
    }
    state.set_migrated();
    router(state)
}

struct Page {
    status: StatusCode,
    header: Box<dyn Fn(&str) -> String>,
    body: String,
}

async fn get(app: &Router, path: &str, cookie: Option<&str>) -> Page {
    let mut req = Request::get(path);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let header =
        Box::new(move |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default());
    Page { status, header, body }
}

async fn login(app: &Router) -> String {
    let req = Request::post("/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={API_TOKEN}")))
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    res.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned()
}

/// A stand from the recorded `pull_request` opened webhook: its id and namespace.
async fn seed(app: &Router, pool: &PgPool, branch: &str) -> (i64, String) {
    let res =
        github(app, "pull_request", &uuid::Uuid::new_v4().to_string(), &github_pr("opened", branch, &sha(1), T1)).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    let id = res.body["stand"].as_i64().unwrap();
    let namespace =
        sqlx::query_scalar("select namespace from stands where stand_id = $1").bind(id).fetch_one(pool).await.unwrap();
    (id, namespace)
}

async fn set_state(pool: &PgPool, id: i64, state: &str) {
    sqlx::query(&format!("update stands set state = '{state}' where stand_id = $1"))
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
}

fn container(name: &str, log: LogText) -> ContainerLog {
    ContainerLog { container: name.into(), init: false, log }
}

fn lines(text: &str) -> LogText {
    LogText::Lines { text: text.into(), previous: false, cut: false }
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_logs_page_needs_a_session_and_reads_nothing_without_one(pool: PgPool) {
    let reader = Reader::default();
    let app = app_with_reader(pool.clone(), Some(reader.clone()));
    let (id, _) = seed(&app, &pool, "feature/logs").await;
    let page = get(&app, &format!("/stands/{id}/logs"), None).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!((page.header)("location"), format!("/login?next=%2Fstands%2F{id}%2Flogs"));
    let forged = get(&app, &format!("/stands/{id}/logs"), Some("draftd_session=1.2.3")).await;
    assert_eq!(forged.status, StatusCode::SEE_OTHER);
    assert!(reader.calls.lock().unwrap().is_empty(), "no read without a session");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn what_the_app_printed_is_escaped_and_never_cached(pool: PgPool) {
    let hostile = "<script>alert('x')</script> & \"quoted\"\n";
    let reader = Reader {
        pods: vec![PodLog {
            pod: "web-<b>-1".into(),
            phase: "Running".into(),
            containers: vec![container("app", lines(hostile))],
        }],
        ..Reader::default()
    };
    let app = app_with_reader(pool.clone(), Some(reader.clone()));
    let (id, namespace) = seed(&app, &pool, "feature/logs").await;
    let cookie = login(&app).await;
    let page = get(&app, &format!("/stands/{id}/logs"), Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!((page.header)("cache-control"), "no-store");
    assert!((page.header)("content-security-policy").contains("default-src 'none'"));
    assert!(!page.body.contains("<script>") && !page.body.contains("<b>"), "{}", page.body);
    assert!(page.body.contains("&lt;script&gt;alert(&#x27;x&#x27;)&lt;&#x2f;script&gt; &amp; &quot;quoted&quot;"));
    assert!(page.body.contains("web-&lt;b&gt;-1") && page.body.contains("(Running)"), "{}", page.body);
    assert_eq!(reader.calls.lock().unwrap().clone(), vec![(namespace, LogBounds::DEFAULT)]);
    // The stand's page leads there; reading happens only when the link is followed.
    let stand = get(&app, &format!("/stands/{id}"), Some(&cookie)).await;
    assert!(stand.body.contains(&format!("href=\"/stands/{id}/logs\"")), "{}", stand.body);
    assert_eq!(reader.calls.lock().unwrap().len(), 1);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_lines_asked_for_bound_the_read_and_nonsense_is_a_400(pool: PgPool) {
    let reader = Reader::default();
    let app = app_with_reader(pool.clone(), Some(reader.clone()));
    let (id, _) = seed(&app, &pool, "feature/logs").await;
    let cookie = login(&app).await;
    let page = get(&app, &format!("/stands/{id}/logs?lines=500"), Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("The last 500 lines of each container, at most 256 KiB each"), "{}", page.body);
    assert!(page.body.contains("No pods in the namespace."), "{}", page.body);
    for bad in ["0", "1001", "-3", "ten", "1e3"] {
        let page = get(&app, &format!("/stands/{id}/logs?lines={bad}"), Some(&cookie)).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "lines={bad}");
        assert!(page.body.contains("lines must be a whole number from 1 to 1000"), "{}", page.body);
    }
    let calls = reader.calls.lock().unwrap().clone();
    assert_eq!(calls.iter().map(|(_, b)| *b).collect::<Vec<_>>(), vec![LogBounds { lines: 500, bytes: 256 * 1024 }]);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn containers_without_lines_say_why(pool: PgPool) {
    let containers = vec![
        ContainerLog { container: "migrate".into(), init: true, log: LogText::Empty },
        container("app", LogText::NotStarted { reason: "ImagePullBackOff".into() }),
        container("crashing", LogText::Lines { text: "panic: boom\n".into(), previous: true, cut: false }),
        container("big", LogText::Lines { text: "a\n".into(), previous: false, cut: true }),
        container("gone", LogText::Unreadable { message: "log target not found for container \"gone\"".into() }),
    ];
    let reader =
        Reader { pods: vec![PodLog { pod: "web-1".into(), phase: "Pending".into(), containers }], ..Reader::default() };
    let app = app_with_reader(pool.clone(), Some(reader));
    let (id, _) = seed(&app, &pool, "feature/logs").await;
    let cookie = login(&app).await;
    let body = get(&app, &format!("/stands/{id}/logs"), Some(&cookie)).await.body;
    for expected in [
        "Init container <code>migrate</code>",
        "No output yet.",
        "No log: the container has not started (ImagePullBackOff).",
        "From the instance before its last restart",
        "panic: boom",
        "Cut at 64 KiB: the newest of these lines are missing.",
        "The log could not be read: log target not found for container &quot;gone&quot;",
    ] {
        assert!(body.contains(expected), "{expected:?} missing from {body}");
    }
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn dry_run_removed_and_sleeping_stands_say_what_there_is(pool: PgPool) {
    // The test configuration runs in dry-run mode: the page says there are no logs.
    let app = app_with_reader(pool.clone(), None);
    let (id, _) = seed(&app, &pool, "feature/logs").await;
    let cookie = login(&app).await;
    let page = get(&app, &format!("/stands/{id}/logs"), Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("pod logs are not available in dry-run mode"), "{}", page.body);

    let reader = Reader::default();
    let app = app_with_reader(pool.clone(), Some(reader.clone()));
    set_state(&pool, id, "sleeping").await;
    let page = get(&app, &format!("/stands/{id}/logs"), Some(&cookie)).await;
    assert!(page.body.contains("The stand sleeps"), "{}", page.body);
    assert_eq!(reader.calls.lock().unwrap().len(), 1, "a sleeping stand's leftover pods are read");
    set_state(&pool, id, "removed").await;
    let page = get(&app, &format!("/stands/{id}/logs"), Some(&cookie)).await;
    assert!(page.body.contains("The stand was removed"), "{}", page.body);
    assert_eq!(reader.calls.lock().unwrap().len(), 1, "nothing is read for a removed stand");
    let stand = get(&app, &format!("/stands/{id}"), Some(&cookie)).await;
    assert!(!stand.body.contains("/logs\""), "no link for a removed stand");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_cluster_that_refuses_is_a_502_page_and_an_unknown_stand_a_404(pool: PgPool) {
    let reader = Reader { fail: Some(403), ..Reader::default() };
    let app = app_with_reader(pool.clone(), Some(reader));
    let (id, _) = seed(&app, &pool, "feature/logs").await;
    let cookie = login(&app).await;
    let page = get(&app, &format!("/stands/{id}/logs"), Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY, "{}", page.body);
    assert!(page.body.contains("<code>kubernetes_forbidden</code>") && page.body.contains("pods is forbidden"));
    assert_eq!((page.header)("cache-control"), "no-store");
    let missing = get(&app, "/stands/999999/logs", Some(&cookie)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[test]
fn the_test_configuration_is_dry_run() {
    // dry_run_removed_and_sleeping_stands_say_what_there_is relies on it.
    let config: Config = config();
    assert_eq!(config.cluster.mode, draftd::config::ClusterMode::DryRun);
}
