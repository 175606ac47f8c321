//! Issue 8's benchmark (run by scripts/bench-reaper.sh): one reaper sweep over 10,000 stands of which
//! 100 have expired, on draftd's real schema in a throwaway database of the DATABASE_URL server.
//!
//! Reports the sweep's wall time (lock connection, expiry, failed-teardown retries, warnings, the
//! sweep's record) and the expiry statement's alone, p50/p95 over `--rounds`; then the query plans
//! of the sweep's look-ups (EXPLAIN ANALYZE), and, side by side in the same run, the expiry
//! statement with index scans against the same statement with the planner kept off them.
//!
//! Between rounds the 100 expired stands are put back as they were (untimed), so every round
//! finds 100 to queue.
//!
//! Issue 23's part: the same 10,000 stands with 1,000 idle past `[sleep] idle_after`, one sweep that
//! puts all 1,000 to sleep against the same sweep with sleep turned off, alternating in one run, the
//! idle look-up's plan, and the sleep statement alone.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use draftd::cluster::Kubernetes;
use draftd::config::Config;
use draftd::reaper::{Reaper, SweepOutcome};
use draftd::store::lifecycle;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

const DB: &str = "draftd_bench_reaper";
const STANDS: i64 = 10_000;
const EXPIRED: i64 = 100;
const IDLE: i64 = 1_000;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn setup(pool: &PgPool) -> anyhow::Result<()> {
    draftd::store::migrate(pool).await?;
    // 10,000 active stands, each with the finished deploy run that set its expiry; 100 of them
    // expired a minute to two hours ago, the others expire 5 to 47 hours from now (outside the
    // 4-hour warning window, as most stands are at any moment).
    sqlx::query(
        "insert into stands (project, branch, namespace, pr_number, state, head_sha, runs_count, expires_at)
         select 'shop', 'feature/b-' || g, 'draft-feature-b-' || g, g, 'active', md5(g::text) || 'abcdefgh', 1,
                case when g <= $2 then now() - (g || ' minutes')::interval
                     else now() + interval '5 hours' + ((g % 2520) || ' minutes')::interval end
         from generate_series(1, $1) g",
    )
    .bind(STANDS)
    .bind(EXPIRED)
    .execute(pool)
    .await?;
    sqlx::query(
        "insert into runs (stand_id, number, kind, trigger, automatic, epoch, sha, state, started_at, finished_at)
         select stand_id, 1, 'deploy', 'opened', true, 0, head_sha, 'succeeded', now() - interval '1 hour', now()
         from stands",
    )
    .execute(pool)
    .await?;
    sqlx::query("analyze").execute(pool).await?;
    Ok(())
}

/// Puts the expired stands back: active again, their teardown runs gone.
async fn reset(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("delete from runs where kind = 'teardown'").execute(pool).await?;
    sqlx::query("update stands set state = 'active', state_reason = null, runs_count = 1 where state = 'closing'")
        .execute(pool)
        .await?;
    Ok(())
}

/// Puts the idle stands back: their sleep runs gone.
async fn reset_sleeps(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("delete from runs where kind = 'sleep'").execute(pool).await?;
    sqlx::query("update stands set runs_count = 1 where runs_count > 1").execute(pool).await?;
    Ok(())
}

async fn explain(pool: &PgPool, label: &str, sql: &str) -> anyhow::Result<bool> {
    let plan: Vec<String> = sqlx::query_scalar(&format!("explain (analyze, costs off, timing off, summary off) {sql}"))
        .fetch_all(pool)
        .await?;
    println!("\n-- {label}");
    for line in &plan {
        println!("   {line}");
    }
    let seq = plan.iter().any(|l| l.contains("Seq Scan on stands"));
    println!("   => {}", if seq { "SEQUENTIAL SCAN of stands" } else { "no sequential scan of stands" });
    Ok(!seq)
}

const EXPIRED_SELECT: &str = "select s.stand_id from stands s
     where s.state = 'active' and s.expires_at <= now()
       and not exists (select 1 from runs r where r.stand_id = s.stand_id and r.state in ('queued', 'running'))
     order by s.expires_at limit 1000";
const RETRY_SELECT: &str = "select s.stand_id from stands s where s.state = 'closing'
       and not exists (select 1 from runs r where r.stand_id = s.stand_id and r.state in ('queued', 'running'))";
const IDLE_SELECT: &str = "select s.stand_id from stands s
     where s.state = 'active' and s.last_activity_at <= now() - interval '30 minutes'
       and not exists (select 1 from runs r where r.stand_id = s.stand_id and r.state in ('queued', 'running'))
     order by s.last_activity_at limit 1000";
const WARN_SELECT: &str = "select stand_id from stands
     where state = 'active' and expires_at > now() and expires_at <= now() + interval '4 hours'
       and expiry_warned_for is distinct from expires_at";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(30);
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL (source scripts/pg-env.sh)")?;
    let quiet = |o: PgConnectOptions| o.log_statements(log::LevelFilter::Off);
    let admin = PgPoolOptions::new().max_connections(1).connect_with(quiet(PgConnectOptions::from_str(&url)?)).await?;
    sqlx::query(&format!("drop database if exists {DB} with (force)")).execute(&admin).await?;
    sqlx::query(&format!("create database {DB}")).execute(&admin).await?;
    let bench_url = PgConnectOptions::from_str(&url)?.database(DB);
    let pool = PgPoolOptions::new().max_connections(4).connect_with(quiet(bench_url.clone())).await?;
    let result = run(&pool, &bench_url, rounds).await;
    pool.close().await;
    sqlx::query(&format!("drop database if exists {DB} with (force)")).execute(&admin).await?;
    result
}

async fn run(pool: &PgPool, url: &PgConnectOptions, rounds: usize) -> anyhow::Result<()> {
    let t = Instant::now();
    setup(pool).await?;
    println!(
        "{STANDS} stands ({EXPIRED} expired), one finished run each: set up in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let config = Config::from_toml(&format!(
        "database_url = {:?}\n[reaper]\norphans = false\nresync = false\n[[projects]]\nname = \"shop\"\nforge = \"github\"\nrepo = \"acme/shop\"\nwebhook_secret_env = \"UNUSED\"\n",
        url.to_url_lossy().to_string()
    ))?;
    let reaper: Reaper<Kubernetes> = Reaper::new(pool.clone(), Arc::new(config), "bench");

    let (mut sweeps, mut statements) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let SweepOutcome::Swept(s) = reaper.sweep(Utc::now()).await? else { bail!("the sweep lock was held") };
        sweeps.push(t.elapsed());
        if s.expired.len() as i64 != EXPIRED {
            bail!("a sweep queued {} teardowns, not {EXPIRED}", s.expired.len());
        }
        reset(pool).await?;
        let t = Instant::now();
        let queued = lifecycle::queue_expired(pool, Utc::now(), 1000).await?;
        statements.push(t.elapsed());
        if queued.len() as i64 != EXPIRED {
            bail!("the expiry statement queued {}, not {EXPIRED}", queued.len());
        }
        reset(pool).await?;
    }
    println!(
        "\nsweep (lock connection + expiry + retries + warnings + record), {rounds} rounds: p50 {:.2} ms, p95 {:.2} ms",
        ms(pct(&mut sweeps, 0.5)),
        ms(pct(&mut sweeps, 0.95))
    );
    println!(
        "expiry statement alone (find 100, close them, queue 100 teardown runs): p50 {:.2} ms, p95 {:.2} ms",
        ms(pct(&mut statements, 0.5)),
        ms(pct(&mut statements, 0.95))
    );

    let mut clean = true;
    clean &= explain(pool, "expired stands (the expiry statement's look-up)", EXPIRED_SELECT).await?;
    clean &= explain(pool, "failed teardowns to retry", RETRY_SELECT).await?;
    clean &= explain(pool, "stands to warn", WARN_SELECT).await?;
    println!("\nplans: {}", if clean { "index scans only on stands" } else { "a sequential scan of stands remains" });

    // Side by side: the look-up as planned, and with index scans off (what it costs without the
    // partial index), alternating in one run.
    let mut conn = pool.acquire().await?;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (indexed, out) in [(true, &mut with), (false, &mut without)] {
            let flag = if indexed { "on" } else { "off" };
            sqlx::query(&format!("set enable_indexscan = {flag}")).execute(&mut *conn).await?;
            sqlx::query(&format!("set enable_bitmapscan = {flag}")).execute(&mut *conn).await?;
            let t = Instant::now();
            // Not prepared: a cached plan would outlive the planner settings it was made under.
            let n = sqlx::query_scalar::<_, i64>(EXPIRED_SELECT).persistent(false).fetch_all(&mut *conn).await?.len();
            out.push(t.elapsed());
            if n as i64 != EXPIRED {
                bail!("found {n} expired stands");
            }
        }
    }
    sqlx::query("reset all").execute(&mut *conn).await?;
    let (a, b) = (pct(&mut with, 0.5), pct(&mut without, 0.5));
    println!(
        "\nexpired look-up, p50 over {rounds}: index {:.3} ms, no index {:.3} ms: {:.1}x faster with it",
        ms(a),
        ms(b),
        b.as_secs_f64() / a.as_secs_f64()
    );

    // A Prometheus scrape over the same 10,000 stands: the whole `/metrics` text (scrape-time
    // gauges read from the database, then rendered) against rendering alone, alternating.
    let handle = draftd::metrics::install();
    let (mut scrape, mut render) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let snapshot = draftd::store::metrics::snapshot(pool, draftd::store::lifecycle::MAX_TEARDOWN_ATTEMPTS).await?;
        let text = draftd::metrics::render(&snapshot);
        scrape.push(t.elapsed());
        if !text.contains(&format!("draftd_stands{{state=\"active\"}} {STANDS}")) {
            bail!("the scrape does not show the active stands");
        }
        let t = Instant::now();
        std::hint::black_box(handle.render());
        render.push(t.elapsed());
    }
    let (s, r) = (pct(&mut scrape, 0.5), pct(&mut render, 0.5));
    println!(
        "\n/metrics over {STANDS} stands, p50 over {rounds}: whole scrape {:.3} ms (p95 {:.3}), rendering alone {:.3} ms: the database gauges are {:.0}% of it",
        ms(s),
        ms(pct(&mut scrape, 0.95)),
        ms(r),
        100.0 * (s.as_secs_f64() - r.as_secs_f64()) / s.as_secs_f64()
    );

    // Issue 23: 1,000 of the stands idle for two hours (not the expired ones).
    sqlx::query(
        "update stands set last_activity_at = now() - interval '2 hours' where stand_id > $1 and stand_id <= $2",
    )
    .bind(EXPIRED)
    .bind(EXPIRED + IDLE)
    .execute(pool)
    .await?;
    sqlx::query("analyze stands").execute(pool).await?;
    let base = format!(
        "database_url = {:?}\n[reaper]\norphans = false\nresync = false\n[[projects]]\nname = \"shop\"\nforge = \"github\"\nrepo = \"acme/shop\"\nwebhook_secret_env = \"UNUSED\"\n",
        url.to_url_lossy().to_string()
    );
    let sleepy: Reaper<Kubernetes> = Reaper::new(
        pool.clone(),
        Arc::new(Config::from_toml(&format!("{base}[sleep]\nmax_per_sweep = {IDLE}\n"))?),
        "bench",
    );
    let awake: Reaper<Kubernetes> =
        Reaper::new(pool.clone(), Arc::new(Config::from_toml(&format!("{base}[sleep]\nenabled = false\n"))?), "bench");
    let (mut with, mut without, mut alone) = (Vec::new(), Vec::new(), Vec::new());
    let idle_after = [("shop".to_owned(), Duration::from_secs(1800))];
    for _ in 0..rounds {
        for (reaper, out, want) in [(&sleepy, &mut with, IDLE), (&awake, &mut without, 0)] {
            let t = Instant::now();
            let SweepOutcome::Swept(s) = reaper.sweep(Utc::now()).await? else { bail!("the sweep lock was held") };
            out.push(t.elapsed());
            if s.slept.len() as i64 != want {
                bail!("a sweep put {} stands to sleep, not {want}", s.slept.len());
            }
            reset(pool).await?;
            reset_sleeps(pool).await?;
        }
        let t = Instant::now();
        let queued = draftd::store::sleep::queue_idle(pool, Utc::now(), &idle_after, IDLE).await?;
        alone.push(t.elapsed());
        if queued.len() as i64 != IDLE {
            bail!("the sleep statement queued {}, not {IDLE}", queued.len());
        }
        reset_sleeps(pool).await?;
    }
    let (a, b) = (pct(&mut with, 0.5), pct(&mut without, 0.5));
    println!(
        "\n{STANDS} stands, {IDLE} idle, {rounds} rounds alternating: sweep putting {IDLE} to sleep p50 {:.2} ms (p95 {:.2}), \
         the same sweep with sleep off p50 {:.2} ms (p95 {:.2}): {:.2}x",
        ms(a),
        ms(pct(&mut with, 0.95)),
        ms(b),
        ms(pct(&mut without, 0.95)),
        a.as_secs_f64() / b.as_secs_f64()
    );
    println!(
        "sleep statement alone (find {IDLE} idle, queue {IDLE} sleep runs): p50 {:.2} ms, p95 {:.2} ms",
        ms(pct(&mut alone, 0.5)),
        ms(pct(&mut alone, 0.95))
    );
    explain(pool, "idle stands (the sleep statement's look-up)", IDLE_SELECT).await?;
    Ok(())
}
