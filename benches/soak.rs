//! Soak and burst benchmark: the real release `draftd serve` in dry-run cluster mode on a fresh
//! database, reporting to an in-process fake GitHub that answers a fraction of calls with 500, 502 or
//! 429 + `Retry-After: 1`, fed a burst of signed `pull_request` deliveries for many stands (opened,
//! pushes with new commits, exact redeliveries, pushes out of order, closes) by concurrent senders,
//! while the draftd process is killed with SIGKILL at random moments and restarted at once.
//!
//! Run by `scripts/bench-soak.sh [--deliveries N] [--stands N] [--senders N] [--kills N]
//! [--forge-errors F] [--seed N] [--drain-timeout SECS] [--keep-log]`.
//!
//! After the burst it waits until every run is finished and the outbox is empty, then checks that
//! nothing was lost or orphaned: every accepted delivery is a row, every stand has its newest commit,
//! every open stand's last run succeeded at that commit, every closed stand is removed with its
//! folder gone, no folder is left without a stand, and the fake GitHub's sticky comment of every PR
//! shows the stand's final state. Any such count other than 0 makes the bench exit 1.

#[path = "support/mod.rs"]
mod support;

// The tests' fake GitHub (tests/support/forge_fake), answering a share of calls with faults at random;
// this bench uses only part of it.
#[allow(dead_code)]
#[path = "../tests/support/forge_fake/mod.rs"]
mod forge_fake;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use axum::body::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use draftd::stand::StandId;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use support::{Server, ServerSpec, github_signature, ms, percentile, proc_status_kib, with_database};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/webhooks/github");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const SECRET_ENV: &str = "SOAK_GH_SECRET";
const TOKEN_ENV: &str = "SOAK_GH_TOKEN";
const REPO: &str = "Codertocat/Hello-World";
/// A sender gives a delivery up after retrying it this long (draftd down, 5xx).
const GIVE_UP: Duration = Duration::from_secs(120);
const DRAIN_POLL: Duration = Duration::from_millis(500);
const CLOSED_SHARE: f64 = 0.2;
const DUPLICATE_SHARE: f64 = 0.1;
const OUT_OF_ORDER_SHARE: f64 = 0.3;

const USAGE: &str = "usage: scripts/bench-soak.sh [--deliveries N] [--stands N] [--senders N] [--kills N] [--forge-errors F] [--seed N] [--drain-timeout SECS] [--keep-log]
  --deliveries N     signed pull_request deliveries in the burst, duplicates included (default 5000)
  --stands N         stands (branches feature/soak-<i>, one PR each) they are spread over (default 500)
  --senders N        concurrent senders (default 16)
  --kills N          SIGKILLs of draftd, each followed by a restart at once (default 3): about two
                     thirds during the burst, the rest during the drain
  --forge-errors F   share of the fake GitHub's answers that are 500, 502 or 429 + Retry-After: 1 (default 0.05)
  --seed N           random seed of the workload and the faults (default: from the clock; printed)
  --drain-timeout S  how long to wait for runs and reports to finish after the burst (default 600)
  --keep-log         keep draftd's log file even when the run succeeds";

struct Args {
    deliveries: usize,
    stands: usize,
    senders: usize,
    kills: usize,
    forge_errors: f64,
    seed: u64,
    drain_timeout: Duration,
    keep_log: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        deliveries: 5000,
        stands: 500,
        senders: 16,
        kills: 3,
        forge_errors: 0.05,
        seed: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64)?,
        drain_timeout: Duration::from_secs(600),
        keep_log: false,
    };
    let mut flags = support::Flags::new(USAGE);
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--deliveries" => args.deliveries = flags.whole(&flag)?,
            "--stands" => args.stands = flags.whole(&flag)?,
            "--senders" => args.senders = flags.whole(&flag)?,
            "--kills" => args.kills = flags.whole(&flag)?,
            "--seed" => args.seed = flags.whole(&flag)?,
            "--drain-timeout" => args.drain_timeout = Duration::from_secs(flags.whole(&flag)?),
            "--forge-errors" => {
                let v = flags.value(&flag)?;
                args.forge_errors = v
                    .parse()
                    .ok()
                    .filter(|f: &f64| (0.0..1.0).contains(f))
                    .ok_or_else(|| anyhow!("--forge-errors: {v:?} is not a fraction in [0, 1)\n{USAGE}"))?;
            }
            "--keep-log" => args.keep_log = true,
            other => return Err(flags.unknown(other)),
        }
    }
    if args.stands == 0 || args.senders == 0 {
        bail!("--stands and --senders must be at least 1\n{USAGE}");
    }
    if args.deliveries < 2 * args.stands {
        bail!("--deliveries must be at least twice --stands (an opened PR and a push each)\n{USAGE}");
    }
    if args.deliveries / args.stands > 90 {
        bail!("at most 90 deliveries per stand\n{USAGE}");
    }
    Ok(args)
}

fn main() -> ExitCode {
    support::main_with(parse_args, bench)
}

/// Creates the database, runs everything, and drops the database however the run ended.
async fn bench(args: Args) -> anyhow::Result<()> {
    support::with_fresh_database(
        "draftd_soak",
        "scripts/bench-soak.sh",
        args.keep_log,
        |admin_url, db, log_path| async move { run(&args, &admin_url, &db, &log_path).await },
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// The workload.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Opened,
    Push,
    Closed,
}

/// One delivery as first sent; a redelivery is another entry in the send order with the same index.
struct Delivery {
    stand: usize,
    kind: Kind,
    id: String,
    signature: String,
    body: Bytes,
    sha: String,
    updated_at: DateTime<Utc>,
}

struct Workload {
    deliveries: Vec<Delivery>,
    /// Indexes into `deliveries`, in send order; an index appearing twice is a planned redelivery.
    order: Vec<usize>,
    closing: Vec<bool>,
    out_of_order: usize,
    redeliveries: usize,
}

fn fixture(name: &str) -> anyhow::Result<Value> {
    let path = Path::new(FIXTURES).join(format!("pull_request.{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?)
        .with_context(|| format!("parsing {}", path.display()))
}

fn branch(stand: usize) -> String {
    format!("feature/soak-{stand}")
}

/// A commit sha whose first 7 characters (what the comment shows) tell stand and push apart.
fn sha(rng: &mut fastrand::Rng, stand: usize, push: usize) -> String {
    format!("{:07x}{:033x}", stand * 100 + push, rng.u128(..) >> 4)
}

fn build_workload(args: &Args, secret: &str, rng: &mut fastrand::Rng) -> anyhow::Result<Workload> {
    let templates =
        [("opened", fixture("opened")?), ("synchronize", fixture("synchronize")?), ("closed", fixture("closed")?)];
    let base = Utc.with_ymd_and_hms(2026, 11, 1, 8, 0, 0).single().expect("valid time");
    let mut deliveries = Vec::new();
    let mut per_stand: Vec<Vec<usize>> = Vec::with_capacity(args.stands);
    let mut closing = Vec::with_capacity(args.stands);
    let (mut out_of_order, mut redeliveries) = (0, 0);
    for stand in 0..args.stands {
        // This stand's share of the deliveries, redeliveries included.
        let budget = args.deliveries / args.stands + usize::from(stand < args.deliveries % args.stands);
        let closes = rng.f64() < CLOSED_SHARE;
        closing.push(closes);
        let dups = ((budget as f64 * DUPLICATE_SHARE) + rng.f64()).floor() as usize;
        let dups = dups.min(budget.saturating_sub(2 + usize::from(closes)));
        let pushes = budget - dups - 1 - usize::from(closes);
        let mut mine = Vec::new();
        let mut at = base + chrono::Duration::seconds(stand as i64);
        let mut last_sha = String::new();
        let mut before = format!("{:040x}", stand);
        for step in 0..=pushes + usize::from(closes) {
            let (kind, action) = match step {
                0 => (Kind::Opened, "opened"),
                s if s <= pushes => (Kind::Push, "synchronize"),
                _ => (Kind::Closed, "closed"),
            };
            let mut payload = templates.iter().find(|(n, _)| *n == action).expect("template").1.clone();
            let commit = if kind == Kind::Closed { last_sha.clone() } else { sha(rng, stand, step) };
            let number = stand as u64 + 1;
            payload["number"] = json!(number);
            let pr = &mut payload["pull_request"];
            pr["number"] = json!(number);
            pr["head"]["ref"] = json!(branch(stand));
            pr["head"]["sha"] = json!(commit);
            pr["updated_at"] = json!(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            if kind == Kind::Push {
                payload["before"] = json!(before);
                payload["after"] = json!(commit);
            }
            if kind == Kind::Closed {
                payload["pull_request"]["closed_at"] = payload["pull_request"]["updated_at"].clone();
            }
            let body = serde_json::to_vec(&payload)?;
            mine.push(deliveries.len());
            deliveries.push(Delivery {
                stand,
                kind,
                id: uuid::Uuid::new_v4().to_string(),
                signature: github_signature(secret, &body),
                body: Bytes::from(body),
                sha: commit.clone(),
                updated_at: at,
            });
            before = commit.clone();
            last_sha = commit;
            at += chrono::Duration::minutes(1);
        }
        // Out of order: a push sent after the next one (its update time is older).
        if pushes >= 2 && rng.f64() < OUT_OF_ORDER_SHARE {
            let i = 1 + rng.usize(..pushes - 1);
            mine.swap(i, i + 1);
            out_of_order += 1;
        }
        // Exact redeliveries: the same id and body again, later than the original.
        for _ in 0..dups {
            let original = mine[rng.usize(..mine.len())];
            let pos = mine.iter().position(|&d| d == original).expect("present");
            let at = pos + 1 + rng.usize(..mine.len() - pos);
            mine.insert(at, original);
            redeliveries += 1;
        }
        per_stand.push(mine);
    }
    // Interleave the stands: each pick takes the next delivery of a stand drawn in proportion to
    // what it has left, so every stand's deliveries spread over the whole burst, in its own order.
    let mut cursors = vec![0usize; args.stands];
    let mut left: Vec<usize> = (0..args.stands).filter(|&s| !per_stand[s].is_empty()).collect();
    let mut remaining: usize = per_stand.iter().map(Vec::len).sum();
    let mut order = Vec::with_capacity(remaining);
    while remaining > 0 {
        let mut pick = rng.usize(..remaining);
        let mut chosen = 0;
        for (k, &s) in left.iter().enumerate() {
            let n = per_stand[s].len() - cursors[s];
            if pick < n {
                chosen = k;
                break;
            }
            pick -= n;
        }
        let s = left[chosen];
        order.push(per_stand[s][cursors[s]]);
        cursors[s] += 1;
        remaining -= 1;
        if cursors[s] == per_stand[s].len() {
            left.swap_remove(chosen);
        }
    }
    Ok(Workload { deliveries, order, closing, out_of_order, redeliveries })
}

// ---------------------------------------------------------------------------------------------
// draftd: the current process, kills and restarts, RSS.

struct ProcessRecord {
    pid: u32,
    start_rss_kib: u64,
    peak_kib: u64,
    end_rss_kib: u64,
    /// How it ended: "SIGKILL during the burst", "SIGTERM at the end", …
    end: String,
    ready_after: Duration,
}

struct Draftd {
    spec: ServerSpec,
    addr: String,
    server: Mutex<Option<Server>>,
    pid: AtomicU32,
    records: Mutex<Vec<ProcessRecord>>,
    probe: reqwest::Client,
}

impl Draftd {
    async fn start(&self) -> anyhow::Result<()> {
        let mut server = Server::start_at(&self.spec, &self.addr)?;
        let ready = server.wait_ready(&self.probe).await?;
        let pid = server.pid;
        *self.server.lock().unwrap() = Some(server);
        self.pid.store(pid, Ordering::Relaxed);
        let rss = proc_status_kib(pid, "VmRSS").unwrap_or(0);
        self.records.lock().unwrap().push(ProcessRecord {
            pid,
            start_rss_kib: rss,
            peak_kib: rss,
            end_rss_kib: 0,
            end: "running".into(),
            ready_after: ready,
        });
        Ok(())
    }

    /// Reads the current process's RSS into its record; the peak is its high-water mark.
    fn sample(&self) {
        let pid = self.pid.load(Ordering::Relaxed);
        if pid == 0 {
            return;
        }
        let (rss, hwm) = (proc_status_kib(pid, "VmRSS"), proc_status_kib(pid, "VmHWM"));
        let mut records = self.records.lock().unwrap();
        if let Some(r) = records.iter_mut().rev().find(|r| r.pid == pid) {
            if let Ok(hwm) = hwm {
                r.peak_kib = r.peak_kib.max(hwm);
            }
            if let Ok(rss) = rss {
                r.end_rss_kib = rss;
            }
        }
    }

    /// SIGKILL the current process, then start a new one on the same address at once.
    async fn kill_and_restart(&self, when: &str) -> anyhow::Result<()> {
        self.sample();
        let old = self.server.lock().unwrap().take();
        if let Some(mut server) = old {
            server.kill()?;
            let pid = server.pid;
            if let Some(r) = self.records.lock().unwrap().iter_mut().rev().find(|r| r.pid == pid) {
                r.end = format!("SIGKILL {when}");
            }
        }
        self.pid.store(0, Ordering::Relaxed);
        self.start().await
    }

    /// SIGTERM the current process (the end of the bench).
    fn stop(&self) -> anyhow::Result<()> {
        self.sample();
        let old = self.server.lock().unwrap().take();
        if let Some(mut server) = old {
            let took = server.stop()?;
            let pid = server.pid;
            if let Some(r) = self.records.lock().unwrap().iter_mut().rev().find(|r| r.pid == pid) {
                r.end = format!("SIGTERM at the end ({:.0} ms to exit)", ms(took));
            }
        }
        self.pid.store(0, Ordering::Relaxed);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Senders.

/// What became of one send (an entry of the send order).
#[derive(Default, Clone)]
struct Sent {
    /// HTTP status of the final answer; 0 when the sender gave up without one.
    status: u16,
    body: Value,
    /// Latency of the attempt that got the final answer.
    latency: Duration,
    /// Attempts that got no answer (connection refused or reset: draftd killed) or a 5xx.
    retries: u32,
}

async fn send_all(
    url: &str,
    clients: &[reqwest::Client],
    work: &Arc<Workload>,
    progress: &Arc<AtomicUsize>,
) -> Vec<Sent> {
    let next = Arc::new(AtomicUsize::new(0));
    let url: Arc<str> = Arc::from(url);
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .map(|client| {
            let (work, next, url, progress) = (work.clone(), next.clone(), url.clone(), progress.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let slot = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&index) = work.order.get(slot) else { break };
                    let sent = send_one(&client, &url, &work.deliveries[index]).await;
                    progress.fetch_add(1, Ordering::Relaxed);
                    out.push((slot, sent));
                }
                out
            })
        })
        .collect();
    let mut all = vec![Sent::default(); work.order.len()];
    for task in tasks {
        for (slot, sent) in task.await.expect("sender task panicked") {
            all[slot] = sent;
        }
    }
    all
}

/// Sends until draftd answers something other than a 5xx, as GitHub redelivers: the same id and body.
async fn send_one(client: &reqwest::Client, url: &str, d: &Delivery) -> Sent {
    let t0 = Instant::now();
    let mut retries = 0;
    loop {
        let start = Instant::now();
        let res = client
            .post(url)
            .header("content-type", "application/json")
            .header("x-github-event", "pull_request")
            .header("x-github-delivery", &d.id)
            .header("x-hub-signature-256", &d.signature)
            .body(d.body.clone())
            .send()
            .await;
        if let Ok(res) = res {
            let status = res.status().as_u16();
            if let Ok(bytes) = res.bytes().await
                && status < 500
            {
                let body = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
                return Sent { status, body, latency: start.elapsed(), retries };
            }
        }
        retries += 1;
        if t0.elapsed() > GIVE_UP {
            return Sent { status: 0, body: Value::Null, latency: start.elapsed(), retries };
        }
        tokio::time::sleep(Duration::from_millis(100 + fastrand::u64(..200))).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

async fn run(args: &Args, admin_url: &str, db: &str, log_path: &Path) -> anyhow::Result<()> {
    println!("seed {}", args.seed);
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let dir = tempfile::Builder::new().prefix("draftd-soak-").tempdir()?;
    let stands_dir = dir.path().join("stands");
    std::fs::create_dir_all(&stands_dir)?;
    let secret = format!("soak-{}", uuid::Uuid::new_v4().simple());
    let token = forge_fake::TOKEN.to_owned();

    let forge = forge_fake::Fake::start(draftd::config::ForgeKind::Github).await;
    forge.fail_at_random(args.forge_errors, args.seed ^ 0x5eed);
    let forge_addr = forge.url().trim_start_matches("http://").to_owned();

    let config = dir.path().join("draftd.toml");
    std::fs::write(
        &config,
        format!(
            r#"[cluster]
mode = "dry-run"
dry_run_dir = "{stands}"
helm_path = "{root}/.tools/bin/helm"

[stands]
workers = 4
max_concurrent_runs = 8
lease = "2s"

# Resync would list the fake's PRs, which it does not keep; the checks below expect only the webhooks' effects.
[reaper]
enabled = false

[github]
api_url = "http://{forge_addr}"
token_env = "{TOKEN_ENV}"
# The bench is about deliveries surviving kills, not GitHub's pacing (benches/forge_pacing.rs).
write_gap = "0s"

[[projects]]
name = "soak"
forge = "github"
repo = "{REPO}"
webhook_secret_env = "{SECRET_ENV}"
chart = "{root}/charts/stand"
values = ["{root}/values/draft.yaml"]
host = "{{stand}}.draft.example.test"
branches = ["feature/**"]
"#,
            stands = stands_dir.display(),
            root = ROOT,
        ),
    )?;
    let draftd = Arc::new(Draftd {
        spec: ServerSpec {
            config,
            database_url: with_database(admin_url, db),
            log: log_path.to_owned(),
            dir: dir.path().to_owned(),
            binary: PathBuf::from(env!("CARGO_BIN_EXE_draftd")),
            env: vec![(SECRET_ENV.to_owned(), secret.clone()), (TOKEN_ENV.to_owned(), token.clone())],
        },
        addr: format!("127.0.0.1:{}", support::free_port()?),
        server: Mutex::new(None),
        pid: AtomicU32::new(0),
        records: Mutex::new(Vec::new()),
        probe: reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(3)).build()?,
    });
    // Whatever happens below, no draftd process outlives the bench.
    struct StopOnDrop(Arc<Draftd>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            let _ = self.0.stop();
        }
    }
    let _stop_guard = StopOnDrop(draftd.clone());
    draftd.start().await?;
    println!("draftd serve ready on {} (dry-run, fake GitHub on {forge_addr})", draftd.addr);

    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&draftd.spec.database_url)
        .await?;

    let work = Arc::new(build_workload(args, &secret, &mut rng)?);
    let closing = work.closing.iter().filter(|c| **c).count();
    println!(
        "workload: {} sends ({} distinct deliveries, {} exact redeliveries) over {} stands; {} stands closed at the end, {} with a push out of order",
        work.order.len(),
        work.deliveries.len(),
        work.redeliveries,
        args.stands,
        closing,
        work.out_of_order
    );

    // RSS sampler.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (draftd, sampling) = (draftd.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                draftd.sample();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    // Kills: about two thirds at random points of the burst, the rest at random moments of the drain.
    let burst_kills = args.kills - args.kills / 3;
    let drain_kills = args.kills - burst_kills;
    let mut thresholds: Vec<usize> =
        (0..burst_kills).map(|_| (work.order.len() as f64 * (0.1 + 0.8 * rng.f64())) as usize).collect();
    thresholds.sort_unstable();
    let progress = Arc::new(AtomicUsize::new(0));
    let burst_done = Arc::new(AtomicBool::new(false));
    let killer = {
        let (draftd, progress, burst_done) = (draftd.clone(), progress.clone(), burst_done.clone());
        tokio::spawn(async move {
            let mut done = Vec::new();
            for t in thresholds {
                while progress.load(Ordering::Relaxed) < t && !burst_done.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if burst_done.load(Ordering::Relaxed) {
                    break;
                }
                let at = Instant::now();
                draftd.kill_and_restart(&format!("during the burst (after {t} sends)")).await?;
                done.push((t, at.elapsed()));
            }
            anyhow::Ok(done)
        })
    };

    let clients = (0..args.senders)
        .map(|_| reqwest::Client::builder().no_proxy().pool_max_idle_per_host(1).tcp_nodelay(true).build())
        .collect::<Result<Vec<_>, _>>()?;
    let url = format!("http://{}/webhooks/github", draftd.addr);
    let t0 = Instant::now();
    let sent = send_all(&url, &clients, &work, &progress).await;
    let burst = t0.elapsed();
    burst_done.store(true, Ordering::Relaxed);
    let burst_kill_times = killer.await.expect("killer task panicked")?;
    println!("burst: {} sends in {:.1} s", sent.len(), burst.as_secs_f64());
    for (t, took) in &burst_kill_times {
        println!("  SIGKILL after {t} sends; the new process was ready {:.0} ms later", ms(*took));
    }

    // Drain, with the remaining kills at random moments while work is left.
    let drain_start = Instant::now();
    let mut kill_at: Vec<Duration> =
        (0..drain_kills).map(|_| Duration::from_millis(1000 + rng.u64(..15_000))).collect();
    kill_at.sort_unstable();
    let mut drain_kill_notes = Vec::new();
    let (drained, last_counts) = loop {
        let counts: (i64, i64) = sqlx::query_as(
            "select (select count(*) from runs where state in ('queued', 'running')),
                    (select count(*) from outbox where state = 'pending')",
        )
        .fetch_one(&pool)
        .await?;
        if counts == (0, 0) {
            break (true, counts);
        }
        if drain_start.elapsed() > args.drain_timeout {
            break (false, counts);
        }
        if let Some(at) = kill_at.first().copied()
            && drain_start.elapsed() >= at
        {
            kill_at.remove(0);
            let t = Instant::now();
            draftd.kill_and_restart(&format!("during the drain ({:.1} s in)", at.as_secs_f64())).await?;
            drain_kill_notes.push(format!(
                "  SIGKILL {:.1} s into the drain with {} runs and {} reports left; ready again {:.0} ms later",
                at.as_secs_f64(),
                counts.0,
                counts.1,
                ms(t.elapsed())
            ));
        }
        tokio::time::sleep(DRAIN_POLL).await;
    };
    let drain = drain_start.elapsed();
    for n in &drain_kill_notes {
        println!("{n}");
    }
    if !kill_at.is_empty() {
        println!("  ({} drain kill(s) not made: everything was done first)", kill_at.len());
    }
    draftd.sample();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;

    let checks = check(args, &work, &sent, &pool, &stands_dir, &forge).await?;
    draftd.stop()?;
    pool.close().await;

    // ------------------------------------------------------------------ the report
    let line = |k: &str, v: String| println!("{k:<60} {v}");
    println!("\n== soak report ==");
    line("deliveries sent (redeliveries included)", sent.len().to_string());
    line("stands", format!("{} ({} closed at the end)", args.stands, closing));
    line("senders", args.senders.to_string());
    line(
        "burst",
        format!(
            "{:.1} s = {:.0} deliveries/s (answered, kills included)",
            burst.as_secs_f64(),
            sent.len() as f64 / burst.as_secs_f64()
        ),
    );
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for s in &sent {
        *statuses.entry(s.status).or_default() += 1;
    }
    line(
        "answers",
        statuses
            .iter()
            .map(|(k, v)| if *k == 0 { format!("gave up x{v}") } else { format!("{k} x{v}") })
            .collect::<Vec<_>>()
            .join(", "),
    );
    let retried = sent.iter().filter(|s| s.retries > 0).count();
    let retries: u32 = sent.iter().map(|s| s.retries).sum();
    line("sends retried (no answer or 5xx: draftd killed)", format!("{retried} sends, {retries} retries"));
    let mut latencies: Vec<Duration> = sent.iter().filter(|s| s.status != 0).map(|s| s.latency).collect();
    latencies.sort_unstable();
    line(
        "intake latency (answered attempt)",
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            ms(latencies.last().copied().unwrap_or_default())
        ),
    );
    line(
        "drain",
        if drained {
            format!("{:.1} s until no run queued/running and no report pending", drain.as_secs_f64())
        } else {
            format!(
                "DID NOT DRAIN in {:.0} s: {} runs queued/running, {} reports pending",
                drain.as_secs_f64(),
                last_counts.0,
                last_counts.1
            )
        },
    );
    line("runs by kind and state", String::new());
    for (kind, state, n) in &checks.runs_by_state {
        line(&format!("  {kind} {state}"), n.to_string());
    }
    line("duplicates avoided", String::new());
    line(
        "  planned redeliveries answered 200 with the original answer",
        format!("{} of {}", checks.redeliveries_ok, checks.redeliveries),
    );
    line("  retried sends answered 200 (first attempt was recorded)", checks.retried_200.to_string());
    line("  automatic deploys per (stand, sha), most", checks.max_auto_per_sha.to_string());
    line("  deploy runs (each a distinct commit of its stand)", checks.deploy_runs.to_string());
    let seen = forge.seen();
    let violations = forge.violations();
    line(
        "fake GitHub",
        format!(
            "{} requests, faults {}, calls it refused as the real GitHub would or does not document {}",
            seen.len(),
            forge.fault_counts().iter().map(|(k, v)| format!("{k} x{v}")).collect::<Vec<_>>().join(", "),
            violations.len(),
        ),
    );
    let mut calls: BTreeMap<String, u64> = BTreeMap::new();
    for s in &seen {
        *calls.entry(forge_fake::github::endpoint_of(&s.method, forge_fake::path_only(&s.path))).or_default() += 1;
    }
    for (what, n) in &calls {
        line(&format!("  {what}"), n.to_string());
    }
    for v in violations.iter().take(20) {
        line("  refused", v.clone());
    }
    line(
        "outbox rows by state",
        checks.outbox_by_state.iter().map(|(s, n)| format!("{s} {n}")).collect::<Vec<_>>().join(", "),
    );
    let records = draftd.records.lock().unwrap();
    line("draftd processes", format!("{} ({} restarts after SIGKILL)", records.len(), records.len() - 1));
    for r in records.iter() {
        line(
            &format!("  pid {}", r.pid),
            format!(
                "ready in {:.0} ms; RSS start {:.1} MiB, peak {:.1} MiB, end {:.1} MiB; {}",
                ms(r.ready_after),
                r.start_rss_kib as f64 / 1024.0,
                r.peak_kib as f64 / 1024.0,
                r.end_rss_kib as f64 / 1024.0,
                r.end
            ),
        );
    }
    let peak = records.iter().map(|r| r.peak_kib).max().unwrap_or(0);
    line(
        "RSS start / peak (any process) / end",
        format!(
            "{:.1} / {:.1} / {:.1} MiB",
            records.first().map(|r| r.start_rss_kib).unwrap_or(0) as f64 / 1024.0,
            peak as f64 / 1024.0,
            records.last().map(|r| r.end_rss_kib).unwrap_or(0) as f64 / 1024.0
        ),
    );
    drop(records);
    println!("\n-- lost or orphaned (each must be 0) --");
    let mut bad = 0;
    for (what, n, examples) in &checks.counts {
        line(what, if *n == 0 { "0".into() } else { format!("{n}   <-- e.g. {}", examples.join("; ")) });
        bad += n;
    }
    if !drained {
        bail!("draftd did not drain within {:?}", args.drain_timeout);
    }
    if bad > 0 {
        bail!("{bad} things lost or orphaned (see above)");
    }
    println!("\nnothing lost, nothing orphaned");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The checks.

struct Checks {
    runs_by_state: Vec<(String, String, i64)>,
    outbox_by_state: Vec<(String, i64)>,
    redeliveries: usize,
    redeliveries_ok: usize,
    retried_200: usize,
    max_auto_per_sha: i64,
    deploy_runs: i64,
    /// (what, count, a few examples)
    counts: Vec<(String, usize, Vec<String>)>,
}

#[derive(sqlx::FromRow)]
struct StandRow {
    stand_id: StandId,
    branch: String,
    namespace: String,
    state: String,
    head_sha: Option<String>,
    pr_number: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct LastRun {
    stand_id: StandId,
    kind: String,
    state: String,
    sha: Option<String>,
}

async fn check(
    args: &Args,
    work: &Workload,
    sent: &[Sent],
    pool: &PgPool,
    stands_dir: &Path,
    forge: &forge_fake::Fake,
) -> anyhow::Result<Checks> {
    let mut counts: Vec<(String, usize, Vec<String>)> = Vec::new();
    let mut push = |what: &str, examples: Vec<String>| {
        let n = examples.len();
        counts.push((what.to_owned(), n, examples.into_iter().take(3).collect()));
    };

    // Which deliveries were accepted (202/200), and the newest accepted commit per stand.
    let accepted_answer = |s: &Sent| s.status == 202 || s.status == 200;
    let mut accepted: HashSet<usize> = HashSet::new();
    let mut first_answer: HashMap<usize, &Sent> = HashMap::new();
    let (mut redeliveries, mut redeliveries_ok, mut retried_200) = (0, 0, 0);
    let mut not_accepted = Vec::new();
    for (slot, s) in sent.iter().enumerate() {
        let index = work.order[slot];
        if accepted_answer(s) {
            accepted.insert(index);
        } else {
            not_accepted.push(format!("{} answered {} {}", work.deliveries[index].id, s.status, s.body));
        }
        if s.status == 200 && s.retries > 0 {
            retried_200 += 1;
        }
        match first_answer.get(&index) {
            None => {
                first_answer.insert(index, s);
            }
            Some(first) => {
                redeliveries += 1;
                // The redelivery is answered 200 with the first answer (whichever of the two reached
                // draftd first got the 202).
                let (a, b) = (first, s);
                let pair_ok = matches!((a.status, b.status), (202, 200) | (200, 202) | (200, 200)) && a.body == b.body;
                if pair_ok {
                    redeliveries_ok += 1;
                }
            }
        }
    }
    push("deliveries not accepted (refused, or given up after 2 min)", not_accepted);
    let redelivery_bad = redeliveries - redeliveries_ok;
    push(
        "redeliveries not answered 200 with the original answer",
        (0..redelivery_bad).map(|_| "see the answers above".to_owned()).collect(),
    );

    let recorded: HashSet<String> =
        sqlx::query_scalar::<_, String>("select delivery_id from deliveries where forge = 'github'")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    let mut ids: Vec<&usize> = accepted.iter().collect();
    ids.sort_unstable();
    push(
        "lost deliveries (accepted, no row in deliveries)",
        ids.iter()
            .map(|&&i| &work.deliveries[i])
            .filter(|d| !recorded.contains(&d.id))
            .map(|d| format!("{} ({:?} of stand {})", d.id, d.kind, d.stand))
            .collect(),
    );

    // Newest accepted commit per stand (by the payload's update time, as draftd orders events).
    let mut newest: HashMap<usize, &Delivery> = HashMap::new();
    for &i in &accepted {
        let d = &work.deliveries[i];
        let e = newest.entry(d.stand).or_insert(d);
        if d.updated_at > e.updated_at {
            *e = d;
        }
    }
    let closed_accepted: HashSet<usize> =
        accepted.iter().map(|&i| &work.deliveries[i]).filter(|d| d.kind == Kind::Closed).map(|d| d.stand).collect();

    let stands: Vec<StandRow> = sqlx::query_as(
        "select stand_id, branch, namespace, state, head_sha, pr_number from stands where project = 'soak'",
    )
    .fetch_all(pool)
    .await?;
    let by_branch: HashMap<&str, &StandRow> = stands.iter().map(|s| (s.branch.as_str(), s)).collect();
    let last_runs: Vec<LastRun> = sqlx::query_as(
        "select distinct on (stand_id) stand_id, kind, state, sha from runs order by stand_id, number desc",
    )
    .fetch_all(pool)
    .await?;
    let last_run: HashMap<StandId, &LastRun> = last_runs.iter().map(|r| (r.stand_id, r)).collect();
    let mut comments: HashMap<u64, Vec<String>> = HashMap::new();
    for c in forge.all_comments() {
        comments.entry(c.number).or_default().push(c.body);
    }

    let (mut lost_stands, mut closed_not_removed, mut closed_folder, mut open_not_ready) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut report_lost, mut sticky_twice) = (Vec::new(), Vec::new());
    for stand in 0..args.stands {
        let Some(want) = newest.get(&stand) else { continue };
        let name = branch(stand);
        let Some(row) = by_branch.get(name.as_str()) else {
            lost_stands.push(format!("{name}: no stand row"));
            continue;
        };
        if row.head_sha.as_deref() != Some(want.sha.as_str()) {
            lost_stands.push(format!("{name}: head_sha {:?}, newest accepted {}", row.head_sha, want.sha));
        }
        let folder = stands_dir.join(&row.namespace);
        let run = last_run.get(&row.stand_id);
        let pr_comments = row.pr_number.and_then(|n| comments.get(&(n as u64))).cloned().unwrap_or_default();
        if pr_comments.len() > 1 {
            sticky_twice.push(format!("{name}: {} comments", pr_comments.len()));
        }
        let comment = pr_comments.last().map(String::as_str).unwrap_or("");
        let short = &want.sha[..7];
        if closed_accepted.contains(&stand) {
            if row.state != "removed" {
                closed_not_removed.push(format!("{name}: {}", row.state));
            }
            if folder.exists() {
                closed_folder.push(format!("{name}: {}", folder.display()));
            }
            if !comment.contains("Draft stand removed") {
                report_lost.push(format!("{name} (closed): comment {:?}", first_line(comment)));
            }
        } else {
            let ok = run
                .is_some_and(|r| r.kind == "deploy" && r.state == "succeeded" && r.sha.as_deref() == Some(&want.sha));
            if !ok {
                open_not_ready.push(format!(
                    "{name}: last run {}",
                    run.map(|r| format!("{} {} at {:?}", r.kind, r.state, r.sha)).unwrap_or_else(|| "none".into())
                ));
            }
            if !(comment.contains("Draft stand ready") && comment.contains(short)) {
                report_lost.push(format!("{name} (open, {short}): comment {:?}", first_line(comment)));
            }
        }
    }
    push("lost stands (no row, or head_sha not the newest accepted)", lost_stands);

    let unfinished: Vec<(i64, String)> =
        sqlx::query_as("select run_id, state from runs where state in ('queued', 'running') order by run_id")
            .fetch_all(pool)
            .await?;
    push(
        "runs not terminal after the drain",
        unfinished.into_iter().map(|(id, state)| format!("run {id} {state}")).collect(),
    );
    let twice: Vec<(i64, String, i64)> = sqlx::query_as(
        "select run_id, name, count(*) from steps group by run_id, name having count(*) > 1 order by run_id",
    )
    .fetch_all(pool)
    .await?;
    push(
        "steps recorded more than once in a run",
        twice.into_iter().map(|(r, n, c)| format!("run {r} {n} x{c}")).collect(),
    );
    let auto: Vec<(i64, Option<String>, i64)> = sqlx::query_as(
        "select stand_id, sha, count(*) from runs where kind = 'deploy' and automatic
         group by stand_id, sha order by count(*) desc",
    )
    .fetch_all(pool)
    .await?;
    let max_auto_per_sha = auto.first().map(|a| a.2).unwrap_or(0);
    push(
        "commits with more than one automatic deploy",
        auto.iter().filter(|a| a.2 > 1).map(|a| format!("stand {} {:?} x{}", a.0, a.1, a.2)).collect(),
    );
    push("closed stands not removed", closed_not_removed);
    push("closed stands whose dry-run folder is still on disk", closed_folder);
    let active: HashSet<&str> = stands.iter().filter(|s| s.state == "active").map(|s| s.namespace.as_str()).collect();
    let mut stray = Vec::new();
    for e in std::fs::read_dir(stands_dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if !active.contains(name.as_str()) {
            stray.push(name);
        }
    }
    stray.sort();
    push("folders on disk with no active stand", stray);
    push("open stands whose last run is not a succeeded deploy of the newest commit", open_not_ready);
    push("reports lost (the PR's comment does not show the final state)", report_lost);
    let outbox_left: Vec<(i64, i64, String, String)> = sqlx::query_as(
        "select outbox_id, stand_id, kind, state from outbox where state in ('pending', 'failed') order by outbox_id",
    )
    .fetch_all(pool)
    .await?;
    push(
        "outbox rows pending or failed",
        outbox_left.into_iter().map(|(id, s, k, st)| format!("outbox {id} (stand {s}, {k}) {st}")).collect(),
    );
    push("PRs with more than one sticky comment", sticky_twice);

    let runs_by_state: Vec<(String, String, i64)> =
        sqlx::query_as("select kind, state, count(*) from runs group by kind, state order by kind, state")
            .fetch_all(pool)
            .await?;
    let outbox_by_state: Vec<(String, i64)> =
        sqlx::query_as("select state, count(*) from outbox group by state order by state").fetch_all(pool).await?;
    let deploy_runs = runs_by_state.iter().filter(|r| r.0 == "deploy").map(|r| r.2).sum();
    Ok(Checks {
        runs_by_state,
        outbox_by_state,
        redeliveries,
        redeliveries_ok,
        retried_200,
        max_auto_per_sha,
        deploy_runs,
        counts,
    })
}

fn first_line(s: &str) -> String {
    s.lines().find(|l| l.starts_with("###")).unwrap_or("(no comment)").to_owned()
}
