//! Issue 24's health watch benchmark (run by scripts/bench-watch.sh): what watching 1,000 awake
//! stands costs the database and the Kubernetes API over one `[watch] interval`.
//!
//! The real [`Watch::tick`] runs on draftd's real schema in a throwaway database, once per tick
//! over one whole interval on a simulated clock (so a five-minute interval takes seconds), and
//! probes a local app through `[cluster.verify] ingress_address` as serve would. Its cluster is a
//! local stand-in for the API server that counts every request. Three intervals are measured:
//! all healthy; 1% of the stands answering 500 (they turn degraded: diagnostics, audit, reports);
//! and those recovering. For each: statements (transactions) and rows updated in the database, the
//! claim statement's time per tick (p50/p99/max), Kubernetes API requests, probe requests per
//! simulated second (max against the mean: the spread), and the CPU time of the whole process.

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use draftd::cluster::Kubernetes;
use draftd::config::Config;
use draftd::reaper::watch::Watch;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

const USAGE: &str = "benches/watch.rs: the health watch over 1,000 awake stands

  --stands N      awake stands (default 1000)
  --interval D    [watch] interval, simulated (default 5m)
  --failing N     stands that start answering 500 in the second interval (default 1% of --stands)";

/// Postgres 15 backends report their counts to pg_stat_database once idle, within ten seconds.
const SETTLE: Duration = Duration::from_secs(11);

struct Args {
    stands: i64,
    interval: Duration,
    failing: i64,
}

fn parse() -> anyhow::Result<Args> {
    let mut p = support::Flags::new(USAGE);
    let mut args = Args { stands: 1000, interval: Duration::from_secs(300), failing: -1 };
    while let Some(flag) = p.next_flag() {
        match flag.as_str() {
            "--stands" => args.stands = p.whole("--stands")?,
            "--interval" => args.interval = humantime::parse_duration(&p.value("--interval")?)?,
            "--failing" => args.failing = p.whole("--failing")?,
            _ => return Err(p.unknown(&flag)),
        }
    }
    if args.failing < 0 {
        args.failing = (args.stands / 100).max(1);
    }
    Ok(args)
}

fn main() -> ExitCode {
    support::main_with(parse, |args| async move {
        support::in_fresh_database("draftd_bench_watch", "scripts/bench-watch.sh", |url| bench(url, args)).await
    })
}

/// The stands' app: answers 500 for the hosts in `failing`, 200 otherwise; counts requests.
#[derive(Clone, Default)]
struct App {
    failing: Arc<Mutex<HashSet<String>>>,
    requests: Arc<AtomicUsize>,
}

async fn serve_app(app: App) -> anyhow::Result<String> {
    let handler = move |headers: axum::http::HeaderMap| {
        let app = app.clone();
        async move {
            app.requests.fetch_add(1, Ordering::Relaxed);
            let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or_default();
            let failing = app.failing.lock().unwrap().contains(host);
            if failing { axum::http::StatusCode::INTERNAL_SERVER_ERROR } else { axum::http::StatusCode::OK }
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await });
    Ok(address)
}

/// Stands in for the API server: every request counted, every list empty.
async fn serve_api(calls: Arc<AtomicUsize>) -> anyhow::Result<String> {
    let handler = move || {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::Relaxed);
            axum::Json(serde_json::json!({ "apiVersion": "v1", "kind": "List", "metadata": {}, "items": [] }))
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await });
    Ok(format!("http://{address}"))
}

/// The process's CPU time so far (user + system), from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command name; in
    // clock ticks of 1/100 s on Linux.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// What the database counted for the bench database: (transactions committed, rows updated).
async fn db_counts(admin: &PgPool) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as("select xact_commit, tup_updated from pg_stat_database where datname = current_database()")
        .fetch_one(admin)
        .await?)
}

async fn setup(pool: &PgPool, stands: i64) -> anyhow::Result<()> {
    draftd::store::migrate(pool).await?;
    sqlx::query(
        "insert into stands (project, branch, namespace, pr_number, head_sha, runs_count)
         select 'shop', 'feature/b-' || g, 'draft-b-' || g, g, md5(g::text) || 'abcdefgh', 1
         from generate_series(1, $1) g",
    )
    .bind(stands)
    .execute(pool)
    .await?;
    sqlx::query(
        "insert into runs (stand_id, number, kind, trigger, automatic, epoch, sha, state, started_at, finished_at)
         select stand_id, 1, 'deploy', 'opened', true, 0, head_sha, 'succeeded',
                now() - interval '2 hours', now() - interval '1 hour'
         from stands",
    )
    .execute(pool)
    .await?;
    Ok(())
}

struct Interval {
    ticks: usize,
    probes: usize,
    per_second_max: usize,
    per_second_mean: f64,
    claim_p50: Duration,
    claim_p99: Duration,
    claim_max: Duration,
    xacts: i64,
    updated: i64,
    api_calls: usize,
    app_requests: usize,
    cpu: Duration,
    wall: Duration,
    degraded: usize,
    recovered: usize,
}

struct Bench {
    watch: Watch,
    admin: PgPool,
    app: App,
    api_calls: Arc<AtomicUsize>,
    tick: Duration,
    interval: Duration,
}

impl Bench {
    /// One interval on the simulated clock from `from`: a tick every `tick`, each timed; then the
    /// database's counts once the watch's connections have reported them.
    async fn interval(&self, from: DateTime<Utc>) -> anyhow::Result<Interval> {
        tokio::time::sleep(SETTLE).await;
        let (xacts, updated) = db_counts(&self.admin).await?;
        let (api, requests, cpu, wall) = (
            self.api_calls.load(Ordering::SeqCst),
            self.app.requests.load(Ordering::SeqCst),
            cpu_time(),
            Instant::now(),
        );
        let ticks = (self.interval.as_secs_f64() / self.tick.as_secs_f64()).round() as usize;
        let mut times = Vec::with_capacity(ticks);
        let mut per_second = BTreeMap::<u64, usize>::new();
        let (mut probes, mut degraded, mut recovered) = (0, 0, 0);
        for i in 0..ticks {
            let offset = self.tick * i as u32;
            let started = Instant::now();
            let tick = self.watch.tick(from + chrono::Duration::from_std(offset)?, 10_000).await?;
            times.push(started.elapsed());
            anyhow::ensure!(tick.errors.is_empty(), "tick {i}: {:?}", tick.errors);
            *per_second.entry(offset.as_secs()).or_default() += tick.claimed;
            probes += tick.probes;
            degraded += tick.degraded.len();
            recovered += tick.recovered.len();
        }
        let (cpu, wall) = (cpu_time() - cpu, wall.elapsed());
        tokio::time::sleep(SETTLE).await;
        let (xacts_after, updated_after) = db_counts(&self.admin).await?;
        times.sort();
        let seconds = self.interval.as_secs().max(1);
        Ok(Interval {
            ticks,
            probes,
            per_second_max: per_second.values().copied().max().unwrap_or(0),
            per_second_mean: per_second.values().sum::<usize>() as f64 / seconds as f64,
            claim_p50: support::percentile(&times, 0.5),
            claim_p99: support::percentile(&times, 0.99),
            claim_max: *times.last().unwrap_or(&Duration::ZERO),
            // The two reads of pg_stat_database are transactions of their own.
            xacts: xacts_after - xacts - 1,
            updated: updated_after - updated,
            api_calls: self.api_calls.load(Ordering::SeqCst) - api,
            app_requests: self.app.requests.load(Ordering::SeqCst) - requests,
            cpu,
            wall,
            degraded,
            recovered,
        })
    }
}

fn print(label: &str, i: &Interval) {
    println!("\n{label}");
    println!(
        "  ticks {}  probes {}  app requests {}  degraded {}  recovered {}",
        i.ticks, i.probes, i.app_requests, i.degraded, i.recovered
    );
    println!("  probes per simulated second: max {}  mean {:.2}", i.per_second_max, i.per_second_mean);
    println!(
        "  database: {} transactions ({:.2} per tick), {} rows updated",
        i.xacts,
        i.xacts as f64 / i.ticks as f64,
        i.updated
    );
    println!(
        "  tick wall time (claim + probes): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        support::ms(i.claim_p50),
        support::ms(i.claim_p99),
        support::ms(i.claim_max)
    );
    println!("  Kubernetes API requests: {}", i.api_calls);
    println!("  process CPU time: {:.0} ms over {:.1} s of wall time", support::ms(i.cpu), i.wall.as_secs_f64());
}

async fn bench(url: String, args: Args) -> anyhow::Result<()> {
    let admin = PgPoolOptions::new().max_connections(1).connect(&url).await.context("connecting")?;
    setup(&admin, args.stands).await?;
    let app = App::default();
    let address = serve_app(app.clone()).await?;
    let api_calls = Arc::new(AtomicUsize::new(0));
    let api = serve_api(api_calls.clone()).await?;
    let interval = humantime::format_duration(args.interval);
    let config = Config::from_toml(&format!(
        "[cluster]\nmode = \"kubernetes\"\n[cluster.verify]\ningress_address = \"{address}\"\n\
         [watch]\ninterval = \"{interval}\"\ntimeout = \"2s\"\nrecheck_after = \"10ms\"\n\
         [[projects]]\nname = \"shop\"\nforge = \"github\"\nrepo = \"acme/shop\"\nwebhook_secret_env = \"X\"\n\
         host = \"{{stand}}.draft.test\"\n"
    ))?;
    let client = kube::Client::try_from(kube::Config::new(api.parse()?))?;
    let cluster = Arc::new(Kubernetes::new(client, config.cluster.clone()));
    let pool = PgPoolOptions::new().max_connections(config.watch.concurrency + 2).connect(&url).await?;
    // Every stand verified at t0: watched from its own slot in the next interval.
    let t0 = Utc::now();
    let ids: Vec<draftd::stand::StandId> = sqlx::query_scalar("select stand_id from stands").fetch_all(&admin).await?;
    for id in &ids {
        draftd::store::health::verified(&admin, *id, t0, args.interval).await?;
    }
    sqlx::query("analyze").execute(&admin).await?;
    let config = Arc::new(config);
    let watch = Watch::new(pool, config.clone()).with_cluster(cluster);
    let tick = watch.tick_every();
    let bench = Bench { watch, admin: admin.clone(), app: app.clone(), api_calls, tick, interval: args.interval };
    println!(
        "{} awake stands, [watch] interval {interval} (simulated), a tick every {:?}, {} failing in the second interval",
        args.stands, tick, args.failing
    );

    let start = t0 + chrono::Duration::from_std(tick)?;
    let healthy = bench.interval(start).await?;
    anyhow::ensure!(healthy.probes == args.stands as usize, "each stand probed once: {}", healthy.probes);
    print("interval 1: all healthy", &healthy);

    let failing: HashSet<String> = (1..=args.failing).map(|g| format!("draft-b-{g}.draft.test")).collect();
    *app.failing.lock().unwrap() = failing;
    let interval = chrono::Duration::from_std(args.interval)?;
    let broken = bench.interval(start + interval).await?;
    anyhow::ensure!(broken.degraded == args.failing as usize, "{} degraded", broken.degraded);
    print(&format!("interval 2: {} stands answer 500 and turn degraded", args.failing), &broken);

    app.failing.lock().unwrap().clear();
    let back = bench.interval(start + interval * 2).await?;
    anyhow::ensure!(back.recovered == args.failing as usize, "{} recovered", back.recovered);
    print("interval 3: they answer again and recover", &back);

    let plan: Vec<String> = sqlx::query_scalar(
        "explain select stand_id from stands where state = 'active' and next_probe_at is not null
         and next_probe_at <= now() order by next_probe_at limit 16 for update skip locked",
    )
    .fetch_all(&admin)
    .await?;
    println!("\nthe claim's look-up:\n  {}", plan.join("\n  "));
    Ok(())
}
