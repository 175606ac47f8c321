drop index stands_active_by_activity;
drop index stands_live_by_expiry;
create index stands_live_by_expiry on stands (state, expires_at) where state in ('active', 'closing');

delete from steps where name in ('sleep', 'wake');
alter table steps drop constraint steps_name_check;
alter table steps add constraint steps_name_check check (name in (
    'namespace', 'database', 'secrets', 'image', 'deploy', 'migrate', 'verify', 'smoke', 'report', 'rollback',
    'teardown', 'cancel', 'deactivate', 'revoke', 'uninstall', 'drop', 'extend'));

delete from runs where kind in ('sleep', 'wake');
alter table runs drop constraint runs_kind_check;
alter table runs add constraint runs_kind_check check (kind in ('deploy', 'teardown', 'extend'));

alter table stands drop column sleep_record;
alter table stands drop column last_activity_at;
update stands set state = 'active' where state = 'sleeping';
alter table stands drop constraint stands_state_check;
alter table stands add constraint stands_state_check check (state in ('active', 'closing', 'removed'));
