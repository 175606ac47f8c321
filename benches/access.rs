//! Access check benchmark: the real `draftd serve` (release build) with `[access]`, asked
//! `/access/check` as ingress-nginx asks it before every request to a private stand, by N
//! concurrent keep-alive connections, beside the same connections asking `/health` (the cheapest
//! thing draftd serves). Rounds interleave health → cookie → token → health → …, so machine noise
//! hits each kind alike; the ratio of their rates is the check's cost.
//!
//! Run by `scripts/bench-access.sh [--connections N] [--seconds S] [--rounds N]`.

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use draftd::config::ForgeKind;
use draftd::credentials::access::{AccessKey, Grant, Grants};
use draftd::stand::{RunId, StandId};
use secrecy::SecretString;
use support::{Server, ServerSpec, ms, percentile, with_database};

const USAGE: &str = "usage: scripts/bench-access.sh [--connections N] [--seconds S] [--rounds N]
  --connections N  concurrent keep-alive connections (default 64)
  --seconds S      length of each round (default 5)
  --rounds N       rounds of each kind (default 3)";

const KEY: &str = "bench-access-key-3f9c1e7a5b2d4f6e8a0c1e3f5a7b9d1f";
const HOST: &str = "draft-bench.stands.test";

struct Args {
    connections: usize,
    seconds: u64,
    rounds: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args { connections: 64, seconds: 5, rounds: 3 };
    let mut flags = support::Flags::new(USAGE);
    while let Some(flag) = flags.next_flag() {
        match flag.as_str() {
            "--connections" => args.connections = flags.whole(&flag)?,
            "--seconds" => args.seconds = flags.whole(&flag)?,
            "--rounds" => args.rounds = flags.whole(&flag)?,
            other => return Err(flags.unknown(other)),
        }
    }
    if args.connections == 0 || args.seconds == 0 || args.rounds == 0 {
        bail!("every argument must be at least 1\n{USAGE}");
    }
    Ok(args)
}

fn main() -> ExitCode {
    support::main_with(parse_args, bench)
}

const CONFIG: &str = r#"
[cluster]
mode = "dry-run"
dry_run_dir = "stands"
[api]
token_env = "BENCH_API_TOKEN"
[access]
url = "https://access.stands.test"
cookie_domain = "stands.test"
key_env = "BENCH_ACCESS_KEY"
[access.github]
client_id = "Iv1.bench"
client_secret_env = "BENCH_GH_CLIENT_SECRET"
[[projects]]
name = "shop"
forge = "github"
repo = "acme/shop"
webhook_secret_env = "BENCH_WEBHOOK_SECRET"
host = "{stand}.stands.test"
"#;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Health,
    Cookie,
    Token,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Health => "/health",
            Kind::Cookie => "/access/check, cookie",
            Kind::Token => "/access/check, token",
        }
    }
}

struct Round {
    kind: Kind,
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

async fn bench(args: Args) -> anyhow::Result<()> {
    support::with_fresh_database("draftd_bench_access", "scripts/bench-access.sh", false, |admin, db, log| async move {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("draftd.toml");
        std::fs::write(&config, CONFIG)?;
        let database_url = with_database(&admin, &db);
        let spec = ServerSpec {
            config,
            database_url: database_url.clone(),
            log,
            dir: dir.path().to_owned(),
            binary: env!("CARGO_BIN_EXE_draftd").into(),
            env: vec![
                ("BENCH_ACCESS_KEY".into(), KEY.into()),
                ("BENCH_GH_CLIENT_SECRET".into(), "bench-client-secret".into()),
                ("BENCH_WEBHOOK_SECRET".into(), "bench-webhook-secret".into()),
                ("BENCH_API_TOKEN".into(), "bench-api-token".into()),
                // Request logs at info would measure the terminal, not the check.
                ("RUST_LOG".into(), "warn".into()),
            ],
        };
        let mut server = Server::start(&spec)?;
        server.wait_ready(&reqwest::Client::new()).await?;
        let pool = sqlx::PgPool::connect(&database_url).await.context("connecting to the bench database")?;
        let stand: StandId = sqlx::query_scalar(
            "insert into stands (project, branch, namespace, state) values ('shop', 'feature/bench', 'draft-bench', 'active') returning stand_id",
        )
        .fetch_one(&pool)
        .await?;
        let run: RunId = sqlx::query_scalar(
            "insert into runs (stand_id, number, kind, trigger, automatic, epoch, sha, state)
             values ($1, 1, 'deploy', 'push', true, 0, 'abc', 'succeeded') returning run_id",
        )
        .bind(stand)
        .fetch_one(&pool)
        .await?;
        draftd::store::access::set_token_run(&pool, stand, run).await?;
        let key = AccessKey::new(&SecretString::from(KEY)).expect("a long key");
        let now = chrono::Utc::now().timestamp();
        // A cookie as a person carries it after signing in to a few stands' repositories.
        let mut grants = Grants::default();
        for repo in ["acme/docs", "acme/api", "acme/shop"] {
            let grant = Grant { forge: ForgeKind::Github, repo: repo.into(), login: "alice".into(), until: now + 3600 };
            grants = grants.with(grant, now);
        }
        let cookie = format!("_ga=GA1.1.123; draftd_access={}", key.seal(&grants));
        let token = key.token(stand, run).expose().to_owned();
        let base = format!("http://{}", server.addr);

        // Each kind must answer as meant before it is timed.
        for kind in [Kind::Health, Kind::Cookie, Kind::Token] {
            let status = request(&reqwest::Client::new(), &base, kind, &cookie, &token).await?;
            anyhow::ensure!(status == 200, "{} answered {status}", kind.name());
        }
        println!(
            "{} connections, {} s rounds, {} rounds of each kind, interleaved; draftd pid {}",
            args.connections, args.seconds, args.rounds, server.pid
        );
        let mut rounds = Vec::new();
        // A short warm-up of each, not counted.
        for kind in [Kind::Health, Kind::Cookie, Kind::Token] {
            drive(&base, kind, &cookie, &token, args.connections, Duration::from_secs(1)).await?;
        }
        for _ in 0..args.rounds {
            for kind in [Kind::Health, Kind::Cookie, Kind::Token] {
                let round = drive(&base, kind, &cookie, &token, args.connections, Duration::from_secs(args.seconds)).await?;
                println!(
                    "  {:<24} {:>8.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms",
                    kind.name(),
                    round.requests as f64 / round.elapsed.as_secs_f64(),
                    ms(percentile(&round.latencies, 0.50)),
                    ms(percentile(&round.latencies, 0.99)),
                );
                rounds.push(round);
            }
        }
        summarise(&rounds);
        in_process(&key, &cookie, &token);
        server.stop()?;
        Ok(())
    })
    .await
}

async fn request(client: &reqwest::Client, base: &str, kind: Kind, cookie: &str, token: &str) -> anyhow::Result<u16> {
    let res = match kind {
        Kind::Health => client.get(format!("{base}/health")).send().await?,
        Kind::Cookie => {
            client
                .get(format!("{base}/access/check"))
                .header("x-original-url", format!("https://{HOST}/orders/42?tab=items"))
                .header("cookie", cookie)
                .send()
                .await?
        }
        Kind::Token => {
            client
                .get(format!("{base}/access/check"))
                .header("x-original-url", format!("https://{HOST}/api/orders"))
                .header("x-draftd-access", token)
                .send()
                .await?
        }
    };
    Ok(res.status().as_u16())
}

/// `connections` keep-alive connections asking as fast as answers come, for `length`.
async fn drive(
    base: &str,
    kind: Kind,
    cookie: &str,
    token: &str,
    connections: usize,
    length: Duration,
) -> anyhow::Result<Round> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (base, cookie, token) = (base.to_owned(), cookie.to_owned(), token.to_owned());
        tasks.push(tokio::spawn(async move {
            // One connection per task: one client, one idle connection kept.
            let client = reqwest::Client::builder().pool_max_idle_per_host(1).http1_only().build()?;
            let mut latencies = Vec::new();
            while started.elapsed() < length {
                let t = Instant::now();
                let status = request(&client, &base, kind, &cookie, &token).await?;
                latencies.push(t.elapsed());
                anyhow::ensure!(status == 200, "{} answered {status}", kind.name());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok(Round { kind, requests: latencies.len(), elapsed, latencies })
}

/// What the check computes per request, without HTTP: open the cookie and find the grant, or
/// verify the token's MAC.
fn in_process(key: &AccessKey, cookie: &str, token: &str) {
    const N: u32 = 200_000;
    let value = cookie.split("draftd_access=").nth(1).expect("the access cookie");
    let now = chrono::Utc::now().timestamp();
    let t = Instant::now();
    for _ in 0..N {
        let grants = key.open(std::hint::black_box(value)).expect("opens");
        std::hint::black_box(grants.admits(ForgeKind::Github, "acme/shop", now).is_some());
    }
    let cookie_each = t.elapsed() / N;
    let t = Instant::now();
    for _ in 0..N {
        std::hint::black_box(key.verify_token(std::hint::black_box(token)).expect("verifies"));
    }
    let token_each = t.elapsed() / N;
    println!(
        "\nin process, per request: cookie opened and its grant found {:.2} µs; token verified {:.2} µs",
        cookie_each.as_secs_f64() * 1e6,
        token_each.as_secs_f64() * 1e6
    );
}

fn summarise(rounds: &[Round]) {
    let of = |kind: Kind| {
        let rs: Vec<&Round> = rounds.iter().filter(|r| r.kind == kind).collect();
        let rate = rs.iter().map(|r| r.requests as f64 / r.elapsed.as_secs_f64()).sum::<f64>() / rs.len() as f64;
        let mut all: Vec<Duration> = rs.iter().flat_map(|r| r.latencies.iter().copied()).collect();
        all.sort();
        (rate, percentile(&all, 0.50), percentile(&all, 0.99))
    };
    let (health, h50, h99) = of(Kind::Health);
    println!("\nmean over rounds:");
    println!("  {:<24} {:>8.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms", Kind::Health.name(), health, ms(h50), ms(h99));
    for kind in [Kind::Cookie, Kind::Token] {
        let (rate, p50, p99) = of(kind);
        println!(
            "  {:<24} {:>8.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  rate ratio to /health {:.2}, p99 ratio {:.2}",
            kind.name(),
            rate,
            ms(p50),
            ms(p99),
            rate / health,
            ms(p99) / ms(h99)
        );
    }
}
