-- eventflow's additions for real services, as in sql/postgres/inbox/0004_services.sql. SQLite
-- keeps the storing order in the table's rowid (one writer at a time, so rowid order is commit
-- order), so it needs no sequence.
ALTER TABLE event_inbox ADD COLUMN stream TEXT;
ALTER TABLE event_inbox ADD COLUMN skipped_at TEXT;

CREATE INDEX IF NOT EXISTS ix_event_inbox_aggregate_open
    ON event_inbox(aggregate_id) WHERE status <> 'processed';

CREATE TABLE IF NOT EXISTS eventflow_inbox_owners (
    inbox_table     TEXT PRIMARY KEY,
    consumer_group  TEXT NOT NULL,
    adopted_at      TEXT NOT NULL
);
