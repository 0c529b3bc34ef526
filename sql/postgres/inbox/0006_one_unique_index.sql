-- The reference schema makes event_id unique twice: the column's UNIQUE constraint and the
-- index uq_event_inbox_event_id. Every insert maintains both, and the second adds nothing: the
-- constraint alone keeps event ids unique and serves ON CONFLICT (event_id). So the index goes,
-- but only where such a constraint is there (a table made by other DDL may have only the index)
-- and the index is not the one the constraint uses. Nothing else changes; tools that read the
-- reference table see the same columns, statuses and constraint. Dropping an index is quick,
-- and waits for the table's lock as any DDL here does (see migration_lock_timeout).
DO $$
BEGIN
    IF to_regclass('uq_event_inbox_event_id') IS NOT NULL AND EXISTS (
        SELECT 1 FROM pg_constraint AS c
        WHERE c.conrelid = 'event_inbox'::regclass
          AND c.contype = 'u'
          AND c.conindid <> to_regclass('uq_event_inbox_event_id')
          AND c.conkey = ARRAY[(SELECT a.attnum FROM pg_attribute AS a
                                WHERE a.attrelid = 'event_inbox'::regclass
                                  AND a.attname = 'event_id')]
    ) THEN
        DROP INDEX uq_event_inbox_event_id;
    END IF;
END
$$;
