//! The stretches each stand was awake, with what its pods requested, and what its claims request:
//! what its cost is priced from (`stand::cost`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::StoreError;
use crate::stand::{Awake, StandId};

/// The stand is awake at these requests from now: an open stretch at other requests ends here (a
/// deploy changed them) and a new one starts; one at the same requests goes on.
pub async fn awake(
    pool: &PgPool,
    stand_id: StandId,
    cpu_millis: i64,
    memory_bytes: i64,
    storage_bytes: i64,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    // The stand's row lock orders two runs' records of the same stand.
    sqlx::query("update stands set storage_bytes = $2 where stand_id = $1")
        .bind(stand_id)
        .bind(storage_bytes)
        .execute(&mut *tx)
        .await?;
    let same: Option<bool> = sqlx::query_scalar(
        "select cpu_millis = $2 and memory_bytes = $3 from stand_usage where stand_id = $1 and ended_at is null",
    )
    .bind(stand_id)
    .bind(cpu_millis)
    .bind(memory_bytes)
    .fetch_optional(&mut *tx)
    .await?;
    if same != Some(true) {
        sqlx::query("update stand_usage set ended_at = now() where stand_id = $1 and ended_at is null")
            .bind(stand_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("insert into stand_usage (stand_id, cpu_millis, memory_bytes) values ($1, $2, $3)")
            .bind(stand_id)
            .bind(cpu_millis)
            .bind(memory_bytes)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The stand's workloads stopped (a sleep, a teardown): its open stretch ends now.
pub async fn stopped(pool: &PgPool, stand_id: StandId) -> Result<(), StoreError> {
    sqlx::query("update stand_usage set ended_at = now() where stand_id = $1 and ended_at is null")
        .bind(stand_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// What a stand's cost is priced from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub awake: Vec<Awake>,
    pub storage_bytes: i64,
    pub created: DateTime<Utc>,
    /// When it was removed; storage is paid until then.
    pub ended: Option<DateTime<Utc>>,
}

/// `(started_at, ended_at, cpu_millis, memory_bytes)` as stored.
type Stretch = (DateTime<Utc>, Option<DateTime<Utc>>, i64, i64);

pub async fn of(pool: &PgPool, stand_id: StandId) -> Result<Option<Usage>, StoreError> {
    let stand: Option<(i64, DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "select storage_bytes, created_at, case when state = 'removed' then updated_at end from stands where stand_id = $1",
    )
    .bind(stand_id)
    .fetch_optional(pool)
    .await?;
    let Some((storage_bytes, created, ended)) = stand else { return Ok(None) };
    let rows: Vec<Stretch> = sqlx::query_as(
        "select started_at, ended_at, cpu_millis, memory_bytes from stand_usage where stand_id = $1 order by started_at",
    )
    .bind(stand_id)
    .fetch_all(pool)
    .await?;
    let awake = rows
        .into_iter()
        .map(|(from, until, cpu_millis, memory_bytes)| Awake { from, until, cpu_millis, memory_bytes })
        .collect();
    Ok(Some(Usage { awake, storage_bytes, created, ended }))
}

/// A stand's cost so far at `[cost]`'s prices, once it was awake; with when its last awake stretch
/// ended (`None` while it is awake).
#[derive(Debug, Clone, PartialEq)]
pub struct Priced {
    pub cost: crate::stand::Cost,
    pub last_awake_until: Option<DateTime<Utc>>,
}

pub async fn priced(
    pool: &PgPool,
    stand_id: StandId,
    prices: &crate::config::CostConfig,
    now: DateTime<Utc>,
) -> Result<Option<Priced>, StoreError> {
    let Some(usage) = of(pool, stand_id).await?.filter(|u| !u.awake.is_empty()) else { return Ok(None) };
    let until = usage.ended.unwrap_or(now);
    let cost =
        crate::stand::cost(&prices.rates(), &prices.currency, &usage.awake, usage.storage_bytes, usage.created, until);
    Ok(Some(Priced { cost, last_awake_until: usage.awake.last().and_then(|a| a.until) }))
}

/// Per project: CPU core-hours and memory GiB-hours its stands' pods requested while awake, and the
/// GiB-hours their claims held, all stands ever (removed ones too), until `now`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ProjectUsage {
    pub project: String,
    pub cpu_core_hours: f64,
    pub memory_gib_hours: f64,
    pub storage_gib_hours: f64,
}

pub async fn per_project(pool: &PgPool) -> Result<Vec<ProjectUsage>, StoreError> {
    Ok(sqlx::query_as(
        "with awake as (
             select s.project,
                    sum(u.cpu_millis / 1000.0 * extract(epoch from coalesce(u.ended_at, now()) - u.started_at) / 3600) as cpu,
                    sum(u.memory_bytes / 1073741824.0
                        * extract(epoch from coalesce(u.ended_at, now()) - u.started_at) / 3600) as memory
             from stand_usage u join stands s using (stand_id) group by s.project
         ), held as (
             select project,
                    sum(storage_bytes / 1073741824.0 * extract(epoch from
                        (case when state = 'removed' then updated_at else now() end) - created_at) / 3600) as storage
             from stands where storage_bytes > 0 group by project
         )
         select coalesce(a.project, h.project) as project,
                coalesce(a.cpu, 0)::float8 as cpu_core_hours,
                coalesce(a.memory, 0)::float8 as memory_gib_hours,
                coalesce(h.storage, 0)::float8 as storage_gib_hours
         from awake a full join held h on h.project = a.project
         order by 1",
    )
    .fetch_all(pool)
    .await?)
}

/// Per project, within `[from, to)`: what its stands' pods requested while awake and what their
/// claims held (as [`ProjectUsage`]), and what the pods requested before they were put to sleep,
/// times the hours they slept: what sleeping saved.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct WindowUsage {
    pub project: String,
    pub cpu_core_hours: f64,
    pub memory_gib_hours: f64,
    pub storage_gib_hours: f64,
    pub slept_cpu_core_hours: f64,
    pub slept_memory_gib_hours: f64,
}

impl WindowUsage {
    /// What it cost at `rates`, and what sleeping saved.
    pub fn priced(&self, rates: &crate::stand::Rates) -> (f64, f64) {
        let total = self.cpu_core_hours * rates.cpu_hour
            + self.memory_gib_hours * rates.memory_gib_hour
            + self.storage_gib_hours * rates.storage_gib_hour;
        let saved = self.slept_cpu_core_hours * rates.cpu_hour + self.slept_memory_gib_hours * rates.memory_gib_hour;
        (total, saved)
    }
}

// $1 project filter (null: all), $2 window start, $3 window end. A stretch ends with a sleep or a
// teardown (or a deploy that changed the requests, when the next begins at once); the time from its
// end to the next stretch, or to the stand's removal, is time asleep, at the requests it had.
const IN_WINDOW: &str = "
with scope as (
    select stand_id, project, storage_bytes, created_at,
           case when state = 'removed' then updated_at end as removed_at
    from stands where ($1::text is null or project = $1)
),
stretches as (
    select sc.project, u.cpu_millis / 1000.0 as cores, u.memory_bytes / 1073741824.0 as gib,
           u.started_at, coalesce(u.ended_at, $3) as ended_at, u.ended_at is not null as ended,
           coalesce(lead(u.started_at) over (partition by u.stand_id order by u.started_at), sc.removed_at, $3)
               as next_at
    from stand_usage u join scope sc using (stand_id)
    where u.started_at < $3
),
hours as (
    select project, cores, gib,
           greatest(0, extract(epoch from least(ended_at, $3) - greatest(started_at, $2))) / 3600 as awake,
           case when ended then greatest(0, extract(epoch from least(next_at, $3) - greatest(ended_at, $2))) / 3600
                else 0 end as asleep
    from stretches
),
awake as (
    select project, sum(cores * awake) as cpu, sum(gib * awake) as memory,
           sum(cores * asleep) as slept_cpu, sum(gib * asleep) as slept_memory
    from hours group by project
),
held as (
    select project,
           sum(storage_bytes / 1073741824.0
               * greatest(0, extract(epoch from least(coalesce(removed_at, $3), $3) - greatest(created_at, $2))) / 3600)
               as storage
    from scope where storage_bytes > 0 group by project
)
select coalesce(a.project, h.project) as project,
       coalesce(a.cpu, 0)::float8 as cpu_core_hours,
       coalesce(a.memory, 0)::float8 as memory_gib_hours,
       coalesce(h.storage, 0)::float8 as storage_gib_hours,
       coalesce(a.slept_cpu, 0)::float8 as slept_cpu_core_hours,
       coalesce(a.slept_memory, 0)::float8 as slept_memory_gib_hours
from awake a full join held h on h.project = a.project
order by 1";

pub async fn in_window(
    pool: &PgPool,
    project: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<WindowUsage>, StoreError> {
    Ok(sqlx::query_as(IN_WINDOW).bind(project).bind(from).bind(to).fetch_all(pool).await?)
}
