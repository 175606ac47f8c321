//! The figures the dashboard draws: stands by state as each sweep counted them, and per day the
//! time to a working URL and the time a wake takes, read from runs and steps.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;

use super::StoreError;

/// Counts older than this are dropped as new ones are recorded: the charts look back 14 days.
const KEPT_DAYS: i32 = 90;

/// Records how many stands each project has in each state now (removed ones left out: they only
/// grow), as sweep `sweep_id` found them; and drops counts older than [`KEPT_DAYS`].
pub async fn record_counts(pool: &PgPool, sweep_id: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
    sqlx::query(
        "with pruned as (delete from stand_counts where at < $2 - make_interval(days => $3))
         insert into stand_counts (sweep_id, at, project, state, stands)
         select $1, $2, project, state, count(*) from stands where state <> 'removed' group by project, state",
    )
    .bind(sweep_id)
    .bind(now)
    .bind(KEPT_DAYS)
    .execute(pool)
    .await?;
    Ok(())
}

/// Stands in one state on one day, as the day's last sweep counted them (all projects).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DayCount {
    pub day: NaiveDate,
    pub state: String,
    pub stands: i64,
}

pub async fn states_by_day(pool: &PgPool, from: DateTime<Utc>) -> Result<Vec<DayCount>, StoreError> {
    Ok(sqlx::query_as(
        "with last as (
             select (at at time zone 'UTC')::date as day, max(sweep_id) as sweep_id
             from stand_counts where at >= $1 group by 1
         )
         select l.day, c.state, sum(c.stands)::int8 as stands
         from last l join stand_counts c using (sweep_id)
         group by 1, 2 order by 1, 2",
    )
    .bind(from)
    .fetch_all(pool)
    .await?)
}

/// p50 and p95 of a duration, in seconds, over one day.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DayPercentiles {
    pub day: NaiveDate,
    pub p50: f64,
    pub p95: f64,
    pub count: i64,
}

/// Per day since `from`: from a deploy's queueing to its verify passing (what
/// `draftd_time_to_url_seconds` measures), over the deploys whose verify passed that day.
pub async fn time_to_url_by_day(pool: &PgPool, from: DateTime<Utc>) -> Result<Vec<DayPercentiles>, StoreError> {
    percentiles_by_day(pool, from, "deploy").await
}

/// Per day since `from`: from a wake's queueing (a request, a command) to its verify passing.
pub async fn wake_time_by_day(pool: &PgPool, from: DateTime<Utc>) -> Result<Vec<DayPercentiles>, StoreError> {
    percentiles_by_day(pool, from, "wake").await
}

async fn percentiles_by_day(pool: &PgPool, from: DateTime<Utc>, kind: &str) -> Result<Vec<DayPercentiles>, StoreError> {
    Ok(sqlx::query_as(
        "select (st.finished_at at time zone 'UTC')::date as day,
                percentile_cont(0.5) within group (order by extract(epoch from st.finished_at - r.queued_at))::float8 as p50,
                percentile_cont(0.95) within group (order by extract(epoch from st.finished_at - r.queued_at))::float8 as p95,
                count(*) as count
         from steps st join runs r on r.run_id = st.run_id
         where r.kind = $2 and st.name = 'verify' and st.state = 'succeeded' and st.finished_at >= $1
         group by 1 order by 1",
    )
    .bind(from)
    .bind(kind)
    .fetch_all(pool)
    .await?)
}
