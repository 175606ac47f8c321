//! The JSON log format (the one `--log-format json` uses) carries the request id, delivery id,
//! project, stand and run ids on every line of a run, including lines logged inside another span
//! (as client libraries do), and on the request's own lines.
//!
//! A test binary of its own, outside tests/it: which callsites a subscriber sees is cached for the
//! whole process (see [`ONE_AT_A_TIME`]), and the tests there log on other threads all the time.

// Only the harness is used here.
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use draftd::pipeline::{Engine, EngineSettings, RunContext, RunEnd, StepError, StepName, StepOutcome, StepRunner};
use draftd::stand::StandId;
use serde_json::{Value, json};
use sqlx::PgPool;
use support::*;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

const T1: &str = "2019-05-15T15:20:33Z";

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Buffer {
    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

/// Logs from inside a span of its own, like helm, kube or octocrab calls do.
struct Chatty;

impl StepRunner for Chatty {
    async fn run(&self, step: StepName, _: &RunContext) -> Result<StepOutcome, StepError> {
        tracing::info_span!("client_call", call = step.as_str()).in_scope(|| tracing::info!("step doing its work"));
        Ok(StepOutcome::done(json!({})))
    }
}

/// The fields of every span the line was logged in, outermost first, merged.
fn span_fields(line: &Value) -> BTreeMap<String, Value> {
    let mut fields = BTreeMap::new();
    for span in line["spans"].as_array().into_iter().flatten() {
        for (k, v) in span.as_object().unwrap() {
            fields.insert(k.clone(), v.clone());
        }
    }
    fields
}

fn in_span(line: &Value, name: &str) -> bool {
    line["spans"].as_array().is_some_and(|spans| spans.iter().any(|s| s["name"] == name))
}

/// The two tests run one at a time: tracing caches whether a callsite is of interest across threads,
/// and a request logged on a thread without a subscriber while the other installs its own could
/// leave the `request` span disabled for the capturing test (seen: one run in four lost its fields).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn every_line_of_a_run_carries_its_ids(pool: PgPool) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let buffer = Buffer::default();
    let _guard = tracing::subscriber::set_default(draftd::telemetry::json_subscriber(
        buffer.clone(),
        EnvFilter::new("info,sqlx=warn"),
    ));
    let app = app(pool.clone());
    let body = serde_json::to_vec(&github_pr("opened", "feature/logs", &sha(1), T1)).unwrap();
    let req = Request::post("/webhooks/github")
        .header("content-type", "application/json")
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", "delivery-logs-1")
        .header("x-hub-signature-256", sign(GITHUB_SECRET, &body))
        .header("x-request-id", "req-logs-1")
        .body(Body::from(body))
        .unwrap();
    let res = {
        use tower::ServiceExt;
        app.clone().oneshot(req).await.unwrap()
    };
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(res.headers()["x-request-id"], "req-logs-1", "the id comes back to the caller");

    let engine = Engine::new(pool.clone(), Arc::new(Chatty), EngineSettings::default(), "logs-worker");
    let (run, end) = engine.run_one().await.unwrap().expect("a run to claim");
    assert_eq!(end, RunEnd::Succeeded);
    let stand: StandId =
        sqlx::query_scalar("select stand_id from runs where run_id = $1").bind(run).fetch_one(&pool).await.unwrap();

    let lines = buffer.lines();
    let run_lines: Vec<&Value> = lines.iter().filter(|l| in_span(l, "run")).collect();
    let messages: Vec<&str> = run_lines.iter().filter_map(|l| l["message"].as_str()).collect();
    for expected in ["run claimed", "step doing its work", "run ended"] {
        assert!(messages.contains(&expected), "{expected:?} not logged in the run: {messages:?}");
    }
    for line in &run_lines {
        let fields = span_fields(line);
        assert_eq!(fields.get("request_id"), Some(&json!("req-logs-1")), "{line}");
        assert_eq!(fields.get("delivery"), Some(&json!("delivery-logs-1")), "{line}");
        assert_eq!(fields.get("project"), Some(&json!("hello-world")), "{line}");
        assert_eq!(fields.get("stand"), Some(&json!(stand)), "{line}");
        assert_eq!(fields.get("run"), Some(&json!(run)), "{line}");
    }
    // Nothing of the run was logged outside its span.
    let stray: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            !in_span(l, "run") && l["message"].as_str().is_some_and(|m| m.contains("step") || m.contains("run "))
        })
        .collect();
    assert!(stray.is_empty(), "lines outside the run's span: {stray:?}");

    // A re-run asked through the API: its run carries the API request's id, and no delivery.
    let req = Request::post(format!("/api/v1/stands/{stand}/runs"))
        .header("authorization", format!("Bearer {API_TOKEN}"))
        .header("x-request-id", "req-api-1")
        .body(Body::empty())
        .unwrap();
    let res = {
        use tower::ServiceExt;
        app.clone().oneshot(req).await.unwrap()
    };
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let (rerun, _) = engine.run_one().await.unwrap().expect("the re-run to claim");
    let claimed = buffer
        .lines()
        .into_iter()
        .find(|l| l["message"] == "run claimed" && span_fields(l).get("run") == Some(&json!(rerun)))
        .expect("the re-run's first line");
    let fields = span_fields(&claimed);
    assert_eq!(fields.get("request_id"), Some(&json!("req-api-1")));
    assert_eq!(fields.get("delivery"), None);

    // The request's own line carries the same request id, the delivery, project and stand.
    let recorded = lines.iter().find(|l| l["message"] == "delivery recorded").expect("the intake line");
    let fields = span_fields(recorded);
    assert_eq!(fields.get("request_id"), Some(&json!("req-logs-1")));
    assert_eq!(fields.get("delivery"), Some(&json!("delivery-logs-1")));
    assert_eq!(fields.get("project"), Some(&json!("hello-world")));
    assert_eq!(fields.get("stand"), Some(&json!(stand)));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn an_unusable_request_id_is_replaced(pool: PgPool) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let app = app(pool);
    for given in ["", "has spaces in it", &"x".repeat(65), "quote\"d"] {
        let mut req = Request::get("/health");
        if !given.is_empty() {
            req = req.header("x-request-id", given);
        }
        let res = {
            use tower::ServiceExt;
            app.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap()
        };
        let id = res.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, given);
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id} is a fresh UUID");
    }
}
