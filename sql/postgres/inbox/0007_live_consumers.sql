-- Which consumer process stored each row, and which of those processes are alive, so that the
-- rows a killed process stored but never handled are taken by the survivors at once instead of
-- after `orphan_after`: a live process's fresh rows look just like a dead one's by age alone.
--
-- A consumer process takes a number from the sequence, holds a session advisory lock on it
-- (`pg_advisory_lock(<key>, number)`) on a connection of its own for as long as it runs, and
-- records the number on every row it stores. The lock dies with the session: a survivor that can
-- take it knows the process is gone. The column is nullable and has no default, so adding it
-- does not rewrite the table; rows written by the reference toolkit leave it null and are
-- found by age as before. It has no index: the survivors look for a dead process's rows among
-- the due rows, which ix_event_inbox_due already orders.
ALTER TABLE event_inbox ADD COLUMN IF NOT EXISTS stored_by INTEGER;

-- Numbers for consumer processes, shared by every inbox table of the database.
CREATE SEQUENCE IF NOT EXISTS eventflow_consumer_process_seq AS INTEGER CYCLE;

-- The consumer processes of each inbox table that have stored rows, while they may still have
-- open ones. `died_at` is set by the first survivor that finds the process gone; the row is
-- deleted once `orphan_after` has passed since, when its rows are orphans by age anyway.
CREATE TABLE IF NOT EXISTS eventflow_consumer_processes (
    inbox_table     VARCHAR(63) NOT NULL,
    process         INTEGER NOT NULL,
    consumer        VARCHAR(255) NOT NULL,
    started_at      TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    died_at         TIMESTAMP WITH TIME ZONE,
    PRIMARY KEY (inbox_table, process)
);
