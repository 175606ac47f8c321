-- The reporter delivers per stand, in order: it finds a stand's pending rows, and a new row looks up
-- how long its stand's stream is held back.
create index outbox_pending_by_stand on outbox (stand_id, next_attempt_at) where state = 'pending';
