//! The outbox: what draftd owes the forges (comments, checks, environments, labels, replies), as
//! rows written with the change that caused them and delivered by the reporter.
//!
//! Rows are delivered in order per stand (one stand is one PR/MR at a time): a *stream*. Rows with
//! the same `coalesce_key` describe the same thing on the forge (the sticky comment, the check of a
//! commit), so only the newest matters: [`claim_streams`] hands out, for each due stream, the newest
//! pending row of each key in the order they were written, and marks the older pending rows
//! `superseded`. A stream waits as a whole: a row that must be tried again later holds back the rows
//! behind it ([`retry_later`] and [`wait`]), and rows enqueued meanwhile join the back of the queue.
//!
//! Claiming happens inside the caller's transaction, and the claimed rows stay locked (`FOR UPDATE`)
//! until the caller records each outcome in that same transaction and commits. The lock is the
//! "in flight" mark: another reporter skips a stream while any of its pending rows is locked, so two
//! deliveries for one PR never overlap and a newer row never overtakes an older one on the forge. A
//! reporter that dies mid-delivery drops its connection, the lock goes with it, and the rows are due
//! again (every delivery is idempotent). The cost is one connection per reporter pass, held for the
//! pass's forge calls (bounded by their timeouts).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};

use super::StoreError;
use crate::stand::{RunId, StandId};

/// What an outbox row owes a forge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxKind {
    /// The sticky comment of a stand on its PR/MR.
    Comment,
    /// The `draftd` check (or commit status) of a commit.
    Check,
    /// The stand's deployment (GitHub) or environment (GitLab) `draft/<branch>`.
    Environment,
    /// A label on the PR/MR (`draft-tested`).
    Label,
    /// A one-off answer to a person (a refused command).
    Reply,
}

impl OutboxKind {
    /// Every kind the reporter delivers.
    pub const ALL: [OutboxKind; 5] =
        [OutboxKind::Comment, OutboxKind::Check, OutboxKind::Environment, OutboxKind::Label, OutboxKind::Reply];

    pub fn as_str(self) -> &'static str {
        match self {
            OutboxKind::Comment => "comment",
            OutboxKind::Check => "check",
            OutboxKind::Environment => "environment",
            OutboxKind::Label => "label",
            OutboxKind::Reply => "reply",
        }
    }

    /// The kind a row names; `None` for one this draftd does not know (written by a newer one).
    pub fn parse(text: &str) -> Option<OutboxKind> {
        OutboxKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl std::fmt::Display for OutboxKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A claimed row, with what the key's last delivery left behind.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub outbox_id: i64,
    pub stand_id: StandId,
    pub run_id: Option<RunId>,
    /// As stored, not an [`OutboxKind`]: a row of a kind this draftd does not know is failed with a
    /// reason by the reporter, instead of failing the claim of every stream with it.
    pub kind: String,
    pub coalesce_key: String,
    pub payload: Value,
    /// Delivery attempts of this row, the current one included.
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    /// The payload of the newest `delivered` row with the same key, receipt included (see
    /// [`delivered`]): where the last delivery went, e.g. the comment id to edit without listing.
    pub previous: Option<Value>,
}

/// Writes a pending row, due now. Use the transaction that records the change being reported.
pub async fn enqueue<'e>(
    conn: impl PgExecutor<'e>,
    stand_id: StandId,
    run_id: Option<RunId>,
    kind: OutboxKind,
    coalesce_key: &str,
    payload: &Value,
) -> Result<i64, StoreError> {
    // A stream held back by a retry keeps its order: the new row waits behind it.
    Ok(sqlx::query_scalar(
        "insert into outbox (stand_id, run_id, kind, coalesce_key, payload, next_attempt_at)
         values ($1, $2, $3, $4, $5, greatest(now(), (select max(next_attempt_at) from outbox
                                                      where stand_id = $1 and state = 'pending')))
         returning outbox_id",
    )
    .bind(stand_id)
    .bind(run_id)
    .bind(kind.as_str())
    .bind(coalesce_key)
    .bind(payload)
    .fetch_one(conn)
    .await?)
}

/// Claims, within the caller's transaction `tx`, up to `limit` due streams (stands) of the given
/// kinds that have no row in flight elsewhere: per stream, the newest pending row of each key, in the
/// order they were written; older pending rows of those keys become `superseded`. Rows stay locked
/// until `tx` ends: record each outcome with [`delivered`], [`retry_later`], [`wait`] or [`failed`]
/// on `tx`, then commit.
pub async fn claim_streams(
    tx: &mut PgConnection,
    kinds: &[OutboxKind],
    limit: i64,
) -> Result<Vec<Vec<OutboxRow>>, StoreError> {
    let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
    // Every pending row of the due streams, locked unless another reporter holds it.
    let locked: Vec<(i64, i64, String)> = sqlx::query_as(
        "select o.outbox_id, o.stand_id, o.coalesce_key from outbox o
         where o.state = 'pending' and o.kind = any($1)
           and o.stand_id in (select stand_id from outbox where state = 'pending' and kind = any($1)
                              group by stand_id having min(next_attempt_at) <= now()
                              order by min(next_attempt_at) limit $2)
         for update skip locked",
    )
    .bind(&kinds)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if locked.is_empty() {
        return Ok(Vec::new());
    }
    let mut stands: Vec<i64> = locked.iter().map(|(_, s, _)| *s).collect();
    stands.sort_unstable();
    stands.dedup();
    // A stream is ours only when we hold all its pending rows; otherwise one is in flight elsewhere.
    let pending: Vec<(i64, i64)> = sqlx::query_as(
        "select stand_id, count(*) from outbox where state = 'pending' and kind = any($2) and stand_id = any($1)
         group by stand_id",
    )
    .bind(&stands)
    .bind(&kinds)
    .fetch_all(&mut *tx)
    .await?;
    let (mut newest, mut older) = (Vec::new(), Vec::new());
    for (stand, count) in pending {
        let mut rows: Vec<&(i64, i64, String)> = locked.iter().filter(|(_, s, _)| *s == stand).collect();
        if rows.len() as i64 != count {
            continue;
        }
        rows.sort_unstable_by_key(|(id, _, _)| std::cmp::Reverse(*id));
        let mut seen = std::collections::HashSet::new();
        for (id, _, key) in rows {
            if seen.insert(key.as_str()) { newest.push(*id) } else { older.push(*id) }
        }
    }
    if !older.is_empty() {
        sqlx::query("update outbox set state = 'superseded' where outbox_id = any($1)")
            .bind(&older)
            .execute(&mut *tx)
            .await?;
    }
    if newest.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "select c.outbox_id, c.stand_id, c.run_id, c.kind, c.coalesce_key, c.payload, c.attempts + 1 as attempts,
                c.created_at,
                (select d.payload from outbox d where d.coalesce_key = c.coalesce_key and d.state = 'delivered'
                 order by d.outbox_id desc limit 1) as previous
         from outbox c where c.outbox_id = any($1) order by c.stand_id, c.outbox_id",
    )
    .bind(&newest)
    .fetch_all(&mut *tx)
    .await?;
    let mut streams: Vec<Vec<OutboxRow>> = Vec::new();
    for row in rows {
        match streams.last_mut() {
            Some(s) if s[0].stand_id == row.stand_id => s.push(row),
            _ => streams.push(vec![row]),
        }
    }
    Ok(streams)
}

/// Marks a row delivered; `receipt` (an object) is merged into its payload for the key's next
/// delivery to find as [`OutboxRow::previous`]. False when the row was not pending.
pub async fn delivered<'e>(
    conn: impl PgExecutor<'e>,
    outbox_id: i64,
    receipt: Option<&Value>,
) -> Result<bool, StoreError> {
    let n = sqlx::query(
        "update outbox set state = 'delivered', delivered_at = now(), last_error = null, attempts = attempts + 1,
                           payload = case when $2::jsonb is null then payload else payload || $2::jsonb end
         where outbox_id = $1 and state = 'pending'",
    )
    .bind(outbox_id)
    .bind(receipt)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Leaves a row pending after an attempt, due again after `delay`, with the error that held it back.
pub async fn retry_later<'e>(
    conn: impl PgExecutor<'e>,
    outbox_id: i64,
    error: &str,
    delay: Duration,
) -> Result<bool, StoreError> {
    let n = sqlx::query(
        "update outbox set next_attempt_at = now() + $3, last_error = $2, attempts = attempts + 1
         where outbox_id = $1 and state = 'pending'",
    )
    .bind(outbox_id)
    .bind(error)
    // Postgres intervals hold microseconds; sqlx refuses a Duration with finer digits.
    .bind(Duration::from_micros(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX)))
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Gives a row up: it is never tried again.
pub async fn failed<'e>(conn: impl PgExecutor<'e>, outbox_id: i64, error: &str) -> Result<bool, StoreError> {
    let n = sqlx::query(
        "update outbox set state = 'failed', last_error = $2, attempts = attempts + 1
             where outbox_id = $1 and state = 'pending'",
    )
    .bind(outbox_id)
    .bind(error)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Leaves a row that was not tried (a row ahead of it in its stream must be tried again first)
/// pending, due after `delay`; its attempts and last error stay as they were.
pub async fn wait<'e>(conn: impl PgExecutor<'e>, outbox_id: i64, delay: Duration) -> Result<bool, StoreError> {
    let n = sqlx::query("update outbox set next_attempt_at = now() + $2 where outbox_id = $1 and state = 'pending'")
        .bind(outbox_id)
        .bind(Duration::from_micros(u64::try_from(delay.as_micros()).unwrap_or(u64::MAX)))
        .execute(conn)
        .await?
        .rows_affected();
    Ok(n == 1)
}

/// The payload of the stand's newest `kind` row that is delivered or on its way (a teardown cancels
/// a check still open).
pub async fn newest_payload<'e>(
    conn: impl PgExecutor<'e>,
    stand_id: StandId,
    kind: OutboxKind,
) -> Result<Option<Value>, StoreError> {
    Ok(sqlx::query_scalar(
        "select payload from outbox where stand_id = $1 and kind = $2 and state in ('pending', 'delivered')
         order by outbox_id desc limit 1",
    )
    .bind(stand_id)
    .bind(kind.as_str())
    .fetch_optional(conn)
    .await?)
}

/// Whether the newest row under `coalesce_key` (delivered or on its way) says `present`: a label
/// added and not removed since.
pub async fn present<'e>(conn: impl PgExecutor<'e>, coalesce_key: &str) -> Result<bool, StoreError> {
    let present: Option<Option<bool>> = sqlx::query_scalar(
        "select (payload->>'present')::boolean from outbox
         where coalesce_key = $1 and state in ('pending', 'delivered') order by outbox_id desc limit 1",
    )
    .bind(coalesce_key)
    .fetch_optional(conn)
    .await?;
    Ok(present.flatten() == Some(true))
}
