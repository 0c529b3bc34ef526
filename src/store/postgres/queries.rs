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
        }
    }
}
