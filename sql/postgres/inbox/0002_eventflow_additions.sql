-- eventflow: no-transaction
-- Runs outside a transaction, one statement at a time (each safe to run again), so its indexes
-- build concurrently without blocking writers on a large live table; recorded once all ran.
-- eventflow's additions; a database created from the reference schema keeps working after them.

-- The contract's optional causation_id attribute had no column in the reference table.
ALTER TABLE event_inbox ADD COLUMN IF NOT EXISTS causation_id VARCHAR(255);

-- Workers claim due rows oldest first; this partial index keeps that claim cheap however many
-- processed rows the table holds.
CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_event_inbox_due
    ON event_inbox(received_at, id) WHERE status IN ('pending', 'failed');

-- Stream entries that could not be parsed into an event, kept with their raw fields so an
-- operator can inspect, fix and replay them. One row per stream entry, so a redelivered entry is
-- kept once.
CREATE TABLE IF NOT EXISTS event_inbox_quarantine (
    id              UUID PRIMARY KEY,
    stream          VARCHAR(255) NOT NULL,
    stream_id       VARCHAR(255) NOT NULL,
    raw_fields      JSONB NOT NULL,
    reason          TEXT NOT NULL,
    received_at     TIMESTAMP WITH TIME ZONE NOT NULL,
    replayed_at     TIMESTAMP WITH TIME ZONE,
    replayed_event_id VARCHAR(255),
    CONSTRAINT uq_event_inbox_quarantine_entry UNIQUE (stream, stream_id)
);
CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_event_inbox_quarantine_received
    ON event_inbox_quarantine(received_at);
