//! The outbox store conformance suite: what every [`OutboxStore`] must do, written once.
//!
//! Each check is generic over a [`Backend`]: an outbox store plus a way for "the application"
//! to enqueue in its own transaction, committed or rolled back. The `conformance!` list runs
//! every check on SQLite (a file per test, so the application's connection and the store's are
//! separate, as in production) and on PostgreSQL when it answers
//! (`EVENTFLOW_TEST_DATABASE_URL`; skipped with a message otherwise, failing under
//! `EVENTFLOW_REQUIRE_SERVICES=1`). Every test uses its own table.

mod support;

use chrono::{DateTime, Duration as Span, Utc};
use eventflow::outbox::{EnqueueError, OutboxTable};
use eventflow::store::outbox::{
    ClaimDue, Delivery, OutboxPage, OutboxRow, OutboxStatus, OutboxStore, PostgresOutbox,
    PublishRound, Requeue, RowOutcome, SqliteOutbox,
};
use eventflow::Event;
use parking_lot::Mutex;
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// An outbox store under test and the application side of it.
trait Backend: std::ops::Deref<Target = dyn OutboxStore> + Sized {
    fn available(test: &str) -> bool;
    /// A migrated store on a fresh table.
    fn fresh() -> Self;
    /// Enqueues `events` for `stream` in one application transaction, committed or not.
    fn enqueue(&self, stream: &str, events: &[Event], commit: bool) -> Result<(), EnqueueError>;
    /// Removes what the test created; best effort.
    fn cleanup(&self);
}

struct Sqlite {
    store: SqliteOutbox,
    path: PathBuf,
}

struct Postgres {
    store: PostgresOutbox,
}

impl Backend for Sqlite {
    fn available(_test: &str) -> bool {
        true
    }

    fn fresh() -> Self {
        let path = std::env::temp_dir().join(format!("{}.db", support::unique_name("ef_oc")));
        let store = SqliteOutbox::open(&path).expect("open SQLite outbox");
        store.migrate().expect("migrate");
        Self { store, path }
    }

    fn enqueue(&self, stream: &str, events: &[Event], commit: bool) -> Result<(), EnqueueError> {
        let mut conn = rusqlite::Connection::open(&self.path).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let mut tx = conn.transaction().unwrap();
        eventflow::outbox::enqueue_batch(&mut tx, stream, events)?;
        if commit {
            tx.commit().unwrap();
        }
        Ok(())
    }

    fn cleanup(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

impl Backend for Postgres {
    fn available(test: &str) -> bool {
        support::postgres_available(test)
    }

    fn fresh() -> Self {
        let store = PostgresOutbox::builder(support::postgres_url())
            .table(support::unique_name("ef_oc"))
            .build()
            .expect("PostgreSQL outbox");
        store.migrate().expect("migrate");
        Self { store }
    }

    fn enqueue(&self, stream: &str, events: &[Event], commit: bool) -> Result<(), EnqueueError> {
        let mut client = pg_client();
        let mut tx = client.transaction().unwrap();
        OutboxTable::named(self.table())
            .unwrap()
            .enqueue_batch(&mut tx, stream, events)?;
        if commit {
            tx.commit().unwrap();
        }
        Ok(())
    }

    fn cleanup(&self) {
        let _ = pg_client().batch_execute(&format!(
            "DROP TABLE IF EXISTS {t}; DELETE FROM eventflow_migrations WHERE target = 'outbox:{t}'",
            t = self.table()
        ));
    }
}

fn pg_client() -> ::postgres::Client {
    ::postgres::Client::connect(&support::postgres_url(), ::postgres::NoTls).expect("connect")
}

impl std::ops::Deref for Sqlite {
    type Target = dyn OutboxStore;
    fn deref(&self) -> &Self::Target {
        &self.store
    }
}

impl std::ops::Deref for Postgres {
    type Target = dyn OutboxStore;
    fn deref(&self) -> &Self::Target {
        &self.store
    }
}

// ---------------------------------------------------------------------------------------------

/// Event `n` of `aggregate`; the same arguments give the same event.
fn event(aggregate: Uuid, n: u32) -> Event {
    let mut event = Event::new("Numbered", aggregate, json!({ "n": n }));
    event.event_id = format!("{aggregate}-{n}");
    event.occurred_on =
        DateTime::from_timestamp(1_700_000_000 + i64::from(n), 123_456_000).unwrap();
    event
}

/// Claims one batch at `now`, publishing every row, and returns the rows.
fn publish_all<B: Backend>(b: &B, now: DateTime<Utc>, limit: usize) -> Vec<OutboxRow> {
    let mut seen = Vec::new();
    b.publish_due(&ClaimDue { limit, now }, &mut |rows| {
        seen.extend_from_slice(rows);
        Delivery::Settled(
            rows.iter()
                .map(|row| RowOutcome::Published {
                    entry_id: format!("{}-0", row.id),
                })
                .collect(),
        )
    })
    .expect("publish_due");
    seen
}

/// Claims one batch and gives every claimed row the same `outcome`.
fn settle_all<B: Backend>(b: &B, claim: ClaimDue, outcome: RowOutcome) -> PublishRound {
    b.publish_due(&claim, &mut |rows| {
        Delivery::Settled(rows.iter().map(|_| outcome.clone()).collect())
    })
    .expect("publish_due")
}

fn ids_of(rows: &[OutboxRow]) -> Vec<String> {
    rows.iter().map(|row| row.event.event_id.clone()).collect()
}

fn one<B: Backend>(b: &B, event_id: &str) -> OutboxRow {
    let mut rows = b.find_by_event_id(event_id).unwrap();
    assert_eq!(rows.len(), 1, "{event_id}");
    rows.remove(0)
}

// ---------------------------------------------------------------------------------------------

fn migrate_is_idempotent<B: Backend>(b: &B) {
    b.migrate().unwrap();
    b.migrate().unwrap();
    let counts = b.count_by_status().unwrap();
    assert_eq!(counts.backlog() + counts.published + counts.dead_letter, 0);
    b.ping().unwrap();
}

fn committed_rows_are_published_in_enqueue_order_and_rolled_back_ones_never<B: Backend>(b: &B) {
    let (a, c) = (Uuid::new_v4(), Uuid::new_v4());
    b.enqueue("orders", &[event(a, 1), event(c, 1)], true)
        .unwrap();
    b.enqueue("orders", &[event(a, 99)], false).unwrap();
    b.enqueue("orders", &[event(a, 2)], true).unwrap();
    let counts = b.count_by_status().unwrap();
    assert_eq!(counts.pending, 3);
    assert!(counts.oldest_unpublished.is_some());

    let now = Utc::now();
    let rows = publish_all(b, now, 100);
    assert_eq!(
        ids_of(&rows),
        [event(a, 1), event(c, 1), event(a, 2)].map(|e| e.event_id)
    );
    assert!(rows.windows(2).all(|pair| pair[0].id < pair[1].id));
    assert_eq!(
        rows[0].event,
        event(a, 1),
        "the event comes back as written"
    );
    assert_eq!(rows[0].stream, "orders");
    assert!(b
        .find_by_event_id(&event(a, 99).event_id)
        .unwrap()
        .is_empty());

    let published = one(b, &event(c, 1).event_id);
    assert_eq!(published.status, OutboxStatus::Published);
    assert_eq!(
        published.stream_entry_id,
        Some(format!("{}-0", published.id))
    );
    assert_eq!(published.attempts, 1);
    assert!(published.published_at.is_some());
    assert!(
        publish_all(b, now, 100).is_empty(),
        "published rows are not claimed again"
    );
    let counts = b.count_by_status().unwrap();
    assert_eq!((counts.pending, counts.published), (0, 3));
    assert_eq!(counts.oldest_unpublished, None);
}

fn invalid_events_are_refused_and_nothing_is_written<B: Backend>(b: &B) {
    let good = event(Uuid::new_v4(), 1);
    let mut bad = event(Uuid::new_v4(), 2);
    bad.payload = json!([1, 2]);
    let refused = b.enqueue("orders", &[good.clone(), bad], true);
    assert!(
        matches!(refused, Err(EnqueueError::InvalidEvent { ref event_id, .. }) if event_id.ends_with("-2")),
        "{refused:?}"
    );
    let refused = b.enqueue("", std::slice::from_ref(&good), true);
    assert!(
        matches!(refused, Err(EnqueueError::InvalidStream { .. })),
        "{refused:?}"
    );
    assert_eq!(b.count_by_status().unwrap().pending, 0);
    b.enqueue("orders", &[], true).unwrap();
    assert_eq!(b.count_by_status().unwrap().pending, 0);
}

fn an_abandoned_batch_leaves_its_rows_as_they_were<B: Backend>(b: &B) {
    let e = event(Uuid::new_v4(), 1);
    b.enqueue("orders", std::slice::from_ref(&e), true).unwrap();
    let round = b
        .publish_due(
            &ClaimDue {
                limit: 10,
                now: Utc::now(),
            },
            &mut |_| Delivery::Abandoned,
        )
        .unwrap();
    assert!(round.abandoned);
    assert_eq!(round.claimed, 1);
    let row = one(b, &e.event_id);
    assert_eq!((row.status, row.attempts), (OutboxStatus::Pending, 0));
    assert_eq!(ids_of(&publish_all(b, Utc::now(), 10)), [e.event_id]);
}

/// A row the broker told "try later" is left as it was (no attempt counted); the others of the
/// batch are recorded.
fn a_deferred_row_is_left_as_it_was_and_the_rest_recorded<B: Backend>(b: &B) {
    let (deferred, published) = (event(Uuid::new_v4(), 1), event(Uuid::new_v4(), 1));
    b.enqueue("orders", &[deferred.clone(), published.clone()], true)
        .unwrap();
    let round = b
        .publish_due(
            &ClaimDue {
                limit: 10,
                now: Utc::now(),
            },
            &mut |rows| {
                Delivery::Settled(
                    rows.iter()
                        .map(|row| {
                            if row.event.event_id == deferred.event_id {
                                RowOutcome::Deferred {
                                    error: "OOM command not allowed".into(),
                                }
                            } else {
                                RowOutcome::Published {
                                    entry_id: "1-0".into(),
                                }
                            }
                        })
                        .collect(),
                )
            },
        )
        .unwrap();
    assert_eq!(
        (
            round.claimed,
            round.published,
            round.deferred,
            round.retried
        ),
        (2, 1, 1, 0)
    );
    let row = one(b, &deferred.event_id);
    assert_eq!(
        (row.status, row.attempts, row.last_error),
        (OutboxStatus::Pending, 0, None)
    );
    assert_eq!(one(b, &published.event_id).status, OutboxStatus::Published);
    assert_eq!(ids_of(&publish_all(b, Utc::now(), 10)), [deferred.event_id]);
}

fn a_wrong_number_of_outcomes_records_nothing<B: Backend>(b: &B) {
    let e = event(Uuid::new_v4(), 1);
    b.enqueue("orders", std::slice::from_ref(&e), true).unwrap();
    let result = b.publish_due(
        &ClaimDue {
            limit: 10,
            now: Utc::now(),
        },
        &mut |_| Delivery::Settled(Vec::new()),
    );
    assert!(result.is_err(), "{result:?}");
    assert_eq!(one(b, &e.event_id).status, OutboxStatus::Pending);
}

fn refused_rows_wait_for_their_retry_time_then_dead_letter_and_requeue<B: Backend>(b: &B) {
    let e = event(Uuid::new_v4(), 1);
    b.enqueue("orders", std::slice::from_ref(&e), true).unwrap();
    let now = Utc::now();
    let retry_at = now + Span::seconds(60);
    let round = settle_all(
        b,
        ClaimDue { limit: 10, now },
        RowOutcome::Retry {
            error: "WRONGTYPE".into(),
            at: retry_at,
        },
    );
    assert_eq!((round.claimed, round.retried), (1, 1));
    let row = one(b, &e.event_id);
    assert_eq!((row.status, row.attempts), (OutboxStatus::Failed, 1));
    assert_eq!(row.last_error.as_deref(), Some("WRONGTYPE"));
    assert!(row.last_error_at.is_some());
    assert_eq!(
        row.next_attempt_at.map(|at| at.timestamp_micros()),
        Some(retry_at.timestamp_micros())
    );
    assert_eq!(b.count_by_status().unwrap().failed, 1);
    assert!(
        publish_all(b, now + Span::seconds(59), 10).is_empty(),
        "not due yet"
    );

    let round = settle_all(
        b,
        ClaimDue {
            limit: 10,
            now: now + Span::seconds(61),
        },
        RowOutcome::DeadLetter {
            error: "still WRONGTYPE".into(),
        },
    );
    assert_eq!(round.dead_lettered, 1);
    let row = one(b, &e.event_id);
    assert_eq!((row.status, row.attempts), (OutboxStatus::DeadLetter, 2));
    assert_eq!(row.next_attempt_at, None);
    assert!(
        publish_all(b, now + Span::days(1), 10).is_empty(),
        "dead letters stay"
    );

    assert_eq!(
        b.requeue_dead_letters(Requeue::Ids(&[row.id + 1000]))
            .unwrap(),
        0
    );
    assert_eq!(b.requeue_dead_letters(Requeue::Ids(&[row.id])).unwrap(), 1);
    let row = one(b, &e.event_id);
    assert_eq!((row.status, row.attempts), (OutboxStatus::Pending, 0));
    assert_eq!(
        ids_of(&publish_all(b, now, 10)),
        std::slice::from_ref(&e.event_id)
    );
    assert_eq!(
        one(b, &e.event_id).attempts,
        1,
        "counted afresh from the requeue: the attempt that published it"
    );
    assert_eq!(b.requeue_dead_letters(Requeue::All).unwrap(), 0);
}

/// `attempts` counts the publish attempts the broker answered, the one that published the row
/// included, as its doc says: 1 for a row published at once, one more per refusal before it.
/// A batch abandoned (broker unreachable) or deferred ("try later") counts none, and a requeue
/// starts again from 0.
fn attempts_count_every_answered_attempt_the_publishing_one_included<B: Backend>(b: &B) {
    let (at_once, refused) = (event(Uuid::new_v4(), 1), event(Uuid::new_v4(), 1));
    b.enqueue("orders", &[at_once.clone(), refused.clone()], true)
        .unwrap();
    let now = Utc::now();
    let round = b
        .publish_due(&ClaimDue { limit: 10, now }, &mut |rows| {
            Delivery::Settled(
                rows.iter()
                    .map(|row| {
                        if row.event.event_id == refused.event_id {
                            RowOutcome::Retry {
                                error: "WRONGTYPE".into(),
                                at: now,
                            }
                        } else {
                            RowOutcome::Published {
                                entry_id: format!("{}-0", row.id),
                            }
                        }
                    })
                    .collect(),
            )
        })
        .unwrap();
    assert_eq!((round.published, round.retried), (1, 1));
    let row = one(b, &at_once.event_id);
    assert_eq!((row.status, row.attempts), (OutboxStatus::Published, 1));
    let row = one(b, &refused.event_id);
    assert_eq!((row.status, row.attempts), (OutboxStatus::Failed, 1));

    // Neither an unreachable broker nor a "try later" counts an attempt.
    let claim = ClaimDue { limit: 10, now };
    b.publish_due(&claim, &mut |_| Delivery::Abandoned).unwrap();
    let deferred = RowOutcome::Deferred {
        error: "LOADING".into(),
    };
    assert_eq!(settle_all(b, claim, deferred).deferred, 1);
    assert_eq!(one(b, &refused.event_id).attempts, 1);

    assert_eq!(
        ids_of(&publish_all(b, now, 10)),
        std::slice::from_ref(&refused.event_id)
    );
    let row = one(b, &refused.event_id);
    assert_eq!(
        (row.status, row.attempts),
        (OutboxStatus::Published, 2),
        "one refusal, then the attempt that published it"
    );
    assert_eq!(row.last_error.as_deref(), Some("WRONGTYPE"));
}

fn a_waiting_row_holds_back_the_later_rows_of_its_aggregate_only<B: Backend>(b: &B) {
    let (a, other) = (Uuid::new_v4(), Uuid::new_v4());
    b.enqueue("orders", &[event(a, 1)], true).unwrap();
    let now = Utc::now();
    settle_all(
        b,
        ClaimDue { limit: 10, now },
        RowOutcome::Retry {
            error: "refused".into(),
            at: now + Span::seconds(60),
        },
    );
    b.enqueue("orders", &[event(a, 2), event(other, 1), event(a, 3)], true)
        .unwrap();
    assert_eq!(
        ids_of(&publish_all(b, now, 10)),
        [event(other, 1).event_id],
        "a's later events wait behind its failed one"
    );
    assert_eq!(
        ids_of(&publish_all(b, now + Span::seconds(61), 10)),
        [1, 2, 3].map(|n| event(a, n).event_id),
        "then go in order"
    );

    // A dead letter holds its aggregate back until requeued.
    let dead = event(a, 4);
    b.enqueue("orders", std::slice::from_ref(&dead), true)
        .unwrap();
    settle_all(
        b,
        ClaimDue { limit: 10, now },
        RowOutcome::DeadLetter {
            error: "refused".into(),
        },
    );
    b.enqueue("orders", &[event(a, 5)], true).unwrap();
    assert!(publish_all(b, now + Span::days(1), 10).is_empty());
    assert_eq!(b.requeue_dead_letters(Requeue::All).unwrap(), 1);
    assert_eq!(
        ids_of(&publish_all(b, now, 10)),
        [4, 5].map(|n| event(a, n).event_id)
    );
}

fn held_back_rows_do_not_crowd_out_publishable_ones<B: Backend>(b: &B) {
    let (stuck, free) = (Uuid::new_v4(), Uuid::new_v4());
    b.enqueue("orders", &[event(stuck, 0)], true).unwrap();
    let now = Utc::now();
    settle_all(
        b,
        ClaimDue { limit: 10, now },
        RowOutcome::DeadLetter {
            error: "refused".into(),
        },
    );
    let behind: Vec<Event> = (1..=20).map(|n| event(stuck, n)).collect();
    b.enqueue("orders", &behind, true).unwrap();
    b.enqueue("orders", &[event(free, 1)], true).unwrap();
    assert_eq!(
        ids_of(&publish_all(b, now, 5)),
        [event(free, 1).event_id],
        "twenty held-back rows before it do not fill a batch of five"
    );
}

fn concurrent_relays_never_share_a_row_and_keep_aggregate_order<B: Backend + Sync>(b: &B) {
    const AGGREGATES: u32 = 20;
    const PER_AGGREGATE: u32 = 25;
    let aggregates: Vec<Uuid> = (0..AGGREGATES).map(|_| Uuid::new_v4()).collect();
    for n in 0..PER_AGGREGATE {
        let events: Vec<Event> = aggregates.iter().map(|a| event(*a, n)).collect();
        b.enqueue("orders", &events, true).unwrap();
    }
    let clock = AtomicUsize::new(0);
    let log: Mutex<Vec<(usize, Uuid, u64)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| loop {
                let round = b
                    .publish_due(
                        &ClaimDue {
                            limit: 10,
                            now: Utc::now(),
                        },
                        &mut |rows| {
                            // Stretch the batch so the relays overlap.
                            std::thread::sleep(Duration::from_millis(2));
                            let mut log = log.lock();
                            for row in rows {
                                let tick = clock.fetch_add(1, Ordering::SeqCst);
                                let n = row.event.payload["n"].as_u64().unwrap();
                                log.push((tick, row.event.aggregate_id, n));
                            }
                            Delivery::Settled(
                                rows.iter()
                                    .map(|row| RowOutcome::Published {
                                        entry_id: format!("{}-0", row.id),
                                    })
                                    .collect(),
                            )
                        },
                    )
                    .unwrap();
                if round.claimed == 0 && b.count_by_status().unwrap().backlog() == 0 {
                    break;
                }
            });
        }
    });
    let log = log.into_inner();
    assert_eq!(
        log.len(),
        (AGGREGATES * PER_AGGREGATE) as usize,
        "each row once"
    );
    let mut per_aggregate: HashMap<Uuid, Vec<(usize, u64)>> = HashMap::new();
    for (tick, aggregate, n) in log {
        per_aggregate.entry(aggregate).or_default().push((tick, n));
    }
    for (aggregate, mut published) in per_aggregate {
        published.sort();
        let order: Vec<u64> = published.iter().map(|(_, n)| *n).collect();
        let expected: Vec<u64> = (0..PER_AGGREGATE as u64).collect();
        assert_eq!(
            order, expected,
            "aggregate {aggregate} published out of order"
        );
    }
    assert_eq!(
        b.count_by_status().unwrap().published,
        (AGGREGATES * PER_AGGREGATE) as u64
    );
}

fn retention_deletes_only_published_rows_older_than_the_cutoff_in_batches<B: Backend>(b: &B) {
    let now = Utc::now();
    let old: Vec<Event> = (0..5).map(|n| event(Uuid::new_v4(), n)).collect();
    b.enqueue("orders", &old, true).unwrap();
    publish_all(b, now - Span::days(10), 100);
    let recent = event(Uuid::new_v4(), 1);
    b.enqueue("orders", std::slice::from_ref(&recent), true)
        .unwrap();
    publish_all(b, now, 100);
    // One failed, one dead, one pending: none of them may go.
    let (failed, dead, pending) = (
        event(Uuid::new_v4(), 1),
        event(Uuid::new_v4(), 1),
        event(Uuid::new_v4(), 1),
    );
    b.enqueue("orders", &[failed.clone(), dead.clone()], true)
        .unwrap();
    let past = now - Span::days(10);
    b.publish_due(
        &ClaimDue {
            limit: 10,
            now: past,
        },
        &mut |rows| {
            Delivery::Settled(
                rows.iter()
                    .map(|row| {
                        if row.event.event_id == failed.event_id {
                            RowOutcome::Retry {
                                error: "x".into(),
                                at: now + Span::days(1),
                            }
                        } else {
                            RowOutcome::DeadLetter { error: "x".into() }
                        }
                    })
                    .collect(),
            )
        },
    )
    .unwrap();
    b.enqueue("orders", std::slice::from_ref(&pending), true)
        .unwrap();

    let cutoff = now - Span::days(7);
    assert_eq!(b.delete_published_before(cutoff, 2).unwrap(), 2);
    assert_eq!(b.delete_published_before(cutoff, 2).unwrap(), 2);
    assert_eq!(b.delete_published_before(cutoff, 2).unwrap(), 1);
    assert_eq!(b.delete_published_before(cutoff, 2).unwrap(), 0);
    for e in &old {
        assert!(b.find_by_event_id(&e.event_id).unwrap().is_empty());
    }
    assert_eq!(one(b, &recent.event_id).status, OutboxStatus::Published);
    assert_eq!(one(b, &failed.event_id).status, OutboxStatus::Failed);
    assert_eq!(one(b, &dead.event_id).status, OutboxStatus::DeadLetter);
    assert_eq!(one(b, &pending.event_id).status, OutboxStatus::Pending);
}

fn rows_are_listed_by_status_a_page_at_a_time<B: Backend>(b: &B) {
    let events: Vec<Event> = (0..5).map(|n| event(Uuid::new_v4(), n)).collect();
    b.enqueue("orders", &events, true).unwrap();
    let now = Utc::now();
    settle_all(
        b,
        ClaimDue { limit: 2, now },
        RowOutcome::DeadLetter {
            error: "refused".into(),
        },
    );
    let page = |status, after_id, limit| {
        ids_of(
            &b.list_rows(&OutboxPage {
                status,
                after_id,
                limit,
            })
            .unwrap(),
        )
    };
    let all: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(page(None, None, 10), all);
    assert_eq!(page(Some(OutboxStatus::DeadLetter), None, 10), all[..2]);
    assert_eq!(page(Some(OutboxStatus::Pending), None, 2), all[2..4]);
    let last = b
        .list_rows(&OutboxPage {
            status: Some(OutboxStatus::Pending),
            after_id: None,
            limit: 2,
        })
        .unwrap()[1]
        .id;
    assert_eq!(page(Some(OutboxStatus::Pending), Some(last), 2), all[4..]);
    assert!(page(Some(OutboxStatus::Published), None, 10).is_empty());
}

/// Runs each listed check once per backend, as `sqlite::<check>` and `postgres::<check>`.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $check() {
                    use super::Backend;
                    let backend = super::Sqlite::fresh();
                    super::$check(&backend);
                    backend.cleanup();
                }
            )*
        }

        mod postgres {
            $(
                #[test]
                fn $check() {
                    use super::Backend;
                    if !super::Postgres::available(concat!("postgres::", stringify!($check))) {
                        return;
                    }
                    let backend = super::Postgres::fresh();
                    super::$check(&backend);
                    backend.cleanup();
                }
            )*
        }
    };
}

conformance!(
    migrate_is_idempotent,
    committed_rows_are_published_in_enqueue_order_and_rolled_back_ones_never,
    invalid_events_are_refused_and_nothing_is_written,
    an_abandoned_batch_leaves_its_rows_as_they_were,
    a_deferred_row_is_left_as_it_was_and_the_rest_recorded,
    a_wrong_number_of_outcomes_records_nothing,
    refused_rows_wait_for_their_retry_time_then_dead_letter_and_requeue,
    attempts_count_every_answered_attempt_the_publishing_one_included,
    a_waiting_row_holds_back_the_later_rows_of_its_aggregate_only,
    held_back_rows_do_not_crowd_out_publishable_ones,
    concurrent_relays_never_share_a_row_and_keep_aggregate_order,
    retention_deletes_only_published_rows_older_than_the_cutoff_in_batches,
    rows_are_listed_by_status_a_page_at_a_time,
);
