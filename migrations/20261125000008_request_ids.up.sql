-- Log correlation: a run's log lines carry the id of the HTTP request (and the delivery) that asked
-- for it. Deliveries keep their request's id; runs queued by the API or the dashboard keep theirs.
alter table deliveries add column request_id text;
alter table runs add column request_id text;
-- A worker finds the delivery that queued a run when it claims it.
create index deliveries_by_run on deliveries (run_id) where run_id is not null;
