//! The image step's wait against a real registry: Debian's docker-registry (CNCF distribution) on
//! loopback, started by the test harness (tests/support/registry.rs), with the library's `Engine` over
//! `DryRunSteps` (real helm for `helm template`, nothing applied) on a fresh database. Runs are queued
//! through `store::intake::record`, as a webhook queues an opened PR for a new branch, one branch (so
//! one tag) per stand.
//!
//! Run by `scripts/bench-image.sh [--waits N] [--concurrency N] [--spread F] [--stands K] [--minute D]
//! [--steady D] [--only latency|requests] [--out PATH]`.
//!
//! (1) The wait's added latency, for three `[registry]` poll settings side by side (defaults 2s/15s,
//!     fast 500ms/2s, slow 5s/30s), N waits each, `--concurrency` stands of each setting waiting at
//!     once. One wait: queue a deploy run; once the image step records `waiting_for` (it does so after
//!     its first look missed), sleep a delay drawn uniformly from [0, spread × poll_max) so the push
//!     lands at a random phase of the backoff (the ramp of doubling pauses and the steady pauses of
//!     poll_max both get sampled); push the image (the harness's blob uploads and manifest PUT); then
//!     `pushed` = `chrono::Utc::now()` as `push_image` returns, i.e. just after the registry answered the
//!     manifest PUT with 201, so the tag is visible. The latency is the image step's `steps.finished_at`
//!     minus `pushed`. `finished_at` is Postgres's `now()` of the one statement that records the step's
//!     end (the step boundary that starts `deploy`), issued as soon as the look that found the tag
//!     returned: the earliest moment the step is recorded succeeded, with microsecond resolution and no
//!     dependence on how often this bench polls the database. Both clocks are the host's realtime
//!     clock when Postgres is local; the offset between them is measured and printed.
//!     A Monte Carlo model of the same backoff (pause `poll`, doubled up to `poll_max`, ×U(0.8, 1.2)
//!     each) with the same delay distribution is printed beside the measurements, and the part of
//!     each latency that is not the backoff's: from the look that found the tag to the recorded end
//!     (`finished_at - started_at` less the step's own `waited_seconds`).
//! (2) Registry requests per waiting stand: K stands per auth mode (none, htpasswd, token; one registry
//!     each, all three at once) wait at the default settings for an image that is never pushed.
//!     Counted: the requests the registry answered for anyone but the harness (its access log) and the
//!     tokens its token server issued, from the start until `--minute` after the stands' first looks
//!     (the median of the `since` each step recorded), then over `--steady` more, when every stand's
//!     pause is poll_max. Reported per stand per minute, beside the backoff's figures.
//!
//! Writes the figures as JSON to `$CARGO_TARGET_DIR/artifacts/bench-image.json` (or `--out`).

#[path = "support/mod.rs"]
mod support;

// The test suite's registry harness, as is; this bench uses only part of it.
#[allow(dead_code)]
#[path = "../tests/support/registry.rs"]
mod registry;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Utc};
use draftd::config::{Config, ForgeKind, RegistryConfig};
use draftd::forge::{Event, PullRequest, Trigger};
use draftd::helm::HelmCli;
use draftd::pipeline::image::Registries;
use draftd::pipeline::steps::DryRunSteps;
use draftd::pipeline::{Engine, EngineSettings, Wake};
use draftd::stand::{BranchName, CommitSha, ProjectName, RunId};
use draftd::store::intake::{self, Delivery};
use draftd::store::{self, MIGRATOR};
use registry::{DOCKER_REGISTRY, Registry as TestRegistry, RegistryAuth};
use serde_json::{Value, json};
use sqlx::PgPool;
use support::{ms, percentile};
use tokio::sync::watch;

const USAGE: &str = "usage: scripts/bench-image.sh [--waits N] [--concurrency N] [--spread F] [--stands K] [--minute D] [--steady D] [--only latency|requests] [--out PATH]
  --waits N         waits measured per poll setting (default 50)
  --concurrency N   stands of each poll setting waiting at once (default 16)
  --spread F        the push comes U(0, F x poll_max) after the step says it waits (default 2)
  --stands K        stands waiting per auth mode in the request count (default 10)
  --minute D        the first window of the request count, e.g. 60s (default 60s)
  --steady D        the window after it, every pause at poll_max (default 60s; 0s skips it)
  --only WHAT       latency (part 1) or requests (part 2) only
  --out PATH        the JSON report (default $CARGO_TARGET_DIR/artifacts/bench-image.json)
  --seed N          the seed of the pushes' delays (default: a random one, printed)";

/// The image's repository in every registry.
const REPO: &str = "bench/shop";
/// The image step waits this long before it fails the run: longer than anything here.
const STEP_WAIT: &str = "15m";
/// From queueing a run until its image step says it is waiting (claim, the first group of steps, one look).
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// After the image is found: deploy (`helm template`), the dry-run steps after it and the report.
const FINISH_TIMEOUT: Duration = Duration::from_secs(90);
/// How often this bench reads a run's state (never part of a measured figure).
const STATE_POLL: Duration = Duration::from_millis(50);
const END_POLL: Duration = Duration::from_millis(250);
/// Samples of the Monte Carlo model of the backoff.
const MODEL_SAMPLES: usize = 200_000;

/// A `[registry]` poll setting measured in part 1.
struct Setting {
    key: &'static str,
    poll: Duration,
    poll_max: Duration,
}

static SETTINGS: [Setting; 3] = [
    Setting { key: "defaults", poll: DEFAULT_POLL, poll_max: DEFAULT_POLL_MAX },
    Setting { key: "fast", poll: Duration::from_millis(500), poll_max: Duration::from_secs(2) },
    Setting { key: "slow", poll: Duration::from_secs(5), poll_max: Duration::from_secs(30) },
];

/// The defaults of `[registry]` (src/config/registry.rs), which part 2 runs with; checked at start.
const DEFAULT_POLL: Duration = Duration::from_secs(2);
const DEFAULT_POLL_MAX: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Only {
    Both,
    Latency,
    Requests,
}

struct Args {
    waits: usize,
    concurrency: usize,
    spread: f64,
    stands: usize,
    minute: Duration,
    steady: Duration,
    only: Only,
    out: Option<PathBuf>,
    seed: u64,
}

fn parse() -> anyhow::Result<Args> {
    let mut flags = support::Flags::new(USAGE);
    let mut args = Args {
        waits: 50,
        concurrency: 16,
        spread: 2.0,
        stands: 10,
        minute: Duration::from_secs(60),
        steady: Duration::from_secs(60),
        only: Only::Both,
        out: None,
        seed: fastrand::u64(..),
    };
    let duration = |flags: &mut support::Flags, name: &str| -> anyhow::Result<Duration> {
        let v = flags.value(name)?;
        humantime::parse_duration(&v).map_err(|e| anyhow!("{name}: {v:?} is not a duration ({e})\n{USAGE}"))
    };
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--waits" => args.waits = flags.whole(&flag)?,
            "--concurrency" => args.concurrency = flags.whole(&flag)?,
            "--spread" => {
                let v = flags.value(&flag)?;
                args.spread = v.parse().map_err(|_| anyhow!("--spread: {v:?} is not a number\n{USAGE}"))?;
            }
            "--stands" => args.stands = flags.whole(&flag)?,
            "--minute" => args.minute = duration(&mut flags, &flag)?,
            "--steady" => args.steady = duration(&mut flags, &flag)?,
            "--only" => {
                args.only = match flags.value(&flag)?.as_str() {
                    "latency" => Only::Latency,
                    "requests" => Only::Requests,
                    other => bail!("--only: {other:?} is neither latency nor requests\n{USAGE}"),
                }
            }
            "--out" => args.out = Some(PathBuf::from(flags.value(&flag)?)),
            "--seed" => args.seed = flags.whole(&flag)?,
            other => return Err(flags.unknown(other)),
        }
    }
    if args.waits == 0 || args.concurrency == 0 || args.stands == 0 {
        bail!("--waits, --concurrency and --stands must be at least 1\n{USAGE}");
    }
    if !(args.spread.is_finite() && args.spread >= 0.0) {
        bail!("--spread must be a non-negative number\n{USAGE}");
    }
    if args.minute.is_zero() {
        bail!("--minute must be longer than zero\n{USAGE}");
    }
    Ok(args)
}

fn main() -> ExitCode {
    support::main_with(parse, bench)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Creates the database, runs both parts, and drops the database however they ended.
async fn bench(args: Args) -> anyhow::Result<()> {
    let defaults = RegistryConfig::default();
    if (defaults.poll, defaults.poll_max) != (DEFAULT_POLL, DEFAULT_POLL_MAX) {
        bail!(
            "[registry]'s defaults are now poll {:?}, poll_max {:?}: update DEFAULT_POLL and DEFAULT_POLL_MAX in benches/image.rs",
            defaults.poll,
            defaults.poll_max
        );
    }
    if !Path::new(DOCKER_REGISTRY).is_file() {
        bail!("{DOCKER_REGISTRY} is missing: run scripts/install-registry.sh (scripts/bench-image.sh does)");
    }
    let helm = root().join(".tools/bin/helm");
    if !helm.is_file() {
        bail!("{} is missing: run scripts/install-tools.sh (scripts/bench-image.sh does)", helm.display());
    }
    support::in_fresh_database(
        "draftd_benchimage",
        "scripts/bench-image.sh",
        |url| async move { run(&args, &url).await },
    )
    .await
}

/// The auth modes of part 2.
const MODES: [&str; 3] = ["none", "htpasswd", "token"];

fn auth_of(mode: &str) -> RegistryAuth {
    match mode {
        "htpasswd" => RegistryAuth::htpasswd(),
        "token" => RegistryAuth::token(),
        _ => RegistryAuth::None,
    }
}

/// A registry from the harness, whose failures are panics (with the registry's log): an error here.
async fn start_registry(auth: RegistryAuth) -> anyhow::Result<TestRegistry> {
    let what = format!("{auth:?}");
    tokio::spawn(TestRegistry::start(auth))
        .await
        .map_err(|e| anyhow!("starting a docker-registry ({what}): {}", panic_message(e)))
}

/// What a task's panic said.
fn panic_message(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".into())
}

/// The engine's workers: aborted when dropped, so no run outlives the bench's database.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Everything the waits share.
struct Ctx {
    pool: PgPool,
    wake: Wake,
    /// Part 1's registry (anonymous), which every poll setting's project looks in.
    latency_registry: Option<TestRegistry>,
    /// Part 2's registries, in [`MODES`] order.
    request_registries: Vec<TestRegistry>,
    /// PR numbers and SHAs: unique across the whole bench.
    next_pr: AtomicUsize,
    spread: f64,
    /// The pushes' delays: one seeded stream for the whole bench, so a run can be repeated.
    delays: std::sync::Mutex<fastrand::Rng>,
}

async fn run(args: &Args, url: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let work = tempfile::Builder::new().prefix("draftd-bench-image-").tempdir()?;
    let latency_registry = match args.only {
        Only::Requests => None,
        _ => Some(start_registry(RegistryAuth::None).await?),
    };
    let mut request_registries = Vec::new();
    if args.only != Only::Latency {
        for mode in MODES {
            request_registries.push(start_registry(auth_of(mode)).await?);
        }
    }
    let toml = config_toml(work.path(), latency_registry.as_ref(), &request_registries)?;
    let config = Arc::new(Config::from_toml(&toml).context("the bench's configuration")?);

    let in_flight = match args.only {
        Only::Latency => SETTINGS.len() * args.concurrency,
        Only::Requests => MODES.len() * args.stands,
        Only::Both => (SETTINGS.len() * args.concurrency).max(MODES.len() * args.stands),
    };
    // The engine's pool, as `serve` opens its workers' (`store::worker_pool`); the bench's own reads
    // and intake calls go through another, so they never hold up the engine's step records.
    let pool = store::worker_pool(url, 24)?;
    let bench_pool = store::worker_pool(url, 8)?;
    MIGRATOR.run(&pool).await.context("migrating the bench database")?;
    let environment = environment(&pool).await?;
    println!(
        "postgres {} on {}; docker-registry {}; {} CPUs; database clock minus this process's: {:+.2} ms",
        environment["postgres"].as_str().unwrap_or("?"),
        environment["database_host"].as_str().unwrap_or("?"),
        environment["docker_registry"].as_str().unwrap_or("?"),
        environment["cpus"],
        environment["clock_offset_ms"].as_f64().unwrap_or(f64::NAN),
    );
    if environment["clock_offset_ms"].as_f64().is_some_and(|o| o.abs() > 20.0) {
        eprintln!("warning: the database's clock is off this process's by more than 20 ms: latencies carry that error");
    }

    let helm = HelmCli::from_config(&config.cluster, &root()).context("helm for the dry-run deploy")?;
    let registries = Arc::new(Registries::from_config(&config).context("the projects' registry clients")?);
    let steps = DryRunSteps::new(pool.clone(), config.clone(), Arc::new(helm)).with_registries(Some(registries));
    let slots = in_flight + 2;
    // Production's engine settings (poll 500 ms: idle workers' look for runs and the image step's
    // look for newer pushes), with room for every stand the bench keeps waiting at once.
    let settings = EngineSettings { workers: slots, max_running: slots as i64, ..EngineSettings::default() };
    let wake = Wake::default();
    let engine = Arc::new(Engine::new(pool.clone(), Arc::new(steps), settings, "bench-image").with_wake(wake.clone()));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Aborted on every way out of here, an early error or Ctrl-C included, before the database goes.
    let mut workers = AbortOnDrop(tokio::spawn(engine.run_workers(shutdown_rx)));

    let ctx = Arc::new(Ctx {
        pool: bench_pool.clone(),
        wake,
        latency_registry,
        request_registries,
        next_pr: AtomicUsize::new(0),
        spread: args.spread,
        delays: std::sync::Mutex::new(fastrand::Rng::with_seed(args.seed)),
    });
    let outcome = async {
        let latency = match args.only {
            Only::Requests => None,
            _ => Some(latency_part(args, &ctx).await?),
        };
        let requests = match args.only {
            Only::Latency => None,
            _ => Some(requests_part(args, &ctx).await?),
        };
        anyhow::Ok((latency, requests))
    }
    .await;
    // Stands still waiting (part 2's) are dropped with their workers; the database goes after.
    let _ = shutdown_tx.send(true);
    workers.0.abort();
    let _ = (&mut workers.0).await;
    let (latency, requests) = outcome?;

    let report = json!({
        "bench": "image",
        "at": Utc::now(),
        "took_seconds": started.elapsed().as_secs_f64(),
        "args": {
            "waits": args.waits,
            "concurrency": args.concurrency,
            "spread": args.spread,
            "seed": args.seed,
            "stands": args.stands,
            "minute_seconds": args.minute.as_secs_f64(),
            "steady_seconds": args.steady.as_secs_f64(),
        },
        "environment": environment,
        "latency": latency.as_ref().map(|l| l.json.clone()),
        "requests": requests.as_ref().map(|r| r.json.clone()),
    });
    if let Some(l) = &latency {
        println!("\n{}", l.table);
    }
    if let Some(r) = &requests {
        println!("\n{}", r.table);
    }
    let out = match &args.out {
        Some(p) => p.clone(),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("target"))
            .join("artifacts/bench-image.json"),
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?).with_context(|| format!("writing {}", out.display()))?;
    println!("\nJSON: {}  (bench took {:.0} s)", out.display(), started.elapsed().as_secs_f64());
    drop(ctx);
    bench_pool.close().await;
    pool.close().await;
    Ok(())
}

/// Server version, where it runs, the docker-registry version, CPUs, and the database clock's offset
/// from this process's (`clock_timestamp()` against the midpoint of the round trip; best of 20).
async fn environment(pool: &PgPool) -> anyhow::Result<Value> {
    let server: String = sqlx::query_scalar("select current_setting('server_version')").fetch_one(pool).await?;
    let host: Option<String> = sqlx::query_scalar("select host(inet_server_addr())").fetch_one(pool).await?;
    let mut best: Option<(chrono::TimeDelta, f64)> = None;
    for _ in 0..20 {
        let before = Utc::now();
        let db: DateTime<Utc> = sqlx::query_scalar("select clock_timestamp()").fetch_one(pool).await?;
        let after = Utc::now();
        let rtt = after - before;
        let offset = (db - (before + rtt / 2)).num_microseconds().unwrap_or(0) as f64 / 1000.0;
        if best.is_none_or(|(r, _)| rtt < r) {
            best = Some((rtt, offset));
        }
    }
    let registry_version = std::process::Command::new(DOCKER_REGISTRY)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    Ok(json!({
        "postgres": server,
        "database_host": host.unwrap_or_else(|| "a Unix socket".into()),
        "docker_registry": registry_version,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "clock_offset_ms": best.map(|(_, o)| o),
    }))
}

/// One project per poll setting (part 1) and per auth mode (part 2), each with its own `registry`.
fn config_toml(work: &Path, latency: Option<&TestRegistry>, requests: &[TestRegistry]) -> anyhow::Result<String> {
    let mut toml = format!(
        "[cluster]\nmode = \"dry-run\"\ndry_run_dir = \"{}\"\nhelm_path = \"{}\"\n",
        work.join("stands").display(),
        root().join(".tools/bin/helm").display(),
    );
    let project = |name: &str, registry: &TestRegistry, extra: &str| {
        format!(
            r#"
[[projects]]
name = "{name}"
forge = "github"
repo = "bench/{name}"
webhook_secret_env = "BENCH_IMAGE_UNUSED"
image = "{host}/{REPO}"
chart = "{root}/charts/stand"
values = ["{root}/values/draft.yaml"]

[projects.registry]
insecure = true
wait = "{STEP_WAIT}"
{extra}"#,
            host = registry.host(),
            root = root().display(),
        )
    };
    if let Some(registry) = latency {
        for s in &SETTINGS {
            let extra = format!(
                "poll = \"{}\"\npoll_max = \"{}\"\n",
                humantime::format_duration(s.poll),
                humantime::format_duration(s.poll_max)
            );
            toml.push_str(&project(&format!("lat-{}", s.key), registry, &extra));
        }
    }
    for (mode, registry) in MODES.iter().zip(requests) {
        // Default poll and poll_max; the login from a file, as tests/it/image.rs gives it.
        let mut extra = String::new();
        if let Some((user, password)) = registry.auth().credentials() {
            let file = work.join(format!("registry-password-{mode}"));
            std::fs::write(&file, password)?;
            extra = format!("username = \"{user}\"\npassword_file = \"{}\"\n", file.display());
        }
        toml.push_str(&project(&format!("req-{mode}"), registry, &extra));
    }
    Ok(toml)
}

impl Ctx {
    /// Records a `pull_request` opened delivery for a new branch of `project` through intake, as the
    /// webhook handler does, and wakes a worker; returns the queued run.
    async fn queue(&self, project: &str, branch: &str) -> anyhow::Result<RunId> {
        let n = self.next_pr.fetch_add(1, Ordering::SeqCst) + 1;
        let project = ProjectName::new(project)?;
        let branch = BranchName::new(branch)?;
        let sha = CommitSha::new(&format!("{:040x}", 0x1ace_0000_u128 + n as u128))?;
        let pr = PullRequest { number: n as u64, branch, sha, updated_at: Utc::now(), fork: false };
        let event = Event::Deploy { pr, trigger: Trigger::Opened };
        let delivery_id = uuid::Uuid::new_v4().to_string();
        let body_sha256 = format!("{n:064x}");
        let delivery = Delivery {
            forge: ForgeKind::Github,
            delivery_id: &delivery_id,
            project: &project,
            event_name: "pull_request",
            body_sha256: &body_sha256,
            event: &event,
            strip_branch_prefix: false,
            forks: draftd::config::ForkPolicy::Deny,
            request_id: None,
            origin: draftd::store::intake::Origin::Webhook,
        };
        let recorded = intake::record(&self.pool, &delivery).await?;
        let run =
            recorded.run.ok_or_else(|| anyhow!("the delivery for {project} queued no run: {}", recorded.response))?;
        self.wake.wake();
        Ok(run)
    }
}

/// What the image step of `run` says while it waits: the tag it looks for and when it began.
struct Waiting {
    tag: String,
    since: DateTime<Utc>,
}

/// Until `run`'s image step records `waiting_for`; fails when the run ends first or `SETUP_TIMEOUT` passes.
async fn until_waiting(pool: &PgPool, run: RunId) -> anyhow::Result<Waiting> {
    let started = Instant::now();
    loop {
        let row: (String, Option<Value>, Option<String>, Option<Value>) = sqlx::query_as(
            "select r.state, r.error, s.state, s.detail
             from runs r left join steps s on s.run_id = r.run_id and s.name = 'image' where r.run_id = $1",
        )
        .bind(run)
        .fetch_one(pool)
        .await?;
        let (run_state, run_error, step_state, detail) = row;
        if let (Some("running"), Some(detail)) = (step_state.as_deref(), &detail)
            && let (Some(image), Some(since)) = (detail["waiting_for"].as_str(), detail["since"].as_str())
        {
            let tag = image.rsplit_once(':').map(|(_, t)| t.to_owned()).context("waiting_for without a tag")?;
            let since = DateTime::parse_from_rfc3339(since)?.with_timezone(&Utc);
            return Ok(Waiting { tag, since });
        }
        if run_state != "queued" && run_state != "running" {
            bail!("run {run} ended {run_state} before its image step waited: {}", run_error.unwrap_or(Value::Null));
        }
        if started.elapsed() > SETUP_TIMEOUT {
            bail!(
                "run {run} did not reach a waiting image step within {SETUP_TIMEOUT:?} (run {run_state}, image step {})",
                step_state.as_deref().unwrap_or("not started")
            );
        }
        tokio::time::sleep(STATE_POLL).await;
    }
}

/// The image step of `run` as recorded once the run has ended (it must have succeeded).
struct Found {
    finished_at: DateTime<Utc>,
    looks: i64,
    /// `finished_at - started_at - waited_seconds`: from the look that found the tag (as the step's
    /// own timer puts it) to the record of the step's end, i.e. the share of the latency that is not
    /// the backoff's. An upper bound: the step's timer starts only once the boundary statement that
    /// wrote `started_at` has committed and the step has begun.
    recording_ms: f64,
}

async fn until_ended(pool: &PgPool, run: RunId, limit: Duration) -> anyhow::Result<Found> {
    let started = Instant::now();
    loop {
        let (state, error): (String, Option<Value>) =
            sqlx::query_as("select state, error from runs where run_id = $1").bind(run).fetch_one(pool).await?;
        match state.as_str() {
            "queued" | "running" => {}
            "succeeded" => break,
            other => bail!("run {run} ended {other}: {}", error.unwrap_or(Value::Null)),
        }
        if started.elapsed() > limit {
            let step: Option<(String, Value)> =
                sqlx::query_as("select state, detail from steps where run_id = $1 and name = 'image'")
                    .bind(run)
                    .fetch_optional(pool)
                    .await?;
            bail!("run {run} did not end within {limit:?} of the push; its image step: {step:?}");
        }
        tokio::time::sleep(END_POLL).await;
    }
    let (state, started_at, finished_at, detail): (String, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Value) =
        sqlx::query_as("select state, started_at, finished_at, detail from steps where run_id = $1 and name = 'image'")
            .bind(run)
            .fetch_one(pool)
            .await?;
    if state != "succeeded" || detail.get("digest").is_none() {
        bail!("run {run} succeeded but its image step is {state} without a digest: {detail}");
    }
    let (Some(started_at), Some(finished_at)) = (started_at, finished_at) else {
        bail!("run {run}: the image step has no started_at or finished_at");
    };
    let held_ms = (finished_at - started_at).num_microseconds().unwrap_or(0) as f64 / 1000.0;
    let waited_ms = detail["waited_seconds"].as_f64().unwrap_or(f64::NAN) * 1000.0;
    Ok(Found { finished_at, looks: detail["looks"].as_i64().unwrap_or(0), recording_ms: held_ms - waited_ms })
}

// ---------------------------------------------------------------------------------------------
// Part 1: the wait's added latency.

struct Sample {
    /// The drawn delay, from seeing `waiting_for` to starting the push.
    delay: Duration,
    /// `pushed - since`: where in the backoff the push landed (seconds after the first look).
    offset: f64,
    /// `finished_at - pushed`, in milliseconds (signed: the clocks are not one).
    latency_ms: f64,
    looks: i64,
    recording_ms: f64,
    push: Duration,
}

async fn one_wait(ctx: &Ctx, setting: &Setting, n: usize) -> anyhow::Result<Sample> {
    let registry = ctx.latency_registry.as_ref().expect("part 1 has its registry");
    let run = ctx.queue(&format!("lat-{}", setting.key), &format!("feature/wait-{}-{n}", setting.key)).await?;
    let waiting = until_waiting(&ctx.pool, run).await?;
    let draw = ctx.delays.lock().expect("the delays' generator").f64();
    let delay = setting.poll_max.mul_f64(ctx.spread * draw);
    tokio::time::sleep(delay).await;
    let t = Instant::now();
    // Panics (with the registry's answer) when the push fails: the task's error names it.
    registry.push_image(REPO, &waiting.tag, "linux/amd64").await;
    let pushed = Utc::now();
    let push = t.elapsed();
    let limit = setting.poll_max.mul_f64(1.25) + FINISH_TIMEOUT;
    let found = until_ended(&ctx.pool, run, limit).await?;
    let micros = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(i64::MAX) as f64;
    Ok(Sample {
        delay,
        offset: micros(pushed - waiting.since) / 1e6,
        latency_ms: micros(found.finished_at - pushed) / 1000.0,
        looks: found.looks,
        recording_ms: found.recording_ms,
        push,
    })
}

/// `waits` waits of one setting, `concurrency` at a time.
async fn waits_of(ctx: Arc<Ctx>, s: usize, waits: usize, concurrency: usize) -> anyhow::Result<Vec<Sample>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(waits) {
        let (ctx, next) = (ctx.clone(), next.clone());
        set.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= waits {
                    return anyhow::Ok(mine);
                }
                let setting = &SETTINGS[s];
                let sample = one_wait(&ctx, setting, n).await.with_context(|| format!("{} wait {n}", setting.key))?;
                println!(
                    "{:<8} {:>3}/{waits}: pushed {:>6.2} s into the wait, found {:>6.0} ms later ({} looks)",
                    setting.key,
                    n + 1,
                    sample.offset,
                    sample.latency_ms,
                    sample.looks
                );
                mine.push(sample);
            }
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(mine)) => all.extend(mine),
            Ok(Err(e)) => return Err(e),
            Err(e) => bail!("a {} wait failed: {}", SETTINGS[s].key, panic_message(e)),
        }
    }
    Ok(all)
}

struct Part {
    table: String,
    json: Value,
}

/// Nearest-rank percentile of sorted values (as support::percentile, for signed figures).
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 }
}

fn stats(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    json!({
        "n": v.len(),
        "p50": pct(&v, 0.50),
        "p95": pct(&v, 0.95),
        "max": v.last().copied().unwrap_or(f64::NAN),
        "min": v.first().copied().unwrap_or(f64::NAN),
        "mean": mean(&v),
    })
}

/// The nominal end of the backoff's ramp: the time (after the first look) from which every pause is
/// poll_max (2s/15s: pauses 2, 4, 8, then 15 from 14 s on).
fn ramp_end(poll: Duration, poll_max: Duration) -> f64 {
    let (mut t, mut pause) = (0.0, poll.as_secs_f64());
    while pause < poll_max.as_secs_f64() {
        t += pause;
        pause *= 2.0;
    }
    t
}

/// One simulated wait: the times of the looks after the first (at 0), until one is at or past `until`.
fn simulated_looks(poll: Duration, poll_max: Duration, until: f64, looks: &mut Vec<f64>) {
    looks.clear();
    looks.push(0.0);
    let (mut t, mut pause) = (0.0, poll.as_secs_f64());
    while t < until {
        t += pause * (0.8 + fastrand::f64() * 0.4);
        looks.push(t);
        pause = (pause * 2.0).min(poll_max.as_secs_f64());
    }
}

/// The model's latencies (ms, sorted) for pushes at U(0, spread × poll_max) after the first look.
fn model_latencies(s: &Setting, spread: f64) -> Vec<f64> {
    let mut looks = Vec::new();
    let mut out: Vec<f64> = (0..MODEL_SAMPLES)
        .map(|_| {
            let push = s.poll_max.as_secs_f64() * spread * fastrand::f64();
            simulated_looks(s.poll, s.poll_max, push, &mut looks);
            let found = looks.iter().copied().find(|&t| t >= push).unwrap_or(push);
            (found - push) * 1000.0
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

async fn latency_part(args: &Args, ctx: &Arc<Ctx>) -> anyhow::Result<Part> {
    println!(
        "\npart 1: {} waits per poll setting, {} of each setting at once; push at U(0, {} x poll_max) after the step says it waits (--seed {})",
        args.waits, args.concurrency, args.spread, args.seed
    );
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for s in 0..SETTINGS.len() {
        let ctx = ctx.clone();
        let (waits, concurrency) = (args.waits, args.concurrency);
        set.spawn(async move { (s, waits_of(ctx, s, waits, concurrency).await) });
    }
    let mut by_setting: Vec<Option<Vec<Sample>>> = (0..SETTINGS.len()).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (s, samples) = joined.map_err(|e| anyhow!("a setting's waits: {}", panic_message(e)))?;
        by_setting[s] = Some(samples?);
    }
    let took = t.elapsed();

    let mut table = format!(
        "IMAGE WAIT: manifest PUT answered -> image step recorded succeeded (steps.finished_at), ms\n\
         {} waits per setting, push at U(0, {} x poll_max) after waiting_for; model: the same backoff and delays, {} samples\n\
         {:<24} {:>6} {:>7} {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7} | {:>15} {:>15} | {:>5} | {:>11}\n",
        args.waits,
        args.spread,
        MODEL_SAMPLES,
        "setting (poll/poll_max)",
        "waits",
        "p50",
        "p95",
        "max",
        "mean",
        "model50",
        "model95",
        "mean",
        "ramp n: p50",
        "steady n: p50",
        "looks",
        "rec p50/p95",
    );
    let mut rows = Vec::new();
    for (s, samples) in SETTINGS.iter().zip(by_setting) {
        let samples = samples.expect("every setting reported");
        let latencies: Vec<f64> = samples.iter().map(|x| x.latency_ms).collect();
        let ramp = ramp_end(s.poll, s.poll_max);
        let (in_ramp, steady): (Vec<&Sample>, Vec<&Sample>) = samples.iter().partition(|x| x.offset < ramp);
        let model = model_latencies(s, args.spread);
        let all = stats(latencies);
        let ramp_stats = stats(in_ramp.iter().map(|x| x.latency_ms).collect());
        let steady_stats = stats(steady.iter().map(|x| x.latency_ms).collect());
        let looks = mean(&samples.iter().map(|x| x.looks as f64).collect::<Vec<_>>());
        let recording = stats(samples.iter().map(|x| x.recording_ms).collect());
        let mut pushes: Vec<Duration> = samples.iter().map(|x| x.push).collect();
        pushes.sort();
        let label =
            format!("{} ({}/{})", s.key, humantime::format_duration(s.poll), humantime::format_duration(s.poll_max));
        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        table.push_str(&format!(
            "{:<24} {:>6} {:>7.0} {:>7.0} {:>7.0} {:>7.0} | {:>7.0} {:>7.0} {:>7.0} | {:>15} {:>15} | {:>5.1} | {:>11}\n",
            label,
            samples.len(),
            f(&all["p50"]),
            f(&all["p95"]),
            f(&all["max"]),
            f(&all["mean"]),
            pct(&model, 0.50),
            pct(&model, 0.95),
            mean(&model),
            format!("{:>3}: {:>7.0}", in_ramp.len(), f(&ramp_stats["p50"])),
            format!("{:>3}: {:>7.0}", steady.len(), f(&steady_stats["p50"])),
            looks,
            format!("{:.1}/{:.1}", f(&recording["p50"]), f(&recording["p95"])),
        ));
        rows.push(json!({
            "setting": s.key,
            "poll_ms": s.poll.as_millis() as u64,
            "poll_max_ms": s.poll_max.as_millis() as u64,
            "latency_ms": all,
            "model_ms": { "p50": pct(&model, 0.50), "p95": pct(&model, 0.95), "max": model.last(), "mean": mean(&model) },
            "ramp_end_seconds": ramp,
            "pushed_in_ramp_ms": ramp_stats,
            "pushed_in_steady_state_ms": steady_stats,
            "looks_mean": looks,
            "found_to_recorded_ms": recording,
            "push_ms": { "p50": ms(percentile(&pushes, 0.50)), "p95": ms(percentile(&pushes, 0.95)) },
            "samples": samples.iter().map(|x| json!({
                "delay_ms": ms(x.delay),
                "pushed_after_first_look_s": x.offset,
                "latency_ms": x.latency_ms,
                "looks": x.looks,
                "found_to_recorded_ms": x.recording_ms,
            })).collect::<Vec<_>>(),
        }));
    }
    let ramps: Vec<String> = SETTINGS.iter().map(|s| format!("{} s", ramp_end(s.poll, s.poll_max))).collect();
    table.push_str(&format!(
        "ramp/steady: pushed before/after the nominal time from which every pause is poll_max ({}); \
         looks: mean looks per wait, the finding one included;\n\
         rec: from the look that found the tag to the step's end recorded (finished_at - started_at - waited_seconds; \
         an upper bound: it also holds the commit of the boundary that started the step), part of the latency; part 1 took {:.0} s",
        ramps.join(", "),
        took.as_secs_f64()
    ));
    let json = json!({
        "measured": "steps.finished_at of the image step (Postgres now() of the statement recording its end) \
                     minus chrono::Utc::now() right after the harness's manifest PUT was answered 201",
        "delay": format!("uniform [0, {} x poll_max) from the bench seeing waiting_for to the push", args.spread),
        "concurrency_per_setting": args.concurrency,
        "took_seconds": took.as_secs_f64(),
        "settings": rows,
    });
    Ok(Part { table, json })
}

// ---------------------------------------------------------------------------------------------
// Part 2: registry requests per waiting stand.

/// What a registry had answered by a moment, and its token server issued.
#[derive(Default, Clone, Copy)]
struct Counts {
    requests: usize,
    /// `HEAD …/manifests/…`: the looks (401s on an expired token included).
    heads: usize,
    /// `GET /v2/`: oci-client's challenge probe, once per login.
    probes: usize,
    tokens: usize,
    /// Token requests the token server refused (anyone's; none expected).
    refusals: usize,
}

impl Counts {
    fn of(registry: &TestRegistry) -> Counts {
        let entries: Vec<_> = registry.access_log().into_iter().filter(|e| !e.by_harness()).collect();
        Counts {
            requests: entries.len(),
            heads: entries.iter().filter(|e| e.method == "HEAD" && e.uri.contains("/manifests/")).count(),
            probes: entries.iter().filter(|e| e.method == "GET" && e.uri == "/v2/").count(),
            tokens: registry.tokens_issued(),
            refusals: registry.token_refusals(),
        }
    }

    fn minus(self, before: Counts) -> Counts {
        Counts {
            requests: self.requests - before.requests,
            heads: self.heads - before.heads,
            probes: self.probes - before.probes,
            tokens: self.tokens - before.tokens,
            refusals: self.refusals - before.refusals,
        }
    }

    fn json(self, stands: usize, window: Duration) -> Value {
        let per = |n: usize| n as f64 / stands as f64 / (window.as_secs_f64() / 60.0);
        json!({
            "requests": self.requests,
            "manifest_heads": self.heads,
            "v2_probes": self.probes,
            "other": self.requests - self.heads - self.probes,
            "tokens": self.tokens,
            "token_refusals": self.refusals,
            "requests_per_stand_per_minute": per(self.requests),
            "heads_per_stand_per_minute": per(self.heads),
            "tokens_per_stand_per_minute": per(self.tokens),
        })
    }
}

struct ModeResult {
    first: Counts,
    steady: Option<Counts>,
    /// Max minus min of the stands' `since`.
    spread: f64,
}

async fn count_mode(
    ctx: Arc<Ctx>,
    m: usize,
    stands: usize,
    minute: Duration,
    steady: Duration,
) -> anyhow::Result<ModeResult> {
    let mode = MODES[m];
    let registry = &ctx.request_registries[m];
    let mut runs = Vec::new();
    for i in 0..stands {
        runs.push(ctx.queue(&format!("req-{mode}"), &format!("feature/count-{mode}-{i}")).await?);
    }
    let mut since = Vec::new();
    for run in &runs {
        since.push(until_waiting(&ctx.pool, *run).await.with_context(|| format!("{mode}: stand of run {run}"))?.since);
    }
    since.sort();
    let median = since[since.len() / 2];
    let spread = (since[since.len() - 1] - since[0]).num_microseconds().unwrap_or(0) as f64 / 1e6;
    let sleep_until = |at: DateTime<Utc>| async move {
        if let Ok(d) = (at - Utc::now()).to_std() {
            tokio::time::sleep(d).await;
        }
    };
    let first_end = median + chrono::TimeDelta::from_std(minute)?;
    sleep_until(first_end).await;
    let first = Counts::of(registry);
    let steady = if steady.is_zero() {
        None
    } else {
        sleep_until(first_end + chrono::TimeDelta::from_std(steady)?).await;
        Some(Counts::of(registry).minus(first))
    };
    // Every stand still waits: none was found, none failed.
    let waiting: i64 = sqlx::query_scalar(
        "select count(*) from steps where run_id = any($1) and name = 'image' and state = 'running' and detail ? 'waiting_for'",
    )
    .bind(&runs)
    .fetch_one(&ctx.pool)
    .await?;
    if waiting != stands as i64 {
        bail!("{mode}: {waiting} of {stands} stands were still waiting at the end of the count");
    }
    println!("{mode:<8}: {stands} stands counted (first looks {spread:.3} s apart)");
    Ok(ModeResult { first, steady, spread })
}

/// The model's mean number of looks in [from, to) seconds after the first look, at `poll`/`poll_max`.
fn model_looks(from: f64, to: f64) -> f64 {
    let mut looks = Vec::new();
    let mut total = 0usize;
    for _ in 0..MODEL_SAMPLES {
        simulated_looks(DEFAULT_POLL, DEFAULT_POLL_MAX, to, &mut looks);
        total += looks.iter().filter(|&&t| t >= from && t < to).count();
    }
    total as f64 / MODEL_SAMPLES as f64
}

/// The looks of the backoff without jitter, in [0, to).
fn nominal_looks(to: f64) -> Vec<f64> {
    let (mut t, mut pause, mut out) = (0.0, DEFAULT_POLL.as_secs_f64(), Vec::new());
    while t < to {
        out.push(t);
        t += pause;
        pause = (pause * 2.0).min(DEFAULT_POLL_MAX.as_secs_f64());
    }
    out
}

async fn requests_part(args: &Args, ctx: &Arc<Ctx>) -> anyhow::Result<Part> {
    let (minute, steady, k) = (args.minute, args.steady, args.stands);
    println!(
        "\npart 2: {k} stands per auth mode wait (default poll 2s/15s) for an image never pushed; counting {} then {}",
        humantime::format_duration(minute),
        humantime::format_duration(steady)
    );
    let mut set = tokio::task::JoinSet::new();
    for m in 0..MODES.len() {
        let ctx = ctx.clone();
        set.spawn(async move { (m, count_mode(ctx, m, k, minute, steady).await) });
    }
    let mut results: Vec<Option<ModeResult>> = (0..MODES.len()).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (m, r) = joined.map_err(|e| anyhow!("an auth mode's count: {}", panic_message(e)))?;
        results[m] = Some(r?);
    }

    let w = minute.as_secs_f64();
    let nominal = nominal_looks(w);
    let model_first = model_looks(0.0, w);
    let model_steady = (!steady.is_zero()).then(|| model_looks(w, w + steady.as_secs_f64()));
    let per_minute = |n: f64, window: f64| n / (window / 60.0);
    let mut table = format!(
        "REGISTRY REQUESTS per waiting stand, {k} stands per auth mode at once, default poll 2s/15s, never pushed\n\
         first window: from the start to {w:.0} s after the first looks; steady window: the {:.0} s after it (every pause 15 s)\n\
         {:<9} | {:>9} {:>6} {:>6} {:>6} {:>7} | {:>10} {:>6} {:>7}\n",
        steady.as_secs_f64(),
        "auth",
        "first/min",
        "HEAD",
        "GETv2",
        "other",
        "tokens",
        "steady/min",
        "HEAD",
        "tokens",
    );
    let mut modes = Vec::new();
    for (mode, r) in MODES.iter().zip(results) {
        let r = r.expect("every mode reported");
        let per = |n: usize, window: Duration| n as f64 / k as f64 / (window.as_secs_f64() / 60.0);
        let (s_req, s_head, s_tok) = match r.steady {
            Some(c) => (
                format!("{:.2}", per(c.requests, steady)),
                format!("{:.2}", per(c.heads, steady)),
                format!("{:.2}", per(c.tokens, steady)),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        table.push_str(&format!(
            "{:<9} | {:>9.2} {:>6.2} {:>6.2} {:>6.2} {:>7.2} | {:>10} {:>6} {:>7}\n",
            mode,
            per(r.first.requests, minute),
            per(r.first.heads, minute),
            per(r.first.probes, minute),
            per(r.first.requests - r.first.heads - r.first.probes, minute),
            per(r.first.tokens, minute),
            s_req,
            s_head,
            s_tok,
        ));
        modes.push(json!({
            "auth": mode,
            "first_window": r.first.json(k, minute),
            "steady_window": r.steady.map(|c| c.json(k, steady)),
            "first_looks_spread_seconds": r.spread,
        }));
    }
    let steady_theory = 60.0 / DEFAULT_POLL_MAX.as_secs_f64();
    table.push_str(&format!(
        "{:<9} | {:>9.2} {:>6.2} {:>6} {:>6} {:>7} | {:>10} {:>6} {:>7}\n",
        "backoff",
        per_minute(model_first, w),
        per_minute(model_first, w),
        "+login",
        "",
        "+login",
        model_steady.map(|m| format!("{:.2}", per_minute(m, steady.as_secs_f64()))).unwrap_or_else(|| "-".into()),
        model_steady.map(|m| format!("{:.2}", per_minute(m, steady.as_secs_f64()))).unwrap_or_else(|| "-".into()),
        "",
    ));
    table.push_str(&format!(
        "backoff: expected looks (model, jitter included) per stand per minute of each window; without jitter the \
         looks of the first {w:.0} s are at {} s ({} looks), then one every {} s ({steady_theory:.0}/min).\n\
         A login (a cold cache: the first look of a project's repository, or after a refusal) adds GET /v2/, \
         plus a token with token auth; the client's login is shared by every stand of a project.",
        nominal.iter().map(|t| format!("{t:.0}")).collect::<Vec<_>>().join(", "),
        nominal.len(),
        DEFAULT_POLL_MAX.as_secs(),
    ));
    let json = json!({
        "stands_per_mode": k,
        "poll_ms": DEFAULT_POLL.as_millis() as u64,
        "poll_max_ms": DEFAULT_POLL_MAX.as_millis() as u64,
        "first_window_seconds": w,
        "steady_window_seconds": steady.as_secs_f64(),
        "counted": "registry access-log lines not made by the harness (any method, path, status), and tokens the \
                    token server issued to anyone but the harness; the first window runs from the start to the \
                    median of the stands' `since` plus first_window_seconds",
        "modes": modes,
        "backoff": {
            "nominal_looks_first_window": nominal,
            "expected_looks_first_window": model_first,
            "expected_looks_steady_window": model_steady,
            "steady_looks_per_minute": steady_theory,
        },
    });
    Ok(Part { table, json })
}
