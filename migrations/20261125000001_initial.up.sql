-- draftd's own state. Everything the pipeline acts on is a row here first (DESIGN.md: "nothing is lost").
-- Conventions: <table>_id keys, created_at/updated_at, text + check constraints rather than enums so
-- later issues can add states with a plain constraint swap.

create table stands (
    stand_id      bigint generated always as identity primary key,
    project       text not null,
    branch        text not null,
    -- Unique across projects: it is the Kubernetes namespace.
    namespace     text not null unique,
    -- Latest PR (GitHub number) or MR (GitLab iid) seen for the branch; commands find stands by it.
    pr_number     bigint,
    state         text not null default 'active' check (state in ('active', 'closing', 'removed')),
    state_reason  text,
    -- Bumped each time a closing/removed stand is revived by a reopen, so "one automatic deploy per
    -- commit" holds per life of the stand and a reopened PR at the same commit deploys again.
    epoch         integer not null default 0,
    head_sha      text,
    -- Newest payload update time seen; older deploy events are recorded but never queue.
    last_event_at timestamptz,
    -- Runs are numbered per stand; this is the last number handed out.
    runs_count    integer not null default 0,
    expires_at    timestamptz,
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now(),
    unique (project, branch)
);
create index stands_by_pr on stands (project, pr_number);

create table runs (
    run_id           bigint generated always as identity primary key,
    stand_id         bigint not null references stands (stand_id) on delete cascade,
    number           integer not null,
    kind             text not null check (kind in ('deploy', 'teardown', 'extend')),
    trigger          text not null,
    -- Queued by a forge event rather than a person; at most one automatic deploy per (stand, epoch, sha).
    automatic        boolean not null,
    epoch            integer not null,
    sha              text,
    -- The forge user who asked, for manual triggers; authorised before the run acts.
    requested_by     text,
    params           jsonb not null default '{}',
    state            text not null default 'queued'
                     check (state in ('queued', 'running', 'succeeded', 'failed', 'superseded', 'cancelled', 'rejected')),
    attempt          integer not null default 0,
    -- Lease of the worker running it; an expired lease lets another worker resume the run.
    lease_owner      text,
    lease_expires_at timestamptz,
    heartbeat_at     timestamptz,
    -- Earliest time a worker may pick it up again (retry backoff).
    not_before       timestamptz,
    error            jsonb,
    queued_at        timestamptz not null default now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    unique (stand_id, number)
);
create unique index runs_one_automatic_deploy_per_commit
    on runs (stand_id, epoch, sha) where kind = 'deploy' and automatic;

create table steps (
    step_id     bigint generated always as identity primary key,
    run_id      bigint not null references runs (run_id) on delete cascade,
    name        text not null check (name in ('namespace', 'database', 'secrets', 'image', 'deploy', 'migrate',
                                              'verify', 'smoke', 'report', 'rollback', 'teardown')),
    state       text not null default 'pending'
                check (state in ('pending', 'running', 'succeeded', 'failed', 'skipped', 'cancelled')),
    attempt     integer not null default 0,
    detail      jsonb not null default '{}',
    error       jsonb,
    started_at  timestamptz,
    finished_at timestamptz,
    unique (run_id, name)
);

create table deliveries (
    forge        text not null check (forge in ('github', 'gitlab')),
    -- X-GitHub-Delivery; GitLab Idempotency-Key, else X-Gitlab-Event-UUID, else the body's hash.
    delivery_id  text not null,
    project      text not null,
    event        text not null,
    body_sha256  text not null,
    -- The normalised event: what draftd understood the delivery to ask.
    normalized   jsonb not null,
    outcome      text not null check (outcome in ('queued', 'ignored')),
    reason       text,
    -- This foreign key is load-bearing: intake's one-statement path relies on it to fail whole when
    -- the stand it meant to create was not created (store/intake.rs, open_new_stand).
    stand_id     bigint references stands (stand_id) on delete set null,
    -- No foreign key: runs are only inserted together with their delivery, and checking costs intake.
    run_id       bigint,
    received_at  timestamptz not null default now(),
    primary key (forge, delivery_id)
);

create table outbox (
    outbox_id       bigint generated always as identity primary key,
    stand_id        bigint not null references stands (stand_id) on delete cascade,
    run_id          bigint references runs (run_id) on delete set null,
    -- What is reported (comment, check, status, deployment, label) and where; rows with the same key
    -- coalesce so only the newest state is sent.
    kind            text not null,
    coalesce_key    text not null,
    payload         jsonb not null,
    state           text not null default 'pending' check (state in ('pending', 'delivered', 'superseded', 'failed')),
    attempts        integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    last_error      text,
    created_at      timestamptz not null default now(),
    delivered_at    timestamptz
);
create index outbox_pending on outbox (next_attempt_at) where state = 'pending';

create table audit (
    audit_id bigint generated always as identity primary key,
    at       timestamptz not null default now(),
    actor    text not null,
    action   text not null,
    stand_id bigint references stands (stand_id) on delete set null,
    run_id   bigint references runs (run_id) on delete set null,
    detail   jsonb not null default '{}'
);
