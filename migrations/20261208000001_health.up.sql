-- Health watch (issue 24): every `[watch] interval` each awake stand is probed once; one that stops
-- answering, or answers 5xx, is `degraded` until it answers again. Health is not a lifecycle state:
-- a degraded stand still takes deploys, commands, sleeps and its expiry like any active one.

alter table stands add column health text not null default 'healthy' check (health in ('healthy', 'degraded'));
-- Since when it has the health it has (set on each change), why it is degraded (the probe's
-- outcome, one line) and what the cluster said of its pods then (verify's diagnostics).
alter table stands add column health_since timestamptz;
alter table stands add column health_reason text;
alter table stands add column health_diagnostics text;

-- When the stand is probed next. Null until a deploy or wake of the stand passed verify: a stand
-- never seen answering has no health to watch. Each probe moves it one interval on, to the stand's
-- own slot in the interval (store/health.rs), so probes are spread and claimed without a burst.
alter table stands add column next_probe_at timestamptz;

-- The watch's one statement per tick finds the due awake stands by this, however many sleep or
-- are gone.
create index stands_probe_due on stands (next_probe_at) where state = 'active' and next_probe_at is not null;

-- Stands awake now whose deploy or wake passed verify are watched from their first slot on, as
-- if verify had just passed (the same spreading as store/health.rs, over the default five minutes).
update stands s set next_probe_at = now() + interval '300 seconds' * mod(s.stand_id::numeric * 0.6180339887498949, 1)::float8
where s.state = 'active' and exists (
    select 1 from runs r join steps st on st.run_id = r.run_id
    where r.stand_id = s.stand_id and r.kind in ('deploy', 'wake') and st.name = 'verify' and st.state = 'succeeded');
