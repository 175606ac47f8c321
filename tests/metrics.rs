//! `/metrics` against a real Postgres: the text parses as Prometheus exposition, and the figures move
//! when a webhook is delivered, refused, and when a worker drives the run it queued.
//!
//! The recorder is process-wide, so counters are compared before and after, and every test that moves
//! them holds [`RECORDER`]: tests run side by side would otherwise count each other's steps. For the
//! same reason this is a test binary of its own, outside tests/it: every router built there moves
//! this recorder too.

// Only the harness and the GitHub fake are used here.
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use draftd::pipeline::{Engine, EngineSettings, RunContext, RunEnd, StepError, StepName, StepOutcome, StepRunner};
use serde_json::json;
use sqlx::PgPool;
use support::*;

const T1: &str = "2019-05-15T15:20:33Z";

/// One test at a time reads and moves the process-wide recorder.
static RECORDER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every step succeeds at once (verify included, so the stand URL counts as working).
struct AllOk;

impl StepRunner for AllOk {
    async fn run(&self, step: StepName, _: &RunContext) -> Result<StepOutcome, StepError> {
        Ok(StepOutcome::done(json!({ "step": step })))
    }
}

/// One parsed sample: its name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus text exposition strictly enough to catch a malformed line.
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim_start();
            assert!(comment.starts_with("HELP ") || comment.starts_with("TYPE "), "unexpected comment: {line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let mut labels = BTreeMap::new();
                for pair in split_labels(body) {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("bad label {pair} in {line}"));
                    let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).expect("quoted label value");
                    labels.insert(k.to_owned(), v.to_owned());
                }
                (name.to_owned(), labels)
            }
        };
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "bad metric name {name:?}");
        samples.push(Sample { name, labels, value });
    }
    samples
}

/// Splits `a="x",b="y,z"` at the commas between pairs, not those inside quoted values.
fn split_labels(body: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < body.len() {
        out.push(&body[start..]);
    }
    out
}

/// The sum over the series of `name` whose labels include all of `want`; 0 when there are none.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && want.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

async fn scrape(app: &axum::Router) -> Vec<Sample> {
    let res = send_raw(app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(res.0, StatusCode::OK);
    assert!(res.1.starts_with("text/plain; version=0.0.4"), "content type {}", res.1);
    parse(&res.2)
}

async fn send_raw(app: &axum::Router, req: Request<Body>) -> (StatusCode, String, String) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let content_type = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, content_type, String::from_utf8(body.to_vec()).unwrap())
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn metrics_move_with_deliveries_and_runs(pool: PgPool) {
    let _recorder = RECORDER.lock().await;
    let app = app(pool.clone());
    let before = scrape(&app).await;
    for gauge in ["draftd_queue_depth", "draftd_queue_oldest_age_seconds", "draftd_stands_active"] {
        assert!(before.iter().any(|s| s.name == gauge), "{gauge} missing");
    }
    assert_eq!(value(&before, "draftd_queue_depth", &[]), 0.0);
    assert_eq!(value(&before, "draftd_stands", &[("state", "active")]), 0.0);
    assert_eq!(value(&before, "draftd_reaper_last_sweep_timestamp_seconds", &[]), 0.0);

    // A delivery that queues a run.
    let queued = [("forge", "github"), ("event", "pull_request"), ("outcome", "queued")];
    let res =
        github(&app, "pull_request", &uuid::Uuid::new_v4().to_string(), &github_pr("opened", "feature/m", &sha(1), T1))
            .await;
    assert_eq!(res.status, StatusCode::ACCEPTED);
    let delivered = scrape(&app).await;
    let delta =
        |after: &[Sample], name: &str, want: &[(&str, &str)]| value(after, name, want) - value(&before, name, want);
    assert_eq!(delta(&delivered, "draftd_webhook_deliveries_total", &queued), 1.0);
    assert_eq!(delta(&delivered, "draftd_intake_duration_seconds_count", &[("forge", "github")]), 1.0);
    assert_eq!(value(&delivered, "draftd_queue_depth", &[]), 1.0);
    assert!(value(&delivered, "draftd_queue_oldest_age_seconds", &[]) >= 0.0);
    assert_eq!(value(&delivered, "draftd_stands", &[("state", "active")]), 1.0);
    assert_eq!(value(&delivered, "draftd_stands_active", &[]), 1.0);
    // Intake answers in milliseconds: the observation lands in a sub-second bucket.
    assert_eq!(
        delta(&delivered, "draftd_intake_duration_seconds_bucket", &[("forge", "github"), ("le", "1")]),
        1.0,
        "intake took over a second"
    );

    // A refused delivery: counted, without its (unverified) event name, and as an error.
    let forged = github_raw(
        &app,
        "pull_request",
        "d-forged",
        serde_json::to_vec(&github_pr("opened", "feature/x", &sha(2), T1)).unwrap(),
        Some(&sign("not-the-secret", b"whatever")),
        "application/json",
    )
    .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    let refused = scrape(&app).await;
    let refused_delivery = [("forge", "github"), ("event", "unknown"), ("outcome", "refused")];
    assert_eq!(
        value(&refused, "draftd_webhook_deliveries_total", &refused_delivery)
            - value(&delivered, "draftd_webhook_deliveries_total", &refused_delivery),
        1.0
    );
    let unauthorized = [("source", "http"), ("metric_label", "unauthorized")];
    assert_eq!(
        value(&refused, "draftd_errors_total", &unauthorized) - value(&delivered, "draftd_errors_total", &unauthorized),
        1.0
    );

    // A worker drives the run.
    let settings = EngineSettings { poll: Duration::from_millis(20), ..EngineSettings::default() };
    let engine = Arc::new(Engine::new(pool.clone(), Arc::new(AllOk), settings, "metrics-worker"));
    let (_, end) = engine.run_one().await.unwrap().expect("a run to claim");
    assert_eq!(end, RunEnd::Succeeded);
    let ran = scrape(&app).await;
    let deploys = [("kind", "deploy"), ("trigger", "opened"), ("outcome", "succeeded")];
    assert_eq!(delta(&ran, "draftd_runs_total", &deploys), 1.0);
    for step in ["namespace", "database", "deploy", "verify", "smoke", "report"] {
        let want = [("step", step), ("outcome", "succeeded")];
        assert_eq!(delta(&ran, "draftd_step_duration_seconds_count", &want), 1.0, "step {step}");
    }
    assert_eq!(delta(&ran, "draftd_time_to_url_seconds_count", &[("project", "hello-world")]), 1.0);
    assert!(delta(&ran, "draftd_time_to_url_seconds_sum", &[("project", "hello-world")]) >= 0.0);
    assert_eq!(value(&ran, "draftd_queue_depth", &[]), 0.0);
    assert_eq!(value(&ran, "draftd_queue_oldest_age_seconds", &[]), 0.0);

    // A teardown (the PR is closed) moves the state gauges and, once run, the teardown counter.
    let closed = github(
        &app,
        "pull_request",
        &uuid::Uuid::new_v4().to_string(),
        &github_pr("closed", "feature/m", &sha(1), "2019-05-15T16:20:33Z"),
    )
    .await;
    assert_eq!(closed.status, StatusCode::ACCEPTED);
    let closing = scrape(&app).await;
    assert_eq!(value(&closing, "draftd_stands", &[("state", "closing")]), 1.0);
    assert_eq!(value(&closing, "draftd_stands_active", &[]), 0.0);
    let (_, end) = engine.run_one().await.unwrap().expect("the teardown to claim");
    assert_eq!(end, RunEnd::Succeeded);
    let torn = scrape(&app).await;
    assert_eq!(delta(&torn, "draftd_teardowns_total", &[("reason", "closed"), ("outcome", "succeeded")]), 1.0);
    assert_eq!(value(&torn, "draftd_stands_stuck_closing", &[]), 0.0);
}

#[test]
fn the_parser_catches_malformed_lines() {
    let ok = parse("# HELP a_total A\n# TYPE a_total counter\na_total{x=\"1,2\",y=\"z\"} 3\nb 4.5\n");
    assert_eq!(ok.len(), 2);
    assert_eq!(ok[0].labels["x"], "1,2");
    assert!(std::panic::catch_unwind(|| parse("a_total{x=\"1\" 3\n")).is_err());
    assert!(std::panic::catch_unwind(|| parse("a total\n")).is_err());
}

/// Forge calls by outcome and the rate-limit counter, through the real GitHub client and the fake.
/// Read from the recorder directly; resync's forge calls would count here too, hence the lock.
#[tokio::test]
async fn forge_calls_and_rate_limit_waits_are_counted() {
    let _recorder = RECORDER.lock().await;
    use draftd::config::ForgeKind;
    use support::forge_fake::*;
    let handle = draftd::metrics::install();
    let before = parse(&handle.render());
    let fake = Fake::start(ForgeKind::Github).await;
    let c = client(ForgeKind::Github, &fake.url(), TOKEN);
    fake.seed_pull(Pull::open(REPO, 1));
    use draftd::forge::client::ForgeClient;
    c.pull_request(REPO, 1).await.unwrap();
    fake.script(&[Mode::RateLimited(7)]);
    c.pull_request(REPO, 1).await.unwrap_err();
    // Held back by the client: not sent, still counted.
    c.pull_request(REPO, 1).await.unwrap_err();
    let after = parse(&handle.render());
    let delta = |name: &str, want: &[(&str, &str)]| value(&after, name, want) - value(&before, name, want);
    let github = ("forge", "github");
    assert_eq!(delta("draftd_forge_api_calls_total", &[github, ("outcome", "ok")]), 1.0);
    assert_eq!(delta("draftd_forge_api_calls_total", &[github, ("outcome", "rate_limited")]), 1.0);
    assert_eq!(delta("draftd_forge_api_calls_total", &[github, ("outcome", "held")]), 1.0);
    assert_eq!(delta("draftd_forge_rate_limit_waits_total", &[github]), 2.0);
    assert_eq!(delta("draftd_errors_total", &[("source", "forge"), ("metric_label", "rate_limited")]), 1.0);
}

/// A reaper sweep is counted with its outcome and duration, and the last sweep's time is a gauge.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn reaper_sweeps_are_counted(pool: PgPool) {
    let _recorder = RECORDER.lock().await;
    let handle = draftd::metrics::install();
    let before = parse(&handle.render());
    let reaper: draftd::reaper::Reaper = draftd::reaper::Reaper::new(pool.clone(), Arc::new(config()), "metrics-test");
    assert!(matches!(reaper.sweep(chrono::Utc::now()).await.unwrap(), draftd::reaper::SweepOutcome::Swept(_)));
    let after = parse(&handle.render());
    let delta = |name: &str, want: &[(&str, &str)]| value(&after, name, want) - value(&before, name, want);
    assert_eq!(delta("draftd_reaper_sweeps_total", &[("outcome", "ok")]), 1.0);
    assert_eq!(delta("draftd_reaper_sweep_duration_seconds_count", &[]), 1.0);
    let snapshot = draftd::store::metrics::snapshot(&pool, 3).await.unwrap();
    let last = snapshot.last_sweep.expect("the sweep's end");
    assert!((chrono::Utc::now().timestamp() as f64 - last).abs() < 60.0);
}

/// A teardown that resync queued (the close webhook was missed; GitHub does not redeliver by itself)
/// is counted under reason `resync`, while the stand keeps the forge's word for why it went.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_teardown_found_by_resync_is_counted_as_resync(pool: PgPool) {
    let _recorder = RECORDER.lock().await;
    use draftd::config::ForgeKind;
    use draftd::reaper::{Reaper, SweepOutcome};
    use support::forge_fake::{Fake, Pull, TOKEN, client};
    let app = app(pool.clone());
    let branch = "feature/missed-close";
    let opened =
        github(&app, "pull_request", &uuid::Uuid::new_v4().to_string(), &github_pr("opened", branch, &sha(1), T1))
            .await;
    assert_eq!(opened.status, StatusCode::ACCEPTED, "{}", opened.body);
    let settings = EngineSettings { poll: Duration::from_millis(20), ..EngineSettings::default() };
    let engine = Engine::new(pool.clone(), Arc::new(AllOk), settings, "metrics-worker");
    assert_eq!(engine.run_one().await.unwrap().expect("the deploy").1, RunEnd::Succeeded);

    // The forge lists no open PR, and looked up, PR #2 is closed.
    let fake = Fake::start(ForgeKind::Github).await;
    // The recorded payload's PR.
    let number = 2;
    fake.seed_pull(Pull {
        state: "closed".into(),
        branch: branch.into(),
        sha: sha(1),
        ..Pull::open("Codertocat/Hello-World", number)
    });
    let before = scrape(&app).await;
    let reaper: Reaper = Reaper::new(pool.clone(), Arc::new(config()), "metrics-resync").with_forges(vec![client(
        ForgeKind::Github,
        &fake.url(),
        TOKEN,
    )]);
    let SweepOutcome::Swept(sweep) = reaper.sweep(chrono::Utc::now()).await.unwrap() else { panic!("lock held") };
    let teardowns: usize = sweep.resync.iter().map(|r| r.teardowns.len()).sum();
    assert_eq!(teardowns, 1, "{:?}", sweep.resync);
    assert_eq!(engine.run_one().await.unwrap().expect("the teardown").1, RunEnd::Succeeded);
    let after = scrape(&app).await;
    let delta = |name: &str, want: &[(&str, &str)]| value(&after, name, want) - value(&before, name, want);
    assert_eq!(delta("draftd_teardowns_total", &[("reason", "resync"), ("outcome", "succeeded")]), 1.0);
    let (trigger, reason): (String, Option<String>) = sqlx::query_as(
        "select r.trigger, s.state_reason from runs r join stands s using (stand_id)
         where s.branch = $1 and r.kind = 'teardown'",
    )
    .bind(branch)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((trigger.as_str(), reason.as_deref()), ("resync", Some("closed")));
}

/// `draftd_stand_health` counts the awake stands the health watch looks after, per project and
/// health, at scrape time; a project whose stands all went keeps its series, at zero.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn stand_health_is_counted_per_project_and_health_at_scrape_time(pool: PgPool) {
    let _recorder = RECORDER.lock().await;
    let app = app(pool.clone());
    sqlx::query(
        "insert into stands (project, branch, namespace, health, next_probe_at) values
            ('hello-world', 'a', 'draft-a', 'healthy', now()), ('hello-world', 'b', 'draft-b', 'degraded', now()),
            ('hello-world', 'c', 'draft-c', 'degraded', null), ('gitlab-test', 'd', 'draft-d', 'healthy', now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    let samples = scrape(&app).await;
    let health = |project: &str, health: &str| {
        value(&samples, "draftd_stand_health", &[("project", project), ("health", health)])
    };
    assert_eq!(health("hello-world", "healthy"), 1.0);
    assert_eq!(health("hello-world", "degraded"), 1.0, "a stand never verified is not watched");
    assert_eq!((health("gitlab-test", "healthy"), health("gitlab-test", "degraded")), (1.0, 0.0));
    sqlx::query("update stands set state = 'sleeping' where project = 'gitlab-test'").execute(&pool).await.unwrap();
    let samples = scrape(&app).await;
    assert_eq!(value(&samples, "draftd_stand_health", &[("project", "gitlab-test"), ("health", "healthy")]), 0.0);
}
