//! Fork commits under `forks = "approve"`: the head commit a fork's stand waits to have approved
//! (`stands.awaiting_approval`), and the approvals given (`fork_approvals`: who, which commit, when).
//! A stand runs only commits approved here; a push makes the new head wait again.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};

use super::StoreError;
use crate::config::ForkPolicy;
use crate::stand::{Provenance, RunId, StandId};

/// One approval, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Approval {
    pub stand_id: StandId,
    pub sha: String,
    /// `<forge>:<login>`, as the audit trail names people.
    pub approved_by: String,
    pub approved_at: DateTime<Utc>,
    pub run_id: Option<RunId>,
}

/// Whether `sha` was approved for the stand.
pub async fn approved<'e>(conn: impl PgExecutor<'e>, stand_id: StandId, sha: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar("select exists (select 1 from fork_approvals where stand_id = $1 and sha = $2)")
        .bind(stand_id)
        .bind(sha)
        .fetch_one(conn)
        .await?)
}

/// The stand's newest approved commit: what `/draft rerun` deploys while a newer one waits.
pub async fn newest_approved<'e>(conn: impl PgExecutor<'e>, stand_id: StandId) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar("select sha from fork_approvals where stand_id = $1 order by approved_at desc limit 1")
        .bind(stand_id)
        .fetch_optional(conn)
        .await?)
}

/// Every approval of the stand, newest first.
pub async fn list(pool: &PgPool, stand_id: StandId) -> Result<Vec<Approval>, StoreError> {
    Ok(sqlx::query_as(
        "select stand_id, sha, approved_by, approved_at, run_id from fork_approvals
         where stand_id = $1 order by approved_at desc, approval_id desc",
    )
    .bind(stand_id)
    .fetch_all(pool)
    .await?)
}

/// The commit the stand waits to have approved, if one does. Locks the stand's row for the caller's
/// transaction, so a push recorded meanwhile (intake holds the same lock) comes before or after the
/// approval, never in between.
pub async fn awaiting<'e>(conn: impl PgExecutor<'e>, stand_id: StandId) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar("select awaiting_approval from stands where stand_id = $1 for update")
        .bind(stand_id)
        .fetch_optional(conn)
        .await?
        .flatten())
}

/// Marks `sha` as the commit the stand waits to have approved (`None`: nothing waits).
pub async fn set_awaiting(tx: &mut PgConnection, stand_id: StandId, sha: Option<&str>) -> Result<(), StoreError> {
    sqlx::query("update stands set awaiting_approval = $2, updated_at = now() where stand_id = $1")
        .bind(stand_id)
        .bind(sha)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Records that `approved_by` approved `sha` for the stand with run `run_id`, and that it no longer
/// waits. Call it in the transaction that records the access check. Approving a commit twice keeps
/// the first approval.
pub async fn approve(
    tx: &mut PgConnection,
    stand_id: StandId,
    sha: &str,
    approved_by: &str,
    run_id: RunId,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into fork_approvals (stand_id, sha, approved_by, run_id) values ($1, $2, $3, $4)
         on conflict (stand_id, sha) do nothing",
    )
    .bind(stand_id)
    .bind(sha)
    .bind(approved_by)
    .bind(run_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "update stands set awaiting_approval = null, updated_at = now()
         where stand_id = $1 and awaiting_approval = $2",
    )
    .bind(stand_id)
    .bind(sha)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Whose code the stand runs, under the project's current `forks` policy: a fork's stand counts as
/// approved only under `approve` and once a commit of it was approved (its runs deploy nothing
/// else); under `allow` (or `deny`, for a stand left from before) it is a plain fork.
pub async fn provenance<'e>(
    conn: impl PgExecutor<'e>,
    stand_id: StandId,
    policy: ForkPolicy,
) -> Result<Provenance, StoreError> {
    let (fork, approved): (bool, bool) = sqlx::query_as(
        "select fork, exists (select 1 from fork_approvals a where a.stand_id = s.stand_id)
         from stands s where stand_id = $1",
    )
    .bind(stand_id)
    .fetch_one(conn)
    .await?;
    Ok(match (fork, approved, policy) {
        (false, _, _) => Provenance::Own,
        (true, true, ForkPolicy::Approve) => Provenance::ApprovedFork,
        (true, _, _) => Provenance::Fork,
    })
}
