//! The outbox: what draftd owes the forges (comments now; checks, statuses, deployments later), as
//! rows written with the change that caused them and delivered by the reporter.
//!
//! Rows with the same `coalesce_key` describe the same thing on the forge (one sticky comment), so
//! only the newest matters: [`claim_due`] hands out the newest pending row of each key and marks the
//! older pending rows `superseded`.
//!
//! Claiming happens inside the caller's transaction, and the claimed rows stay locked (`FOR UPDATE`)
//! until the caller records each outcome in that same transaction and commits. The lock is the
//! "in flight" mark: another reporter skips a key while any pending row of it is locked, so two
//! deliveries of one key never overlap and a newer row never overtakes an older one on the forge. A
//! reporter that dies mid-delivery drops its connection, the lock goes with it, and the row is due
//! again (delivery is idempotent: the comment is edited in place). The cost is one connection per
//! reporter pass, held for the pass's forge calls (bounded by their timeouts).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};

use super::StoreError;

/// A claimed row, with what the key's last delivery left behind.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub outbox_id: i64,
    pub stand_id: i64,
    pub run_id: Option<i64>,
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
    stand_id: i64,
    run_id: Option<i64>,
    kind: &str,
    coalesce_key: &str,
    payload: &Value,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "insert into outbox (stand_id, run_id, kind, coalesce_key, payload) values ($1, $2, $3, $4, $5)
         returning outbox_id",
    )
    .bind(stand_id)
    .bind(run_id)
    .bind(kind)
    .bind(coalesce_key)
    .bind(payload)
    .fetch_one(conn)
    .await?)
}

/// Claims, within the caller's transaction `tx`, the newest pending row of up to `limit` keys of
/// the given kinds that have a due row and no row in flight elsewhere; older pending rows of those
/// keys become `superseded`. Each claimed row's `attempts` is counted up. Rows stay locked until
/// `tx` ends: record outcomes with [`delivered`], [`retry_later`] or [`failed`] on `tx`, then commit.
pub async fn claim_due(tx: &mut PgConnection, kinds: &[&str], limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
    let kinds: Vec<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
    // Every pending row of the due keys, locked unless another reporter holds it.
    let locked: Vec<(i64, String)> = sqlx::query_as(
        "select o.outbox_id, o.coalesce_key from outbox o
         where o.state = 'pending' and o.kind = any($1)
           and o.coalesce_key in (select coalesce_key from outbox
                                  where state = 'pending' and kind = any($1) and next_attempt_at <= now()
                                  group by coalesce_key order by min(next_attempt_at) limit $2)
         for update skip locked",
    )
    .bind(&kinds)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if locked.is_empty() {
        return Ok(Vec::new());
    }
    let mut keys: Vec<String> = locked.iter().map(|(_, k)| k.clone()).collect();
    keys.sort();
    keys.dedup();
    // A key is ours only when we hold all its pending rows; otherwise one is in flight elsewhere.
    let pending: Vec<(String, i64)> = sqlx::query_as(
        "select coalesce_key, count(*) from outbox where state = 'pending' and coalesce_key = any($1)
         group by coalesce_key",
    )
    .bind(&keys)
    .fetch_all(&mut *tx)
    .await?;
    let (mut newest, mut older) = (Vec::new(), Vec::new());
    for (key, count) in pending {
        let mut ids: Vec<i64> = locked.iter().filter(|(_, k)| *k == key).map(|(id, _)| *id).collect();
        if ids.len() as i64 != count {
            continue;
        }
        ids.sort_unstable();
        if let Some(last) = ids.pop() {
            newest.push(last);
            older.extend(ids);
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
    Ok(sqlx::query_as(
        "with c as (
             update outbox set attempts = attempts + 1 where outbox_id = any($1)
             returning outbox_id, stand_id, run_id, kind, coalesce_key, payload, attempts, created_at
         )
         select c.*, (select d.payload from outbox d where d.coalesce_key = c.coalesce_key and d.state = 'delivered'
                      order by d.outbox_id desc limit 1) as previous
         from c order by c.outbox_id",
    )
    .bind(&newest)
    .fetch_all(&mut *tx)
    .await?)
}

/// Marks a row delivered; `receipt` (an object) is merged into its payload for the key's next
/// delivery to find as [`OutboxRow::previous`]. False when the row was not pending.
pub async fn delivered<'e>(
    conn: impl PgExecutor<'e>,
    outbox_id: i64,
    receipt: Option<&Value>,
) -> Result<bool, StoreError> {
    let n = sqlx::query(
        "update outbox set state = 'delivered', delivered_at = now(), last_error = null,
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

/// Leaves a row pending, due again after `delay`, with the error that held it back.
pub async fn retry_later<'e>(
    conn: impl PgExecutor<'e>,
    outbox_id: i64,
    error: &str,
    delay: Duration,
) -> Result<bool, StoreError> {
    let n = sqlx::query(
        "update outbox set next_attempt_at = now() + $3, last_error = $2 where outbox_id = $1 and state = 'pending'",
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
    let n =
        sqlx::query("update outbox set state = 'failed', last_error = $2 where outbox_id = $1 and state = 'pending'")
            .bind(outbox_id)
            .bind(error)
            .execute(conn)
            .await?
            .rows_affected();
    Ok(n == 1)
}
