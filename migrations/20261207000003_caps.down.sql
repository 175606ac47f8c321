drop index stands_live_by_expiry;
create index stands_live_by_expiry on stands (state, expires_at) where state in ('active', 'closing', 'sleeping');
alter table stands drop column waiting_reason;
drop index stands_placed;
alter table stands drop column placed_at;
update stands set state = 'active' where state = 'waiting';
alter table stands drop constraint stands_state_check;
alter table stands add constraint stands_state_check check (state in ('active', 'closing', 'removed', 'sleeping'));
