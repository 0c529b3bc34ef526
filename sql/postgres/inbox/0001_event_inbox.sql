-- The reference inbox table, unchanged, so databases created for the earlier toolkit work as-is.
-- eventflow substitutes a validated custom name for every occurrence of "event_inbox".
CREATE EXTENSION IF NOT EXISTS pgcrypto;   -- for gen_random_uuid() on PostgreSQL < 13
CREATE TABLE IF NOT EXISTS event_inbox (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    event_id        VARCHAR(255) NOT NULL UNIQUE,
    stream_id       VARCHAR(255) NOT NULL,
    event_type      VARCHAR(128) NOT NULL,
    aggregate_id    UUID NOT NULL,
    correlation_id  VARCHAR(255),
    occurred_on     TIMESTAMP WITH TIME ZONE NOT NULL,
    payload         JSONB NOT NULL,
    status          VARCHAR(50) NOT NULL DEFAULT 'pending',
    retry_count     INTEGER NOT NULL DEFAULT 0,
    max_retries     INTEGER NOT NULL DEFAULT 3,
    received_at     TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    processed_at    TIMESTAMP WITH TIME ZONE,
    next_retry_at   TIMESTAMP WITH TIME ZONE,
    error_message   TEXT,
    last_error_at   TIMESTAMP WITH TIME ZONE,
    CONSTRAINT chk_event_inbox_status CHECK (
        status IN ('pending', 'processing', 'processed', 'failed', 'dead_letter'))
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_event_inbox_event_id ON event_inbox(event_id);
CREATE INDEX IF NOT EXISTS ix_event_inbox_status_next_retry ON event_inbox(status, next_retry_at);
CREATE INDEX IF NOT EXISTS ix_event_inbox_aggregate_received ON event_inbox(aggregate_id, received_at);
