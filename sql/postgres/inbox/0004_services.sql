-- eventflow: no-transaction
-- Runs outside a transaction, one statement at a time (each safe to run again), so its indexes
-- build concurrently without blocking writers on a large live table; recorded once all ran.
-- What real services need: one owner per inbox table, several streams per consumer, and
-- per-aggregate order. A database created from the reference schema keeps working after it: the
-- new columns are nullable (rows written by the reference toolkit leave them null), and nothing
-- existing changes.

-- The stream a row came from; null for rows stored before this migration or by other writers.
ALTER TABLE event_inbox ADD COLUMN IF NOT EXISTS stream VARCHAR(255);

-- The order rows were stored in, for per-aggregate order. A sequence, not a timestamp: it needs
-- no clock, and it is taken inside the storing transaction. Set as a default in a separate step,
-- so existing rows keep null (they come first) and the table is not rewritten.
CREATE SEQUENCE IF NOT EXISTS event_inbox_seq;
ALTER TABLE event_inbox ADD COLUMN IF NOT EXISTS seq BIGINT;
ALTER TABLE event_inbox ALTER COLUMN seq SET DEFAULT nextval('event_inbox_seq');
ALTER SEQUENCE event_inbox_seq OWNED BY event_inbox.seq;

-- When an operator skipped a dead letter, releasing the aggregate it parked.
ALTER TABLE event_inbox ADD COLUMN IF NOT EXISTS skipped_at TIMESTAMP WITH TIME ZONE;

-- The index an ordered claim probes is not made here any more: it costs every stored row an
-- entry, and only consumers with per-aggregate order read it. They apply
-- inbox_ordered/0001_aggregate_order_index.sql, which makes it (tables that got it here keep it).

-- Which consumer group owns each inbox table: an inbox deduplicates by event_id, so two services
-- sharing one table would each see the other's events as duplicates. One row per table, shared
-- by every inbox table of the database.
CREATE TABLE IF NOT EXISTS eventflow_inbox_owners (
    inbox_table     VARCHAR(63) PRIMARY KEY,
    consumer_group  VARCHAR(255) NOT NULL,
    adopted_at      TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
