-- eventflow's operations additions, as in sql/postgres/inbox/0003_operations.sql.
ALTER TABLE event_inbox ADD COLUMN replay_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE event_inbox ADD COLUMN last_replayed_at TEXT;

CREATE INDEX IF NOT EXISTS ix_event_inbox_processed
    ON event_inbox(processed_at) WHERE status = 'processed';
