//! The run engine through its StepRunner trait, with a fake that can fail, stall or answer slowly,
//! against a real Postgres (a fresh database per test).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use draftd::pipeline::authorise::{Authorise, Verdict};
use draftd::pipeline::{Engine, EngineSettings, RunContext, RunEnd, StepError, StepName, StepOutcome, StepRunner};
use serde_json::json;
use sqlx::PgPool;

use crate::support;
use draftd::stand::RunId;

#[derive(Debug, Clone, Copy)]
enum Act {
    Ok,
    Sleep(Duration),
    Transient,
    Permanent,
    /// Never answers: stands for a hung helm or a killed process.
    Stall,
}

#[derive(Debug, Clone)]
struct Call {
    run_id: RunId,
    step: StepName,
    started: Instant,
    ended: Option<Instant>,
    completed: bool,
}

/// Scripted per (branch, step); unscripted steps succeed after `default_delay`.
#[derive(Default)]
struct Fake {
    script: Mutex<HashMap<(String, StepName), VecDeque<Act>>>,
    calls: Mutex<Vec<Call>>,
    default_delay: Duration,
}

impl Fake {
    fn with_delay(delay: Duration) -> Arc<Self> {
        Arc::new(Self { default_delay: delay, ..Default::default() })
    }
    fn script(&self, branch: &str, step: StepName, acts: &[Act]) {
        self.script.lock().unwrap().insert((branch.into(), step), acts.iter().copied().collect());
    }
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    fn completed(&self, run_id: RunId) -> Vec<StepName> {
        self.calls().into_iter().filter(|c| c.run_id == run_id && c.completed).map(|c| c.step).collect()
    }
}

impl StepRunner for Fake {
    async fn run(&self, step: StepName, run: &RunContext) -> Result<StepOutcome, StepError> {
        let act = self
            .script
            .lock()
            .unwrap()
            .get_mut(&(run.branch.to_string(), step))
            .and_then(|q| q.pop_front())
            .unwrap_or(Act::Sleep(self.default_delay));
        let index = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Call { run_id: run.run_id, step, started: Instant::now(), ended: None, completed: false });
            calls.len() - 1
        };
        let result = match act {
            Act::Ok => Ok(StepOutcome::done(json!({ "step": step }))),
            Act::Sleep(d) => {
                tokio::time::sleep(d).await;
                Ok(StepOutcome::done(json!({ "step": step })))
            }
            Act::Transient => Err(StepError::transient("fake_timeout", "timed out")),
            Act::Permanent => Err(StepError::permanent("fake_broken", "broken for good")),
            Act::Stall => std::future::pending().await,
        };
        let mut calls = self.calls.lock().unwrap();
        calls[index].ended = Some(Instant::now());
        calls[index].completed = result.is_ok();
        result
    }
}

fn settings() -> EngineSettings {
    EngineSettings {
        workers: 2,
        max_running: 16,
        lease: Duration::from_millis(600),
        heartbeat: Duration::from_millis(150),
        poll: Duration::from_millis(20),
        max_step_attempts: 3,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        fault: None,
        ..EngineSettings::default()
    }
}

fn engine(pool: &PgPool, fake: &Arc<Fake>, owner: &str) -> Arc<Engine<Fake>> {
    Arc::new(Engine::new(pool.clone(), fake.clone(), settings(), owner))
}

/// Queues a run for `branch` of project `shop` (creating its stand) and returns its id.
async fn queue(pool: &PgPool, branch: &str, kind: &str, sha: &str) -> RunId {
    queue_in(pool, "shop", branch, kind, sha).await
}

async fn queue_in(pool: &PgPool, project: &str, branch: &str, kind: &str, sha: &str) -> RunId {
    let namespace = format!("draft-{project}-{}", branch.replace('/', "-"));
    support::queue_run(pool, project, branch, &namespace, kind, sha).await
}

async fn run_state(pool: &PgPool, run_id: RunId) -> (String, Option<serde_json::Value>) {
    sqlx::query_as("select state, error from runs where run_id = $1").bind(run_id).fetch_one(pool).await.unwrap()
}

async fn step_rows(pool: &PgPool, run_id: RunId) -> HashMap<String, (String, i32)> {
    sqlx::query_as::<_, (String, String, i32)>("select name, state, attempt from steps where run_id = $1")
        .bind(run_id)
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(n, s, a)| (n, (s, a)))
        .collect()
}

/// Drives workers of every engine until no run is queued or running, or the deadline passes.
async fn drain(pool: &PgPool, engines: &[Arc<Engine<Fake>>], deadline: Duration) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let handles: Vec<_> = engines.iter().map(|e| tokio::spawn(e.clone().run_workers(stop_rx.clone()))).collect();
    let start = Instant::now();
    loop {
        let open: i64 = sqlx::query_scalar("select count(*) from runs where state in ('queued', 'running')")
            .fetch_one(pool)
            .await
            .unwrap();
        if open == 0 {
            break;
        }
        assert!(start.elapsed() < deadline, "runs still open after {deadline:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(true).unwrap();
    for h in handles {
        h.await.unwrap();
    }
}

/// Every step of a successful deploy run, in the order the engine must reach them.
const DEPLOY_ORDER: [StepName; 9] = [
    StepName::Namespace,
    StepName::Database,
    StepName::Secrets,
    StepName::Image,
    StepName::Deploy,
    StepName::Migrate,
    StepName::Verify,
    StepName::Smoke,
    StepName::Report,
];

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_deploy_runs_every_step_once_in_groups_that_overlap(pool: PgPool) {
    let fake = Fake::with_delay(Duration::from_millis(40));
    let run = queue(&pool, "feature/a", "deploy", "a1").await;
    let end = engine(&pool, &fake, "w1").run_one().await.unwrap();
    assert_eq!(end, Some((run, RunEnd::Succeeded)));
    assert_eq!(run_state(&pool, run).await.0, "succeeded");

    let calls = fake.calls();
    let order: Vec<StepName> = calls.iter().map(|c| c.step).collect();
    assert_eq!(&order[4..], &DEPLOY_ORDER[4..], "after the first two groups, in order, report last");
    let group = |range: std::ops::Range<usize>| {
        let calls: Vec<&Call> = calls[range].iter().collect();
        let mut names: Vec<&str> = calls.iter().map(|c| c.step.as_str()).collect();
        names.sort();
        let latest_start = calls.iter().map(|c| c.started).max().unwrap();
        let earliest_end = calls.iter().map(|c| c.ended.unwrap()).min().unwrap();
        assert!(latest_start < earliest_end, "{names:?} overlap in time");
        let first_start = calls.iter().map(|c| c.started).min().unwrap();
        let last_end = calls.iter().map(|c| c.ended.unwrap()).max().unwrap();
        (names, first_start, last_end)
    };
    let (first, _, first_end) = group(0..2);
    assert_eq!(first, ["database", "namespace"]);
    let (second, second_start, second_end) = group(2..4);
    assert_eq!(second, ["image", "secrets"]);
    assert!(second_start >= first_end, "secrets waits for the namespace and the database");
    assert!(calls[4].started >= second_end, "deploy waits for the secrets and the image");

    let rows = step_rows(&pool, run).await;
    assert_eq!(rows.len(), 9);
    assert!(rows.values().all(|(s, a)| s == "succeeded" && *a == 1), "{rows:?}");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn transient_failures_are_retried_with_backoff(pool: PgPool) {
    let fake = Fake::with_delay(Duration::ZERO);
    fake.script("feature/a", StepName::Image, &[Act::Transient, Act::Transient, Act::Ok]);
    let run = queue(&pool, "feature/a", "deploy", "a1").await;
    let end = engine(&pool, &fake, "w1").run_one().await.unwrap();
    assert_eq!(end, Some((run, RunEnd::Succeeded)));
    assert_eq!(step_rows(&pool, run).await["image"], ("succeeded".into(), 3));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn transient_failures_past_the_limit_fail_the_run(pool: PgPool) {
    let fake = Fake::with_delay(Duration::ZERO);
    fake.script("feature/a", StepName::Image, &[Act::Transient; 3]);
    let run = queue(&pool, "feature/a", "deploy", "a1").await;
    assert_eq!(engine(&pool, &fake, "w1").run_one().await.unwrap(), Some((run, RunEnd::Failed)));
    let (state, error) = run_state(&pool, run).await;
    assert_eq!(state, "failed");
    assert_eq!(error.unwrap()["label"], "fake_timeout");
    assert!(!fake.completed(run).contains(&StepName::Deploy));
    assert!(fake.completed(run).contains(&StepName::Report), "a failed run still reports");
    assert!(!fake.calls().iter().any(|c| c.step == StepName::Rollback), "nothing was deployed to roll back");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_permanent_failure_after_deploy_rolls_back_then_reports(pool: PgPool) {
    let fake = Fake::with_delay(Duration::ZERO);
    fake.script("feature/a", StepName::Verify, &[Act::Permanent]);
    let run = queue(&pool, "feature/a", "deploy", "a1").await;
    assert_eq!(engine(&pool, &fake, "w1").run_one().await.unwrap(), Some((run, RunEnd::Failed)));
    let order: Vec<StepName> = fake.calls().iter().map(|c| c.step).collect();
    assert_eq!(&order[order.len() - 3..], &[StepName::Verify, StepName::Rollback, StepName::Report]);
    assert!(!order.contains(&StepName::Smoke));
    let rows = step_rows(&pool, run).await;
    assert_eq!(rows["verify"], ("failed".into(), 1), "a permanent failure is not retried");
    assert_eq!(rows["rollback"].0, "succeeded");
    let error = run_state(&pool, run).await.1.unwrap();
    assert_eq!((error["step"].as_str(), error["kind"].as_str()), (Some("verify"), Some("permanent")));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_newer_deploy_supersedes_an_older_one_at_the_next_step_boundary(pool: PgPool) {
    let fake = Fake::with_delay(Duration::ZERO);
    fake.script("feature/a", StepName::Image, &[Act::Sleep(Duration::from_millis(300))]);
    let old = queue(&pool, "feature/a", "deploy", "a1").await;
    let e = engine(&pool, &fake, "w1");
    let first = tokio::spawn({
        let e = e.clone();
        async move { e.run_one().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let new = queue(&pool, "feature/a", "deploy", "a2").await;
    assert_eq!(first.await.unwrap(), Some((old, RunEnd::Superseded)));
    assert_eq!(run_state(&pool, old).await.0, "superseded");
    assert!(!fake.completed(old).contains(&StepName::Deploy), "stopped before the next step");
    assert!(!fake.completed(old).contains(&StepName::Report), "a superseded run never reports");
    assert_eq!(e.run_one().await.unwrap(), Some((new, RunEnd::Succeeded)));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_teardown_cancels_an_in_flight_deploy_then_runs(pool: PgPool) {
    let fake = Fake::with_delay(Duration::ZERO);
    fake.script("feature/a", StepName::Deploy, &[Act::Sleep(Duration::from_millis(300))]);
    let deploy = queue(&pool, "feature/a", "deploy", "a1").await;
    let e = engine(&pool, &fake, "w1");
    let first = tokio::spawn({
        let e = e.clone();
        async move { e.run_one().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let teardown = queue(&pool, "feature/a", "teardown", "a1").await;
    assert_eq!(first.await.unwrap(), Some((deploy, RunEnd::Cancelled)));
    assert_eq!(e.run_one().await.unwrap(), Some((teardown, RunEnd::Succeeded)));
    use StepName::*;
    assert_eq!(fake.completed(teardown), vec![Cancel, Deactivate, Revoke, Uninstall, Drop, Report]);
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn runs_of_one_stand_never_overlap_and_go_in_order(pool: PgPool) {
    let fake = Fake::with_delay(Duration::from_millis(5));
    // A teardown and a deploy queued behind it (a reopen): neither gives way, both run, in order.
    let first = queue(&pool, "feature/a", "teardown", "a1").await;
    let second = queue(&pool, "feature/a", "deploy", "a2").await;
    let e1 = engine(&pool, &fake, "w1");
    let e2 = engine(&pool, &fake, "w2");
    drain(&pool, &[e1, e2], Duration::from_secs(20)).await;
    assert_eq!(run_state(&pool, first).await.0, "succeeded");
    assert_eq!(run_state(&pool, second).await.0, "succeeded");
    let calls = fake.calls();
    let last_of_first = calls.iter().filter(|c| c.run_id == first).map(|c| c.ended.unwrap()).max().unwrap();
    let first_of_second = calls.iter().filter(|c| c.run_id == second).map(|c| c.started).min().unwrap();
    assert!(last_of_first <= first_of_second, "the second run started before the first ended");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn two_engines_on_one_database_run_every_run_exactly_once(pool: PgPool) {
    let fake = Fake::with_delay(Duration::from_millis(2));
    let mut ids = Vec::new();
    for i in 0..24 {
        ids.push(queue(&pool, &format!("feature/{i}"), "deploy", "s1").await);
    }
    drain(&pool, &[engine(&pool, &fake, "replica-a"), engine(&pool, &fake, "replica-b")], Duration::from_secs(60))
        .await;
    let calls = fake.calls();
    for id in ids {
        assert_eq!(run_state(&pool, id).await.0, "succeeded");
        let mut steps: Vec<&str> = calls.iter().filter(|c| c.run_id == id).map(|c| c.step.as_str()).collect();
        steps.sort();
        let mut expected: Vec<&str> = DEPLOY_ORDER.iter().map(|s| s.as_str()).collect();
        expected.sort();
        assert_eq!(steps, expected, "run {id}: each step exactly once");
    }
    let owners: Vec<Option<String>> =
        sqlx::query_scalar("select distinct lease_owner from runs").fetch_all(&pool).await.unwrap();
    assert_eq!(owners, vec![None], "every lease released");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_project_limit_caps_its_runs_in_flight_while_other_projects_proceed(pool: PgPool) {
    let fake = Fake::with_delay(Duration::from_millis(15));
    let mut shop = Vec::new();
    for i in 0..3 {
        shop.push(queue_in(&pool, "shop", &format!("feature/{i}"), "deploy", "s1").await);
    }
    let other = queue_in(&pool, "blog", "feature/x", "deploy", "s1").await;
    let settings = EngineSettings { workers: 4, ..settings() };
    let limited = |owner: &str| {
        Arc::new(Engine::new(pool.clone(), fake.clone(), settings.clone(), owner).with_project_limits([("shop", 1)]))
    };
    // Two engines: the limit holds across replicas, not just within one process.
    drain(&pool, &[limited("replica-a"), limited("replica-b")], Duration::from_secs(30)).await;

    let calls = fake.calls();
    let span = |run: RunId| {
        let mine = calls.iter().filter(|c| c.run_id == run);
        (mine.clone().map(|c| c.started).min().unwrap(), mine.map(|c| c.ended.unwrap()).max().unwrap())
    };
    let overlap = |a: (Instant, Instant), b: (Instant, Instant)| a.0 < b.1 && b.0 < a.1;
    for (i, a) in shop.iter().enumerate() {
        assert_eq!(run_state(&pool, *a).await.0, "succeeded");
        for b in &shop[i + 1..] {
            assert!(!overlap(span(*a), span(*b)), "runs {a} and {b} of shop were in flight together");
        }
    }
    assert_eq!(run_state(&pool, other).await.0, "succeeded");
    assert!(shop.iter().any(|s| overlap(span(*s), span(other))), "blog's run was held back by shop's limit");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_woken_worker_starts_a_new_run_without_waiting_for_its_poll(pool: PgPool) {
    let fake = Fake::with_delay(Duration::ZERO);
    let wake = draftd::pipeline::Wake::default();
    let settings = EngineSettings { poll: Duration::from_secs(60), ..settings() };
    let engine = Arc::new(Engine::new(pool.clone(), fake.clone(), settings, "w1").with_wake(wake.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers = tokio::spawn(engine.run_workers(stop_rx));
    // Both workers have looked, found nothing, and sleep for a minute.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let run = queue(&pool, "feature/a", "deploy", "a1").await;
    let queued = Instant::now();
    wake.wake();
    loop {
        if run_state(&pool, run).await.0 == "succeeded" {
            break;
        }
        assert!(queued.elapsed() < Duration::from_secs(10), "the run waited for the poll");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_tx.send(true).unwrap();
    workers.await.unwrap();
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_run_killed_mid_step_is_resumed_by_another_worker_without_repeating_done_steps(pool: PgPool) {
    let fake = Fake::with_delay(Duration::ZERO);
    // The first worker dies inside `migrate`: its future is dropped and its heartbeat stops with it.
    fake.script("feature/a", StepName::Migrate, &[Act::Stall, Act::Ok]);
    let run = queue(&pool, "feature/a", "deploy", "a1").await;
    let doomed = engine(&pool, &fake, "killed");
    let task = tokio::spawn(async move { doomed.run_one().await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fake.calls().iter().any(|c| c.step == StepName::Migrate) {
        assert!(Instant::now() < deadline, "the first worker never reached migrate");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
    let _ = task.await;

    let survivor = engine(&pool, &fake, "survivor");
    // Until the lease expires the run belongs to the dead worker.
    assert_eq!(survivor.run_one().await.unwrap(), None);
    tokio::time::sleep(settings().lease).await;
    assert_eq!(survivor.run_one().await.unwrap(), Some((run, RunEnd::Succeeded)));

    let calls = fake.calls();
    for step in &DEPLOY_ORDER {
        let completed = calls.iter().filter(|c| c.step == *step && c.completed).count();
        assert_eq!(completed, 1, "{step:?} completed exactly once");
    }
    assert_eq!(calls.iter().filter(|c| c.step == StepName::Migrate).count(), 2, "migrate was re-executed");
    assert_eq!(calls.iter().filter(|c| c.step == StepName::Deploy).count(), 1, "deploy was not");
    let rows = step_rows(&pool, run).await;
    assert_eq!(rows["migrate"], ("succeeded".into(), 2));
    let (attempt, owner): (i32, Option<String>) =
        sqlx::query_as("select attempt, lease_owner from runs where run_id = $1")
            .bind(run)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((attempt, owner), (2, None));
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn a_worker_that_lost_its_lease_stops_without_writing(pool: PgPool) {
    let fake = Fake::with_delay(Duration::ZERO);
    fake.script("feature/a", StepName::Deploy, &[Act::Sleep(Duration::from_millis(400))]);
    let run = queue(&pool, "feature/a", "deploy", "a1").await;
    let slow = engine(&pool, &fake, "slow");
    let task = tokio::spawn(async move { slow.run_one().await.unwrap() });
    // Once the deploy step is under way (not a fixed sleep: a loaded machine gets there later).
    let deadline = Instant::now() + Duration::from_secs(10);
    while step_rows(&pool, run).await.get("deploy").is_none_or(|s| s.0 != "running") {
        assert!(Instant::now() < deadline, "the deploy step never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Another worker takes the run over, as it would after a missed lease.
    sqlx::query("update runs set lease_owner = 'thief' where run_id = $1").bind(run).execute(&pool).await.unwrap();
    assert_eq!(task.await.unwrap(), Some((run, RunEnd::LeaseLost)));
    assert_eq!(run_state(&pool, run).await.0, "running", "the loser wrote no end state");
    assert_ne!(step_rows(&pool, run).await["deploy"].0, "succeeded", "nor the step it was in");
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn forge_commands_are_rejected_when_nothing_can_check_write_access(pool: PgPool) {
    let fake = Fake::with_delay(Duration::ZERO);
    let run = queue(&pool, "feature/a", "teardown", "a1").await;
    sqlx::query("update runs set trigger = 'command', requested_by = 'mallory', automatic = false where run_id = $1")
        .bind(run)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(engine(&pool, &fake, "w1").run_one().await.unwrap(), Some((run, RunEnd::Rejected)));
    let (state, error) = run_state(&pool, run).await;
    assert_eq!(state, "rejected");
    assert_eq!(error.unwrap()["label"], "unauthorised");
    assert!(fake.calls().is_empty(), "nothing was executed");
}

/// Answers from a list, one per call, as the forge's access check would.
struct Gate(Mutex<VecDeque<Result<Verdict, StepError>>>);

impl Authorise for Gate {
    fn authorise<'a>(
        &'a self,
        _run: &'a RunContext,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Verdict, StepError>> + Send + 'a>> {
        let next = self.0.lock().unwrap().pop_front().expect("an answer");
        Box::pin(async move { next })
    }
}

async fn command(pool: &PgPool, branch: &str, kind: &str, who: &str) -> RunId {
    let run = queue(pool, branch, kind, "a1").await;
    sqlx::query("update runs set trigger = 'check_run', requested_by = $2, automatic = false where run_id = $1")
        .bind(run)
        .bind(who)
        .execute(pool)
        .await
        .unwrap();
    run
}

#[sqlx::test(migrator = "draftd::store::MIGRATOR")]
async fn forge_commands_act_once_the_access_check_allows_them(pool: PgPool) {
    let fake = Fake::with_delay(Duration::ZERO);
    let gate = Arc::new(Gate(Mutex::new(VecDeque::from([
        Err(StepError::transient("forge_unavailable", "GitHub answered 502")),
        Ok(Verdict::Allowed),
        Ok(Verdict::Denied { reason: "mallory has read access to acme/shop".into() }),
    ]))));
    let engine = Arc::new(Engine::new(pool.clone(), fake.clone(), settings(), "w1").with_authoriser(gate.clone()));
    let allowed = command(&pool, "feature/a", "deploy", "alice").await;
    assert_eq!(engine.run_one().await.unwrap(), Some((allowed, RunEnd::Succeeded)), "retried past the outage");
    assert!(!fake.calls().is_empty(), "the re-run ran");
    let calls = fake.calls().len();
    let denied = command(&pool, "feature/b", "deploy", "mallory").await;
    assert_eq!(engine.run_one().await.unwrap(), Some((denied, RunEnd::Rejected)));
    let (state, error) = run_state(&pool, denied).await;
    assert_eq!(state, "rejected");
    assert_eq!(error.unwrap()["message"], "mallory has read access to acme/shop");
    assert_eq!(fake.calls().len(), calls, "nothing of the refused run was executed");
}
