drop table instance;
drop table orphans;
drop table sweeps;
drop index stands_live_by_expiry;
alter table stands drop column expiry_warned_for;
delete from steps where name in ('cancel', 'deactivate', 'revoke', 'uninstall', 'drop', 'extend');
alter table steps drop constraint steps_name_check;
alter table steps add constraint steps_name_check check (name in (
    'namespace', 'database', 'secrets', 'image', 'deploy', 'migrate', 'verify', 'smoke', 'report', 'rollback',
    'teardown'));
