//! DORA-style delivery figures per project over a time window, for `GET /api/v1/metrics/summary`.
//!
//! Everything is read from runs, steps and deliveries in one statement. The window is half-open,
//! `[now - window, now)`, and `now` is a parameter so tests can pin it. "Finished deploy" means a
//! deploy run that ended `succeeded` or `failed`: cancelled, superseded and rejected runs never
//! reached a verdict on the change, so they count neither way.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::StoreError;

/// The figures of every project in scope, sorted by project.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Summary {
    pub window: Window,
    /// One entry per project that has stands (only the asked one when `project` is given).
    pub projects: Vec<ProjectSummary>,
}

/// The half-open interval `[from, to)` the figures cover.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub seconds: u64,
}

/// One project's figures.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ProjectSummary {
    pub project: String,
    /// Deploy runs that succeeded, finished in the window.
    pub deploys: i64,
    /// `deploys` divided by the window's length in days.
    pub deploy_frequency_per_day: f64,
    /// Deploy runs finished in the window that succeeded or failed.
    pub finished_deploys: i64,
    /// Of `finished_deploys`, the failed ones whose `verify` or `smoke` step failed: the change
    /// itself was bad, as opposed to the pipeline around it (a missing image, a cluster error).
    pub failed_changes: i64,
    /// `failed_changes / finished_deploys`; null when nothing finished.
    #[schema(required = true)]
    pub change_failure_rate: Option<f64>,
    /// Failure streaks (a failed deploy after a green one, or a stand's first deploy failing) that a
    /// succeeded deploy ended in the window.
    pub restores: i64,
    /// Mean time from the first failure of a streak to the succeeded deploy that ended it; null
    /// when `restores` is 0.
    #[schema(required = true)]
    pub mean_time_to_restore_seconds: Option<f64>,
    /// From the forge delivery that queued a succeeded deploy (a push, or a comment command) to
    /// the deploy's end; runs queued through the API or the dashboard have no delivery and are left
    /// out. Null when there are none.
    #[sqlx(json(nullable))]
    #[schema(required = true)]
    pub lead_time_seconds: Option<LeadTime>,
    /// What its stands cost in the window, and what sleeping saved; null when none was awake in
    /// it (dry-run mode records no cost).
    #[sqlx(skip)]
    #[schema(required = true)]
    pub cost: Option<WindowCost>,
}

/// A project's cost over the window, at `[cost]`'s prices: an estimate from requests, not a bill.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WindowCost {
    /// Awake hours (CPU and memory requested) and claims held, within the window.
    pub total: f64,
    /// What the pods of sleeping stands would have cost, awake at the requests they had, for the
    /// hours they slept within the window.
    pub saved_by_sleep: f64,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct LeadTime {
    pub mean: f64,
    /// Median (continuous percentile).
    pub p50: f64,
    pub p95: f64,
    pub count: i64,
}

/// The longest window asked for: the statement reads every deploy of the window, and a quarter
/// is already longer than anyone compares delivery figures over.
pub const MAX_WINDOW: Duration = Duration::from_secs(90 * 86_400);

/// The figures over `[now - window, now)` for `project`, or for every project that has stands. The
/// window is cut to between 1 s (a shorter one would divide by zero days) and [`MAX_WINDOW`]. Cost
/// is priced at `prices`.
pub async fn summary(
    pool: &PgPool,
    project: Option<&str>,
    window: Duration,
    now: DateTime<Utc>,
    prices: &crate::config::CostConfig,
) -> Result<Summary, StoreError> {
    let window = window.clamp(Duration::from_secs(1), MAX_WINDOW);
    let from = now - chrono::Duration::from_std(window).expect("90 days fit in a chrono::Duration");
    let days = window.as_secs_f64() / 86_400.0;
    let mut projects: Vec<ProjectSummary> =
        sqlx::query_as(STATEMENT).bind(project).bind(from).bind(now).bind(days).fetch_all(pool).await?;
    let rates = prices.rates();
    for usage in super::usage::in_window(pool, project, from, now).await? {
        let Some(p) = projects.iter_mut().find(|p| p.project == usage.project) else { continue };
        let awake = usage.cpu_core_hours + usage.memory_gib_hours;
        if awake == 0.0 && usage.storage_gib_hours == 0.0 && usage.slept_cpu_core_hours == 0.0 {
            continue;
        }
        let (total, saved_by_sleep) = usage.priced(&rates);
        p.cost = Some(WindowCost { total, saved_by_sleep, currency: prices.currency.clone() });
    }
    Ok(Summary { window: Window { from, to: now, seconds: window.as_secs() }, projects })
}

// $1 project filter (null: all), $2 window start (inclusive), $3 window end (exclusive), $4 days.
//
// Time to restore: within one stand's finished deploys ordered by finish, `streak` counts the
// succeeded runs before the run. The failed runs after the k-th green and the (k+1)-th green that
// ends them share `streak = k`, so the first failure of a streak is a window minimum over it, with
// no self-join. The history reaches back before the window, since a streak may begin before it;
// only stands with a green in the window are read.
const STATEMENT: &str = "
with scope as (
    select stand_id, project from stands where ($1::text is null or project = $1)
),
finished as (
    select sc.project, r.run_id, r.stand_id, r.state, r.finished_at
    from runs r join scope sc on sc.stand_id = r.stand_id
    where r.kind = 'deploy' and r.state in ('succeeded', 'failed')
      and r.finished_at >= $2 and r.finished_at < $3
),
changes as (
    select project,
           count(*) filter (where state = 'succeeded') as deploys,
           count(*) as finished_deploys,
           count(*) filter (where state = 'failed' and exists (
               select 1 from steps st
               where st.run_id = finished.run_id and st.name in ('verify', 'smoke') and st.state = 'failed'
           )) as failed_changes
    from finished group by project
),
history as (
    select g.project, r.stand_id, r.state, r.finished_at,
           count(*) filter (where r.state = 'succeeded')
               over (partition by r.stand_id order by r.finished_at, r.run_id)
           - (r.state = 'succeeded')::int as streak
    from (select distinct project, stand_id from finished where state = 'succeeded') g
    join runs r on r.stand_id = g.stand_id
    where r.kind = 'deploy' and r.state in ('succeeded', 'failed') and r.finished_at < $3
),
streaks as (
    select project, state, finished_at,
           min(finished_at) filter (where state = 'failed') over (partition by stand_id, streak) as began_at
    from history
),
restores as (
    select project, count(*) as restores,
           avg(extract(epoch from finished_at - began_at))::float8 as mean_seconds
    from streaks
    where state = 'succeeded' and began_at is not null and finished_at >= $2
    group by project
),
leads as (
    select f.project, extract(epoch from f.finished_at - d.received_at)::float8 as seconds
    from finished f
    join lateral (select min(received_at) as received_at from deliveries d where d.run_id = f.run_id) d
      on d.received_at is not null
    where f.state = 'succeeded'
),
lead_times as (
    select project, jsonb_build_object(
               'mean', avg(seconds),
               'p50', percentile_cont(0.5) within group (order by seconds),
               'p95', percentile_cont(0.95) within group (order by seconds),
               'count', count(*)) as lead_time_seconds
    from leads group by project
)
select p.project,
       coalesce(c.deploys, 0) as deploys,
       coalesce(c.deploys, 0) / $4::float8 as deploy_frequency_per_day,
       coalesce(c.finished_deploys, 0) as finished_deploys,
       coalesce(c.failed_changes, 0) as failed_changes,
       c.failed_changes::float8 / nullif(c.finished_deploys, 0) as change_failure_rate,
       coalesce(r.restores, 0) as restores,
       r.mean_seconds as mean_time_to_restore_seconds,
       l.lead_time_seconds
from (select distinct project from scope) p
left join changes c on c.project = p.project
left join restores r on r.project = p.project
left join lead_times l on l.project = p.project
order by p.project";
