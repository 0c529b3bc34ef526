-- Event headers (trace context and other metadata carried beside the payload), as a JSON object
-- of strings. Nullable with no default, so adding it does not rewrite the table and rows written
-- by the reference toolkit, which knows nothing of headers, keep working: null means none.
ALTER TABLE event_inbox ADD COLUMN IF NOT EXISTS headers JSONB;
