-- Claiming a run is serialised by an advisory lock so that max_concurrent_runs (global and per
-- project) holds across replicas: the statement that counts runs in flight must see every claim
-- committed before it, so it has to start after the lock is held. A PL/pgSQL function takes a new
-- snapshot for each statement, so lock and claim go in one call: one round trip per claim instead
-- of four (begin, lock, claim, commit). store/runs.rs `claim` is its only caller.
create function draftd_claim(owner text, lease interval, max_running bigint, project_limits jsonb)
returns table (
    run_id bigint, stand_id bigint, number integer, kind text, trigger text, sha text, epoch integer,
    requested_by text, params jsonb, attempt integer, project text, branch text, namespace text
)
language plpgsql volatile
as $$
#variable_conflict use_column
begin
    -- 'draftd' in ASCII, then 1: one key for the whole database.
    perform pg_advisory_xact_lock(28273260327363585);
    return query
    with candidate as (
        select r.run_id from runs r join stands s on s.stand_id = r.stand_id
        where ((r.state = 'queued' and coalesce(r.not_before, now()) <= now())
               or (r.state = 'running' and r.lease_expires_at < now()))
          -- Runs of one stand go one at a time and in order.
          and not exists (select 1 from runs o where o.stand_id = r.stand_id and o.number < r.number
                          and o.state in ('queued', 'running'))
          and (select count(*) from runs a where a.state = 'running' and a.lease_expires_at >= now())
              < draftd_claim.max_running
          and ((draftd_claim.project_limits ->> s.project) is null
               or (select count(*) from runs a join stands sa on sa.stand_id = a.stand_id
                   where a.state = 'running' and a.lease_expires_at >= now() and sa.project = s.project)
                  < (draftd_claim.project_limits ->> s.project)::bigint)
        order by r.queued_at, r.run_id
        limit 1
        -- Locking the stand row too keeps two workers from claiming two runs of one stand at once.
        for update of r, s skip locked
    ),
    claimed as (
        update runs set state = 'running', lease_owner = draftd_claim.owner,
                        lease_expires_at = now() + draftd_claim.lease, heartbeat_at = now(),
                        attempt = runs.attempt + 1, started_at = coalesce(runs.started_at, now())
        from candidate where runs.run_id = candidate.run_id
        returning runs.run_id, runs.stand_id, runs.number, runs.kind, runs.trigger, runs.sha, runs.epoch,
                  runs.requested_by, runs.params, runs.attempt
    )
    select c.run_id, c.stand_id, c.number, c.kind, c.trigger, c.sha, c.epoch, c.requested_by, c.params,
           c.attempt, s.project, s.branch, s.namespace
    from claimed c join stands s on s.stand_id = c.stand_id;
end
$$;
