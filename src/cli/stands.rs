//! `draftd stands list|show|rerun|extend|destroy`: stands read from, and manual runs queued in,
//! draftd's database.

use std::io::Write;

use anyhow::bail;
use chrono::Utc;

use super::table;
use crate::config::Config;
use crate::forge::{Command, Trigger};
use crate::http::schema;
use crate::stand::StandState;
use crate::store::manual::{self, ManualOutcome, ManualRequest, StandLookup};
use crate::store::{self, stands, usage};

/// `draftd stands list`.
pub async fn list(
    config: Config,
    project: Option<String>,
    state: Option<StandState>,
    json: bool,
) -> anyhow::Result<()> {
    let pool = store::pool(&config.database_url, 2)?;
    let rows = stands::list(&pool, project.as_deref(), state.map(StandState::as_str)).await?;
    let mut out = std::io::stdout().lock();
    if json {
        // The API's shape, so scripts can read either.
        let rows: Vec<schema::StandSummary> = rows.into_iter().map(Into::into).collect();
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|s| {
            vec![
                s.stand_id.to_string(),
                s.project.clone(),
                s.branch.clone(),
                state_text(s),
                s.namespace.clone(),
                s.pr_number.map(|n| format!("#{n}")).unwrap_or_default(),
                short(s.head_sha.as_deref()),
                match (&s.last_run, &s.last_run_kind, &s.last_run_state) {
                    (Some(n), Some(k), Some(st)) => format!("#{n} {k} {st}"),
                    _ => String::new(),
                },
            ]
        })
        .collect();
    table::write_table(&mut out, &["ID", "PROJECT", "BRANCH", "STATE", "NAMESPACE", "PR", "SHA", "LAST RUN"], &table)?;
    if rows.is_empty() {
        writeln!(out, "(no stands)")?;
    }
    Ok(())
}

/// `draftd stands show <id | project/branch>`.
pub async fn show(config: Config, stand: stands::StandRef, json: bool) -> anyhow::Result<()> {
    let pool = store::pool(&config.database_url, 2)?;
    let Some(detail) = stands::show(&pool, &stand, 20).await? else {
        bail!("no stand {}", describe(&stand));
    };
    let mut out = std::io::stdout().lock();
    if json {
        let stand_id = detail.stand.stand_id;
        let mut shown = schema::StandDetail::from(detail);
        shown.cost = usage::priced(&pool, stand_id, &config.cost, Utc::now()).await?.map(|p| p.cost);
        serde_json::to_writer_pretty(&mut out, &shown)?;
        writeln!(out)?;
        return Ok(());
    }
    let s = &detail.stand;
    let fields: [(&str, String); 9] = [
        ("stand", s.stand_id.to_string()),
        ("project", s.project.clone()),
        ("branch", s.branch.clone()),
        ("namespace", s.namespace.clone()),
        (
            "state",
            match &s.state_reason {
                Some(r) => format!("{} ({r})", state_text(s)),
                None => state_text(s),
            },
        ),
        ("pull request", s.pr_number.map(|n| format!("#{n}")).unwrap_or_else(|| "-".into())),
        ("head sha", s.head_sha.clone().unwrap_or_else(|| "-".into())),
        ("expires", s.expires_at.map(|t| t.to_rfc3339()).unwrap_or_else(|| "- (set by the first deploy)".into())),
        ("created", s.created_at.to_rfc3339()),
    ];
    for (k, v) in fields {
        writeln!(out, "{:<13} {v}", format!("{k}:"))?;
    }
    if let Some(reason) = s.health_reason.as_deref().filter(|_| degraded(s)) {
        let since = s.health_since.map(|t| format!(" since {}", t.to_rfc3339())).unwrap_or_default();
        writeln!(out, "{:<13} {reason}{since}", "degraded:")?;
    }
    if let Some(priced) = usage::priced(&pool, s.stand_id, &config.cost, Utc::now()).await? {
        let line = crate::reporter::CostLine {
            cost: priced.cost,
            sleeping_since: priced.last_awake_until.filter(|_| s.state == StandState::Sleeping),
        };
        writeln!(out, "{:<13} {}", "cost:", crate::reporter::cost_text(&line))?;
    }
    writeln!(out)?;
    let runs: Vec<Vec<String>> = detail
        .runs
        .iter()
        .map(|r| {
            vec![
                format!("#{}", r.number),
                r.kind.to_string(),
                r.trigger.to_string(),
                short(r.sha.as_deref()),
                r.state.to_string(),
                r.requested_by.clone().unwrap_or_default(),
                r.queued_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            ]
        })
        .collect();
    table::write_table(&mut out, &["RUN", "KIND", "TRIGGER", "SHA", "STATE", "BY", "QUEUED (UTC)"], &runs)?;
    if let Some(run) = detail.runs.first().filter(|r| !r.steps.is_empty()) {
        writeln!(out, "\nsteps of run #{}:", run.number)?;
        let steps: Vec<Vec<String>> = run
            .steps
            .iter()
            .map(|s| {
                let took = match (s.started_at, s.finished_at) {
                    (Some(a), Some(b)) => format!("{} ms", (b - a).num_milliseconds()),
                    _ => String::new(),
                };
                let note = s
                    .error
                    .as_ref()
                    .and_then(|e| e.get("message"))
                    .or_else(|| s.detail.get("skipped"))
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string();
                vec![s.name.clone(), s.state.to_string(), s.attempt.to_string(), took, note]
            })
            .collect();
        table::write_table(&mut out, &["STEP", "STATE", "ATTEMPT", "TOOK", "NOTE"], &steps)?;
    }
    Ok(())
}

/// `draftd stands rerun|extend|destroy`: queued directly in the database, which whoever can reach it
/// is trusted with, and recorded with the operator's login.
pub async fn queue(config: Config, stand: stands::StandRef, command: Command) -> anyhow::Result<()> {
    let pool = store::pool(&config.database_url, 2)?;
    let login = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let requested_by = format!("cli:{login}");
    let req = ManualRequest {
        command,
        trigger: Trigger::Cli,
        requested_by: &requested_by,
        author_id: None,
        sha: None,
        authorised: true,
    };
    let lookup = match &stand {
        stands::StandRef::Id(id) => StandLookup::Id(*id),
        stands::StandRef::Branch { project, branch } => StandLookup::Branch { project, branch },
    };
    let mut tx = pool.begin().await?;
    let outcome = manual::queue(&mut tx, lookup, &req).await?;
    tx.commit().await?;
    match outcome {
        ManualOutcome::Queued { stand, run } => {
            println!("queued run {run} for stand {stand}");
            Ok(())
        }
        ManualOutcome::Refused { reason, .. } => bail!("stand {}: {reason}", describe(&stand)),
    }
}

fn describe(stand: &stands::StandRef) -> String {
    match stand {
        stands::StandRef::Id(id) => format!("with id {id}"),
        stands::StandRef::Branch { project, branch } => format!("for branch {branch:?} of project {project:?}"),
    }
}

/// An awake stand the health watch found not answering is `active, degraded`: still active (it
/// takes deploys and commands), but not working.
fn state_text(s: &stands::StandSummary) -> String {
    if degraded(s) { format!("{}, {}", s.state, s.health) } else { s.state.to_string() }
}

fn degraded(s: &stands::StandSummary) -> bool {
    s.state == StandState::Active && s.health == crate::stand::Health::Degraded
}

fn short(sha: Option<&str>) -> String {
    sha.map(|s| s.chars().take(12).collect()).unwrap_or_default()
}
