//! Steps both cluster modes share: a teardown's `cancel`, `deactivate`, `revoke` and `drop`, an
//! extend run's `extend`, and the stand's report (which the reaper's expiry warning also queues).
//! What a report says, and which outbox rows it makes, is the reporter's: these steps only say when.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;

use super::step::{RunContext, StepError, StepOutcome};
use super::steps::shared::{project_of, write};
use crate::config::Config;
use crate::credentials::{StandCredentials, stand_db};
use crate::reporter::{ReportError, StandReport, queue_deactivation};
use crate::stand::{RunId, StandId};
use crate::store::{lifecycle, runs, stands};

fn db(e: impl std::fmt::Display) -> StepError {
    StepError::transient("database", e.to_string())
}

/// Teardown: the deploys of the stand that gave way to it. Runs of a stand go one at a time, so a
/// deploy that was in flight when the teardown was queued has stopped by now: it watches for the
/// teardown inside each step (the heartbeat) and at each step boundary.
pub(super) async fn cancel(pool: &PgPool, run: &RunContext) -> Result<StepOutcome, StepError> {
    let cancelled = runs::cancelled_for_teardown(pool, run.stand_id, run.run_id).await.map_err(db)?;
    Ok(StepOutcome::done(json!({ "cancelled_runs": cancelled })))
}

/// Teardown: before anything is removed, the forge stops pointing people at the stand: its
/// deployment goes inactive (GitLab: the environment stops) and a check still open for an
/// interrupted deploy ends as cancelled.
pub(super) async fn deactivate(pool: &PgPool, config: &Config, run: &RunContext) -> Result<StepOutcome, StepError> {
    let project = project_of(config, run)?;
    let head = stands::head_sha(pool, run.stand_id).await.map_err(db)?;
    let Some(sha) = run.sha.clone().or(head) else {
        return Ok(StepOutcome::skipped("the stand never had a commit, so the forge shows nothing for it"));
    };
    let queued = queue_deactivation(pool, project, run.stand_id, run.run_id, &run.branch, sha).await.map_err(db)?;
    Ok(StepOutcome::done(json!({ "queued": queued })))
}

/// Teardown: every login of the stand revoked (Vault leases and Postgres logins, recorded or not),
/// before the namespace and the database go.
pub(super) async fn revoke(credentials: Option<&StandCredentials>, run: &RunContext) -> Result<StepOutcome, StepError> {
    match credentials {
        Some(c) if c.has_databases() => {
            Ok(StepOutcome::done(c.revoke_all(run.stand_id, &stand_db(&run.namespace, None)).await?))
        }
        _ => Ok(StepOutcome::skipped("no [postgres] configured: the stand had no credentials")),
    }
}

/// Teardown, last: the database and its owner role, then the tombstone.
pub(super) async fn drop(
    pool: &PgPool,
    credentials: Option<&StandCredentials>,
    run: &RunContext,
) -> Result<StepOutcome, StepError> {
    let dropped = match credentials {
        Some(c) if c.has_databases() => Some(c.drop_database(&stand_db(&run.namespace, None)).await?),
        _ => None,
    };
    let tombstone = stands::tombstone(pool, run.stand_id, run.epoch).await.map_err(db)?;
    let state = if tombstone { "removed" } else { "reopened while it was removed: it is built again" };
    Ok(match dropped {
        Some(d) => StepOutcome::done(json!({ "database": d, "stand": state })),
        None => StepOutcome {
            detail: json!({ "skipped": "no [postgres] configured: the stand had no database", "stand": state }),
            skipped: true,
        },
    })
}

/// Extend: the stand's expiry moved by the run's `by` (or `[stands] extend_by`), at most
/// `[stands] max_expiry` from now. Returns the new expiry too, for the namespace annotation.
pub(super) async fn extend(
    pool: &PgPool,
    config: &Config,
    run: &RunContext,
) -> Result<(StepOutcome, DateTime<Utc>), StepError> {
    let by = run.params["by_seconds"].as_u64().map(std::time::Duration::from_secs).unwrap_or(config.stands.extend_by);
    // Anything past the cap ends at the cap: clamped first, so a huge `by` (300,000 years) cannot
    // overflow the database's timestamps on its way there (found by fuzzing the duration parser).
    let reach = by.min(config.stands.max_expiry + std::time::Duration::from_secs(1));
    match lifecycle::extend(pool, run.run_id, reach, config.stands.max_expiry).await.map_err(db)? {
        Some(e) => Ok((
            StepOutcome::done(json!({
            "from": e.from,
            "to": e.to,
            "by": humantime::format_duration(by).to_string(),
            "capped": e.capped.then(|| format!("at most {} from now ([stands] max_expiry)",
                humantime::format_duration(config.stands.max_expiry))),
            "note": format!("expires {}", e.to.format("%Y-%m-%d %H:%M UTC")),
            })),
            e.to,
        )),
        None => Err(StepError::permanent("stand_not_active", "the stand is no longer active: nothing to extend")),
    }
}

/// Queues the stand's reports, rendered from its recorded runs (sticky comment, check, environment,
/// label; see [`StandReport`]), after optionally keeping a copy of the comment at `copy_to`. The
/// report step of both modes calls it, and so does the reaper when a stand is about to expire:
/// `now` decides whether the comment carries the warning.
pub async fn queue_report(
    pool: &PgPool,
    config: &Config,
    stand_id: StandId,
    run_id: Option<RunId>,
    now: DateTime<Utc>,
    copy_to: Option<&Path>,
) -> Result<StepOutcome, StepError> {
    let report = StandReport::load(pool, config, stand_id, now).await.map_err(report_error)?;
    let path = match copy_to {
        Some(path) => Some(write(path, &report.body()).await?),
        None => None,
    };
    let queued = report.queue(pool, run_id).await.map_err(db)?;
    let comment = if report.number.is_none() { Some("no pull request known") } else { None };
    Ok(StepOutcome::done(json!({ "rendered": path, "queued": queued, "comment": comment })))
}

fn report_error(e: ReportError) -> StepError {
    if e.is_transient() {
        StepError::transient(e.label(), e.to_string())
    } else {
        StepError::permanent(e.label(), e.to_string())
    }
}
