-- Private stands (issue 24): people sign in with the forge; programs carry the stand's access token.

-- The run whose access token the stand's Secret holds: only that run's token is let in, so each run
-- replaces the last one's. Set by the secrets step; nothing secret is stored (tokens are MACs).
alter table stands add column access_run_id bigint references runs (run_id) on delete set null;

-- Sign-ins under way: the state the forge echoes back, the PKCE verifier that proves the code is
-- ours, and where to send the person afterwards. Taken once; a few minutes at most.
create table access_flows (
    state      text primary key,
    stand_id   bigint not null references stands (stand_id) on delete cascade,
    verifier   text not null,
    rd         text not null,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null
);
create index access_flows_expiry on access_flows (expires_at);
