-- Every credential draftd hands a stand or one of its jobs, by reference only: Vault's lease id or the
-- Postgres login's name, never the password. What the keeper renews or replaces, and what teardown
-- revokes before the database is dropped.
create table credentials (
    credential_id bigint generated always as identity primary key,
    stand_id      bigint not null references stands (stand_id) on delete cascade,
    run_id        bigint references runs (run_id) on delete set null,
    -- 'app': the stand's Secret app-database; 'migrate': one migrate Job's own login.
    purpose       text not null check (purpose in ('app', 'migrate')),
    source        text not null check (source in ('vault', 'postgres')),
    username      text not null,
    lease_id      text,
    issued_at     timestamptz not null default now(),
    -- When the credential stops working unless renewed (lease TTL or VALID UNTIL).
    expires_at    timestamptz not null,
    -- Vault's cap on renewals (the role's max TTL); the keeper replaces the credential before it.
    max_expires_at timestamptz not null,
    -- Set when a newer credential took its place; revoked after a grace period for pods still rolling.
    superseded_at timestamptz,
    revoked_at    timestamptz,
    check ((source = 'vault') = (lease_id is not null))
);
-- The keeper's and teardown's look-ups: live credentials by stand and by expiry.
create index credentials_live_by_stand on credentials (stand_id) where revoked_at is null;
create index credentials_live_by_expiry on credentials (expires_at) where revoked_at is null;
