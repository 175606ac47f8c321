drop index if exists runs_claimable;
