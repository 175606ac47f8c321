//! Recording a webhook delivery: the delivery, its stand and its run in ONE transaction.
//!
//! The stand row is locked for the transaction, so every decision about one stand (stale or not,
//! closing or not, which run number) is serialised however deliveries interleave.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};

use super::StoreError;
use super::manual::{self, ManualOutcome, ManualRequest, StandLookup};
use super::runs::queue_run;
use crate::config::{ForgeKind, ForkPolicy};
use crate::stand::{BranchName, Command, Namespace, ProjectName, RunId, RunKind, StandId, StandState, Trigger};
use crate::stand::{Event, PullRequest, short_sha};

/// One verified delivery, ready to record.
#[derive(Debug)]
pub struct Delivery<'a> {
    pub forge: ForgeKind,
    pub delivery_id: &'a str,
    pub project: &'a ProjectName,
    /// The forge's event header, for audit.
    pub event_name: &'a str,
    pub body_sha256: &'a str,
    pub event: &'a Event,
    /// The project's `strip_branch_prefix`, for naming a new stand's namespace.
    pub strip_branch_prefix: bool,
    /// The project's `forks`: under `approve`, a fork's commit waits for approval instead of a run.
    pub forks: ForkPolicy,
    /// The HTTP request's id (`x-request-id`), so the run's logs can be matched with the request's.
    pub request_id: Option<&'a str>,
    pub origin: Origin,
}

/// Who said it: the forge's webhook, or the reaper's resync standing in for a webhook that was missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Webhook,
    Resync,
}

/// What recording produced: the answer to give, and whether it was recorded just now.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub redelivery: bool,
    pub stand: Option<StandId>,
    pub run: Option<RunId>,
    pub response: Value,
    /// A fork's commit of the stand waits for approval: its comment should say how to give it.
    pub awaits_approval: bool,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct StandRow {
    stand_id: StandId,
    state: StandState,
    /// Why it is closing or removed (`stands.state_reason`).
    reason: Option<String>,
    epoch: i32,
    last_event_at: Option<DateTime<Utc>>,
    /// Built from a fork's pull request.
    fork: bool,
}

/// What the event did, before it is written into the delivery row.
struct Decision {
    stand: Option<StandId>,
    run: Option<RunId>,
    ignored: Option<String>,
    /// A fork's commit was held for approval.
    awaits_approval: bool,
}

impl Decision {
    fn ignored(stand: Option<StandId>, reason: impl Into<String>) -> Self {
        Self { stand, run: None, ignored: Some(reason.into()), awaits_approval: false }
    }
    fn queued(stand: StandId, run: RunId) -> Self {
        Self { stand: Some(stand), run: Some(run), ignored: None, awaits_approval: false }
    }
}

pub async fn record(pool: &PgPool, d: &Delivery<'_>) -> Result<Recorded, StoreError> {
    let normalized = serde_json::to_value(d.event).expect("events serialise");

    // Most opened PRs are new stands: one statement records stand, run and delivery. A fork's
    // commit that needs approval takes the general path, which holds it.
    if let Event::Deploy { pr, trigger: Trigger::Opened } = d.event
        && !needs_approval(d, pr)
    {
        match open_new_stand(pool, d, pr, &normalized).await? {
            NewStand::Exists => {}
            NewStand::Recorded { stand, run } => {
                let response = response(d, Some(stand), Some(run), None);
                let recorded = Recorded {
                    redelivery: false,
                    stand: Some(stand),
                    run: Some(run),
                    response,
                    awaits_approval: false,
                };
                return Ok(recorded);
            }
            NewStand::Redelivery => return earlier_answer(pool, d).await,
        }
    }

    let mut tx = pool.begin().await?;
    let decision = match d.event {
        Event::Ignored { reason } => Decision::ignored(None, reason.clone()),
        Event::Deploy { pr, trigger } => deploy(&mut tx, d, pr, *trigger).await?,
        Event::Teardown { pr, trigger } => teardown(&mut tx, d, pr, *trigger).await?,
        Event::Command { pr_number, branch, sha, answer_in, command, author, author_id } => {
            let sha = sha.as_ref().map(|s| s.as_str());
            let asked = Asked { pr_number: *pr_number, branch: branch.as_ref(), sha, answer_in: answer_in.as_deref() };
            manual(&mut tx, d, &asked, *command, (author, *author_id)).await?
        }
    };
    // The delivery row comes last, with its final values: when its id is already recorded, rolling
    // back undoes everything above, and a concurrent first delivery is waited for by the insert.
    let inserted: Option<i32> = sqlx::query_scalar(
        "insert into deliveries
             (forge, delivery_id, project, event, body_sha256, normalized, outcome, reason, stand_id, run_id,
              request_id)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         on conflict (forge, delivery_id) do nothing
         returning 1",
    )
    .bind(d.forge.as_str())
    .bind(d.delivery_id)
    .bind(d.project.as_str())
    .bind(d.event_name)
    .bind(d.body_sha256)
    .bind(&normalized)
    .bind(if decision.ignored.is_some() { "ignored" } else { "queued" })
    .bind(&decision.ignored)
    .bind(decision.stand)
    .bind(decision.run)
    .bind(d.request_id)
    .fetch_optional(&mut *tx)
    .await?;
    if inserted.is_none() {
        tx.rollback().await?;
        return earlier_answer(pool, d).await;
    }
    tx.commit().await?;
    let response = response(d, decision.stand, decision.run, decision.ignored.as_deref());
    Ok(Recorded {
        redelivery: false,
        stand: decision.stand,
        run: decision.run,
        response,
        awaits_approval: decision.awaits_approval,
    })
}

/// A fork's pull request under `forks = "approve"`: its commits run only once approved.
fn needs_approval(d: &Delivery<'_>, pr: &PullRequest) -> bool {
    pr.fork && d.forks == ForkPolicy::Approve
}

/// The answer given to the first delivery of this id, rebuilt from what was recorded.
async fn earlier_answer(pool: &PgPool, d: &Delivery<'_>) -> Result<Recorded, StoreError> {
    // Whether the stand still waits for approval: a redelivery after its comment could not be
    // queued gets another go at it.
    let (stand, run, reason, awaits_approval): (Option<StandId>, Option<RunId>, Option<String>, bool) = sqlx::query_as(
        "select d.stand_id, d.run_id, d.reason, coalesce(s.awaiting_approval is not null, false)
             from deliveries d left join stands s on s.stand_id = d.stand_id
             where d.forge = $1 and d.delivery_id = $2",
    )
    .bind(d.forge.as_str())
    .bind(d.delivery_id)
    .fetch_one(pool)
    .await?;
    let response = response(d, stand, run, reason.as_deref());
    Ok(Recorded { redelivery: true, stand, run, response, awaits_approval })
}

/// The answer to a delivery: `{"delivery", "stand", "run", "ignored"}`, the last three when they apply.
fn response(d: &Delivery<'_>, stand: Option<StandId>, run: Option<RunId>, ignored: Option<&str>) -> Value {
    let mut response = json!({ "delivery": d.delivery_id });
    if let Some(s) = stand {
        response["stand"] = json!(s);
        response["run"] = json!(run);
    }
    if let Some(reason) = ignored {
        response["ignored"] = json!(reason);
    }
    response
}

enum NewStand {
    /// The stand exists (or its readable namespace is taken): nothing was written.
    Exists,
    Recorded {
        stand: StandId,
        run: RunId,
    },
    /// The delivery id is already recorded: nothing was written.
    Redelivery,
}

/// An opened PR for a branch with no stand yet: delivery, stand (with its final values) and run #1
/// in ONE statement, atomic without a transaction block, so the common case costs one round trip.
///
/// Ids are drawn first so the delivery row can be written first: a redelivered id inserts nothing
/// and so gates the stand and run inserts. Should the stand appear concurrently (or its namespace be
/// taken), the stand insert does nothing and the delivery's foreign key to it fails the whole
/// statement; the caller then takes the general path, which handles both.
async fn open_new_stand(
    pool: &PgPool,
    d: &Delivery<'_>,
    pr: &PullRequest,
    normalized: &Value,
) -> Result<NewStand, StoreError> {
    let namespace = Namespace::for_branch(d.project, &pr.branch, d.strip_branch_prefix);
    let row: Result<(bool, Option<StandId>, Option<RunId>), sqlx::Error> = sqlx::query_as(
        "with known as (
             select exists (select 1 from stands where project = $1 and branch = $2) as stand_exists
         ), d as (
             insert into deliveries
                 (forge, delivery_id, project, event, body_sha256, normalized, outcome, stand_id, run_id,
                  request_id)
             select $7, $8, $1, $9, $10, $11, 'queued',
                    nextval('stands_stand_id_seq'),
                    nextval('runs_run_id_seq'), $12
             from known where not known.stand_exists
             on conflict (forge, delivery_id) do nothing
             returning stand_id, run_id
         ), s as (
             insert into stands (stand_id, project, branch, namespace, state, pr_number, head_sha, last_event_at, runs_count, fork)
             overriding system value
             select d.stand_id, $1, $2, $3, 'active', $4, $5, $6, 1, $13 from d
             on conflict do nothing
             returning stand_id, epoch
         ), r as (
             insert into runs (run_id, stand_id, number, kind, trigger, automatic, epoch, sha)
             overriding system value
             select d.run_id, s.stand_id, 1, 'deploy', 'opened', true, s.epoch, $5 from s, d
             returning run_id, stand_id
         )
         select known.stand_exists, (select stand_id from r), (select run_id from r) from known",
    )
    .bind(d.project.as_str())
    .bind(pr.branch.as_str())
    .bind(namespace.as_str())
    .bind(pr.number as i64)
    .bind(pr.sha.as_str())
    .bind(pr.updated_at)
    .bind(d.forge.as_str())
    .bind(d.delivery_id)
    .bind(d.event_name)
    .bind(d.body_sha256)
    .bind(normalized)
    .bind(d.request_id)
    .bind(pr.fork)
    .fetch_one(pool)
    .await;
    match row {
        Ok((true, _, _)) => Ok(NewStand::Exists),
        Ok((false, Some(stand), Some(run))) => Ok(NewStand::Recorded { stand, run }),
        Ok((false, _, _)) => Ok(NewStand::Redelivery),
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Ok(NewStand::Exists),
        Err(e) => Err(e.into()),
    }
}

async fn deploy(
    tx: &mut PgConnection,
    d: &Delivery<'_>,
    pr: &PullRequest,
    trigger: Trigger,
) -> Result<Decision, StoreError> {
    let stand = find_or_create(tx, d, &pr.branch, StandState::Active, pr.fork).await?;
    if let Some(reason) = not_its_stand(tx, &stand, pr).await? {
        return Ok(Decision::ignored(Some(stand.stand_id), reason));
    }
    if let Some(reason) = stale(&stand, pr) {
        return Ok(Decision::ignored(Some(stand.stand_id), reason));
    }
    // A stand that expired comes back with the next commit: it went for want of pushes, not
    // because anyone closed it.
    let expired = stand.reason.as_deref() == Some("expired") && matches!(trigger, Trigger::Pushed | Trigger::Resync);
    // A sleeping stand is live: the push deploys it, and the deploy wakes it.
    let revive = !stand.state.is_live() && (trigger.revives() || expired);
    if !stand.state.is_live() && !revive {
        touch(tx, stand.stand_id, pr, false).await?;
        return Ok(Decision::ignored(
            Some(stand.stand_id),
            format!("stand is {}; only a reopen brings it back", stand.state.as_str()),
        ));
    }
    let epoch = if revive { stand.epoch + 1 } else { stand.epoch };
    if needs_approval(d, pr) {
        if !super::approvals::approved(&mut *tx, stand.stand_id, pr.sha.as_str()).await? {
            return hold_for_approval(tx, &stand, pr, revive.then_some(epoch)).await;
        }
        // Back at a commit approved before (a force-push): it runs, and nothing waits any more.
        super::approvals::set_awaiting(tx, stand.stand_id, None).await?;
    }
    // Runs of a stand are only inserted under its row lock, held here, so this check cannot race.
    let existing: Option<RunId> = sqlx::query_scalar(
        "select run_id from runs where stand_id = $1 and epoch = $2 and sha = $3 and kind = 'deploy' and automatic",
    )
    .bind(stand.stand_id)
    .bind(epoch)
    .bind(pr.sha.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(run) = existing {
        touch(tx, stand.stand_id, pr, false).await?;
        return Ok(Decision {
            stand: Some(stand.stand_id),
            run: Some(run),
            ignored: Some("commit already has a run".into()),
            awaits_approval: false,
        });
    }
    let number = touch(tx, stand.stand_id, pr, true).await?;
    if revive {
        super::stands::revive(&mut *tx, stand.stand_id, epoch).await?;
    }
    let run =
        queue_run(tx, stand.stand_id, number, RunKind::Deploy, trigger, epoch, Some(pr.sha.as_str()), None, json!({}))
            .await?;
    Ok(Decision::queued(stand.stand_id, run))
}

/// A fork's commit nobody approved yet: recorded as the commit the stand waits to have approved,
/// with no run. A stand brought back (a reopen) is live again, so the approval can run it; a stand
/// already running an approved commit keeps running it.
async fn hold_for_approval(
    tx: &mut PgConnection,
    stand: &StandRow,
    pr: &PullRequest,
    revive_to: Option<i32>,
) -> Result<Decision, StoreError> {
    touch(tx, stand.stand_id, pr, false).await?;
    if let Some(epoch) = revive_to {
        super::stands::revive(&mut *tx, stand.stand_id, epoch).await?;
    }
    super::approvals::set_awaiting(tx, stand.stand_id, Some(pr.sha.as_str())).await?;
    let reason = format!(
        "commit {} is from a fork and waits for approval: someone with write access comments /draft approve",
        short_sha(pr.sha.as_str())
    );
    Ok(Decision { awaits_approval: true, ..Decision::ignored(Some(stand.stand_id), reason) })
}

/// The event name (for audit) of the deliveries the reaper's resync records for what a missed webhook
/// would have said.
pub const RESYNC_EVENT: &str = "resync";

async fn teardown(
    tx: &mut PgConnection,
    d: &Delivery<'_>,
    pr: &PullRequest,
    trigger: Trigger,
) -> Result<Decision, StoreError> {
    // A close for a branch draftd never built still leaves a tombstone, so a late push cannot build it.
    let stand = find_or_create(tx, d, &pr.branch, StandState::Removed, pr.fork).await?;
    if let Some(reason) = not_its_stand(tx, &stand, pr).await? {
        return Ok(Decision::ignored(Some(stand.stand_id), reason));
    }
    if let Some(reason) = stale(&stand, pr) {
        return Ok(Decision::ignored(Some(stand.stand_id), reason));
    }
    if !stand.state.is_live() {
        touch(tx, stand.stand_id, pr, false).await?;
        return Ok(Decision::ignored(Some(stand.stand_id), format!("stand is already {}", stand.state.as_str())));
    }
    let number = touch(tx, stand.stand_id, pr, true).await?;
    super::stands::close(&mut *tx, stand.stand_id, trigger.as_str()).await?;
    // A closed PR's commit waits for nothing: a reopen holds its head again.
    super::approvals::set_awaiting(tx, stand.stand_id, None).await?;
    // A close found by resync: the stand goes because the PR closed (its reason), but resync asked,
    // so the run and the teardown counter say `resync`, which tells how often webhooks are missed.
    let run_trigger = if d.origin == Origin::Resync { Trigger::Resync } else { trigger };
    let run = queue_run(
        tx,
        stand.stand_id,
        number,
        RunKind::Teardown,
        run_trigger,
        stand.epoch,
        Some(pr.sha.as_str()),
        None,
        json!({}),
    )
    .await?;
    Ok(Decision::queued(stand.stand_id, run))
}

/// What a person's request names: a comment its PR/MR (GitLab notes the branch too), a check-run
/// button or re-run its commit, with the PR and branch when the forge gives them.
struct Asked<'a> {
    pr_number: Option<u64>,
    branch: Option<&'a BranchName>,
    sha: Option<&'a str>,
    answer_in: Option<&'a str>,
}

async fn manual(
    tx: &mut PgConnection,
    d: &Delivery<'_>,
    asked: &Asked<'_>,
    command: Command,
    (author, author_id): (&str, Option<u64>),
) -> Result<Decision, StoreError> {
    let project = d.project.as_str();
    let branch = asked.branch.map(BranchName::as_str);
    let lookup = match (asked.sha, branch, asked.pr_number) {
        (Some(sha), _, _) => StandLookup::Commit { project, sha, branch },
        (None, Some(branch), _) => StandLookup::Branch { project, branch },
        (None, None, Some(number)) => StandLookup::PullRequest { project, number },
        (None, None, None) => return Ok(Decision::ignored(None, "the request names no pull request or commit")),
    };
    let trigger = if asked.sha.is_some() { Trigger::CheckRun } else { Trigger::Command };
    let req = ManualRequest { command, trigger, requested_by: author, author_id, sha: asked.sha, authorised: false };
    Ok(match manual::queue(tx, lookup, &req).await? {
        ManualOutcome::Queued { stand, run } => Decision::queued(stand, run),
        ManualOutcome::Refused { stand, reason, .. } => {
            if let (Some(stand), Some(repo)) = (stand, asked.answer_in) {
                answer_refusal(tx, d.forge, repo, stand, (author, command), &reason).await?;
            }
            Decision::ignored(stand, reason)
        }
    })
}

/// A Re-run that cannot run is answered on the stand's PR/MR: GitHub leaves the person's check
/// (or suite) queued, waiting for a check run that will not come, so silence looks like a hang.
/// So is an approval that cannot be acted on: the maintainer would wait for a stand otherwise.
async fn answer_refusal(
    tx: &mut PgConnection,
    forge: ForgeKind,
    repo: &str,
    stand: StandId,
    (author, command): (&str, Command),
    reason: &str,
) -> Result<(), StoreError> {
    let number: Option<i64> =
        sqlx::query_scalar("select pr_number from stands where stand_id = $1").bind(stand).fetch_one(&mut *tx).await?;
    let Some(number) = number else { return Ok(()) };
    // The reporter's `reply` row (`reporter::ReplyPayload`), written here because the store sits
    // below the reporter. Not tied to a run, its key is the stand's: a burst of clicks on a removed
    // stand gets one answer, not one each.
    let payload = json!({
        "forge": forge,
        "repo": repo,
        "number": number,
        "body": match command {
            Command::Approve { .. } => format!("@{author} `/draft approve` was not acted on: {reason}."),
            _ => format!("@{author} the Re-run was not started: {reason}."),
        },
    });
    let what = if matches!(command, Command::Approve { .. }) { "approve" } else { "refused" };
    let key = format!("reply:{}:{repo}#{number}:{what}:stand:{stand}", forge.as_str());
    super::outbox::enqueue(&mut *tx, stand, None, super::outbox::OutboxKind::Reply, &key, &payload).await?;
    Ok(())
}

/// Events are ordered by the payload's own update time, not by arrival.
fn stale(stand: &StandRow, pr: &PullRequest) -> Option<String> {
    match stand.last_event_at {
        Some(newest) if pr.updated_at < newest => {
            Some(format!("older than the stand's newest event ({})", newest.to_rfc3339()))
        }
        _ => None,
    }
}

/// Records that the stand saw this event and, with `new_run`, hands out the next run number.
async fn touch(tx: &mut PgConnection, stand_id: StandId, pr: &PullRequest, new_run: bool) -> Result<i32, StoreError> {
    Ok(sqlx::query_scalar(
        "update stands set
             last_event_at = greatest(last_event_at, $2),
             pr_number = $3,
             head_sha = case when last_event_at is null or $2 >= last_event_at then $4 else head_sha end,
             runs_count = runs_count + $5::int,
             updated_at = now()
         where stand_id = $1
         returning runs_count",
    )
    .bind(stand_id)
    .bind(pr.updated_at)
    .bind(pr.number as i64)
    .bind(pr.sha.as_str())
    .bind(i32::from(new_run))
    .fetch_one(&mut *tx)
    .await?)
}

/// Locks the stand of (project, branch), creating it in `initial` state when there is none. A new
/// stand takes the readable namespace, or the hashed one when another stand already holds that.
/// A fork's pull request and the repository's own with the same branch name never share a stand:
/// whichever holds it keeps it while it lives (so a fork can neither take over nor close the
/// repository's stand); a removed stand goes to whoever comes next. `Some(reason)` when it is not
/// this pull request's.
async fn not_its_stand(
    tx: &mut PgConnection,
    stand: &StandRow,
    pr: &PullRequest,
) -> Result<Option<String>, StoreError> {
    if stand.fork == pr.fork {
        return Ok(None);
    }
    if stand.state == StandState::Removed {
        sqlx::query("update stands set fork = $2 where stand_id = $1")
            .bind(stand.stand_id)
            .bind(pr.fork)
            .execute(&mut *tx)
            .await?;
        return Ok(None);
    }
    Ok(Some(if pr.fork {
        "the branch's stand belongs to the repository's own pull request; a fork's pull request with the same \
         branch name gets none while it lives"
            .to_owned()
    } else {
        "the branch's stand belongs to a fork's pull request with the same branch name; this one gets none \
         while it lives"
            .to_owned()
    }))
}

async fn find_or_create(
    tx: &mut PgConnection,
    d: &Delivery<'_>,
    branch: &BranchName,
    initial: StandState,
    fork: bool,
) -> Result<StandRow, StoreError> {
    const SELECT: &str = "select stand_id, state, state_reason as reason, epoch, last_event_at, fork from stands
                          where project = $1 and branch = $2 for update";
    if let Some(row) = sqlx::query_as::<_, StandRow>(SELECT)
        .bind(d.project.as_str())
        .bind(branch.as_str())
        .fetch_optional(&mut *tx)
        .await?
    {
        return Ok(row);
    }
    let candidates = [
        Namespace::for_branch(d.project, branch, d.strip_branch_prefix),
        Namespace::hashed(d.project, branch, d.strip_branch_prefix),
    ];
    for namespace in &candidates {
        let created = sqlx::query_as::<_, StandRow>(
            "insert into stands (project, branch, namespace, state, fork) values ($1, $2, $3, $4, $5)
             on conflict do nothing
             returning stand_id, state, state_reason as reason, epoch, last_event_at, fork",
        )
        .bind(d.project.as_str())
        .bind(branch.as_str())
        .bind(namespace.as_str())
        .bind(initial)
        .bind(fork)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = created {
            return Ok(row);
        }
        // Either a concurrent delivery created this stand (it is ours now), or the namespace is taken.
        if let Some(row) = sqlx::query_as::<_, StandRow>(SELECT)
            .bind(d.project.as_str())
            .bind(branch.as_str())
            .fetch_optional(&mut *tx)
            .await?
        {
            return Ok(row);
        }
    }
    Err(StoreError::NamespaceTaken(candidates[0].to_string()))
}
