-- Event headers (trace context and other metadata carried beside the payload), as the JSON text
-- of an object of strings; null means none, as in rows written by tools that know nothing of
-- headers. See sql/postgres/inbox/0008_headers.sql.
ALTER TABLE event_inbox ADD COLUMN headers TEXT;
