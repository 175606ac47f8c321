//! Delivery figures (`store::summary`, `GET /api/v1/metrics/summary`) against hand-computed values.
//!
//! Runs, steps and deliveries are seeded straight into the database at fixed times, so every figure
//! can be worked out on paper; the working is in the comments next to the expected values.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, Utc};
use draftd::store::summary::summary;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::*;
use draftd::stand::{RunId, StandId};

const DAY: Duration = Duration::from_secs(86_400);

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

async fn new_stand(pool: &PgPool, project: &str, branch: &str) -> StandId {
    sqlx::query_scalar("insert into stands (project, branch, namespace) values ($1, $2, $3) returning stand_id")
        .bind(project)
        .bind(branch)
        .bind(format!("draft-{project}-{branch}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A run of `stand` with its steps, numbered after the stand's last run. Queued a quarter of an
/// hour before it finished (or now, when it has not), so queueing times never matter to a figure.
async fn run(
    pool: &PgPool,
    stand: StandId,
    kind: &str,
    state: &str,
    finished: Option<DateTime<Utc>>,
    steps: &[(&str, &str)],
) -> RunId {
    let run: RunId = sqlx::query_scalar(
        "insert into runs (stand_id, number, kind, trigger, automatic, epoch, state, queued_at, started_at, finished_at)
         values ($1, (select coalesce(max(number), 0) + 1 from runs where stand_id = $1), $2, 'pushed', false, 0, $3,
                 coalesce($4 - interval '15 minutes', now()), $4 - interval '10 minutes', $4)
         returning run_id",
    )
    .bind(stand)
    .bind(kind)
    .bind(state)
    .bind(finished)
    .fetch_one(pool)
    .await
    .unwrap();
    for (name, step_state) in steps {
        sqlx::query("insert into steps (run_id, name, state, attempt, finished_at) values ($1, $2, $3, 1, $4)")
            .bind(run)
            .bind(name)
            .bind(step_state)
            .bind(finished)
            .execute(pool)
            .await
            .unwrap();
    }
    run
}

/// A forge delivery that queued `run`.
async fn deliver(pool: &PgPool, run: RunId, received: DateTime<Utc>) {
    sqlx::query(
        "insert into deliveries (forge, delivery_id, project, event, body_sha256, normalized, outcome, run_id, received_at)
         values ('github', $1, 'any', 'pull_request', 'x', '{}', 'queued', $2, $3)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(run)
    .bind(received)
    .execute(pool)
    .await
    .unwrap();
}

const PIPELINE: [&str; 9] =
    ["namespace", "database", "secrets", "image", "deploy", "migrate", "verify", "smoke", "report"];

/// Every step succeeded.
fn green() -> Vec<(&'static str, &'static str)> {
    PIPELINE.iter().map(|s| (*s, "succeeded")).collect()
}

/// The steps before `step` succeeded, `step` failed; a failed verify is rolled back; the report
/// always goes out.
fn failed_at(step: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut steps: Vec<_> = PIPELINE.iter().take_while(|s| **s != step).map(|s| (*s, "succeeded")).collect();
    steps.push((step, "failed"));
    if step == "verify" {
        steps.push(("rollback", "succeeded"));
    }
    steps.push(("report", "succeeded"));
    steps
}

/// `actual` equals `expected`, numbers within 1e-9 (percentiles are interpolated in floating point).
fn assert_close(actual: &Value, expected: &Value) {
    fn close(a: &Value, e: &Value) -> bool {
        match (a, e) {
            (Value::Number(a), Value::Number(e)) => (a.as_f64().unwrap() - e.as_f64().unwrap()).abs() < 1e-9,
            (Value::Array(a), Value::Array(e)) => a.len() == e.len() && a.iter().zip(e).all(|(a, e)| close(a, e)),
            (Value::Object(a), Value::Object(e)) => {
                a.len() == e.len() && a.iter().all(|(k, v)| e.get(k).is_some_and(|ev| close(v, ev)))
            }
            _ => a == e,
        }
    }
    assert!(
        close(actual, expected),
        "actual:\n{}\nexpected:\n{}",
        serde_json::to_string_pretty(actual).unwrap(),
        serde_json::to_string_pretty(expected).unwrap()
    );
}

/// The window ends at NOW; with the default week it starts 2026-02-22T00:00:00Z.
const NOW: &str = "2026-03-01T00:00:00Z";

/// Three projects:
///
/// shop, stand a: green before the window; in it, verify fails, smoke fails, then green (a streak of
///   two failures), then a cancelled and a superseded deploy, and an extend run.
/// shop, stand b: an image failure before the window starts a streak that a verify failure extends
///   into it and a manual green (no delivery) ends in it; then an image failure, and a green exactly
///   at the window's end (outside: the window is half-open).
/// shop, stand c: green exactly at the window's start (inside); then a helm failure starts a streak,
///   smoke fails, green; a running deploy and a rejected one.
/// blog, stand d: a streak before the window, restored before it too; in it, green then verify fails.
/// quiet, stand e: one green deploy a month and a half ago and its teardown.
async fn seed(pool: &PgPool) {
    let a = new_stand(pool, "shop", "a").await;
    let a1 = run(pool, a, "deploy", "succeeded", Some(at("2026-02-20T12:00:00Z")), &green()).await;
    deliver(pool, a1, at("2026-02-20T11:50:00Z")).await;
    let a2 = run(pool, a, "deploy", "failed", Some(at("2026-02-23T10:00:00Z")), &failed_at("verify")).await;
    deliver(pool, a2, at("2026-02-23T09:50:00Z")).await;
    run(pool, a, "deploy", "failed", Some(at("2026-02-23T11:00:00Z")), &failed_at("smoke")).await;
    let a4 = run(pool, a, "deploy", "succeeded", Some(at("2026-02-23T12:00:00Z")), &green()).await;
    // Two deliveries queued it (say, a push and a label); lead time counts from the first.
    deliver(pool, a4, at("2026-02-23T11:45:00Z")).await;
    deliver(pool, a4, at("2026-02-23T11:40:00Z")).await;
    run(pool, a, "deploy", "cancelled", Some(at("2026-02-24T08:00:00Z")), &failed_at("verify")).await;
    run(pool, a, "deploy", "superseded", Some(at("2026-02-24T09:00:00Z")), &failed_at("smoke")).await;
    run(pool, a, "extend", "succeeded", Some(at("2026-02-24T10:00:00Z")), &[("extend", "succeeded")]).await;

    let b = new_stand(pool, "shop", "b").await;
    run(pool, b, "deploy", "failed", Some(at("2026-02-21T22:00:00Z")), &failed_at("image")).await;
    run(pool, b, "deploy", "failed", Some(at("2026-02-22T02:00:00Z")), &failed_at("verify")).await;
    run(pool, b, "deploy", "succeeded", Some(at("2026-02-22T04:00:00Z")), &green()).await;
    run(pool, b, "deploy", "failed", Some(at("2026-02-26T09:00:00Z")), &failed_at("image")).await;
    let b5 = run(pool, b, "deploy", "succeeded", Some(at(NOW)), &green()).await;
    deliver(pool, b5, at("2026-02-28T23:00:00Z")).await;

    let c = new_stand(pool, "shop", "c").await;
    let c1 = run(pool, c, "deploy", "succeeded", Some(at("2026-02-22T00:00:00Z")), &green()).await;
    deliver(pool, c1, at("2026-02-21T23:30:00Z")).await;
    run(pool, c, "deploy", "failed", Some(at("2026-02-25T08:00:00Z")), &failed_at("deploy")).await;
    run(pool, c, "deploy", "failed", Some(at("2026-02-25T09:00:00Z")), &failed_at("smoke")).await;
    let c4 = run(pool, c, "deploy", "succeeded", Some(at("2026-02-25T10:00:00Z")), &green()).await;
    deliver(pool, c4, at("2026-02-25T09:55:00Z")).await;
    run(pool, c, "deploy", "running", None, &[("namespace", "succeeded"), ("image", "running")]).await;
    run(pool, c, "deploy", "rejected", Some(at("2026-02-26T00:00:00Z")), &[]).await;

    let d = new_stand(pool, "blog", "d").await;
    run(pool, d, "deploy", "failed", Some(at("2026-02-10T10:00:00Z")), &failed_at("verify")).await;
    run(pool, d, "deploy", "succeeded", Some(at("2026-02-11T10:00:00Z")), &green()).await;
    let d3 = run(pool, d, "deploy", "succeeded", Some(at("2026-02-27T10:00:00Z")), &green()).await;
    deliver(pool, d3, at("2026-02-27T09:00:00Z")).await;
    run(pool, d, "deploy", "failed", Some(at("2026-02-28T10:00:00Z")), &failed_at("verify")).await;

    let e = new_stand(pool, "quiet", "e").await;
    run(pool, e, "deploy", "succeeded", Some(at("2026-01-15T10:00:00Z")), &green()).await;
    run(pool, e, "teardown", "succeeded", Some(at("2026-01-17T10:00:00Z")), &[("uninstall", "succeeded")]).await;
}

/// The hand-computed figures of blog and quiet over the default week; shop's depend on the test.
fn blog_week() -> Value {
    // Finished in the window: d3 green (02-27), d4 verify failure (02-28): 2, 1 green.
    // d4 is a change failure: 1/2. d1→d2 is a streak restored before the window; d3 follows a green,
    // and d4's streak is not over: no restores. Lead time: d3, 10:00 − 09:00 = 3600 s.
    json!({
        "project": "blog",
        "deploys": 1,
        "deploy_frequency_per_day": 1.0 / 7.0,
        "finished_deploys": 2,
        "failed_changes": 1,
        "change_failure_rate": 0.5,
        "restores": 0,
        "mean_time_to_restore_seconds": null,
        "lead_time_seconds": { "mean": 3600.0, "p50": 3600.0, "p95": 3600.0, "count": 1 },
    "cost": null,
    })
}

fn quiet() -> Value {
    // Nothing finished in the window (and a teardown never counts): zeros, and null for every ratio.
    json!({
        "project": "quiet",
        "deploys": 0,
        "deploy_frequency_per_day": 0.0,
        "finished_deploys": 0,
        "failed_changes": 0,
        "change_failure_rate": null,
        "restores": 0,
        "mean_time_to_restore_seconds": null,
        "lead_time_seconds": null,
    "cost": null,
    })
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn figures_per_project_over_a_week(pool: PgPool) {
    seed(&pool).await;
    let figures = summary(&pool, None, 7 * DAY, at(NOW), &prices()).await.unwrap();
    let figures = serde_json::to_value(figures).unwrap();
    assert_eq!(
        figures["window"],
        json!({ "from": "2026-02-22T00:00:00Z", "to": "2026-03-01T00:00:00Z", "seconds": 604_800 })
    );
    // shop, in [02-22 00:00, 03-01 00:00):
    //   finished: a2 F, a3 F, a4 S, b2 F, b3 S, b4 F, c1 S (at the start: in), c2 F, c3 F, c4 S = 10;
    //     a1 and b1 are before, b5 is at the end (out); cancelled, superseded, rejected, running and
    //     the extend run are not finished deploys.
    //   deploys: a4, b3, c1, c4 = 4, over 7 days.
    //   change failures: a2 (verify), a3 (smoke), b2 (verify), c3 (smoke) = 4; b4 (image) and c2
    //     (deploy) failed for other reasons. 4/10.
    //   restores: a2 starts a streak (a1 was green), a3 continues it, a4 ends it: 12:00 − 10:00 = 7200 s.
    //     b1 starts one (the stand's first deploy), b2 continues, b3 ends it in the window:
    //     02-22 04:00 − 02-21 22:00 = 21600 s. c2 starts one (c1 green), c3 continues, c4 ends it:
    //     10:00 − 08:00 = 7200 s. b4 starts one that b5 ends, outside the window. 3 restores,
    //     mean (7200 + 21600 + 7200) / 3 = 12000 s.
    //   lead time: a4 from its first delivery 11:40 → 12:00 = 1200 s; c1 23:30 → 00:00 = 1800 s;
    //     c4 09:55 → 10:00 = 300 s; b3 was manual (no delivery). Sorted 300, 1200, 1800: mean 1100,
    //     p50 = 1200, p95 at rank 0.95 × 2 = 1.9: 1200 + 0.9 × (1800 − 1200) = 1740.
    let shop = json!({
        "project": "shop",
        "deploys": 4,
        "deploy_frequency_per_day": 4.0 / 7.0,
        "finished_deploys": 10,
        "failed_changes": 4,
        "change_failure_rate": 0.4,
        "restores": 3,
        "mean_time_to_restore_seconds": 12000.0,
        "lead_time_seconds": { "mean": 1100.0, "p50": 1200.0, "p95": 1740.0, "count": 3 },
    "cost": null,
    });
    // Sorted by project.
    assert_close(&figures["projects"], &json!([blog_week(), quiet(), shop]));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_longer_window_takes_in_older_runs(pool: PgPool) {
    seed(&pool).await;
    let figures = summary(&pool, Some("shop"), 30 * DAY, at(NOW), &prices()).await.unwrap();
    assert_eq!(figures.window.from, at("2026-01-30T00:00:00Z"));
    // shop over [01-30, 03-01): the week's figures plus a1 (green, delivered 11:50 → 12:00 = 600 s)
    // and b1 (image failure).
    //   finished 12, deploys 5 over 30 days; change failures still 4 (b1 is an image failure): 4/12.
    //   restores unchanged: a1 has no failure before it, and b1's streak still ends at b3. 3, 12000 s.
    //   lead time: 300, 600, 1200, 1800: mean 975; p50 at rank 1.5: 600 + 0.5 × 600 = 900;
    //     p95 at rank 0.95 × 3 = 2.85: 1200 + 0.85 × 600 = 1710.
    assert_close(
        &serde_json::to_value(&figures.projects).unwrap(),
        &json!([{
            "project": "shop",
            "deploys": 5,
            "deploy_frequency_per_day": 5.0 / 30.0,
            "finished_deploys": 12,
            "failed_changes": 4,
            "change_failure_rate": 4.0 / 12.0,
            "restores": 3,
            "mean_time_to_restore_seconds": 12000.0,
            "lead_time_seconds": { "mean": 975.0, "p50": 900.0, "p95": 1710.0, "count": 4 },
        "cost": null,
        }]),
    );
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_restore_counts_in_the_window_its_green_finished_in(pool: PgPool) {
    seed(&pool).await;
    // A window of one second just past b5: b4 (image failure, 02-26 09:00) is the streak b5 ends at
    // 03-01 00:00, so 2 days 15 hours = 226800 s. b5 is the one deploy, and its lead time is
    // 03-01 00:00 − 02-28 23:00 = 3600 s.
    let figures =
        summary(&pool, Some("shop"), Duration::from_secs(1), at("2026-03-01T00:00:01Z"), &prices()).await.unwrap();
    assert_close(
        &serde_json::to_value(&figures.projects).unwrap(),
        &json!([{
            "project": "shop",
            "deploys": 1,
            "deploy_frequency_per_day": 86_400.0,
            "finished_deploys": 1,
            "failed_changes": 0,
            "change_failure_rate": 0.0,
            "restores": 1,
            "mean_time_to_restore_seconds": 226_800.0,
            "lead_time_seconds": { "mean": 3600.0, "p50": 3600.0, "p95": 3600.0, "count": 1 },
        "cost": null,
        }]),
    );
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_project_filter_narrows_to_that_project(pool: PgPool) {
    seed(&pool).await;
    let quiet_only = summary(&pool, Some("quiet"), 7 * DAY, at(NOW), &prices()).await.unwrap();
    assert_close(&serde_json::to_value(&quiet_only.projects).unwrap(), &json!([quiet()]));
    // Only projects that have stands have figures; an unknown name is not an error, just empty.
    let unknown = summary(&pool, Some("nope"), 7 * DAY, at(NOW), &prices()).await.unwrap();
    assert_eq!(unknown.projects, vec![]);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn no_stands_no_projects(pool: PgPool) {
    let figures = summary(&pool, None, 7 * DAY, at(NOW), &prices()).await.unwrap();
    assert_eq!(figures.projects, vec![]);
}

fn get(path: &str, token: Option<&str>) -> Request<Body> {
    let mut req = Request::get(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req.body(Body::empty()).unwrap()
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_route_wants_the_token(pool: PgPool) {
    let app = app(pool);
    for token in [None, Some("wrong"), Some(GITHUB_SECRET)] {
        let res = send(&app, get("/api/v1/metrics/summary", token)).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(res.body["error"]["code"], json!("unauthorized"));
    }
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_bad_window_is_refused_with_its_field(pool: PgPool) {
    let app = app(pool);
    for window in ["soon", "0s", "91d", "-1d", "7"] {
        let res = send(&app, get(&format!("/api/v1/metrics/summary?window={window}"), Some(API_TOKEN))).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{window}: {}", res.body);
        assert_eq!(res.body["error"]["code"], json!("bad_request"), "{window}");
        assert_eq!(res.body["error"]["field"], json!("window"), "{window}");
    }
    let longest = send(&app, get("/api/v1/metrics/summary?window=90d", Some(API_TOKEN))).await;
    assert_eq!(longest.status, StatusCode::OK, "{}", longest.body);
    assert_eq!(longest.body["window"]["seconds"], json!(90 * 86_400));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn the_route_reads_the_last_window_and_filters_by_project(pool: PgPool) {
    let now = Utc::now();
    let hour = chrono::Duration::hours(1);
    let shop = new_stand(&pool, "shop", "a").await;
    // Verify fails two hours ago, a green delivered 10 minutes before it ends an hour ago: one change
    // failure of two finished deploys, a restore of 3600 s, a lead time of 600 s.
    run(&pool, shop, "deploy", "failed", Some(now - hour * 2), &failed_at("verify")).await;
    let green_run = run(&pool, shop, "deploy", "succeeded", Some(now - hour), &green()).await;
    deliver(&pool, green_run, now - hour - chrono::Duration::minutes(10)).await;
    let blog = new_stand(&pool, "blog", "d").await;
    run(&pool, blog, "deploy", "succeeded", Some(now - hour * 3), &green()).await;
    let app = app(pool);

    let res = send(&app, get("/api/v1/metrics/summary?project=shop", Some(API_TOKEN))).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    let from: DateTime<Utc> = serde_json::from_value(res.body["window"]["from"].clone()).unwrap();
    let to: DateTime<Utc> = serde_json::from_value(res.body["window"]["to"].clone()).unwrap();
    assert_eq!((to - from, res.body["window"]["seconds"].clone()), (chrono::Duration::days(7), json!(604_800)));
    assert!((to - now).num_seconds().abs() <= 5, "the window ends now: {to} vs {now}");
    assert_close(
        &res.body["projects"],
        &json!([{
            "project": "shop",
            "deploys": 1,
            "deploy_frequency_per_day": 1.0 / 7.0,
            "finished_deploys": 2,
            "failed_changes": 1,
            "change_failure_rate": 0.5,
            "restores": 1,
            "mean_time_to_restore_seconds": 3600.0,
            "lead_time_seconds": { "mean": 600.0, "p50": 600.0, "p95": 600.0, "count": 1 },
        "cost": null,
        }]),
    );

    let all = send(&app, get("/api/v1/metrics/summary?window=36h", Some(API_TOKEN))).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    assert_eq!(all.body["window"]["seconds"], json!(36 * 3600));
    let names: Vec<&str> =
        all.body["projects"].as_array().unwrap().iter().map(|p| p["project"].as_str().unwrap()).collect();
    assert_eq!(names, ["blog", "shop"]);
}

fn prices() -> draftd::config::CostConfig {
    draftd::config::CostConfig { cpu_hour: 1.0, memory_gib_hour: 0.5, storage_gib_hour: 0.1, currency: "EUR".into() }
}

async fn awake(
    pool: &PgPool,
    stand: StandId,
    millis: i64,
    gib: i64,
    from: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
) {
    sqlx::query(
        "insert into stand_usage (stand_id, cpu_millis, memory_bytes, started_at, ended_at) values ($1, $2, $3, $4, $5)",
    )
    .bind(stand)
    .bind(millis)
    .bind(gib << 30)
    .bind(from)
    .bind(until)
    .execute(pool)
    .await
    .unwrap();
}

/// Cost per project over the window, and what sleeping saved, at 1/core-hour, 0.5/GiB-hour of
/// memory and 0.1/GiB-hour of claims.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn cost_per_project_over_the_window_and_what_sleeping_saved(pool: PgPool) {
    let now = at(NOW);
    let h = chrono::Duration::hours;
    let week = chrono::Duration::days(7);
    // Awake 4 h at 0.5 core and 2 GiB, asleep 4 h, awake the last 2 h; 1 GiB of claims for 10 h.
    //   awake: (0.5 × 6) × 1 + (2 × 6) × 0.5 = 3 + 6 = 9; storage 10 × 0.1 = 1; total 10.
    //   saved: 4 h asleep at (0.5 × 1 + 2 × 0.5) = 1.5/h: 6.
    let a = new_stand(&pool, "shop", "a").await;
    sqlx::query("update stands set created_at = $2, storage_bytes = 1073741824 where stand_id = $1")
        .bind(a)
        .bind(now - h(10))
        .execute(&pool)
        .await
        .unwrap();
    awake(&pool, a, 500, 2, now - h(10), Some(now - h(6))).await;
    awake(&pool, a, 500, 2, now - h(2), None).await;
    // Across the window's start: awake from 2 h before it to 1 h into it at 1 core and 1 GiB, then
    // asleep until it was removed 2 h later. In the window: 1 h awake = 1.5; saved 2 h × 1.5 = 3.
    let b = new_stand(&pool, "shop", "b").await;
    sqlx::query("update stands set created_at = $2, state = 'removed', updated_at = $3 where stand_id = $1")
        .bind(b)
        .bind(now - week - h(2))
        .bind(now - week + h(3))
        .execute(&pool)
        .await
        .unwrap();
    awake(&pool, b, 1000, 1, now - week - h(2), Some(now - week + h(1))).await;
    // A project whose stands were never awake (dry-run mode) has no cost.
    new_stand(&pool, "quiet", "q").await;

    let figures = summary(&pool, None, 7 * DAY, now, &prices()).await.unwrap();
    let cost = |project: &str| figures.projects.iter().find(|p| p.project == project).unwrap().cost.clone();
    let shop = cost("shop").expect("shop's stands were awake");
    assert!((shop.total - 11.5).abs() < 1e-9, "{shop:?}");
    assert!((shop.saved_by_sleep - 9.0).abs() < 1e-9, "{shop:?}");
    assert_eq!(shop.currency, "EUR");
    assert_eq!(cost("quiet"), None);
}
