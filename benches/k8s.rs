//! Webhook to verified stand on the local Kubernetes control plane (scripts/k8s-up.sh): the real
//! `draftd serve` in kubernetes mode as its own ServiceAccount, the real helm and Postgres, kwok for
//! kubelets. For each of N stands, one after another: a signed `pull_request` opened delivery, then
//! the time until the run's verify step has passed, split by step; then the close and the time until
//! the teardown run has finished (the namespace gone, as teardown waits for it).
//!
//! With `--wakes N` (issue 23), one more stand is deployed and then, N times, put to sleep (a sleep
//! run, as the idle sweep queues it) and woken by a request that arrives at draftd's wake listener as
//! ingress-nginx's default backend sends it (`X-Namespace`, `X-Original-URI`). Timed: from that first
//! request to the app's 200 (the listener holds the request until the stand is awake, then
//! redirects; the redirect is followed to the app, which stands in for the pods behind the ingress,
//! as no container runs under kwok). draftd's share: the total less the rollout (the wake's verify
//! step less its probe window: kwok making the pods Ready) and the probe window itself; what is left
//! is queueing the wake, a worker claiming it, new logins and their Secret, the scale calls, the held
//! request noticing (it looks every 200 ms) and the redirect.
//!
//! Run by `scripts/bench-k8s.sh [--stands N] [--wakes N] [--draftd PATH]`. Reported: webhook → verified p50/p95,
//! each step's, and draftd's own share: the total less helm's time (the deploy step), the rollout's
//! (the verify step less its probe window) and the migrate Job's own run (as its status counts it). The probe window is set short (2 probes over 1 s) so the
//! figure is draftd's and the cluster's, not a configured wait.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sqlx::PgPool;
use support::{Server, ServerSpec, free_port, github_signature, ms, percentile, with_database, with_fresh_database};

const USAGE: &str = "usage: scripts/bench-k8s.sh [--stands N] [--wakes N] [--draftd PATH]\n  --stands N     stands made and torn down, one after another (default 20)\n  --wakes N      then sleeps and wakes of one more stand, each woken by a request (default 0)\n  --draftd PATH  another draftd binary to measure (an A/B across a change)";
const SECRET: &str = "bench-k8s-webhook-secret";
const PROBE_WINDOW: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(180);

struct Args {
    stands: usize,
    wakes: usize,
    draftd: PathBuf,
}

fn parse() -> anyhow::Result<Args> {
    let mut flags = support::Flags::new(USAGE);
    let mut args = Args { stands: 20, wakes: 0, draftd: PathBuf::from(env!("CARGO_BIN_EXE_draftd")) };
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--stands" => args.stands = flags.whole("--stands")?,
            "--wakes" => args.wakes = flags.whole("--wakes")?,
            "--draftd" => args.draftd = PathBuf::from(flags.value("--draftd")?),
            other => return Err(flags.unknown(other)),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    support::main_with(parse, bench)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The stand's app as the ingress would serve it: 200 on every path.
async fn app() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(|| async { "ok" })).await });
    Ok(address)
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::var("DRAFTD_K8S_DIR").context("DRAFTD_K8S_DIR (scripts/bench-k8s.sh sets it)")?);
    with_fresh_database("bench_k8s", "scripts/bench-k8s.sh", false, |admin_url, db, log| async move {
        let work = tempfile::tempdir()?;
        let config = work.path().join("draftd.toml");
        let app = app().await?;
        let wake_port = free_port()?;
        std::fs::write(
            &config,
            format!(
                r#"
[stands]
workers = 4

[sleep]
listen = "127.0.0.1:{wake_port}"
hold = "60s"

[cluster]
mode = "kubernetes"
kubeconfig = "{dir}/draftd.kubeconfig"
service_account = "draftd/draftd"
helm_path = "{root}/.tools/bin/helm"

[cluster.verify]
probes = 2
probe_window = "{window}s"
ingress_address = "{app}"

[postgres]
admin_url_env = "BENCH_STANDS_PG_URL"

[[projects]]
name = "bench"
forge = "github"
repo = "Codertocat/Hello-World"
webhook_secret_env = "BENCH_WEBHOOK_SECRET"
image = "registry.example.com/acme/shop"
host = "{{stand}}.draft.test"
migrate = ["bin/migrate"]
smoke = ["bin/smoke"]
"#,
                dir = dir.display(),
                root = root().display(),
                window = PROBE_WINDOW.as_secs(),
            ),
        )?;
        let spec = ServerSpec {
            config,
            database_url: with_database(&admin_url, &db),
            log,
            dir: root(),
            binary: args.draftd.clone(),
            env: vec![
                ("BENCH_WEBHOOK_SECRET".into(), SECRET.into()),
                ("BENCH_STANDS_PG_URL".into(), admin_url.clone()),
            ],
        };
        let mut server = Server::start(&spec)?;
        // Redirects are the wake listener's answer: they are followed by hand, to the app.
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
        server.wait_ready(&client).await?;
        let pool = PgPool::connect(&with_database(&admin_url, &db)).await?;
        let mut result = measure(&args, &server, &client, &pool).await;
        if result.is_ok() && args.wakes > 0 {
            result = measure_wakes(&args, &server, &client, &pool, wake_port, &app).await;
        }
        server.stop()?;
        result
    })
    .await
}

fn delivery(action: &str, n: usize) -> anyhow::Result<Vec<u8>> {
    let path = root().join(format!("tests/fixtures/webhooks/github/pull_request.{action}.json"));
    let mut payload: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let number = n as u64 + 1;
    payload["number"] = json!(number);
    let pr = &mut payload["pull_request"];
    pr["number"] = json!(number);
    pr["head"]["ref"] = json!(format!("feature/bench-{n}"));
    pr["head"]["sha"] = json!(format!("{:040x}", 0xbe4c0000_u64 + n as u64));
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    pr["updated_at"] = json!(at);
    if action == "closed" {
        pr["closed_at"] = json!(at);
    }
    Ok(serde_json::to_vec(&payload)?)
}

async fn send(client: &reqwest::Client, server: &Server, action: &str, n: usize) -> anyhow::Result<()> {
    let body = delivery(action, n)?;
    let res = client
        .post(format!("http://{}/webhooks/github", server.addr))
        .header("content-type", "application/json")
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
        .header("x-hub-signature-256", github_signature(SECRET, &body))
        .body(body)
        .send()
        .await?;
    if !res.status().is_success() {
        bail!("the {action} delivery of stand {n} was answered {}: {}", res.status(), res.text().await?);
    }
    Ok(())
}

/// The newest run of stand `n` of `kind`, once it has ended: its state, and each step's duration.
async fn ended(pool: &PgPool, n: usize, kind: &str) -> anyhow::Result<Option<(String, BTreeMap<String, Duration>)>> {
    let run: Option<(i64, String)> = sqlx::query_as(
        "select r.run_id, r.state from runs r join stands s using (stand_id)
         where s.branch = $1 and r.kind = $2 and r.state in ('succeeded', 'failed', 'cancelled')
         order by r.number desc limit 1",
    )
    .bind(format!("feature/bench-{n}"))
    .bind(kind)
    .fetch_optional(pool)
    .await?;
    let Some((run, state)) = run else { return Ok(None) };
    let steps: Vec<(String, f64, Option<f64>)> = sqlx::query_as(
        "select name, extract(epoch from finished_at - started_at)::float8, (detail->>'ran_seconds')::float8
         from steps where run_id = $1 and finished_at is not null and started_at is not null",
    )
    .bind(run)
    .fetch_all(pool)
    .await?;
    let mut times = BTreeMap::new();
    for (name, took, ran) in steps {
        if let Some(ran) = ran {
            // The Job's own run as Kubernetes counts it (kwok's simulated run here).
            times.insert(format!("{name} (its Job running)"), Duration::from_secs_f64(ran.max(0.0)));
        }
        times.insert(name, Duration::from_secs_f64(took.max(0.0)));
    }
    Ok(Some((state, times)))
}

async fn wait_for(pool: &PgPool, n: usize, kind: &str) -> anyhow::Result<BTreeMap<String, Duration>> {
    let started = Instant::now();
    loop {
        if let Some((state, steps)) = ended(pool, n, kind).await? {
            if state != "succeeded" {
                bail!("the {kind} run of stand {n} ended {state}; see draftd's log");
            }
            return Ok(steps);
        }
        if started.elapsed() > WAIT {
            bail!("the {kind} run of stand {n} did not end within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Time from the delivery until the verify step of stand `n`'s deploy run has passed.
async fn wait_verified(pool: &PgPool, n: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let passed: bool = sqlx::query_scalar(
            "select exists (select 1 from steps st join runs r using (run_id) join stands s using (stand_id)
                            where s.branch = $1 and st.name = 'verify' and st.state = 'succeeded')",
        )
        .bind(format!("feature/bench-{n}"))
        .fetch_one(pool)
        .await?;
        if passed {
            return Ok(());
        }
        if started.elapsed() > WAIT {
            bail!("stand {n} was not verified within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn measure(args: &Args, server: &Server, client: &reqwest::Client, pool: &PgPool) -> anyhow::Result<()> {
    let mut totals = Vec::new();
    let mut own = Vec::new();
    let mut teardowns = Vec::new();
    let mut by_step: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for n in 0..args.stands {
        let t0 = Instant::now();
        send(client, server, "opened", n).await?;
        wait_verified(pool, n).await?;
        let total = t0.elapsed();
        let steps = wait_for(pool, n, "deploy").await?;
        let helm = steps.get("deploy").copied().unwrap_or_default();
        let rollout = steps.get("verify").copied().unwrap_or_default().saturating_sub(PROBE_WINDOW);
        // Only the migrate Job runs before verify passes; the smoke test runs after.
        let job = steps.get("migrate (its Job running)").copied().unwrap_or_default();
        totals.push(total);
        own.push(total.saturating_sub(helm + rollout + job));
        for (name, d) in steps {
            by_step.entry(name).or_default().push(d);
        }
        let t1 = Instant::now();
        send(client, server, "closed", n).await?;
        wait_for(pool, n, "teardown").await?;
        teardowns.push(t1.elapsed());
        println!("stand {n}: verified after {:.0} ms, torn down in {:.0} ms", ms(total), ms(teardowns[n]));
    }
    println!("\n{} stands, one at a time (probe window {PROBE_WINDOW:?} included in verify)", args.stands);
    row("webhook -> verified stand", totals);
    row("  draftd's own share (less helm, rollout, Job)", own);
    rows_by_step("step ", by_step);
    row("close -> teardown finished", teardowns);
    Ok(())
}

/// Waits until the newest run of `kind` has ended well; its id.
async fn ended_after(pool: &PgPool, kind: &str, after: i64) -> anyhow::Result<i64> {
    let started = Instant::now();
    loop {
        let run: Option<(i64, String)> = sqlx::query_as(
            "select run_id, state from runs where kind = $1 and run_id > $2
               and state in ('succeeded', 'failed', 'cancelled') order by run_id desc limit 1",
        )
        .bind(kind)
        .bind(after)
        .fetch_optional(pool)
        .await?;
        match run {
            Some((run, state)) if state == "succeeded" => return Ok(run),
            Some((_, state)) => bail!("the {kind} run ended {state}; see draftd's log"),
            None if started.elapsed() > WAIT => bail!("no {kind} run ended within {WAIT:?}"),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Each step's duration, and the time from queueing to claiming.
async fn steps_of(pool: &PgPool, run: i64) -> anyhow::Result<BTreeMap<String, Duration>> {
    let rows: Vec<(String, f64)> = sqlx::query_as(
        "select name, extract(epoch from finished_at - started_at)::float8 from steps
         where run_id = $1 and finished_at is not null and started_at is not null",
    )
    .bind(run)
    .fetch_all(pool)
    .await?;
    let mut times: BTreeMap<String, Duration> =
        rows.into_iter().map(|(name, s)| (name, Duration::from_secs_f64(s.max(0.0)))).collect();
    let queued: f64 = sqlx::query_scalar(
        "select extract(epoch from (select min(started_at) from steps where run_id = $1) - queued_at)::float8
         from runs where run_id = $1",
    )
    .bind(run)
    .fetch_one(pool)
    .await?;
    times.insert("(queued → first step)".into(), Duration::from_secs_f64(queued.max(0.0)));
    Ok(times)
}

async fn measure_wakes(
    args: &Args,
    server: &Server,
    client: &reqwest::Client,
    pool: &PgPool,
    wake_port: u16,
    app: &str,
) -> anyhow::Result<()> {
    // One more stand than `--stands` made, left up.
    let n = args.stands;
    let before: i64 = sqlx::query_scalar("select coalesce(max(run_id), 0) from runs").fetch_one(pool).await?;
    send(client, server, "opened", n).await?;
    let mut last = ended_after(pool, "deploy", before).await?;
    let (stand, namespace): (i64, String) = sqlx::query_as("select stand_id, namespace from stands where branch = $1")
        .bind(format!("feature/bench-{n}"))
        .fetch_one(pool)
        .await?;
    let (mut totals, mut own, mut by_step) = (Vec::new(), Vec::new(), BTreeMap::<String, Vec<Duration>>::new());
    for n in 0..args.wakes {
        // Asleep, as the idle sweep would put it (an idle time of zero picks it now).
        let projects = [("bench".to_owned(), Duration::ZERO)];
        let later = chrono::Utc::now() + chrono::Duration::seconds(1);
        let queued = draftd::store::sleep::queue_idle(pool, later, &projects, 1).await?;
        if queued.first().map(|q| q.stand_id.get()) != Some(stand) {
            bail!("no sleep was queued for the stand (round {n})");
        }
        last = ended_after(pool, "sleep", last).await?;

        let t0 = Instant::now();
        let held = client
            .get(format!("http://127.0.0.1:{wake_port}/"))
            .header("host", format!("{namespace}.draft.test"))
            .header("x-namespace", &namespace)
            .header("x-original-uri", "/orders/42")
            .header("x-code", "503")
            .send()
            .await?;
        if held.status() != reqwest::StatusCode::TEMPORARY_REDIRECT {
            bail!("round {n}: the held request was answered {}: {}", held.status(), held.text().await?);
        }
        let location = held.headers().get("location").and_then(|l| l.to_str().ok()).unwrap_or("/").to_owned();
        let landed = client.get(format!("http://{app}{location}")).send().await?;
        if !landed.status().is_success() {
            bail!("round {n}: the app answered {}", landed.status());
        }
        let total = t0.elapsed();
        last = ended_after(pool, "wake", last).await?;
        let steps = steps_of(pool, last).await?;
        let rollout = steps.get("verify").copied().unwrap_or_default().saturating_sub(PROBE_WINDOW);
        totals.push(total);
        own.push(total.saturating_sub(rollout + PROBE_WINDOW));
        for (name, d) in steps {
            by_step.entry(name).or_default().push(d);
        }
        println!("wake {n}: first request → the app's 200 in {:.0} ms", ms(total));
    }
    println!("\n{} wakes of one stand (probe window {PROBE_WINDOW:?} included in verify)", args.wakes);
    row("first request -> the app's 200", totals);
    row("  draftd's own share (less rollout, probe window)", own);
    rows_by_step("", by_step);
    Ok(())
}

/// One figure's line: p50 and p95 of `v`.
fn row(what: &str, mut v: Vec<Duration>) {
    v.sort();
    println!("{what:<48} p50 {:>8.0} ms   p95 {:>8.0} ms", ms(percentile(&v, 0.50)), ms(percentile(&v, 0.95)));
}

fn rows_by_step(prefix: &str, by_step: BTreeMap<String, Vec<Duration>>) {
    for (name, v) in by_step {
        row(&format!("  {prefix}{name}"), v);
    }
}
