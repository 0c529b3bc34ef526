//! The PostgreSQL store's statements, with the table names filled in once.

use super::{COLUMNS, QUARANTINE_COLUMNS};
use crate::store::qualified;
use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

/// Every statement, with the table names filled in once.
pub(super) struct Queries {
    pub insert_events: String,
    pub insert_one: String,
    pub insert_quarantine: String,
    pub claim_rows: String,
    pub claim_fresh: String,
    pub claim_due: String,
    pub claim_counted: String,
    pub claim_unfinished_heads: String,
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
    pub delete_quarantined: String,
    pub newest_stream_id: String,
    pub lock_aggregates: String,
    pub claim_heads: String,
    pub claim_heads_among: String,
    pub adopt_owner: String,
    pub find_owner: String,
    pub count_by_stream: String,
    pub list_parked: String,
    pub parked_summary: String,
    pub quarantine_summary: String,
    pub skip_dead_letter: String,
}

/// Sets `synchronous_commit` for the storing transaction only (`set_config(.., true)` is `SET
/// LOCAL`), inside the insert itself, so it costs no round trip. The reader acknowledges entries
/// once this transaction commits; with `off` (a server, database or role default, or a session's
/// `options`) a commit can be lost in a crash after the acknowledgement, and the event with it.
/// `on` waits for the local WAL flush and for the synchronous standbys, if any are configured
/// (`synchronous_standby_names`), to flush too, so a promoted synchronous standby has the rows.
/// A stronger `remote_apply` already in force is kept; `off`, `local` and `remote_write` are
/// raised to `on`. (An asynchronous replica promoted after a failover can still lack the last
/// commits whatever this says; only synchronous standbys can promise them.)
const DURABLE: &str = "set_config('synchronous_commit', \
     CASE current_setting('synchronous_commit') WHEN 'remote_apply' THEN 'remote_apply' \
     ELSE 'on' END, true)";

/// A stream id's two numbers, `<ms>-<seq>`, compared as numbers (as text `9` sorts after
/// `10`); `numeric`, as each may be up to 2^64 - 1.
const STREAM_ID_MS: &str = "split_part(stream_id, '-', 1)::numeric";
const STREAM_ID_SEQ: &str = "split_part(stream_id, '-', 2)::numeric";
/// Only ids of that form: rows written by other tools may hold anything.
const STREAM_ID_VALID: &str = "stream_id ~ '^[0-9]{1,20}-[0-9]{1,20}$'";

/// A row's place in its aggregate's order: storing order (`seq`), with rows stored before
/// eventflow numbered them (null `seq`) first, in the order they were received.
fn order_key(alias: &str) -> String {
    format!("({})", order_columns(alias))
}

/// The order key as a column list, for `ORDER BY`: written as the open-rows index's columns
/// (not as one row value), so the index gives the order without a sort.
fn order_columns(alias: &str) -> String {
    format!("coalesce({alias}.seq, 0), {alias}.received_at, {alias}.id")
}

/// `condition`, written so that the planner cannot match it to a partial index's predicate.
/// For statements that find rows by id: a status test such as `status = 'pending'` proves the
/// open-rows index's predicate, and on a table not yet analyzed (a new table, a flood between
/// two runs of autovacuum, a server with autovacuum off) the planner takes that index as a few
/// rows and reads every open row for each claim: on a flood of 100,000 events, claims by id read
/// 25 buffers per row that way. Kept out of the planner's sight, the primary key is the only
/// index the statement can use.
pub(crate) fn by_id_only(condition: &str) -> String {
    format!("(CASE WHEN {condition} THEN true ELSE false END)")
}

/// Whether row `p` holds back the later rows of its aggregate: it is open, or dead-lettered
/// while `$park` says dead letters park their aggregate and nobody skipped it.
fn holds_back(p: &str, park: &str) -> String {
    format!(
        "{p}.status <> 'processed' AND NOT ({p}.status = 'dead_letter' \
         AND ({p}.skipped_at IS NOT NULL OR NOT {park}))"
    )
}

/// The row filter's conditions, on parameters `$p` to `$p + 9` (see `FilterArgs::params`):
/// status, id, event id, event type, received from, received before, error text, the cursor's
/// time and id, and the stream. An unset parameter (null) matches everything.
fn row_filter(p: usize) -> String {
    let n = |offset: usize| p + offset;
    format!(
        "(${p}::varchar IS NULL OR status = ${p}) \
         AND (${id}::uuid IS NULL OR id = ${id}) \
         AND (${event_id}::varchar IS NULL OR event_id = ${event_id}) \
         AND (${event_type}::varchar IS NULL OR event_type = ${event_type}) \
         AND (${from}::timestamptz IS NULL OR received_at >= ${from}) \
         AND (${before}::timestamptz IS NULL OR received_at < ${before}) \
         AND (${error}::text IS NULL OR strpos(lower(coalesce(error_message, '')), lower(${error})) > 0) \
         AND (${after_at}::timestamptz IS NULL OR (received_at, id) > (${after_at}, ${after_id}::uuid)) \
         AND (${stream}::varchar IS NULL OR stream = ${stream})",
        id = n(1),
        event_id = n(2),
        event_type = n(3),
        from = n(4),
        before = n(5),
        error = n(6),
        after_at = n(7),
        after_id = n(8),
        stream = n(9),
    )
}

impl Queries {
    /// The fresh claim of rows `ids` at `now`, then `then`, as one text of statements sent in
    /// one round trip: the claim and the savepoint the handlers run under would otherwise be
    /// two, on every event's way to its handler. Only values of these types are written into
    /// the text (a UUID's and a time's own formats), so nothing from outside can reach it.
    pub fn claim_fresh(&self, ids: &[Uuid], now: DateTime<Utc>, then: &str) -> String {
        let mut list = String::with_capacity(ids.len() * 37);
        let mut buffer = Uuid::encode_buffer();
        for (at, id) in ids.iter().enumerate() {
            if at > 0 {
                list.push(',');
            }
            list.push_str(id.hyphenated().encode_lower(&mut buffer));
        }
        let now = now.to_rfc3339_opts(SecondsFormat::Micros, true);
        let claim = self
            .claim_fresh
            .replacen("$now", &now, 1)
            .replacen("$ids", &list, 1);
        format!("{claim}; {then}")
    }

    pub fn new(t: &str) -> Self {
        const DUE: &str =
            "status IN ('pending', 'failed') AND (next_retry_at IS NULL OR next_retry_at <= ";
        const UNFINISHED: &str = "status IN ('pending', 'failed', 'processing') \
             AND (next_retry_at IS NULL OR next_retry_at <= ";
        Self {
            // Rows are numbered (`seq`) in the batch's stream order, then inserted sorted by
            // event_id: every reader takes the unique index's entries in one global order, so
            // two readers storing overlapping duplicates wait for each other at most once and
            // never in a circle (a deadlock, 40P01, stalls both for deadlock_timeout). The
            // aggregate locks of ordered mode are all taken before this statement, so they
            // cannot form a circle with it. `durable` makes the commit durable (see DURABLE).
            // A batch may carry one event twice (a relay that crashed after publishing sends
            // it again): ties are broken by `seq`, so the first copy in the stream is the one
            // stored and the event keeps its place in its aggregate's order.
            insert_events: format!(
                "WITH durable AS MATERIALIZED (SELECT {DURABLE} AS level), \
                 numbered AS MATERIALIZED (SELECT e.*, nextval('{t}_seq') AS seq \
                 FROM unnest($1::uuid[], $2::varchar[], $3::varchar[], $4::varchar[], $5::uuid[], \
                 $6::varchar[], $7::varchar[], $8::timestamptz[], $9::text[], $14::text[]) \
                 WITH ORDINALITY \
                 AS e(id, event_id, stream_id, event_type, aggregate_id, correlation_id, causation_id, \
                 occurred_on, payload, headers, ord) ORDER BY e.ord) \
                 INSERT INTO {t} (id, event_id, stream_id, event_type, aggregate_id, correlation_id, \
                 causation_id, occurred_on, payload, status, retry_count, max_retries, received_at, \
                 stream, seq, stored_by, headers) \
                 SELECT e.id, e.event_id, e.stream_id, e.event_type, e.aggregate_id, e.correlation_id, \
                 e.causation_id, e.occurred_on, e.payload::jsonb, 'pending', 0, $10, \
                 coalesce($11::timestamptz, now()), $12, e.seq, $13, e.headers::jsonb \
                 FROM numbered AS e CROSS JOIN durable \
                 ORDER BY e.event_id, e.seq \
                 ON CONFLICT (event_id) DO NOTHING RETURNING id"
            ),
            insert_one: format!(
                "INSERT INTO {t} (id, event_id, stream_id, event_type, aggregate_id, correlation_id, \
                 causation_id, occurred_on, payload, status, retry_count, max_retries, received_at, \
                 stream, headers) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10, $11, $12, $13) \
                 ON CONFLICT (event_id) DO NOTHING"
            ),
            // Sorted for the same reason as the events, and durable the same way.
            insert_quarantine: format!(
                "WITH durable AS MATERIALIZED (SELECT {DURABLE} AS level) \
                 INSERT INTO {t}_quarantine (id, stream, stream_id, raw_fields, reason, received_at) \
                 SELECT q.id, $1, q.stream_id, q.raw_fields::jsonb, q.reason, \
                 coalesce($6::timestamptz, now()) \
                 FROM unnest($2::uuid[], $3::varchar[], $4::text[], $5::text[]) \
                 AS q(id, stream_id, raw_fields, reason) CROSS JOIN durable \
                 ORDER BY q.stream_id \
                 ON CONFLICT (stream, stream_id) DO NOTHING"
            ),
            claim_rows: format!(
                "SELECT {COLUMNS} FROM {t} WHERE id = ANY($1) AND {} \
                 ORDER BY received_at, id FOR UPDATE SKIP LOCKED",
                by_id_only(&format!("{DUE}$2)"))
            ),
            // The claim and the move to processed in one write: a failure is recorded over it
            // in the same transaction. Only rows exactly as stored qualify, so the retry count
            // the reader handed over is the row's. Sent as text with its values written in
            // (see `claim_fresh`), hence `$now` and `$ids`.
            claim_fresh: format!(
                "UPDATE {t} SET status = 'processed', processed_at = '$now'::timestamptz \
                 WHERE id = ANY('{{$ids}}'::uuid[]) AND {} RETURNING id",
                by_id_only("status = 'pending' AND retry_count = 0 AND next_retry_at IS NULL")
            ),
            // Retries and orphans, counted before they run. `processing` is a status only the
            // reference toolkit writes, left by its process dying mid-handler: an orphan too.
            // So is a row whose storing process is known dead ($4), at any age.
            claim_due: format!(
                "SELECT {COLUMNS} FROM {t} WHERE {UNFINISHED}$1) \
                 AND (status = 'failed' OR received_at <= $3 OR stored_by = ANY($4::int4[])) \
                 ORDER BY received_at, id LIMIT $2 FOR UPDATE SKIP LOCKED"
            ),
            // Rows just counted: those still as recorded are checked by their retry count. It
            // waits rather than skips: a due claim that met a row as it was being counted may
            // hold its lock to the end of its (short) transaction though it did not take it.
            // Nobody holding one of these rows waits for another, so in id order nobody waits
            // in a circle.
            claim_counted: format!(
                "SELECT id, retry_count FROM {t} WHERE id = ANY($1) AND {} \
                 ORDER BY id FOR UPDATE",
                by_id_only("status = 'failed'")
            ),
            claim_unfinished_heads: format!(
                "SELECT {COLUMNS} FROM {t} AS o WHERE {UNFINISHED}$1) \
                 AND (status = 'failed' OR received_at <= $4) \
                 AND NOT EXISTS (SELECT 1 FROM {t} AS p WHERE p.aggregate_id = o.aggregate_id \
                 AND {} AND {} < {}) \
                 ORDER BY received_at, id LIMIT $2 FOR UPDATE SKIP LOCKED",
                holds_back("p", "$3"),
                order_key("p"),
                order_key("o")
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
                 WHERE id = $1 AND replayed_at IS NULL RETURNING stream"
            ),
            list_rows: format!(
                "SELECT {COLUMNS}, replay_count, last_replayed_at FROM {t} WHERE {} \
                 ORDER BY received_at, id LIMIT $11",
                row_filter(1)
            ),
            // Sorted, so two readers storing overlapping aggregates take the locks in one order
            // and never wait for each other in a circle. Keys are per table (the table's hash
            // in the high bits), so the outbox's and other tables' locks never collide.
            lock_aggregates: format!(
                "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT \
                 (hashtext('{t}')::int8 << 32) # (('x' || substr(md5(a::text), 1, 16))::bit(64)::int8) AS k \
                 FROM unnest($1::uuid[]) AS a ORDER BY k) AS keys"
            ),
            claim_heads: format!(
                "SELECT {COLUMNS} FROM {t} AS o WHERE {DUE}$1) \
                 AND NOT EXISTS (SELECT 1 FROM {t} AS p WHERE p.aggregate_id = o.aggregate_id \
                 AND {} AND {} < {}) \
                 ORDER BY received_at, id LIMIT $2 FOR UPDATE SKIP LOCKED",
                holds_back("p", "$3"),
                order_key("p"),
                order_key("o")
            ),
            // Driven by the aggregates: each one's earliest open row, read from the open-rows
            // index in order (one probe that stops at the first row), claimed when it is due.
            // The lock is taken outside the lookup: SKIP LOCKED inside it would pass over a
            // head another worker holds and return its successor. As for fresh rows, the claim
            // marks the rows processed in the same write (a failure is recorded over it before
            // commit), and returns them as they were. Only pending heads: a failed head is a
            // retry, counted before it runs by the claims over any aggregate.
            // Each step is fenced (MATERIALIZED, a LATERAL probe by id with OFFSET 0) so the
            // statement's one plan is always a probe per aggregate and then one per head, even
            // when the plan was made while the table was small: written as a join of the due
            // rows with the heads, a plan cached early walked every due row and ran the probes
            // again for each (on a 20,000-event flood over 1,000 aggregates, one claim read
            // 545,000 buffers in 1.6 s; 85 buffers per claimed row on average, 28 now).
            // Every head found is locked before the limit applies; callers pass at most
            // `limit` aggregates, so no head is locked and then left.
            claim_heads_among: format!(
                "WITH heads AS MATERIALIZED (SELECT h.id FROM unnest($4::uuid[]) AS a(id) \
                 CROSS JOIN LATERAL (SELECT o.id, o.status, o.next_retry_at FROM {t} AS o \
                 WHERE o.aggregate_id = a.id AND {} ORDER BY {} LIMIT 1) AS h \
                 WHERE h.status = 'pending' AND (h.next_retry_at IS NULL OR h.next_retry_at <= $1)), \
                 claimed AS MATERIALIZED (SELECT c.* FROM heads CROSS JOIN LATERAL \
                 (SELECT {COLUMNS} FROM {t} WHERE id = heads.id AND {due} \
                 OFFSET 0 FOR UPDATE SKIP LOCKED) AS c ORDER BY c.received_at, c.id LIMIT $2) \
                 UPDATE {t} AS t SET status = 'processed', processed_at = $1, retry_count = 0, \
                 next_retry_at = NULL, error_message = NULL, last_error_at = NULL \
                 FROM claimed AS c WHERE t.id = c.id RETURNING {}",
                holds_back("o", "$3"),
                order_columns("o"),
                qualified(COLUMNS, "c"),
                due = by_id_only(&format!("{DUE}$1)")),
            ),
            // DO UPDATE (to the same value), not DO NOTHING: it returns the row that won, even
            // one another adopter committed after this statement's snapshot was taken, which a
            // SELECT in the same statement cannot see.
            adopt_owner: format!(
                "INSERT INTO eventflow_inbox_owners (inbox_table, consumer_group, adopted_at) \
                 VALUES ('{t}', $1, $2) ON CONFLICT (inbox_table) \
                 DO UPDATE SET consumer_group = eventflow_inbox_owners.consumer_group \
                 RETURNING consumer_group"
            ),
            find_owner: format!(
                "SELECT consumer_group FROM eventflow_inbox_owners WHERE inbox_table = '{t}'"
            ),
            count_by_stream: format!(
                "SELECT stream, status, count(*) FROM {t} GROUP BY stream, status \
                 ORDER BY stream NULLS FIRST, status"
            ),
            list_parked: format!(
                "SELECT {COLUMNS}, l.waiting, l.oldest FROM \
                 (SELECT DISTINCT ON (aggregate_id) {COLUMNS}, seq FROM {t} AS d \
                 WHERE status = 'dead_letter' AND skipped_at IS NULL \
                 AND ($1::uuid IS NULL OR aggregate_id > $1) AND ($3::uuid IS NULL OR aggregate_id = $3) \
                 ORDER BY aggregate_id, {}) AS d \
                 CROSS JOIN LATERAL (SELECT count(*) AS waiting, min(w.received_at) AS oldest \
                 FROM {t} AS w WHERE w.aggregate_id = d.aggregate_id \
                 AND w.status IN ('pending', 'failed') AND {} > {}) AS l \
                 ORDER BY aggregate_id LIMIT $2",
                order_columns("d"),
                order_key("w"),
                order_key("d")
            ),
            parked_summary: format!(
                "SELECT (SELECT count(DISTINCT aggregate_id) FROM {t} \
                 WHERE status = 'dead_letter' AND skipped_at IS NULL), \
                 (SELECT min(w.received_at) FROM {t} AS w WHERE w.status IN ('pending', 'failed') \
                 AND EXISTS (SELECT 1 FROM {t} AS d WHERE d.aggregate_id = w.aggregate_id \
                 AND d.status = 'dead_letter' AND d.skipped_at IS NULL AND {} < {}))",
                order_key("d"),
                order_key("w")
            ),
            quarantine_summary: format!(
                "SELECT count(*) FILTER (WHERE replayed_at IS NULL), \
                 count(*) FILTER (WHERE replayed_at IS NOT NULL), \
                 min(received_at) FILTER (WHERE replayed_at IS NULL) FROM {t}_quarantine"
            ),
            skip_dead_letter: format!(
                "UPDATE {t} SET skipped_at = $2 \
                 WHERE id = $1 AND status = 'dead_letter' AND skipped_at IS NULL"
            ),
            // Each status read through its own partial index, written out (a status given as a
            // parameter proves no index's predicate, so the statement's one plan would read the
            // table); only the branch for the given status runs.
            oldest_received: format!(
                "SELECT CASE $1::varchar \
                 WHEN 'dead_letter' THEN (SELECT min(received_at) FROM {t} \
                 WHERE status = 'dead_letter') \
                 WHEN 'processed' THEN (SELECT min(received_at) FROM {t} \
                 WHERE status = 'processed') \
                 ELSE (SELECT min(received_at) FROM {t} \
                 WHERE status IN ('pending', 'failed', 'processing') AND status = $1) END"
            ),
            // FOR UPDATE re-checks a row another requeue or a worker changed meanwhile, so a
            // row is requeued once even when two operators run the same command.
            requeue_dead_letters: format!(
                "WITH picked AS (SELECT id FROM {t} WHERE status = 'dead_letter' AND {} \
                 ORDER BY received_at, id LIMIT $11 FOR UPDATE) \
                 UPDATE {t} AS t SET status = 'pending', retry_count = 0, next_retry_at = NULL, \
                 replay_count = t.replay_count + 1, last_replayed_at = $12, skipped_at = NULL \
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
            // The newest stream id among the deleted rows is kept per stream (streams in one
            // order, so two cleanups never wait for each other in a circle); returns how many
            // rows were deleted.
            delete_processed: format!(
                "WITH doomed AS (SELECT id FROM {t} \
                 WHERE status = 'processed' AND processed_at < $1 \
                 ORDER BY processed_at, id LIMIT $2 FOR UPDATE SKIP LOCKED), \
                 gone AS (DELETE FROM {t} AS t USING doomed WHERE t.id = doomed.id \
                 RETURNING t.stream, t.stream_id), \
                 kept AS (INSERT INTO eventflow_inbox_streams AS s \
                 (inbox_table, stream, newest_ms, newest_seq) \
                 SELECT DISTINCT ON (stream) '{t}', stream, {ms}, {seq} FROM gone \
                 WHERE stream IS NOT NULL AND {valid} \
                 ORDER BY stream, {ms} DESC, {seq} DESC \
                 ON CONFLICT (inbox_table, stream) DO UPDATE \
                 SET newest_ms = excluded.newest_ms, newest_seq = excluded.newest_seq \
                 WHERE (s.newest_ms, s.newest_seq) < (excluded.newest_ms, excluded.newest_seq)) \
                 SELECT count(*) FROM gone",
                ms = STREAM_ID_MS,
                seq = STREAM_ID_SEQ,
                valid = STREAM_ID_VALID,
            ),
            // As `delete_processed`, for quarantined entries by the time they were quarantined.
            delete_quarantined: format!(
                "WITH doomed AS (SELECT id FROM {t}_quarantine WHERE received_at < $1 \
                 ORDER BY received_at, id LIMIT $2 FOR UPDATE SKIP LOCKED), \
                 gone AS (DELETE FROM {t}_quarantine AS q USING doomed WHERE q.id = doomed.id \
                 RETURNING q.stream, q.stream_id), \
                 kept AS (INSERT INTO eventflow_inbox_streams AS s \
                 (inbox_table, stream, newest_ms, newest_seq) \
                 SELECT DISTINCT ON (stream) '{t}', stream, {ms}, {seq} FROM gone \
                 WHERE stream IS NOT NULL AND {valid} \
                 ORDER BY stream, {ms} DESC, {seq} DESC \
                 ON CONFLICT (inbox_table, stream) DO UPDATE \
                 SET newest_ms = excluded.newest_ms, newest_seq = excluded.newest_seq \
                 WHERE (s.newest_ms, s.newest_seq) < (excluded.newest_ms, excluded.newest_seq)) \
                 SELECT count(*) FROM gone",
                ms = STREAM_ID_MS,
                seq = STREAM_ID_SEQ,
                valid = STREAM_ID_VALID,
            ),
            newest_stream_id: format!(
                "SELECT ms::text || '-' || seq::text FROM ( \
                 SELECT newest_ms AS ms, newest_seq AS seq FROM eventflow_inbox_streams \
                 WHERE inbox_table = '{t}' AND stream = $1 \
                 UNION ALL SELECT {ms}, {seq} FROM {t} WHERE stream = $1 AND {valid} \
                 UNION ALL SELECT {ms}, {seq} FROM {t}_quarantine WHERE stream = $1 AND {valid}) \
                 AS ids ORDER BY ms DESC, seq DESC LIMIT 1",
                ms = STREAM_ID_MS,
                seq = STREAM_ID_SEQ,
                valid = STREAM_ID_VALID,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_claim_writes_its_ids_and_time_into_the_text() {
        let ids = [
            Uuid::parse_str("01a24df2-8de2-7000-b968-58c84af8cec4").unwrap(),
            Uuid::parse_str("01a24df2-8de2-7000-b968-58c925bbb284").unwrap(),
        ];
        let now = DateTime::parse_from_rfc3339("2026-12-07T01:02:03.456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let text = Queries::new("orders_inbox").claim_fresh(&ids, now, "SAVEPOINT sp");
        assert!(text.starts_with("UPDATE orders_inbox SET status = 'processed', processed_at = '2026-12-07T01:02:03.456789Z'::timestamptz"), "{text}");
        assert!(
            text.contains("id = ANY('{01a24df2-8de2-7000-b968-58c84af8cec4,01a24df2-8de2-7000-b968-58c925bbb284}'::uuid[])"),
            "{text}"
        );
        assert!(text.ends_with("RETURNING id; SAVEPOINT sp"), "{text}");
        assert!(!text.contains('$'), "no placeholder left: {text}");
    }
}
