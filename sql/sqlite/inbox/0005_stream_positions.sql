-- The newest stream entry id each inbox has stored, per stream, kept when retention deletes the
-- rows that held it; see sql/postgres/inbox/0005_stream_positions.sql. SQLite integers are
-- signed 64-bit, enough for any real `ms-seq` id.
CREATE TABLE IF NOT EXISTS eventflow_inbox_streams (
    inbox_table     TEXT NOT NULL,
    stream          TEXT NOT NULL,
    newest_ms       INTEGER NOT NULL,
    newest_seq      INTEGER NOT NULL,
    PRIMARY KEY (inbox_table, stream)
);
