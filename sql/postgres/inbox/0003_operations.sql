-- eventflow: no-transaction
-- Runs outside a transaction, one statement at a time (each safe to run again), so its indexes
-- build concurrently without blocking writers on a large live table; recorded once all ran.
-- What operating the inbox needs; a database created from the reference schema keeps working
-- after it (new columns have defaults, nothing existing changes).

-- A dead letter an operator requeued is recorded on its row: how often, and when last.
ALTER TABLE event_inbox ADD COLUMN IF NOT EXISTS replay_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE event_inbox ADD COLUMN IF NOT EXISTS last_replayed_at TIMESTAMP WITH TIME ZONE;

-- Retention deletes processed rows oldest first, a batch at a time; this partial index finds
-- them without reading the rest of the table.
CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_event_inbox_processed
    ON event_inbox(processed_at) WHERE status = 'processed';
