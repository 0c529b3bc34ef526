-- Event headers (trace context and other metadata carried beside the payload), as a JSON object
-- of strings, published with the event. Nullable with no default, so adding it does not rewrite
-- the table: null means none.
ALTER TABLE event_outbox ADD COLUMN IF NOT EXISTS headers JSONB;
