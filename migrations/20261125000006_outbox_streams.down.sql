drop index if exists outbox_pending_by_stand;
