//! Run-engine benchmark: the library's `Engine` with a fake `StepRunner` that only sleeps, on a fresh
//! database, runs queued through `store::intake::record` (an opened PR for a new branch, as a webhook
//! would queue it), so what is measured is intake + claim + the engine's own bookkeeping around steps.
//!
//! Run by `scripts/bench-pipeline.sh [--runs N] [--burst N] [--concurrency N] [--step-ms-scale F]`.
//!
//! (a) Run overhead: N sequential runs on one engine with one worker, woken after each intake call as
//!     the webhook handler wakes it; for each, the wall time from the start of the intake call to
//!     `run_one` returning the run as succeeded, against the critical path
//!     of the fake's sleeps (max(namespace, database, secrets) + image + deploy + migrate + verify +
//!     smoke + report). Broken down into pickup (queue → first step), steps (first step → report end;
//!     timer overshoot vs engine/database time between steps) and finish (report end → run ended).
//! (b) Burst: N opened PRs for N distinct branches queued by concurrent senders while the engine's
//!     `run_workers` drain them (`workers = max_running = concurrency`); drain time (first queued_at to
//!     last finished_at, by the database clock) against N / concurrency × critical path. Then again with
//!     two `Engine` instances (two lease owners, half the workers each) sharing the database. Checked:
//!     every run succeeded exactly once, every step executed exactly once, no lease left, no run driven
//!     by two engines, never more than `max_running` runs in flight.

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use chrono::Utc;
use draftd::config::ForgeKind;
use draftd::forge::{Event, PullRequest, Trigger};
use draftd::pipeline::{
    Engine, EngineSettings, RunContext, RunEnd, StepError, StepName, StepOutcome, StepRunner, Wake,
};
use draftd::stand::{BranchName, CommitSha, ProjectName, RunId, RunKind};
use draftd::store::intake::{self, Delivery};
use draftd::store::{self, MIGRATOR};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::{ms, percentile};
use tokio::sync::{mpsc, watch};

const RATIO_GOAL_SINGLE: f64 = 1.05;
const RATIO_GOAL_BURST: f64 = 1.10;
/// Concurrent intake callers queueing the burst.
const SENDERS: usize = 16;
/// How often the burst's completion is checked (the drain time itself comes from database timestamps).
const DONE_POLL: Duration = Duration::from_millis(5);
const PROJECT: &str = "bench";

/// The deploy steps with their default latencies, in milliseconds.
const DEFAULT_MS: [(StepName, f64); 9] = [
    (StepName::Namespace, 30.0),
    (StepName::Database, 40.0),
    (StepName::Secrets, 20.0),
    (StepName::Image, 10.0),
    (StepName::Deploy, 60.0),
    (StepName::Migrate, 30.0),
    (StepName::Verify, 40.0),
    (StepName::Smoke, 30.0),
    (StepName::Report, 10.0),
];

const USAGE: &str = "usage: scripts/bench-pipeline.sh [--runs N] [--burst N] [--concurrency N] [--step-ms-scale F]
  --runs N            sequential single runs for the overhead measurement (default 20)
  --burst N           opened PRs (distinct branches) queued at once for the burst (default 1000)
  --concurrency N     workers and max_running for the burst; split over two engines in the replica burst (default 8)
  --step-ms-scale F   multiplies every fake step latency (default 1.0: critical path 220 ms)";

struct Args {
    runs: usize,
    burst: usize,
    concurrency: usize,
    scale: f64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args { runs: 20, burst: 1000, concurrency: 8, scale: 1.0 };
    let mut flags = support::Flags::new(USAGE);
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--runs" => args.runs = flags.whole(&flag)?,
            "--burst" => args.burst = flags.whole(&flag)?,
            "--concurrency" => args.concurrency = flags.whole(&flag)?,
            "--step-ms-scale" => {
                let v = flags.value(&flag)?;
                args.scale = v.parse().map_err(|_| anyhow!("--step-ms-scale: {v:?} is not a number\n{USAGE}"))?;
            }
            other => return Err(flags.unknown(other)),
        }
    }
    if args.runs == 0 || args.burst == 0 || args.concurrency == 0 {
        bail!("--runs, --burst and --concurrency must be at least 1\n{USAGE}");
    }
    if !(args.scale.is_finite() && args.scale >= 0.0) {
        bail!("--step-ms-scale must be a non-negative number\n{USAGE}");
    }
    Ok(args)
}

fn main() -> ExitCode {
    support::main_with(parse_args, bench)
}

/// Creates the database, runs everything, and drops the database however the run ended.
async fn bench(args: Args) -> anyhow::Result<()> {
    support::in_fresh_database(
        "draftd_benchpipe",
        "scripts/bench-pipeline.sh",
        |url| async move { run(&args, &url).await },
    )
    .await
}

async fn run(args: &Args, url: &str) -> anyhow::Result<()> {
    let opts = PgConnectOptions::from_str(url)?.application_name("draftd-bench-pipeline");
    let pool = PgPoolOptions::new()
        .max_connections(SENDERS as u32 + 2)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(opts)
        .await?;
    MIGRATOR.run(&pool).await.context("migrating the bench database")?;
    let server: String = sqlx::query_scalar("select current_setting('server_version')").fetch_one(&pool).await?;
    let sync: String = sqlx::query_scalar("select current_setting('synchronous_commit')").fetch_one(&pool).await?;
    let fsync: String = sqlx::query_scalar("select current_setting('fsync')").fetch_one(&pool).await?;
    let latencies = Arc::new(Latencies::new(args.scale));
    println!(
        "postgres {server} (fsync={fsync}, synchronous_commit={sync}); fake step latencies x{}: critical path {:.1} ms",
        args.scale,
        ms(latencies.critical_path())
    );

    let probe = probe(&pool).await?;
    let project = ProjectName::new(PROJECT)?;
    let overhead = overhead(args, url, &pool, &project, &latencies).await?;
    let single = burst(args, url, &pool, &project, &latencies, 1).await?;
    let replicas = burst(args, url, &pool, &project, &latencies, 2).await?;
    pool.close().await;
    summary(args, &latencies, &probe, &overhead, &[single, replicas])
}

/// Round-trip times on this server, to attribute the engine's overhead: a read, and a one-row
/// autocommit update (what each step record costs: a commit, so a WAL flush with fsync on).
struct Probe {
    read: Duration,
    write: Duration,
}

async fn probe(pool: &PgPool) -> anyhow::Result<Probe> {
    const N: usize = 200;
    sqlx::query("create table bench_probe (id int primary key, n int not null)").execute(pool).await?;
    sqlx::query("insert into bench_probe values (1, 0)").execute(pool).await?;
    let mut conn = pool.acquire().await?;
    let (mut reads, mut writes) = (Vec::with_capacity(N), Vec::with_capacity(N));
    for _ in 0..N {
        let t = Instant::now();
        sqlx::query("select 1").execute(&mut *conn).await?;
        reads.push(t.elapsed());
        let t = Instant::now();
        sqlx::query("update bench_probe set n = n + 1 where id = 1").execute(&mut *conn).await?;
        writes.push(t.elapsed());
    }
    drop(conn);
    sqlx::query("drop table bench_probe").execute(pool).await?;
    reads.sort_unstable();
    writes.sort_unstable();
    Ok(Probe { read: percentile(&reads, 0.5), write: percentile(&writes, 0.5) })
}

// ---------------------------------------------------------------------------------------------
// The fake step runner.

struct Latencies(HashMap<StepName, Duration>);

impl Latencies {
    fn new(scale: f64) -> Self {
        Self(DEFAULT_MS.iter().map(|(s, ms)| (*s, Duration::from_secs_f64(ms * scale / 1000.0))).collect())
    }
    fn get(&self, step: StepName) -> Duration {
        self.0.get(&step).copied().unwrap_or_default()
    }
    /// The same sum over any per-step durations: the first group in parallel, then the rest in order.
    fn path_of(f: impl Fn(StepName) -> Duration) -> Duration {
        let groups: Duration =
            RunKind::Deploy.plan().iter().map(|group| group.iter().map(|s| f(*s)).max().unwrap_or_default()).sum();
        groups + f(StepName::Report)
    }
    fn critical_path(&self) -> Duration {
        Self::path_of(|s| self.get(s))
    }
}

#[derive(Debug, Clone, Copy)]
struct Exec {
    count: u32,
    /// The engine whose fake executed it (the last one, should it have run twice).
    engine: usize,
    /// How long the sleep really took, from the async side (the thread's wake-up included).
    slept: Duration,
    started: Instant,
    ended: Instant,
}

#[derive(Debug, Clone, Copy)]
struct RunTrace {
    first_start: Instant,
    report_end: Option<Instant>,
}

#[derive(Default)]
struct LedgerInner {
    execs: HashMap<(RunId, StepName), Exec>,
    runs: HashMap<RunId, RunTrace>,
}

/// What every fake saw, shared by the fakes of every engine of one phase.
#[derive(Default)]
struct Ledger(Mutex<LedgerInner>);

impl Ledger {
    fn snapshot(&self) -> (HashMap<(RunId, StepName), Exec>, HashMap<RunId, RunTrace>) {
        let inner = self.0.lock().unwrap();
        (inner.execs.clone(), inner.runs.clone())
    }
}

/// Sleeps each step's latency and records the execution; one per engine, so executions are attributed.
struct Fake {
    engine: usize,
    latencies: Arc<Latencies>,
    ledger: Arc<Ledger>,
}

impl StepRunner for Fake {
    async fn run(&self, step: StepName, run: &RunContext) -> Result<StepOutcome, StepError> {
        let want = self.latencies.get(step);
        let started = Instant::now();
        {
            let mut ledger = self.ledger.0.lock().unwrap();
            let trace = ledger.runs.entry(run.run_id).or_insert(RunTrace { first_start: started, report_end: None });
            trace.first_start = trace.first_start.min(started);
        }
        // A thread's sleep ends within tens of microseconds of its deadline; a tokio timer rounds up to
        // the next millisecond tick and more, which over 7 steps in a row would be counted as the
        // engine's overhead. A real step's end (a socket becoming readable) is not tied to that tick.
        tokio::task::spawn_blocking(move || precise_sleep(want)).await.expect("the sleeping thread panicked");
        let ended = Instant::now();
        let slept = ended - started;
        {
            let mut ledger = self.ledger.0.lock().unwrap();
            let exec = ledger.execs.entry((run.run_id, step)).or_insert(Exec {
                count: 0,
                engine: self.engine,
                slept,
                started,
                ended,
            });
            exec.count += 1;
            exec.engine = self.engine;
            exec.slept = slept;
            exec.started = started;
            exec.ended = ended;
            if step == StepName::Report
                && let Some(trace) = ledger.runs.get_mut(&run.run_id)
            {
                trace.report_end = Some(ended);
            }
        }
        Ok(StepOutcome::done(json!({ "slept_ms": ms(slept) })))
    }
}

/// Sleeps the thread to just short of `d` (the kernel's timer slack is 50 µs), then spins to it.
fn precise_sleep(d: Duration) {
    let deadline = Instant::now() + d;
    std::thread::sleep(d.saturating_sub(Duration::from_micros(200)));
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

/// A task that is aborted when the bench bails out early, so no engine outlives its phase.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl AbortOnDrop {
    fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(Some(tokio::spawn(task)))
    }
    async fn join(mut self) -> Result<(), tokio::task::JoinError> {
        match self.0.take() {
            Some(handle) => handle.await,
            None => Ok(()),
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

fn settings(workers: usize, max_running: usize) -> EngineSettings {
    EngineSettings {
        workers,
        max_running: max_running as i64,
        lease: Duration::from_secs(30),
        heartbeat: Duration::from_secs(10),
        poll: Duration::from_millis(5),
        ..EngineSettings::default()
    }
}

/// An engine pool as `serve` opens one (`store::worker_pool`), connected up front so the first runs do not
/// pay for connection set-up.
async fn engine_pool(url: &str, size: u32) -> anyhow::Result<PgPool> {
    let pool = store::worker_pool(url, size)?;
    let mut conns = Vec::new();
    for _ in 0..size.min(8) {
        conns.push(pool.acquire().await?);
    }
    drop(conns);
    Ok(pool)
}

/// Empties every table but the migrations' own, between phases.
async fn reset(pool: &PgPool) -> anyhow::Result<()> {
    let tables: Vec<String> = sqlx::query_scalar(
        "select quote_ident(tablename) from pg_tables where schemaname = 'public' and tablename <> '_sqlx_migrations'",
    )
    .fetch_all(pool)
    .await?;
    sqlx::query(&format!("truncate {} restart identity cascade", tables.join(", "))).execute(pool).await?;
    Ok(())
}

/// Records a `pull_request` opened delivery for a new branch through intake, as the webhook handler
/// does; returns the queued run.
async fn queue_opened(pool: &PgPool, project: &ProjectName, phase: &str, index: usize) -> anyhow::Result<RunId> {
    let branch = BranchName::new(&format!("feature/{phase}-{index}"))?;
    let sha = CommitSha::new(&format!("{:040x}", 0xbe00_0000_u128 + index as u128))?;
    let pr = PullRequest { number: index as u64 + 1, branch, sha, updated_at: Utc::now(), fork: false };
    let event = Event::Deploy { pr, trigger: Trigger::Opened };
    let delivery_id = uuid::Uuid::new_v4().to_string();
    let body_sha256 = format!("{:064x}", index);
    let delivery = Delivery {
        forge: ForgeKind::Github,
        delivery_id: &delivery_id,
        project,
        event_name: "pull_request",
        body_sha256: &body_sha256,
        event: &event,
        strip_branch_prefix: false,
        forks: draftd::config::ForkPolicy::Deny,
        request_id: None,
        origin: draftd::store::intake::Origin::Webhook,
    };
    let recorded = intake::record(pool, &delivery).await?;
    recorded.run.ok_or_else(|| anyhow!("delivery {index} of {phase} queued no run: {}", recorded.response))
}

// ---------------------------------------------------------------------------------------------
// (a) Run overhead.

struct Single {
    wall: Duration,
    intake: Duration,
    pickup: Duration,
    /// `started_at - queued_at` by the database clock: from the intake statement to the claim that
    /// took the run (the worker is woken as the webhook handler wakes it, not left to its poll).
    claim_wait: Duration,
    steps: Duration,
    slept: Duration,
    finish: Duration,
    /// Per step after the first group: from the end of the step(s) before it to its start, i.e. one
    /// step boundary as the engine makes it (the database statement included).
    gaps: Vec<(StepName, Duration)>,
}

struct Overhead {
    runs: Vec<Single>,
    problems: Vec<String>,
}

async fn overhead(
    args: &Args,
    url: &str,
    pool: &PgPool,
    project: &ProjectName,
    latencies: &Arc<Latencies>,
) -> anyhow::Result<Overhead> {
    reset(pool).await?;
    let ledger = Arc::new(Ledger::default());
    let fake = Arc::new(Fake { engine: 0, latencies: latencies.clone(), ledger: ledger.clone() });
    let engine_pool = engine_pool(url, 8).await?;
    let wake = Wake::default();
    let engine =
        Arc::new(Engine::new(engine_pool.clone(), fake, settings(1, 8), "bench-overhead").with_wake(wake.clone()));
    let poll = settings(1, 8).poll;
    let waiting = wake.clone();

    // One worker, as `run_workers` drives it, but with each run's end reported as it happens.
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<Result<(RunId, RunEnd, Instant), String>>();
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let driver = AbortOnDrop::spawn(async move {
        while !*stop_rx.borrow() {
            match engine.run_one().await {
                Ok(Some((run, end))) => {
                    let _ = ended_tx.send(Ok((run, end, Instant::now())));
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = ended_tx.send(Err(e.to_string()));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = waiting.woken() => {}
                _ = stop_rx.changed() => {}
            }
        }
    });

    let deadline = latencies.critical_path() * 20 + Duration::from_secs(30);
    let mut measured = Vec::new();
    let mut problems = Vec::new();
    println!("(a) {} sequential runs (+1 warm-up), 1 worker, poll {poll:?}", args.runs);
    // Index 0 warms up caches and the engine's code paths; it is not counted.
    for i in 0..=args.runs {
        // A random idle gap, so arrivals are not phase-locked to the worker's poll sleep (queueing
        // right after the previous run ended would always land at the start of a 5 ms sleep).
        tokio::time::sleep(poll.mul_f64(3.0 * fastrand::f64())).await;
        let t0 = Instant::now();
        let run_id = queue_opened(pool, project, "single", i).await?;
        // As the webhook handler does once intake has queued a run.
        wake.wake();
        let recorded = Instant::now();
        let done = loop {
            match tokio::time::timeout(deadline, ended_rx.recv()).await {
                Err(_) => bail!("run {run_id} did not end within {deadline:?}"),
                Ok(None) => bail!("the engine's driver stopped"),
                Ok(Some(Err(e))) => bail!("the engine failed: {e}"),
                Ok(Some(Ok((id, end, at)))) if id == run_id => {
                    if end != RunEnd::Succeeded {
                        problems.push(format!("single run {run_id} ended {end:?}"));
                    }
                    break at;
                }
                Ok(Some(Ok((id, end, _)))) => problems.push(format!("unexpected run {id} ended {end:?}")),
            }
        };
        let (execs, traces) = ledger.snapshot();
        let trace = traces.get(&run_id).copied().ok_or_else(|| anyhow!("run {run_id} executed no step"))?;
        let report_end = trace.report_end.ok_or_else(|| anyhow!("run {run_id} never reported"))?;
        let slept = Latencies::path_of(|s| execs.get(&(run_id, s)).map(|e| e.slept).unwrap_or_default());
        let claim_wait: f64 =
            sqlx::query_scalar("select extract(epoch from started_at - queued_at)::float8 from runs where run_id = $1")
                .bind(run_id)
                .fetch_one(pool)
                .await?;
        let mut gaps = Vec::new();
        // Groups after the first, then the report: the gap before each is the engine's own time.
        let groups = RunKind::Deploy.plan();
        let later = groups[1..].iter().copied().chain(std::iter::once(&[StepName::Report][..]));
        let mut previous_end = groups[0].iter().filter_map(|s| execs.get(&(run_id, *s))).map(|e| e.ended).max();
        for group in later {
            let started = group.iter().filter_map(|s| execs.get(&(run_id, *s))).map(|e| e.started).min();
            if let (Some(end), Some(started)) = (previous_end, started) {
                gaps.push((group[0], started.saturating_duration_since(end)));
                previous_end = group.iter().filter_map(|s| execs.get(&(run_id, *s))).map(|e| e.ended).max();
            }
        }
        let single = Single {
            gaps,
            wall: done - t0,
            intake: recorded - t0,
            claim_wait: Duration::from_secs_f64(claim_wait.max(0.0)),
            pickup: trace.first_start.saturating_duration_since(t0),
            steps: report_end.saturating_duration_since(trace.first_start),
            slept,
            finish: done.saturating_duration_since(report_end),
        };
        if i > 0 {
            measured.push(single);
        }
    }
    stop_tx.send(true).ok();
    driver.join().await?;

    let (execs, _) = ledger.snapshot();
    let expected = args.runs + 1;
    for ((run, step), exec) in &execs {
        if exec.count != 1 {
            problems.push(format!("single run {run} step {} executed {} times", step.as_str(), exec.count));
        }
    }
    if execs.len() != expected * DEFAULT_MS.len() {
        problems.push(format!("{} step executions, expected {}", execs.len(), expected * DEFAULT_MS.len()));
    }
    let succeeded: i64 =
        sqlx::query_scalar("select count(*) from runs where state = 'succeeded'").fetch_one(pool).await?;
    if succeeded != expected as i64 {
        problems.push(format!("{succeeded} runs succeeded, expected {expected}"));
    }
    engine_pool.close().await;
    Ok(Overhead { runs: measured, problems })
}

// ---------------------------------------------------------------------------------------------
// (b) Burst.

struct Burst {
    engines: usize,
    workers_each: usize,
    queued: usize,
    queue_wall: Duration,
    /// First `queued_at` to last `finished_at`, by the database clock.
    drain: Duration,
    /// First intake call to the poll that found every run ended, by this process's clock.
    drain_wall: Duration,
    ideal: Duration,
    first_pickup: Duration,
    states: BTreeMap<String, i64>,
    leases_left: i64,
    step_rows: i64,
    step_retries: i64,
    per_engine: Vec<usize>,
    max_in_flight: usize,
    span_p50: Duration,
    span_p90: Duration,
    slept_p50: Duration,
    /// Share of worker-slot time (concurrency x drain) spent inside runs, first step to report end.
    busy: f64,
    problems: Vec<String>,
}

async fn burst(
    args: &Args,
    url: &str,
    pool: &PgPool,
    project: &ProjectName,
    latencies: &Arc<Latencies>,
    engines: usize,
) -> anyhow::Result<Burst> {
    reset(pool).await?;
    let n = args.burst;
    let workers_each = args.concurrency.div_ceil(engines);
    let ledger = Arc::new(Ledger::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut pools = Vec::new();
    let mut handles = Vec::new();
    let mut wakes = Vec::new();
    for e in 0..engines {
        // Three concurrent steps per run, a heartbeat, and room for the claim.
        let p = engine_pool(url, (workers_each * 4 + 4) as u32).await?;
        let fake = Arc::new(Fake { engine: e, latencies: latencies.clone(), ledger: ledger.clone() });
        let wake = Wake::default();
        let engine = Arc::new(
            Engine::new(
                p.clone(),
                fake,
                settings(workers_each, args.concurrency),
                format!("bench-burst-{engines}x-{e}"),
            )
            .with_wake(wake.clone()),
        );
        handles.push(AbortOnDrop::spawn(engine.run_workers(stop_rx.clone())));
        wakes.push(wake);
        pools.push(p);
    }
    let phase = format!("burst{engines}");
    println!(
        "(b) burst of {n} opened PRs, {engines} engine(s) x {workers_each} workers, max_running {}, {SENDERS} senders",
        args.concurrency
    );

    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for sender in 0..SENDERS.min(n) {
        let (pool, project, phase, next) = (pool.clone(), project.clone(), phase.clone(), next.clone());
        // Each replica's webhook handler wakes its own workers: senders are spread over the engines.
        let wake: Wake = wakes[sender % engines].clone();
        senders.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(ids);
                }
                ids.push(queue_opened(&pool, &project, &phase, i).await?);
                wake.wake();
            }
        }));
    }
    let mut run_ids = Vec::with_capacity(n);
    for s in senders {
        run_ids.extend(s.await??);
    }
    let queue_wall = t0.elapsed();

    let ideal = latencies.critical_path().mul_f64(n as f64 / args.concurrency as f64);
    let deadline = ideal * 3 + Duration::from_secs(60);
    loop {
        let open: i64 = sqlx::query_scalar("select count(*) from runs where state in ('queued', 'running')")
            .fetch_one(pool)
            .await?;
        if open == 0 {
            break;
        }
        if t0.elapsed() > deadline {
            stop_tx.send(true).ok();
            bail!("{open} runs still open after {deadline:?}");
        }
        tokio::time::sleep(DONE_POLL).await;
    }
    let drain_wall = t0.elapsed();
    stop_tx.send(true).ok();
    for h in handles {
        h.join().await?;
    }
    for p in pools {
        p.close().await;
    }

    let (drain, first_pickup): (f64, f64) = sqlx::query_as(
        "select extract(epoch from max(finished_at) - min(queued_at))::float8,
                extract(epoch from min(started_at) - min(queued_at))::float8 from runs",
    )
    .fetch_one(pool)
    .await?;
    let states: BTreeMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("select state, count(*) from runs group by state")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    let leases_left: i64 =
        sqlx::query_scalar("select count(*) from runs where lease_owner is not null or lease_expires_at is not null")
            .fetch_one(pool)
            .await?;
    let (step_rows, step_retries, steps_not_succeeded): (i64, i64, i64) = sqlx::query_as(
        "select count(*), count(*) filter (where attempt <> 1), count(*) filter (where state <> 'succeeded')
         from steps",
    )
    .fetch_one(pool)
    .await?;
    let attempts_over_one: i64 =
        sqlx::query_scalar("select count(*) from runs where attempt <> 1").fetch_one(pool).await?;

    let (execs, traces) = ledger.snapshot();
    let mut problems = Vec::new();
    let queued: HashSet<RunId> = run_ids.iter().copied().collect();
    if queued.len() != n {
        problems.push(format!("{} distinct runs queued for {n} deliveries", queued.len()));
    }
    if states.get("succeeded").copied().unwrap_or(0) != n as i64 || states.len() != 1 {
        problems.push(format!("runs by state {states:?}, expected {{succeeded: {n}}}"));
    }
    if leases_left != 0 {
        problems.push(format!("{leases_left} runs still hold a lease"));
    }
    if step_rows != (n * DEFAULT_MS.len()) as i64 || step_retries != 0 || steps_not_succeeded != 0 {
        problems.push(format!(
            "{step_rows} step rows (expected {}), {step_retries} retried, {steps_not_succeeded} not succeeded",
            n * DEFAULT_MS.len()
        ));
    }
    if attempts_over_one != 0 {
        problems.push(format!("{attempts_over_one} runs were claimed more than once"));
    }
    let mut engine_of: HashMap<RunId, HashSet<usize>> = HashMap::new();
    for ((run, step), exec) in &execs {
        if exec.count != 1 {
            problems.push(format!("run {run} step {} executed {} times", step.as_str(), exec.count));
        }
        if !queued.contains(run) {
            problems.push(format!("run {run} was executed but not queued by this burst"));
        }
        engine_of.entry(*run).or_default().insert(exec.engine);
    }
    for run in &queued {
        for (step, _) in DEFAULT_MS {
            if !execs.contains_key(&(*run, step)) {
                problems.push(format!("run {run} step {} never executed", step.as_str()));
            }
        }
    }
    let mut per_engine = vec![0; engines];
    for (run, set) in &engine_of {
        if set.len() != 1 {
            problems.push(format!("run {run} was driven by engines {set:?}"));
        }
        for e in set {
            per_engine[*e] += 1;
        }
    }
    problems.truncate(20);

    // Runs in flight at once, from the fakes' view (first step start to report end).
    let mut edges: Vec<(Instant, i32)> = Vec::new();
    let mut spans = Vec::new();
    let mut slept = Vec::new();
    for (run, t) in &traces {
        if let Some(end) = t.report_end {
            edges.push((t.first_start, 1));
            edges.push((end, -1));
            spans.push(end - t.first_start);
            slept.push(Latencies::path_of(|s| execs.get(&(*run, s)).map(|e| e.slept).unwrap_or_default()));
        }
    }
    edges.sort_by_key(|(at, delta)| (*at, *delta));
    let (mut now, mut max_in_flight) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        max_in_flight = max_in_flight.max(now);
    }
    if max_in_flight as usize > args.concurrency {
        problems.push(format!("{max_in_flight} runs in flight at once, above max_running {}", args.concurrency));
    }
    spans.sort_unstable();
    slept.sort_unstable();
    let drain = Duration::from_secs_f64(drain.max(0.0));
    let busy = spans.iter().sum::<Duration>().as_secs_f64() / (drain.as_secs_f64() * args.concurrency as f64);

    Ok(Burst {
        engines,
        workers_each,
        queued: run_ids.len(),
        queue_wall,
        drain,
        drain_wall,
        ideal,
        first_pickup: Duration::from_secs_f64(first_pickup.max(0.0)),
        states,
        leases_left,
        step_rows,
        step_retries,
        per_engine,
        max_in_flight: max_in_flight as usize,
        span_p50: percentile(&spans, 0.50),
        span_p90: percentile(&spans, 0.90),
        slept_p50: percentile(&slept, 0.50),
        busy,
        problems,
    })
}

// ---------------------------------------------------------------------------------------------
// Summary.

/// The summary block, then an error when anything was lost or duplicated (so the exit code says so).
fn summary(args: &Args, latencies: &Latencies, probe: &Probe, a: &Overhead, bursts: &[Burst]) -> anyhow::Result<()> {
    let critical = latencies.critical_path();
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let line = |label: &str, value: String| println!("{:<40}{value}", format!("{label}:"));
    let sorted = |f: &dyn Fn(&Single) -> Duration| {
        let mut v: Vec<Duration> = a.runs.iter().map(f).collect();
        v.sort_unstable();
        v
    };
    let pct = |v: &[Duration]| format!("p50 {:.1} ms, p90 {:.1} ms", ms(percentile(v, 0.5)), ms(percentile(v, 0.9)));
    let ratio_pct = |f: &dyn Fn(&Single) -> f64| {
        let mut v: Vec<f64> = a.runs.iter().map(f).collect();
        v.sort_unstable_by(f64::total_cmp);
        move |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
    };
    let ratio_at = ratio_pct(&|r| r.wall.as_secs_f64() / critical.as_secs_f64());
    // The fake's timer overshoot is not the engine's: a real step does not end on a tokio timer tick.
    let net_at = ratio_pct(&|r| {
        (r.wall.saturating_sub(r.slept.saturating_sub(critical))).as_secs_f64() / critical.as_secs_f64()
    });
    let wall = sorted(&|r| r.wall);
    let between = sorted(&|r| r.steps.saturating_sub(r.slept));
    let overshoot = sorted(&|r| r.slept.saturating_sub(critical));

    println!();
    println!("== draftd run engine benchmark ==");
    line("fake step latencies", format!("x{} of the defaults; critical path {:.1} ms", args.scale, ms(critical)));
    line(
        "db round trip p50",
        format!("read {:.2} ms, autocommit 1-row update {:.2} ms", ms(probe.read), ms(probe.write)),
    );
    println!("-- (a) run overhead: {} sequential runs, 1 worker, woken on queue --", a.runs.len());
    line("wall (intake call -> succeeded)", format!("{}, max {:.1} ms", pct(&wall), ms(*wall.last().unwrap())));
    line(
        "wall / critical path",
        format!("p50 {:.3}, p90 {:.3}, max {:.3}", ratio_at(0.5), ratio_at(0.9), ratio_at(1.0)),
    );
    line(&format!("goal (p50 and p90 <= {RATIO_GOAL_SINGLE})"), met(ratio_at(0.9) <= RATIO_GOAL_SINGLE).into());
    line("  same, net of fake timer overshoot", format!("p50 {:.3}, p90 {:.3}", net_at(0.5), net_at(0.9)));
    line("  intake call (record)", pct(&sorted(&|r| r.intake)));
    line("  pickup (queue -> first step)", pct(&sorted(&|r| r.pickup)));
    line("    queued_at -> claim tx start (db)", pct(&sorted(&|r| r.claim_wait)));
    line("  steps (first step -> report end)", pct(&sorted(&|r| r.steps)));
    line("    timer overshoot (slept - nominal)", pct(&overshoot));
    line("    engine + db between steps", pct(&between));
    let gaps: Vec<String> = RunKind::Deploy.plan()[1..]
        .iter()
        .map(|group| group[0])
        .chain(std::iter::once(StepName::Report))
        .map(|step| {
            let v = sorted(&|r| r.gaps.iter().find(|(s, _)| *s == step).map(|(_, d)| *d).unwrap_or_default());
            format!("{} {:.2}", step.as_str(), ms(percentile(&v, 0.5)))
        })
        .collect();
    line("      boundary before each step, p50 ms", gaps.join(", "));
    line("  finish (report end -> run ended)", pct(&sorted(&|r| r.finish)));
    line("  overhead total (wall - critical)", pct(&sorted(&|r| r.wall.saturating_sub(critical))));
    line("problems", if a.problems.is_empty() { "none".into() } else { a.problems.join("; ") });

    for b in bursts {
        let ratio = b.drain.as_secs_f64() / b.ideal.as_secs_f64();
        println!(
            "-- (b) burst: {} runs, {} engine(s) x {} workers, max_running {} --",
            b.queued, b.engines, b.workers_each, args.concurrency
        );
        line(
            "queueing (intake, 16 senders)",
            format!("{:.0} ms ({:.0}/s)", ms(b.queue_wall), b.queued as f64 / b.queue_wall.as_secs_f64()),
        );
        line(
            "drain (first queued -> last finished)",
            format!("{:.0} ms (wall, 5 ms poll: {:.0} ms)", ms(b.drain), ms(b.drain_wall)),
        );
        let waves = critical * b.queued.div_ceil(args.concurrency) as u32;
        line(&format!("ideal ({} / {} x critical)", b.queued, args.concurrency), format!("{:.0} ms", ms(b.ideal)));
        line("drain / ideal", format!("{ratio:.3}"));
        if waves != b.ideal {
            line(
                "  vs whole waves (ceil(n/c) x critical)",
                format!("{:.3} ({:.0} ms)", b.drain.as_secs_f64() / waves.as_secs_f64(), ms(waves)),
            );
        }
        line(&format!("goal (<= {RATIO_GOAL_BURST})"), met(ratio <= RATIO_GOAL_BURST).into());
        line(
            "throughput",
            format!(
                "{:.1} runs/s (ideal {:.1})",
                b.queued as f64 / b.drain.as_secs_f64(),
                b.queued as f64 / b.ideal.as_secs_f64()
            ),
        );
        line("first pickup after first queue", format!("{:.1} ms", ms(b.first_pickup)));
        line(
            "run span (first step -> report end)",
            format!("p50 {:.1} ms, p90 {:.1} ms (slept p50 {:.1} ms)", ms(b.span_p50), ms(b.span_p90), ms(b.slept_p50)),
        );
        line("worker slots busy in steps", format!("{:.1}%", b.busy * 100.0));
        line("max runs in flight", format!("{} (max_running {})", b.max_in_flight, args.concurrency));
        line("runs by state", format!("{:?}", b.states));
        line("runs per engine", format!("{:?}", b.per_engine));
        line("step rows", format!("{} ({} with attempt <> 1)", b.step_rows, b.step_retries));
        line("leases left", b.leases_left.to_string());
        line(
            "lost / duplicated",
            if b.problems.is_empty() { "none (every run and step exactly once)".into() } else { b.problems.join("; ") },
        );
    }

    let problems = a.problems.len() + bursts.iter().map(|b| b.problems.len()).sum::<usize>();
    if problems > 0 {
        bail!("{problems} correctness problems (see above)");
    }
    Ok(())
}
