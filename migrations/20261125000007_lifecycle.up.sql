-- Lifecycle (issue 8): teardown as a run of its own steps, expiry warnings, the reaper's sweeps and
-- the orphans it has seen, and this installation's identity.

-- Teardown is recorded step by step (cancel, deactivate, revoke, uninstall, drop) like a deploy, and
-- an extend run has a step of its own. `teardown` stays for runs recorded before.
alter table steps drop constraint steps_name_check;
alter table steps add constraint steps_name_check check (name in (
    'namespace', 'database', 'secrets', 'image', 'deploy', 'migrate', 'verify', 'smoke', 'report', 'rollback',
    'teardown', 'cancel', 'deactivate', 'revoke', 'uninstall', 'drop', 'extend'));

-- The expiry the sticky comment last warned about; an extend or a deploy moves expires_at past it,
-- so the next approach warns again.
alter table stands add column expiry_warned_for timestamptz;

-- The reaper's look-ups: active stands by expiry (expired, or about to be and not yet warned), and
-- closing ones (a teardown that failed). Removed stands, the bulk over time, are not in it.
create index stands_live_by_expiry on stands (state, expires_at) where state in ('active', 'closing');

-- One row per sweep that ran (a replica that found another sweeping records nothing): when, by
-- whom, and what it queued and removed.
create table sweeps (
    sweep_id    bigint generated always as identity primary key,
    holder      text not null,
    started_at  timestamptz not null default now(),
    finished_at timestamptz,
    summary     jsonb not null default '{}'
);

-- Things draftd manages that no live stand accounts for, per kind (namespace, folder, database,
-- login, vault_role). A thing is removed only when two consecutive successful scans of its kind
-- found it: every scan deletes the rows of what it no longer finds, so a row that survives was
-- seen by the scan before.
create table orphans (
    kind          text not null,
    name          text not null,
    sightings     integer not null default 1,
    first_seen_at timestamptz not null default now(),
    last_seen_at  timestamptz not null default now(),
    detail        jsonb not null default '{}',
    primary key (kind, name)
);

-- This installation's identity. draftd marks the stand databases and roles it creates with it, so
-- an orphan scan on a server that several installations (or test runs) share only ever considers
-- its own.
create table instance (
    instance_id uuid primary key default gen_random_uuid(),
    created_at  timestamptz not null default now(),
    singleton   boolean not null default true unique check (singleton)
);
insert into instance default values;
