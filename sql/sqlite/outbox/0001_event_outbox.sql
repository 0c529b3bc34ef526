-- The transactional outbox: events the application wrote in its own transactions, waiting for a
-- relay to publish them to their stream. Rows are published in `id` order per aggregate; SQLite
-- has one writer at a time, so a smaller id always committed first.
-- UUIDs are lowercase hyphenated text, timestamps UTC RFC 3339 text with microseconds.
CREATE TABLE IF NOT EXISTS event_outbox (
    -- AUTOINCREMENT: ids are never reused after retention deletes the newest rows.
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL,
    stream          TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    aggregate_id    TEXT NOT NULL,
    correlation_id  TEXT,
    causation_id    TEXT,
    occurred_on     TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    -- Null means due now.
    next_attempt_at TEXT,
    created_at      TEXT NOT NULL,
    published_at    TEXT,
    last_error      TEXT,
    last_error_at   TEXT,
    stream_entry_id TEXT,
    CONSTRAINT chk_event_outbox_status CHECK (
        status IN ('pending', 'failed', 'published', 'dead_letter'))
);

CREATE INDEX IF NOT EXISTS ix_event_outbox_due
    ON event_outbox(id) WHERE status IN ('pending', 'failed');
CREATE INDEX IF NOT EXISTS ix_event_outbox_aggregate
    ON event_outbox(aggregate_id, id) WHERE status <> 'published';
CREATE INDEX IF NOT EXISTS ix_event_outbox_waiting
    ON event_outbox(aggregate_id, id) WHERE status IN ('failed', 'dead_letter');
CREATE INDEX IF NOT EXISTS ix_event_outbox_published
    ON event_outbox(published_at) WHERE status = 'published';
CREATE INDEX IF NOT EXISTS ix_event_outbox_event_id ON event_outbox(event_id);
