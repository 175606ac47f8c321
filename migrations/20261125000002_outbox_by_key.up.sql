-- The reporter finds the newest row and the last delivered payload per coalescing key.
create index outbox_by_key on outbox (coalesce_key, outbox_id desc);
