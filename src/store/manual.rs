//! Runs people ask for: `/draft` commands, check-run buttons, the API and the CLI.

use serde_json::json;
use sqlx::PgConnection;

use super::StoreError;
use super::runs::queue_run;
use crate::stand::{Command, RunId, RunKind, ShaPrefix, StandId, StandState, Trigger, short_sha};

/// How the request names its stand.
#[derive(Debug, Clone, Copy)]
pub enum StandLookup<'a> {
    Id(StandId),
    Branch {
        project: &'a str,
        branch: &'a str,
    },
    /// Comments carry only the PR/MR number; the newest stand of that PR answers.
    PullRequest {
        project: &'a str,
        number: u64,
    },
    /// A check's Re-run names its commit, and its branch when the forge says (a fork's check run
    /// has no pull request): the stand at that head commit, else the branch's stand (a Re-run on
    /// an older commit's check deploys that commit again).
    Commit {
        project: &'a str,
        sha: &'a str,
        branch: Option<&'a str>,
    },
}

#[derive(Debug, Clone)]
pub struct ManualRequest<'a> {
    pub command: Command,
    pub trigger: Trigger,
    pub requested_by: &'a str,
    /// The forge's numeric id of the requester, kept in the run's params for the access check.
    pub author_id: Option<u64>,
    /// The commit to re-run; the stand's head commit when `None`.
    pub sha: Option<&'a str>,
    /// The requester is known to be allowed (API token, database access). A forge comment is not
    /// yet: its run is authorised before it acts, so a destroy does not close the stand here.
    pub authorised: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManualOutcome {
    Queued {
        stand: StandId,
        run: RunId,
    },
    /// Nothing queued; `code` is stable for API clients.
    Refused {
        stand: Option<StandId>,
        code: &'static str,
        reason: String,
    },
}

/// Queues the run in `tx`, under the stand's row lock.
pub async fn queue(
    tx: &mut PgConnection,
    lookup: StandLookup<'_>,
    req: &ManualRequest<'_>,
) -> Result<ManualOutcome, StoreError> {
    const COLUMNS: &str = "select stand_id, state, epoch, head_sha, fork, awaiting_approval from stands";
    let found: Option<StandRow> = match lookup {
        StandLookup::Id(id) => {
            sqlx::query_as(&format!("{COLUMNS} where stand_id = $1 for update"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
        }
        StandLookup::Branch { project, branch } => {
            sqlx::query_as(&format!("{COLUMNS} where project = $1 and branch = $2 for update"))
                .bind(project)
                .bind(branch)
                .fetch_optional(&mut *tx)
                .await?
        }
        StandLookup::PullRequest { project, number } => {
            sqlx::query_as(&format!(
                "{COLUMNS} where project = $1 and pr_number = $2 order by updated_at desc limit 1 for update"
            ))
            .bind(project)
            .bind(number as i64)
            .fetch_optional(&mut *tx)
            .await?
        }
        StandLookup::Commit { project, sha, branch } => {
            sqlx::query_as(&format!(
                "{COLUMNS} where project = $1 and (head_sha = $2 or branch = $3)
                 order by head_sha is not distinct from $2 and branch is not distinct from $3 desc,
                          head_sha is not distinct from $2 desc, updated_at desc
                 limit 1 for update"
            ))
            .bind(project)
            .bind(sha)
            .bind(branch)
            .fetch_optional(&mut *tx)
            .await?
        }
    };
    let Some(StandRow { stand_id: stand, state, epoch, head_sha, fork, awaiting_approval }) = found else {
        let reason = match lookup {
            StandLookup::PullRequest { number, .. } => format!("no stand for pull request #{number}"),
            StandLookup::Commit { sha, .. } => format!("no stand at commit {}", sha.get(..7).unwrap_or(sha)),
            _ => "no such stand".to_string(),
        };
        return Ok(ManualOutcome::Refused { stand: None, code: "stand_not_found", reason });
    };
    if !state.is_live() {
        return Ok(ManualOutcome::Refused {
            stand: Some(stand),
            code: "stand_not_active",
            reason: format!("stand is {}", state.as_str()),
        });
    }
    if req.command == Command::Wake && state != StandState::Sleeping {
        return Ok(ManualOutcome::Refused {
            stand: Some(stand),
            code: "stand_not_sleeping",
            reason: format!("stand is {}, not sleeping", state.as_str()),
        });
    }
    let (kind, mut params) = match req.command {
        Command::Approve { .. } => (RunKind::Deploy, json!({ "approve": true })),
        Command::Rerun => (RunKind::Deploy, json!({})),
        Command::Destroy => (RunKind::Teardown, json!({})),
        Command::Extend { by } => (RunKind::Extend, json!({ "by_seconds": by.map(|d| d.as_secs()) })),
        Command::Wake => (RunKind::Wake, json!({})),
    };
    if let Some(id) = req.author_id {
        params["author_id"] = json!(id);
    }
    let fork = ForkStand { stand, fork, awaiting: awaiting_approval.as_deref() };
    let sha = match fork_sha(tx, &fork, req.command, req.sha, head_sha).await? {
        Ok(sha) => sha,
        Err((code, reason)) => return Ok(ManualOutcome::Refused { stand: Some(stand), code, reason }),
    };
    if kind.deploys() && sha.is_none() {
        return Ok(ManualOutcome::Refused {
            stand: Some(stand),
            code: "no_commit",
            reason: "stand has no commit to re-run".into(),
        });
    }
    let number: i32 = sqlx::query_scalar(
        "update stands set runs_count = runs_count + 1, updated_at = now() where stand_id = $1 returning runs_count",
    )
    .bind(stand)
    .fetch_one(&mut *tx)
    .await?;
    if kind.tears_down() && req.authorised {
        super::stands::close(&mut *tx, stand, req.trigger.as_str()).await?;
    }
    let run =
        queue_run(tx, stand, number, kind, req.trigger, epoch, sha.as_deref(), Some(req.requested_by), params).await?;
    Ok(ManualOutcome::Queued { stand, run })
}

#[derive(sqlx::FromRow)]
struct StandRow {
    stand_id: StandId,
    state: StandState,
    epoch: i32,
    head_sha: Option<String>,
    fork: bool,
    /// A fork's commit waiting for approval (`forks = "approve"`).
    awaiting_approval: Option<String>,
}

/// What approvals need to know of the stand.
struct ForkStand<'a> {
    stand: StandId,
    fork: bool,
    awaiting: Option<&'a str>,
}

/// The commit a run deploys: the one asked for, else the stand's head. A fork's commit waiting for
/// approval is never it: an approval names exactly that commit (and runs it once authorised); any
/// other deploy takes the newest approved commit instead, or is refused. `Err((code, reason))`.
async fn fork_sha(
    tx: &mut PgConnection,
    stand: &ForkStand<'_>,
    command: Command,
    asked: Option<&str>,
    head_sha: Option<String>,
) -> Result<Result<Option<String>, (&'static str, String)>, StoreError> {
    if let Command::Approve { commit } = command {
        return Ok(approval_sha(stand, commit).map(Some));
    }
    let sha = asked.map(str::to_owned).or(head_sha);
    // Only a re-run deploys: an extend, a destroy or a wake names the commit for the record.
    if command != Command::Rerun {
        return Ok(Ok(sha));
    }
    let Some(waiting) = stand.awaiting.filter(|w| sha.as_deref() == Some(*w)) else { return Ok(Ok(sha)) };
    if asked.is_none()
        && let Some(approved) = super::approvals::newest_approved(&mut *tx, stand.stand).await?
    {
        return Ok(Ok(Some(approved)));
    }
    Ok(Err((
        "awaiting_approval",
        format!(
            "commit {} is from a fork and waits for approval: someone with write access comments `/draft approve {}`",
            short_sha(waiting),
            short_sha(waiting)
        ),
    )))
}

/// The commit an approval runs: the one waiting, and the one it names when it names one.
fn approval_sha(stand: &ForkStand<'_>, commit: Option<ShaPrefix>) -> Result<String, (&'static str, String)> {
    if !stand.fork {
        return Err(("not_a_fork", "this pull request is not from a fork, so its commits need no approval".into()));
    }
    let Some(waiting) = stand.awaiting else {
        return Err(("nothing_awaiting", "no commit of this pull request waits for approval".into()));
    };
    match commit {
        Some(named) if !named.names(waiting) => Err((
            "commit_mismatch",
            format!(
                "commit {named} is not the one waiting for approval, which is {} (pushed since, or named wrongly); \
                 review it and comment `/draft approve {}`",
                short_sha(waiting),
                short_sha(waiting)
            ),
        )),
        _ => Ok(waiting.to_owned()),
    }
}
