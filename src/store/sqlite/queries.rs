//! The SQLite store's statements, with the table names filled in once.

use super::{COLUMNS, QUARANTINE_COLUMNS};
use crate::store::qualified;

/// Every statement, with the table names filled in once.
pub(super) struct Queries {
    pub insert_event: String,
    pub insert_quarantine: String,
    pub claim_rows: String,
    pub claim_due: String,
    pub claim_counted: String,
    pub claim_unfinished_heads: String,
    pub mark_processed: String,
    pub record_failure: String,
    pub dead_letter: String,
    pub count_by_status: String,
    pub find_by_event_id: String,
    pub list_quarantined: String,
    pub find_quarantined: String,
    pub mark_replayed: String,
    pub list_rows: String,
    pub oldest_received: String,
    pub requeue_dead_letters: String,
    pub list_quarantined_matching: String,
    pub delete_processed: String,
    pub keep_newest_deleted: String,
    pub delete_quarantined: String,
    pub keep_newest_quarantined: String,
    pub newest_stream_id: String,
    pub claim_heads: String,
    pub adopt_owner: String,
    pub find_owner: String,
    pub count_by_stream: String,
    pub list_parked: String,
    pub parked_summary: String,
    pub quarantine_summary: String,
    pub skip_dead_letter: String,
}

/// A stream id's two numbers, `<ms>-<seq>`, compared as numbers (as text `9` sorts after `10`).
const STREAM_ID_MS: &str = "CAST(substr(stream_id, 1, instr(stream_id, '-') - 1) AS INTEGER)";
const STREAM_ID_SEQ: &str = "CAST(substr(stream_id, instr(stream_id, '-') + 1) AS INTEGER)";
/// Only ids of that form (digits, one hyphen, digits): rows written by other tools may hold
/// anything.
const STREAM_ID_VALID: &str = "stream_id GLOB '[0-9]*-[0-9]*' \
     AND stream_id NOT GLOB '*[^0-9-]*' AND stream_id NOT GLOB '*-*-*'";

/// The row filter's conditions on `?1` to `?10`, as `filter_args` binds them: status, id, event
/// id, event type, received from, received before, error text, the cursor's time and id, and
/// the stream. Null matches all.
const ROW_FILTER: &str = "(?1 IS NULL OR status = ?1) AND (?2 IS NULL OR id = ?2) \
     AND (?3 IS NULL OR event_id = ?3) AND (?4 IS NULL OR event_type = ?4) \
     AND (?5 IS NULL OR received_at >= ?5) AND (?6 IS NULL OR received_at < ?6) \
     AND (?7 IS NULL OR instr(lower(coalesce(error_message, '')), lower(?7)) > 0) \
     AND (?8 IS NULL OR (received_at, id) > (?8, ?9)) \
     AND (?10 IS NULL OR stream = ?10)";

impl Queries {
    pub fn new(t: &str) -> Self {
        const DUE: &str =
            "status IN ('pending', 'failed') AND (next_retry_at IS NULL OR next_retry_at <= ?1)";
        let doomed = format!(
            "SELECT id FROM {t} WHERE status = 'processed' AND processed_at < ?1 \
             ORDER BY processed_at, id LIMIT ?2"
        );
        const UNFINISHED: &str = "status IN ('pending', 'failed', 'processing') \
             AND (next_retry_at IS NULL OR next_retry_at <= ?1)";
        let doomed_quarantined = format!(
            "SELECT id FROM {t}_quarantine WHERE received_at < ?1 ORDER BY received_at, id LIMIT ?2"
        );
        Self {
            insert_event: format!(
                "INSERT INTO {t} (id, event_id, stream_id, event_type, aggregate_id, correlation_id, \
                 causation_id, occurred_on, payload, status, retry_count, max_retries, received_at, \
                 stream, headers) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending', 0, ?10, ?11, ?12, ?13) \
                 ON CONFLICT (event_id) DO NOTHING"
            ),
            insert_quarantine: format!(
                "INSERT INTO {t}_quarantine (id, stream, stream_id, raw_fields, reason, received_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (stream, stream_id) DO NOTHING"
            ),
            claim_rows: format!(
                "SELECT {COLUMNS} FROM {t} WHERE {DUE} \
                 AND id IN (SELECT value FROM json_each(?2)) ORDER BY received_at, id"
            ),
            // Retries and orphans, counted before they run. `processing` is a status only the
            // reference toolkit writes, left by its process dying mid-handler: an orphan too.
            claim_due: format!(
                "SELECT {COLUMNS} FROM {t} WHERE {UNFINISHED} \
                 AND (status = 'failed' OR received_at <= ?3) \
                 ORDER BY received_at, id LIMIT ?2"
            ),
            claim_counted: format!(
                "SELECT id, retry_count FROM {t} WHERE status = 'failed' \
                 AND id IN (SELECT value FROM json_each(?1))"
            ),
            claim_unfinished_heads: format!(
                "SELECT {COLUMNS} FROM {t} AS o WHERE {UNFINISHED} \
                 AND (status = 'failed' OR received_at <= ?4) \
                 AND NOT EXISTS (SELECT 1 FROM {t} AS p WHERE p.aggregate_id = o.aggregate_id \
                 AND {} AND p.rowid < o.rowid) \
                 ORDER BY received_at, id LIMIT ?2",
                holds_back("p", "?3")
            ),
            mark_processed: format!(
                "UPDATE {t} SET status = 'processed', processed_at = ?2, retry_count = 0, \
                 next_retry_at = NULL, error_message = NULL, last_error_at = NULL \
                 WHERE id IN (SELECT value FROM json_each(?1))"
            ),
            record_failure: format!(
                "UPDATE {t} SET status = ?2, retry_count = ?3, next_retry_at = ?4, error_message = ?5, \
                 last_error_at = ?6, processed_at = NULL WHERE id = ?1"
            ),
            dead_letter: format!(
                "UPDATE {t} SET status = 'dead_letter', next_retry_at = NULL, error_message = ?2, \
                 last_error_at = ?3 WHERE id = ?1"
            ),
            count_by_status: format!("SELECT status, count(*) FROM {t} GROUP BY status"),
            find_by_event_id: format!("SELECT {COLUMNS} FROM {t} WHERE event_id = ?1"),
            list_quarantined: format!(
                "SELECT {QUARANTINE_COLUMNS} FROM {t}_quarantine ORDER BY received_at, stream_id \
                 LIMIT ?1 OFFSET ?2"
            ),
            find_quarantined: format!("SELECT {QUARANTINE_COLUMNS} FROM {t}_quarantine WHERE id = ?1"),
            mark_replayed: format!(
                "UPDATE {t}_quarantine SET replayed_at = ?2, replayed_event_id = ?3 \
                 WHERE id = ?1 AND replayed_at IS NULL RETURNING stream"
            ),
            list_rows: format!(
                "SELECT {COLUMNS}, replay_count, last_replayed_at FROM {t} WHERE {ROW_FILTER} \
                 ORDER BY received_at, id LIMIT ?11"
            ),
            oldest_received: format!("SELECT min(received_at) FROM {t} WHERE status = ?1"),
            requeue_dead_letters: format!(
                "UPDATE {t} SET status = 'pending', retry_count = 0, next_retry_at = NULL, \
                 replay_count = replay_count + 1, last_replayed_at = ?12, skipped_at = NULL \
                 WHERE id IN (SELECT id FROM {t} WHERE status = 'dead_letter' AND {ROW_FILTER} \
                 ORDER BY received_at, id LIMIT ?11) RETURNING received_at, id"
            ),
            list_quarantined_matching: format!(
                "SELECT {QUARANTINE_COLUMNS} FROM {t}_quarantine \
                 WHERE (?1 IS NULL OR id = ?1) AND (?2 IS NULL OR stream = ?2) \
                 AND (?3 IS NULL OR received_at >= ?3) AND (?4 IS NULL OR received_at < ?4) \
                 AND (?5 IS NULL OR instr(lower(reason), lower(?5)) > 0) \
                 AND (?6 IS NULL OR (replayed_at IS NOT NULL) = ?6) \
                 AND (?7 IS NULL OR (received_at, id) > (?7, ?8)) \
                 ORDER BY received_at, id LIMIT ?9"
            ),
            delete_processed: format!(
                "DELETE FROM {t} WHERE id IN ({doomed})"
            ),
            // Run just before `delete_processed`, in its transaction: the newest stream id of
            // the rows it is about to delete, kept per stream. (`WHERE true`: SQLite's parser
            // needs it before an upsert's ON CONFLICT.)
            keep_newest_deleted: format!(
                "INSERT INTO eventflow_inbox_streams (inbox_table, stream, newest_ms, newest_seq) \
                 SELECT '{t}', stream, ms, seq FROM (SELECT stream, {ms} AS ms, {seq} AS seq, \
                 row_number() OVER (PARTITION BY stream ORDER BY {ms} DESC, {seq} DESC) AS n \
                 FROM {t} WHERE id IN ({doomed}) AND stream IS NOT NULL AND {valid}) \
                 WHERE n = 1 \
                 ON CONFLICT (inbox_table, stream) DO UPDATE \
                 SET newest_ms = excluded.newest_ms, newest_seq = excluded.newest_seq \
                 WHERE (newest_ms, newest_seq) < (excluded.newest_ms, excluded.newest_seq)",
                ms = STREAM_ID_MS,
                seq = STREAM_ID_SEQ,
                valid = STREAM_ID_VALID,
            ),
            delete_quarantined: format!(
                "DELETE FROM {t}_quarantine WHERE id IN ({doomed_quarantined})"
            ),
            // As `keep_newest_deleted`, for the quarantined entries about to be deleted.
            keep_newest_quarantined: format!(
                "INSERT INTO eventflow_inbox_streams (inbox_table, stream, newest_ms, newest_seq) \
                 SELECT '{t}', stream, ms, seq FROM (SELECT stream, {ms} AS ms, {seq} AS seq, \
                 row_number() OVER (PARTITION BY stream ORDER BY {ms} DESC, {seq} DESC) AS n \
                 FROM {t}_quarantine WHERE id IN ({doomed_quarantined}) AND stream IS NOT NULL \
                 AND {valid}) WHERE n = 1 \
                 ON CONFLICT (inbox_table, stream) DO UPDATE \
                 SET newest_ms = excluded.newest_ms, newest_seq = excluded.newest_seq \
                 WHERE (newest_ms, newest_seq) < (excluded.newest_ms, excluded.newest_seq)",
                ms = STREAM_ID_MS,
                seq = STREAM_ID_SEQ,
                valid = STREAM_ID_VALID,
            ),
            newest_stream_id: format!(
                "SELECT ms || '-' || seq FROM ( \
                 SELECT newest_ms AS ms, newest_seq AS seq FROM eventflow_inbox_streams \
                 WHERE inbox_table = '{t}' AND stream = ?1 \
                 UNION ALL SELECT {ms}, {seq} FROM {t} WHERE stream = ?1 AND {valid} \
                 UNION ALL SELECT {ms}, {seq} FROM {t}_quarantine WHERE stream = ?1 AND {valid}) \
                 ORDER BY ms DESC, seq DESC LIMIT 1",
                ms = STREAM_ID_MS,
                seq = STREAM_ID_SEQ,
                valid = STREAM_ID_VALID,
            ),
            // One connection, so nothing else holds a row: the storing order (rowid) and the
            // open rows before each candidate are all that decide. Among given aggregates only
            // pending heads: a failed head is a retry, counted before it runs by the claims
            // over any aggregate.
            claim_heads: format!(
                "SELECT {COLUMNS} FROM {t} AS o WHERE {DUE} \
                 AND (?4 IS NULL OR (o.status = 'pending' \
                 AND o.aggregate_id IN (SELECT value FROM json_each(?4)))) \
                 AND NOT EXISTS (SELECT 1 FROM {t} AS p WHERE p.aggregate_id = o.aggregate_id \
                 AND {} AND p.rowid < o.rowid) \
                 ORDER BY received_at, id LIMIT ?2",
                holds_back("p", "?3")
            ),
            adopt_owner: format!(
                "INSERT INTO eventflow_inbox_owners (inbox_table, consumer_group, adopted_at) \
                 VALUES ('{t}', ?1, ?2) ON CONFLICT (inbox_table) DO NOTHING"
            ),
            find_owner: format!(
                "SELECT consumer_group FROM eventflow_inbox_owners WHERE inbox_table = '{t}'"
            ),
            count_by_stream: format!(
                "SELECT stream, status, count(*) FROM {t} GROUP BY stream, status \
                 ORDER BY stream NULLS FIRST, status"
            ),
            list_parked: format!(
                "SELECT {}, (SELECT count(*) FROM {t} AS w WHERE w.aggregate_id = d.aggregate_id \
                 AND w.status IN ('pending', 'failed') AND w.rowid > d.rowid), \
                 (SELECT min(w.received_at) FROM {t} AS w WHERE w.aggregate_id = d.aggregate_id \
                 AND w.status IN ('pending', 'failed') AND w.rowid > d.rowid) \
                 FROM {t} AS d WHERE d.rowid IN (SELECT min(rowid) FROM {t} \
                 WHERE status = 'dead_letter' AND skipped_at IS NULL GROUP BY aggregate_id) \
                 AND (?1 IS NULL OR d.aggregate_id > ?1) AND (?3 IS NULL OR d.aggregate_id = ?3) \
                 ORDER BY d.aggregate_id LIMIT ?2",
                qualified(COLUMNS, "d")
            ),
            parked_summary: format!(
                "SELECT (SELECT count(DISTINCT aggregate_id) FROM {t} \
                 WHERE status = 'dead_letter' AND skipped_at IS NULL), \
                 (SELECT min(w.received_at) FROM {t} AS w WHERE w.status IN ('pending', 'failed') \
                 AND EXISTS (SELECT 1 FROM {t} AS d WHERE d.aggregate_id = w.aggregate_id \
                 AND d.status = 'dead_letter' AND d.skipped_at IS NULL AND d.rowid < w.rowid))"
            ),
            quarantine_summary: format!(
                "SELECT count(*) - count(replayed_at), count(replayed_at), \
                 min(CASE WHEN replayed_at IS NULL THEN received_at END) FROM {t}_quarantine"
            ),
            skip_dead_letter: format!(
                "UPDATE {t} SET skipped_at = ?2 \
                 WHERE id = ?1 AND status = 'dead_letter' AND skipped_at IS NULL"
            ),
        }
    }
}

/// Whether row `p` holds back the later rows of its aggregate: it is open, or dead-lettered
/// while `park` says dead letters park their aggregate and nobody skipped it.
fn holds_back(p: &str, park: &str) -> String {
    format!(
        "{p}.status <> 'processed' AND NOT ({p}.status = 'dead_letter' \
         AND ({p}.skipped_at IS NOT NULL OR NOT {park}))"
    )
}
