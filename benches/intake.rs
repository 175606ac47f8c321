//! Intake benchmark: the real `draftd serve` binary on a fresh database, fed signed GitHub
//! `pull_request` deliveries over loopback by concurrent keep-alive senders, measured against the raw
//! rate of single-row `BEGIN; INSERT; COMMIT` transactions on the same Postgres server.
//!
//! Run by `scripts/bench.sh [--deliveries N] [--senders N] [--rounds N] [--warmup N] [--keep-log]`.
//! Rounds interleave raw → draftd → raw → draftd → … → raw, so every draftd round is compared with
//! the mean of the two raw rounds either side of it (machine noise hits both alike).
//!
//! Also measured: start-to-ready on a fresh and on a migrated database, idle and peak RSS, and where
//! the CPU went during each round (draftd, every `postgres` process, this client, the whole machine).

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::{Server, ServerSpec, github_signature, ms, percentile, proc_status_kib, with_database};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/webhooks/github/pull_request.opened.json");
const SECRET_ENV: &str = "BENCH_GH_SECRET";
const DB_POOL_SIZE: u32 = 32;
const RATIO_GOAL: f64 = 0.5;
const P99_GOAL_MS: f64 = 50.0;

const USAGE: &str = "usage: scripts/bench.sh [--deliveries N] [--senders N] [--rounds N] [--warmup N] [--keep-log]
  --deliveries N  signed deliveries per draftd round, and transactions per raw round (default 20000)
  --senders N     concurrent senders, and raw Postgres connections (default 32)
  --rounds N      draftd rounds; raw rounds run before, between and after them (default 2)
  --warmup N      extra deliveries (and raw transactions) first, not counted (default 500)
  --keep-log      keep draftd's log file even when the run succeeds
  --draftd PATH   the draftd binary to measure (default: this build's), e.g. an older build for an A/B";

struct Args {
    deliveries: usize,
    senders: usize,
    rounds: usize,
    warmup: usize,
    keep_log: bool,
    draftd: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        deliveries: 20_000,
        senders: 32,
        rounds: 2,
        warmup: 500,
        keep_log: false,
        draftd: PathBuf::from(env!("CARGO_BIN_EXE_draftd")),
    };
    let mut flags = support::Flags::new(USAGE);
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--deliveries" => args.deliveries = flags.whole(&flag)?,
            "--senders" => args.senders = flags.whole(&flag)?,
            "--rounds" => args.rounds = flags.whole(&flag)?,
            "--warmup" => args.warmup = flags.whole(&flag)?,
            "--keep-log" => args.keep_log = true,
            "--draftd" => args.draftd = PathBuf::from(flags.value(&flag)?),
            other => return Err(flags.unknown(other)),
        }
    }
    if args.deliveries == 0 || args.senders == 0 || args.rounds == 0 {
        bail!("--deliveries, --senders and --rounds must be at least 1\n{USAGE}");
    }
    Ok(args)
}

fn main() -> ExitCode {
    support::main_with(parse_args, bench)
}

/// Creates the database, runs everything, and drops the database however the run ended.
async fn bench(args: Args) -> anyhow::Result<()> {
    support::with_fresh_database(
        "draftd_bench",
        "scripts/bench.sh",
        args.keep_log,
        |admin_url, db, log_path| async move { run(&args, &admin_url, &db, &log_path).await },
    )
    .await
}

struct Figures {
    fresh_ready: Duration,
    migrated_ready: Duration,
    idle_rss_kib: u64,
    peak_rss_kib: u64,
    rounds: Vec<IntakeRound>,
    raws: Vec<RawRound>,
    accepted_total: usize,
    runs_rows: i64,
    deliveries_rows: i64,
}

async fn run(args: &Args, admin_url: &str, db: &str, log_path: &Path) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("draftd-bench-").tempdir()?;
    let config_path = dir.path().join("draftd.toml");
    std::fs::write(
        &config_path,
        format!(
            "[[projects]]\nname = \"bench\"\nforge = \"github\"\nrepo = \"Codertocat/Hello-World\"\nwebhook_secret_env = \"{SECRET_ENV}\"\n"
        ),
    )?;
    let secret = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let spec = ServerSpec {
        config: config_path,
        database_url: with_database(admin_url, db),
        log: log_path.to_owned(),
        dir: dir.path().to_owned(),
        binary: args.draftd.clone(),
        env: vec![
            ("DRAFTD_INTAKE__DB_POOL_SIZE".to_owned(), DB_POOL_SIZE.to_string()),
            (SECRET_ENV.to_owned(), secret.clone()),
        ],
    };
    let probe = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(3)).build()?;

    // Start-to-ready, twice: the first start applies the migrations.
    let mut server = Server::start(&spec)?;
    let fresh_ready = server.wait_ready(&probe).await?;
    println!("start-to-ready on the fresh database: {:.1} ms", ms(fresh_ready));
    let stopped = server.stop()?;
    println!("stopped with SIGTERM in {:.1} ms", ms(stopped));
    let mut server = Server::start(&spec)?;
    let migrated_ready = server.wait_ready(&probe).await?;
    println!("start-to-ready on the migrated database: {:.1} ms", ms(migrated_ready));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss_kib = proc_status_kib(server.pid, "VmRSS")?;
    println!("idle RSS: {:.1} MiB", idle_rss_kib as f64 / 1024.0);

    let template: Value = serde_json::from_str(&std::fs::read_to_string(FIXTURE)?)?;
    let clients = (0..args.senders)
        .map(|_| reqwest::Client::builder().no_proxy().pool_max_idle_per_host(1).tcp_nodelay(true).build())
        .collect::<Result<Vec<_>, _>>()?;
    let url = format!("http://{}/webhooks/github", server.addr);

    let mut raw_opts = PgConnectOptions::from_str(&spec.database_url)?;
    raw_opts = raw_opts.application_name("draftd-bench-raw");
    let raw_pool = PgPoolOptions::new()
        .max_connections(args.senders as u32)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(raw_opts)
        .await?;
    sqlx::query(
        "create table raw_bench (id bigserial primary key, payload jsonb not null, at timestamptz default now())",
    )
    .execute(&raw_pool)
    .await?;

    // Warm-up: connections (ours and draftd's pool), caches, the JIT-less but still cold code paths.
    let mut next_index = 0;
    let mut accepted_total = 0;
    if args.warmup > 0 {
        let deliveries = build_deliveries(&template, &secret, next_index, args.warmup);
        next_index += args.warmup;
        let warm = drive_intake(&url, &clients, deliveries, server.pid).await;
        accepted_total += warm.accepted;
        println!("warm-up: {} deliveries, {} accepted, {:.0}/s", args.warmup, warm.accepted, warm.rate());
        report_refusals("warm-up", &warm);
        let raw = drive_raw(&raw_pool, args.senders, 0, args.warmup).await?;
        println!("warm-up: {} raw transactions, {:.0} tx/s", args.warmup, raw.rate());
    }

    let mut raws = Vec::new();
    let mut rounds = Vec::new();
    let mut raw_offset = args.warmup;
    for r in 0..args.rounds {
        let raw = drive_raw(&raw_pool, args.senders, raw_offset, args.deliveries).await?;
        raw_offset += args.deliveries;
        println!("raw round {}: {}", raws.len() + 1, raw.describe());
        raws.push(raw);

        let deliveries = build_deliveries(&template, &secret, next_index, args.deliveries);
        next_index += args.deliveries;
        let round = drive_intake(&url, &clients, deliveries, server.pid).await;
        accepted_total += round.accepted;
        println!("draftd round {}: {}", r + 1, round.describe());
        report_refusals(&format!("draftd round {}", r + 1), &round);
        rounds.push(round);
    }
    let raw = drive_raw(&raw_pool, args.senders, raw_offset, args.deliveries).await?;
    println!("raw round {}: {}", raws.len() + 1, raw.describe());
    raws.push(raw);

    let peak_rss_kib = proc_status_kib(server.pid, "VmHWM")?;
    let runs_rows: i64 = sqlx::query_scalar("select count(*) from runs").fetch_one(&raw_pool).await?;
    let deliveries_rows: i64 = sqlx::query_scalar("select count(*) from deliveries").fetch_one(&raw_pool).await?;
    raw_pool.close().await;
    drop(clients);
    let stopped = server.stop()?;
    println!("stopped with SIGTERM in {:.1} ms", ms(stopped));

    let figures = Figures {
        fresh_ready,
        migrated_ready,
        idle_rss_kib,
        peak_rss_kib,
        rounds,
        raws,
        accepted_total,
        runs_rows,
        deliveries_rows,
    };
    summary(args, &figures)
}

/// The summary block, then an error when anything was not as expected (so the exit code says so).
fn summary(args: &Args, f: &Figures) -> anyhow::Result<()> {
    let mut latencies: Vec<Duration> = f.rounds.iter().flat_map(|r| r.latencies.iter().copied()).collect();
    latencies.sort_unstable();
    let accepted: usize = f.rounds.iter().map(|r| r.accepted).sum();
    let wall: Duration = f.rounds.iter().map(|r| r.wall).sum();
    let accepted_per_s = accepted as f64 / wall.as_secs_f64();
    // Each draftd round against the mean of the raw rounds either side of it.
    let ratios: Vec<f64> = f
        .rounds
        .iter()
        .enumerate()
        .map(|(i, r)| r.rate() / ((f.raws[i].rate() + f.raws[i + 1].rate()) / 2.0))
        .collect();
    let ratio = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let raw_mean = f.raws.iter().map(RawRound::rate).sum::<f64>() / f.raws.len() as f64;
    let p99 = ms(percentile(&latencies, 0.99));
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for r in &f.rounds {
        for (k, v) in &r.statuses {
            *statuses.entry(k.clone()).or_default() += v;
        }
    }
    let refused: usize = statuses.iter().filter(|(k, _)| k.as_str() != "202").map(|(_, v)| v).sum();
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let check = |n: i64| if n == f.accepted_total as i64 { "ok" } else { "MISMATCH" };
    let per = |v: Vec<String>| v.join(", ");

    let line = |label: &str, value: String| println!("{:<32}{value}", format!("{label}:"));
    println!();
    println!("== draftd intake benchmark ==");
    line("deliveries", format!("{} per round x {} rounds (+{} warm-up)", args.deliveries, args.rounds, args.warmup));
    line("senders", args.senders.to_string());
    line("accepted/s", format!("{accepted_per_s:.0}"));
    line("  per round", per(f.rounds.iter().map(|r| format!("{:.0}", r.rate())).collect()));
    line("latency p50", format!("{:.2} ms", ms(percentile(&latencies, 0.50))));
    line("latency p90", format!("{:.2} ms", ms(percentile(&latencies, 0.90))));
    line("latency p99", format!("{p99:.2} ms"));
    line("latency max", format!("{:.2} ms", ms(latencies.last().copied().unwrap_or_default())));
    line("raw insert+commit tx/s", format!("{raw_mean:.0}"));
    line("  per raw round", per(f.raws.iter().map(|r| format!("{:.0}", r.rate())).collect()));
    line("ratio draftd/raw", format!("{ratio:.3}"));
    line("  per round (adjacent raws)", per(ratios.iter().map(|r| format!("{r:.3}")).collect()));
    line(&format!("ratio goal (>= {RATIO_GOAL})"), met(ratio >= RATIO_GOAL).into());
    line(&format!("p99 goal (< {P99_GOAL_MS} ms)"), met(p99 < P99_GOAL_MS).into());
    line("idle RSS", format!("{:.1} MiB", f.idle_rss_kib as f64 / 1024.0));
    line("peak RSS", format!("{:.1} MiB", f.peak_rss_kib as f64 / 1024.0));
    line("start-to-ready (fresh db)", format!("{:.1} ms", ms(f.fresh_ready)));
    line("start-to-ready (migrated db)", format!("{:.1} ms", ms(f.migrated_ready)));
    line("responses other than 202", refused.to_string());
    for (status, n) in statuses.iter().filter(|(k, _)| k.as_str() != "202") {
        line(&format!("  {status}"), n.to_string());
    }
    let rows = |n: i64| format!("{n} (accepted incl. warm-up {}: {})", f.accepted_total, check(n));
    line("runs rows", rows(f.runs_rows));
    line("deliveries rows", rows(f.deliveries_rows));

    if refused > 0 {
        bail!("{refused} deliveries were not answered 202");
    }
    if f.runs_rows != f.accepted_total as i64 || f.deliveries_rows != f.accepted_total as i64 {
        bail!("row counts do not match the accepted deliveries");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Deliveries through draftd.

struct Delivery {
    id: String,
    signature: String,
    body: Bytes,
}

/// Signed `pull_request` opened deliveries for `count` distinct branches starting at `first`.
fn build_deliveries(template: &Value, secret: &str, first: usize, count: usize) -> Vec<Delivery> {
    let mut payload = template.clone();
    (first..first + count)
        .map(|i| {
            payload["pull_request"]["head"]["ref"] = json!(format!("feature/bench-{i}"));
            payload["pull_request"]["head"]["sha"] = json!(format!("{:040x}", i as u128 * 0x9e37_79b9 + 1));
            let body = serde_json::to_vec(&payload).expect("json serialises");
            Delivery {
                id: uuid::Uuid::new_v4().to_string(),
                signature: github_signature(secret, &body),
                body: Bytes::from(body),
            }
        })
        .collect()
}

struct IntakeRound {
    wall: Duration,
    accepted: usize,
    latencies: Vec<Duration>,
    /// Status code (or "transport error") → count.
    statuses: BTreeMap<String, usize>,
    /// A few refusals, to show what went wrong.
    samples: Vec<String>,
    cpu: CpuUse,
}

impl IntakeRound {
    fn rate(&self) -> f64 {
        self.accepted as f64 / self.wall.as_secs_f64()
    }

    fn describe(&self) -> String {
        let mut l = self.latencies.clone();
        l.sort_unstable();
        format!(
            "{} accepted in {:.2} s = {:.0}/s; latency p50 {:.2} p90 {:.2} p99 {:.2} max {:.2} ms; {}",
            self.accepted,
            self.wall.as_secs_f64(),
            self.rate(),
            ms(percentile(&l, 0.5)),
            ms(percentile(&l, 0.9)),
            ms(percentile(&l, 0.99)),
            ms(l.last().copied().unwrap_or_default()),
            self.cpu
        )
    }
}

#[derive(Default)]
struct SenderResult {
    latencies: Vec<Duration>,
    statuses: BTreeMap<String, usize>,
    samples: Vec<String>,
}

/// One task per client, all taking the next delivery from a shared index.
async fn drive_intake(
    url: &str,
    clients: &[reqwest::Client],
    deliveries: Vec<Delivery>,
    server_pid: u32,
) -> IntakeRound {
    let deliveries = Arc::new(deliveries);
    let next = Arc::new(AtomicUsize::new(0));
    let url: Arc<str> = Arc::from(url);
    let before = CpuSnapshot::take(server_pid);
    let t0 = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .map(|client| {
            let (deliveries, next, url) = (deliveries.clone(), next.clone(), url.clone());
            tokio::spawn(async move {
                let mut out =
                    SenderResult { latencies: Vec::with_capacity(deliveries.len() / 8), ..Default::default() };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(d) = deliveries.get(i) else { break };
                    let start = Instant::now();
                    let res = client
                        .post(&*url)
                        .header("content-type", "application/json")
                        .header("x-github-event", "pull_request")
                        .header("x-github-delivery", &d.id)
                        .header("x-hub-signature-256", &d.signature)
                        .body(d.body.clone())
                        .send()
                        .await;
                    let (key, sample) = match res {
                        Ok(res) => {
                            let status = res.status();
                            let body = res.bytes().await;
                            match body {
                                Ok(_) if status == reqwest::StatusCode::ACCEPTED => (status.as_str().to_owned(), None),
                                Ok(b) => (status.as_str().to_owned(), Some(String::from_utf8_lossy(&b).into_owned())),
                                Err(e) => ("transport error".to_owned(), Some(e.to_string())),
                            }
                        }
                        Err(e) => ("transport error".to_owned(), Some(format!("{e:#}"))),
                    };
                    out.latencies.push(start.elapsed());
                    *out.statuses.entry(key.clone()).or_default() += 1;
                    if let Some(s) = sample
                        && out.samples.len() < 3
                    {
                        out.samples.push(format!("{key}: {s}"));
                    }
                }
                out
            })
        })
        .collect();
    let mut round = IntakeRound {
        wall: Duration::ZERO,
        accepted: 0,
        latencies: Vec::with_capacity(deliveries.len()),
        statuses: BTreeMap::new(),
        samples: Vec::new(),
        cpu: CpuUse::default(),
    };
    for task in tasks {
        let r = task.await.expect("sender task panicked");
        round.latencies.extend(r.latencies);
        for (k, v) in r.statuses {
            *round.statuses.entry(k).or_default() += v;
        }
        round.samples.extend(r.samples);
    }
    round.wall = t0.elapsed();
    round.cpu = before.since();
    round.accepted = round.statuses.get("202").copied().unwrap_or(0);
    round.samples.truncate(5);
    round
}

fn report_refusals(what: &str, round: &IntakeRound) {
    let others: Vec<String> =
        round.statuses.iter().filter(|(k, _)| k.as_str() != "202").map(|(k, v)| format!("{k} x{v}")).collect();
    if others.is_empty() {
        return;
    }
    eprintln!("{what}: answers other than 202: {}", others.join(", "));
    for s in &round.samples {
        eprintln!("  e.g. {}", s.chars().take(300).collect::<String>());
    }
}

// ---------------------------------------------------------------------------------------------
// Raw Postgres: single-row insert + commit.

struct RawRound {
    count: usize,
    wall: Duration,
    latencies: Vec<Duration>,
    cpu: CpuUse,
}

impl RawRound {
    fn rate(&self) -> f64 {
        self.count as f64 / self.wall.as_secs_f64()
    }

    fn describe(&self) -> String {
        let mut l = self.latencies.clone();
        l.sort_unstable();
        format!(
            "{} tx in {:.2} s = {:.0} tx/s; latency p50 {:.2} p99 {:.2} ms; {}",
            self.count,
            self.wall.as_secs_f64(),
            self.rate(),
            ms(percentile(&l, 0.5)),
            ms(percentile(&l, 0.99)),
            self.cpu
        )
    }
}

async fn drive_raw(pool: &PgPool, workers: usize, first: usize, count: usize) -> anyhow::Result<RawRound> {
    let next = Arc::new(AtomicUsize::new(0));
    let before = CpuSnapshot::take(0);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (pool, next) = (pool.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(count / workers + 1);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let start = Instant::now();
                    let mut tx = pool.begin().await?;
                    sqlx::query("insert into raw_bench (payload) values ($1)")
                        .bind(json!({ "i": first + i, "kind": "bench", "ok": true }))
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    latencies.push(start.elapsed());
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    for task in tasks {
        latencies.extend(task.await.expect("raw worker panicked").context("raw insert+commit")?);
    }
    let wall = t0.elapsed();
    Ok(RawRound { count, wall, latencies, cpu: before.since() })
}

// ---------------------------------------------------------------------------------------------
// Measurements from /proc.

/// utime + stime of a process, in clock ticks.
fn proc_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Ticks of every `postgres` process (the whole server: other users' backends included).
fn postgres_ticks() -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let mut comm = String::new();
        if File::open(e.path().join("comm")).and_then(|mut f| f.read_to_string(&mut comm)).is_err() {
            continue;
        }
        if comm.trim_end() == "postgres"
            && let Some(t) = proc_ticks(&pid.to_string())
        {
            out.insert(pid, t);
        }
    }
    out
}

/// (busy, total) ticks of the whole machine from /proc/stat.
fn machine_ticks() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return (0, 0) };
    let Some(cpu) = stat.lines().next() else { return (0, 0) };
    let v: Vec<u64> = cpu.split_whitespace().skip(1).take(8).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

struct CpuSnapshot {
    at: Instant,
    server_pid: u32,
    server: u64,
    postgres: HashMap<u32, u64>,
    client: u64,
    machine: (u64, u64),
}

/// CPU used during a round, in cores (1.0 = one core busy the whole time).
#[derive(Default)]
struct CpuUse {
    draftd: Option<f64>,
    postgres: f64,
    client: f64,
    machine_busy: f64,
    cores: usize,
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cpu (cores):")?;
        if let Some(d) = self.draftd {
            write!(f, " draftd {d:.2},")?;
        }
        write!(
            f,
            " postgres {:.2}, bench client {:.2}; machine {:.0}% busy of {} cores",
            self.postgres,
            self.client,
            self.machine_busy * 100.0,
            self.cores
        )
    }
}

const TICKS_PER_SECOND: f64 = 100.0; // USER_HZ: 100 on every Linux the bench targets.

impl CpuSnapshot {
    /// `server_pid` 0: no draftd in this measurement.
    fn take(server_pid: u32) -> Self {
        CpuSnapshot {
            at: Instant::now(),
            server_pid,
            server: if server_pid == 0 { 0 } else { proc_ticks(&server_pid.to_string()).unwrap_or(0) },
            postgres: postgres_ticks(),
            client: proc_ticks("self").unwrap_or(0),
            machine: machine_ticks(),
        }
    }

    fn since(&self) -> CpuUse {
        let now = CpuSnapshot::take(self.server_pid);
        let secs = now.at.duration_since(self.at).as_secs_f64() * TICKS_PER_SECOND;
        let pg: u64 =
            now.postgres.iter().map(|(pid, t)| t.saturating_sub(self.postgres.get(pid).copied().unwrap_or(0))).sum();
        let (busy, total) = (now.machine.0 - self.machine.0, now.machine.1 - self.machine.1);
        CpuUse {
            draftd: (self.server_pid != 0).then(|| now.server.saturating_sub(self.server) as f64 / secs),
            postgres: pg as f64 / secs,
            client: (now.client - self.client) as f64 / secs,
            machine_busy: if total == 0 { 0.0 } else { busy as f64 / total as f64 },
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        }
    }
}
