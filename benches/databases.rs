//! Issue 6's benchmark (run by scripts/bench-databases.sh):
//!
//! 1. a stand database from a ~100 MB seeded template, by `CREATE DATABASE … TEMPLATE` (what the
//!    database step does) against `createdb` + `pg_dump -Fc | pg_restore` of the same seed, rounds
//!    alternating in one run; medians and their ratio;
//! 2. stand database + credentials ready (the database step, then one login issued and recorded),
//!    p50/p95 over 50 stands, with Vault (a real OpenBao dev server) and without (Postgres logins).
//!
//! Uses the server of DATABASE_URL; everything it creates is dropped at the end.

use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use draftd::config::Config;
use draftd::credentials::{Lifetimes, StandCredentials, StandServer, stand_db};
use draftd::database::{Databases, PgDatabases, StandDb};
use draftd::stand::StandId;
use draftd::vault::OpenBao;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

const SEED: &str = "draftd_bench_seed";

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn seed(admin: &PgPool, url: &str, mb: i64) -> anyhow::Result<i64> {
    sqlx::query(&format!("drop database if exists {SEED} with (force)")).execute(admin).await?;
    sqlx::query(&format!("create database {SEED}")).execute(admin).await?;
    let mut conn = PgConnectOptions::from_str(url)?.database(SEED).connect().await?;
    // Rows of ~260 bytes, plus an index: about `mb` MB on disk.
    let rows = mb * 1024 * 1024 / 330;
    sqlx::query("create table tasks (id bigint primary key, title text not null, body text not null)")
        .execute(&mut conn)
        .await?;
    sqlx::query("insert into tasks select g, 'task ' || g, repeat(md5(g::text), 7) from generate_series(1, $1) g")
        .bind(rows)
        .execute(&mut conn)
        .await?;
    sqlx::query("vacuum analyze tasks").execute(&mut conn).await?;
    conn.close().await?;
    let size: i64 = sqlx::query_scalar("select pg_database_size($1)").bind(SEED).fetch_one(admin).await?;
    Ok(size)
}

async fn clone_once(dbs: &PgDatabases, name: &str) -> anyhow::Result<Duration> {
    let db = StandDb { database: name.into(), owner: name.into(), template: Some(SEED.into()) };
    let t = Instant::now();
    dbs.ensure(&db).await?;
    let took = t.elapsed();
    dbs.drop_stand(&db).await?;
    Ok(took)
}

fn dump_restore_once(url: &str, name: &str) -> anyhow::Result<Duration> {
    let opts = PgConnectOptions::from_str(url)?;
    let (host, port, user) = (opts.get_host().to_owned(), opts.get_port().to_string(), opts.get_username().to_owned());
    let common = ["-h", host.as_str(), "-p", port.as_str(), "-U", user.as_str()];
    let t = Instant::now();
    let status = Command::new("createdb").args(common).arg(name).status().context("createdb")?;
    if !status.success() {
        bail!("createdb failed");
    }
    let mut dump = Command::new("pg_dump")
        .args(common)
        .args(["-Fc", "-d", SEED])
        .stdout(Stdio::piped())
        .spawn()
        .context("pg_dump")?;
    let restore = Command::new("pg_restore")
        .args(common)
        .args(["--no-owner", "-d", name])
        .stdin(dump.stdout.take().context("pg_dump's stdout")?)
        .status()
        .context("pg_restore")?;
    let dumped = dump.wait()?;
    let took = t.elapsed();
    if !restore.success() || !dumped.success() {
        bail!("pg_dump | pg_restore failed");
    }
    let status = Command::new("dropdb").args(common).args(["--force", name]).status()?;
    if !status.success() {
        bail!("dropdb failed");
    }
    Ok(took)
}

/// An OpenBao dev server started by the project's script; stopped on drop.
struct Bao {
    dir: tempfile::TempDir,
    addr: String,
}

impl Bao {
    fn start() -> anyhow::Result<Bao> {
        let dir = tempfile::tempdir()?;
        let out = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/openbao-dev.sh"))
            .arg("start")
            .arg(dir.path())
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            bail!("openbao-dev.sh start failed");
        }
        let stdout = String::from_utf8(out.stdout)?;
        let addr =
            stdout.split_whitespace().find_map(|kv| kv.strip_prefix("BAO_ADDR=")).context("BAO_ADDR")?.to_owned();
        // The script keeps the token in DIR/token until stop.
        std::fs::copy(dir.path().join("token"), dir.path().join("draftd-token"))?;
        Ok(Bao { dir, addr })
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/openbao-dev.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

async fn own_database(admin: &PgPool, url: &str) -> anyhow::Result<(String, PgPool)> {
    let name = format!("draftd_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    sqlx::query(&format!("create database {name}")).execute(admin).await?;
    let pool =
        PgPoolOptions::new().max_connections(4).connect_with(PgConnectOptions::from_str(url)?.database(&name)).await?;
    draftd::store::MIGRATOR.run(&pool).await?;
    Ok((name, pool))
}

/// Database step + one login issued and recorded, per stand; then every stand torn down.
async fn ready_times(creds: &StandCredentials, pool: &PgPool, tag: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    let mut stands = Vec::new();
    for i in 0..n {
        let namespace = format!("draft-bench-{tag}-{i}");
        let id: i64 = sqlx::query_scalar(
            "insert into stands (project, branch, namespace) values ('bench', $1, $2) returning stand_id",
        )
        .bind(&namespace)
        .bind(&namespace)
        .fetch_one(pool)
        .await?;
        let db = stand_db(&namespace, None);
        let t = Instant::now();
        creds.ensure_database(&db).await?;
        let issued = creds.issue(StandId::new(id), None, "app", &db).await?;
        times.push(t.elapsed());
        drop(issued);
        stands.push((id, db));
    }
    for (id, db) in &stands {
        creds.revoke_all(StandId::new(*id), db).await?;
        creds.drop_database(db).await?;
    }
    Ok(times)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut rounds = 3usize;
    let mut stands = 50usize;
    let mut seed_mb = 100i64;
    while let Some(a) = args.next() {
        let mut value = || args.next().context("a value after the flag");
        match a.as_str() {
            "--rounds" => rounds = value()?.parse()?,
            "--stands" => stands = value()?.parse()?,
            "--seed-mb" => seed_mb = value()?.parse()?,
            other => bail!("unknown argument {other:?} (--rounds N --stands N --seed-mb N)"),
        }
    }
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL: run through scripts/bench-databases.sh")?;
    let admin = PgPoolOptions::new().max_connections(4).connect(&url).await?;
    let version: String = sqlx::query_scalar("show server_version").fetch_one(&admin).await?;
    println!("postgres {version} at {}", PgConnectOptions::from_str(&url)?.get_host());

    // 1. Clone against dump and restore.
    let size = seed(&admin, &url, seed_mb).await?;
    println!("seed database {SEED}: {:.1} MB", size as f64 / 1024.0 / 1024.0);
    let dbs = PgDatabases::new(admin.clone());
    let (mut clones, mut dumps) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let c = clone_once(&dbs, &format!("draftd_bench_clone_{round}")).await?;
        let d = dump_restore_once(&url, &format!("draftd_bench_dump_{round}"))?;
        println!("  round {}: clone {:.1} ms, dump|restore {:.1} ms", round + 1, ms(c), ms(d));
        clones.push(c);
        dumps.push(d);
    }
    let (c, d) = (median(&mut clones), median(&mut dumps));
    println!(
        "template clone median {:.1} ms; pg_dump | pg_restore median {:.1} ms; clone is {:.1}x faster (goal >= 10x)",
        ms(c),
        ms(d),
        d.as_secs_f64() / c.as_secs_f64()
    );
    sqlx::query(&format!("drop database if exists {SEED} with (force)")).execute(&admin).await?;

    // 2. Database + credentials ready, with and without Vault, side by side.
    let (own_name, pool) = own_database(&admin, &url).await?;
    let bao = Bao::start()?;
    let config = Config::from_toml(&format!(
        "[vault]\naddress = \"{}\"\nauth = \"token\"\ntoken_file = \"{}\"\n",
        bao.addr,
        bao.dir.path().join("draftd-token").display()
    ))?;
    let lifetimes =
        Lifetimes { max: Duration::from_secs(3600), lease: Duration::from_secs(1200), grace: Duration::from_secs(300) };
    let server = StandServer::parse(&url, None)?;
    let with_vault = StandCredentials::new(
        pool.clone(),
        Some((Arc::new(PgDatabases::new(admin.clone())), server.clone())),
        Some(Arc::new(OpenBao::from_config(config.vault.as_ref().context("[vault]")?)?)),
        lifetimes,
    );
    let without: StandCredentials =
        StandCredentials::new(pool.clone(), Some((Arc::new(PgDatabases::new(admin.clone())), server)), None, lifetimes);
    let mut vault_times = ready_times(&with_vault, &pool, "v", stands).await?;
    let mut pg_times = ready_times(&without, &pool, "p", stands).await?;
    for (label, times) in
        [("with OpenBao (database engine lease)", &mut vault_times), ("without Vault (Postgres login)", &mut pg_times)]
    {
        println!(
            "stand database + credentials ready, {label}, {stands} stands: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
            ms(pct(times, 0.5)),
            ms(pct(times, 0.95)),
            ms(pct(times, 1.0))
        );
    }
    drop(bao);
    pool.close().await;
    sqlx::query(&format!("drop database if exists {own_name} with (force)")).execute(&admin).await?;
    Ok(())
}
