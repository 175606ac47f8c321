//! `draftd reap`: one sweep of the reaper, for a Kubernetes CronJob.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, bail};

use super::runtime::lease_owner;
use crate::config::{ClusterMode, Config};
use crate::credentials::StandCredentials;
use crate::forge::client::AnyForge;
use crate::reaper::{Reaper, SweepOutcome};
use crate::store;

/// `draftd reap`: one sweep, for a Kubernetes CronJob. Fails (exit 1) when a part of the sweep
/// failed, so the Job shows it; another sweep holding the lock is not a failure.
pub async fn reap(config: Config, json: bool) -> anyhow::Result<()> {
    let pool = store::pool(&config.database_url, 4)?;
    let config = Arc::new(config);
    let credentials = StandCredentials::from_config(pool.clone(), &config)?.map(Arc::new);
    let forges = AnyForge::from_config(&config).context("forge clients")?;
    let mut reaper =
        Reaper::new(pool.clone(), config.clone(), lease_owner()).with_forges(forges).with_credentials(credentials);
    if config.cluster.mode == ClusterMode::Kubernetes {
        let client = crate::cluster::client::connect(&config.cluster).await?;
        reaper = reaper.with_cluster(Arc::new(crate::cluster::Kubernetes::new(client, config.cluster.clone())));
    }
    let outcome = reaper.sweep(chrono::Utc::now()).await.context("sweep")?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &outcome)?;
        writeln!(out)?;
    }
    let SweepOutcome::Swept(sweep) = outcome else {
        if !json {
            writeln!(out, "another sweep holds the lock: nothing done")?;
        }
        return Ok(());
    };
    if !json {
        write_sweep(&mut out, &sweep)?;
    }
    if !sweep.errors.is_empty() {
        bail!("{} part(s) of sweep {} failed: {}", sweep.errors.len(), sweep.sweep_id, sweep.errors.join("; "));
    }
    Ok(())
}

fn write_sweep(out: &mut impl Write, s: &crate::reaper::Sweep) -> std::io::Result<()> {
    let stands = |q: &[crate::store::lifecycle::QueuedTeardown]| {
        q.iter().map(|t| t.namespace.as_str()).collect::<Vec<_>>().join(", ")
    };
    writeln!(out, "sweep {}", s.sweep_id)?;
    writeln!(out, "  expired, teardown queued: {} {}", s.expired.len(), stands(&s.expired))?;
    writeln!(out, "  failed teardowns retried: {} {}", s.retried.len(), stands(&s.retried))?;
    writeln!(out, "  expiry warnings: {}", s.warned.len())?;
    for r in &s.resync {
        match (&r.error, r.listed) {
            (Some(e), _) => writeln!(out, "  resync {}: not done: {e}", r.project)?,
            (None, listed) => writeln!(
                out,
                "  resync {}: {} open, {} deploy(s) and {} teardown(s) queued, {} looked up ({} failed)",
                r.project,
                listed.unwrap_or(0),
                r.deploys.len(),
                r.teardowns.len(),
                r.looked_up,
                r.lookup_errors
            )?,
        }
    }
    for o in &s.orphans {
        let what = if o.removed {
            "removed"
        } else if o.sightings >= 2 {
            "removal failed"
        } else {
            "kept until seen again"
        };
        writeln!(out, "  orphan {} {} (seen {}x): {what}", o.kind, o.name, o.sightings)?;
    }
    for e in &s.errors {
        writeln!(out, "  error: {e}")?;
    }
    Ok(())
}
