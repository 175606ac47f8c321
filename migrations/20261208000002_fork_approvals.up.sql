-- Fork pull requests under forks = "approve" (issue 24): a fork's commit waits until someone with
-- write access approves exactly that commit; a push makes the new head wait again.

-- The fork's head commit that waits for approval, while one does: its comment says how to approve it.
alter table stands add column awaiting_approval text;

-- Who approved which commit of which stand, and when; the approval's run deploys exactly that commit.
create table fork_approvals (
    approval_id bigint generated always as identity primary key,
    stand_id    bigint not null references stands (stand_id) on delete cascade,
    sha         text not null,
    approved_by text not null,
    approved_at timestamptz not null default now(),
    run_id      bigint references runs (run_id) on delete set null,
    unique (stand_id, sha)
);
