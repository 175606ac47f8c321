drop index if exists outbox_by_key;
