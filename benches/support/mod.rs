//! What both bench binaries need: a process entry point, a throwaway database, and the statistics.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use sqlx::{Connection, PgConnection};

/// Parses the arguments (exit 2 on bad ones), runs `bench` on a fresh tokio runtime, exits 1 on failure.
pub fn main_with<A, Fut>(parse: fn() -> anyhow::Result<A>, bench: fn(A) -> Fut) -> ExitCode
where
    Fut: Future<Output = anyhow::Result<()>>,
{
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nbench FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Creates `<prefix>_<random>` on the server of `DATABASE_URL`; returns (admin URL, database name).
pub async fn create_database(prefix: &str, script: &str) -> anyhow::Result<(String, String)> {
    let admin_url = std::env::var("DATABASE_URL")
        .with_context(|| format!("DATABASE_URL is not set ({script} sets it from scripts/pg-env.sh)"))?;
    let db = format!("{prefix}_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut admin = PgConnection::connect(&admin_url).await.context("connecting to DATABASE_URL")?;
    sqlx::query(&format!("create database {db}"))
        .execute(&mut admin)
        .await
        .with_context(|| format!("creating {db}"))?;
    admin.close().await.ok();
    println!("bench database {db}");
    Ok((admin_url, db))
}

pub async fn drop_database(admin_url: &str, db: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(admin_url).await?;
    sqlx::query(&format!("drop database if exists {db} with (force)")).execute(&mut admin).await?;
    admin.close().await.ok();
    Ok(())
}

/// `postgres://…/postgres?x=y` with the database part replaced.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[after_scheme..].find('/').map(|i| after_scheme + i).unwrap_or(base.len());
    format!("{}/{db}{query}", &base[..authority_end])
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
