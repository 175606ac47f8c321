//! Steps both cluster modes share: a teardown's `cancel`, `deactivate`, `revoke` and `drop`, an
//! extend run's `extend`, and the stand's report (which the reaper's expiry warning also queues).

use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;

use super::plan::StandPlan;
use super::step::{RunContext, StepError, StepOutcome};
use super::steps::shared::{project_of, write};
use crate::config::{Config, ProjectConfig};
use crate::credentials::{StandCredentials, stand_db};
use crate::forge::client::{CheckState, EnvironmentReport, EnvironmentState};
use crate::forge::publish::{TESTED_LABEL, Target, environment_name, outbound};
use crate::forge::report::{ReportView, render};
use crate::reporter::{CheckPayload, EnvironmentPayload, LabelPayload, Outbound, enqueue};
use crate::store::lifecycle;
use crate::store::stands::{self, StandRef};

fn db(e: impl std::fmt::Display) -> StepError {
    StepError::transient("database", e.to_string())
}

/// Teardown: the deploys of the stand that gave way to it. Runs of a stand go one at a time, so a
/// deploy that was in flight when the teardown was queued has stopped by now: it watches for the
/// teardown inside each step (the heartbeat) and at each step boundary.
pub(super) async fn cancel(pool: &PgPool, run: &RunContext) -> Result<StepOutcome, StepError> {
    let cancelled: Vec<i32> = sqlx::query_scalar(
        "select d.number from runs d join runs t on t.run_id = $2
         where d.stand_id = $1 and d.kind = 'deploy' and d.number < t.number and d.state = 'cancelled'
           and d.finished_at >= t.queued_at
         order by d.number",
    )
    .bind(run.stand_id)
    .bind(run.run_id)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    Ok(StepOutcome::done(json!({ "cancelled_runs": cancelled })))
}

/// Teardown: before anything is removed, the forge stops pointing people at the stand: its
/// deployment goes inactive (GitLab: the environment stops) and a check still open for an
/// interrupted deploy ends as cancelled.
pub(super) async fn deactivate(pool: &PgPool, config: &Config, run: &RunContext) -> Result<StepOutcome, StepError> {
    let project = project_of(config, run)?;
    let head: Option<String> = sqlx::query_scalar("select head_sha from stands where stand_id = $1")
        .bind(run.stand_id)
        .fetch_one(pool)
        .await
        .map_err(db)?;
    let Some(sha) = run.sha.clone().or(head) else {
        return Ok(StepOutcome::skipped("the stand never had a commit, so the forge shows nothing for it"));
    };
    let mut out = vec![Outbound::Environment(EnvironmentPayload {
        forge: project.forge,
        repo: project.repo.clone(),
        env: EnvironmentReport {
            environment: environment_name(&run.branch),
            branch: run.branch.clone(),
            sha,
            state: EnvironmentState::Inactive,
            url: None,
            log_url: None,
            description: "Draft stand being removed".to_owned(),
        },
    })];
    // The newest check of the stand, delivered or on its way: still open means a deploy stopped.
    let check: Option<Value> = sqlx::query_scalar(
        "select payload from outbox where stand_id = $1 and kind = 'check' and state in ('pending', 'delivered')
         order by outbox_id desc limit 1",
    )
    .bind(run.stand_id)
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    if let Some(mut check) = check.and_then(|c| serde_json::from_value::<CheckPayload>(c).ok())
        && matches!(check.check.state, CheckState::Queued | CheckState::InProgress)
    {
        check.check.state = CheckState::Cancelled;
        check.check.title = "Cancelled: the stand is being removed".to_owned();
        out.push(Outbound::Check(check));
    }
    let mut tx = pool.begin().await.map_err(db)?;
    let mut queued = Vec::new();
    for o in &out {
        enqueue(&mut *tx, run.stand_id, Some(run.run_id), o).await.map_err(db)?;
        queued.push(o.kind());
    }
    tx.commit().await.map_err(db)?;
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
    let tombstone = lifecycle::tombstone(pool, run.stand_id, run.epoch).await.map_err(db)?;
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

/// Renders the stand's reports from its recorded runs (sticky comment, check, environment, label),
/// optionally keeps a copy of the comment at `copy_to`, and queues them in the outbox for the
/// reporter, in one transaction. The report step of both modes calls it, and so does the reaper
/// when a stand is about to expire: `now` decides whether the comment carries the warning.
pub async fn queue_report(
    pool: &PgPool,
    config: &Config,
    stand_id: i64,
    run_id: Option<i64>,
    now: DateTime<Utc>,
    copy_to: Option<&Path>,
) -> Result<StepOutcome, StepError> {
    let Some(detail) = stands::show(pool, &StandRef::Id(stand_id), 10).await.map_err(db)? else {
        return Err(StepError::permanent("stand_missing", "the stand row is gone"));
    };
    let Some(project) = config.project(&detail.stand.project) else {
        return Err(StepError::permanent(
            "project_unknown",
            format!("project {:?} is not configured", detail.stand.project),
        ));
    };
    let sha = detail.stand.head_sha.clone().unwrap_or_default();
    let s = &detail.stand;
    let url = StandPlan::new(config, project, stand_id, &s.namespace, &s.branch, &sha).url;
    // The mocks the newest rendered deploy listed (both modes record them on the deploy step).
    let mocks = detail
        .runs
        .iter()
        .flat_map(|r| r.steps.iter())
        .find(|st| st.name == "deploy" && st.detail.get("mocks").is_some())
        .and_then(|st| serde_json::from_value(st.detail["mocks"].clone()).ok())
        .unwrap_or_default();
    let Some(mut view) = ReportView::from_detail(&detail, url, mocks, Some(&config.public_url)) else {
        return Err(StepError::permanent("no_run", "the stand has no run to report"));
    };
    view.expiry_warning =
        view.expires_at.is_some_and(|at| at > now && at - now <= chrono_of(config.reaper.warn_before));
    let path = match copy_to {
        Some(path) => Some(write(path, &render(&view)).await?),
        None => None,
    };
    let number = detail.stand.pr_number.map(|n| n as u64);
    let mut tx = pool.begin().await.map_err(db)?;
    let labelled = match number {
        Some(n) => label_added(&mut tx, stand_id, project, n).await.map_err(db)?,
        None => false,
    };
    let target = Target { forge: project.forge, repo: &project.repo, number, labelled };
    let mut queued = Vec::new();
    for out in outbound(&view, &target) {
        let id = enqueue(&mut *tx, stand_id, run_id, &out).await.map_err(db)?;
        queued.push(json!({ "kind": out.kind(), "outbox": id }));
    }
    tx.commit().await.map_err(db)?;
    let comment = if number.is_none() { Some("no pull request known") } else { None };
    Ok(StepOutcome::done(json!({ "rendered": path, "queued": queued, "comment": comment })))
}

fn chrono_of(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Whether the newest `draft-tested` row of the PR (delivered or on its way) adds the label.
async fn label_added(
    tx: &mut sqlx::PgConnection,
    stand_id: i64,
    project: &ProjectConfig,
    number: u64,
) -> Result<bool, sqlx::Error> {
    let probe = Outbound::Label(LabelPayload {
        forge: project.forge,
        repo: project.repo.clone(),
        number,
        label: TESTED_LABEL.to_owned(),
        present: true,
    });
    let present: Option<bool> = sqlx::query_scalar(
        "select (payload->>'present')::boolean from outbox
         where coalesce_key = $1 and state in ('pending', 'delivered') order by outbox_id desc limit 1",
    )
    .bind(probe.coalesce_key(stand_id))
    .fetch_optional(&mut *tx)
    .await?
    .flatten();
    Ok(present == Some(true))
}
