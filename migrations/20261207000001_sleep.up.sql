-- Sleep and wake (issue 23): an idle stand's workloads scaled to zero, its namespace, database and
-- data kept; a wake scales them back. Kinds and states grow by constraint swap, as the initial
-- migration planned.

alter table stands drop constraint stands_state_check;
alter table stands add constraint stands_state_check check (state in ('active', 'closing', 'removed', 'sleeping'));

-- The last thing that showed someone uses the stand: a deploy, a command, an API or dashboard
-- action, a wake. What the sweep compares with `[sleep] idle_after`.
alter table stands add column last_activity_at timestamptz not null default now();

-- While asleep: each workload scaled to zero and the replicas it had, `[{kind, name, replicas}]`,
-- written before the first is scaled, so a sleep resumed after a crash never records a zero.
alter table stands add column sleep_record jsonb;

alter table runs drop constraint runs_kind_check;
alter table runs add constraint runs_kind_check check (kind in ('deploy', 'teardown', 'extend', 'sleep', 'wake'));

alter table steps drop constraint steps_name_check;
alter table steps add constraint steps_name_check check (name in (
    'namespace', 'database', 'secrets', 'image', 'deploy', 'migrate', 'verify', 'smoke', 'report', 'rollback',
    'teardown', 'cancel', 'deactivate', 'revoke', 'uninstall', 'drop', 'extend', 'sleep', 'wake'));

-- The reaper's look-ups now include sleeping stands (they expire too), and the idle sweep finds
-- active stands by their last activity.
drop index stands_live_by_expiry;
create index stands_live_by_expiry on stands (state, expires_at) where state in ('active', 'closing', 'sleeping');
create index stands_active_by_activity on stands (last_activity_at) where state = 'active';
