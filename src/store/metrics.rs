//! The state figures `/metrics` reports: read from the database at scrape time, in one statement.

use std::time::Duration;

use sqlx::PgPool;

// The type lives with the metrics it feeds, so that module needs nothing from the store.
pub use crate::metrics::Snapshot;

/// `max_teardowns`: failed teardowns per life after which the reaper stops retrying a stand.
pub async fn snapshot(pool: &PgPool, max_teardowns: i64) -> Result<Snapshot, sqlx::Error> {
    let (queued, oldest_secs, stands, stuck_closing, last_sweep, health): (
        i64,
        Option<f64>,
        serde_json::Value,
        i64,
        Option<f64>,
        serde_json::Value,
    ) = sqlx::query_as(
        "select
            (select count(*) from runs where state = 'queued' and (not_before is null or not_before <= now())),
            (select extract(epoch from now() - min(queued_at))::float8 from runs
              where state = 'queued' and (not_before is null or not_before <= now())),
            (select coalesce(jsonb_object_agg(state, n), '{}') from
               (select state, count(*) as n from stands group by state) s),
            (select count(*) from stands s where s.state = 'closing'
               and not exists (select 1 from runs r where r.stand_id = s.stand_id and r.state in ('queued', 'running'))
               and (select count(*) from runs r where r.stand_id = s.stand_id and r.epoch = s.epoch
                       and r.kind = 'teardown' and r.state = 'failed') >= $1),
            (select extract(epoch from finished_at)::float8 from sweeps
              where finished_at is not null order by sweep_id desc limit 1),
            (select coalesce(jsonb_agg(jsonb_build_array(project, healthy, degraded)), '[]') from
               (select project,
                       count(*) filter (where state = 'active' and next_probe_at is not null and health = 'healthy')
                           as healthy,
                       count(*) filter (where state = 'active' and next_probe_at is not null and health = 'degraded')
                           as degraded
                from stands group by project) h)",
    )
    .bind(max_teardowns)
    .persistent(false)
    .fetch_one(pool)
    .await?;
    let stands = stands
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(0))).collect())
        .unwrap_or_default();
    Ok(Snapshot {
        queued,
        oldest_queued: oldest_secs.map(|s| Duration::from_secs_f64(s.max(0.0))),
        stands,
        stuck_closing,
        last_sweep,
        cost: Vec::new(),
        health: health
            .as_array()
            .map(|rows| {
                rows.iter().filter_map(|r| Some((r[0].as_str()?.to_owned(), r[1].as_i64()?, r[2].as_i64()?))).collect()
            })
            .unwrap_or_default(),
    })
}
