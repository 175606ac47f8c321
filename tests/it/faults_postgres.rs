//! Postgres cut from under the workers: restarted mid-run (every connection dropped), then down for
//! longer than a lease. draftd reconnects by itself, runs resume from their first step not recorded
//! as done, and afterwards every run is in exactly one terminal state, every step is recorded once,
//! no lease is left, and no step recorded as done before a fault was executed again.
//!
//! Runs against a scratch cluster of its own (`scripts/pg-scratch.sh`), never the shared server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use draftd::pipeline::{Engine, EngineSettings, RunContext, StepError, StepName, StepOutcome, StepRunner};
use serde_json::json;
use sqlx::PgPool;

use crate::support;
use draftd::stand::RunId;

/// A Postgres cluster this test may restart; stopped and removed on drop, pass or fail.
struct Scratch {
    dir: tempfile::TempDir,
    url: String,
}

impl Scratch {
    fn start() -> Scratch {
        let dir = tempfile::tempdir().expect("a temp dir");
        let out = Command::new(script()).arg("start").arg(dir.path()).output().expect("pg-scratch.sh runs");
        assert!(out.status.success(), "pg-scratch start: {}", String::from_utf8_lossy(&out.stderr));
        let line = String::from_utf8(out.stdout).unwrap();
        let url = line.trim().strip_prefix("export SCRATCH_PG_URL=").expect("the URL line").to_owned();
        Scratch { dir, url }
    }

    fn ctl(&self, command: &str) {
        let out = Command::new(script()).arg(command).arg(self.dir.path()).output().expect("pg-scratch.sh runs");
        assert!(out.status.success(), "pg-scratch {command}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(self.dir.path()).output();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-scratch.sh")
}

/// Every step takes `step_time`; completions are counted per (run, step).
struct Slow {
    step_time: Duration,
    completions: Mutex<BTreeMap<(RunId, String), u32>>,
}

impl StepRunner for Slow {
    async fn run(&self, step: StepName, run: &RunContext) -> Result<StepOutcome, StepError> {
        tokio::time::sleep(self.step_time).await;
        *self.completions.lock().unwrap().entry((run.run_id, step.as_str().to_owned())).or_default() += 1;
        Ok(StepOutcome::done(json!({})))
    }
}

/// (run, step) recorded as done; `None` while the database does not answer.
async fn recorded_done(pool: &PgPool) -> Option<BTreeSet<(RunId, String)>> {
    let rows: Vec<(RunId, String)> =
        sqlx::query_as("select run_id, name from steps where state in ('succeeded', 'skipped')")
            .fetch_all(pool)
            .await
            .ok()?;
    Some(rows.into_iter().collect())
}

async fn wait_for(what: &str, deadline: Duration, mut ready: impl AsyncFnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !ready().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_survive_a_postgres_restart_and_an_outage_longer_than_a_lease() {
    let pg = Scratch::start();
    let pool = draftd::store::pool(&pg.url, 4).unwrap();
    draftd::store::migrate(&pool).await.unwrap();
    let mut runs = Vec::new();
    for i in 0..4 {
        runs.push(
            support::queue_run(
                &pool,
                "shop",
                &format!("feature/f{i}"),
                &format!("draft-f{i}"),
                "deploy",
                &support::sha(i),
            )
            .await,
        );
    }

    let settings = EngineSettings {
        workers: 2,
        max_running: 8,
        lease: Duration::from_millis(1500),
        heartbeat: Duration::from_millis(300),
        poll: Duration::from_millis(50),
        max_step_attempts: 3,
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        ..EngineSettings::default()
    };
    let runner = Arc::new(Slow { step_time: Duration::from_millis(150), completions: Mutex::default() });
    let engine =
        Arc::new(Engine::new(draftd::store::worker_pool(&pg.url, 4).unwrap(), runner.clone(), settings, "faults"));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers = tokio::spawn(engine.clone().run_workers(stopped));

    // 1. A fast restart while the first runs are between steps: every connection is cut.
    wait_for("two recorded steps", Duration::from_secs(20), async || {
        recorded_done(&pool).await.is_some_and(|s| s.len() >= 2)
    })
    .await;
    let before_restart = recorded_done(&pool).await.unwrap();
    pg.ctl("restart");

    // 2. Later, an outage longer than a lease: leases run out while nobody can write.
    wait_for("more steps after the restart", Duration::from_secs(30), async || {
        recorded_done(&pool).await.is_some_and(|s| s.len() >= before_restart.len() + 4)
    })
    .await;
    let before_outage = recorded_done(&pool).await.unwrap();
    pg.ctl("down");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    pg.ctl("up");

    wait_for("every run to end", Duration::from_secs(60), async || {
        sqlx::query_scalar::<_, i64>("select count(*) from runs where state in ('queued', 'running')")
            .fetch_one(&pool)
            .await
            .is_ok_and(|n| n == 0)
    })
    .await;
    let _ = stop.send(true);
    workers.await.unwrap();

    let states: Vec<(i64, String)> =
        sqlx::query_as("select run_id, state from runs order by run_id").fetch_all(&pool).await.unwrap();
    assert_eq!(states.len(), runs.len());
    for (run, state) in &states {
        assert_eq!(state, "succeeded", "run {run} ended {state}");
    }
    // One record per step and run, every one of them done.
    let steps: Vec<(RunId, String, String)> =
        sqlx::query_as("select run_id, name, state from steps order by run_id, name").fetch_all(&pool).await.unwrap();
    // The plan's steps, and the report every run ends with.
    let plan: Vec<&str> = draftd::stand::RunKind::Deploy
        .plan()
        .iter()
        .flat_map(|group| group.iter())
        .map(|s| s.as_str())
        .chain(["report"])
        .collect();
    for run in &runs {
        let names: Vec<&str> = steps.iter().filter(|(r, ..)| r == run).map(|(_, n, _)| n.as_str()).collect();
        let mut expected: Vec<&str> = plan.clone();
        expected.sort_unstable();
        assert_eq!(names, expected, "run {run}: one record per step");
    }
    assert!(steps.iter().all(|(_, _, s)| s == "succeeded"), "{steps:?}");
    // What was recorded as done before a fault never ran again.
    let completions = runner.completions.lock().unwrap().clone();
    for key in before_restart.iter().chain(&before_outage) {
        assert_eq!(completions.get(key), Some(&1), "{key:?} recorded before a fault ran again");
    }
    // A worker that meets a fault keeps retrying its write and keeps its run, so mostly nothing runs
    // twice. Once a lease has run out, though, a free worker may claim the run first and redo the
    // steps that were in flight, whose ends were never recorded: at most a group (2 steps) per busy
    // worker (2) per fault (2).
    let repeated: Vec<_> = completions.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.len() <= 2 * 2 * 2, "more steps ran again than were in flight: {repeated:?}");
    assert!(repeated.iter().all(|(_, n)| **n == 2), "a step ran more than twice: {repeated:?}");
    assert_eq!(completions.len(), runs.len() * plan.len());
}
