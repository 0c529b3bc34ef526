//! The PostgreSQL store's statements, with the table names filled in once.

use super::{COLUMNS, QUARANTINE_COLUMNS};

/// Every statement, with the table names filled in once.
pub(super) struct Queries {
    pub insert_events: String,
    pub insert_one: String,
    pub insert_quarantine: String,
    pub claim_rows: String,
    pub claim_fresh: String,
    pub claim_due: String,
    pub mark_processed: String,
    pub record_failures: String,
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
}

/// The row filter's conditions, on parameters `$p` to `$p + 8` (see `row_filter_params`):
/// status, id, event id, event type, received from, received before, error text, and the
/// cursor's time and id. An unset parameter (null) matches everything.
fn row_filter(p: usize) -> String {
    format!(
        "(${p}::varchar IS NULL OR status = ${p}) \
         AND (${}::uuid IS NULL OR id = ${}) \
         AND (${}::varchar IS NULL OR event_id = ${}) \
         AND (${}::varchar IS NULL OR event_type = ${}) \
         AND (${}::timestamptz IS NULL OR received_at >= ${}) \
         AND (${}::timestamptz IS NULL OR received_at < ${}) \
         AND (${}::text IS NULL OR strpos(lower(coalesce(error_message, '')), lower(${})) > 0) \
         AND (${}::timestamptz IS NULL OR (received_at, id) > (${}, ${}::uuid))",
        p + 1,
        p + 1,
        p + 2,
        p + 2,
        p + 3,
        p + 3,
        p + 4,
        p + 4,
        p + 5,
        p + 5,
        p + 6,
        p + 6,
        p + 7,
        p + 7,
        p + 8
    )
}

impl Queries {
    pub fn new(t: &str) -> Self {
        const DUE: &str =
            "status IN ('pending', 'failed') AND (next_retry_at IS NULL OR next_retry_at <= ";
        Self {
            insert_events: format!(
                "INSERT INTO {t} (id, event_id, stream_id, event_type, aggregate_id, correlation_id, \
                 causation_id, occurred_on, payload, status, retry_count, max_retries, received_at) \
                 SELECT e.id, e.event_id, e.stream_id, e.event_type, e.aggregate_id, e.correlation_id, \
                 e.causation_id, e.occurred_on, e.payload::jsonb, 'pending', 0, $10, $11 \
                 FROM unnest($1::uuid[], $2::varchar[], $3::varchar[], $4::varchar[], $5::uuid[], \
                 $6::varchar[], $7::varchar[], $8::timestamptz[], $9::text[]) \
                 AS e(id, event_id, stream_id, event_type, aggregate_id, correlation_id, causation_id, \
                 occurred_on, payload) \
                 ON CONFLICT (event_id) DO NOTHING RETURNING id"
            ),
            insert_one: format!(
                "INSERT INTO {t} (id, event_id, stream_id, event_type, aggregate_id, correlation_id, \
                 causation_id, occurred_on, payload, status, retry_count, max_retries, received_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10, $11) \
                 ON CONFLICT (event_id) DO NOTHING"
            ),
            insert_quarantine: format!(
                "INSERT INTO {t}_quarantine (id, stream, stream_id, raw_fields, reason, received_at) \
                 SELECT q.id, $1, q.stream_id, q.raw_fields::jsonb, q.reason, $6 \
                 FROM unnest($2::uuid[], $3::varchar[], $4::text[], $5::text[]) \
                 AS q(id, stream_id, raw_fields, reason) \
                 ON CONFLICT (stream, stream_id) DO NOTHING"
            ),
            claim_rows: format!(
                "SELECT {COLUMNS} FROM {t} WHERE id = ANY($1) AND {DUE}$2) \
                 ORDER BY received_at, id FOR UPDATE SKIP LOCKED"
            ),
            // The claim and the move to processed in one write: a failure is recorded over it
            // in the same transaction. Only rows exactly as stored qualify, so the retry count
            // the reader handed over is the row's.
            claim_fresh: format!(
                "UPDATE {t} SET status = 'processed', processed_at = $2 \
                 WHERE id = ANY($1) AND status = 'pending' AND retry_count = 0 \
                 AND next_retry_at IS NULL RETURNING id"
            ),
            claim_due: format!(
                "SELECT {COLUMNS} FROM {t} WHERE {DUE}$1) \
                 AND (status = 'failed' OR received_at <= $3) \
                 ORDER BY received_at, id LIMIT $2 FOR UPDATE SKIP LOCKED"
            ),
            mark_processed: format!(
                "UPDATE {t} SET status = 'processed', processed_at = $2, retry_count = 0, \
                 next_retry_at = NULL, error_message = NULL, last_error_at = NULL WHERE id = ANY($1)"
            ),
            record_failures: format!(
                "UPDATE {t} AS t SET status = f.status, retry_count = f.retry_count, \
                 next_retry_at = f.next_retry_at, error_message = f.error_message, \
                 last_error_at = f.failed_at, processed_at = NULL \
                 FROM unnest($1::uuid[], $2::varchar[], $3::int4[], $4::timestamptz[], $5::text[], \
                 $6::timestamptz[]) AS f(id, status, retry_count, next_retry_at, error_message, failed_at) \
                 WHERE t.id = f.id"
            ),
            dead_letter: format!(
                "UPDATE {t} SET status = 'dead_letter', next_retry_at = NULL, error_message = $2, \
                 last_error_at = $3 WHERE id = $1"
            ),
            count_by_status: format!("SELECT status, count(*) FROM {t} GROUP BY status"),
            find_by_event_id: format!("SELECT {COLUMNS} FROM {t} WHERE event_id = $1"),
            list_quarantined: format!(
                "SELECT {QUARANTINE_COLUMNS} FROM {t}_quarantine ORDER BY received_at, stream_id \
                 LIMIT $1 OFFSET $2"
            ),
            find_quarantined: format!("SELECT {QUARANTINE_COLUMNS} FROM {t}_quarantine WHERE id = $1"),
            mark_replayed: format!(
                "UPDATE {t}_quarantine SET replayed_at = $2, replayed_event_id = $3 \
                 WHERE id = $1 AND replayed_at IS NULL"
            ),
            list_rows: format!(
                "SELECT {COLUMNS}, replay_count, last_replayed_at FROM {t} WHERE {} \
                 ORDER BY received_at, id LIMIT $10",
                row_filter(1)
            ),
            oldest_received: format!("SELECT min(received_at) FROM {t} WHERE status = $1"),
            // FOR UPDATE re-checks a row another requeue or a worker changed meanwhile, so a
            // row is requeued once even when two operators run the same command.
            requeue_dead_letters: format!(
                "WITH picked AS (SELECT id FROM {t} WHERE status = 'dead_letter' AND {} \
                 ORDER BY received_at, id LIMIT $10 FOR UPDATE) \
                 UPDATE {t} AS t SET status = 'pending', retry_count = 0, next_retry_at = NULL, \
                 replay_count = t.replay_count + 1, last_replayed_at = $11 \
                 FROM picked WHERE t.id = picked.id RETURNING t.received_at, t.id",
                row_filter(1)
            ),
            list_quarantined_matching: format!(
                "SELECT {QUARANTINE_COLUMNS} FROM {t}_quarantine \
                 WHERE ($1::uuid IS NULL OR id = $1) \
                 AND ($2::varchar IS NULL OR stream = $2) \
                 AND ($3::timestamptz IS NULL OR received_at >= $3) \
                 AND ($4::timestamptz IS NULL OR received_at < $4) \
                 AND ($5::text IS NULL OR strpos(lower(reason), lower($5)) > 0) \
                 AND ($6::bool IS NULL OR (replayed_at IS NOT NULL) = $6) \
                 AND ($7::timestamptz IS NULL OR (received_at, id) > ($7, $8::uuid)) \
                 ORDER BY received_at, id LIMIT $9"
            ),
            // SKIP LOCKED: a row a worker holds is not waited for; it is young anyway. A CTE,
            // run once: as `id IN (subquery)` the planner may rescan the subquery per row,
            // and each rescan can pick other rows, deleting more than the limit.
            delete_processed: format!(
                "WITH doomed AS (SELECT id FROM {t} \
                 WHERE status = 'processed' AND processed_at < $1 \
                 ORDER BY processed_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 DELETE FROM {t} AS t USING doomed WHERE t.id = doomed.id"
            ),
        }
    }
}
