drop table access_flows;
alter table stands drop column access_run_id;
