-- Workers claim runs and count runs in flight on every poll; only queued and running runs matter,
-- so the index holds just those and stays small however many finished runs accumulate.
create index runs_claimable on runs (queued_at, run_id) where state in ('queued', 'running');
