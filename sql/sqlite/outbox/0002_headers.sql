-- Event headers, as the JSON text of an object of strings, published with the event; null means
-- none. See sql/postgres/outbox/0002_headers.sql.
ALTER TABLE event_outbox ADD COLUMN headers TEXT;
