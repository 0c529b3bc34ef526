-- The newest stream entry id each inbox has stored, per stream, kept when retention deletes the
-- rows that held it. A consumer group created again after it was lost (a Redis restart without
-- persistence, an XGROUP DESTROY) starts after the newest id the inbox has stored, rows or this
-- table, instead of replaying the stream's history: entries whose rows retention deleted would
-- otherwise be handled again. Written only when processed rows are deleted, so storing batches
-- stays free of a shared hot row. Ids are kept as the two numbers Redis compares, `ms-seq`
-- (each up to 2^64 - 1). Shared by every inbox table of the database; nothing in the reference
-- table changes.
CREATE TABLE IF NOT EXISTS eventflow_inbox_streams (
    inbox_table     VARCHAR(63) NOT NULL,
    stream          VARCHAR(255) NOT NULL,
    newest_ms       NUMERIC(20, 0) NOT NULL,
    newest_seq      NUMERIC(20, 0) NOT NULL,
    PRIMARY KEY (inbox_table, stream)
);
