-- eventflow's additions, as in sql/postgres/inbox/0002_eventflow_additions.sql.
ALTER TABLE event_inbox ADD COLUMN causation_id TEXT;

CREATE INDEX IF NOT EXISTS ix_event_inbox_due
    ON event_inbox(received_at, id) WHERE status IN ('pending', 'failed');

CREATE TABLE IF NOT EXISTS event_inbox_quarantine (
    id              TEXT PRIMARY KEY,
    stream          TEXT NOT NULL,
    stream_id       TEXT NOT NULL,
    raw_fields      TEXT NOT NULL,
    reason          TEXT NOT NULL,
    received_at     TEXT NOT NULL,
    replayed_at     TEXT,
    replayed_event_id TEXT,
    CONSTRAINT uq_event_inbox_quarantine_entry UNIQUE (stream, stream_id)
);
CREATE INDEX IF NOT EXISTS ix_event_inbox_quarantine_received
    ON event_inbox_quarantine(received_at);
