-- Cost (issue 23): each stretch a stand was awake, with what its pods requested, recorded as it
-- happens (not recomputed from metrics later); and what its volume claims request.
create table stand_usage (
    usage_id     bigint generated always as identity primary key,
    stand_id     bigint not null references stands (stand_id) on delete cascade,
    started_at   timestamptz not null default now(),
    ended_at     timestamptz,
    cpu_millis   bigint not null,
    memory_bytes bigint not null,
    check (ended_at is null or ended_at >= started_at)
);

-- At most one open stretch per stand: the one now being paid for.
create unique index stand_usage_open on stand_usage (stand_id) where ended_at is null;
create index stand_usage_by_stand on stand_usage (stand_id, started_at);

alter table stands add column storage_bytes bigint not null default 0;
