-- The reference inbox table in SQLite's types: UUIDs as lowercase hyphenated text, timestamps as
-- UTC RFC 3339 text with microseconds ("2025-01-01T00:00:00.000000Z", so text order is time
-- order), JSON as text. eventflow substitutes a validated custom name for "event_inbox".
CREATE TABLE IF NOT EXISTS event_inbox (
    id              TEXT PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE,
    stream_id       TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    aggregate_id    TEXT NOT NULL,
    correlation_id  TEXT,
    occurred_on     TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    retry_count     INTEGER NOT NULL DEFAULT 0,
    max_retries     INTEGER NOT NULL DEFAULT 3,
    received_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    processed_at    TEXT,
    next_retry_at   TEXT,
    error_message   TEXT,
    last_error_at   TEXT,
    CONSTRAINT chk_event_inbox_status CHECK (
        status IN ('pending', 'processing', 'processed', 'failed', 'dead_letter'))
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_event_inbox_event_id ON event_inbox(event_id);
CREATE INDEX IF NOT EXISTS ix_event_inbox_status_next_retry ON event_inbox(status, next_retry_at);
CREATE INDEX IF NOT EXISTS ix_event_inbox_aggregate_received ON event_inbox(aggregate_id, received_at);
