//! `max_active`: stands up at once, counted across engines on one database. Past the cap a new
//! stand waits (state `waiting`, the reason in its comment) until a place frees, or the idlest
//! stand is put to sleep to make room.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use draftd::helm::HelmCli;
use draftd::pipeline::steps::DryRunSteps;
use draftd::pipeline::{Caps, Engine, EngineSettings, RunEnd};
use draftd::reporter::{ReportView, Status, render};
use draftd::stand::{RunId, StandId};
use draftd::store::caps::{self, Admission, Limits};
use draftd::store::stands::{self, StandRef};
use sqlx::PgPool;

use crate::support;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn engine(pool: &PgPool, config: &Arc<draftd::config::Config>, name: &str, caps: Caps) -> Engine<DryRunSteps<HelmCli>> {
    let helm = HelmCli::from_config(&config.cluster, &root()).unwrap();
    let steps = DryRunSteps::new(pool.clone(), config.clone(), Arc::new(helm));
    let settings = EngineSettings {
        max_step_attempts: 1,
        place_recheck: Duration::from_millis(200),
        poll: Duration::from_millis(20),
        ..EngineSettings::default()
    };
    Engine::new(pool.clone(), Arc::new(steps), settings, name).with_caps(caps)
}

/// Drives runs until none moves for a while: nothing claimable, or only runs that wait for a place
/// (they come back after their recheck). The ends, waits left out.
async fn drain(engine: &Engine<DryRunSteps<HelmCli>>) -> Vec<(RunId, RunEnd)> {
    let mut ends = Vec::new();
    let mut idle = 0;
    while idle < 10 {
        match engine.run_one().await.unwrap() {
            Some(end) if end.1 != RunEnd::Waiting => {
                idle = 0;
                ends.push(end);
            }
            _ => {
                idle += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    ends
}

async fn state_of(pool: &PgPool, stand: StandId) -> (String, bool, Option<String>) {
    sqlx::query_as("select state, placed_at is not null, waiting_reason from stands where stand_id = $1")
        .bind(stand)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn stand_of(pool: &PgPool, run: RunId) -> StandId {
    sqlx::query_scalar("select stand_id from runs where run_id = $1").bind(run).fetch_one(pool).await.unwrap()
}

async fn placed(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from stands where placed_at is not null").fetch_one(pool).await.unwrap()
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn two_engines_bring_up_no_more_than_max_active_and_the_rest_wait_then_follow(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let config = Arc::new(support::dry_run_shop(&dir.path().join("stands"), ""));
    let caps = Caps { all: Some(2), ..Caps::default() };
    let (a, b) = (engine(&pool, &config, "engine-a", caps.clone()), engine(&pool, &config, "engine-b", caps));
    let mut runs = Vec::new();
    for branch in ["one", "two", "three", "four"] {
        let namespace = format!("draft-{branch}");
        runs.push(support::queue_run(&pool, "shop", branch, &namespace, "deploy", &"a".repeat(40)).await);
    }

    // Both engines claim at once; each claim counts the places the other took.
    let (ends_a, ends_b) = tokio::join!(drain(&a), drain(&b));
    let succeeded: Vec<RunId> =
        ends_a.iter().chain(&ends_b).filter(|(_, end)| *end == RunEnd::Succeeded).map(|(run, _)| *run).collect();
    assert_eq!(succeeded.len(), 2, "two deploys ran: {ends_a:?} {ends_b:?}");
    assert_eq!(placed(&pool).await, 2);
    let waiting: Vec<RunId> = runs.iter().copied().filter(|r| !succeeded.contains(r)).collect();
    for run in &waiting {
        let stand = stand_of(&pool, *run).await;
        let (state, has_place, reason) = state_of(&pool, stand).await;
        assert_eq!((state.as_str(), has_place), ("waiting", false), "stand {stand}");
        assert_eq!(reason.as_deref(), Some("2 of 2 stands ([stands] max_active) are up"));
        let run_state: String =
            sqlx::query_scalar("select state from runs where run_id = $1").bind(run).fetch_one(&pool).await.unwrap();
        assert_eq!(run_state, "queued", "a waiting deploy stays in the queue, and did nothing");
        let steps: i64 = sqlx::query_scalar("select count(*) from steps where run_id = $1")
            .bind(run)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(steps, 0);
        // What its comment says.
        let detail = stands::show(&pool, &StandRef::Id(stand), 10).await.unwrap().unwrap();
        let view = ReportView::from_detail(&detail, None, Vec::new(), None).unwrap();
        assert_eq!(view.status, Status::Waiting);
        let body = render(&view);
        assert!(body.contains("waiting for a place"), "{body}");
        assert!(body.contains("2 of 2 stands ([stands] max_active) are up"), "{body}");
    }

    // One of the two up goes to sleep: its place goes to a waiting stand, which then deploys.
    let sleeper = stand_of(&pool, succeeded[0]).await;
    let (branch, namespace): (String, String) =
        sqlx::query_as("select branch, namespace from stands where stand_id = $1")
            .bind(sleeper)
            .fetch_one(&pool)
            .await
            .unwrap();
    support::queue_run(&pool, "shop", &branch, &namespace, "sleep", &"a".repeat(40)).await;
    let ends = drain(&a).await;
    assert_eq!(ends.iter().filter(|(_, end)| *end == RunEnd::Succeeded).count(), 2, "the sleep, one deploy: {ends:?}");
    assert_eq!(state_of(&pool, sleeper).await.0, "sleeping");
    assert_eq!(placed(&pool).await, 2);
    let states: Vec<String> =
        sqlx::query_scalar("select state from stands order by state").fetch_all(&pool).await.unwrap();
    assert_eq!(states, ["active", "active", "sleeping", "waiting"]);
    let (followed, _) = ends.iter().find(|(run, _)| waiting.contains(run)).expect("a waiting deploy ran");
    let (state, has_place, reason) = state_of(&pool, stand_of(&pool, *followed).await).await;
    assert_eq!((state.as_str(), has_place, reason), ("active", true, None), "it waits for nothing now");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn on_cap_sleep_idlest_puts_the_least_recently_active_stand_to_sleep_to_make_room(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let config = Arc::new(support::dry_run_shop(&dir.path().join("stands"), ""));
    let engine = engine(&pool, &config, "engine", Caps { all: Some(2), sleep_idlest: true, ..Caps::default() });
    for branch in ["old", "recent"] {
        support::queue_run(&pool, "shop", branch, &format!("draft-{branch}"), "deploy", &"b".repeat(40)).await;
    }
    drain(&engine).await;
    sqlx::query("update stands set last_activity_at = now() - interval '2 hours' where branch = 'old'")
        .execute(&pool)
        .await
        .unwrap();

    let new = support::queue_run(&pool, "shop", "new", "draft-new", "deploy", &"b".repeat(40)).await;
    let ends = drain(&engine).await;
    assert!(ends.contains(&(new, RunEnd::Succeeded)), "the new stand came up: {ends:?}");
    let by_branch: Vec<(String, String)> =
        sqlx::query_as("select branch, state from stands order by branch").fetch_all(&pool).await.unwrap();
    assert_eq!(
        by_branch,
        [("new".into(), "active".into()), ("old".into(), "sleeping".into()), ("recent".into(), "active".into())]
    );
    let sleeps: Vec<(String, String)> =
        sqlx::query_as("select s.branch, r.trigger from runs r join stands s using (stand_id) where r.kind = 'sleep'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(sleeps, [("old".to_owned(), "cap".to_owned())], "one sleep, of the idlest, for the cap");
    assert_eq!(placed(&pool).await, 2);
}

/// A project's own cap counts its stands only; the cap across projects counts them all.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_projects_cap_counts_its_own_stands(pool: PgPool) {
    let stand = |project: &'static str, branch: &'static str| {
        let pool = pool.clone();
        async move {
            let id: StandId = sqlx::query_scalar(
                "insert into stands (project, branch, namespace) values ($1, $2, 'draft-' || $1 || '-' || $2)
                 returning stand_id",
            )
            .bind(project)
            .bind(branch)
            .fetch_one(&pool)
            .await
            .unwrap();
            id
        }
    };
    let shop = Limits { all: Some(3), project: Some(1), sleep_idlest: false };
    let blog = Limits { all: Some(3), project: None, sleep_idlest: false };
    assert_eq!(caps::admit(&pool, stand("shop", "a").await, shop).await.unwrap(), Admission::Placed);
    let second = stand("shop", "b").await;
    let Admission::Waiting { reason, news, made_room } = caps::admit(&pool, second, shop).await.unwrap() else {
        panic!("the shop's second stand passes its cap");
    };
    assert_eq!(reason, "project shop has 1 of its 1 stands (max_active) up");
    assert!(news && made_room.is_none());
    let again = caps::admit(&pool, second, shop).await.unwrap();
    assert!(matches!(again, Admission::Waiting { news: false, .. }), "told once: {again:?}");
    assert_eq!(caps::admit(&pool, stand("blog", "a").await, blog).await.unwrap(), Admission::Placed);
    assert_eq!(caps::admit(&pool, stand("blog", "b").await, blog).await.unwrap(), Admission::Placed);
    let Admission::Waiting { reason, .. } = caps::admit(&pool, stand("blog", "c").await, blog).await.unwrap() else {
        panic!("a fourth stand passes the cap across projects");
    };
    assert_eq!(reason, "3 of 3 stands ([stands] max_active) are up");
    // The caps taken out of the configuration: the waiting stand takes its place at once.
    assert_eq!(caps::admit(&pool, second, Limits::default()).await.unwrap(), Admission::Placed);
    let (state, reason): (String, Option<String>) =
        sqlx::query_as("select state, waiting_reason from stands where stand_id = $1")
            .bind(second)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), reason), ("active", None));
}

/// A waiting stand whose PR closes is removed, its waiting deploy cancelled, and nothing waits on.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_waiting_stand_whose_pr_closes_is_torn_down_not_left_waiting(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let config = Arc::new(support::dry_run_shop(&dir.path().join("stands"), ""));
    let engine = engine(&pool, &config, "engine", Caps { all: Some(1), ..Caps::default() });
    support::queue_run(&pool, "shop", "up", "draft-up", "deploy", &"c".repeat(40)).await;
    let waiting = support::queue_run(&pool, "shop", "later", "draft-later", "deploy", &"c".repeat(40)).await;
    drain(&engine).await;
    let stand = stand_of(&pool, waiting).await;
    assert_eq!(state_of(&pool, stand).await.0, "waiting");

    assert!(stands::close(&pool, stand, "the PR was closed").await.unwrap(), "a waiting stand can close");
    let teardown = support::queue_run(&pool, "shop", "later", "draft-later", "teardown", &"c".repeat(40)).await;
    let ends = drain(&engine).await;
    assert!(ends.contains(&(waiting, RunEnd::Cancelled)), "{ends:?}");
    assert!(ends.contains(&(teardown, RunEnd::Succeeded)), "{ends:?}");
    assert_eq!(state_of(&pool, stand).await, ("removed".to_owned(), false, None));
    assert_eq!(placed(&pool).await, 1, "the stand that was up keeps its place");
}

/// A request for a sleeping stand whose wake waits for a place is told so: a browser on the page
/// that reloads itself, anything else in the 503's body.
#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_request_for_a_stand_waiting_for_a_place_is_told_why(pool: PgPool) {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let dir = tempfile::tempdir().unwrap();
    let config = support::dry_run_shop(&dir.path().join("stands"), "");
    sqlx::query(
        "insert into stands (project, branch, namespace, state, waiting_reason)
         values ('shop', 'feature/nap', 'draft-feature-nap', 'sleeping', '1 of 1 stands ([stands] max_active) are up')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let projects = draftd::config::Projects::resolve_with(&config, |_| Some("x".into())).unwrap();
    let state = draftd::http::AppState::new(&config, projects, pool.clone());
    state.set_migrated();
    let router = draftd::http::wake::router(state, Duration::from_millis(300));
    let request = |accept: &str| {
        Request::get("/")
            .header("host", "nap.draft.test")
            .header("x-namespace", "draft-feature-nap")
            .header("accept", accept)
            .body(Body::empty())
            .unwrap()
    };
    let page = router.clone().oneshot(request("text/html")).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK, "a browser gets the page that reloads itself");
    let body = String::from_utf8(page.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(body.contains("It waits for a place first: 1 of 1 stands ([stands] max_active) are up."), "{body}");
    let api = router.oneshot(request("application/json")).await.unwrap();
    assert_eq!(api.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(api.headers()["retry-after"], "2");
    let body = String::from_utf8(api.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert_eq!(body, "nap.draft.test: waiting for a place: 1 of 1 stands ([stands] max_active) are up\n");
    let wakes: i64 =
        sqlx::query_scalar("select count(*) from runs where kind = 'wake'").fetch_one(&pool).await.unwrap();
    assert_eq!(wakes, 1, "two requests, one wake queued");
}
