-- Caps (issue 23): at most `max_active` stands hold a place (are awake, or being brought up);
-- past it a new stand waits, or the idlest one is put to sleep to make room.

alter table stands drop constraint stands_state_check;
alter table stands add constraint stands_state_check
    check (state in ('active', 'closing', 'removed', 'sleeping', 'waiting'));

-- Since when the stand holds a place: taken before its deploy's (or wake's) first step, under an
-- advisory lock so every replica counts the same; given back when it goes to sleep or closes. A
-- new stand holds none until then, so two new stands never count each other.
alter table stands add column placed_at timestamptz;
update stands set placed_at = last_activity_at where state = 'active';
create index stands_placed on stands (project) where placed_at is not null;

-- Why the stand's deploy or wake waits for a place, while it does: its comment says so.
alter table stands add column waiting_reason text;

drop index stands_live_by_expiry;
create index stands_live_by_expiry on stands (state, expires_at)
    where state in ('active', 'closing', 'sleeping', 'waiting');
