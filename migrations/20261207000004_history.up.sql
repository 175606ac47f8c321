-- The dashboard's charts (issue 23): how many stands each project had in each state, as each sweep
-- found them. A state is a moment, not an event: it cannot be read back from runs later.
create table stand_counts (
    sweep_id bigint not null references sweeps (sweep_id) on delete cascade,
    at       timestamptz not null,
    project  text not null,
    state    text not null,
    stands   integer not null,
    primary key (sweep_id, project, state)
);
create index stand_counts_by_time on stand_counts (at);
