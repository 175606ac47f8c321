drop index deliveries_by_run;
alter table runs drop column request_id;
alter table deliveries drop column request_id;
