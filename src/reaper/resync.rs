//! Resync of missed webhooks: the open PRs/MRs the forge lists, compared with the stands.
//!
//! What is found goes through intake as a delivery of its own (event `resync`, with an id that
//! names the PR and commit or state), so it is deduplicated, ordered against webhooks by the PR's
//! update time, and decided by the same rules as a webhook would be.
//!
//! A teardown needs the forge's positive word for that PR: a stand missing from the list is looked
//! up on its own, and only "closed" or "merged" tears it down. A failed list does nothing at all.
//! The stand keeps the forge's word as its reason; its teardown run's trigger is `resync`.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::config::{Config, Project};
use crate::forge::client::{AnyForge, ForgeClient, PullRequestInfo, PullRequestState};
use crate::forge::{Event, Gate, PullRequest, Trigger};
use crate::stand::{BranchName, CommitSha, RunId};
use crate::store::intake::{self, Delivery};
use crate::store::stands;

/// What resync did for one project.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProjectResync {
    pub project: String,
    /// Open PRs/MRs listed; `None` when the list failed.
    pub listed: Option<usize>,
    /// Runs queued for open PRs whose head commit had none: (PR number, run id).
    pub deploys: Vec<(u64, RunId)>,
    /// Teardowns queued for PRs the forge says are closed or merged: (PR number, run id).
    pub teardowns: Vec<(u64, RunId)>,
    /// PRs looked up one by one because the list did not have them.
    pub looked_up: usize,
    /// Look-ups that failed (nothing was done for those stands).
    pub lookup_errors: usize,
    /// The list failed: nothing was done for this project.
    pub error: Option<String>,
}

pub(super) async fn project(pool: &PgPool, config: &Config, project: &Project, forge: &AnyForge) -> ProjectResync {
    let mut report = ProjectResync { project: project.name.as_str().to_owned(), ..ProjectResync::default() };
    let repo = &project.settings.repo;
    let open = match forge.open_pull_requests(repo).await {
        Ok(open) => open,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    report.listed = Some(open.len());
    for pr in &open {
        match deploy_missed(pool, config, project, pr).await {
            Ok(Some(run)) => report.deploys.push((pr.number, run)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(project = project.name.as_str(), pr = pr.number, error = %e, "resync could not record a PR")
            }
        }
    }
    let numbers: Vec<i64> = open.iter().map(|p| p.number as i64).collect();
    let limit = i64::from(config.reaper.max_lookups);
    let missing = match stands::unlisted_prs(pool, project.name.as_str(), &numbers, limit).await {
        Ok(rows) => rows,
        Err(e) => {
            report.error = Some(format!("reading the stands: {e}"));
            return report;
        }
    };
    for (branch, number) in missing {
        report.looked_up += 1;
        let info = match forge.pull_request(repo, number as u64).await {
            Ok(info) => info,
            Err(e) => {
                report.lookup_errors += 1;
                tracing::info!(project = project.name.as_str(), pr = number, error = %e, "resync could not look up a PR; its stand is kept");
                continue;
            }
        };
        let trigger = match info.state {
            PullRequestState::Closed => Trigger::Closed,
            PullRequestState::Merged => Trigger::Merged,
            PullRequestState::Open => continue,
        };
        // The number is the stand's PR: a branch that now differs means the stand moved to another
        // PR since, and this closed one says nothing about it.
        if info.branch != branch {
            continue;
        }
        match teardown_missed(pool, config, project, &info, trigger).await {
            Ok(Some(run)) => report.teardowns.push((info.number, run)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(project = project.name.as_str(), pr = number, error = %e, "resync could not record a close")
            }
        }
    }
    report
}

/// Records an open PR whose head commit has no run, as a push would have; `None` when it has one
/// or intake ignored it (a filter, a closed or removed stand).
async fn deploy_missed(
    pool: &PgPool,
    config: &Config,
    project: &Project,
    pr: &PullRequestInfo,
) -> Result<Option<RunId>, String> {
    let gate = Gate { project };
    let Some(normal) = normalise(pr) else { return Ok(None) };
    if gate.admits(&normal.branch, pr.fork).is_err()
        || gate.may_deploy(pr.draft, pr.labels.iter().map(String::as_str)).is_err()
    {
        return Ok(None);
    }
    let known = stands::has_run_of(pool, project.name.as_str(), normal.branch.as_str(), normal.sha.as_str())
        .await
        .map_err(|e| e.to_string())?;
    if known {
        return Ok(None);
    }
    let id = format!("resync:{}:{}:{}", project.name.as_str(), pr.number, pr.sha);
    record(pool, config, project, &id, Event::Deploy { pr: normal, trigger: Trigger::Resync }).await
}

async fn teardown_missed(
    pool: &PgPool,
    config: &Config,
    project: &Project,
    info: &PullRequestInfo,
    trigger: Trigger,
) -> Result<Option<RunId>, String> {
    let Some(normal) = normalise(info) else { return Ok(None) };
    let id = format!(
        "resync:{}:{}:{}:{}",
        project.name.as_str(),
        info.number,
        trigger.as_str(),
        info.updated_at.timestamp()
    );
    record(pool, config, project, &id, Event::Teardown { pr: normal, trigger }).await
}

fn normalise(pr: &PullRequestInfo) -> Option<PullRequest> {
    Some(PullRequest {
        number: pr.number,
        branch: BranchName::new(&pr.branch).ok()?,
        sha: CommitSha::new(&pr.sha).ok()?,
        updated_at: pr.updated_at,
        fork: pr.fork,
    })
}

async fn record(
    pool: &PgPool,
    config: &Config,
    project: &Project,
    id: &str,
    event: Event,
) -> Result<Option<RunId>, String> {
    let body = serde_json::to_vec(&event).expect("events serialise");
    let body_sha256 = hex::encode(Sha256::digest(&body));
    let delivery = Delivery {
        forge: project.settings.forge,
        delivery_id: id,
        project: &project.name,
        event_name: intake::RESYNC_EVENT,
        body_sha256: &body_sha256,
        event: &event,
        strip_branch_prefix: project.settings.strip_branch_prefix,
        forks: project.settings.forks,
        request_id: None,
        origin: intake::Origin::Resync,
    };
    let recorded = intake::record(pool, &delivery).await.map_err(|e| e.to_string())?;
    // A fork's commit held for approval gets its comment, as the webhook's would have.
    if let (true, Some(stand)) = (recorded.awaits_approval, recorded.stand) {
        crate::reporter::queue_unrun(pool, config, stand).await.map_err(|e| e.to_string())?;
    }
    let queued = !recorded.redelivery && recorded.response.get("ignored").is_none();
    Ok(recorded.run.filter(|_| queued))
}
