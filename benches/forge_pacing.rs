//! Reporting under GitHub's secondary rate limits: N stands' sticky comments written at once (then
//! each written again while the first reports are still queued), delivered by the library's reporter
//! through the real GitHub client to the fake GitHub of the tests (tests/support/forge_fake), which enforces
//! the limits "Rate limits for the REST API" documents: 100 concurrent requests, 900 points a minute
//! per endpoint, 80 content-creating requests a minute and 500 an hour. Each round runs two sides on
//! fresh databases, one after the other: the client paced as GitHub's best practices ask (one
//! request of an installation at a time, a second between writes, the creation budgets), and the
//! client unpaced (the reporter's 16 rows at once, as before pacing). Reported per side: the time
//! until every comment shows its stand's newest report, requests, writes, secondary-limit answers
//! and the most requests at once.
//!
//! `--scale F` runs GitHub's clock F times as fast, the fake's windows and the pacing alike (0.1: a
//! minute of 6 s); `--scale 1` is GitHub's own clock (about seven minutes for 200 stands).
//! Run by `scripts/bench-forge-pacing.sh [--stands N] [--scale F] [--rounds N]`.

#[allow(dead_code)] // the timing helpers are for benches that time requests themselves
#[path = "support/mod.rs"]
mod support;

// The tests' fakes, as they are; this bench drives only the GitHub one.
#[allow(dead_code)]
#[path = "../tests/support/forge_fake/mod.rs"]
mod forge_fake;

use std::process::ExitCode;
use std::time::Duration;

use draftd::config::ForgeKind;
use draftd::forge::client::{AnyForge, GithubClient, Pacing};
use draftd::reporter::ReporterSettings;
use secrecy::SecretString;
use sqlx::postgres::PgPoolOptions;

use forge_fake::burst::{self, Burst, Outcome};
use forge_fake::github::Limits;
use forge_fake::{Fake, TOKEN};

const USAGE: &str = "usage: scripts/bench-forge-pacing.sh [--stands N] [--scale F] [--rounds N]
  --stands N   stands reporting at once (default 200)
  --scale F    GitHub's clock sped up F times: windows, pacing, hold and poll alike (default 0.1)
  --rounds N   paced/unpaced pairs, run one after the other (default 1)";

struct Args {
    stands: usize,
    scale: f64,
    rounds: usize,
}

fn parse() -> anyhow::Result<Args> {
    let mut p = support::Flags::new(USAGE);
    let mut args = Args { stands: 200, scale: 0.1, rounds: 1 };
    while let Some(flag) = p.next_flag() {
        match flag.as_str() {
            "--stands" => args.stands = p.whole("--stands")?,
            "--scale" => args.scale = p.whole("--scale")?,
            "--rounds" => args.rounds = p.whole("--rounds")?,
            other => return Err(p.unknown(other)),
        }
    }
    anyhow::ensure!(args.scale > 0.0 && args.scale <= 1.0, "--scale must be in (0, 1]");
    Ok(args)
}

fn main() -> ExitCode {
    support::main_with(parse, bench)
}

async fn side(args: &Args, paced: bool) -> anyhow::Result<Outcome> {
    let scale = args.scale;
    let mut result = None;
    let slot = &mut result;
    support::in_fresh_database("draftd_benchpacing", "scripts/bench-forge-pacing.sh", |url| async move {
        let pool = PgPoolOptions::new().max_connections(8).connect(&url).await?;
        draftd::store::MIGRATOR.run(&pool).await?;
        let fake = Fake::start(ForgeKind::Github).await;
        fake.gh_enforce_limits(Limits::github(scale));
        let pacing = if paced { Pacing::GITHUB.scaled(scale) } else { Pacing::OFF };
        let client = GithubClient::new(&fake.url(), &SecretString::from(TOKEN), Duration::from_secs(30))?
            .with_pacing(pacing)
            .with_secondary_wait(Duration::from_secs(60).mul_f64(scale));
        let defaults = ReporterSettings::default();
        let settings = ReporterSettings {
            poll: defaults.poll.mul_f64(scale),
            backoff_base: defaults.backoff_base.mul_f64(scale),
            backoff_max: defaults.backoff_max.mul_f64(scale),
            ..defaults
        };
        let burst = Burst {
            stands: args.stands,
            versions: 2,
            between: Duration::from_secs(5).mul_f64(scale),
            deadline: Duration::from_secs(3600).mul_f64(scale).max(Duration::from_secs(60)),
        };
        let out = burst::run(&pool, &fake, AnyForge::Github(client), settings, burst).await;
        pool.close().await;
        *slot = Some(out);
        Ok(())
    })
    .await?;
    result.take().ok_or_else(|| anyhow::anyhow!("no outcome"))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    println!(
        "{} stands, 2 reports each (the second {:.1} s after the first), GitHub's clock x{}",
        args.stands,
        5.0 * args.scale,
        1.0 / args.scale
    );
    let mut rows = Vec::new();
    for round in 1..=args.rounds {
        for paced in [true, false] {
            let out = side(&args, paced).await?;
            rows.push((round, paced, out));
        }
    }
    println!();
    println!(
        "{:>5} {:>8} {:>12} {:>14} {:>9} {:>7} {:>8} {:>11} {:>8}",
        "round", "client", "current (s)", "at GitHub's (s)", "requests", "writes", "limited", "at once max", "current"
    );
    for (round, paced, o) in &rows {
        println!(
            "{:>5} {:>8} {:>12.2} {:>14.0} {:>9} {:>7} {:>8} {:>11} {:>5}/{}",
            round,
            if *paced { "paced" } else { "unpaced" },
            o.current_after.as_secs_f64(),
            o.current_after.as_secs_f64() / args.scale,
            o.requests,
            o.writes,
            o.limited,
            o.max_concurrent,
            o.current,
            args.stands
        );
    }
    let (paced, unpaced): (Vec<_>, Vec<_>) = rows.iter().partition(|(_, p, _)| *p);
    let mean = |v: &[&(usize, bool, Outcome)]| {
        v.iter().map(|(_, _, o)| o.current_after.as_secs_f64()).sum::<f64>() / v.len() as f64
    };
    println!(
        "\npaced/unpaced time until every comment is current: {:.2}; secondary-limit answers paced {}, unpaced {}",
        mean(&paced) / mean(&unpaced),
        paced.iter().map(|(_, _, o)| o.limited).sum::<usize>(),
        unpaced.iter().map(|(_, _, o)| o.limited).sum::<usize>()
    );
    let failed: Vec<_> =
        rows.iter().filter(|(_, p, o)| *p && (!o.all_current || o.limited > 0 || o.duplicated > 0)).collect();
    anyhow::ensure!(failed.is_empty(), "a paced side left comments behind or met a secondary limit: {failed:?}");
    Ok(())
}
